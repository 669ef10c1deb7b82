#include "explain.h"

#include "billing.h"
#include "usage_input.h"

#include "common/status.h"
#include "pricing/invoice.h"
#include "rollup/json_build.h"
#include "rollup/range.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- Command line helpers ---- */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("meterctl: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return 1;
}

/* Returns the value of "--name VALUE" at or after argv[first], or NULL. */
static const char *option_value(int argc, char **argv, int first, const char *name)
{
    for (int i = first; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    }
    return NULL;
}

static bool flag_set(int argc, char **argv, int first, const char *name)
{
    for (int i = first; i < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return true;
    }
    return false;
}

/* Rejects any argument from argv[first] on that is not a known option (NULL-terminated lists). */
static int options_check(int argc, char **argv, int first, const char *const *with_value,
                         const char *const *flags)
{
    for (int i = first; i < argc; i++) {
        bool known = false;
        for (const char *const *name = with_value; *name && !known; name++) {
            if (strcmp(argv[i], *name) == 0) {
                if (i + 1 >= argc)
                    return fail("option %s needs a value", argv[i]);
                known = true;
                i++;
            }
        }
        for (const char *const *name = flags; *name && !known; name++)
            known = strcmp(argv[i], *name) == 0;
        if (!known)
            return fail("unexpected argument \"%s\"; see meterctl --help", argv[i]);
    }
    return 0;
}

static int period_read(int argc, char **argv, int first, uint32_t *period)
{
    const char *text = option_value(argc, argv, first, "--period");
    if (text == NULL)
        return fail("missing --period YYYY-MM");
    if (period_parse(text, period) != HM_OK)
        return fail("invalid period \"%s\": write the month as YYYY-MM, for example 2024-06", text);
    return 0;
}

static int tenant_read(struct ledger *ledger, const char *name_or_id, struct tenant *out)
{
    int rc = ledger_tenant_find(ledger, name_or_id, out);
    if (rc == HM_ERR_NOT_FOUND)
        return fail("tenant \"%s\" not found; `meterctl tenant list` shows the tenants",
                    name_or_id);
    if (rc != HM_OK)
        return fail("cannot read tenant \"%s\": %s", name_or_id, hm_status_str(rc));
    return 0;
}

/* Formats Unix seconds as "2024-06-01T00:00:00Z". */
static void time_format(int64_t unix_s, char out[32])
{
    time_t seconds = (time_t)unix_s;
    struct tm utc;
    if (gmtime_r(&seconds, &utc) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &utc) == 0)
        snprintf(out, 32, "%" PRId64, unix_s);
}

/* Parses "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds). */
static int time_parse(const char *text, int64_t *out)
{
    struct tm tm = {0};
    const char *end = strptime(text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end == NULL || *end != '\0')
        return HM_ERR_INVALID;
    *out = (int64_t)timegm(&tm);
    return HM_OK;
}

static void period_format(uint32_t period, char out[8])
{
    snprintf(out, 8, "%04u-%02u", (period / 100) % 10000, period % 100);
}

static int64_t period_start_s_of(uint32_t period)
{
    return period_start_us(period) / 1000000;
}

static int64_t period_end_s_of(uint32_t period)
{
    return period_start_us(period_next(period)) / 1000000;
}

static const char *string_of(json_t *object, const char *key)
{
    const char *text = json_string_value(json_object_get(object, key));
    return text ? text : "";
}

/* ---- Metered quantities ---- */

/* A usage line kind with its rollup meter and its billing unit (raw units per billing unit). */
struct meter_info {
    const char *line_kind;
    enum rollup_meter meter;
    const char *meter_name;
    const char *billing_unit;
    int64_t raw_per_unit; /* storage: 10^9 bytes, times the period's seconds at use */
};

static const struct meter_info meter_infos[] = {
    {"gpu", ROLLUP_GPU_SECONDS, "gpu_seconds", "GPU-hour", 3600},
    {"input_tokens", ROLLUP_INPUT_TOKENS, "input_tokens", "1M tokens", 1000000},
    {"output_tokens", ROLLUP_OUTPUT_TOKENS, "output_tokens", "1M tokens", 1000000},
    {"cached_input_tokens", ROLLUP_CACHED_INPUT_TOKENS, "cached_input_tokens", "1M tokens",
     1000000},
    {"api_calls", ROLLUP_API_CALLS, "api_calls", "1M calls", 1000000},
    {"storage", ROLLUP_STORAGE_BYTE_SECONDS, "storage_byte_seconds", "GB-month", 1000000000},
    {"transfer", ROLLUP_TRANSFER_BYTES, "transfer_bytes", "GB", 1000000000},
};

#define METER_INFO_COUNT (sizeof meter_infos / sizeof meter_infos[0])

static const struct meter_info *meter_of_kind(const char *line_kind)
{
    for (size_t i = 0; i < METER_INFO_COUNT; i++) {
        if (strcmp(meter_infos[i].line_kind, line_kind) == 0)
            return &meter_infos[i];
    }
    return NULL;
}

/* ---- Explaining an invoice ---- */

struct explanation {
    struct ledger *ledger;
    const struct tenant *tenant;
    uint32_t period;
    int64_t period_start_s;
    int64_t period_end_s;
    char tenant_text[UUID_TEXT_SIZE];
    char period_text[8];
    const struct money_currency *currency;
    json_t *invoice_lines; /* borrowed from the parsed invoice */
    struct pricebook *book; /* the invoice's book snapshot, else the tenant's book now */
    const struct pricebook_version *last_version; /* in effect in the last slice */
    bool sliced;
    size_t slice_count;
    int64_t slice_starts[USAGE_INPUT_SLICES_MAX + 1];
    struct rollup_row *month_rows;
    size_t month_count;
    struct rollup_row *slice_rows[USAGE_INPUT_SLICES_MAX + 1]; /* read on first use */
    size_t slice_row_counts[USAGE_INPUT_SLICES_MAX + 1];
    bool slice_read[USAGE_INPUT_SLICES_MAX + 1];
    /* A sealed invoice: its lines are as at close, the rollups as now. */
    bool sealed;
    uint64_t events_at_close; /* the invoice's event_count */
    uint64_t events_now;
    bool has_billed; /* the billed record of the period, when the ledger keeps one */
    struct billed_period billed;
    char *error;
    size_t error_size;
};

static void explanation_free(struct explanation *x)
{
    pricebook_free(x->book);
    free(x->month_rows);
    for (size_t i = 0; i < x->slice_count; i++)
        free(x->slice_rows[i]);
    if (x->has_billed)
        ledger_billed_free(&x->billed);
}

/*
 * Describes how the period's late events were billed: by the documents
 * that its billed record lists as late usage changes, or not yet.
 */
static json_t *late_billing_json(const struct explanation *x)
{
    json_t *late = json_object();
    json_t *documents = json_array();
    if (x->has_billed) {
        for (size_t i = 0; i < x->billed.change_count; i++) {
            if (x->billed.changes[i].late_usage)
                json_array_append_new(documents, json_string(x->billed.changes[i].number));
        }
    }
    /* The record counts the events that its amounts account for, late ones billed included. */
    bool pending = !x->has_billed || x->billed.events < x->events_now;
    json_object_set_new(late, "billed_by", documents);
    json_object_set_new(late, "pending", json_boolean(pending));
    return late;
}

