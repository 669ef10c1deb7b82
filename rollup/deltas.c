#include "deltas.h"
#include "deltas_private.h"
#include "ledger_private.h"

#include "common/status.h"

#include <stdlib.h>
#include <string.h>

static size_t slots_for(size_t keys)
{
    size_t slots = 128;
    while (slots / 2 < keys)
        slots *= 2;
    return slots;
}

int rollup_deltas_create(struct rollup_deltas **out, size_t keys)
{
    struct rollup_deltas *deltas = calloc(1, sizeof *deltas);
    if (deltas == NULL)
        return HM_ERR_NOMEM;
    size_t slots = slots_for(keys < 64 ? 64 : keys);
    deltas->slots = calloc(slots, sizeof *deltas->slots);
    deltas->used = malloc(slots / 2 * sizeof *deltas->used);
    if (deltas->slots == NULL || deltas->used == NULL) {
        rollup_deltas_free(deltas);
        return HM_ERR_NOMEM;
    }
    deltas->mask = slots - 1;
    *out = deltas;
    return HM_OK;
}

void rollup_deltas_free(struct rollup_deltas *deltas)
{
    if (deltas == NULL)
        return;
    free(deltas->slots);
    free(deltas->used);
    free(deltas);
}

void rollup_deltas_clear(struct rollup_deltas *deltas)
{
    for (size_t i = 0; i < deltas->count; i++)
        deltas->slots[deltas->used[i]].key_size = 0;
    deltas->count = 0;
}

size_t rollup_deltas_count(const struct rollup_deltas *deltas)
{
    return deltas->count;
}

/* Places every key again in a table of `slots` slots. */
static int regrow(struct rollup_deltas *deltas, size_t slots)
{
    struct rollup_delta *table = calloc(slots, sizeof *table);
    size_t *used = malloc(slots / 2 * sizeof *used);
    if (table == NULL || used == NULL) {
        free(table);
        free(used);
        return HM_ERR_NOMEM;
    }
    size_t mask = slots - 1;
    for (size_t i = 0; i < deltas->count; i++) {
        const struct rollup_delta *delta = &deltas->slots[deltas->used[i]];
        size_t at = (size_t)delta->hash & mask;
        while (table[at].key_size != 0)
            at = (at + 1) & mask;
        table[at] = *delta;
        used[i] = at;
    }
    free(deltas->slots);
    free(deltas->used);
    deltas->slots = table;
    deltas->used = used;
    deltas->mask = mask;
    return HM_OK;
}

int rollup_deltas_reserve(struct rollup_deltas *deltas, size_t keys)
{
    size_t slots = deltas->mask + 1;
    if (deltas->count + keys <= slots / 2)
        return HM_OK;
    return regrow(deltas, slots_for(deltas->count + keys));
}

/* Hashes a rollup key 8 bytes at a time; the keys are the engine's own, not a sender's. */
uint64_t rollup_key_hash(const uint8_t *bytes, size_t size)
{
    uint64_t hash = UINT64_C(0x9e3779b97f4a7c15) ^ size;
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, bytes + i, 8);
        hash = (hash ^ word) * UINT64_C(0xff51afd7ed558ccd);
        hash ^= hash >> 29;
    }
    uint64_t tail = 0;
    memcpy(&tail, bytes + i, size - i);
    hash = (hash ^ tail) * UINT64_C(0xc4ceb9fe1a85ec53);
    return hash ^ (hash >> 32);
}

int rollup_deltas_add(struct rollup_deltas *deltas, struct rollup_key_memo *memo,
                      enum rollup_meter meter, const char *dimension,
                      unsigned __int128 quantity, uint64_t count, size_t *slot_out)
{
    if (memo->dimension != dimension) {
        memo->dimension = dimension;
        memo->key_size = rollup_key(memo->key, memo->tenant_id, memo->period,
                                    (enum rollup_meter)0, dimension);
        memo->key_hash = rollup_key_hash(memo->key, memo->key_size);
    }
    memo->key[ROLLUP_KEY_METER_AT] = (uint8_t)meter;
    uint64_t hash = (memo->key_hash ^ (uint64_t)meter) * UINT64_C(0x9e3779b97f4a7c15);
    hash ^= hash >> 29;

    if (rollup_deltas_reserve(deltas, 1) != HM_OK)
        return HM_ERR_NOMEM;
    size_t slot = (size_t)hash & deltas->mask;
    for (;;) {
        struct rollup_delta *delta = &deltas->slots[slot];
        if (delta->key_size == 0) {
            delta->hash = hash;
            delta->key_size = (uint8_t)memo->key_size;
            memcpy(delta->key, memo->key, memo->key_size);
            delta->quantity = quantity;
            delta->count = count;
            deltas->used[deltas->count++] = slot;
            if (slot_out != NULL)
                *slot_out = slot;
            return HM_OK;
        }
        if (delta->hash == hash && delta->key_size == memo->key_size &&
            memcmp(delta->key, memo->key, memo->key_size) == 0) {
            delta->quantity += quantity;
            delta->count += count;
            if (slot_out != NULL)
                *slot_out = slot;
            return HM_OK;
        }
        slot = (slot + 1) & deltas->mask;
    }
}

