/*
 * Tests of the wire format in ingest/wire.c. The test vectors are read from
 * docs/PROTOCOL.md at run time and checked against the real code. The other
 * tests cover round trips at the field limits, the frame builder's limits,
 * and every reject reason of the header, record and MAC checks.
 */
#include "common/status.h"
#include "common/uuid.h"
#include "ingest/apikey.h"
#include "ingest/event.h"
#include "ingest/wire.h"

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTOCOL_PATH HM_SOURCE_DIR "/docs/PROTOCOL.md"

/* Criterion's `str` tag takes `char *`, so const strings pass through this cast. */
#define CSTR(text) ((char *)(text))
/* Wraps a byte range for the `mem` tag, which prints both ranges in hex on a mismatch. */
#define BYTES(pointer, byte_count) ((struct cr_mem){ .data = (pointer), .size = (byte_count) })

/* Fields in one "vector N input:" block of the doc. */
#define VECTOR_FIELDS_MAX 64

static const uint8_t tenant_fixture[UUID_SIZE] = { 0x7f, 0x3e, 0x2a, 0x10, 0x5b, 0x4c, 0x4d, 0x8e,
                                                   0x9f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd };

static const uint8_t signing_key_fixture[32] = { 1, 2, 3, 4, 5, 6, 7, 8 };

/* Frame buffers are large, so tests share one instead of putting 256 KiB on the stack. */
static uint8_t frame_buffer[FRAME_SIZE_MAX];

/* Little-endian stores for crafting records that the encoder would reject. */
static void put_u16(uint8_t *out, uint16_t value)
{
    out[0] = (uint8_t)value;
    out[1] = (uint8_t)(value >> 8);
}

static void put_u64(uint8_t *out, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

/* Fills `size` bytes with printable ASCII, cycling through 0x21..0x7e, and terminates them. */
static void fill_name(char *out, size_t size)
{
    for (size_t i = 0; i < size; i++)
        out[i] = (char)(0x21 + i % (0x7e - 0x21 + 1));
    out[size] = '\0';
}

/* ---- docs/PROTOCOL.md parsing ---- */

static char *protocol_text(void)
{
    FILE *file = fopen(PROTOCOL_PATH, "rb");
    cr_assert_not_null(file, "cannot open %s", PROTOCOL_PATH);
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    cr_assert(gt(long, size, 0));
    rewind(file);

    char *text = malloc((size_t)size + 1);
    cr_assert_not_null(text);
    cr_assert(eq(sz, fread(text, 1, (size_t)size, file), (size_t)size));
    text[size] = '\0';
    fclose(file);
    return text;
}

/*
 * Returns a malloc'd copy of the contents of the fenced block that follows
 * the line `marker`, which must occur exactly once in the doc.
 */
static char *doc_block(const char *doc, const char *marker)
{
    size_t marker_size = strlen(marker);
    const char *found = NULL;
    for (const char *line = doc; line != NULL && *line != '\0';) {
        const char *line_end = strchr(line, '\n');
        size_t line_size = line_end != NULL ? (size_t)(line_end - line) : strlen(line);
        if (line_size == marker_size && memcmp(line, marker, marker_size) == 0) {
            cr_assert_null(found, "marker \"%s\" occurs twice in %s", marker, PROTOCOL_PATH);
            found = line;
        }
        line = line_end != NULL ? line_end + 1 : NULL;
    }
    cr_assert_not_null(found, "marker \"%s\" not found in %s", marker, PROTOCOL_PATH);

    const char *fence = found + marker_size + 1;
    cr_assert(eq(int, strncmp(fence, "```", 3), 0), "no fenced block after \"%s\"", marker);
    const char *start = strchr(fence, '\n');
    cr_assert_not_null(start);
    start++;
    const char *end = strstr(start, "```");
    cr_assert_not_null(end, "fenced block after \"%s\" is not closed", marker);

    size_t size = (size_t)(end - start);
    char *block = malloc(size + 1);
    cr_assert_not_null(block);
    memcpy(block, start, size);
    block[size] = '\0';
    return block;
}

/* Decodes a hex block into out, ignoring whitespace, and returns the byte count. */
static size_t hex_block_decode(const char *block, uint8_t *out, size_t capacity)
{
    size_t digit_count = 0;
    char *digits = malloc(strlen(block) + 1);
    cr_assert_not_null(digits);
    for (const char *c = block; *c != '\0'; c++) {
        if (*c != ' ' && *c != '\n' && *c != '\r' && *c != '\t')
            digits[digit_count++] = *c;
    }
    digits[digit_count] = '\0';

    cr_assert(eq(sz, digit_count % 2, 0), "odd number of hex digits: %zu", digit_count);
    size_t size = digit_count / 2;
    cr_assert(le(sz, size, capacity));
    cr_assert(eq(int, hex_decode(digits, out, size), HM_OK), "invalid hex digit in a vector");
    free(digits);
    return size;
}

struct vector_field {
    char key[64];
    char value[160];
    int checked;
};

struct vector_fields {
    struct vector_field items[VECTOR_FIELDS_MAX];
    size_t count;
};

/* Parses the `key value` lines of an input block. */
static void fields_parse(const char *block, struct vector_fields *fields)
{
    fields->count = 0;
    for (const char *line = block; *line != '\0';) {
        const char *line_end = strchr(line, '\n');
        size_t line_size = line_end != NULL ? (size_t)(line_end - line) : strlen(line);
        char copy[256];
        cr_assert(lt(sz, line_size, sizeof copy));
        memcpy(copy, line, line_size);
        copy[line_size] = '\0';

        struct vector_field field = { 0 };
        if (sscanf(copy, "%63s %159s", field.key, field.value) == 2) {
            cr_assert(lt(sz, fields->count, (size_t)VECTOR_FIELDS_MAX));
            fields->items[fields->count++] = field;
        } else {
            cr_assert(eq(sz, strspn(copy, " \t\r"), line_size), "unreadable line: %s", copy);
        }
        line = line_end != NULL ? line_end + 1 : line + line_size;
    }
}

static const char *field_text(struct vector_fields *fields, const char *key)
{
    for (size_t i = 0; i < fields->count; i++) {
        if (strcmp(fields->items[i].key, key) == 0) {
            fields->items[i].checked = 1;
            return fields->items[i].value;
        }
    }
    cr_fatal("field %s is missing from the vector's input block", key);
    return NULL;
}

static uint64_t field_u64(struct vector_fields *fields, const char *key)
{
    const char *text = field_text(fields, key);
    char *end = NULL;
    uint64_t value = strtoull(text, &end, 10);
    cr_assert(eq(chr, *end, '\0'), "field %s is not a decimal number: %s", key, text);
    return value;
}

static int64_t field_i64(struct vector_fields *fields, const char *key)
{
    const char *text = field_text(fields, key);
    char *end = NULL;
    int64_t value = strtoll(text, &end, 10);
    cr_assert(eq(chr, *end, '\0'), "field %s is not a decimal number: %s", key, text);
    return value;
}

static void field_uuid(struct vector_fields *fields, const char *key, uint8_t out[UUID_SIZE])
{
    const char *text = field_text(fields, key);
    cr_assert(eq(int, uuid_parse(text, out), HM_OK), "field %s is not a UUID: %s", key, text);
}

static void assert_fields_all_checked(const struct vector_fields *fields)
{
    for (size_t i = 0; i < fields->count; i++)
        cr_expect(fields->items[i].checked, "field %s is stated but never checked",
                  fields->items[i].key);
}

/* Checks every field of a decoded event against `event.N.*` in the input block. */
static void assert_event_matches_fields(struct vector_fields *fields, int index,
                                        const struct event *event)
{
    char key[64];
#define KEY(name) (snprintf(key, sizeof key, "event.%d." name, index), key)

    cr_assert(eq(str, CSTR(event_kind_name(event->kind)), CSTR(field_text(fields, KEY("kind")))));
    uint8_t event_id[UUID_SIZE];
    field_uuid(fields, KEY("event_id"), event_id);
    cr_assert(eq(mem, BYTES(event->event_id, UUID_SIZE), BYTES(event_id, UUID_SIZE)));
    cr_assert(eq(mem, BYTES(event->tenant_id, UUID_SIZE), BYTES(tenant_fixture, UUID_SIZE)));
    cr_assert(eq(i64, event->timestamp_us, field_i64(fields, KEY("timestamp_us"))));

    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        cr_assert(eq(str, CSTR(event->u.gpu.allocation_id),
                     CSTR(field_text(fields, KEY("allocation_id")))));
        cr_assert(eq(str, CSTR(event->u.gpu.pool_id), CSTR(field_text(fields, KEY("pool_id")))));
        cr_assert(eq(str, CSTR(event->u.gpu.gpu_type), CSTR(field_text(fields, KEY("gpu_type")))));
        cr_assert(eq(u64, event->u.gpu.duration_s, field_u64(fields, KEY("duration_s"))));
        cr_assert(eq(i64, event->u.gpu.cost_per_hour_micro,
                     field_i64(fields, KEY("cost_per_hour_micro"))));
        break;
    case EVENT_INFERENCE:
        cr_assert(eq(str, CSTR(event->u.inference.model), CSTR(field_text(fields, KEY("model")))));
        cr_assert(eq(u64, event->u.inference.input_tokens, field_u64(fields, KEY("input_tokens"))));
        cr_assert(
            eq(u64, event->u.inference.output_tokens, field_u64(fields, KEY("output_tokens"))));
        cr_assert(eq(u64, event->u.inference.cached_input_tokens,
                     field_u64(fields, KEY("cached_input_tokens"))));
        cr_assert(eq(u64, event->u.inference.latency_ms, field_u64(fields, KEY("latency_ms"))));
        cr_assert(eq(u64, event->u.inference.gpu_time_ms, field_u64(fields, KEY("gpu_time_ms"))));
        break;
    case EVENT_STORAGE:
        cr_assert(eq(u64, event->u.storage.bytes_stored, field_u64(fields, KEY("bytes_stored"))));
        cr_assert(eq(u64, event->u.storage.bytes_transferred,
                     field_u64(fields, KEY("bytes_transferred"))));
        break;
    case EVENT_API_CALL:
        cr_assert(eq(str, CSTR(event->u.api.endpoint), CSTR(field_text(fields, KEY("endpoint")))));
        cr_assert(eq(u64, event->u.api.response_code, field_u64(fields, KEY("response_code"))));
        cr_assert(
            eq(u64, event->u.api.response_time_ms, field_u64(fields, KEY("response_time_ms"))));
        break;
    default:
        cr_fatal("decoded an unknown kind %d", (int)event->kind);
    }
#undef KEY
}

