/*
 * Rollups keyed by "tenant|period|meter|dimension" in an open-addressing hash
 * table: the expected ones, computed from the pool, and each peer's, read back
 * after a phase, so that every peer is checked against the same figures.
 */
#include "bench.h"

#include "common/status.h"
#include "rollup/ledger.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_text(const char *text)
{
    uint64_t hash = UINT64_C(1469598103934665603); /* FNV-1a */
    for (; *text; text++)
        hash = (hash ^ (uint8_t)*text) * UINT64_C(1099511628211);
    return hash;
}

int rollup_map_init(struct rollup_map *map)
{
    map->capacity = 4096;
    map->count = 0;
    map->entries = calloc(map->capacity, sizeof *map->entries);
    return map->entries == NULL ? HM_ERR_NOMEM : HM_OK;
}

void rollup_map_free(struct rollup_map *map)
{
    free(map->entries);
    memset(map, 0, sizeof *map);
}

static struct rollup_entry *slot_of(const struct rollup_map *map, const char *key)
{
    size_t index = hash_text(key) & (map->capacity - 1);
    while (map->entries[index].used && strcmp(map->entries[index].key, key) != 0)
        index = (index + 1) & (map->capacity - 1);
    return &map->entries[index];
}

static int grow(struct rollup_map *map)
{
    struct rollup_map bigger = { .capacity = map->capacity * 2, .count = map->count };
    bigger.entries = calloc(bigger.capacity, sizeof *bigger.entries);
    if (bigger.entries == NULL)
        return HM_ERR_NOMEM;
    for (size_t i = 0; i < map->capacity; i++) {
        if (map->entries[i].used)
            *slot_of(&bigger, map->entries[i].key) = map->entries[i];
    }
    free(map->entries);
    *map = bigger;
    return HM_OK;
}

int rollup_map_add(struct rollup_map *map, const char *tenant_text, uint32_t period, int meter,
                   const char *dimension, unsigned __int128 quantity, uint64_t event_count)
{
    if (2 * (map->count + 1) > map->capacity && grow(map) != HM_OK)
        return HM_ERR_NOMEM;
    char key[sizeof map->entries[0].key];
    int size = snprintf(key, sizeof key, "%s|%u|%d|%s", tenant_text, period, meter, dimension);
    if (size < 0 || (size_t)size >= sizeof key)
        return HM_ERR_INVALID;
    struct rollup_entry *entry = slot_of(map, key);
    if (!entry->used) {
        memcpy(entry->key, key, (size_t)size + 1);
        entry->used = 1;
        map->count++;
    }
    entry->quantity += quantity;
    entry->event_count += event_count;
    return HM_OK;
}

int rollup_rows_of_event(const struct event *event, rollup_row_fn row, void *context)
{
    char tenant[UUID_TEXT_SIZE];
    uuid_format(event->tenant_id, tenant);
    uint32_t period = event_period_of(event->timestamp_us);
    int rc = row(context, tenant, period, ROLLUP_EVENTS, event_kind_name(event->kind), 1);
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        return rc ? rc : row(context, tenant, period, ROLLUP_GPU_SECONDS, event->u.gpu.gpu_type,
                             event->u.gpu.duration_s);
    case EVENT_INFERENCE: {
        const struct event_inference *inference = &event->u.inference;
        uint64_t uncached = inference->input_tokens - inference->cached_input_tokens;
        if (rc == HM_OK && uncached > 0)
            rc = row(context, tenant, period, ROLLUP_INPUT_TOKENS, inference->model, uncached);
        if (rc == HM_OK && inference->output_tokens > 0)
            rc = row(context, tenant, period, ROLLUP_OUTPUT_TOKENS, inference->model,
                     inference->output_tokens);
        if (rc == HM_OK && inference->cached_input_tokens > 0)
            rc = row(context, tenant, period, ROLLUP_CACHED_INPUT_TOKENS, inference->model,
                     inference->cached_input_tokens);
        return rc;
    }
    case EVENT_STORAGE:
        if (rc == HM_OK && event->u.storage.bytes_transferred > 0)
            rc = row(context, tenant, period, ROLLUP_TRANSFER_BYTES, "",
                     event->u.storage.bytes_transferred);
        return rc;
    case EVENT_API_CALL:
        return rc ? rc : row(context, tenant, period, ROLLUP_API_CALLS, "", 1);
    }
    return HM_ERR_INVALID;
}