/*
 * Loads the book the invoice was rated with: the snapshot named by its
 * price_book_sha256, else (a draft, or an invoice sealed before snapshots)
 * the tenant's book as it is now.
 */
static int book_load(struct explanation *x, json_t *invoice)
{
    const char *sha256 = string_of(invoice, "price_book_sha256");
    if (sha256[0] == '\0')
        return billing_pricebook_for(x->ledger, x->tenant, &x->book, x->error, x->error_size);
    char *text = NULL;
    int rc = ledger_book_snapshot_get(x->ledger, sha256, &text);
    if (rc != HM_OK) {
        snprintf(x->error, x->error_size,
                 "the price book snapshot %s of the invoice of tenant %s for %s cannot be read: "
                 "%s",
                 sha256, x->tenant->name, x->period_text, hm_status_str(rc));
        return rc == HM_ERR_NOT_FOUND ? HM_ERR_STORAGE : rc;
    }
    char error[512];
    rc = pricebook_parse(text, strlen(text), &x->book, error, sizeof error);
    free(text);
    if (rc != HM_OK)
        snprintf(x->error, x->error_size, "the price book snapshot %s cannot be parsed: %s",
                 sha256, error);
    return rc;
}

/* Cuts the period into the slices of the book's versions, as rating does. */
static int slices_collect(struct explanation *x)
{
    int rc = pricebook_slices(x->book, x->period_start_s, x->period_end_s, x->slice_starts,
                              USAGE_INPUT_SLICES_MAX, &x->slice_count);
    if (rc != HM_OK) {
        snprintf(x->error, x->error_size,
                 "price book \"%s\" has no version in effect at the start of %s, so the "
                 "invoice of tenant %s cannot be cut into slices; give its first version an "
                 "earlier effective_from",
                 x->book->name, x->period_text, x->tenant->name);
        return rc == HM_ERR_NOT_FOUND ? HM_ERR_INVALID : rc;
    }
    x->sliced = x->slice_count > 1;
    x->last_version = pricebook_version_at(x->book, x->slice_starts[x->slice_count - 1]);
    return HM_OK;
}

static size_t slice_index_of(const struct explanation *x, int64_t start_s)
{
    for (size_t i = 0; i < x->slice_count; i++) {
        if (x->slice_starts[i] == start_s)
            return i;
    }
    return 0;
}

static int64_t slice_end_of(const struct explanation *x, size_t slice)
{
    return slice + 1 < x->slice_count ? x->slice_starts[slice + 1] : x->period_end_s;
}

/* Checks that every line's slice_start is the start of a slice of the book. */
static int line_slices_check(struct explanation *x)
{
    size_t index;
    json_t *line;
    json_array_foreach(x->invoice_lines, index, line)
    {
        const char *text = json_string_value(json_object_get(line, "slice_start"));
        int64_t start_s = 0;
        if (text == NULL)
            continue;
        bool known = time_parse(text, &start_s) == HM_OK;
        for (size_t i = 0; known && i < x->slice_count && x->slice_starts[i] != start_s; i++)
            known = i + 1 < x->slice_count;
        if (!known) {
            snprintf(x->error, x->error_size,
                     "line %zu has slice_start \"%s\", which is not where a version of price "
                     "book \"%s\" starts a slice of %s; the invoice does not match its book",
                     index + 1, text, x->book->name, x->period_text);
            return HM_ERR_INVALID;
        }
    }
    return HM_OK;
}

/* The slice of a line: its slice_start, else the first slice. */
static size_t line_slice(const struct explanation *x, json_t *line)
{
    int64_t start_s = 0;
    const char *text = json_string_value(json_object_get(line, "slice_start"));
    if (text == NULL || time_parse(text, &start_s) != HM_OK)
        return 0;
    return slice_index_of(x, start_s);
}

/* Returns the rows behind a slice: the month's rollups when unsliced, else a recount of the slice.
 */
static int slice_rows_get(struct explanation *x, size_t slice, const struct rollup_row **rows,
                          size_t *count)
{
    if (!x->sliced) {
        *rows = x->month_rows;
        *count = x->month_count;
        return HM_OK;
    }
    if (!x->slice_read[slice]) {
        int rc = ledger_usage_range(x->ledger, x->tenant->id, x->slice_starts[slice] * 1000000,
                                    slice_end_of(x, slice) * 1000000, &x->slice_rows[slice],
                                    &x->slice_row_counts[slice]);
        if (rc != HM_OK) {
            snprintf(x->error, x->error_size, "cannot recount the usage of tenant %s: %s",
                     x->tenant->name, hm_status_str(rc));
            return rc;
        }
        x->slice_read[slice] = true;
    }
    *rows = x->slice_rows[slice];
    *count = x->slice_row_counts[slice];
    return HM_OK;
}

static const struct rollup_row *row_find(const struct rollup_row *rows, size_t count,
                                         enum rollup_meter meter, const char *dimension)
{
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == meter && strcmp(rows[i].dimension, dimension) == 0)
            return &rows[i];
    }
    return NULL;
}

/*
 * Events behind a meter's quantity in rows. Storage is integrated from the
 * storage samples, so its events are the storage events in the rows.
 */
static uint64_t row_events(const struct rollup_row *rows, size_t count, enum rollup_meter meter,
                           const char *dimension)
{
    const struct rollup_row *row =
        meter == ROLLUP_STORAGE_BYTE_SECONDS
            ? row_find(rows, count, ROLLUP_EVENTS, event_kind_name(EVENT_STORAGE))
            : row_find(rows, count, meter, dimension);
    if (row == NULL)
        return 0;
    return meter == ROLLUP_STORAGE_BYTE_SECONDS ? (uint64_t)row->quantity : row->event_count;
}

static json_t *int128_json(unsigned __int128 value)
{
    char text[MONEY_TEXT_SIZE];
    if (value > (unsigned __int128)(((unsigned __int128)1 << 127) - 1) ||
        money_int128_format((__int128)value, text, sizeof text) != HM_OK)
        return json_string("(beyond 127 bits)");
    return json_string(text);
}

static json_t *amount_json(int64_t minor, const struct money_currency *currency)
{
    char text[MONEY_TEXT_SIZE];
    money_amount_format((struct money_amount){minor}, currency, text, sizeof text);
    return json_string(text);
}

static json_t *time_json(int64_t unix_s)
{
    char text[32];
    time_format(unix_s, text);
    return json_string(text);
}

