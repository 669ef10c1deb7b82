#include "usage_input.h"

#include "common/status.h"
#include "rollup/range.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct item_list {
    struct usage_item *items;
    size_t count;
    size_t capacity;
};

static int item_list_grow(struct item_list *list, size_t more)
{
    if (list->count + more <= list->capacity)
        return HM_OK;
    size_t capacity = list->capacity ? list->capacity : 16;
    while (capacity < list->count + more)
        capacity *= 2;
    struct usage_item *items = realloc(list->items, capacity * sizeof *items);
    if (items == NULL)
        return HM_ERR_NOMEM;
    list->items = items;
    list->capacity = capacity;
    return HM_OK;
}

/*
 * Appends the billed rows of one slice as items and adds the event counts
 * of the ROLLUP_EVENTS rows, which are counted, not billed, to *events.
 */
static int items_append(struct item_list *list, const struct rollup_row *rows, size_t count,
                        int64_t start_s, uint64_t *events, char *error, size_t error_size)
{
    int rc = item_list_grow(list, count);
    if (rc != HM_OK)
        return rc;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_EVENTS) {
            *events += (uint64_t)rows[i].quantity;
            continue;
        }
        size_t dimension_size = strlen(rows[i].dimension);
        if (dimension_size > USAGE_DIMENSION_MAX) {
            snprintf(error, error_size,
                     "dimension \"%.40s...\" of meter %d is %zu bytes, more than the %d that "
                     "rating takes; shorten the GPU type or model name at the sender",
                     rows[i].dimension, (int)rows[i].meter, dimension_size, USAGE_DIMENSION_MAX);
            return HM_ERR_INVALID;
        }
        struct usage_item *item = &list->items[list->count++];
        memset(item, 0, sizeof *item);
        item->meter = (enum meter)rows[i].meter;
        memcpy(item->dimension, rows[i].dimension, dimension_size + 1);
        item->quantity = rows[i].quantity;
        item->event_count = rows[i].event_count;
        item->start_s = start_s;
    }
    return HM_OK;
}

static int item_compare(const void *a, const void *b)
{
    const struct usage_item *left = a, *right = b;
    if (left->meter != right->meter)
        return left->meter < right->meter ? -1 : 1;
    int order = strcmp(left->dimension, right->dimension);
    if (order != 0)
        return order;
    return left->start_s < right->start_s ? -1 : left->start_s > right->start_s;
}

static int slices_check(const int64_t *slice_starts, size_t slice_count, uint32_t period,
                        int64_t period_start_s, int64_t period_end_s, char *error,
                        size_t error_size)
{
    if (slice_starts == NULL || slice_count == 0 || slice_count > USAGE_INPUT_SLICES_MAX) {
        snprintf(error, error_size,
                 "%zu slices for period %04u-%02u; give 1 to %d slice starts, the first being "
                 "the period's start",
                 slice_starts ? slice_count : 0, period / 100, period % 100,
                 USAGE_INPUT_SLICES_MAX);
        return HM_ERR_INVALID;
    }
    if (slice_starts[0] != period_start_s) {
        snprintf(error, error_size,
                 "first slice starts at %" PRId64 ", not at the start of period %04u-%02u (%" PRId64
                 "); the first slice must start with the period",
                 slice_starts[0], period / 100, period % 100, period_start_s);
        return HM_ERR_INVALID;
    }
    for (size_t i = 1; i < slice_count; i++) {
        if (slice_starts[i] <= slice_starts[i - 1] || slice_starts[i] >= period_end_s) {
            snprintf(
                error, error_size,
                "slice %zu starts at %" PRId64 ", which is not after the slice before it (%" PRId64
                ") and before the end of period %04u-%02u (%" PRId64 "); slice "
                "starts must ascend strictly inside the period",
                i, slice_starts[i], slice_starts[i - 1], period / 100, period % 100, period_end_s);
            return HM_ERR_INVALID;
        }
    }
    return HM_OK;
}

/* Reads the rows of one slice: the month's rollups for a single slice, else a recount. */
static int slice_rows(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                      int64_t start_s, int64_t end_s, size_t slice_count, struct rollup_row **rows,
                      size_t *count)
{
    if (slice_count == 1)
        return ledger_rollups(ledger, tenant->id, period, rows, count);
    return ledger_usage_range(ledger, tenant->id, start_s * 1000000, end_s * 1000000, rows, count);
}

int usage_input_build(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                      const int64_t *slice_starts, size_t slice_count, struct usage_totals *usage,
                      uint64_t *event_count_out, char *error, size_t error_size)
{
    int64_t period_start_s = period_start_us(period) / 1000000;
    int64_t period_end_s = period_start_us(period_next(period)) / 1000000;
    memset(usage, 0, sizeof *usage);
    if (error_size > 0)
        error[0] = '\0';
    int rc = slices_check(slice_starts, slice_count, period, period_start_s, period_end_s, error,
                          error_size);
    if (rc != HM_OK)
        return rc;

    struct item_list list = {0};
    uint64_t events = 0;
    for (size_t i = 0; i < slice_count && rc == HM_OK; i++) {
        int64_t end_s = i + 1 < slice_count ? slice_starts[i + 1] : period_end_s;
        struct rollup_row *rows = NULL;
        size_t count = 0;
        rc = slice_rows(ledger, tenant, period, slice_starts[i], end_s, slice_count, &rows, &count);
        if (rc != HM_OK) {
            snprintf(error, error_size, "cannot read the usage of tenant %s for %04u-%02u: %s",
                     tenant->name, period / 100, period % 100, hm_status_str(rc));
            break;
        }
        rc = items_append(&list, rows, count, slice_starts[i], &events, error, error_size);
        free(rows);
    }
    if (rc != HM_OK) {
        free(list.items);
        return rc;
    }
    if (list.count > 1)
        qsort(list.items, list.count, sizeof *list.items, item_compare);

    usage->items = list.items;
    usage->item_count = list.count;
    memcpy(usage->tenant_id, tenant->id, UUID_SIZE);
    snprintf(usage->tenant_name, sizeof usage->tenant_name, "%s", tenant->name);
    usage->period = period;
    usage->period_start_s = period_start_s;
    usage->period_end_s = period_end_s;
    usage->service_start_s = tenant->service_start_s;
    if (event_count_out != NULL)
        *event_count_out = events;
    return HM_OK;
}

void usage_input_free(struct usage_totals *usage)
{
    if (usage == NULL)
        return;
    free(usage->items);
    usage->items = NULL;
    usage->item_count = 0;
}
