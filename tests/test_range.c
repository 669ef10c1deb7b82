/*
 * Usage over time ranges: ledger_usage_range against the maintained rollups
 * and hand sums, usage_input_build per slice, and the explanation of
 * invoice lines built from them. Every test runs on a real LMDB ledger.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "engine/lib/explain.h"
#include "engine/lib/usage_input.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"
#include "rollup/range.h"

static char dir[256];
static struct ledger *ledger;
static uint8_t next_id = 1;

static const uint8_t tenant_a[UUID_SIZE] = {0xa0, 1, 2,  3,  4,  5,  6,  7,
                                            8,    9, 10, 11, 12, 13, 14, 15};
static const uint8_t tenant_b[UUID_SIZE] = {0xb0, 1, 2,  3,  4,  5,  6,  7,
                                            8,    9, 10, 11, 12, 13, 14, 15};

/* Unix seconds of period starts, UTC. */
#define MAY_1_S INT64_C(1714521600)
#define JUNE_1_S INT64_C(1717200000)
#define JULY_1_S INT64_C(1719792000)
#define DAY_S INT64_C(86400)
#define US(seconds) ((int64_t)(seconds)*1000000)

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-range-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    next_id = 1;
}

static void teardown(void)
{
    ledger_close(ledger);
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

static struct event event_at(const uint8_t tenant[UUID_SIZE], enum event_kind kind,
                             int64_t timestamp_us)
{
    struct event event = {.kind = kind, .timestamp_us = timestamp_us};
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memset(event.event_id, next_id, UUID_SIZE);
    event.event_id[0] = (uint8_t)(next_id >> 8);
    next_id++;
    return event;
}

static void append(const struct event *event)
{
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(event, record);
    cr_assert_gt(size, 0);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_append(txn, event, record, (size_t)size), APPEND_STORED);
    cr_assert_eq(ledger_commit(txn), HM_OK);
}

static void gpu(const uint8_t tenant[UUID_SIZE], int64_t at_us, const char *type, uint32_t seconds)
{
    struct event event = event_at(tenant, EVENT_GPU_ALLOCATION, at_us);
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "%s", type);
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool");
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc");
    event.u.gpu.duration_s = seconds;
    append(&event);
}

static void inference(const uint8_t tenant[UUID_SIZE], int64_t at_us, const char *model,
                      uint64_t input, uint64_t output, uint64_t cached)
{
    struct event event = event_at(tenant, EVENT_INFERENCE, at_us);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "%s", model);
    event.u.inference.input_tokens = input;
    event.u.inference.output_tokens = output;
    event.u.inference.cached_input_tokens = cached;
    append(&event);
}

static void storage(const uint8_t tenant[UUID_SIZE], int64_t at_us, uint64_t stored,
                    uint64_t transferred)
{
    struct event event = event_at(tenant, EVENT_STORAGE, at_us);
    event.u.storage.bytes_stored = stored;
    event.u.storage.bytes_transferred = transferred;
    append(&event);
}

static void api_call(const uint8_t tenant[UUID_SIZE], int64_t at_us)
{
    struct event event = event_at(tenant, EVENT_API_CALL, at_us);
    snprintf(event.u.api.endpoint, sizeof event.u.api.endpoint, "/v1/completions");
    event.u.api.response_code = 200;
    append(&event);
}

static const struct rollup_row *find(const struct rollup_row *rows, size_t count,
                                     enum rollup_meter meter, const char *dimension)
{
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == meter && strcmp(rows[i].dimension, dimension) == 0)
            return &rows[i];
    }
    return NULL;
}

static uint64_t quantity(const struct rollup_row *rows, size_t count, enum rollup_meter meter,
                         const char *dimension)
{
    const struct rollup_row *row = find(rows, count, meter, dimension);
    return row ? (uint64_t)row->quantity : 0;
}

static uint64_t events(const struct rollup_row *rows, size_t count, enum rollup_meter meter,
                       const char *dimension)
{
    const struct rollup_row *row = find(rows, count, meter, dimension);
    return row ? row->event_count : 0;
}

/*
 * June 2024 of tenant A with every kind of event, events of May and July
 * around it, and tenant B's events inside June that must not count.
 */