/* Explains a usage line: the rollup key, the slice, and the quantity and events behind it. */
static int explain_usage(struct explanation *x, const struct meter_info *meter, json_t *line,
                         json_t *item, uint64_t *events_out)
{
    const char *dimension = string_of(line, "dimension");
    size_t slice = line_slice(x, line);
    const struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = slice_rows_get(x, slice, &rows, &count);
    if (rc != HM_OK)
        return rc;
    const struct rollup_row *row = row_find(rows, count, meter->meter, dimension);
    uint64_t events = row_events(rows, count, meter->meter, dimension);

    char key[UUID_TEXT_SIZE + 8 + 32 + EVENT_ENDPOINT_MAX + 4];
    snprintf(key, sizeof key, "%s/%s/%s%s%s", x->tenant_text, x->period_text, meter->meter_name,
             dimension[0] ? "/" : "", dimension);
    json_t *rollup = json_object();
    json_object_set_new(rollup, "key", json_string(key));
    json_object_set_new(rollup, "tenant_id", json_string(x->tenant_text));
    json_object_set_new(rollup, "period", json_string(x->period_text));
    json_object_set_new(rollup, "meter", json_string(meter->meter_name));
    json_object_set_new(rollup, "dimension", json_string(dimension));
    if (x->sliced) {
        json_object_set_new(rollup, "slice_start", time_json(x->slice_starts[slice]));
        json_object_set_new(rollup, "slice_end", time_json(slice_end_of(x, slice)));
    }
    json_object_set_new(rollup, "quantity", int128_json(row ? row->quantity : 0));
    json_object_set_new(rollup, "events", json_integer((json_int_t)events));
    if (meter->meter == ROLLUP_STORAGE_BYTE_SECONDS)
        json_object_set_new(rollup, "events_are", json_string("storage samples in the range"));
    json_object_set_new(item, "rollup", rollup);
    json_object_set_new(item, "line_quantity", json_string(string_of(line, "quantity")));
    json_object_set_new(item, "line_unit", json_string(string_of(line, "unit")));
    json_t *line_events = json_object_get(line, "events");
    if (json_is_integer(line_events))
        json_object_set_new(item, "invoice_events", json_incref(line_events));
    *events_out = events;
    /* A sealed line is the usage at close; the rollup above may hold events that came later. */
    if (x->sealed && json_is_integer(line_events)) {
        *events_out = (uint64_t)json_integer_value(line_events);
        json_t *at_close = json_object();
        json_object_set_new(at_close, "quantity", json_string(string_of(line, "quantity")));
        json_object_set_new(at_close, "unit", json_string(string_of(line, "unit")));
        json_object_set_new(at_close, "events", json_incref(line_events));
        json_object_set_new(item, "at_close", at_close);
        if (events > *events_out) {
            json_t *late = late_billing_json(x);
            json_object_set_new(late, "events", json_integer((json_int_t)(events - *events_out)));
            json_object_set_new(item, "late_since_close", late);
        }
    }
    return HM_OK;
}

/* Explains a base or support fee: its price and the seconds of service it charges. */
static void explain_fee(struct explanation *x, json_t *line, json_t *item)
{
    size_t slice = line_slice(x, line);
    int64_t from_s = x->slice_starts[slice];
    int64_t to_s = slice_end_of(x, slice);
    if (x->tenant->service_start_s > from_s)
        from_s = x->tenant->service_start_s < to_s ? x->tenant->service_start_s : to_s;
    json_t *fee = json_object();
    json_object_set_new(fee, "price", json_string(string_of(line, "unit_price")));
    json_object_set_new(fee, "price_unit", json_string(string_of(line, "price_unit")));
    json_object_set_new(fee, "service_start", time_json(from_s));
    json_object_set_new(fee, "service_end", time_json(to_s));
    json_object_set_new(fee, "service_seconds", json_integer(to_s - from_s));
    json_object_set_new(fee, "period_seconds", json_integer(x->period_end_s - x->period_start_s));
    if (x->sliced)
        json_object_set_new(fee, "slice_start", time_json(x->slice_starts[slice]));
    json_object_set_new(item, "fee", fee);
}

/*
 * Finds the discount of a discount line in the version of the last slice.
 * Rating adds discount lines in book order and leaves out those of amount
 * 0, so the discount lines before it are matched by name in the same order.
 * Returns NULL when no discount of that version has the line's description.
 */
static const struct pricebook_discount *discount_of_line(const struct explanation *x,
                                                         size_t line_index)
{
    const struct pricebook_version *version = x->last_version;
    size_t next = 0;
    const struct pricebook_discount *found = NULL;
    for (size_t i = 0; i <= line_index && version != NULL; i++) {
        json_t *line = json_array_get(x->invoice_lines, i);
        if (strcmp(string_of(line, "kind"), "discount") != 0)
            continue;
        found = NULL;
        const char *name = string_of(line, "description");
        while (next < version->discount_count && found == NULL) {
            if (strcmp(version->discounts[next].name, name) == 0)
                found = &version->discounts[next];
            next++;
        }
    }
    return found;
}

/* Sums the whole period's quantity of a meter, all dimensions, in raw units. */
static unsigned __int128 month_quantity(const struct explanation *x, enum rollup_meter meter)
{
    unsigned __int128 total = 0;
    for (size_t i = 0; i < x->month_count; i++) {
        if (x->month_rows[i].meter == meter)
            total += x->month_rows[i].quantity;
    }
    return total;
}

/* Formats raw / (raw_per_unit, times the period's seconds for storage) in the billing unit. */
static json_t *billing_quantity_json(const struct explanation *x, const struct meter_info *meter,
                                     unsigned __int128 raw)
{
    __int128 divisor = meter->raw_per_unit;
    if (meter->meter == ROLLUP_STORAGE_BYTE_SECONDS)
        divisor *= x->period_end_s - x->period_start_s;
    struct money_ratio ratio;
    char text[MONEY_TEXT_SIZE];
    bool exact = true;
    if (raw > (unsigned __int128)(((unsigned __int128)1 << 126)) ||
        money_ratio_make((__int128)raw, divisor, &ratio) != HM_OK ||
        money_ratio_format(ratio, 0, MONEY_DECIMAL_DIGITS, text, sizeof text, &exact) != HM_OK)
        return json_string("(too large to show)");
    return json_string(text);
}

static int explain_discount(struct explanation *x, size_t line_index, json_t *line, json_t *item)
{
    const struct pricebook_discount *found = discount_of_line(x, line_index);
    if (found == NULL) {
        snprintf(x->error, x->error_size,
                 "line %zu is the discount \"%s\", which price book \"%s\" does not have in "
                 "its version in effect at the end of %s; the invoice does not match its book",
                 line_index + 1, string_of(line, "description"), x->book->name, x->period_text);
        return HM_ERR_INVALID;
    }
    json_t *discount = json_object();
    json_t *kinds = json_array();
    for (size_t k = 0; k < PRICEBOOK_USAGE_KINDS; k++) {
        if (found->applies_to[k])
            json_array_append_new(kinds, json_string(meter_infos[k].line_kind));
    }
    json_t *numbers = json_array();
    int64_t base_minor = 0;
    size_t index;
    json_t *other;
    json_array_foreach(x->invoice_lines, index, other)
    {
        const struct meter_info *meter = meter_of_kind(string_of(other, "kind"));
        if (meter == NULL || !found->applies_to[meter - meter_infos])
            continue;
        json_array_append_new(numbers, json_integer((json_int_t)index + 1));
        base_minor += json_integer_value(json_object_get(other, "amount_minor"));
    }
    const struct meter_info *driver = &meter_infos[found->driver];
    json_object_set_new(discount, "name", json_string(found->name));
    json_object_set_new(discount, "mode", json_string(found->mode == PRICEBOOK_DISCOUNT_VOLUME
                                                          ? "volume"
                                                          : "graduated"));
    json_object_set_new(discount, "applies_to", kinds);
    json_object_set_new(discount, "applies_to_lines", numbers);
    json_object_set_new(discount, "base", amount_json(base_minor, x->currency));
    json_object_set_new(discount, "base_minor", json_integer(base_minor));
    unsigned __int128 raw = month_quantity(x, driver->meter);
    json_object_set_new(discount, "driver", json_string(driver->line_kind));
    json_object_set_new(discount, "driver_quantity", billing_quantity_json(x, driver, raw));
    json_object_set_new(discount, "driver_unit", json_string(driver->billing_unit));
    json_object_set_new(discount, "driver_raw_quantity", int128_json(raw));
    json_object_set_new(discount, "driver_meter", json_string(driver->meter_name));
    json_t *tiers = json_array();
    for (size_t i = 0; i < found->tier_count; i++) {
        char above[MONEY_TEXT_SIZE], percent[MONEY_TEXT_SIZE];
        money_decimal_format(found->tiers[i].above_pico, 0, above, sizeof above);
        money_decimal_format(found->tiers[i].percent_pico, 0, percent, sizeof percent);
        json_array_append_new(tiers, json_pack("{s:s, s:s}", "above", above, "percent", percent));
    }
    json_object_set_new(discount, "tiers", tiers);
    json_object_set_new(item, "discount", discount);
    return HM_OK;
}