/*
 * Decodes "vector N frame:" with the real code, verifies its MAC under the
 * key of "vector N input:", checks every stated field, and re-encodes the
 * events to the same bytes.
 */
static void check_vector_frame(int number)
{
    char *doc = protocol_text();
    char marker[64];
    snprintf(marker, sizeof marker, "vector %d input:", number);
    char *input = doc_block(doc, marker);
    snprintf(marker, sizeof marker, "vector %d frame:", number);
    char *frame_hex = doc_block(doc, marker);
    struct vector_fields fields;
    fields_parse(input, &fields);
    size_t frame_size = hex_block_decode(frame_hex, frame_buffer, sizeof frame_buffer);

    /* The documented key and the signing key derived from it. */
    struct apikey key;
    cr_assert(eq(int, apikey_parse(field_text(&fields, "api_key"), &key), HM_OK));
    cr_assert(eq(u64, key.key_id, field_u64(&fields, "key_id")));
    uint8_t signing_key[32];
    apikey_signing_key(key.secret, signing_key);
    uint8_t signing_key_stated[32];
    cr_assert(eq(sz, hex_block_decode(field_text(&fields, "signing_key"), signing_key_stated, 32),
                 (size_t)32));
    cr_assert(eq(mem, BYTES(signing_key, 32), BYTES(signing_key_stated, 32)));

    /* Header. */
    cr_assert(ge(sz, frame_size, (size_t)(FRAME_HEADER_SIZE + FRAME_MAC_SIZE)));
    struct frame_header header;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u8, header.version, 1));
    cr_assert(eq(u8, header.flags, 0));
    cr_assert(eq(u64, header.event_count, field_u64(&fields, "event_count")));
    cr_assert(eq(sz, header.body_size, frame_size - FRAME_HEADER_SIZE - FRAME_MAC_SIZE));
    cr_assert(eq(sz, frame_total_size(&header), frame_size));
    cr_assert(eq(u64, header.frame_id, field_u64(&fields, "frame_id")));
    cr_assert(eq(u64, header.key_id, key.key_id));
    uint8_t tenant_id[UUID_SIZE];
    field_uuid(&fields, "tenant_id", tenant_id);
    cr_assert(eq(mem, BYTES(header.tenant_id, UUID_SIZE), BYTES(tenant_id, UUID_SIZE)));
    cr_assert(eq(mem, BYTES(header.tenant_id, UUID_SIZE), BYTES(tenant_fixture, UUID_SIZE)));

    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, signing_key), 1));

    /* Records: exactly event_count of them, filling the body. */
    const uint8_t *body = frame_buffer + FRAME_HEADER_SIZE;
    struct event events[8];
    cr_assert(le(sz, header.event_count, sizeof events / sizeof events[0]));
    size_t offset = 0;
    for (int i = 0; i < header.event_count; i++) {
        const char *reason = "";
        int rc =
            record_decode(body, header.body_size, &offset, header.tenant_id, &events[i], &reason);
        cr_assert(eq(int, rc, HM_OK), "record %d: %s", i, reason);
        assert_event_matches_fields(&fields, i, &events[i]);
    }
    cr_assert(eq(sz, offset, header.body_size));
    assert_fields_all_checked(&fields);

    /* The builder reproduces the documented bytes. */
    static uint8_t rebuilt[FRAME_SIZE_MAX];
    struct frame_builder builder;
    frame_builder_start(&builder, rebuilt, FRAME_BODY_MAX);
    for (int i = 0; i < header.event_count; i++)
        cr_assert(eq(int, frame_builder_add(&builder, &events[i]), HM_OK));
    size_t rebuilt_size =
        frame_builder_seal(&builder, header.frame_id, header.key_id, header.tenant_id, signing_key);
    cr_assert(eq(sz, rebuilt_size, frame_size));
    cr_assert(eq(mem, BYTES(rebuilt, frame_size), BYTES(frame_buffer, frame_size)),
              "frame_builder_seal output differs from the documented frame");

    free(frame_hex);
    free(input);
    free(doc);
}

