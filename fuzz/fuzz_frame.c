/*
 * Frames, records and acks from hostile bytes: frame_verify with an
 * in-memory key table, the canonical form of every accepted record, and ack
 * decoding. The first input byte picks the mode, because a fuzzer cannot
 * forge a MAC:
 *   0: the bytes as they arrive;
 *   1: the bytes signed with the known key (MAC recomputed);
 *   2: a valid header (magic, version, sizes, the known key and tenant)
 *      put in front of the body, then signed, to reach the record decoder.
 *      The first two bytes give the event count (mod 64), and the rest is
 *      the body;
 *   3: the bytes as an ack, then as a bare record body.
 * The second byte picks the key id that modes 1 and 2 write (bits 0..2,
 * and bit 6 for an unknown key) and the event time window (bits 4 and 5).
 */
#include "fuzz_common.h"

#include "common/status.h"
#include "ingest/apikey.h"
#include "ingest/server.h"
#include "ingest/wire.h"

#include <openssl/hmac.h>

/* The key, tenant and secret of the test vectors in docs/PROTOCOL.md. */
#define KEY_ID UINT64_C(0x0123456789abcdef)
static const uint8_t tenant_id[UUID_SIZE] = { 0x7f, 0x3e, 0x2a, 0x10, 0x5b, 0x4c, 0x4d, 0x8e,
                                              0x9f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd };
static uint8_t signing_key[32];

/* 2024-07-01T00:00:00Z, the server's clock in this target. */
#define NOW_US (INT64_C(1719792000) * 1000000)
/* 2024-06-15T00:00:00Z: keys of the table with an expiry expire here. */
#define EXPIRY_S INT64_C(1718409600)

/* Key ids: the vector key, then variants of it that are revoked, expired or unreadable. */
static uint64_t key_ids[5] = { KEY_ID, KEY_ID ^ 1, KEY_ID ^ 2, KEY_ID ^ 3, KEY_ID ^ 4 };

static int lookup_begin(void *context)
{
    (void)context;
    return HM_OK;
}

static void lookup_end(void *context) { (void)context; }

static int key_lookup(void *context, uint64_t key_id, struct ingest_key *out)
{
    (void)context;
    memset(out, 0, sizeof *out);
    memcpy(out->tenant_id, tenant_id, UUID_SIZE);
    memcpy(out->signing_key, signing_key, 32);
    if (key_id == key_ids[0])
        return HM_OK;
    if (key_id == key_ids[1]) {
        out->revoked = 1;
        return HM_OK;
    }
    if (key_id == key_ids[2]) {
        out->expires_s = EXPIRY_S;
        return HM_OK;
    }
    if (key_id == key_ids[3]) {
        out->tenant_id[0] ^= 0xff; /* a key of another tenant */
        return HM_OK;
    }
    if (key_id == key_ids[4])
        return HM_ERR_STORAGE;
    return HM_ERR_NOT_FOUND;
}

static int commit(void *context, struct ingest_batch *batch)
{
    (void)context;
    (void)batch;
    return HM_OK;
}

static const struct server_hooks hooks = { NULL, lookup_begin, lookup_end, key_lookup, commit };

