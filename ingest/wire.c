#include "wire.h"

#include "common/status.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <string.h>

_Static_assert(RECORD_SIZE_MAX <= UINT16_MAX, "a record length must fit its 16-bit field");
_Static_assert(FRAME_BODY_MAX >= FRAME_EVENTS_MAX * 44, "the body limit must fit a full frame");

static const char *const status_names[FRAME_STATUS_COUNT] = {
    [FRAME_ACCEPTED] = "accepted",         [FRAME_BAD_MAGIC] = "bad_magic",
    [FRAME_BAD_VERSION] = "bad_version",   [FRAME_TOO_LARGE] = "too_large",
    [FRAME_TRUNCATED] = "truncated",       [FRAME_UNKNOWN_KEY] = "unknown_key",
    [FRAME_REVOKED_KEY] = "revoked_key",   [FRAME_BAD_MAC] = "bad_mac",
    [FRAME_MALFORMED] = "malformed",       [FRAME_WRONG_TENANT] = "wrong_tenant",
    [FRAME_STORE_FAILED] = "store_failed",   [FRAME_EXPIRED_KEY] = "expired_key",
    [FRAME_EVENT_TOO_OLD] = "event_too_old", [FRAME_EVENT_IN_FUTURE] = "event_in_future",
};

const char *frame_status_name(enum frame_status status)
{
    if ((unsigned)status >= FRAME_STATUS_COUNT)
        return "unknown";
    return status_names[status];
}

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_u64(const uint8_t *p)
{
    return (uint64_t)load_u32(p) | (uint64_t)load_u32(p + 4) << 32;
}

static void store_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void store_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void store_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

enum frame_status frame_header_decode(const uint8_t *bytes, struct frame_header *header)
{
    if (memcmp(bytes, FRAME_MAGIC, 4) != 0)
        return FRAME_BAD_MAGIC;
    header->version = bytes[4];
    header->flags = bytes[5];
    header->event_count = load_u16(bytes + 6);
    header->body_size = load_u32(bytes + 8);
    header->frame_id = load_u64(bytes + 12);
    header->key_id = load_u64(bytes + 20);
    memcpy(header->tenant_id, bytes + 28, UUID_SIZE);
    if (header->version != FRAME_VERSION || header->flags != 0)
        return FRAME_BAD_VERSION;
    if (header->body_size > FRAME_BODY_MAX || header->event_count > FRAME_EVENTS_MAX)
        return FRAME_TOO_LARGE;
    return FRAME_ACCEPTED;
}

int frame_mac_verify(const uint8_t *frame, size_t frame_size, const uint8_t signing_key[32])
{
    if (frame_size < FRAME_HEADER_SIZE + FRAME_MAC_SIZE)
        return 0;
    uint8_t mac[32];
    unsigned int mac_size = 0;
    size_t signed_size = frame_size - FRAME_MAC_SIZE;
    if (HMAC(EVP_sha256(), signing_key, 32, frame, signed_size, mac, &mac_size) == NULL)
        return 0;
    return CRYPTO_memcmp(mac, frame + signed_size, FRAME_MAC_SIZE) == 0;
}

/* Names are 1..max bytes of printable ASCII without spaces (0x21..0x7e). */
static int name_decode(const uint8_t *body, size_t end, size_t *offset, size_t max, char *out)
{
    if (*offset >= end)
        return HM_ERR_INVALID;
    size_t size = body[*offset];
    if (size == 0 || size > max || *offset + 1 + size > end)
        return HM_ERR_INVALID;
    for (size_t i = 0; i < size; i++) {
        uint8_t c = body[*offset + 1 + i];
        if (c < 0x21 || c > 0x7e)
            return HM_ERR_INVALID;
        out[i] = (char)c;
    }
    out[size] = '\0';
    *offset += 1 + size;
    return HM_OK;
}

static int name_valid(const char *name, size_t max)
{
    size_t size = strnlen(name, max + 1);
    if (size == 0 || size > max)
        return 0;
    for (size_t i = 0; i < size; i++) {
        if ((uint8_t)name[i] < 0x21 || (uint8_t)name[i] > 0x7e)
            return 0;
    }
    return 1;
}