static void june_fixture(void)
{
    gpu(tenant_a, US(JUNE_1_S), "H100", 3600); /* first microsecond */
    gpu(tenant_a, US(JUNE_1_S + 10 * DAY_S), "H100", 1800);
    gpu(tenant_a, US(JUNE_1_S + 20 * DAY_S), "A100", 600);
    gpu(tenant_a, US(JULY_1_S) - 1, "A100", 60); /* last microsecond */
    inference(tenant_a, US(JUNE_1_S + 2 * DAY_S), "m-large", 1000, 200, 300);
    inference(tenant_a, US(JUNE_1_S + 15 * DAY_S), "m-large", 500, 50, 0);
    inference(tenant_a, US(JUNE_1_S + 25 * DAY_S), "m-small", 70, 7, 0);
    api_call(tenant_a, US(JUNE_1_S + 3 * DAY_S));
    api_call(tenant_a, US(JUNE_1_S + 16 * DAY_S));
    storage(tenant_a, US(JUNE_1_S - DAY_S), 1000, 11); /* May: level at June 1 */
    storage(tenant_a, US(JUNE_1_S + 5 * DAY_S), 4000, 40);
    storage(tenant_a, US(JUNE_1_S + 20 * DAY_S) + 999999, 2000, 0); /* truncated to the second */
    gpu(tenant_a, US(MAY_1_S + DAY_S), "H100", 7200);
    gpu(tenant_a, US(JULY_1_S), "H100", 7200);
    gpu(tenant_b, US(JUNE_1_S + DAY_S), "H100", 999);
    api_call(tenant_b, US(JUNE_1_S + DAY_S));
}

TestSuite(range, .init = setup, .fini = teardown);

Test(range, whole_month_equals_rollups)
{
    june_fixture();
    struct rollup_row *rollups = NULL, *recount = NULL;
    size_t rollup_count = 0, recount_count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant_a, 202406, &rollups, &rollup_count), HM_OK);
    cr_assert_eq(
        ledger_usage_range(ledger, tenant_a, US(JUNE_1_S), US(JULY_1_S), &recount, &recount_count),
        HM_OK);
    cr_assert_eq(recount_count, rollup_count);
    for (size_t i = 0; i < rollup_count; i++) {
        const struct rollup_row *row =
            find(recount, recount_count, rollups[i].meter, rollups[i].dimension);
        cr_assert_not_null(row, "meter %d dimension %s missing from the range",
                           (int)rollups[i].meter, rollups[i].dimension);
        cr_expect_eq((uint64_t)row->quantity, (uint64_t)rollups[i].quantity,
                     "meter %d dimension %s", (int)rollups[i].meter, rollups[i].dimension);
        cr_expect_eq(row->event_count, rollups[i].event_count, "meter %d dimension %s",
                     (int)rollups[i].meter, rollups[i].dimension);
    }
    free(rollups);
    free(recount);
}

Test(range, whole_month_hand_sums)
{
    june_fixture();
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_usage_range(ledger, tenant_a, US(JUNE_1_S), US(JULY_1_S), &rows, &count),
                 HM_OK);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "H100"), 3600 + 1800);
    cr_expect_eq(events(rows, count, ROLLUP_GPU_SECONDS, "H100"), 2);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "A100"), 600 + 60);
    cr_expect_eq(quantity(rows, count, ROLLUP_INPUT_TOKENS, "m-large"), (1000 - 300) + 500);
    cr_expect_eq(quantity(rows, count, ROLLUP_CACHED_INPUT_TOKENS, "m-large"), 300);
    cr_expect_eq(quantity(rows, count, ROLLUP_OUTPUT_TOKENS, "m-small"), 7);
    cr_expect_eq(quantity(rows, count, ROLLUP_API_CALLS, ""), 2);
    cr_expect_eq(quantity(rows, count, ROLLUP_TRANSFER_BYTES, ""), 40);
    cr_expect_eq(quantity(rows, count, ROLLUP_EVENTS, "gpu_allocation"), 4);
    cr_expect_eq(quantity(rows, count, ROLLUP_EVENTS, "storage"), 2);
    /* 1000 B for 5 days, 4000 B for 15 days, 2000 B for the last 10 days. */
    uint64_t byte_seconds = 1000 * 5 * DAY_S + 4000 * 15 * DAY_S + 2000 * 10 * DAY_S;
    cr_expect_eq(quantity(rows, count, ROLLUP_STORAGE_BYTE_SECONDS, ""), byte_seconds);
    free(rows);
}