/*
 * Checks "vector N <name>:" (an ack) against the input block: accepted, the
 * frame's id, and the given split of the event count.
 */
static void check_vector_ack(int number, const char *name, int resent)
{
    char *doc = protocol_text();
    char marker[64];
    snprintf(marker, sizeof marker, "vector %d input:", number);
    char *input = doc_block(doc, marker);
    snprintf(marker, sizeof marker, "vector %d %s:", number, name);
    char *ack_hex = doc_block(doc, marker);
    struct vector_fields fields;
    fields_parse(input, &fields);
    uint8_t bytes[ACK_SIZE + 1];
    cr_assert(eq(sz, hex_block_decode(ack_hex, bytes, sizeof bytes), (size_t)ACK_SIZE));

    uint64_t frame_id = field_u64(&fields, "frame_id");
    uint64_t event_count = field_u64(&fields, "event_count");
    struct frame_ack ack;
    cr_assert(eq(int, ack_decode(bytes, &ack), HM_OK));
    cr_assert(eq(int, ack.status, FRAME_ACCEPTED));
    cr_assert(eq(u16, ack.detail, 0));
    cr_assert(eq(u64, ack.frame_id, frame_id));
    cr_assert(eq(u64, ack.stored, resent ? 0 : event_count));
    cr_assert(eq(u64, ack.duplicates, resent ? event_count : 0));
    cr_assert(eq(u16, ack.conflicts, 0));
    cr_assert(eq(mem, BYTES(bytes + 22, 2), BYTES(((uint8_t[2]){ 0, 0 }), 2)));

    uint8_t encoded[ACK_SIZE];
    ack_encode(&ack, encoded);
    cr_assert(eq(mem, BYTES(encoded, ACK_SIZE), BYTES(bytes, ACK_SIZE)));

    free(ack_hex);
    free(input);
    free(doc);
}

Test(protocol_doc, vector1_frame_matches) { check_vector_frame(1); }
Test(protocol_doc, vector1_ack_matches) { check_vector_ack(1, "ack", 0); }
Test(protocol_doc, vector1_resend_ack_matches) { check_vector_ack(1, "resend ack", 1); }
Test(protocol_doc, vector2_frame_matches) { check_vector_frame(2); }
Test(protocol_doc, vector2_ack_matches) { check_vector_ack(2, "ack", 0); }
Test(protocol_doc, vector2_resend_ack_matches) { check_vector_ack(2, "resend ack", 1); }
Test(protocol_doc, vector3_frame_matches) { check_vector_frame(3); }
Test(protocol_doc, vector3_ack_matches) { check_vector_ack(3, "ack", 0); }
Test(protocol_doc, vector3_resend_ack_matches) { check_vector_ack(3, "resend ack", 1); }

/* ---- round trips at the field limits ---- */

static struct event event_base(enum event_kind kind, uint8_t id_last_byte)
{
    struct event event;
    memset(&event, 0, sizeof event);
    event.kind = kind;
    memcpy(event.tenant_id, tenant_fixture, UUID_SIZE);
    for (int i = 0; i < UUID_SIZE; i++)
        event.event_id[i] = (uint8_t)(0xa0 + i);
    event.event_id[UUID_SIZE - 1] = id_last_byte;
    event.timestamp_us = 1717243200000000;
    return event;
}

static struct event gpu_extreme(void)
{
    struct event event = event_base(EVENT_GPU_ALLOCATION, 1);
    event.timestamp_us = 0;
    fill_name(event.u.gpu.allocation_id, EVENT_NAME_MAX);
    fill_name(event.u.gpu.pool_id, EVENT_NAME_MAX);
    fill_name(event.u.gpu.gpu_type, EVENT_NAME_MAX);
    event.u.gpu.pool_id[0] = '~';
    event.u.gpu.duration_s = UINT32_MAX;
    event.u.gpu.cost_per_hour_micro = INT64_MAX;
    return event;
}

static struct event inference_extreme(void)
{
    struct event event = event_base(EVENT_INFERENCE, 2);
    event.timestamp_us = EVENT_TIMESTAMP_END_US - 1;
    fill_name(event.u.inference.model, EVENT_NAME_MAX);
    event.u.inference.input_tokens = UINT64_MAX;
    event.u.inference.output_tokens = UINT64_MAX;
    event.u.inference.cached_input_tokens = UINT64_MAX;
    event.u.inference.latency_ms = UINT32_MAX;
    event.u.inference.gpu_time_ms = UINT64_MAX;
    return event;
}

