/*
 * The events of the crash tests, a pure function of (sender, sequence number),
 * so that the checker can rebuild every stored record and compare its bytes.
 * Header-only: crash_load and crash_check include it.
 */
#ifndef HM_TEST_CRASH_EVENTS_H
#define HM_TEST_CRASH_EVENTS_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ingest/event.h"

/* First byte of every event id of the crash tests; any other first byte is a foreign event. */
#define CRASH_ID_MARKER 0xc5
/* The months the events fall in: April, May and June 2024. */
#define CRASH_PERIOD_FIRST 202404
#define CRASH_PERIOD_COUNT 3
#define CRASH_SENDERS_MAX 256

static inline uint32_t crash_period(unsigned index)
{
    uint32_t period = CRASH_PERIOD_FIRST;
    for (unsigned i = 0; i < index; i++)
        period = period_next(period);
    return period;
}

/* Event id: marker, sender, sequence number (big-endian), then a fixed tail. */
static inline void crash_event_id(unsigned sender, uint64_t seq, uint8_t id[UUID_SIZE])
{
    id[0] = CRASH_ID_MARKER;
    id[1] = (uint8_t)sender;
    for (int i = 0; i < 8; i++)
        id[2 + i] = (uint8_t)(seq >> (56 - 8 * i));
    memset(id + 10, 0x5a, UUID_SIZE - 10);
}

/* Reads the sender and sequence number back; returns 0, or -1 for a foreign id. */
static inline int crash_event_id_decode(const uint8_t id[UUID_SIZE], unsigned *sender,
                                        uint64_t *seq)
{
    static const uint8_t tail[UUID_SIZE - 10] = { 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a };
    if (id[0] != CRASH_ID_MARKER || memcmp(id + 10, tail, sizeof tail) != 0)
        return -1;
    *sender = id[1];
    *seq = 0;
    for (int i = 0; i < 8; i++)
        *seq = *seq << 8 | id[2 + i];
    return 0;
}

/* Fills event number `seq` of `sender`: a GPU allocation, an inference or an API call. */
static inline void crash_event(unsigned sender, uint64_t seq, struct event *event)
{
    memset(event, 0, sizeof *event);
    crash_event_id(sender, seq, event->event_id);
    uint32_t period = crash_period((unsigned)(seq % CRASH_PERIOD_COUNT));
    /* Spread over the first 20 days of the month, at whole milliseconds. */
    event->timestamp_us = period_start_us(period) + (int64_t)(seq % 1728000000) * 1000;
    switch (seq % 3) {
    case 0:
        event->kind = EVENT_GPU_ALLOCATION;
        snprintf(event->u.gpu.allocation_id, sizeof event->u.gpu.allocation_id, "alloc-%u-%llu",
                 sender, (unsigned long long)(seq % 1000));
        snprintf(event->u.gpu.pool_id, sizeof event->u.gpu.pool_id, "pool-a");
        snprintf(event->u.gpu.gpu_type, sizeof event->u.gpu.gpu_type, "%s",
                 seq % 2 ? "H100" : "A100");
        event->u.gpu.duration_s = (uint32_t)(1 + seq % 3600);
        event->u.gpu.cost_per_hour_micro = 2490000;
        break;
    case 1:
        event->kind = EVENT_INFERENCE;
        snprintf(event->u.inference.model, sizeof event->u.inference.model, "kimi-chat");
        event->u.inference.input_tokens = 100 + seq % 1000;
        event->u.inference.cached_input_tokens = seq % 50;
        event->u.inference.output_tokens = 10 + seq % 200;
        event->u.inference.latency_ms = (uint32_t)(seq % 900);
        event->u.inference.gpu_time_ms = seq % 700;
        break;
    default:
        event->kind = EVENT_API_CALL;
        snprintf(event->u.api.endpoint, sizeof event->u.api.endpoint, "/v1/chat/completions");
        event->u.api.response_code = 200;
        event->u.api.response_time_ms = (uint32_t)(seq % 300);
        break;
    }
}

#endif