Test(range, start_inside_end_outside)
{
    june_fixture();
    struct rollup_row *rows = NULL;
    size_t count = 0;
    /* [June 11, June 21): the H100 event at June 11 00:00:00 is in, the A100 one at June 21 is out.
     */
    int64_t start_s = JUNE_1_S + 10 * DAY_S, end_s = JUNE_1_S + 20 * DAY_S;
    cr_assert_eq(ledger_usage_range(ledger, tenant_a, US(start_s), US(end_s), &rows, &count),
                 HM_OK);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "H100"), 1800);
    cr_expect_eq(events(rows, count, ROLLUP_GPU_SECONDS, "H100"), 1);
    cr_expect_null(find(rows, count, ROLLUP_GPU_SECONDS, "A100"));
    cr_expect_eq(quantity(rows, count, ROLLUP_INPUT_TOKENS, "m-large"), 500);
    cr_expect_eq(quantity(rows, count, ROLLUP_API_CALLS, ""), 1);
    cr_expect_null(find(rows, count, ROLLUP_TRANSFER_BYTES, ""));
    cr_expect_eq(quantity(rows, count, ROLLUP_STORAGE_BYTE_SECONDS, ""), 4000 * 10 * DAY_S);
    free(rows);
}

Test(range, event_exactly_at_end_is_outside)
{
    june_fixture();
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int64_t at_us = US(JUNE_1_S + 20 * DAY_S); /* the A100 event of 600 s */
    cr_assert_eq(ledger_usage_range(ledger, tenant_a, US(JUNE_1_S), at_us, &rows, &count), HM_OK);
    cr_expect_null(find(rows, count, ROLLUP_GPU_SECONDS, "A100"));
    free(rows);
    cr_assert_eq(ledger_usage_range(ledger, tenant_a, at_us, at_us + 1, &rows, &count), HM_OK);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "A100"), 600);
    cr_expect_eq(events(rows, count, ROLLUP_EVENTS, "gpu_allocation"), 1);
    free(rows);
    /* The last microsecond of June is inside June and outside July. */
    cr_assert_eq(
        ledger_usage_range(ledger, tenant_a, US(JULY_1_S) - 1, US(JULY_1_S), &rows, &count), HM_OK);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "A100"), 60);
    free(rows);
}

Test(range, other_tenant_not_counted)
{
    june_fixture();
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_usage_range(ledger, tenant_b, US(JUNE_1_S), US(JULY_1_S), &rows, &count),
                 HM_OK);
    cr_expect_eq(quantity(rows, count, ROLLUP_GPU_SECONDS, "H100"), 999);
    cr_expect_eq(quantity(rows, count, ROLLUP_API_CALLS, ""), 1);
    cr_expect_eq(count, 4, "gpu, api calls and two event kinds; got %zu rows", count);
    free(rows);
}

Test(range, empty_and_reversed)
{
    june_fixture();
    struct rollup_row *rows = NULL;
    size_t count = 99;
    cr_assert_eq(ledger_usage_range(ledger, tenant_a, US(JUNE_1_S), US(JUNE_1_S), &rows, &count),
                 HM_OK);
    cr_expect_eq(count, 0);
    free(rows);
    cr_expect_eq(ledger_usage_range(ledger, tenant_a, US(JULY_1_S), US(JUNE_1_S), &rows, &count),
                 HM_ERR_INVALID);
}

/* ---- usage_input_build ---- */

static struct tenant tenant_record(const uint8_t id[UUID_SIZE], const char *name)
{
    struct tenant tenant = {.service_start_s = JUNE_1_S - DAY_S, .active = 1};
    memcpy(tenant.id, id, UUID_SIZE);
    snprintf(tenant.name, sizeof tenant.name, "%s", name);
    return tenant;
}

static const struct usage_item *item_find(const struct usage_totals *usage, enum meter meter,
                                          const char *dimension, int64_t start_s)
{
    for (size_t i = 0; i < usage->item_count; i++) {
        const struct usage_item *item = &usage->items[i];
        if (item->meter == meter && strcmp(item->dimension, dimension) == 0 &&
            item->start_s == start_s)
            return item;
    }
    return NULL;
}

TestSuite(usage_input, .init = setup, .fini = teardown);

Test(usage_input, one_slice_equals_rollups)
{
    june_fixture();
    struct tenant tenant = tenant_record(tenant_a, "a");
    int64_t starts[] = {JUNE_1_S};
    struct usage_totals usage;
    uint64_t event_count = 0;
    char error[256];
    cr_assert_eq(usage_input_build(ledger, &tenant, 202406, starts, 1, &usage, &event_count, error,
                                   sizeof error),
                 HM_OK, "%s", error);
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant_a, 202406, &rows, &count), HM_OK);
    size_t billed = 0;
    uint64_t rollup_events = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_EVENTS) {
            rollup_events += (uint64_t)rows[i].quantity;
            continue;
        }
        billed++;
        const struct usage_item *item =
            item_find(&usage, (enum meter)rows[i].meter, rows[i].dimension, JUNE_1_S);
        cr_assert_not_null(item, "meter %d dimension %s", (int)rows[i].meter, rows[i].dimension);
        cr_expect_eq((uint64_t)item->quantity, (uint64_t)rows[i].quantity);
        cr_expect_eq(item->event_count, rows[i].event_count);
    }
    cr_expect_eq(usage.item_count, billed);
    cr_expect_eq(event_count, rollup_events);
    cr_expect_eq(event_count, 4 + 3 + 2 + 2,
                 "GPU, inference, API call and storage events; got %llu",
                 (unsigned long long)event_count);
    cr_expect_eq(usage.period_start_s, JUNE_1_S);
    cr_expect_eq(usage.period_end_s, JULY_1_S);
    free(rows);
    usage_input_free(&usage);
}