static struct event storage_extreme(void)
{
    struct event event = event_base(EVENT_STORAGE, 3);
    event.timestamp_us = EVENT_TIMESTAMP_END_US - 1;
    event.u.storage.bytes_stored = UINT64_MAX;
    event.u.storage.bytes_transferred = UINT64_MAX;
    return event;
}

static struct event api_call_extreme(void)
{
    struct event event = event_base(EVENT_API_CALL, 4);
    fill_name(event.u.api.endpoint, EVENT_ENDPOINT_MAX);
    event.u.api.endpoint[0] = '/';
    event.u.api.response_code = 599;
    event.u.api.response_time_ms = UINT32_MAX;
    return event;
}

static void assert_event_eq(const struct event *actual, const struct event *expected)
{
    cr_assert(eq(int, actual->kind, expected->kind));
    cr_assert(eq(mem, BYTES(actual->tenant_id, UUID_SIZE), BYTES(expected->tenant_id, UUID_SIZE)));
    cr_assert(eq(mem, BYTES(actual->event_id, UUID_SIZE), BYTES(expected->event_id, UUID_SIZE)));
    cr_assert(eq(i64, actual->timestamp_us, expected->timestamp_us));
    switch (expected->kind) {
    case EVENT_GPU_ALLOCATION:
        cr_assert(eq(str, CSTR(actual->u.gpu.allocation_id), CSTR(expected->u.gpu.allocation_id)));
        cr_assert(eq(str, CSTR(actual->u.gpu.pool_id), CSTR(expected->u.gpu.pool_id)));
        cr_assert(eq(str, CSTR(actual->u.gpu.gpu_type), CSTR(expected->u.gpu.gpu_type)));
        cr_assert(eq(u32, actual->u.gpu.duration_s, expected->u.gpu.duration_s));
        cr_assert(eq(i64, actual->u.gpu.cost_per_hour_micro, expected->u.gpu.cost_per_hour_micro));
        break;
    case EVENT_INFERENCE:
        cr_assert(eq(str, CSTR(actual->u.inference.model), CSTR(expected->u.inference.model)));
        cr_assert(eq(u64, actual->u.inference.input_tokens, expected->u.inference.input_tokens));
        cr_assert(eq(u64, actual->u.inference.output_tokens, expected->u.inference.output_tokens));
        cr_assert(eq(u64, actual->u.inference.cached_input_tokens,
                     expected->u.inference.cached_input_tokens));
        cr_assert(eq(u32, actual->u.inference.latency_ms, expected->u.inference.latency_ms));
        cr_assert(eq(u64, actual->u.inference.gpu_time_ms, expected->u.inference.gpu_time_ms));
        break;
    case EVENT_STORAGE:
        cr_assert(eq(u64, actual->u.storage.bytes_stored, expected->u.storage.bytes_stored));
        cr_assert(
            eq(u64, actual->u.storage.bytes_transferred, expected->u.storage.bytes_transferred));
        break;
    case EVENT_API_CALL:
        cr_assert(eq(str, CSTR(actual->u.api.endpoint), CSTR(expected->u.api.endpoint)));
        cr_assert(eq(u16, actual->u.api.response_code, expected->u.api.response_code));
        cr_assert(eq(u32, actual->u.api.response_time_ms, expected->u.api.response_time_ms));
        break;
    }
}

/* Encodes one event, checks the record size, decodes it and compares every field. */
static void check_record_round_trip(const struct event *event, int size_expected)
{
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(event, record);
    cr_assert(eq(int, size, size_expected));

    struct event decoded;
    memset(&decoded, 0x5a, sizeof decoded);
    size_t offset = 0;
    const char *reason = "";
    int rc = record_decode(record, (size_t)size, &offset, tenant_fixture, &decoded, &reason);
    cr_assert(eq(int, rc, HM_OK), "decode failed: %s", reason);
    cr_assert(eq(sz, offset, (size_t)size));
    assert_event_eq(&decoded, event);
}

Test(round_trip, gpu_allocation_extremes)
{
    struct event event = gpu_extreme();
    check_record_round_trip(&event, RECORD_SIZE_MAX);
}

Test(round_trip, inference_extremes)
{
    struct event event = inference_extreme();
    check_record_round_trip(&event, RECORD_HEADER_SIZE + 36 + 1 + EVENT_NAME_MAX);
}

Test(round_trip, storage_extremes)
{
    struct event event = storage_extreme();
    check_record_round_trip(&event, RECORD_HEADER_SIZE + 16);
}

Test(round_trip, api_call_extremes)
{
    struct event event = api_call_extreme();
    check_record_round_trip(&event, RECORD_HEADER_SIZE + 6 + 1 + EVENT_ENDPOINT_MAX);
}

Test(round_trip, minimum_values)
{
    struct event gpu = event_base(EVENT_GPU_ALLOCATION, 5);
    strcpy(gpu.u.gpu.allocation_id, "a");
    strcpy(gpu.u.gpu.pool_id, "!");
    strcpy(gpu.u.gpu.gpu_type, "~");
    check_record_round_trip(&gpu, RECORD_HEADER_SIZE + 12 + 3 * 2);

    struct event inference = event_base(EVENT_INFERENCE, 6);
    strcpy(inference.u.inference.model, "m");
    check_record_round_trip(&inference, RECORD_HEADER_SIZE + 36 + 2);

    struct event api = event_base(EVENT_API_CALL, 7);
    strcpy(api.u.api.endpoint, "/");
    api.u.api.response_code = 100;
    check_record_round_trip(&api, RECORD_HEADER_SIZE + 6 + 2);
}

