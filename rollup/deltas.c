#include "deltas.h"
#include "deltas_private.h"
#include "ledger_private.h"
#include "hash_mix.h"

#include "common/status.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/*
 * The keys of rollup_key_hash, random per process. A rollup key ends in the
 * sender's model name or endpoint, and with a public hash a sender could
 * choose names whose keys share one probe run, making every sum quadratic.
 */
static uint64_t key_seed[2];
static pthread_once_t key_seed_once = PTHREAD_ONCE_INIT;

static void key_seed_make(void)
{
    if (getrandom(key_seed, sizeof key_seed, 0) == sizeof key_seed)
        return;
    /* Without randomness, the clock and an address, which a sender cannot read. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    key_seed[0] = (uint64_t)now.tv_nsec * UINT64_C(0x9e3779b97f4a7c15) ^ (uintptr_t)&now;
    key_seed[1] = (uint64_t)now.tv_sec * UINT64_C(0xbf58476d1ce4e5b9) ^ (uintptr_t)key_seed;
}

static size_t slots_for(size_t keys)
{
    size_t slots = 128;
    while (slots / 2 < keys)
        slots *= 2;
    return slots;
}

int rollup_deltas_create(struct rollup_deltas **out, size_t keys)
{
    /* Every hash of a key goes into a table, so the seeds exist before the first. */
    pthread_once(&key_seed_once, key_seed_make);
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

/*
 * Hashes a rollup key 16 bytes at a time. Both factors of each multiply
 * carry a seed, so that a sender who cannot read the seeds has no known way
 * to choose bytes that collide.
 */
uint64_t rollup_key_hash(const uint8_t *bytes, size_t size)
{
    uint64_t hash = key_seed[0] ^ size;
    size_t i = 0;
    for (; i + 16 <= size; i += 16) {
        uint64_t low, high;
        memcpy(&low, bytes + i, 8);
        memcpy(&high, bytes + i + 8, 8);
        hash = hash_mix(low ^ key_seed[0] ^ hash, high ^ key_seed[1]);
    }
    uint64_t low = 0, high = 0;
    size_t rest = size - i;
    memcpy(&low, bytes + i, rest < 8 ? rest : 8);
    if (rest > 8)
        memcpy(&high, bytes + i + 8, rest - 8);
    return hash_mix(low ^ key_seed[0] ^ hash, high ^ key_seed[1] ^ UINT64_C(0xa0761d6478bd642f));
}

/*
 * Returns the slot of a key, adding the key with a zero change when the
 * table lacks it; -1 when the table had to grow and could not.
 */
static ptrdiff_t slot_of(struct rollup_deltas *deltas, const uint8_t *key, size_t key_size,
                         uint64_t hash)
{
    if (rollup_deltas_reserve(deltas, 1) != HM_OK)
        return -1;
    size_t slot = (size_t)hash & deltas->mask;
    for (;;) {
        struct rollup_delta *delta = &deltas->slots[slot];
        if (delta->key_size == 0) {
            delta->hash = hash;
            delta->key_size = (uint8_t)key_size;
            memcpy(delta->key, key, key_size);
            delta->quantity = 0;
            delta->count = 0;
            deltas->used[deltas->count++] = slot;
            return (ptrdiff_t)slot;
        }
        if (delta->hash == hash && delta->key_size == key_size &&
            memcmp(delta->key, key, key_size) == 0)
            return (ptrdiff_t)slot;
        slot = (slot + 1) & deltas->mask;
    }
}

/* The hash of a key with its meter byte mixed in, as rollup_deltas_add makes it. */
static uint64_t meter_hash(uint64_t key_hash, uint8_t meter)
{
    uint64_t hash = (key_hash ^ (uint64_t)meter) * UINT64_C(0x9e3779b97f4a7c15);
    return hash ^ (hash >> 29);
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
    ptrdiff_t slot = slot_of(deltas, memo->key, memo->key_size,
                             meter_hash(memo->key_hash, (uint8_t)meter));
    if (slot < 0)
        return HM_ERR_NOMEM;
    deltas->slots[slot].quantity += quantity;
    deltas->slots[slot].count += count;
    if (slot_out != NULL)
        *slot_out = (size_t)slot;
    return HM_OK;
}

int rollup_deltas_add_key(struct rollup_deltas *deltas, const uint8_t *key, size_t key_size,
                          unsigned __int128 quantity, uint64_t count)
{
    if (key_size <= ROLLUP_KEY_METER_AT || key_size > ROLLUP_KEY_MAX)
        return HM_ERR_INVALID;
    uint8_t plain[ROLLUP_KEY_MAX];
    memcpy(plain, key, key_size);
    plain[ROLLUP_KEY_METER_AT] = 0;
    uint64_t hash = meter_hash(rollup_key_hash(plain, key_size), key[ROLLUP_KEY_METER_AT]);
    ptrdiff_t slot = slot_of(deltas, key, key_size, hash);
    if (slot < 0)
        return HM_ERR_NOMEM;
    struct rollup_delta *delta = &deltas->slots[slot];
    if (delta->quantity + quantity < delta->quantity || delta->count + count < delta->count)
        return HM_ERR_STORAGE;
    delta->quantity += quantity;
    delta->count += count;
    return HM_OK;
}

int rollup_deltas_merge(struct rollup_deltas *into, const struct rollup_deltas *from,
                        int subtract)
{
    for (size_t i = 0; i < from->count; i++) {
        const struct rollup_delta *change = &from->slots[from->used[i]];
        ptrdiff_t slot = slot_of(into, change->key, change->key_size, change->hash);
        if (slot < 0)
            return HM_ERR_NOMEM;
        struct rollup_delta *delta = &into->slots[slot];
        if (!subtract) {
            delta->quantity += change->quantity;
            delta->count += change->count;
            continue;
        }
        if (delta->quantity < change->quantity || delta->count < change->count)
            return HM_ERR_STORAGE;
        delta->quantity -= change->quantity;
        delta->count -= change->count;
    }
    return HM_OK;
}

int rollup_deltas_add_counted(struct rollup_deltas *into, const struct rollup_deltas *from)
{
    for (size_t i = 0; i < from->count; i++) {
        const struct rollup_delta *change = &from->slots[from->used[i]];
        if (change->count == 0)
            continue;
        ptrdiff_t slot = slot_of(into, change->key, change->key_size, change->hash);
        if (slot < 0)
            return HM_ERR_NOMEM;
        struct rollup_delta *delta = &into->slots[slot];
        if (delta->quantity + change->quantity < delta->quantity ||
            delta->count + change->count < delta->count)
            return HM_ERR_STORAGE;
        delta->quantity += change->quantity;
        delta->count += change->count;
    }
    return HM_OK;
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
 * Slots of the keys that a run of events of one tenant changed, in a small
 * direct-mapped cache: the events of a frame share a few periods, models
 * and kinds, so most of their changes find their slot here without
 * building and hashing the whole key. An entry is found by the hash of its
 * dimension, computed once per dimension of an event, with its period and
 * meter; the dimension's text is compared only on a match.
 */
#define SLOT_CACHE_SIZE 64

struct cached_slot {
    uint64_t dimension_hash;
    uint32_t period;
    uint32_t meter;        /* enum rollup_meter + 1; 0: an empty entry */
    const char *dimension; /* borrowed from an event of the run */
    size_t slot;
};

struct events_sink {
    struct event_sink base;
    const char *dimension; /* whose hash is dimension_hash */
    uint64_t dimension_hash;
    struct cached_slot cache[SLOT_CACHE_SIZE];
};

static int events_sink(void *context, enum rollup_meter meter, const char *dimension,
                       uint64_t quantity)
{
    struct events_sink *sink = context;
    uint32_t period = sink->base.memo.period;
    /* The meters of an event share its dimension, which keeps its address. */
    if (dimension != sink->dimension) {
        sink->dimension = dimension;
        sink->dimension_hash = rollup_key_hash((const uint8_t *)dimension, strlen(dimension));
    }
    uint64_t hash = sink->dimension_hash ^ ((uint64_t)period << 8 | (uint64_t)meter);
    hash *= UINT64_C(0x9e3779b97f4a7c15);
    struct cached_slot *cached = &sink->cache[hash >> 58];
    _Static_assert(SLOT_CACHE_SIZE == 64, "the cache index takes the top 6 bits of the hash");
    if (cached->meter == (uint32_t)meter + 1 && cached->period == period &&
        cached->dimension_hash == sink->dimension_hash &&
        (cached->dimension == dimension || strcmp(cached->dimension, dimension) == 0)) {
        struct rollup_delta *delta = &sink->base.deltas->slots[cached->slot];
        delta->quantity += quantity;
        delta->count++;
        return HM_OK;
    }
    size_t slot;
    int rc = rollup_deltas_add(sink->base.deltas, &sink->base.memo, meter, dimension, quantity,
                               1, &slot);
    if (rc != HM_OK)
        return rc;
    *cached = (struct cached_slot){ sink->dimension_hash, period, (uint32_t)meter + 1, dimension,
                                    slot };
    return HM_OK;
}

/*
 * The months of a run's timestamps, remembered: the events of a frame fall
 * in a few months, and the calendar arithmetic of event_period_of costs more
 * than the rest of a rollup change.
 */
#define MONTH_CACHE_SIZE 8

struct month_cache {
    int64_t start_us[MONTH_CACHE_SIZE], end_us[MONTH_CACHE_SIZE];
    uint32_t period[MONTH_CACHE_SIZE];
    size_t count, next;
};

static uint32_t month_of(struct month_cache *cache, int64_t timestamp_us)
{
    for (size_t i = 0; i < cache->count; i++) {
        if (timestamp_us >= cache->start_us[i] && timestamp_us < cache->end_us[i])
            return cache->period[i];
    }
    uint32_t period = event_period_of(timestamp_us);
    uint32_t next = period % 100 == 12 ? (period / 100 + 1) * 100 + 1 : period + 1;
    size_t at = cache->count < MONTH_CACHE_SIZE ? cache->count++ : cache->next++ % MONTH_CACHE_SIZE;
    cache->start_us[at] = period_start_us(period);
    cache->end_us[at] = period_start_us(next);
    cache->period[at] = period;
    return period;
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
    sink.dimension = NULL;
    memset(sink.cache, 0, sizeof sink.cache);
    struct month_cache months = { .count = 0 };
    for (size_t i = 0; i < count && rc == HM_OK; i++) {
        const struct event *event = &events[i];
        uint32_t period = month_of(&months, event->timestamp_us);
        rollup_key_memo_start(&sink.base.memo, event->tenant_id, period);
        rc = ledger_event_rollups(event, events_sink, &sink);
    }
    return rc;
}