Test(usage_input, slices_sum_to_month)
{
    june_fixture();
    struct tenant tenant = tenant_record(tenant_a, "a");
    /* Slices [June 1, June 11), [June 11, June 21), [June 21, July 1). */
    int64_t starts[] = {JUNE_1_S, JUNE_1_S + 10 * DAY_S, JUNE_1_S + 20 * DAY_S};
    struct usage_totals usage;
    uint64_t event_count = 0;
    char error[256];
    cr_assert_eq(usage_input_build(ledger, &tenant, 202406, starts, 3, &usage, &event_count, error,
                                   sizeof error),
                 HM_OK, "%s", error);

    /* Each slice's quantities. */
    const struct usage_item *item = item_find(&usage, METER_GPU_SECONDS, "H100", starts[0]);
    cr_assert_not_null(item);
    cr_expect_eq((uint64_t)item->quantity, 3600);
    item = item_find(&usage, METER_GPU_SECONDS, "H100", starts[1]);
    cr_assert_not_null(item);
    cr_expect_eq((uint64_t)item->quantity, 1800);
    cr_expect_null(item_find(&usage, METER_GPU_SECONDS, "H100", starts[2]));
    item = item_find(&usage, METER_GPU_SECONDS, "A100", starts[2]);
    cr_assert_not_null(item);
    cr_expect_eq((uint64_t)item->quantity, 600 + 60);
    cr_expect_eq(item->event_count, 2);
    item = item_find(&usage, METER_STORAGE_BYTE_SECONDS, "", starts[0]);
    cr_assert_not_null(item);
    cr_expect_eq((uint64_t)item->quantity, (uint64_t)(1000 * 5 * DAY_S + 4000 * 5 * DAY_S));
    item = item_find(&usage, METER_STORAGE_BYTE_SECONDS, "", starts[2]);
    cr_assert_not_null(item);
    cr_expect_eq((uint64_t)item->quantity, (uint64_t)(2000 * 10 * DAY_S));

    /* The slices add up to the month's rollups, quantity and events. */
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant_a, 202406, &rows, &count), HM_OK);
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_EVENTS)
            continue;
        unsigned __int128 sum = 0;
        uint64_t sum_events = 0;
        for (size_t s = 0; s < 3; s++) {
            item = item_find(&usage, (enum meter)rows[i].meter, rows[i].dimension, starts[s]);
            sum += item ? item->quantity : 0;
            sum_events += item ? item->event_count : 0;
        }
        cr_expect_eq((uint64_t)sum, (uint64_t)rows[i].quantity, "meter %d dimension %s",
                     (int)rows[i].meter, rows[i].dimension);
        cr_expect_eq(sum_events, rows[i].event_count, "meter %d dimension %s", (int)rows[i].meter,
                     rows[i].dimension);
    }
    cr_expect_eq(event_count, 4 + 3 + 2 + 2);

    /* Sorted by meter, dimension, slice. */
    for (size_t i = 1; i < usage.item_count; i++) {
        const struct usage_item *a = &usage.items[i - 1], *b = &usage.items[i];
        int order = a->meter != b->meter ? (a->meter < b->meter ? -1 : 1)
                                         : strcmp(a->dimension, b->dimension);
        cr_expect(order < 0 || (order == 0 && a->start_s < b->start_s), "items %zu and %zu", i - 1,
                  i);
    }
    free(rows);
    usage_input_free(&usage);
}