Test(round_trip, frame_of_all_kinds)
{
    struct event events[4] = { gpu_extreme(), inference_extreme(), storage_extreme(),
                               api_call_extreme() };
    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, FRAME_BODY_MAX);
    for (int i = 0; i < 4; i++)
        cr_assert(eq(int, frame_builder_add(&builder, &events[i]), HM_OK), "event %d", i);
    size_t frame_size =
        frame_builder_seal(&builder, UINT64_MAX, UINT64_MAX, tenant_fixture, signing_key_fixture);

    struct frame_header header;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u16, header.event_count, 4));
    cr_assert(eq(u64, header.frame_id, UINT64_MAX));
    cr_assert(eq(u64, header.key_id, UINT64_MAX));
    cr_assert(eq(sz, frame_total_size(&header), frame_size));
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, signing_key_fixture), 1));

    const uint8_t *body = frame_buffer + FRAME_HEADER_SIZE;
    size_t offset = 0;
    for (int i = 0; i < 4; i++) {
        struct event decoded;
        const char *reason = "";
        int rc =
            record_decode(body, header.body_size, &offset, header.tenant_id, &decoded, &reason);
        cr_assert(eq(int, rc, HM_OK), "record %d: %s", i, reason);
        assert_event_eq(&decoded, &events[i]);
    }
    cr_assert(eq(sz, offset, header.body_size));
}

/* ---- frame builder limits ---- */

Test(frame_builder, full_at_events_max)
{
    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, FRAME_BODY_MAX);
    struct event event = storage_extreme();
    for (int i = 0; i < FRAME_EVENTS_MAX; i++)
        cr_assert(eq(int, frame_builder_add(&builder, &event), HM_OK), "event %d", i);
    cr_assert(eq(int, frame_builder_add(&builder, &event), HM_ERR_FULL));
    cr_assert(eq(u16, builder.event_count, FRAME_EVENTS_MAX));

    size_t frame_size = frame_builder_seal(&builder, 1, 1, tenant_fixture, signing_key_fixture);
    struct frame_header header;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u16, header.event_count, FRAME_EVENTS_MAX));
    cr_assert(eq(sz, frame_total_size(&header), frame_size));
}

Test(frame_builder, full_at_udp_body_limit)
{
    size_t body_limit = FRAME_UDP_SIZE_MAX - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
    size_t record_size = RECORD_HEADER_SIZE + 16;
    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, body_limit);
    struct event event = storage_extreme();
    size_t fitting = body_limit / record_size;
    for (size_t i = 0; i < fitting; i++)
        cr_assert(eq(int, frame_builder_add(&builder, &event), HM_OK), "event %zu", i);
    cr_assert(eq(int, frame_builder_add(&builder, &event), HM_ERR_FULL));

    size_t frame_size = frame_builder_seal(&builder, 1, 1, tenant_fixture, signing_key_fixture);
    cr_assert(le(sz, frame_size, (size_t)FRAME_UDP_SIZE_MAX));
    cr_assert(eq(sz, frame_size, FRAME_HEADER_SIZE + fitting * record_size + FRAME_MAC_SIZE));
}

Test(frame_builder, invalid_event_not_added)
{
    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, FRAME_BODY_MAX);
    struct event event = inference_extreme();
    event.u.inference.model[0] = '\0';
    cr_assert(eq(int, frame_builder_add(&builder, &event), HM_ERR_INVALID));
    cr_assert(eq(u16, builder.event_count, 0));
    cr_assert(eq(sz, builder.size, (size_t)FRAME_HEADER_SIZE));
}

/* ---- record_encode rejects ---- */

Test(record_encode, rejects_overlong_model)
{
    struct event event = inference_extreme();
    memset(event.u.inference.model, 'a', sizeof event.u.inference.model); /* 65 bytes, no NUL */
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_overlong_endpoint)
{
    struct event event = api_call_extreme();
    memset(event.u.api.endpoint, 'a', sizeof event.u.api.endpoint); /* 129 bytes, no NUL */
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_space_in_name)
{
    struct event event = gpu_extreme();
    event.u.gpu.gpu_type[3] = ' ';
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_cached_above_input)
{
    struct event event = inference_extreme();
    event.u.inference.input_tokens = 10;
    event.u.inference.cached_input_tokens = 11;
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_response_code_range)
{
    struct event event = api_call_extreme();
    uint8_t record[RECORD_SIZE_MAX];
    event.u.api.response_code = 99;
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
    event.u.api.response_code = 600;
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_negative_cost)
{
    struct event event = gpu_extreme();
    event.u.gpu.cost_per_hour_micro = -1;
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_encode, rejects_unknown_kind)
{
    struct event event = storage_extreme();
    event.kind = (enum event_kind)5;
    uint8_t record[RECORD_SIZE_MAX];
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

/* ---- frame_header_decode rejects ---- */

/* Seals a valid one-event frame into frame_buffer and returns its size. */
static size_t valid_frame(void)
{
    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, FRAME_BODY_MAX);
    struct event event = inference_extreme();
    cr_assert(eq(int, frame_builder_add(&builder, &event), HM_OK));
    return frame_builder_seal(&builder, 42, 7, tenant_fixture, signing_key_fixture);
}

Test(frame_header, accepts_valid_header)
{
    valid_frame();
    struct frame_header header;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u64, header.frame_id, 42));
    cr_assert(eq(u64, header.key_id, 7));
}

Test(frame_header, rejects_bad_magic)
{
    valid_frame();
    struct frame_header header;
    frame_buffer[3] = 'X';
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_MAGIC));
    memcpy(frame_buffer, "hmtr", 4);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_MAGIC));
    memcpy(frame_buffer, "HMAK", 4);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_MAGIC));
}

Test(frame_header, rejects_other_versions)
{
    valid_frame();
    struct frame_header header;
    frame_buffer[4] = 0;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_VERSION));
    frame_buffer[4] = 2;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_VERSION));
    frame_buffer[4] = 0xff;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_VERSION));
}

Test(frame_header, rejects_nonzero_flags)
{
    valid_frame();
    struct frame_header header;
    for (int bit = 0; bit < 8; bit++) {
        frame_buffer[5] = (uint8_t)(1u << bit);
        cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_BAD_VERSION),
                  "flag bit %d", bit);
    }
}

Test(frame_header, rejects_body_above_max)
{
    valid_frame();
    struct frame_header header;
    frame_buffer[8] = (uint8_t)(FRAME_BODY_MAX + 1);
    frame_buffer[9] = (uint8_t)((FRAME_BODY_MAX + 1) >> 8);
    frame_buffer[10] = (uint8_t)((FRAME_BODY_MAX + 1) >> 16);
    frame_buffer[11] = 0;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_TOO_LARGE));
    cr_assert(eq(u32, header.body_size, FRAME_BODY_MAX + 1));
    cr_assert(eq(u64, header.frame_id, 42));

    memset(frame_buffer + 8, 0xff, 4);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_TOO_LARGE));
}