/* Explains an adjustment: the earlier period and its events that arrived after its close. */
static void explain_adjustment(struct explanation *x, json_t *line, json_t *item)
{
    json_t *adjustment = json_object();
    const char *text = string_of(line, "period");
    uint32_t period = 0;
    json_object_set_new(adjustment, "period", text[0] ? json_string(text) : json_null());
    if (json_is_integer(json_object_get(line, "events")))
        json_object_set_new(adjustment, "late_events",
                            json_incref(json_object_get(line, "events")));

    /* The late events as the ledger has them now: events of the period minus those sealed. */
    char *sealed_text = NULL;
    uint64_t now = 0;
    if (text[0] && period_parse(text, &period) == HM_OK &&
        ledger_invoice_get(x->ledger, x->tenant->id, period, &sealed_text) == HM_OK &&
        billing_event_count(x->ledger, x->tenant, period, &now) == HM_OK) {
        json_t *sealed = json_loads(sealed_text, 0, NULL);
        json_t *count = json_object_get(sealed, "event_count");
        if (json_is_integer(count)) {
            json_object_set_new(adjustment, "events_at_close", json_incref(count));
            json_object_set_new(adjustment, "events_now", json_integer((json_int_t)now));
            json_object_set_new(adjustment, "late_events_now",
                                json_integer((json_int_t)now - json_integer_value(count)));
        }
        json_decref(sealed);
    }
    free(sealed_text);
    json_object_set_new(item, "adjustment", adjustment);
}

/* Explains a commitment true-up: usage after discounts, and the minimum it tops up to. */
static void explain_commitment(struct explanation *x, json_t *line, json_t *item)
{
    int64_t usage_minor = 0;
    size_t index;
    json_t *other;
    json_array_foreach(x->invoice_lines, index, other)
    {
        const char *kind = string_of(other, "kind");
        if (meter_of_kind(kind) != NULL || strcmp(kind, "discount") == 0)
            usage_minor += json_integer_value(json_object_get(other, "amount_minor"));
    }
    int64_t minimum_minor = usage_minor + json_integer_value(json_object_get(line, "amount_minor"));
    json_t *commitment = json_object();
    json_object_set_new(commitment, "usage_after_discounts", amount_json(usage_minor, x->currency));
    json_object_set_new(commitment, "minimum", amount_json(minimum_minor, x->currency));
    json_object_set_new(item, "commitment", commitment);
}

/* Explains one line into a new object; *events_out gets a usage line's events, else 0. */
static int explain_line(struct explanation *x, size_t index, json_t *line, json_t **out,
                        uint64_t *events_out)
{
    const char *kind = string_of(line, "kind");
    json_t *item = json_object();
    if (item == NULL)
        return HM_ERR_NOMEM;
    json_object_set_new(item, "line", json_integer((json_int_t)index + 1));
    json_object_set_new(item, "kind", json_string(kind));
    json_object_set_new(item, "description", json_string(string_of(line, "description")));
    json_object_set_new(item, "amount", json_string(string_of(line, "amount")));
    json_object_set_new(item, "amount_minor", json_incref(json_object_get(line, "amount_minor")));

    *events_out = 0;
    int rc = HM_OK;
    const struct meter_info *meter = meter_of_kind(kind);
    if (meter != NULL)
        rc = explain_usage(x, meter, line, item, events_out);
    else if (strcmp(kind, "base_fee") == 0 || strcmp(kind, "support_fee") == 0)
        explain_fee(x, line, item);
    else if (strcmp(kind, "discount") == 0)
        rc = explain_discount(x, index, line, item);
    else if (strcmp(kind, "adjustment") == 0)
        explain_adjustment(x, line, item);
    else if (strcmp(kind, "commitment_true_up") == 0)
        explain_commitment(x, line, item);
    if (rc != HM_OK) {
        json_decref(item);
        return rc;
    }
    *out = item;
    return HM_OK;
}

/*
 * Compares, per meter with usage lines, the events behind its lines with
 * the period's events of that meter in the rollups.
 */
static json_t *events_check_json(const struct explanation *x, const uint64_t *line_events,
                                 const bool *has_lines)
{
    /*
     * Sealed lines are compared with the events at close: the counts the
     * billed record kept, or the rollups when no event came after the close.
     * Without either there is no like count, and the check is left out.
     */
    bool at_close_kept = x->has_billed && x->billed.has_meter_events;
    if (x->sealed && !at_close_kept && x->events_now != x->events_at_close)
        return json_null();
    json_t *checks = json_array();
    for (size_t m = 0; m < METER_INFO_COUNT; m++) {
        if (!has_lines[m])
            continue;
        uint64_t period_events = 0;
        if (x->sealed && at_close_kept) {
            period_events = x->billed.meter_events[meter_infos[m].meter];
        } else if (meter_infos[m].meter == ROLLUP_STORAGE_BYTE_SECONDS) {
            period_events =
                row_events(x->month_rows, x->month_count, ROLLUP_STORAGE_BYTE_SECONDS, "");
        } else {
            for (size_t i = 0; i < x->month_count; i++) {
                if (x->month_rows[i].meter == meter_infos[m].meter)
                    period_events += x->month_rows[i].event_count;
            }
        }
        json_t *check = json_object();
        json_object_set_new(check, "meter", json_string(meter_infos[m].meter_name));
        json_object_set_new(check, "line_events", json_integer((json_int_t)line_events[m]));
        json_object_set_new(check, "period_events", json_integer((json_int_t)period_events));
        json_object_set_new(check, "match", json_boolean(line_events[m] == period_events));
        json_array_append_new(checks, check);
    }
    return checks;
}