Test(usage_input, invalid_slices_rejected)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    struct usage_totals usage;
    char error[512];
    int64_t late_first[] = {JUNE_1_S + 1};
    cr_expect_eq(usage_input_build(ledger, &tenant, 202406, late_first, 1, &usage, NULL, error,
                                   sizeof error),
                 HM_ERR_INVALID);
    cr_expect_not_null(strstr(error, "first slice"), "%s", error);
    int64_t not_ascending[] = {JUNE_1_S, JUNE_1_S + DAY_S, JUNE_1_S + DAY_S};
    cr_expect_eq(usage_input_build(ledger, &tenant, 202406, not_ascending, 3, &usage, NULL, error,
                                   sizeof error),
                 HM_ERR_INVALID);
    cr_expect_not_null(strstr(error, "ascend strictly"), "%s", error);
    int64_t after_end[] = {JUNE_1_S, JULY_1_S};
    cr_expect_eq(
        usage_input_build(ledger, &tenant, 202406, after_end, 2, &usage, NULL, error, sizeof error),
        HM_ERR_INVALID);
    cr_expect_eq(usage_input_build(ledger, &tenant, 202406, late_first, 0, &usage, NULL, error,
                                   sizeof error),
                 HM_ERR_INVALID);
}

/* ---- explain_invoice_build on invoices that the current rater does not make ---- */

/*
 * The tenants' book for the invoices below: a version from the beginning of
 * time and one from June 11, 2024, which cuts June into two slices; the
 * second has the GPU volume discount.
 */
static const char sliced_book[] =
    "{\"name\": \"b\", \"currency\": \"USD\", \"versions\": ["
    " {\"base_fee\": \"30.00\", \"gpu_hour\": {\"*\": \"2.00\"}, \"api_calls_per_million\": \"0\"},"
    " {\"effective_from\": \"2024-06-11T00:00:00Z\", \"base_fee\": \"60.00\","
    "  \"gpu_hour\": {\"*\": \"3.00\"}, \"api_calls_per_million\": \"0\","
    "  \"gpu_volume_discount\": {\"mode\": \"volume\","
    "   \"tiers\": [{\"above_hours\": \"0\", \"percent\": \"10\"}]}}]}";

static void explain_setup(void)
{
    setup();
    cr_assert_eq(ledger_pricebook_put(ledger, "default", sliced_book), HM_OK);
}

TestSuite(explain, .init = explain_setup, .fini = teardown);

static json_t *explained_line(json_t *result, size_t number)
{
    json_t *lines = json_object_get(result, "lines");
    for (size_t i = 0; i < json_array_size(lines); i++) {
        json_t *line = json_array_get(lines, i);
        if ((size_t)json_integer_value(json_object_get(line, "line")) == number)
            return line;
    }
    return NULL;
}

static const char *text_at(json_t *object, const char *first, const char *second)
{
    return json_string_value(json_object_get(json_object_get(object, first), second));
}

static long long integer_at(json_t *object, const char *first, const char *second)
{
    return json_integer_value(json_object_get(json_object_get(object, first), second));
}

/* A June invoice sliced at June 11, with fees, GPU lines per slice, a discount and an adjustment.
 */
static const char sliced_invoice[] =
    "{\"tenant_name\": \"a\", \"period\": \"2024-06\", \"currency\": \"USD\","
    " \"price_book\": \"b\", \"total\": {\"amount\": \"1.00\", \"amount_minor\": 100},"
    " \"lines\": ["
    "  {\"kind\": \"base_fee\", \"description\": \"Base fee\", \"unit_price\": \"30.00\","
    "   \"price_unit\": \"per month\", \"slice_start\": \"2024-06-01T00:00:00Z\","
    "   \"amount\": \"10.00\", \"amount_minor\": 1000},"
    "  {\"kind\": \"base_fee\", \"description\": \"Base fee\", \"unit_price\": \"60.00\","
    "   \"price_unit\": \"per month\", \"slice_start\": \"2024-06-11T00:00:00Z\","
    "   \"amount\": \"40.00\", \"amount_minor\": 4000},"
    "  {\"kind\": \"gpu\", \"description\": \"GPU usage, H100\", \"dimension\": \"H100\","
    "   \"quantity\": \"1\", \"slice_start\": \"2024-06-01T00:00:00Z\", \"events\": 1,"
    "   \"amount\": \"2.00\", \"amount_minor\": 200},"
    "  {\"kind\": \"gpu\", \"description\": \"GPU usage, H100\", \"dimension\": \"H100\","
    "   \"quantity\": \"0.5\", \"slice_start\": \"2024-06-11T00:00:00Z\", \"events\": 1,"
    "   \"amount\": \"1.50\", \"amount_minor\": 150},"
    "  {\"kind\": \"gpu\", \"description\": \"GPU usage, A100\", \"dimension\": \"A100\","
    "   \"quantity\": \"0.183333333333\", \"slice_start\": \"2024-06-11T00:00:00Z\","
    "   \"amount\": \"0.25\", \"amount_minor\": 25},"
    "  {\"kind\": \"api_calls\", \"description\": \"API calls\", \"quantity\": \"1\","
    "   \"slice_start\": \"2024-06-01T00:00:00Z\", \"amount\": \"0.00\", \"amount_minor\": 0},"
    "  {\"kind\": \"api_calls\", \"description\": \"API calls\", \"quantity\": \"1\","
    "   \"slice_start\": \"2024-06-11T00:00:00Z\", \"amount\": \"0.00\", \"amount_minor\": 0},"
    "  {\"kind\": \"discount\", \"description\": \"GPU volume discount\","
    "   \"amount\": \"-0.37\", \"amount_minor\": -37},"
    "  {\"kind\": \"adjustment\", \"description\": \"Late usage of 2024-05\","
    "   \"period\": \"2024-05\", \"events\": 1, \"amount\": \"14.40\", \"amount_minor\": 1440},"
    "  {\"kind\": \"commitment_true_up\", \"description\": \"Commitment\","
    "   \"amount\": \"5.00\", \"amount_minor\": 500}"
    " ]}";