static int add_row(void *context, const char *tenant_text, uint32_t period, int meter,
                   const char *dimension, uint64_t quantity)
{
    return rollup_map_add(context, tenant_text, period, meter, dimension, quantity, 1);
}

int rollup_map_add_event(struct rollup_map *map, const struct event *event)
{
    return rollup_rows_of_event(event, add_row, map);
}

int rollup_map_expected(struct rollup_map *map, struct pool *pool, size_t frame_count)
{
    for (size_t f = 0; f < frame_count; f++) {
        const struct pool_frame *frame = &pool->frames[f];
        const uint8_t *body = pool->frame_bytes + frame->offset + FRAME_HEADER_SIZE;
        size_t body_size = frame->size - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
        size_t offset = 0;
        for (uint16_t i = 0; i < frame->event_count; i++) {
            struct event event;
            const char *reason = NULL;
            int rc = record_decode(body, body_size, &offset,
                                   pool->tenants[frame->tenant_index].id, &event, &reason);
            if (rc == HM_OK)
                rc = rollup_map_add_event(map, &event);
            if (rc != HM_OK)
                return rc;
        }
    }
    return HM_OK;
}

static void print_difference(const char *label, const char *key, const struct rollup_entry *want,
                             const struct rollup_entry *got)
{
    fprintf(stderr, "meterbench: %s: rollup %s: expected quantity %llu events %llu, got "
            "quantity %llu events %llu\n", label, key,
            want ? (unsigned long long)want->quantity : 0ULL,
            want ? (unsigned long long)want->event_count : 0ULL,
            got ? (unsigned long long)got->quantity : 0ULL,
            got ? (unsigned long long)got->event_count : 0ULL);
}

size_t rollup_map_diff(const struct rollup_map *want, const struct rollup_map *got,
                       const char *label, int print_max)
{
    size_t differences = 0;
    for (size_t i = 0; i < want->capacity; i++) {
        const struct rollup_entry *expected = &want->entries[i];
        if (!expected->used)
            continue;
        const struct rollup_entry *actual = slot_of(got, expected->key);
        if (actual->used && actual->quantity == expected->quantity &&
            actual->event_count == expected->event_count)
            continue;
        if ((int)differences++ < print_max)
            print_difference(label, expected->key, expected, actual->used ? actual : NULL);
    }
    for (size_t i = 0; i < got->capacity; i++) {
        const struct rollup_entry *actual = &got->entries[i];
        if (!actual->used || slot_of(want, actual->key)->used)
            continue;
        if ((int)differences++ < print_max)
            print_difference(label, actual->key, NULL, actual);
    }
    return differences;
}

size_t rollup_map_periods(const struct rollup_map *map, uint32_t *periods, size_t periods_max)
{
    size_t count = 0;
    for (size_t i = 0; i < map->capacity; i++) {
        if (!map->entries[i].used)
            continue;
        const char *bar = strchr(map->entries[i].key, '|');
        uint32_t period = bar ? (uint32_t)strtoul(bar + 1, NULL, 10) : 0;
        size_t j = 0;
        while (j < count && periods[j] < period)
            j++;
        if ((j < count && periods[j] == period) || count == periods_max)
            continue;
        memmove(&periods[j + 1], &periods[j], (count - j) * sizeof *periods);
        periods[j] = period;
        count++;
    }
    return count;
}