Test(frame_header, accepts_body_at_max)
{
    valid_frame();
    struct frame_header header;
    frame_buffer[8] = (uint8_t)FRAME_BODY_MAX;
    frame_buffer[9] = (uint8_t)(FRAME_BODY_MAX >> 8);
    frame_buffer[10] = (uint8_t)(FRAME_BODY_MAX >> 16);
    frame_buffer[11] = 0;
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u32, header.body_size, FRAME_BODY_MAX));
}

Test(frame_header, rejects_events_above_max)
{
    valid_frame();
    struct frame_header header;
    put_u16(frame_buffer + 6, FRAME_EVENTS_MAX + 1);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_TOO_LARGE));
    cr_assert(eq(u16, header.event_count, FRAME_EVENTS_MAX + 1));
    put_u16(frame_buffer + 6, UINT16_MAX);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_TOO_LARGE));
}

Test(frame_header, accepts_events_at_max)
{
    valid_frame();
    struct frame_header header;
    put_u16(frame_buffer + 6, FRAME_EVENTS_MAX);
    cr_assert(eq(int, frame_header_decode(frame_buffer, &header), FRAME_ACCEPTED));
    cr_assert(eq(u16, header.event_count, FRAME_EVENTS_MAX));
}

/* ---- record_decode rejects ---- */

/* Decodes body[0..] and checks that it is rejected with exactly `reason_expected`. */
static void assert_record_rejected(const uint8_t *body, size_t body_size,
                                   const char *reason_expected)
{
    struct event event;
    size_t offset = 0;
    const char *reason = NULL;
    int rc = record_decode(body, body_size, &offset, tenant_fixture, &event, &reason);
    cr_assert(eq(int, rc, HM_ERR_INVALID));
    cr_assert_not_null(reason);
    cr_assert(eq(str, CSTR(reason), CSTR(reason_expected)));
    cr_assert(eq(sz, offset, 0), "a rejected record must not advance the offset");
}

static size_t encode_valid(const struct event *event, uint8_t *record)
{
    int size = record_encode(event, record);
    cr_assert(gt(int, size, 0));
    return (size_t)size;
}

/* Writes an inference record whose model is `name_size` raw bytes and returns its size. */
static size_t raw_inference_record(uint8_t *out, const uint8_t *name, size_t name_size)
{
    struct event event = inference_extreme();
    strcpy(event.u.inference.model, "m");
    encode_valid(&event, out);
    size_t size = RECORD_HEADER_SIZE + 36 + 1 + name_size;
    out[RECORD_HEADER_SIZE + 36] = (uint8_t)name_size;
    memcpy(out + RECORD_HEADER_SIZE + 37, name, name_size);
    put_u16(out + 2, (uint16_t)size);
    return size;
}

/* Writes an API call record whose endpoint is `name_size` raw bytes and returns its size. */
static size_t raw_api_call_record(uint8_t *out, const uint8_t *name, size_t name_size)
{
    struct event event = api_call_extreme();
    strcpy(event.u.api.endpoint, "/");
    encode_valid(&event, out);
    size_t size = RECORD_HEADER_SIZE + 6 + 1 + name_size;
    out[RECORD_HEADER_SIZE + 6] = (uint8_t)name_size;
    memcpy(out + RECORD_HEADER_SIZE + 7, name, name_size);
    put_u16(out + 2, (uint16_t)size);
    return size;
}

static const char inference_name_reason[] =
    "inference model empty, longer than 64 bytes or not printable ASCII";
static const char api_call_name_reason[] =
    "api_call endpoint empty, longer than 128 bytes or not printable ASCII";

Test(record_decode, rejects_truncated_header)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = storage_extreme();
    encode_valid(&event, record);
    assert_record_rejected(record, RECORD_HEADER_SIZE - 1, "record header truncated");
    assert_record_rejected(record, 0, "record header truncated");
}

Test(record_decode, rejects_record_past_body)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = inference_extreme();
    size_t size = encode_valid(&event, record);
    assert_record_rejected(record, size - 1, "record length outside the frame body");
}

Test(record_decode, rejects_length_below_header)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = storage_extreme();
    size_t size = encode_valid(&event, record);
    put_u16(record + 2, RECORD_HEADER_SIZE - 1);
    assert_record_rejected(record, size, "record length outside the frame body");
}

Test(record_decode, rejects_trailing_bytes)
{
    uint8_t record[RECORD_SIZE_MAX] = { 0 };
    struct event event = storage_extreme();
    size_t size = encode_valid(&event, record);
    put_u16(record + 2, (uint16_t)(size + 1));
    assert_record_rejected(record, size + 1, "record length does not match its fields");
}

Test(record_decode, rejects_fields_past_length)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = inference_extreme();
    size_t size = encode_valid(&event, record);
    put_u16(record + 2, RECORD_HEADER_SIZE + 35);
    assert_record_rejected(record, size, "inference record too short");
}

Test(record_decode, rejects_name_past_length)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = inference_extreme();
    size_t size = encode_valid(&event, record);
    put_u16(record + 2, (uint16_t)(size - 1));
    assert_record_rejected(record, size, inference_name_reason);
}

Test(record_decode, rejects_short_fixed_fields)
{
    static const struct {
        enum event_kind kind;
        size_t fixed_size;
        const char *reason;
    } cases[] = {
        { EVENT_GPU_ALLOCATION, 12, "gpu_allocation record too short" },
        { EVENT_INFERENCE, 36, "inference record too short" },
        { EVENT_STORAGE, 16, "storage record too short" },
        { EVENT_API_CALL, 6, "api_call record too short" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t record[RECORD_SIZE_MAX] = { 0 };
        record[0] = (uint8_t)cases[i].kind;
        size_t size = RECORD_HEADER_SIZE + cases[i].fixed_size - 1;
        put_u16(record + 2, (uint16_t)size);
        assert_record_rejected(record, size, cases[i].reason);
    }
}

Test(record_decode, rejects_nonzero_reserved_byte)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = storage_extreme();
    size_t size = encode_valid(&event, record);
    record[1] = 1;
    assert_record_rejected(record, size, "record reserved byte is not zero");
    record[1] = 0x80;
    assert_record_rejected(record, size, "record reserved byte is not zero");
}