/* Closes May with a sealed invoice that counted one event, then adds a late May event. */
static void may_closed_with_late_event(void)
{
    gpu(tenant_a, US(MAY_1_S + DAY_S), "H100", 7200);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_period_close(txn, tenant_a, 202405,
                                     "{\"status\": \"finalized\", \"event_count\": 1}"),
                 HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    gpu(tenant_a, US(MAY_1_S + 2 * DAY_S), "H100", 3600);
}

Test(explain, sliced_usage_lines)
{
    june_fixture();
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 0, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    cr_expect(json_is_true(json_object_get(result, "sliced")));

    json_t *line = explained_line(result, 3);
    cr_assert_not_null(line);
    cr_expect_str_eq(text_at(line, "rollup", "key"),
                     "a0010203-0405-0607-0809-0a0b0c0d0e0f/2024-06/gpu_seconds/H100");
    cr_expect_str_eq(text_at(line, "rollup", "slice_start"), "2024-06-01T00:00:00Z");
    cr_expect_str_eq(text_at(line, "rollup", "slice_end"), "2024-06-11T00:00:00Z");
    cr_expect_str_eq(text_at(line, "rollup", "quantity"), "3600");
    cr_expect_eq(integer_at(line, "rollup", "events"), 1);
    line = explained_line(result, 4);
    cr_expect_str_eq(text_at(line, "rollup", "quantity"), "1800");
    cr_expect_str_eq(text_at(line, "rollup", "slice_end"), "2024-07-01T00:00:00Z");
    line = explained_line(result, 5);
    cr_expect_str_eq(text_at(line, "rollup", "quantity"), "660");
    cr_expect_eq(integer_at(line, "rollup", "events"), 2);
    cr_expect_str_eq(text_at(line, "rollup", "key"),
                     "a0010203-0405-0607-0809-0a0b0c0d0e0f/2024-06/gpu_seconds/A100");

    /* Lines of each meter add up to the month's events of that meter. */
    json_t *checks = json_object_get(result, "events_check");
    cr_assert_eq(json_array_size(checks), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *check = json_array_get(checks, i);
        cr_expect(json_is_true(json_object_get(check, "match")), "meter %s",
                  json_string_value(json_object_get(check, "meter")));
    }
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(checks, 0), "line_events")), 4);
    json_decref(result);
}

Test(explain, fee_seconds_per_slice)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    tenant.service_start_s = JUNE_1_S + 5 * DAY_S; /* service starts June 6 */
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 0, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    json_t *line = explained_line(result, 1);
    cr_expect_str_eq(text_at(line, "fee", "price"), "30.00");
    cr_expect_str_eq(text_at(line, "fee", "service_start"), "2024-06-06T00:00:00Z");
    cr_expect_str_eq(text_at(line, "fee", "service_end"), "2024-06-11T00:00:00Z");
    cr_expect_eq(integer_at(line, "fee", "service_seconds"), 5 * DAY_S);
    cr_expect_eq(integer_at(line, "fee", "period_seconds"), 30 * DAY_S);
    line = explained_line(result, 2);
    cr_expect_str_eq(text_at(line, "fee", "price"), "60.00");
    cr_expect_eq(integer_at(line, "fee", "service_seconds"), 20 * DAY_S);
    json_decref(result);
}