static int body_decode(const uint8_t *body, size_t end, size_t *at, struct event *event,
                       const char **reason)
{
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION: {
        struct event_gpu_allocation *gpu = &event->u.gpu;
        if (*at + 12 > end) {
            *reason = "gpu_allocation record too short";
            return HM_ERR_INVALID;
        }
        gpu->duration_s = load_u32(body + *at);
        gpu->cost_per_hour_micro = (int64_t)load_u64(body + *at + 4);
        *at += 12;
        if (name_decode(body, end, at, EVENT_NAME_MAX, gpu->allocation_id) != HM_OK ||
            name_decode(body, end, at, EVENT_NAME_MAX, gpu->pool_id) != HM_OK ||
            name_decode(body, end, at, EVENT_NAME_MAX, gpu->gpu_type) != HM_OK) {
            *reason = "gpu_allocation name empty, longer than 64 bytes or not printable ASCII";
            return HM_ERR_INVALID;
        }
        if (gpu->cost_per_hour_micro < 0) {
            *reason = "gpu_allocation cost_per_hour is negative";
            return HM_ERR_INVALID;
        }
        return HM_OK;
    }
    case EVENT_INFERENCE: {
        struct event_inference *inference = &event->u.inference;
        if (*at + 36 > end) {
            *reason = "inference record too short";
            return HM_ERR_INVALID;
        }
        inference->input_tokens = load_u64(body + *at);
        inference->output_tokens = load_u64(body + *at + 8);
        inference->cached_input_tokens = load_u64(body + *at + 16);
        inference->latency_ms = load_u32(body + *at + 24);
        inference->gpu_time_ms = load_u64(body + *at + 28);
        *at += 36;
        if (name_decode(body, end, at, EVENT_NAME_MAX, inference->model) != HM_OK) {
            *reason = "inference model empty, longer than 64 bytes or not printable ASCII";
            return HM_ERR_INVALID;
        }
        if (inference->cached_input_tokens > inference->input_tokens) {
            *reason = "inference cached_input_tokens above input_tokens";
            return HM_ERR_INVALID;
        }
        return HM_OK;
    }
    case EVENT_STORAGE:
        if (*at + 16 > end) {
            *reason = "storage record too short";
            return HM_ERR_INVALID;
        }
        event->u.storage.bytes_stored = load_u64(body + *at);
        event->u.storage.bytes_transferred = load_u64(body + *at + 8);
        *at += 16;
        return HM_OK;
    case EVENT_API_CALL:
        if (*at + 6 > end) {
            *reason = "api_call record too short";
            return HM_ERR_INVALID;
        }
        event->u.api.response_code = load_u16(body + *at);
        event->u.api.response_time_ms = load_u32(body + *at + 2);
        *at += 6;
        if (name_decode(body, end, at, EVENT_ENDPOINT_MAX, event->u.api.endpoint) != HM_OK) {
            *reason = "api_call endpoint empty, longer than 128 bytes or not printable ASCII";
            return HM_ERR_INVALID;
        }
        if (event->u.api.response_code < 100 || event->u.api.response_code > 599) {
            *reason = "api_call response_code outside 100..599";
            return HM_ERR_INVALID;
        }
        return HM_OK;
    }
    *reason = "unknown event kind";
    return HM_ERR_INVALID;
}

int record_decode(const uint8_t *body, size_t body_size, size_t *offset,
                  const uint8_t tenant_id[UUID_SIZE], struct event *event,
                  const char **reason_out)
{
    size_t start = *offset;
    if (body_size - start < RECORD_HEADER_SIZE) {
        *reason_out = "record header truncated";
        return HM_ERR_INVALID;
    }
    const uint8_t *record = body + start;
    size_t record_size = load_u16(record + 2);
    if (record_size < RECORD_HEADER_SIZE || record_size > body_size - start) {
        *reason_out = "record length outside the frame body";
        return HM_ERR_INVALID;
    }
    if (record[1] != 0) {
        *reason_out = "record reserved byte is not zero";
        return HM_ERR_INVALID;
    }
    event->kind = (enum event_kind)record[0];
    memcpy(event->tenant_id, tenant_id, UUID_SIZE);
    memcpy(event->event_id, record + 4, UUID_SIZE);
    event->timestamp_us = (int64_t)load_u64(record + 20);
    if (event->timestamp_us < 0 || event->timestamp_us >= EVENT_TIMESTAMP_END_US) {
        *reason_out = "timestamp before 1970 or after 9999";
        return HM_ERR_INVALID;
    }

    size_t at = start + RECORD_HEADER_SIZE;
    size_t end = start + record_size;
    int rc = body_decode(body, end, &at, event, reason_out);
    if (rc != HM_OK)
        return rc;
    if (at != end) {
        *reason_out = "record length does not match its fields";
        return HM_ERR_INVALID;
    }
    *offset = end;
    return HM_OK;
}

static size_t name_encode(uint8_t *out, const char *name)
{
    size_t size = strlen(name);
    out[0] = (uint8_t)size;
    memcpy(out + 1, name, size);
    return 1 + size;
}