Test(record_decode, rejects_unknown_kind)
{
    static const uint8_t kinds[] = { 0, 5, 0x7f, 0xff };
    for (size_t i = 0; i < sizeof kinds; i++) {
        uint8_t record[RECORD_SIZE_MAX];
        struct event event = storage_extreme();
        size_t size = encode_valid(&event, record);
        record[0] = kinds[i];
        assert_record_rejected(record, size, "unknown event kind");
    }
}

Test(record_decode, rejects_empty_name)
{
    uint8_t record[RECORD_SIZE_MAX];
    size_t size = raw_inference_record(record, (const uint8_t *)"", 0);
    assert_record_rejected(record, size, inference_name_reason);
}

Test(record_decode, rejects_empty_endpoint)
{
    uint8_t record[RECORD_SIZE_MAX];
    size_t size = raw_api_call_record(record, (const uint8_t *)"", 0);
    assert_record_rejected(record, size, api_call_name_reason);
}

Test(record_decode, rejects_overlong_name)
{
    uint8_t name[EVENT_NAME_MAX + 1];
    memset(name, 'a', sizeof name);
    uint8_t record[RECORD_SIZE_MAX + 8];
    size_t size = raw_inference_record(record, name, sizeof name);
    assert_record_rejected(record, size, inference_name_reason);
}

Test(record_decode, rejects_overlong_endpoint)
{
    uint8_t name[EVENT_ENDPOINT_MAX + 1];
    memset(name, 'a', sizeof name);
    uint8_t record[RECORD_SIZE_MAX + 8];
    size_t size = raw_api_call_record(record, name, sizeof name);
    assert_record_rejected(record, size, api_call_name_reason);
}

Test(record_decode, rejects_nonprintable_name)
{
    static const uint8_t bad_bytes[] = { 0x00, 0x09, 0x0a, 0x20, 0x7f, 0x80, 0xc3, 0xff };
    for (size_t i = 0; i < sizeof bad_bytes; i++) {
        uint8_t name[] = { 'g', 'p', 't', bad_bytes[i], '4' };
        uint8_t record[RECORD_SIZE_MAX];
        size_t size = raw_inference_record(record, name, sizeof name);
        assert_record_rejected(record, size, inference_name_reason);
    }
}

Test(record_decode, rejects_nonprintable_endpoint)
{
    uint8_t name[] = { '/', 'v', '1', ' ', 'x' };
    uint8_t record[RECORD_SIZE_MAX];
    size_t size = raw_api_call_record(record, name, sizeof name);
    assert_record_rejected(record, size, api_call_name_reason);
}

Test(record_decode, rejects_bad_gpu_type)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = gpu_extreme();
    size_t size = encode_valid(&event, record);
    record[size - 1] = 0x7f; /* the last byte of gpu_type, the third name */
    assert_record_rejected(
        record, size, "gpu_allocation name empty, longer than 64 bytes or not printable ASCII");
}

Test(record_decode, rejects_cached_above_input)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = inference_extreme();
    event.u.inference.input_tokens = 1000;
    event.u.inference.cached_input_tokens = 1000;
    size_t size = encode_valid(&event, record);
    put_u64(record + RECORD_HEADER_SIZE + 16, 1001);
    assert_record_rejected(record, size, "inference cached_input_tokens above input_tokens");
}

Test(record_decode, rejects_response_code_range)
{
    static const uint16_t codes[] = { 0, 99, 600, UINT16_MAX };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        uint8_t record[RECORD_SIZE_MAX];
        struct event event = api_call_extreme();
        size_t size = encode_valid(&event, record);
        put_u16(record + RECORD_HEADER_SIZE, codes[i]);
        assert_record_rejected(record, size, "api_call response_code outside 100..599");
    }
}

Test(record_decode, rejects_negative_cost)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = gpu_extreme();
    size_t size = encode_valid(&event, record);
    put_u64(record + RECORD_HEADER_SIZE + 4, (uint64_t)INT64_MIN);
    assert_record_rejected(record, size, "gpu_allocation cost_per_hour is negative");
}

Test(record_decode, stops_at_bad_second_record)
{
    uint8_t body[2 * RECORD_SIZE_MAX];
    struct event first = storage_extreme();
    size_t first_size = encode_valid(&first, body);
    struct event second = inference_extreme();
    size_t second_size = encode_valid(&second, body + first_size);
    body[first_size + 1] = 1;

    struct event decoded;
    size_t offset = 0;
    const char *reason = "";
    cr_assert(eq(
        int,
        record_decode(body, first_size + second_size, &offset, tenant_fixture, &decoded, &reason),
        HM_OK));
    cr_assert(eq(sz, offset, first_size));
    cr_assert(eq(
        int,
        record_decode(body, first_size + second_size, &offset, tenant_fixture, &decoded, &reason),
        HM_ERR_INVALID));
    cr_assert(eq(str, CSTR(reason), CSTR("record reserved byte is not zero")));
    cr_assert(eq(sz, offset, first_size));
}

/* ---- frame_mac_verify ---- */

Test(frame_mac, accepts_valid_frame)
{
    size_t frame_size = valid_frame();
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, signing_key_fixture), 1));
}

/* Flips each bit of frame_buffer[first .. first + count) in turn and expects a MAC mismatch. */
static void assert_every_flip_rejected(size_t frame_size, size_t first, size_t count)
{
    for (size_t byte = first; byte < first + count; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            frame_buffer[byte] ^= (uint8_t)(1u << bit);
            int matches = frame_mac_verify(frame_buffer, frame_size, signing_key_fixture);
            frame_buffer[byte] ^= (uint8_t)(1u << bit);
            cr_assert(eq(int, matches, 0), "flipping byte %zu bit %d was not detected", byte, bit);
        }
    }
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, signing_key_fixture), 1));
}

Test(frame_mac, rejects_flipped_body_bit)
{
    size_t frame_size = valid_frame();
    assert_every_flip_rejected(frame_size, FRAME_HEADER_SIZE,
                               frame_size - FRAME_HEADER_SIZE - FRAME_MAC_SIZE);
}

Test(frame_mac, rejects_flipped_header_bit)
{
    size_t frame_size = valid_frame();
    assert_every_flip_rejected(frame_size, 0, FRAME_HEADER_SIZE);
}

Test(frame_mac, rejects_flipped_mac_bit)
{
    size_t frame_size = valid_frame();
    assert_every_flip_rejected(frame_size, frame_size - FRAME_MAC_SIZE, FRAME_MAC_SIZE);
}