Test(explain, discount_lines_and_driver)
{
    june_fixture();
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 8, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    cr_assert_eq(json_array_size(json_object_get(result, "lines")), 1);
    json_t *discount = json_object_get(explained_line(result, 8), "discount");
    json_t *numbers = json_object_get(discount, "applies_to_lines");
    cr_assert_eq(json_array_size(numbers), 3);
    cr_expect_eq(json_integer_value(json_array_get(numbers, 0)), 3);
    cr_expect_eq(json_integer_value(json_array_get(numbers, 2)), 5);
    cr_expect_eq(json_integer_value(json_object_get(discount, "base_minor")), 200 + 150 + 25);
    /* 3600 + 1800 + 600 + 60 = 6060 GPU-seconds = 1.683333... GPU-hours. */
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_raw_quantity")), "6060");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_quantity")),
                     "1.683333333333");
    cr_expect_null(json_object_get(result, "events_check"));
    json_decref(result);
}

Test(explain, adjustment_period_and_late_events)
{
    may_closed_with_late_event();
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 9, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    json_t *adjustment = json_object_get(explained_line(result, 9), "adjustment");
    cr_expect_str_eq(json_string_value(json_object_get(adjustment, "period")), "2024-05");
    cr_expect_eq(json_integer_value(json_object_get(adjustment, "late_events")), 1);
    cr_expect_eq(json_integer_value(json_object_get(adjustment, "events_at_close")), 1);
    cr_expect_eq(json_integer_value(json_object_get(adjustment, "events_now")), 2);
    cr_expect_eq(json_integer_value(json_object_get(adjustment, "late_events_now")), 1);
    json_decref(result);
}

Test(explain, commitment_usage_and_minimum)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 10, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    json_t *commitment = json_object_get(explained_line(result, 10), "commitment");
    /* Usage 2.00 + 1.50 + 0.25 + 0 + 0, discount -0.37: 3.38; the true-up 5.00 tops it to 8.38. */
    cr_expect_str_eq(json_string_value(json_object_get(commitment, "usage_after_discounts")),
                     "3.38");
    cr_expect_str_eq(json_string_value(json_object_get(commitment, "minimum")), "8.38");
    json_decref(result);
}

Test(explain, line_out_of_range)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    cr_expect_eq(explain_invoice_build(ledger, &tenant, 202406, sliced_invoice, 11, &result, error,
                                       sizeof error),
                 HM_ERR_INVALID);
    cr_expect_not_null(strstr(error, "has 10 lines"), "%s", error);
    cr_expect_eq(explain_invoice_build(ledger, &tenant, 202406, "{\"lines\": 3}", 0, &result, error,
                                       sizeof error),
                 HM_ERR_INVALID);
}

Test(explain, slice_outside_period_rejected)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    json_t *result = NULL;
    char error[512] = "";
    const char *invoice = "{\"currency\": \"USD\", \"lines\": [{\"kind\": \"gpu\","
                          " \"dimension\": \"H100\", \"slice_start\": \"2024-07-02T00:00:00Z\"}]}";
    cr_expect_eq(
        explain_invoice_build(ledger, &tenant, 202406, invoice, 0, &result, error, sizeof error),
        HM_ERR_INVALID);
    cr_expect_not_null(strstr(error, "2024-07-02T00:00:00Z"), "%s", error);
}

/*
 * A book with a token discount driven by GPU-hours: 5 % off the token lines
 * for the GPU-hours up to 1, 20 % above.
 */
static const char token_book[] =
    "{\"name\": \"tokens\", \"currency\": \"USD\", \"gpu_hour\": {\"*\": \"2.00\"},"
    " \"tokens_per_million\": {\"*\": {\"input\": \"1.00\", \"output\": \"2.00\"}},"
    " \"discounts\": [{\"name\": \"Token discount\","
    "  \"applies_to\": [\"input_tokens\", \"output_tokens\"], \"driver\": \"gpu\","
    "  \"mode\": \"graduated\", \"tiers\": [{\"above\": \"0\", \"percent\": \"5\"},"
    "  {\"above\": \"1\", \"percent\": \"20\"}]}]}";

/* Stores the token book as a snapshot and returns an invoice of June that names it. */
static char *token_invoice(const char *discount_name)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_book_snapshot_put(txn, token_book), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    char sha256[BOOK_SHA256_HEX_SIZE];
    ledger_book_sha256(token_book, sha256);
    char *invoice = malloc(4096);
    cr_assert_not_null(invoice);
    snprintf(invoice, 4096,
             "{\"tenant_name\": \"a\", \"period\": \"2024-06\", \"currency\": \"USD\","
             " \"status\": \"finalized\", \"price_book\": \"tokens\","
             " \"price_book_sha256\": \"%s\","
             " \"total\": {\"amount\": \"3.87\", \"amount_minor\": 387}, \"lines\": ["
             "  {\"kind\": \"gpu\", \"dimension\": \"A100\", \"amount_minor\": 40},"
             "  {\"kind\": \"gpu\", \"dimension\": \"H100\", \"amount_minor\": 300},"
             "  {\"kind\": \"input_tokens\", \"dimension\": \"m-large\", \"amount_minor\": 0},"
             "  {\"kind\": \"input_tokens\", \"dimension\": \"m-small\", \"amount_minor\": 0},"
             "  {\"kind\": \"output_tokens\", \"dimension\": \"m-large\", \"amount_minor\": 1},"
             "  {\"kind\": \"discount\", \"description\": \"%s\", \"amount_minor\": -1}"
             " ]}",
             sha256, discount_name);
    return invoice;
}

