#include "server.h"

#include "common/status.h"

#include <string.h>

/*
 * Returns FRAME_ACCEPTED when the event's time lies in the policy's window,
 * else the status that names the side it missed.
 */
static enum frame_status event_time_check(const struct verify_policy *policy, int64_t timestamp_us,
                                          const char **reason_out)
{
    /* Timestamps and the clock lie in [0, year 10000), so these differences cannot overflow. */
    if (policy->max_age_us > 0 && policy->now_us - timestamp_us > policy->max_age_us) {
        *reason_out = "event older than --max-event-age-days";
        return FRAME_EVENT_TOO_OLD;
    }
    if (policy->max_skew_us >= 0 && timestamp_us - policy->now_us > policy->max_skew_us) {
        *reason_out = "event ahead of the server clock by more than --max-event-skew-seconds";
        return FRAME_EVENT_IN_FUTURE;
    }
    return FRAME_ACCEPTED;
}

enum frame_status frame_verify(const uint8_t *frame, size_t frame_size,
                               const struct server_hooks *hooks,
                               const struct verify_policy *policy, struct frame_header *header,
                               struct event *events_out, uint16_t *detail_out,
                               const char **reason_out)
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

    struct ingest_key key = { 0 };
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
    if (key.expires_s != 0 && policy->now_us / 1000000 >= key.expires_s)
        return FRAME_EXPIRED_KEY;
    if (memcmp(key.tenant_id, header->tenant_id, UUID_SIZE) != 0)
        return FRAME_WRONG_TENANT;

    /*
     * A malformed record anywhere outranks an event outside the time window,
     * so the first window failure is kept until every record has decoded.
     */
    const uint8_t *body = frame + FRAME_HEADER_SIZE;
    size_t offset = 0;
    enum frame_status window_status = FRAME_ACCEPTED;
    uint16_t window_index = 0;
    const char *window_reason = NULL;
    for (uint16_t i = 0; i < header->event_count; i++) {
        struct event decoded;
        struct event *event = events_out != NULL ? &events_out[i] : &decoded;
        if (record_decode(body, header->body_size, &offset, header->tenant_id, event,
                          reason_out) != HM_OK) {
            *detail_out = i;
            return FRAME_MALFORMED;
        }
        if (window_status == FRAME_ACCEPTED) {
            window_status = event_time_check(policy, event->timestamp_us, &window_reason);
            window_index = i;
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
    if (window_status != FRAME_ACCEPTED) {
        *detail_out = window_index;
        *reason_out = window_reason;
    }
    return window_status;
}