int record_encode(const struct event *event, uint8_t *out)
{
    size_t at = RECORD_HEADER_SIZE;
    if (event->timestamp_us < 0 || event->timestamp_us >= EVENT_TIMESTAMP_END_US)
        return HM_ERR_INVALID;
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION: {
        const struct event_gpu_allocation *gpu = &event->u.gpu;
        if (!name_valid(gpu->allocation_id, EVENT_NAME_MAX) ||
            !name_valid(gpu->pool_id, EVENT_NAME_MAX) ||
            !name_valid(gpu->gpu_type, EVENT_NAME_MAX) || gpu->cost_per_hour_micro < 0)
            return HM_ERR_INVALID;
        store_u32(out + at, gpu->duration_s);
        store_u64(out + at + 4, (uint64_t)gpu->cost_per_hour_micro);
        at += 12;
        at += name_encode(out + at, gpu->allocation_id);
        at += name_encode(out + at, gpu->pool_id);
        at += name_encode(out + at, gpu->gpu_type);
        break;
    }
    case EVENT_INFERENCE: {
        const struct event_inference *inference = &event->u.inference;
        if (!name_valid(inference->model, EVENT_NAME_MAX) ||
            inference->cached_input_tokens > inference->input_tokens)
            return HM_ERR_INVALID;
        store_u64(out + at, inference->input_tokens);
        store_u64(out + at + 8, inference->output_tokens);
        store_u64(out + at + 16, inference->cached_input_tokens);
        store_u32(out + at + 24, inference->latency_ms);
        store_u64(out + at + 28, inference->gpu_time_ms);
        at += 36;
        at += name_encode(out + at, inference->model);
        break;
    }
    case EVENT_STORAGE:
        store_u64(out + at, event->u.storage.bytes_stored);
        store_u64(out + at + 8, event->u.storage.bytes_transferred);
        at += 16;
        break;
    case EVENT_API_CALL:
        if (!name_valid(event->u.api.endpoint, EVENT_ENDPOINT_MAX) ||
            event->u.api.response_code < 100 || event->u.api.response_code > 599)
            return HM_ERR_INVALID;
        store_u16(out + at, event->u.api.response_code);
        store_u32(out + at + 2, event->u.api.response_time_ms);
        at += 6;
        at += name_encode(out + at, event->u.api.endpoint);
        break;
    default:
        return HM_ERR_INVALID;
    }
    out[0] = (uint8_t)event->kind;
    out[1] = 0;
    store_u16(out + 2, (uint16_t)at);
    memcpy(out + 4, event->event_id, UUID_SIZE);
    store_u64(out + 20, (uint64_t)event->timestamp_us);
    return (int)at;
}

void frame_builder_start(struct frame_builder *builder, uint8_t *buffer, size_t body_limit)
{
    builder->buffer = buffer;
    builder->size = FRAME_HEADER_SIZE;
    builder->event_count = 0;
    builder->body_limit = body_limit < FRAME_BODY_MAX ? body_limit : FRAME_BODY_MAX;
}

int frame_builder_add(struct frame_builder *builder, const struct event *event)
{
    if (builder->event_count >= FRAME_EVENTS_MAX)
        return HM_ERR_FULL;
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(event, record);
    if (size < 0)
        return size;
    if (builder->size - FRAME_HEADER_SIZE + (size_t)size > builder->body_limit)
        return HM_ERR_FULL;
    memcpy(builder->buffer + builder->size, record, (size_t)size);
    builder->size += (size_t)size;
    builder->event_count++;
    return HM_OK;
}

size_t frame_builder_seal(struct frame_builder *builder, uint64_t frame_id, uint64_t key_id,
                          const uint8_t tenant_id[UUID_SIZE], const uint8_t signing_key[32])
{
    uint8_t *b = builder->buffer;
    memcpy(b, FRAME_MAGIC, 4);
    b[4] = FRAME_VERSION;
    b[5] = 0;
    store_u16(b + 6, builder->event_count);
    store_u32(b + 8, (uint32_t)(builder->size - FRAME_HEADER_SIZE));
    store_u64(b + 12, frame_id);
    store_u64(b + 20, key_id);
    memcpy(b + 28, tenant_id, UUID_SIZE);
    unsigned int mac_size = 0;
    HMAC(EVP_sha256(), signing_key, 32, b, builder->size, b + builder->size, &mac_size);
    size_t total = builder->size + FRAME_MAC_SIZE;
    builder->size = FRAME_HEADER_SIZE;
    builder->event_count = 0;
    return total;
}

void ack_encode(const struct frame_ack *ack, uint8_t out[ACK_SIZE])
{
    memcpy(out, ACK_MAGIC, 4);
    out[4] = FRAME_VERSION;
    out[5] = (uint8_t)ack->status;
    store_u16(out + 6, ack->detail);
    store_u64(out + 8, ack->frame_id);
    store_u16(out + 16, ack->stored);
    store_u16(out + 18, ack->duplicates);
    store_u16(out + 20, ack->conflicts);
    store_u16(out + 22, 0);
}

int ack_decode(const uint8_t bytes[ACK_SIZE], struct frame_ack *ack)
{
    if (memcmp(bytes, ACK_MAGIC, 4) != 0 || bytes[4] != FRAME_VERSION ||
        bytes[5] >= FRAME_STATUS_COUNT)
        return HM_ERR_INVALID;
    ack->status = (enum frame_status)bytes[5];
    ack->detail = load_u16(bytes + 6);
    ack->frame_id = load_u64(bytes + 8);
    ack->stored = load_u16(bytes + 16);
    ack->duplicates = load_u16(bytes + 18);
    ack->conflicts = load_u16(bytes + 20);
    return HM_OK;
}
