/*
 * The usage event model: four kinds of event, each identified by a UUID that
 * is its idempotency key within its tenant.
 */
#ifndef HM_EVENT_H
#define HM_EVENT_H

#include <stdint.h>

#include "common/uuid.h"

enum event_kind {
    EVENT_GPU_ALLOCATION = 1,
    EVENT_INFERENCE = 2,
    EVENT_STORAGE = 3,
    EVENT_API_CALL = 4,
};

/*
 * Longest identifier (GPU type, pool, allocation id, model) in bytes. Names
 * are rollup keys and invoice line labels, so they stay short. The limit of
 * 64 bytes is an estimate of what model and GPU names need.
 */
#define EVENT_NAME_MAX 64
/* Longest API endpoint path in bytes. */
#define EVENT_ENDPOINT_MAX 128

/* Timestamps are valid from 1970-01-01 up to 10000-01-01T00:00:00Z, exclusive. */
#define EVENT_TIMESTAMP_END_US INT64_C(253402300800000000)

struct event_gpu_allocation {
    char allocation_id[EVENT_NAME_MAX + 1];
    char pool_id[EVENT_NAME_MAX + 1];
    char gpu_type[EVENT_NAME_MAX + 1];
    uint32_t duration_s;
    /* The pool's own cost, carried as metadata; pricing uses the price book. */
    int64_t cost_per_hour_micro;
};

struct event_inference {
    char model[EVENT_NAME_MAX + 1];
    uint64_t input_tokens;        /* all prompt tokens, cached ones included */
    uint64_t output_tokens;
    uint64_t cached_input_tokens; /* the part of input_tokens served from a prefix cache */
    uint32_t latency_ms;
    uint64_t gpu_time_ms;
};

struct event_storage {
    uint64_t bytes_stored;      /* level held from this event's timestamp on */
    uint64_t bytes_transferred; /* bytes moved since the previous sample */
};

struct event_api_call {
    char endpoint[EVENT_ENDPOINT_MAX + 1];
    uint16_t response_code;
    uint32_t response_time_ms;
};

struct event {
    uint8_t tenant_id[UUID_SIZE];
    uint8_t event_id[UUID_SIZE];
    int64_t timestamp_us; /* microseconds since 1970-01-01T00:00:00Z */
    enum event_kind kind;
    union {
        struct event_gpu_allocation gpu;
        struct event_inference inference;
        struct event_storage storage;
        struct event_api_call api;
    } u;
};

/* Returns the kind's name ("gpu_allocation", ...) or "unknown". */
const char *event_kind_name(enum event_kind kind);

/*
 * Returns the billing period of a timestamp as year * 100 + month (UTC),
 * for example 202406.
 */
uint32_t event_period_of(int64_t timestamp_us);

/* Returns the first microsecond of a period (yyyymm), UTC. */
int64_t period_start_us(uint32_t period);

/* Returns the period after the given one. */
uint32_t period_next(uint32_t period);

/* Parses "YYYY-MM" into yyyymm; returns HM_ERR_INVALID otherwise. */
int period_parse(const char *text, uint32_t *period_out);

#endif