static void store_le(uint8_t *p, uint64_t value, int size)
{
    for (int i = 0; i < size; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

static void sign(uint8_t *frame, size_t size)
{
    unsigned int mac_size = 0;
    HMAC(EVP_sha256(), signing_key, 32, frame, size - FRAME_MAC_SIZE,
         frame + size - FRAME_MAC_SIZE, &mac_size);
}

/* Every accepted record must re-encode to its own bytes (the canonical form). */
static void check_canonical(const uint8_t *body, size_t body_size, uint16_t event_count)
{
    size_t offset = 0;
    for (uint16_t i = 0; i < event_count; i++) {
        struct event event;
        const char *reason = NULL;
        size_t start = offset;
        FUZZ_CHECK(record_decode(body, body_size, &offset, tenant_id, &event, &reason) == HM_OK,
                   "record %u of an accepted frame does not decode: %s", i, reason);
        uint8_t encoded[RECORD_SIZE_MAX];
        int encoded_size = record_encode(&event, encoded);
        FUZZ_CHECK(encoded_size == (int)(offset - start), "record %u re-encodes to %d bytes, "
                   "not %zu", i, encoded_size, offset - start);
        FUZZ_CHECK(memcmp(encoded, body + start, (size_t)encoded_size) == 0,
                   "record %u re-encodes to other bytes", i);
    }
    FUZZ_CHECK(offset == body_size, "accepted body has %zu bytes after its records",
               body_size - offset);
}

static void verify(const uint8_t *frame, size_t size, uint8_t window)
{
    struct verify_policy policy = { .now_us = NOW_US, .max_age_us = 0, .max_skew_us = -1 };
    if (window & 0x10)
        policy.max_age_us = INT64_C(30) * 86400 * 1000000;
    if (window & 0x20)
        policy.max_skew_us = INT64_C(900) * 1000000;
    struct frame_header header;
    uint16_t detail = 0;
    const char *reason = NULL;
    static struct event events[FRAME_EVENTS_MAX];
    enum frame_status status = frame_verify(frame, size, &hooks, &policy, &header, events,
                                            &detail, &reason);
    FUZZ_CHECK((unsigned)status < FRAME_STATUS_COUNT, "status %d", (int)status);
    int indexed = status == FRAME_MALFORMED || status == FRAME_EVENT_TOO_OLD ||
                  status == FRAME_EVENT_IN_FUTURE;
    FUZZ_CHECK(indexed || detail == 0, "status %s with detail %u", frame_status_name(status),
               detail);
    if (indexed && size >= FRAME_HEADER_SIZE)
        FUZZ_CHECK(detail <= header.event_count, "detail %u above the event count %u", detail,
                   header.event_count);
    if (status == FRAME_ACCEPTED) {
        FUZZ_CHECK(header.key_id == KEY_ID || header.key_id == (KEY_ID ^ 2),
                   "accepted under key %016llx", (unsigned long long)header.key_id);
        FUZZ_CHECK(memcmp(header.tenant_id, tenant_id, UUID_SIZE) == 0,
                   "accepted for another tenant");
        FUZZ_CHECK(header.event_count > 0, "accepted an empty frame");
        check_canonical(frame + FRAME_HEADER_SIZE, header.body_size, header.event_count);
        for (uint16_t i = 0; i < header.event_count; i++)
            FUZZ_CHECK(memcmp(events[i].tenant_id, tenant_id, UUID_SIZE) == 0,
                       "decoded event %u of an accepted frame has another tenant", i);
    }
    /* The expired key is past its expiry at NOW_US, so it never gets further than its state. */
    if (size >= FRAME_HEADER_SIZE && header.key_id == (KEY_ID ^ 2))
        FUZZ_CHECK(status != FRAME_ACCEPTED, "a frame under an expired key was accepted");
}

static void ack_and_body(const uint8_t *data, size_t size)
{
    if (size >= ACK_SIZE) {
        struct frame_ack ack;
        if (ack_decode(data, &ack) == HM_OK) {
            uint8_t encoded[ACK_SIZE];
            ack_encode(&ack, encoded);
            /* Only the reserved bytes 22..23 may differ: ack_decode does not read them. */
            FUZZ_CHECK(memcmp(encoded, data, 22) == 0, "ack does not re-encode to its bytes");
        }
    }
    size_t offset = 0;
    for (int i = 0; i < FRAME_EVENTS_MAX && offset < size; i++) {
        struct event event;
        const char *reason = NULL;
        size_t start = offset;
        if (record_decode(data, size, &offset, tenant_id, &event, &reason) != HM_OK) {
            FUZZ_CHECK(reason != NULL, "a record reject without a reason");
            FUZZ_CHECK(offset == start, "a rejected record moved the offset");
            break;
        }
        FUZZ_CHECK(offset > start && offset <= size, "record offset %zu of %zu", offset, size);
        uint8_t encoded[RECORD_SIZE_MAX];
        int encoded_size = record_encode(&event, encoded);
        FUZZ_CHECK(encoded_size == (int)(offset - start) &&
                       memcmp(encoded, data + start, offset - start) == 0,
                   "record at %zu is not canonical", start);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        uint8_t secret[APIKEY_SECRET_SIZE];
        for (int i = 0; i < APIKEY_SECRET_SIZE; i++)
            secret[i] = (uint8_t)i;
        apikey_signing_key(secret, signing_key);
        ready = 1;
    }
    if (size < 2 || size - 2 > FRAME_SIZE_MAX)
        return 0;
    uint8_t mode = data[0] & 0x03, choice = data[1];
    const uint8_t *bytes = data + 2;
    size_t bytes_size = size - 2;

    if (mode == 0) {
        verify(bytes, bytes_size, choice);
        return 0;
    }
    if (mode == 3) {
        ack_and_body(bytes, bytes_size);
        return 0;
    }

    if (mode == 2 && bytes_size < 2)
        return 0;
    size_t frame_size = mode == 2 ? bytes_size - 2 + FRAME_HEADER_SIZE + FRAME_MAC_SIZE
                                  : bytes_size;
    if (frame_size < FRAME_HEADER_SIZE + FRAME_MAC_SIZE || frame_size > FRAME_SIZE_MAX)
        return 0;
    uint8_t *frame = malloc(frame_size);
    if (frame == NULL)
        return 0;
    if (mode == 2) {
        memcpy(frame + FRAME_HEADER_SIZE, bytes + 2, bytes_size - 2);
        memcpy(frame, FRAME_MAGIC, 4);
        frame[4] = FRAME_VERSION;
        frame[5] = 0;
        store_le(frame + 6, (uint16_t)(bytes[0] | bytes[1] << 8) % 64, 2);
        store_le(frame + 8, bytes_size - 2, 4);
        store_le(frame + 12, 1, 8);
        memcpy(frame + 28, tenant_id, UUID_SIZE);
    } else {
        memcpy(frame, bytes, bytes_size);
    }
    /* Bits 0..2 pick the key: 0 and 5..7 the active key, 1..4 its variants. */
    unsigned pick = choice & 0x07;
    store_le(frame + 20, pick < 5 ? key_ids[pick] : KEY_ID, 8);
    if (choice & 0x40)
        store_le(frame + 20, KEY_ID ^ 0xdead, 8); /* an unknown key */
    sign(frame, frame_size);
    verify(frame, frame_size, choice);
    free(frame);
    return 0;
}