/* The discount comes from the invoice's snapshot, not from the tenant's book now. */
Test(explain, token_discount_driven_by_gpu_hours)
{
    june_fixture();
    struct tenant tenant = tenant_record(tenant_a, "a");
    char *invoice = token_invoice("Token discount");
    json_t *result = NULL;
    char error[512] = "";
    cr_assert_eq(explain_invoice_build(ledger, &tenant, 202406, invoice, 0, &result, error,
                                       sizeof error),
                 HM_OK, "%s", error);
    free(invoice);
    cr_expect(json_is_false(json_object_get(result, "sliced")));
    json_t *discount = json_object_get(explained_line(result, 6), "discount");
    cr_assert_not_null(discount);
    cr_expect_str_eq(json_string_value(json_object_get(discount, "name")), "Token discount");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "mode")), "graduated");
    json_t *kinds = json_object_get(discount, "applies_to");
    cr_assert_eq(json_array_size(kinds), 2);
    cr_expect_str_eq(json_string_value(json_array_get(kinds, 0)), "input_tokens");
    cr_expect_str_eq(json_string_value(json_array_get(kinds, 1)), "output_tokens");
    json_t *numbers = json_object_get(discount, "applies_to_lines");
    cr_assert_eq(json_array_size(numbers), 3);
    cr_expect_eq(json_integer_value(json_array_get(numbers, 0)), 3);
    cr_expect_eq(json_integer_value(json_array_get(numbers, 1)), 4);
    cr_expect_eq(json_integer_value(json_array_get(numbers, 2)), 5);
    cr_expect_eq(json_integer_value(json_object_get(discount, "base_minor")), 1);
    /* The driver is the GPU, not the tokens: 3600 + 1800 + 600 + 60 = 6060 GPU-seconds. */
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver")), "gpu");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_meter")), "gpu_seconds");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_raw_quantity")), "6060");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_quantity")),
                     "1.683333333333");
    cr_expect_str_eq(json_string_value(json_object_get(discount, "driver_unit")), "GPU-hour");
    json_decref(result);
}

Test(explain, discount_not_in_book_rejected)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    char *invoice = token_invoice("Loyalty discount");
    json_t *result = NULL;
    char error[512] = "";
    cr_expect_eq(explain_invoice_build(ledger, &tenant, 202406, invoice, 0, &result, error,
                                       sizeof error),
                 HM_ERR_INVALID);
    free(invoice);
    cr_expect_not_null(strstr(error, "\"Loyalty discount\""), "%s", error);
    cr_expect_not_null(strstr(error, "\"tokens\""), "%s", error);
}

Test(explain, missing_snapshot_rejected)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    const char *invoice = "{\"currency\": \"USD\", \"price_book_sha256\": \"00ff\", \"lines\": []}";
    json_t *result = NULL;
    char error[512] = "";
    cr_expect_eq(
        explain_invoice_build(ledger, &tenant, 202406, invoice, 0, &result, error, sizeof error),
        HM_ERR_STORAGE);
    cr_expect_not_null(strstr(error, "snapshot 00ff"), "%s", error);
}

/* A slice_start that is no slice of the book: here June 20, while the book cuts June at June 11. */
Test(explain, slice_not_in_book_rejected)
{
    struct tenant tenant = tenant_record(tenant_a, "a");
    const char *invoice = "{\"currency\": \"USD\", \"lines\": [{\"kind\": \"gpu\","
                          " \"dimension\": \"H100\", \"slice_start\": \"2024-06-20T00:00:00Z\"}]}";
    json_t *result = NULL;
    char error[512] = "";
    cr_expect_eq(
        explain_invoice_build(ledger, &tenant, 202406, invoice, 0, &result, error, sizeof error),
        HM_ERR_INVALID);
    cr_expect_not_null(strstr(error, "2024-06-20T00:00:00Z"), "%s", error);
}