static int explain_lines(struct explanation *x, size_t line_number, json_t *result)
{
    json_t *items = json_array();
    json_object_set_new(result, "lines", items);
    uint64_t line_events[METER_INFO_COUNT] = {0};
    bool has_lines[METER_INFO_COUNT] = {false};
    size_t index;
    json_t *line;
    json_array_foreach(x->invoice_lines, index, line)
    {
        if (line_number != 0 && index + 1 != line_number)
            continue;
        json_t *item = NULL;
        uint64_t events = 0;
        int rc = explain_line(x, index, line, &item, &events);
        if (rc != HM_OK)
            return rc;
        json_array_append_new(items, item);
        const struct meter_info *meter = meter_of_kind(string_of(line, "kind"));
        if (meter != NULL) {
            line_events[meter - meter_infos] += events;
            has_lines[meter - meter_infos] = true;
        }
    }
    if (line_number == 0) {
        json_object_set_new(result, "events_check", events_check_json(x, line_events, has_lines));
        json_object_set_new(result, "events_check_of",
                            json_string(x->sealed ? "at close" : "now"));
    }
    return HM_OK;
}

/* Copies the invoice header into the explanation and notes events that arrived after a close. */
static void explain_header(struct explanation *x, json_t *invoice, json_t *result)
{
    static const char *const copied[] = {"tenant_id",      "tenant_name", "period",
                                         "invoice_number", "price_book",  "currency"};
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        json_t *value = json_object_get(invoice, copied[i]);
        if (value != NULL)
            json_object_set_new(result, copied[i], json_incref(value));
    }
    const char *status = string_of(invoice, "status");
    json_object_set_new(result, "status", json_string(status[0] ? status : "draft"));
    json_object_set_new(result, "total",
                        json_string(string_of(json_object_get(invoice, "total"), "amount")));
    json_object_set_new(result, "sliced", json_boolean(x->sliced));
    if (x->sealed && x->events_now > x->events_at_close) {
        json_t *late = late_billing_json(x);
        json_object_set_new(late, "events",
                            json_integer((json_int_t)(x->events_now - x->events_at_close)));
        json_object_set_new(result, "late_events",
                            json_integer((json_int_t)(x->events_now - x->events_at_close)));
        json_object_set_new(result, "late_since_close", late);
    }
}

/* Fills the parts of the explanation that come from the invoice text and the month's rollups. */
static int explanation_start(struct explanation *x, json_t *invoice, size_t line_number)
{
    x->invoice_lines = json_object_get(invoice, "lines");
    if (!json_is_array(x->invoice_lines) ||
        money_currency_find(string_of(invoice, "currency"), &x->currency) != HM_OK) {
        snprintf(x->error, x->error_size,
                 "the invoice of tenant %s for %s has no lines array or "
                 "no known currency",
                 x->tenant->name, x->period_text);
        return HM_ERR_INVALID;
    }
    size_t line_count = json_array_size(x->invoice_lines);
    if (line_number > line_count) {
        snprintf(x->error, x->error_size,
                 "line %zu is out of range: the invoice of tenant %s for %s has %zu line%s; "
                 "pick --line 1 to %zu",
                 line_number, x->tenant->name, x->period_text, line_count,
                 line_count == 1 ? "" : "s", line_count);
        return HM_ERR_INVALID;
    }
    json_t *event_count = json_object_get(invoice, "event_count");
    x->sealed = string_of(invoice, "sha256")[0] != '\0' && json_is_integer(event_count);
    if (x->sealed) {
        x->events_at_close = (uint64_t)json_integer_value(event_count);
        int rc = billing_event_count(x->ledger, x->tenant, x->period, &x->events_now);
        if (rc == HM_OK)
            rc = ledger_billed_get(x->ledger, x->tenant->id, x->period, &x->billed);
        if (rc == HM_OK) {
            x->has_billed = true;
            /* A void record of another number describes another revision. */
            const char *number = string_of(invoice, "number");
            if (number[0] != '\0' && strcmp(number, x->billed.number) != 0) {
                ledger_billed_free(&x->billed);
                x->has_billed = false;
            }
        } else if (rc != HM_ERR_NOT_FOUND) {
            snprintf(x->error, x->error_size, "cannot read the billed state of tenant %s for "
                     "%s: %s", x->tenant->name, x->period_text, hm_status_str(rc));
            return rc;
        }
    }
    int rc = book_load(x, invoice);
    if (rc == HM_OK)
        rc = slices_collect(x);
    if (rc == HM_OK)
        rc = line_slices_check(x);
    if (rc != HM_OK)
        return rc;
    rc = ledger_rollups(x->ledger, x->tenant->id, x->period, &x->month_rows, &x->month_count);
    if (rc != HM_OK)
        snprintf(x->error, x->error_size, "cannot read the rollups of tenant %s: %s",
                 x->tenant->name, hm_status_str(rc));
    return rc;
}

int explain_invoice_build(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                          const char *invoice_json, size_t line_number, json_t **out, char *error,
                          size_t error_size)
{
    struct explanation x = {.ledger = ledger,
                            .tenant = tenant,
                            .period = period,
                            .period_start_s = period_start_s_of(period),
                            .period_end_s = period_end_s_of(period),
                            .error = error,
                            .error_size = error_size};
    uuid_format(tenant->id, x.tenant_text);
    period_format(period, x.period_text);
    json_error_t parse_error;
    json_t *invoice = json_loads(invoice_json, 0, &parse_error);
    if (invoice == NULL) {
        snprintf(error, error_size, "the invoice of tenant %s for %s is not valid JSON: %s",
                 tenant->name, x.period_text, parse_error.text);
        return HM_ERR_INVALID;
    }
    json_t *result = json_object();
    int rc = result ? explanation_start(&x, invoice, line_number) : HM_ERR_NOMEM;
    if (rc == HM_OK) {
        explain_header(&x, invoice, result);
        rc = explain_lines(&x, line_number, result);
    }
    explanation_free(&x);
    json_decref(invoice);
    if (rc != HM_OK) {
        json_decref(result);
        return rc;
    }
    *out = result;
    return HM_OK;
}

/* ---- Printing an explanation ---- */

/* Prints "N late events since the close, billed by DOC" or "..., pending: ...". */
static void late_billing_print(json_t *late, FILE *out)
{
    fprintf(out, "%" JSON_INTEGER_FORMAT " late event%s since the close",
            json_integer_value(json_object_get(late, "events")),
            json_integer_value(json_object_get(late, "events")) == 1 ? "" : "s");
    json_t *documents = json_object_get(late, "billed_by");
    size_t index;
    json_t *number;
    if (json_is_true(json_object_get(late, "pending"))) {
        fprintf(out, ", pending: billed on the next close");
        if (json_array_size(documents) > 0)
            fprintf(out, " (earlier ones billed by");
    } else {
        fprintf(out, ", billed by");
    }
    json_array_foreach(documents, index, number)
        fprintf(out, "%s%s", index ? ", " : " ", json_string_value(number));
    if (json_is_true(json_object_get(late, "pending")) && json_array_size(documents) > 0)
        fputc(')', out);
    fputc('\n', out);
}

