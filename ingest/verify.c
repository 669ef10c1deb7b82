#include "server.h"

#include "common/status.h"

#include <string.h>

enum frame_status frame_verify(const uint8_t *frame, size_t frame_size,
                               const struct server_hooks *hooks, struct frame_header *header,
                               uint16_t *detail_out, const char **reason_out)
{
    *detail_out = 0;
    *reason_out = NULL;
    if (frame_size < FRAME_HEADER_SIZE)
        return FRAME_TRUNCATED;
    enum frame_status status = frame_header_decode(frame, header);
    if (status != FRAME_ACCEPTED)
        return status;
    if (frame_size < frame_total_size(header))
        return FRAME_TRUNCATED;
    if (frame_size > frame_total_size(header)) {
        *reason_out = "bytes after the MAC";
        return FRAME_MALFORMED;
    }

    struct ingest_key key;
    int rc = hooks->key_lookup(hooks->context, header->key_id, &key);
    if (rc == HM_ERR_NOT_FOUND)
        return FRAME_UNKNOWN_KEY;
    if (rc != HM_OK)
        return FRAME_STORE_FAILED;
    /* The MAC comes first, so that an unsigned sender learns nothing about keys or tenants. */
    if (!frame_mac_verify(frame, frame_size, key.signing_key))
        return FRAME_BAD_MAC;
    if (key.revoked)
        return FRAME_REVOKED_KEY;
    if (memcmp(key.tenant_id, header->tenant_id, UUID_SIZE) != 0)
        return FRAME_WRONG_TENANT;

    const uint8_t *body = frame + FRAME_HEADER_SIZE;
    size_t offset = 0;
    for (uint16_t i = 0; i < header->event_count; i++) {
        struct event event;
        if (record_decode(body, header->body_size, &offset, header->tenant_id, &event,
                          reason_out) != HM_OK) {
            *detail_out = i;
            return FRAME_MALFORMED;
        }
    }
    if (header->event_count == 0) {
        *reason_out = "frame has no events";
        return FRAME_MALFORMED;
    }
    if (offset != header->body_size) {
        *detail_out = header->event_count;
        *reason_out = "body longer than its event records";
        return FRAME_MALFORMED;
    }
    return FRAME_ACCEPTED;
}