struct event_sink {
    struct rollup_deltas *deltas;
    struct rollup_key_memo memo;
};

static int event_sink(void *context, enum rollup_meter meter, const char *dimension,
                      uint64_t quantity)
{
    struct event_sink *sink = context;
    return rollup_deltas_add(sink->deltas, &sink->memo, meter, dimension, quantity, 1, NULL);
}

int rollup_deltas_add_event(struct rollup_deltas *deltas, const struct event *event)
{
    struct event_sink sink;
    sink.deltas = deltas;
    rollup_key_memo_start(&sink.memo, event->tenant_id, event_period_of(event->timestamp_us));
    return ledger_event_rollups(event, event_sink, &sink);
}

/*
 * Keys that a run of events of one tenant changed last, with their slots:
 * the events of a frame share a few periods, models and kinds, so most of
 * their changes find their slot here without building and hashing the key.
 */
#define SLOT_CACHE_SIZE 16

struct cached_slot {
    enum rollup_meter meter;
    uint32_t period;
    const char *dimension; /* borrowed from an event of the run */
    size_t slot;
};

struct events_sink {
    struct event_sink base;
    struct cached_slot cache[SLOT_CACHE_SIZE];
    size_t cache_count;
    size_t cache_next; /* the entry to replace when the cache is full */
};

static int events_sink(void *context, enum rollup_meter meter, const char *dimension,
                       uint64_t quantity)
{
    struct events_sink *sink = context;
    uint32_t period = sink->base.memo.period;
    for (size_t i = 0; i < sink->cache_count; i++) {
        const struct cached_slot *cached = &sink->cache[i];
        if (cached->meter == meter && cached->period == period &&
            strcmp(cached->dimension, dimension) == 0) {
            struct rollup_delta *delta = &sink->base.deltas->slots[cached->slot];
            delta->quantity += quantity;
            delta->count++;
            return HM_OK;
        }
    }
    size_t slot;
    int rc = rollup_deltas_add(sink->base.deltas, &sink->base.memo, meter, dimension, quantity,
                               1, &slot);
    if (rc != HM_OK)
        return rc;
    size_t at = sink->cache_count < SLOT_CACHE_SIZE ? sink->cache_count++ : sink->cache_next++;
    sink->cache_next %= SLOT_CACHE_SIZE;
    sink->cache[at] = (struct cached_slot){ meter, period, dimension, slot };
    return HM_OK;
}

int rollup_deltas_add_events(struct rollup_deltas *deltas, const struct event *events,
                             size_t count)
{
    for (size_t i = 1; i < count; i++) {
        if (memcmp(events[i].tenant_id, events[0].tenant_id, UUID_SIZE) != 0)
            return HM_ERR_INVALID;
    }
    /* Cached slots stay valid only while the table does not grow. */
    int rc = rollup_deltas_reserve(deltas, count * ROLLUP_CHANGES_MAX);
    if (rc != HM_OK)
        return rc;
    struct events_sink sink;
    sink.base.deltas = deltas;
    sink.cache_count = 0;
    sink.cache_next = 0;
    int64_t day_start_us = INT64_MIN, day_end_us = INT64_MIN;
    uint32_t period = 0;
    for (size_t i = 0; i < count && rc == HM_OK; i++) {
        const struct event *event = &events[i];
        /* The period of a UTC day, remembered: most events of a run fall on a few days. */
        if (event->timestamp_us < day_start_us || event->timestamp_us >= day_end_us) {
            int64_t day_us = INT64_C(86400000000);
            day_start_us = event->timestamp_us / day_us * day_us;
            if (event->timestamp_us % day_us < 0)
                day_start_us -= day_us;
            day_end_us = day_start_us + day_us;
            period = event_period_of(event->timestamp_us);
        }
        rollup_key_memo_start(&sink.base.memo, event->tenant_id, period);
        rc = ledger_event_rollups(event, events_sink, &sink);
    }
    return rc;
}