static void print_usage_detail(json_t *item, FILE *out)
{
    json_t *rollup = json_object_get(item, "rollup");
    fprintf(out, "      rollup %s\n", string_of(rollup, "key"));
    if (json_object_get(rollup, "slice_start") != NULL)
        fprintf(out, "      slice %s to %s\n", string_of(rollup, "slice_start"),
                string_of(rollup, "slice_end"));
    json_t *at_close = json_object_get(item, "at_close");
    if (at_close == NULL) {
        fprintf(out, "      quantity %s %s, events %" JSON_INTEGER_FORMAT "%s; on the line %s %s\n",
                string_of(rollup, "quantity"), string_of(rollup, "meter"),
                json_integer_value(json_object_get(rollup, "events")),
                json_object_get(rollup, "events_are") ? " (storage samples)" : "",
                string_of(item, "line_quantity"), string_of(item, "line_unit"));
        return;
    }
    fprintf(out, "      at close (the sealed line): quantity %s %s, events %" JSON_INTEGER_FORMAT
            "\n", string_of(at_close, "quantity"), string_of(at_close, "unit"),
            json_integer_value(json_object_get(at_close, "events")));
    json_t *late = json_object_get(item, "late_since_close");
    if (late == NULL)
        return;
    fprintf(out, "      now: quantity %s %s, events %" JSON_INTEGER_FORMAT "%s; ",
            string_of(rollup, "quantity"), string_of(rollup, "meter"),
            json_integer_value(json_object_get(rollup, "events")),
            json_object_get(rollup, "events_are") ? " (storage samples)" : "");
    late_billing_print(late, out);
}

static void print_detail(json_t *item, FILE *out)
{
    json_t *part;
    if (json_object_get(item, "rollup") != NULL) {
        print_usage_detail(item, out);
    } else if ((part = json_object_get(item, "fee")) != NULL) {
        fprintf(out,
                "      price %s %s, for %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT
                " seconds of the period: service %s to %s\n",
                string_of(part, "price"), string_of(part, "price_unit"),
                json_integer_value(json_object_get(part, "service_seconds")),
                json_integer_value(json_object_get(part, "period_seconds")),
                string_of(part, "service_start"), string_of(part, "service_end"));
    } else if ((part = json_object_get(item, "discount")) != NULL) {
        size_t index;
        json_t *kind, *number;
        fprintf(out, "      %s, %s: applies to the", string_of(part, "name"),
                string_of(part, "mode"));
        json_array_foreach(json_object_get(part, "applies_to"), index, kind)
            fprintf(out, "%s%s", index ? ", " : " ", json_string_value(kind));
        fprintf(out, " lines");
        json_array_foreach(json_object_get(part, "applies_to_lines"), index, number)
            fprintf(out, "%s%" JSON_INTEGER_FORMAT, index ? ", " : " ", json_integer_value(number));
        fprintf(out, " (sum %s); driver %s: %s %s (%s %s)\n", string_of(part, "base"),
                string_of(part, "driver"), string_of(part, "driver_quantity"),
                string_of(part, "driver_unit"), string_of(part, "driver_raw_quantity"),
                string_of(part, "driver_meter"));
        json_t *tier;
        fprintf(out, "      tiers:");
        json_array_foreach(json_object_get(part, "tiers"), index, tier)
            fprintf(out, "%s above %s %s: %s %%", index ? "," : "", string_of(tier, "above"),
                    string_of(part, "driver_unit"), string_of(tier, "percent"));
        fputc('\n', out);
    } else if ((part = json_object_get(item, "adjustment")) != NULL) {
        json_t *late = json_object_get(part, "late_events");
        json_t *late_now = json_object_get(part, "late_events_now");
        fprintf(out, "      period %s",
                string_of(part, "period")[0] ? string_of(part, "period") : "(not named)");
        if (late != NULL)
            fprintf(out, ", %" JSON_INTEGER_FORMAT " late events", json_integer_value(late));
        if (late_now != NULL)
            fprintf(out,
                    "; the ledger now has %" JSON_INTEGER_FORMAT " events of it after its "
                    "close",
                    json_integer_value(late_now));
        fputc('\n', out);
    } else if ((part = json_object_get(item, "commitment")) != NULL) {
        fprintf(out, "      usage after discounts %s, minimum %s\n",
                string_of(part, "usage_after_discounts"), string_of(part, "minimum"));
    }
}

static void explanation_print(json_t *result, FILE *out)
{
    const char *number = string_of(result, "invoice_number");
    /* Documents stored before free texts were checked may hold control characters. */
    char shown[6 * BILLING_TEXT_MAX + 16];
    billing_text_printable(string_of(result, "price_book"), shown, sizeof shown);
    fprintf(out, "Invoice %s of tenant %s (%s), period %s, %s, price book %s, total %s %s\n\n",
            number[0] ? number : "(draft)", string_of(result, "tenant_name"),
            string_of(result, "tenant_id"), string_of(result, "period"),
            string_of(result, "status"), shown, string_of(result, "total"),
            string_of(result, "currency"));
    fprintf(out, "%4s  %-20s %14s  %s\n", "line", "kind", "amount", "description");
    size_t index;
    json_t *item;
    json_array_foreach(json_object_get(result, "lines"), index, item)
    {
        billing_text_printable(string_of(item, "description"), shown, sizeof shown);
        fprintf(out, "%4" JSON_INTEGER_FORMAT "  %-20s %14s  %s\n",
                json_integer_value(json_object_get(item, "line")), string_of(item, "kind"),
                string_of(item, "amount"), shown);
        print_detail(item, out);
    }
    json_t *checks = json_object_get(result, "events_check");
    bool at_close = strcmp(string_of(result, "events_check_of"), "at close") == 0;
    if (json_is_null(checks))
        fprintf(out, "\nThe events per meter at close were not kept for this invoice, and "
                "events came later, so the lines are not checked against the period's events\n");
    if (json_array_size(checks) > 0) {
        fprintf(out, "\n%-22s %12s %14s\n", "events of meter", "on lines",
                at_close ? "at close" : "in period");
        json_array_foreach(checks, index, item)
        {
            fprintf(out, "%-22s %12" JSON_INTEGER_FORMAT " %14" JSON_INTEGER_FORMAT "  %s\n",
                    string_of(item, "meter"),
                    json_integer_value(json_object_get(item, "line_events")),
                    json_integer_value(json_object_get(item, "period_events")),
                    json_is_true(json_object_get(item, "match"))
                        ? "match"
                        : "DIFFER: events of zero quantity make no line");
        }
    }
    json_t *late = json_object_get(result, "late_since_close");
    if (late != NULL) {
        fprintf(out, "\nLate events: ");
        late_billing_print(late, out);
    }
}

/*
 * Returns whether a stored invoice is finalized. A period that was reopened
 * keeps its voided invoice until it closes again, and then its draft is the
 * one that counts.
 */
static bool stored_invoice_finalized(const char *text)
{
    json_t *invoice = json_loads(text, 0, NULL);
    bool finalized = strcmp(string_of(invoice, "status"), "finalized") == 0;
    json_decref(invoice);
    return finalized;
}

/* Reads the finalized invoice of the period, else rates the draft; *json_out is freed by the
 * caller. */