Test(frame_mac, rejects_wrong_key)
{
    size_t frame_size = valid_frame();
    uint8_t other_key[32];
    memcpy(other_key, signing_key_fixture, 32);
    other_key[31] ^= 1;
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, other_key), 0));
}

Test(frame_mac, rejects_secret_as_signing_key)
{
    struct apikey key = { .key_id = 7 };
    for (int i = 0; i < APIKEY_SECRET_SIZE; i++)
        key.secret[i] = (uint8_t)i;
    uint8_t signing_key[32];
    apikey_signing_key(key.secret, signing_key);

    struct frame_builder builder;
    frame_builder_start(&builder, frame_buffer, FRAME_BODY_MAX);
    struct event event = storage_extreme();
    cr_assert(eq(int, frame_builder_add(&builder, &event), HM_OK));
    size_t frame_size = frame_builder_seal(&builder, 1, key.key_id, tenant_fixture, signing_key);

    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, signing_key), 1));
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size, key.secret), 0));
}

Test(frame_mac, rejects_wrong_frame_size)
{
    size_t frame_size = valid_frame();
    cr_assert(eq(int, frame_mac_verify(frame_buffer, frame_size - 1, signing_key_fixture), 0));
    cr_assert(eq(
        int,
        frame_mac_verify(frame_buffer, FRAME_HEADER_SIZE + FRAME_MAC_SIZE - 1, signing_key_fixture),
        0));
}

/* ---- acknowledgements and status names ---- */

Test(ack, round_trip_max_values)
{
    struct frame_ack ack = { FRAME_STORE_FAILED, UINT16_MAX, UINT64_MAX,
                             UINT16_MAX,         UINT16_MAX, UINT16_MAX };
    uint8_t bytes[ACK_SIZE];
    ack_encode(&ack, bytes);
    struct frame_ack decoded;
    cr_assert(eq(int, ack_decode(bytes, &decoded), HM_OK));
    cr_assert(eq(int, decoded.status, FRAME_STORE_FAILED));
    cr_assert(eq(u16, decoded.detail, UINT16_MAX));
    cr_assert(eq(u64, decoded.frame_id, UINT64_MAX));
    cr_assert(eq(u16, decoded.stored, UINT16_MAX));
    cr_assert(eq(u16, decoded.duplicates, UINT16_MAX));
    cr_assert(eq(u16, decoded.conflicts, UINT16_MAX));
    cr_assert(eq(u8, bytes[22], 0));
    cr_assert(eq(u8, bytes[23], 0));
}

Test(ack, rejects_bad_magic)
{
    struct frame_ack ack = { FRAME_ACCEPTED, 0, 1, 1, 0, 0 };
    uint8_t bytes[ACK_SIZE];
    ack_encode(&ack, bytes);
    memcpy(bytes, "HMTR", 4);
    struct frame_ack decoded;
    cr_assert(eq(int, ack_decode(bytes, &decoded), HM_ERR_INVALID));
}

Test(ack, rejects_other_version)
{
    struct frame_ack ack = { FRAME_ACCEPTED, 0, 1, 1, 0, 0 };
    uint8_t bytes[ACK_SIZE];
    ack_encode(&ack, bytes);
    bytes[4] = 2;
    struct frame_ack decoded;
    cr_assert(eq(int, ack_decode(bytes, &decoded), HM_ERR_INVALID));
}

Test(ack, rejects_unknown_status)
{
    struct frame_ack ack = { FRAME_ACCEPTED, 0, 1, 1, 0, 0 };
    uint8_t bytes[ACK_SIZE];
    ack_encode(&ack, bytes);
    bytes[5] = FRAME_STATUS_COUNT;
    struct frame_ack decoded;
    cr_assert(eq(int, ack_decode(bytes, &decoded), HM_ERR_INVALID));
}

Test(ack, decodes_every_status)
{
    for (int status = 0; status < FRAME_STATUS_COUNT; status++) {
        struct frame_ack ack = { (enum frame_status)status, 3, 9, 0, 0, 0 };
        uint8_t bytes[ACK_SIZE];
        ack_encode(&ack, bytes);
        struct frame_ack decoded;
        cr_assert(eq(int, ack_decode(bytes, &decoded), HM_OK), "status %d", status);
        cr_assert(eq(int, decoded.status, status));
        cr_assert(eq(u16, decoded.detail, 3));
    }
}

Test(frame_status, names_match_protocol_doc)
{
    static const char *const names[FRAME_STATUS_COUNT] = {
        "accepted",    "bad_magic", "bad_version", "too_large",    "truncated",    "unknown_key",
        "revoked_key", "bad_mac",   "malformed",   "wrong_tenant", "store_failed", "expired_key",
        "event_too_old", "event_in_future",
    };
    char *doc = protocol_text();
    for (int status = 0; status < FRAME_STATUS_COUNT; status++) {
        cr_assert(eq(str, CSTR(frame_status_name((enum frame_status)status)), CSTR(names[status])));
        char row[64];
        snprintf(row, sizeof row, "| %d | `%s` |", status, names[status]);
        cr_assert_not_null(strstr(doc, row), "status table row \"%s\" missing from the doc", row);
    }
    cr_assert(eq(str, CSTR(frame_status_name(FRAME_STATUS_COUNT)), CSTR("unknown")));
    free(doc);
}

Test(record_encode, rejects_timestamp_outside_range)
{
    struct event event = storage_extreme();
    uint8_t record[RECORD_SIZE_MAX];
    event.timestamp_us = -1;
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
    event.timestamp_us = EVENT_TIMESTAMP_END_US;
    cr_assert(eq(int, record_encode(&event, record), HM_ERR_INVALID));
}

Test(record_decode, rejects_timestamp_before_1970)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = storage_extreme();
    size_t size = encode_valid(&event, record);
    put_u64(record + 20, UINT64_MAX);
    assert_record_rejected(record, size, "timestamp before 1970 or after 9999");
}

Test(record_decode, rejects_timestamp_after_9999)
{
    uint8_t record[RECORD_SIZE_MAX];
    struct event event = storage_extreme();
    size_t size = encode_valid(&event, record);
    put_u64(record + 20, (uint64_t)EVENT_TIMESTAMP_END_US);
    assert_record_rejected(record, size, "timestamp before 1970 or after 9999");
}