static int invoice_text_get(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                            char **json_out, char *error, size_t error_size)
{
    int rc = ledger_invoice_get(ledger, tenant->id, period, json_out);
    if (rc == HM_OK && stored_invoice_finalized(*json_out))
        return HM_OK;
    if (rc == HM_OK) {
        free(*json_out);
        *json_out = NULL;
        rc = HM_ERR_NOT_FOUND;
    }
    if (rc != HM_ERR_NOT_FOUND) {
        snprintf(error, error_size, "cannot read the invoice of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    struct invoice invoice;
    uint64_t events = 0;
    rc = billing_draft(ledger, tenant, period, &invoice, &events, error, error_size);
    if (rc != HM_OK)
        return rc;
    json_t *json = NULL;
    rc = invoice_to_json(&invoice, &json);
    invoice_free(&invoice);
    if (rc != HM_OK)
        return rc;
    *json_out = json_dumps_whole(json, JSON_COMPACT);
    json_decref(json);
    return *json_out ? HM_OK : HM_ERR_NOMEM;
}

/* Parses --line N; 0 when absent. Returns 0, or 1 after printing the error. */
static int line_option(int argc, char **argv, size_t *line_number)
{
    const char *text = option_value(argc, argv, 3, "--line");
    *line_number = 0;
    if (text == NULL)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (text[0] < '1' || text[0] > '9' || *end != '\0' || errno != 0 || value > SIZE_MAX)
        return fail("invalid --line \"%s\": give a line number from 1 up", text);
    *line_number = (size_t)value;
    return 0;
}

int explain_invoice_command(struct ledger *ledger, int argc, char **argv, FILE *out)
{
    static const char *const with_value[] = {"--period", "--line", NULL};
    static const char *const flags[] = {"--json", NULL};
    if (argc < 3 || argv[2][0] == '-')
        return fail("usage: meterctl invoice explain TENANT --period YYYY-MM [--line N] [--json]");
    uint32_t period;
    size_t line_number;
    struct tenant tenant;
    if (options_check(argc, argv, 3, with_value, flags) || period_read(argc, argv, 3, &period) ||
        line_option(argc, argv, &line_number) || tenant_read(ledger, argv[2], &tenant))
        return 1;

    char error[512] = "";
    char *text = NULL;
    int rc = invoice_text_get(ledger, &tenant, period, &text, error, sizeof error);
    if (rc != HM_OK)
        return fail("no invoice to explain for tenant %s: %s", tenant.name,
                    error[0] ? error : hm_status_str(rc));
    json_t *result = NULL;
    rc = explain_invoice_build(ledger, &tenant, period, text, line_number, &result, error,
                               sizeof error);
    free(text);
    if (rc != HM_OK)
        return fail("%s", error[0] ? error : hm_status_str(rc));
    if (flag_set(argc, argv, 3, "--json")) {
        char *dumped = json_dumps(result, JSON_INDENT(2));
        if (dumped != NULL)
            fprintf(out, "%s\n", dumped);
        free(dumped);
    } else {
        explanation_print(result, out);
    }
    json_decref(result);
    return 0;
}

/* ---- Re-rating a period under another book ---- */

struct rerate_row {
    char tenant_name[TENANT_NAME_MAX + 1];
    const char *status; /* "finalized" or "draft" */
    int64_t current_minor;
    int64_t rerated_minor;
};

/*
 * Loads a price book file, printing every error with its JSON path.
 * Returns the book (pricebook_free), or NULL after printing.
 */
static struct pricebook *rerate_book_load(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        fail("cannot read price book %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(PRICEBOOK_FILE_SIZE_MAX + 1);
    size_t size = text ? fread(text, 1, PRICEBOOK_FILE_SIZE_MAX + 1, file) : 0;
    fclose(file);
    if (text == NULL || size > PRICEBOOK_FILE_SIZE_MAX) {
        free(text);
        fail("cannot read price book %s: larger than %d bytes", path, PRICEBOOK_FILE_SIZE_MAX);
        return NULL;
    }
    text[size] = '\0';
    char errors[8192];
    size_t error_count = 0;
    struct pricebook *book = NULL;
    char error[512];
    if (pricebook_check(text, size, errors, sizeof errors, &error_count) != HM_OK) {
        size_t errors_size = strlen(errors);
        fprintf(stderr, "%s: %zu error%s\n%s%s", path, error_count, error_count == 1 ? "" : "s",
                errors, errors_size > 0 && errors[errors_size - 1] != '\n' ? "\n" : "");
    } else if (pricebook_parse(text, size, &book, error, sizeof error) != HM_OK) {
        fail("%s: %s", path, error);
        book = NULL;
    }
    free(text);
    return book;
}

/*
 * What an invoice charges for its own period: subtotal minus discounts,
 * without the late usage of earlier periods and before credits, which
 * re-rating under another book leaves alone.
 */
static int64_t invoice_usage_charges(const struct invoice *invoice)
{
    return billing_usage_net_minor(invoice);
}

/* The same as invoice_usage_charges, for a sealed invoice's JSON. */
static int stored_usage_charges(json_t *invoice, int64_t *out)
{
    json_t *subtotal = json_object_get(json_object_get(invoice, "subtotal"), "amount_minor");
    json_t *discount = json_object_get(json_object_get(invoice, "discount"), "amount_minor");
    if (!json_is_integer(subtotal) || !json_is_integer(discount))
        return HM_ERR_INVALID;
    int64_t amount = json_integer_value(subtotal) - json_integer_value(discount);
    size_t index;
    json_t *line;
    json_array_foreach(json_object_get(invoice, "lines"), index, line) {
        const char *kind = json_string_value(json_object_get(line, "kind"));
        if (kind == NULL || strcmp(kind, "adjustment") != 0)
            continue;
        json_t *minor = json_object_get(line, "amount_minor");
        if (!json_is_integer(minor))
            return HM_ERR_INVALID;
        amount -= json_integer_value(minor);
    }
    *out = amount;
    return HM_OK;
}

/*
 * Reads what a tenant's period has billed for its own usage, and its
 * currency: for a finalized period the sealed invoice's usage charges plus
 * the late usage billed since its close, else the draft's usage charges.
 * Returns HM_OK, 1 when the tenant gets no invoice for the period (as at
 * close), or a negative error with the message in error.
 */
static int rerate_current(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                          struct rerate_row *row, char currency[4], char *error, size_t error_size)
{
    char *text = NULL;
    int rc = ledger_invoice_get(ledger, tenant->id, period, &text);
    if (rc == HM_OK && !stored_invoice_finalized(text)) {
        free(text);
        rc = HM_ERR_NOT_FOUND;
    }
    if (rc == HM_OK) {
        json_t *invoice = json_loads(text, 0, NULL);
        free(text);
        rc = stored_usage_charges(invoice, &row->current_minor);
        if (rc == HM_OK) {
            row->status = "finalized";
            snprintf(currency, 4, "%s", string_of(invoice, "currency"));
        } else {
            snprintf(error, error_size, "the sealed invoice lacks subtotal, discount or a line "
                     "amount_minor");
        }
        json_decref(invoice);
        /* Late usage billed since the close (adjustments, late usage credit notes) counts too. */
        struct billed_period billed;
        int billed_rc = rc == HM_OK ? ledger_billed_get(ledger, tenant->id, period, &billed)
                                    : HM_ERR_NOT_FOUND;
        if (billed_rc == HM_OK) {
            for (size_t i = 0; i < billed.change_count; i++) {
                if (billed.changes[i].late_usage)
                    row->current_minor += billed.changes[i].amount_minor;
            }
            ledger_billed_free(&billed);
        } else if (billed_rc != HM_ERR_NOT_FOUND) {
            snprintf(error, error_size, "cannot read the billed state of the period: %s",
                     hm_status_str(billed_rc));
            rc = billed_rc;
        }
        return rc;
    }
    if (rc != HM_ERR_NOT_FOUND) {
        snprintf(error, error_size, "cannot read the sealed invoice: %s", hm_status_str(rc));
        return rc;
    }
    /* Credits do not change usage charges, so a problem with a grant cannot stop this. */
    struct invoice invoice;
    rc = billing_draft_without_credits(ledger, tenant, period, &invoice, error, error_size);
    if (rc != HM_OK)
        return rc;
    bool no_invoice = tenant->service_start_s >= period_end_s_of(period) && invoice.line_count == 0;
    row->current_minor = invoice_usage_charges(&invoice);
    row->status = "draft";
    snprintf(currency, 4, "%s", invoice.currency->code);
    invoice_free(&invoice);
    return no_invoice ? 1 : HM_OK;
}

/* Rates the tenant's period under the book. Returns HM_OK, 1 when skipped, or an error. */
static int rerate_tenant(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                         const struct pricebook *book, const char *book_path,
                         struct rerate_row *row, char *error, size_t error_size)
{
    char currency[4] = "";
    snprintf(row->tenant_name, sizeof row->tenant_name, "%s", tenant->name);
    int rc = rerate_current(ledger, tenant, period, row, currency, error, error_size);
    if (rc != HM_OK)
        return rc;
    if (strcmp(currency, book->currency->code) != 0) {
        snprintf(error, error_size,
                 "its %s invoice is in %s, but price book %s prices in %s; re-rate it with a "
                 "book in %s",
                 row->status, currency, book_path, book->currency->code, currency);
        return HM_ERR_INVALID;
    }
    /* The same usage, slices and tenant settings as a close; credits and late usage stay out. */
    struct usage_totals usage;
    rc = billing_usage_totals(ledger, tenant, period, book, &usage, NULL, error, error_size);
    if (rc != HM_OK)
        return rc;
    struct invoice invoice;
    rc = pricing_rate(&usage, book, &invoice, error, error_size);
    usage_input_free(&usage);
    if (rc != HM_OK)
        return rc;
    row->rerated_minor = invoice_usage_charges(&invoice);
    invoice_free(&invoice);
    return HM_OK;
}

static void rerate_print(FILE *out, const struct pricebook *book, const char *book_path,
                         uint32_t period, const struct rerate_row *rows, size_t count)
{
    char period_text[8];
    period_format(period, period_text);
    fprintf(out, "Period %s re-rated under price book \"%s\" (%s), in %s\n\n", period_text,
            book->name, book_path, book->currency->code);
    fprintf(out, "%-24s %-10s %18s %18s %18s\n", "tenant", "status", "current", "re-rated",
            "difference");
    __int128 current = 0, rerated = 0;
    for (size_t i = 0; i < count; i++) {
        char a[MONEY_TEXT_SIZE], b[MONEY_TEXT_SIZE], d[MONEY_TEXT_SIZE];
        money_amount_format((struct money_amount){rows[i].current_minor}, book->currency, a,
                            sizeof a);
        money_amount_format((struct money_amount){rows[i].rerated_minor}, book->currency, b,
                            sizeof b);
        /* Each total is at most INT64_MAX and at least 0, so the difference fits. */
        money_amount_format((struct money_amount){rows[i].rerated_minor - rows[i].current_minor},
                            book->currency, d, sizeof d);
        fprintf(out, "%-24s %-10s %18s %18s %18s\n", rows[i].tenant_name, rows[i].status, a, b, d);
        current += rows[i].current_minor;
        rerated += rows[i].rerated_minor;
    }
    /* Sums of int64 totals are held in __int128 and shown only when they fit an amount. */
    char a[MONEY_TEXT_SIZE] = "(overflow)", b[MONEY_TEXT_SIZE] = "(overflow)",
         d[MONEY_TEXT_SIZE] = "(overflow)";
    if (current <= INT64_MAX && rerated <= INT64_MAX) {
        money_amount_format((struct money_amount){(int64_t)current}, book->currency, a, sizeof a);
        money_amount_format((struct money_amount){(int64_t)rerated}, book->currency, b, sizeof b);
        money_amount_format((struct money_amount){(int64_t)(rerated - current)}, book->currency, d,
                            sizeof d);
    }
    fprintf(out, "%-24s %-10s %18s %18s %18s\n", "total", "", a, b, d);
}

/* Lists the tenants to re-rate: the one named, or all. Returns 0, or 1 after printing. */
static int rerate_tenants(struct ledger *ledger, const char *name, struct tenant **tenants,
                          size_t *count)
{
    if (name != NULL) {
        *tenants = malloc(sizeof **tenants);
        *count = 1;
        if (*tenants == NULL)
            return fail("out of memory");
        if (tenant_read(ledger, name, *tenants)) {
            free(*tenants);
            return 1;
        }
        return 0;
    }
    int rc = ledger_tenant_list(ledger, tenants, count);
    if (rc != HM_OK)
        return fail("cannot list the tenants: %s", hm_status_str(rc));
    return 0;
}

int explain_rerate_command(struct ledger *ledger, int argc, char **argv, FILE *out)
{
    static const char *const with_value[] = {"--period", "--book", "--tenant", NULL};
    static const char *const no_flags[] = {NULL};
    uint32_t period;
    if (options_check(argc, argv, 1, with_value, no_flags) || period_read(argc, argv, 1, &period))
        return 1;
    const char *book_path = option_value(argc, argv, 1, "--book");
    if (book_path == NULL)
        return fail("missing --book FILE: the price book to re-rate the period with");
    struct tenant *tenants = NULL;
    size_t tenant_count = 0;
    if (rerate_tenants(ledger, option_value(argc, argv, 1, "--tenant"), &tenants, &tenant_count))
        return 1;
    struct pricebook *book = rerate_book_load(book_path);
    struct rerate_row *rows = calloc(tenant_count ? tenant_count : 1, sizeof *rows);
    if (book == NULL || rows == NULL) {
        free(tenants);
        free(rows);
        pricebook_free(book);
        return 1;
    }

    size_t count = 0;
    int failures = 0;
    char period_text[8];
    period_format(period, period_text);
    for (size_t i = 0; i < tenant_count; i++) {
        char error[512] = "";
        int rc = rerate_tenant(ledger, &tenants[i], period, book, book_path, &rows[count], error,
                               sizeof error);
        if (rc == HM_OK) {
            count++;
        } else if (rc > 0 && tenant_count == 1) {
            fprintf(stderr,
                    "meterctl: tenant %s gets no invoice for %s: its service starts after "
                    "the period and it used nothing in it\n",
                    tenants[i].name, period_text);
        } else if (rc < 0) {
            fail("cannot re-rate tenant %s for %s: %s", tenants[i].name, period_text,
                 error[0] ? error : hm_status_str(rc));
            failures++;
        }
    }
    rerate_print(out, book, book_path, period, rows, count);
    free(rows);
    free(tenants);
    pricebook_free(book);
    return failures > 0 ? 1 : 0;
}
