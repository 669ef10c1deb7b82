#include "pricing/invoice.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "common/uuid.h"
#include "pricing/discount.h"

#define INT128_MAX_VALUE ((__int128)(((unsigned __int128)1 << 127) - 1))

/* Units of the metered quantities. */
#define SECONDS_PER_HOUR 3600
#define PER_MILLION 1000000     /* token and API call prices are per million */
#define BYTES_PER_GB 1000000000 /* 1 GB = 10^9 bytes */

/* Checks an invariant in every build type: a failure is a bug in rating, so it aborts. */
#define PRICING_CHECK(condition)                                                                   \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            fprintf(stderr, "%s:%d: pricing invariant failed: %s\n", __FILE__, __LINE__,           \
                    #condition);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Line kinds gpu .. transfer map to meters 1 .. 7 and to discount kind indexes 0 .. 6. */
_Static_assert(INVOICE_LINE_TRANSFER - INVOICE_LINE_GPU + 1 == PRICEBOOK_USAGE_KINDS,
               "one usage line kind per meter");
_Static_assert(METER_TRANSFER_BYTES - METER_GPU_SECONDS + 1 == PRICEBOOK_USAGE_KINDS,
               "one meter per usage line kind");

/* A part of the period under one price book version. */
struct slice {
    int64_t start_s;
    int64_t end_s;
    size_t version_index;
    const struct pricebook_version *version;
};

/* The quantity of one meter and dimension inside one slice, summed over the usage items. */
struct aggregate {
    enum meter meter;
    const char *dimension;
    size_t slice;
    unsigned __int128 quantity;
    uint64_t event_count;
};

/* State of one pricing_rate call. */
struct rating {
    const struct usage_totals *usage;
    const struct pricebook *book;
    struct invoice *invoice;
    char *error;
    size_t error_size;
    char tenant[128]; /* "name (uuid)" for messages */

    int64_t period_s;
    int64_t service_start_s; /* clipped to the period */
    int64_t service_end_s;   /* clipped to the period; <= service_start_s: no service */
    __int128 minor_per_unit; /* 10^exponent of the currency */
    size_t slice_count;
    struct slice slices[PRICEBOOK_VERSIONS_MAX];
    size_t line_capacity;

    int64_t usage_minor;                               /* sum of the usage lines */
    int64_t kind_minor[PRICEBOOK_USAGE_KINDS];         /* sum of the usage lines per kind */
    unsigned __int128 kind_raw[PRICEBOOK_USAGE_KINDS]; /* whole-period quantity per meter */
};

/* Units of one meter: its billing unit and its display unit on a line. */
struct meter_units {
    enum invoice_line_kind kind;
    const char *title;
    __int128 billing_divisor; /* raw units per billing unit */
    __int128 display_divisor; /* raw units per displayed unit */
    const char *unit;
    const char *price_unit;
};

__attribute__((format(printf, 2, 3))) static void rating_error(struct rating *rating,
                                                               const char *fmt, ...)
{
    if (rating->error == NULL || rating->error_size == 0)
        return;

    int length = snprintf(rating->error, rating->error_size, "tenant %s: ", rating->tenant);
    if (length < 0 || (size_t)length >= rating->error_size)
        return;

    va_list args;
    va_start(args, fmt);
    vsnprintf(rating->error + length, rating->error_size - (size_t)length, fmt, args);
    va_end(args);
}

const char *invoice_line_kind_name(enum invoice_line_kind kind)
{
    switch (kind) {
    case INVOICE_LINE_BASE_FEE: return "base_fee";
    case INVOICE_LINE_GPU: return "gpu";
    case INVOICE_LINE_INPUT_TOKENS: return "input_tokens";
    case INVOICE_LINE_OUTPUT_TOKENS: return "output_tokens";
    case INVOICE_LINE_CACHED_INPUT_TOKENS: return "cached_input_tokens";
    case INVOICE_LINE_API_CALLS: return "api_calls";
    case INVOICE_LINE_STORAGE: return "storage";
    case INVOICE_LINE_TRANSFER: return "transfer";
    case INVOICE_LINE_DISCOUNT: return "discount";
    case INVOICE_LINE_SUPPORT_FEE: return "support_fee";
    case INVOICE_LINE_COMMITMENT_TRUE_UP: return "commitment_true_up";
    case INVOICE_LINE_ADJUSTMENT: return "adjustment";
    }
    return "unknown";
}

static const char *meter_name(enum meter meter)
{
    switch (meter) {
    case METER_GPU_SECONDS: return "GPU-seconds";
    case METER_INPUT_TOKENS: return "input tokens";
    case METER_OUTPUT_TOKENS: return "output tokens";
    case METER_CACHED_INPUT_TOKENS: return "cached input tokens";
    case METER_API_CALLS: return "API calls";
    case METER_STORAGE_BYTE_SECONDS: return "storage byte-seconds";
    case METER_TRANSFER_BYTES: return "transfer bytes";
    }
    return "unknown meter";
}

static bool meter_has_dimension(enum meter meter)
{
    return meter == METER_GPU_SECONDS || meter == METER_INPUT_TOKENS ||
           meter == METER_OUTPUT_TOKENS || meter == METER_CACHED_INPUT_TOKENS;
}

static struct meter_units units_of(const struct rating *rating, enum meter meter)
{
    switch (meter) {
    case METER_GPU_SECONDS:
        return (struct meter_units){INVOICE_LINE_GPU, "GPU usage", SECONDS_PER_HOUR,
                                    SECONDS_PER_HOUR, "GPU-hour",  "per GPU-hour"};
    case METER_INPUT_TOKENS:
        return (struct meter_units){INVOICE_LINE_INPUT_TOKENS,
                                    "Uncached input tokens",
                                    PER_MILLION,
                                    1,
                                    "token",
                                    "per 1M tokens"};
    case METER_OUTPUT_TOKENS:
        return (struct meter_units){
            INVOICE_LINE_OUTPUT_TOKENS, "Output tokens", PER_MILLION, 1, "token", "per 1M tokens"};
    case METER_CACHED_INPUT_TOKENS:
        return (struct meter_units){INVOICE_LINE_CACHED_INPUT_TOKENS,
                                    "Cached input tokens",
                                    PER_MILLION,
                                    1,
                                    "token",
                                    "per 1M tokens"};
    case METER_API_CALLS:
        return (struct meter_units){INVOICE_LINE_API_CALLS, "API calls", PER_MILLION, 1, "call",
                                    "per 1M calls"};
    case METER_STORAGE_BYTE_SECONDS: {
        /* GB-months = byte-seconds / 10^9 / the period's own length in seconds. */
        __int128 divisor = (__int128)BYTES_PER_GB * rating->period_s;
        return (struct meter_units){INVOICE_LINE_STORAGE, "Storage",     divisor, divisor,
                                    "GB-month",           "per GB-month"};
    }
    case METER_TRANSFER_BYTES: break;
    }
    return (struct meter_units){
        INVOICE_LINE_TRANSFER, "Data transfer", BYTES_PER_GB, BYTES_PER_GB, "GB", "per GB"};
}

/* Formats Unix seconds as "2024-06-15T00:00:00Z", or as "2024-06-15 00:00" when short. */
static void format_utc(int64_t unix_s, bool short_form, char *out, size_t out_size)
{
    time_t seconds = (time_t)unix_s;
    struct tm utc;

    if (gmtime_r(&seconds, &utc) == NULL ||
        strftime(out, out_size, short_form ? "%Y-%m-%d %H:%M" : "%Y-%m-%dT%H:%M:%SZ", &utc) == 0)
        snprintf(out, out_size, "%lld", (long long)unix_s);
}

/* Names a version for messages: "version 2 (effective from 2024-06-15T00:00:00Z)". */
static void format_version(const struct slice *slice, char *out, size_t out_size)
{
    if (!slice->version->has_effective_from) {
        snprintf(out, out_size, "version %zu", slice->version_index + 1);
        return;
    }
    char from[32];
    format_utc(slice->version->effective_from_s, false, from, sizeof(from));
    snprintf(out, out_size, "version %zu (effective from %s)", slice->version_index + 1, from);
}

static int ratio_of(__int128 num, __int128 den, struct money_ratio *out)
{
    return money_ratio_make(num, den, out);
}

/* A decimal price per billing unit as a rational count of minor units. */
static int price_minor(const struct rating *rating, struct money_price price,
                       struct money_ratio *out)
{
    struct money_ratio decimal;
    int status = money_ratio_from_decimal(price.pico, &decimal);
    if (status == HM_OK)
        status = money_ratio_mul(decimal, (struct money_ratio){rating->minor_per_unit, 1}, out);
    return status;
}

/* Formats a rational for display: 12 fraction digits when they fit, else whole units. */
static void format_ratio(struct money_ratio value, int min_fraction_digits, char *out,
                         size_t out_size, bool *exact)
{
    int status =
        money_ratio_format(value, min_fraction_digits, MONEY_DECIMAL_DIGITS, out, out_size, exact);
    if (status != HM_OK)
        status = money_ratio_format(value, 0, 0, out, out_size, exact);
    PRICING_CHECK(status == HM_OK);
}

static void format_amount(const struct rating *rating, int64_t minor, char *out, size_t out_size)
{
    int status =
        money_amount_format((struct money_amount){minor}, rating->book->currency, out, out_size);
    PRICING_CHECK(status == HM_OK);
}

/* Appends ", from 2024-06-15 00:00" to a description when the period has several slices. */
static void append_slice(const struct rating *rating, const struct slice *slice, char *description,
                         size_t size)
{
    if (rating->slice_count < 2)
        return;
    char from[32];
    size_t length = strlen(description);
    format_utc(slice->start_s, true, from, sizeof(from));
    snprintf(description + length, size - length, ", from %s", from);
}

/*
 * Appends a line and adds its amount to the subtotal (discount lines go to
 * discount_total instead). Returns the line, or NULL after an overflow error.
 */
static struct invoice_line *add_line(struct rating *rating, enum invoice_line_kind kind,
                                     const char *description, int64_t amount_minor)
{
    struct invoice *invoice = rating->invoice;

    if (kind == INVOICE_LINE_DISCOUNT) {
        if (__builtin_sub_overflow(invoice->discount_total.minor, amount_minor,
                                   &invoice->discount_total.minor)) {
            rating_error(rating,
                         "overflow adding discount \"%s\" of %lld minor units to the "
                         "discount total",
                         description, (long long)amount_minor);
            return NULL;
        }
    } else if (__builtin_add_overflow(invoice->subtotal.minor, amount_minor,
                                      &invoice->subtotal.minor)) {
        rating_error(rating, "overflow adding line \"%s\" to the subtotal", description);
        return NULL;
    }

    PRICING_CHECK(invoice->line_count < rating->line_capacity);
    struct invoice_line *line = &invoice->lines[invoice->line_count++];
    memset(line, 0, sizeof(*line));
    line->kind = kind;
    snprintf(line->description, sizeof(line->description), "%s", description);
    line->amount.minor = amount_minor;
    return line;
}

/* ---- Fees ---- */

/* Seconds of [start_s, end_s) that fall inside the tenant's service. */
static int64_t service_seconds(const struct rating *rating, int64_t start_s, int64_t end_s)
{
    int64_t from = start_s > rating->service_start_s ? start_s : rating->service_start_s;
    int64_t to = end_s < rating->service_end_s ? end_s : rating->service_end_s;
    return to > from ? to - from : 0;
}

/*
 * Adds a monthly fee line for one slice: fee * (service seconds in the slice)
 * / (period seconds), rounded once. No line when the share is 0.
 */
static int add_fee_line(struct rating *rating, enum invoice_line_kind kind, const char *title,
                        struct money_price fee, const struct slice *slice)
{
    int64_t seconds = service_seconds(rating, slice->start_s, slice->end_s);
    if (seconds == 0)
        return HM_OK;

    struct money_ratio share;
    struct money_ratio per_month;
    struct money_ratio exact;
    struct money_amount amount;
    int status = ratio_of(seconds, rating->period_s, &share);
    if (status == HM_OK)
        status = price_minor(rating, fee, &per_month);
    if (status == HM_OK)
        status = money_ratio_mul(per_month, share, &exact);
    if (status == HM_OK)
        status = money_amount_from_ratio(exact, rating->book->rounding, &amount);

    char description[INVOICE_DESCRIPTION_MAX + 1];
    bool prorated = seconds != slice->end_s - slice->start_s;
    snprintf(description, sizeof(description), "%s%s", title,
             prorated ? ", prorated to the service dates" : "");
    append_slice(rating, slice, description, sizeof(description));
    if (status != HM_OK) {
        char price[MONEY_TEXT_SIZE];
        money_decimal_format(fee.pico, 0, price, sizeof(price));
        rating_error(rating,
                     "overflow in %s line \"%s\": %s %s per month for %lld of %lld seconds does "
                     "not fit a 64-bit amount in minor units",
                     invoice_line_kind_name(kind), description, price, rating->book->currency->code,
                     (long long)seconds, (long long)rating->period_s);
        return HM_ERR_OVERFLOW;
    }

    struct invoice_line *line = add_line(rating, kind, description, amount.minor);
    if (line == NULL)
        return HM_ERR_OVERFLOW;
    format_ratio(share, 0, line->quantity, sizeof(line->quantity), &line->quantity_exact);
    snprintf(line->unit, sizeof(line->unit), "month");
    money_decimal_format(fee.pico, rating->book->currency->exponent, line->unit_price,
                         sizeof(line->unit_price));
    line->unit_price_exact = true;
    snprintf(line->price_unit, sizeof(line->price_unit), "per month");
    line->slice_start_s = rating->slice_count > 1 ? slice->start_s : 0;
    return HM_OK;
}

static int rate_fees(struct rating *rating)
{
    for (size_t i = 0; i < rating->slice_count; i++) {
        const struct slice *slice = &rating->slices[i];
        if (!slice->version->has_base_fee)
            continue;
        int status = add_fee_line(rating, INVOICE_LINE_BASE_FEE, "Base platform fee",
                                  slice->version->base_fee_per_month, slice);
        if (status != HM_OK)
            return status;
    }

    enum support_tier tier = rating->usage->support_tier;
    if (tier == SUPPORT_NONE)
        return HM_OK;
    if (tier < SUPPORT_NONE || tier > SUPPORT_ENTERPRISE) {
        rating_error(rating, "unknown support tier %d; expected basic, pro or enterprise",
                     (int)tier);
        return HM_ERR_INVALID;
    }

    char title[64];
    snprintf(title, sizeof(title), "Support plan, %s", support_tier_name(tier));
    for (size_t i = 0; i < rating->slice_count; i++) {
        const struct slice *slice = &rating->slices[i];
        if (!slice->version->has_support_fee[tier]) {
            char version[96];
            format_version(slice, version, sizeof(version));
            rating_error(rating,
                         "no price for support tier \"%s\" in price book \"%s\" %s; add \"%s\" "
                         "to support_fee of that version",
                         support_tier_name(tier), rating->book->name, version,
                         support_tier_name(tier));
            return HM_ERR_NOT_FOUND;
        }
        int status = add_fee_line(rating, INVOICE_LINE_SUPPORT_FEE, title,
                                  slice->version->support_fee_per_month[tier], slice);
        if (status != HM_OK)
            return status;
    }
    return HM_OK;
}

/* ---- Usage ---- */

/*
 * Checks the items and sums those with the same meter, dimension and slice,
 * so that each line is rounded once. Returns the number of aggregates or a
 * negative status.
 */
static int aggregate_items(struct rating *rating, struct aggregate *aggregates)
{
    const struct usage_totals *usage = rating->usage;
    int count = 0;

    for (size_t i = 0; i < usage->item_count; i++) {
        const struct usage_item *item = &usage->items[i];
        if (item->meter < METER_GPU_SECONDS || item->meter > METER_TRANSFER_BYTES) {
            rating_error(rating, "usage item %zu has unknown meter %d", i, (int)item->meter);
            return HM_ERR_INVALID;
        }
        size_t dimension_length = strnlen(item->dimension, sizeof(item->dimension));
        if (dimension_length == sizeof(item->dimension)) {
            rating_error(rating, "usage item %zu: dimension is not NUL-terminated", i);
            return HM_ERR_INVALID;
        }
        if (meter_has_dimension(item->meter) != (dimension_length > 0)) {
            rating_error(rating, "usage item %zu: %s %s", i, meter_name(item->meter),
                         dimension_length > 0 ? "take no dimension"
                                              : "need a dimension (GPU type or model)");
            return HM_ERR_INVALID;
        }

        /* The slice: 0 and the period start both name the first one. */
        size_t slice = rating->slice_count;
        int64_t start_s = item->start_s == 0 ? usage->period_start_s : item->start_s;
        for (size_t s = 0; s < rating->slice_count && slice == rating->slice_count; s++)
            if (rating->slices[s].start_s == start_s)
                slice = s;
        if (slice == rating->slice_count) {
            char start[32];
            format_utc(item->start_s, false, start, sizeof(start));
            rating_error(rating,
                         "usage item %zu (%s \"%s\") starts at %s, which is not a slice start of "
                         "the period under price book \"%s\"; use 0 or the start of a slice",
                         i, meter_name(item->meter), item->dimension, start, rating->book->name);
            return HM_ERR_INVALID;
        }

        int found = -1;
        for (int j = 0; j < count && found < 0; j++) {
            if (aggregates[j].meter == item->meter && aggregates[j].slice == slice &&
                strcmp(aggregates[j].dimension, item->dimension) == 0)
                found = j;
        }
        if (found < 0) {
            aggregates[count] = (struct aggregate){item->meter, item->dimension, slice, 0, 0};
            found = count++;
        }
        struct aggregate *aggregate = &aggregates[found];
        size_t kind = (size_t)(item->meter - METER_GPU_SECONDS);
        if (__builtin_add_overflow(aggregate->quantity, item->quantity, &aggregate->quantity) ||
            __builtin_add_overflow(rating->kind_raw[kind], item->quantity,
                                   &rating->kind_raw[kind]) ||
            rating->kind_raw[kind] > (unsigned __int128)INT128_MAX_VALUE) {
            rating_error(rating, "overflow summing %s of \"%s\": the total exceeds 2^127 - 1",
                         meter_name(item->meter), item->dimension);
            return HM_ERR_OVERFLOW;
        }
        if (__builtin_add_overflow(aggregate->event_count, item->event_count,
                                   &aggregate->event_count)) {
            rating_error(rating, "overflow summing the events of %s of \"%s\": more than 2^64 - 1",
                         meter_name(item->meter), item->dimension);
            return HM_ERR_OVERFLOW;
        }
    }
    return count;
}

/* Orders aggregates as lines: by meter (the kind order), then dimension bytes, then slice. */
static int compare_aggregates(const void *a, const void *b)
{
    const struct aggregate *left = a;
    const struct aggregate *right = b;

    if (left->meter != right->meter)
        return left->meter < right->meter ? -1 : 1;
    int order = strcmp(left->dimension, right->dimension);
    if (order != 0)
        return order;
    if (left->slice != right->slice)
        return left->slice < right->slice ? -1 : 1;
    return 0;
}

static int price_missing(struct rating *rating, const struct slice *slice, const char *what,
                         const char *fix)
{
    char version[96];
    format_version(slice, version, sizeof(version));
    rating_error(rating, "no price for %s in price book \"%s\" %s; %s", what, rating->book->name,
                 version, fix);
    return HM_ERR_NOT_FOUND;
}

/* Finds the token charge of a model and direction in a slice's version. */
static int find_token_charge(struct rating *rating, const struct aggregate *aggregate,
                             const struct slice *slice, const struct pricebook_charge **out)
{
    const struct pricebook_model_price *model =
        pricebook_find_model(slice->version, aggregate->dimension);
    char what[USAGE_DIMENSION_MAX + 64];
    char fix[2 * USAGE_DIMENSION_MAX + 128];

    snprintf(what, sizeof(what), "%s of model \"%s\"", meter_name(aggregate->meter),
             aggregate->dimension);
    if (model == NULL) {
        snprintf(fix, sizeof(fix),
                 "add \"%s\" (or a \"*\" fallback) to tokens_per_million of that version",
                 aggregate->dimension);
        return price_missing(rating, slice, what, fix);
    }

    const char *direction = NULL;
    *out = NULL;
    switch (aggregate->meter) {
    case METER_INPUT_TOKENS:
        if (model->has_input)
            *out = &model->input;
        else
            direction = "input";
        break;
    case METER_OUTPUT_TOKENS:
        if (model->has_output)
            *out = &model->output;
        else
            direction = "output";
        break;
    default:
        /* Cached input falls back to the model's input charge. */
        if (model->has_cached_input)
            *out = &model->cached_input;
        else if (model->has_input)
            *out = &model->input;
        else
            direction = "cached_input\" or \"input";
        break;
    }
    if (direction != NULL) {
        snprintf(fix, sizeof(fix), "add \"%s\" to tokens_per_million entry \"%s\"", direction,
                 model->model);
        return price_missing(rating, slice, what, fix);
    }
    return HM_OK;
}

/* Finds the charge of an aggregate in its slice's version. */
static int find_charge(struct rating *rating, const struct aggregate *aggregate,
                       const struct pricebook_charge **out)
{
    const struct slice *slice = &rating->slices[aggregate->slice];
    const struct pricebook_version *version = slice->version;

    switch (aggregate->meter) {
    case METER_GPU_SECONDS: {
        const struct pricebook_gpu_price *gpu = pricebook_find_gpu(version, aggregate->dimension);
        if (gpu == NULL) {
            char what[USAGE_DIMENSION_MAX + 16];
            char fix[USAGE_DIMENSION_MAX + 80];
            snprintf(what, sizeof(what), "GPU type \"%s\"", aggregate->dimension);
            snprintf(fix, sizeof(fix), "add \"%s\" (or a \"*\" fallback) to gpu_hour",
                     aggregate->dimension);
            return price_missing(rating, slice, what, fix);
        }
        *out = &gpu->per_hour;
        return HM_OK;
    }
    case METER_INPUT_TOKENS:
    case METER_OUTPUT_TOKENS:
    case METER_CACHED_INPUT_TOKENS: return find_token_charge(rating, aggregate, slice, out);
    case METER_API_CALLS:
        if (!version->has_api_calls)
            return price_missing(rating, slice, "API calls", "add api_calls_per_million");
        *out = &version->api_calls_per_million;
        return HM_OK;
    case METER_STORAGE_BYTE_SECONDS:
        if (!version->has_storage)
            return price_missing(rating, slice, "storage", "add storage_gb_month");
        *out = &version->storage_per_gb_month;
        return HM_OK;
    case METER_TRANSFER_BYTES: break;
    }
    if (!version->has_transfer)
        return price_missing(rating, slice, "data transfer", "add transfer_gb");
    *out = &version->transfer_per_gb;
    return HM_OK;
}

/* Finds the tier whose interval (U(i-1), U(i)] contains x; 0 is in the first tier. */
static int volume_tier(const struct pricebook_charge *charge, struct money_ratio x, size_t *out)
{
    for (size_t i = 0; i < charge->tier_count; i++) {
        const struct pricebook_charge_tier *tier = &charge->tiers[i];
        if (!tier->bounded) {
            *out = i;
            return HM_OK;
        }
        struct money_ratio up_to;
        int comparison;
        int status = money_ratio_from_decimal(tier->up_to_pico, &up_to);
        if (status == HM_OK)
            status = money_ratio_compare(x, up_to, &comparison);
        if (status != HM_OK)
            return status;
        if (comparison <= 0) {
            *out = i;
            return HM_OK;
        }
    }
    /* A parsed book ends with an unbounded tier; a bounded last tier prices the rest. */
    *out = charge->tier_count - 1;
    return HM_OK;
}

/*
 * Computes the graduated charge of the quantities in (before, after]: each
 * tier's price on the part of that interval inside the tier. This equals
 * F(after) - F(before) without the large terms that cancel.
 */
static int graduated_delta(const struct rating *rating, const struct pricebook_charge *charge,
                           struct money_ratio before, struct money_ratio after,
                           struct money_ratio *out)
{
    struct money_ratio sum = {0, 1};
    struct money_ratio lower = {0, 1};

    for (size_t i = 0; i < charge->tier_count; i++) {
        const struct pricebook_charge_tier *tier = &charge->tiers[i];
        struct money_ratio upper = after;
        bool last = !tier->bounded || i + 1 == charge->tier_count;
        int status = HM_OK;
        int comparison;

        if (!last)
            status = money_ratio_from_decimal(tier->up_to_pico, &upper);

        /* The part of (before, after] inside (lower, upper]. */
        struct money_ratio from = before;
        struct money_ratio to = after;
        if (status == HM_OK)
            status = money_ratio_compare(lower, before, &comparison);
        if (status == HM_OK && comparison > 0)
            from = lower;
        if (status == HM_OK)
            status = money_ratio_compare(upper, after, &comparison);
        if (status == HM_OK && comparison < 0)
            to = upper;
        if (status == HM_OK)
            status = money_ratio_compare(to, from, &comparison);
        if (status != HM_OK)
            return status;

        if (comparison > 0) {
            struct money_ratio inside;
            struct money_ratio price;
            struct money_ratio term;
            status = money_ratio_sub(to, from, &inside);
            if (status == HM_OK)
                status = price_minor(rating, tier->price, &price);
            if (status == HM_OK)
                status = money_ratio_mul(price, inside, &term);
            if (status == HM_OK)
                status = money_ratio_add(sum, term, &sum);
            if (status != HM_OK)
                return status;
        }
        if (last)
            break;
        lower = upper;
    }
    *out = sum;
    return HM_OK;
}

/* Display facts of a usage line besides its amount: the packages charged, or the volume tier. */
struct slice_display {
    __int128 packages; /* package charges: packages started inside the slice */
    size_t tier;       /* volume charges: the index of the tier of the whole period */
};

/*
 * Computes the exact amount in minor units of one slice: quantity q in
 * (before, before + q] of the period's running total, whole the period's
 * total. Writes the average price (per billing unit, in currency units) to
 * unit_price, and the packages or the tier to display. Returns 0,
 * HM_ERR_INVALID for a charge that no parsed book has (no tiers, package
 * size <= 0), or HM_ERR_OVERFLOW.
 */
static int slice_exact(const struct rating *rating, const struct pricebook_charge *charge,
                       struct money_ratio before, struct money_ratio q, struct money_ratio whole,
                       struct money_ratio *exact, struct money_ratio *unit_price,
                       struct slice_display *display)
{
    memset(display, 0, sizeof(*display));
    struct money_ratio after;
    struct money_ratio price;
    bool tiered =
        charge->model == PRICEBOOK_CHARGE_GRADUATED || charge->model == PRICEBOOK_CHARGE_VOLUME;
    if (tiered && (charge->tier_count == 0 || charge->tier_count > PRICEBOOK_TIERS_MAX))
        return HM_ERR_INVALID;
    int status = money_ratio_add(before, q, &after);

    switch (charge->model) {
    case PRICEBOOK_CHARGE_PER_UNIT:
        if (status == HM_OK)
            status = price_minor(rating, charge->price, &price);
        if (status == HM_OK)
            status = money_ratio_mul(price, q, exact);
        break;
    case PRICEBOOK_CHARGE_PACKAGE: {
        /* ceil(after / S) - ceil(before / S) packages start inside this slice. */
        struct money_ratio size;
        struct money_ratio packages_after;
        struct money_ratio packages_before;
        if (status == HM_OK)
            status = money_ratio_from_decimal(charge->package_size_pico, &size);
        if (status == HM_OK && size.num <= 0)
            return HM_ERR_INVALID;
        if (status == HM_OK)
            status = money_ratio_div(after, size, &packages_after);
        if (status == HM_OK)
            status = money_ratio_div(before, size, &packages_before);
        if (status == HM_OK)
            status = price_minor(rating, charge->price, &price);
        if (status == HM_OK) {
            __int128 count = money_ratio_ceil(packages_after) - money_ratio_ceil(packages_before);
            display->packages = count;
            status = money_ratio_mul(price, (struct money_ratio){count, 1}, exact);
        }
        break;
    }
    case PRICEBOOK_CHARGE_GRADUATED:
        if (status == HM_OK)
            status = graduated_delta(rating, charge, before, after, exact);
        break;
    case PRICEBOOK_CHARGE_VOLUME: {
        /* The whole period's quantity picks the tier; the slice's own prices apply. */
        size_t tier = 0;
        if (status == HM_OK)
            status = volume_tier(charge, whole, &tier);
        display->tier = tier;
        if (status == HM_OK)
            status = price_minor(rating, charge->tiers[tier].price, &price);
        if (status == HM_OK)
            status = money_ratio_mul(price, q, exact);
        break;
    }
    default: return HM_ERR_INVALID;
    }

    /* The average price is the line's exact amount per billing unit, in currency units. */
    if (status == HM_OK)
        status = money_ratio_div(*exact, q, unit_price);
    if (status == HM_OK)
        status = money_ratio_mul(*unit_price, (struct money_ratio){1, rating->minor_per_unit},
                                 unit_price);
    return status;
}

static const char *charge_model_name(enum pricebook_charge_model model)
{
    switch (model) {
    case PRICEBOOK_CHARGE_PER_UNIT: return "per_unit";
    case PRICEBOOK_CHARGE_PACKAGE: return "package";
    case PRICEBOOK_CHARGE_GRADUATED: return "graduated";
    case PRICEBOOK_CHARGE_VOLUME: return "volume";
    }
    return "unknown";
}

/*
 * Fills what a usage line shows. A package line shows the packages charged
 * at the package price, so that quantity times price is the amount. The
 * other lines show the quantity in its display unit and the average price
 * per billing unit. For a graduated charge that average mixes the tiers'
 * prices. For a volume charge it is the price of the tier named in the
 * price unit.
 */
static void usage_line_display(const struct rating *rating, const struct meter_units *units,
                               const struct pricebook_charge *charge, unsigned __int128 raw,
                               struct money_ratio unit_price, const struct slice_display *display,
                               struct invoice_line *line)
{
    const char *billing_unit = units->price_unit + strlen("per ");
    int exponent = rating->book->currency->exponent;

    if (charge->model == PRICEBOOK_CHARGE_PACKAGE) {
        char size[MONEY_TEXT_SIZE];
        money_decimal_format(charge->package_size_pico, 0, size, sizeof(size));
        /* "1M tokens" reads as "package of 0.5M tokens"; other units follow the size. */
        bool per_million = strncmp(billing_unit, "1M ", 3) == 0;
        const char *unit_name = per_million ? billing_unit + 1 : billing_unit;
        int size_text = snprintf(line->unit, sizeof(line->unit), "package of %s%s%s", size,
                                 per_million ? "" : " ", unit_name);
        /* NOTE: a package size too long for the unit column shows as "package" alone. */
        if (size_text < 0 || (size_t)size_text >= sizeof(line->unit))
            snprintf(line->unit, sizeof(line->unit), "package");
        money_int128_format(display->packages, line->quantity, sizeof(line->quantity));
        line->quantity_exact = true;
        money_decimal_format(charge->price.pico, exponent, line->unit_price,
                             sizeof(line->unit_price));
        line->unit_price_exact = true;
        snprintf(line->price_unit, sizeof(line->price_unit), "per package");
        return;
    }

    struct money_ratio shown;
    int status = ratio_of((__int128)raw, units->display_divisor, &shown);
    PRICING_CHECK(status == HM_OK);
    format_ratio(shown, 0, line->quantity, sizeof(line->quantity), &line->quantity_exact);
    snprintf(line->unit, sizeof(line->unit), "%s", units->unit);
    format_ratio(unit_price, exponent, line->unit_price, sizeof(line->unit_price),
                 &line->unit_price_exact);
    if (charge->model == PRICEBOOK_CHARGE_GRADUATED)
        snprintf(line->price_unit, sizeof(line->price_unit), "average %s", units->price_unit);
    else if (charge->model == PRICEBOOK_CHARGE_VOLUME)
        snprintf(line->price_unit, sizeof(line->price_unit), "%s, tier %zu", units->price_unit,
                 display->tier + 1);
    else
        snprintf(line->price_unit, sizeof(line->price_unit), "%s", units->price_unit);
}

/* Reports an overflow in a usage line with its quantities and charge. */
static int usage_overflow(struct rating *rating, const struct meter_units *units,
                          const char *description, const struct pricebook_charge *charge,
                          struct money_ratio before, struct money_ratio q)
{
    char quantity[MONEY_TEXT_SIZE];
    char running[MONEY_TEXT_SIZE];
    char price[MONEY_TEXT_SIZE] = "";
    bool exact;

    format_ratio(q, 0, quantity, sizeof(quantity), &exact);
    format_ratio(before, 0, running, sizeof(running), &exact);
    if (charge->model == PRICEBOOK_CHARGE_PER_UNIT || charge->model == PRICEBOOK_CHARGE_PACKAGE)
        money_decimal_format(charge->price.pico, 0, price, sizeof(price));
    else
        money_decimal_format(charge->tiers[charge->tier_count - 1].price.pico, 0, price,
                             sizeof(price));

    const char *billing_unit = units->price_unit + strlen("per ");
    if (charge->model == PRICEBOOK_CHARGE_PER_UNIT) {
        rating_error(rating,
                     "overflow in %s line \"%s\": %s %s at %s %s %s does not fit a 64-bit amount "
                     "in minor units",
                     invoice_line_kind_name(units->kind), description, quantity, billing_unit,
                     price, rating->book->currency->code, units->price_unit);
    } else {
        char size[MONEY_TEXT_SIZE] = "";
        if (charge->model == PRICEBOOK_CHARGE_PACKAGE)
            money_decimal_format(charge->package_size_pico, 0, size, sizeof(size));
        rating_error(rating,
                     "overflow in %s line \"%s\": %s %s after %s %s under a %s charge "
                     "(%s%s%s %s %s) does not fit a 64-bit amount in minor units",
                     invoice_line_kind_name(units->kind), description, quantity, billing_unit,
                     running, billing_unit, charge_model_name(charge->model),
                     charge->model == PRICEBOOK_CHARGE_PACKAGE ? "package of " : "last tier ", size,
                     charge->model == PRICEBOOK_CHARGE_PACKAGE ? " at" : "at", price,
                     rating->book->currency->code);
    }
    return HM_ERR_OVERFLOW;
}

/*
 * Rates one meter and dimension: the aggregates of its slices in time order,
 * each priced at the position of the period's running total (graduated,
 * package) or at the tier of the whole period (volume).
 */
static int rate_group(struct rating *rating, const struct aggregate *group, size_t count)
{
    const struct meter_units units = units_of(rating, group[0].meter);
    unsigned __int128 whole_raw = 0;

    for (size_t i = 0; i < count; i++)
        whole_raw += group[i].quantity; /* bounded by the per-kind total checked before */
    if (whole_raw == 0)
        return HM_OK;

    struct money_ratio whole;
    struct money_ratio before = {0, 1};
    int status = ratio_of((__int128)whole_raw, units.billing_divisor, &whole);
    PRICING_CHECK(status == HM_OK);

    for (size_t i = 0; i < count; i++) {
        const struct aggregate *aggregate = &group[i];
        if (aggregate->quantity == 0)
            continue;

        const struct slice *slice = &rating->slices[aggregate->slice];
        const struct pricebook_charge *charge = NULL;
        status = find_charge(rating, aggregate, &charge);
        if (status != HM_OK)
            return status;

        char description[INVOICE_DESCRIPTION_MAX + 1];
        if (aggregate->dimension[0] != '\0')
            snprintf(description, sizeof(description), "%s, %s", units.title, aggregate->dimension);
        else
            snprintf(description, sizeof(description), "%s", units.title);
        append_slice(rating, slice, description, sizeof(description));

        struct money_ratio q;
        struct money_ratio exact;
        struct money_ratio unit_price;
        struct slice_display display;
        struct money_amount amount;
        status = ratio_of((__int128)aggregate->quantity, units.billing_divisor, &q);
        PRICING_CHECK(status == HM_OK);
        status = slice_exact(rating, charge, before, q, whole, &exact, &unit_price, &display);
        if (status == HM_ERR_INVALID) {
            rating_error(rating, "invalid %s charge for \"%s\" in price book \"%s\"",
                         charge_model_name(charge->model), description, rating->book->name);
            return status;
        }
        if (status == HM_OK)
            status = money_amount_from_ratio(exact, rating->book->rounding, &amount);
        if (status != HM_OK)
            return usage_overflow(rating, &units, description, charge, before, q);

        struct invoice_line *line = add_line(rating, units.kind, description, amount.minor);
        if (line == NULL)
            return HM_ERR_OVERFLOW;
        size_t kind = (size_t)(units.kind - INVOICE_LINE_GPU);
        /* Cannot overflow: every usage line already fits in the subtotal with the others. */
        rating->usage_minor += amount.minor;
        rating->kind_minor[kind] += amount.minor;

        snprintf(line->dimension, sizeof(line->dimension), "%s", aggregate->dimension);
        usage_line_display(rating, &units, charge, aggregate->quantity, unit_price, &display,
                           line);
        line->slice_start_s = rating->slice_count > 1 ? slice->start_s : 0;
        line->event_count = aggregate->event_count;

        status = money_ratio_add(before, q, &before);
        PRICING_CHECK(status == HM_OK); /* before + q <= whole, which is a valid rational */
    }
    return HM_OK;
}

static int rate_usage(struct rating *rating)
{
    size_t item_count = rating->usage->item_count;
    struct aggregate *aggregates = calloc(item_count + 1, sizeof(*aggregates));
    if (aggregates == NULL)
        return HM_ERR_NOMEM;

    int status = aggregate_items(rating, aggregates);
    if (status >= 0) {
        size_t count = (size_t)status;
        qsort(aggregates, count, sizeof(*aggregates), compare_aggregates);
        status = HM_OK;
        for (size_t i = 0; i < count && status == HM_OK;) {
            size_t end = i + 1;
            while (end < count && aggregates[end].meter == aggregates[i].meter &&
                   strcmp(aggregates[end].dimension, aggregates[i].dimension) == 0)
                end++;
            status = rate_group(rating, &aggregates[i], end - i);
            i = end;
        }
    }
    free(aggregates);
    return status;
}

/* ---- Discounts, commitment, adjustments ---- */

static const char *discount_mode_name(enum pricebook_discount_mode mode)
{
    return mode == PRICEBOOK_DISCOUNT_GRADUATED ? "graduated" : "volume";
}

/* Adds one discount line of the last slice's version; no line when the amount is 0. */
static int add_discount_line(struct rating *rating, const struct pricebook_discount *discount)
{
    const struct pricebook *book = rating->book;
    int64_t base_minor = 0;
    for (size_t kind = 0; kind < PRICEBOOK_USAGE_KINDS; kind++)
        if (discount->applies_to[kind])
            base_minor += rating->kind_minor[kind]; /* a part of the usage sum, which fits */

    if (discount->driver < 0 || discount->driver >= PRICEBOOK_USAGE_KINDS) {
        rating_error(rating,
                     "discount \"%s\" in price book \"%s\" has driver %d; expected a "
                     "usage line kind",
                     discount->name, book->name, discount->driver);
        return HM_ERR_INVALID;
    }
    enum meter driver_meter = (enum meter)(METER_GPU_SECONDS + discount->driver);
    struct meter_units units = units_of(rating, driver_meter);
    struct money_ratio driver;
    int status =
        ratio_of((__int128)rating->kind_raw[discount->driver], units.billing_divisor, &driver);
    PRICING_CHECK(status == HM_OK); /* aggregate_items keeps kind_raw <= 2^127 - 1 */

    struct pricing_discount result;
    status = pricing_discount_compute(discount, driver, (struct money_amount){base_minor},
                                      book->rounding, &result);
    if (status != HM_OK) {
        char quantity[MONEY_TEXT_SIZE];
        char base[MONEY_TEXT_SIZE];
        bool exact;
        format_ratio(driver, 0, quantity, sizeof(quantity), &exact);
        format_amount(rating, base_minor, base, sizeof(base));
        rating_error(rating, "overflow in discount line \"%s\" (%s): driver %s %s, base %s %s",
                     discount->name, discount_mode_name(discount->mode), quantity,
                     units.price_unit + strlen("per "), base, book->currency->code);
        return HM_ERR_OVERFLOW;
    }
    if (!result.applies || result.amount.minor == 0)
        return HM_OK;

    struct invoice_line *line =
        add_line(rating, INVOICE_LINE_DISCOUNT, discount->name, -result.amount.minor);
    if (line == NULL)
        return HM_ERR_OVERFLOW;

    /* Quantity: the base in currency units; unit price: the (effective) percent. */
    struct money_ratio base;
    status = ratio_of(base_minor, rating->minor_per_unit, &base);
    PRICING_CHECK(status == HM_OK);
    format_ratio(base, 0, line->quantity, sizeof(line->quantity), &line->quantity_exact);
    snprintf(line->unit, sizeof(line->unit), "%s", book->currency->code);
    format_ratio(result.percent, 0, line->unit_price, sizeof(line->unit_price),
                 &line->unit_price_exact);
    snprintf(line->price_unit, sizeof(line->price_unit), "percent");
    return HM_OK;
}

static int rate_discounts(struct rating *rating)
{
    const struct pricebook_version *version = rating->slices[rating->slice_count - 1].version;
    bool taken[PRICEBOOK_USAGE_KINDS] = {false};

    /* A kind in two discounts could be discounted twice, past its own amount. */
    for (size_t i = 0; i < version->discount_count; i++) {
        for (size_t kind = 0; kind < PRICEBOOK_USAGE_KINDS; kind++) {
            if (!version->discounts[i].applies_to[kind])
                continue;
            if (taken[kind]) {
                rating_error(
                    rating,
                    "%s lines belong to two discounts of price book \"%s\"; list each "
                    "kind in at most one discount",
                    invoice_line_kind_name((enum invoice_line_kind)(INVOICE_LINE_GPU + (int)kind)),
                    rating->book->name);
                return HM_ERR_INVALID;
            }
            taken[kind] = true;
        }
    }
    for (size_t i = 0; i < version->discount_count; i++) {
        int status = add_discount_line(rating, &version->discounts[i]);
        if (status != HM_OK)
            return status;
    }
    return HM_OK;
}

/*
 * Adds the commitment true-up of the last slice's version: the prorated
 * minimum M minus the usage net of discounts N, when N < M.
 */
static int rate_commitment(struct rating *rating)
{
    const struct pricebook_version *version = rating->slices[rating->slice_count - 1].version;
    if (!version->has_commitment)
        return HM_OK;

    int64_t seconds =
        service_seconds(rating, rating->usage->period_start_s, rating->usage->period_end_s);
    struct money_ratio share;
    struct money_ratio per_month;
    struct money_ratio exact;
    struct money_amount minimum;
    int status = ratio_of(seconds, rating->period_s, &share);
    if (status == HM_OK)
        status = price_minor(rating, version->commitment_per_month, &per_month);
    if (status == HM_OK)
        status = money_ratio_mul(per_month, share, &exact);
    if (status == HM_OK)
        status = money_amount_from_ratio(exact, rating->book->rounding, &minimum);
    if (status != HM_OK) {
        char price[MONEY_TEXT_SIZE];
        money_decimal_format(version->commitment_per_month.pico, 0, price, sizeof(price));
        rating_error(rating,
                     "overflow in commitment_true_up line: minimum %s %s per month for %lld of "
                     "%lld seconds does not fit a 64-bit amount in minor units",
                     price, rating->book->currency->code, (long long)seconds,
                     (long long)rating->period_s);
        return HM_ERR_OVERFLOW;
    }

    /* Both fit: usage lines and discounts are parts of the subtotal and discount total. */
    int64_t net_usage = rating->usage_minor - rating->invoice->discount_total.minor;
    if (net_usage >= minimum.minor)
        return HM_OK;

    char minimum_text[32]; /* an int64 amount: at most 20 digits, a sign and a point */
    char usage_text[32];
    char description[INVOICE_DESCRIPTION_MAX + 1];
    format_amount(rating, minimum.minor, minimum_text, sizeof(minimum_text));
    format_amount(rating, net_usage, usage_text, sizeof(usage_text));
    snprintf(description, sizeof(description),
             "Commitment true-up: minimum %s %s, usage after discounts %s %s", minimum_text,
             rating->book->currency->code, usage_text, rating->book->currency->code);

    struct invoice_line *line =
        add_line(rating, INVOICE_LINE_COMMITMENT_TRUE_UP, description, minimum.minor - net_usage);
    if (line == NULL)
        return HM_ERR_OVERFLOW;
    format_ratio(share, 0, line->quantity, sizeof(line->quantity), &line->quantity_exact);
    snprintf(line->unit, sizeof(line->unit), "month");
    money_decimal_format(version->commitment_per_month.pico, rating->book->currency->exponent,
                         line->unit_price, sizeof(line->unit_price));
    line->unit_price_exact = true;
    snprintf(line->price_unit, sizeof(line->price_unit), "minimum per month");
    return HM_OK;
}

static int rate_adjustments(struct rating *rating)
{
    const struct usage_totals *usage = rating->usage;

    for (size_t i = 0; i < usage->adjustment_count; i++) {
        const struct usage_adjustment *adjustment = &usage->adjustments[i];
        unsigned month = adjustment->period % 100;
        if (adjustment->amount_minor <= 0) {
            rating_error(rating,
                         "adjustment %zu has amount %lld minor units; an adjustment must be > 0 "
                         "(a decrease goes on a credit note)",
                         i, (long long)adjustment->amount_minor);
            return HM_ERR_INVALID;
        }
        if (month < 1 || month > 12 || adjustment->period < 100) {
            rating_error(rating, "adjustment %zu has period %u; expected yyyymm", i,
                         (unsigned)adjustment->period);
            return HM_ERR_INVALID;
        }
        if (strnlen(adjustment->description, sizeof(adjustment->description)) ==
            sizeof(adjustment->description)) {
            rating_error(rating, "adjustment %zu: description is not NUL-terminated", i);
            return HM_ERR_INVALID;
        }

        struct invoice_line *line = add_line(rating, INVOICE_LINE_ADJUSTMENT,
                                             adjustment->description, adjustment->amount_minor);
        if (line == NULL)
            return HM_ERR_OVERFLOW;
        snprintf(line->quantity, sizeof(line->quantity), "1");
        line->quantity_exact = true;
        snprintf(line->unit, sizeof(line->unit), "adjustment");
        format_amount(rating, adjustment->amount_minor, line->unit_price, sizeof(line->unit_price));
        line->unit_price_exact = true;
        snprintf(line->price_unit, sizeof(line->price_unit), "per adjustment");
        line->adjusted_period = adjustment->period;
        line->event_count = adjustment->event_count;
    }
    return HM_OK;
}

/* ---- Credits ---- */

/* Burn order: earliest expiry first (0 = never, last), then earliest grant, then lowest id. */
static bool credit_before(const struct usage_credit *a, const struct usage_credit *b)
{
    if (a->expires_s != b->expires_s) {
        if (a->expires_s == 0 || b->expires_s == 0)
            return b->expires_s == 0;
        return a->expires_s < b->expires_s;
    }
    if (a->granted_s != b->granted_s)
        return a->granted_s < b->granted_s;
    return a->id < b->id;
}

static int apply_credits(struct rating *rating)
{
    const struct usage_totals *usage = rating->usage;
    struct invoice *invoice = rating->invoice;
    const struct usage_credit *order[USAGE_CREDITS_MAX];
    size_t count = 0;

    for (size_t i = 0; i < usage->credit_count; i++) {
        const struct usage_credit *credit = &usage->credits[i];
        for (size_t j = 0; j < i; j++) {
            if (usage->credits[j].id == credit->id) {
                rating_error(rating, "credit grant id %llu appears twice; grant ids are unique",
                             (unsigned long long)credit->id);
                return HM_ERR_INVALID;
            }
        }
        if (credit->balance_minor < 0) {
            rating_error(rating, "credit grant %llu has balance %lld; a balance must be >= 0",
                         (unsigned long long)credit->id, (long long)credit->balance_minor);
            return HM_ERR_INVALID;
        }
        /*
         * A grant that exists when the invoice is rated pays it, even when it
         * was granted after the period ended (a top-up during the grace
         * window); only a grant that expired before the period began is kept.
         */
        bool in_time = credit->expires_s == 0 || credit->expires_s > usage->period_start_s;
        /* A grant in another currency cannot pay this invoice; the engine reports it unused. */
        bool same_currency = strncmp(credit->currency, rating->book->currency->code,
                                     sizeof(credit->currency)) == 0;
        if (!in_time || !same_currency || credit->balance_minor == 0)
            continue;

        /* Insertion sort: at most USAGE_CREDITS_MAX grants. */
        size_t at = count++;
        while (at > 0 && credit_before(credit, order[at - 1])) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = credit;
    }
    if (count == 0)
        return HM_OK;

    invoice->credits = calloc(count, sizeof(*invoice->credits));
    if (invoice->credits == NULL)
        return HM_ERR_NOMEM;

    int64_t due = invoice->subtotal.minor - invoice->discount_total.minor;
    for (size_t i = 0; i < count && due > 0; i++) {
        int64_t applied = order[i]->balance_minor < due ? order[i]->balance_minor : due;
        struct invoice_credit *out = &invoice->credits[invoice->credit_count++];
        out->id = order[i]->id;
        out->applied_minor = applied;
        out->balance_after_minor = order[i]->balance_minor - applied;
        invoice->credits_applied.minor += applied;
        due -= applied;
    }
    return HM_OK;
}

/* ---- Setup and invariants ---- */

/* Validates the period, lists its slices and fills the invoice header. */
static int start_invoice(struct rating *rating)
{
    const struct usage_totals *usage = rating->usage;
    const struct pricebook *book = rating->book;
    struct invoice *invoice = rating->invoice;

    if (usage->period_end_s <= usage->period_start_s ||
        __builtin_sub_overflow(usage->period_end_s, usage->period_start_s, &rating->period_s)) {
        rating_error(rating, "invalid period [%lld, %lld): the end must follow the start",
                     (long long)usage->period_start_s, (long long)usage->period_end_s);
        return HM_ERR_INVALID;
    }
    if (usage->item_count > INVOICE_USAGE_ITEMS_MAX) {
        rating_error(rating, "%zu usage items; at most %d are rated at once", usage->item_count,
                     INVOICE_USAGE_ITEMS_MAX);
        return HM_ERR_INVALID;
    }
    if (usage->credit_count > USAGE_CREDITS_MAX ||
        usage->adjustment_count > USAGE_ADJUSTMENTS_MAX) {
        rating_error(
            rating, "%zu credit grants and %zu adjustments; at most %d and %d are rated at once",
            usage->credit_count, usage->adjustment_count, USAGE_CREDITS_MAX, USAGE_ADJUSTMENTS_MAX);
        return HM_ERR_INVALID;
    }
    if (book->currency == NULL || book->version_count == 0) {
        rating_error(rating, "price book \"%s\" has no currency or no version", book->name);
        return HM_ERR_INVALID;
    }

    rating->minor_per_unit = 1;
    for (int i = 0; i < book->currency->exponent; i++)
        rating->minor_per_unit *= 10;
    rating->service_start_s = usage->service_start_s > usage->period_start_s
                                  ? usage->service_start_s
                                  : usage->period_start_s;
    rating->service_end_s = usage->service_end_s == 0 || usage->service_end_s > usage->period_end_s
                                ? usage->period_end_s
                                : usage->service_end_s;

    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    int status = pricebook_slices(book, usage->period_start_s, usage->period_end_s, starts,
                                  PRICEBOOK_VERSIONS_MAX, &rating->slice_count);
    if (status == HM_ERR_NOT_FOUND) {
        char start[32];
        char from[32];
        format_utc(usage->period_start_s, false, start, sizeof(start));
        format_utc(book->versions[0].effective_from_s, false, from, sizeof(from));
        rating_error(rating,
                     "price book \"%s\" has no version in effect at the period start %s: version "
                     "1 takes effect at %s; give the first version no effective_from or one at "
                     "or before the period start",
                     book->name, start, from);
        return status;
    }
    PRICING_CHECK(status == HM_OK);
    PRICING_CHECK(rating->slice_count >= 1 && rating->slice_count <= PRICEBOOK_VERSIONS_MAX);
    PRICING_CHECK(starts[0] == usage->period_start_s);
    for (size_t i = 0; i < rating->slice_count; i++) {
        struct slice *slice = &rating->slices[i];
        slice->start_s = starts[i];
        slice->end_s = i + 1 < rating->slice_count ? starts[i + 1] : usage->period_end_s;
        slice->version = pricebook_version_at(book, slice->start_s);
        PRICING_CHECK(slice->version != NULL);
        slice->version_index = (size_t)(slice->version - book->versions);
    }

    memcpy(invoice->tenant_id, usage->tenant_id, sizeof(invoice->tenant_id));
    snprintf(invoice->tenant_name, sizeof(invoice->tenant_name), "%.*s",
             (int)sizeof(usage->tenant_name) - 1, usage->tenant_name);
    invoice->period = usage->period;
    invoice->period_start_s = usage->period_start_s;
    invoice->period_end_s = usage->period_end_s;
    invoice->slice_count = rating->slice_count;
    snprintf(invoice->pricebook_name, sizeof(invoice->pricebook_name), "%s", book->name);
    invoice->currency = book->currency;

    /* Fee lines per slice, a line per aggregate, the discounts, the true-up, the adjustments. */
    rating->line_capacity = 2 * rating->slice_count + usage->item_count + PRICEBOOK_DISCOUNTS_MAX +
                            1 + usage->adjustment_count;
    invoice->lines = calloc(rating->line_capacity, sizeof(*invoice->lines));
    return invoice->lines == NULL ? HM_ERR_NOMEM : HM_OK;
}

static bool is_usage_kind(enum invoice_line_kind kind)
{
    return kind >= INVOICE_LINE_GPU && kind <= INVOICE_LINE_TRANSFER;
}

static void check_invariants(const struct invoice *invoice, const struct usage_totals *usage)
{
    int64_t subtotal = 0;
    int64_t discount = 0;
    int64_t usage_sum = 0;
    size_t true_up_count = 0;

    for (size_t i = 0; i < invoice->line_count; i++) {
        const struct invoice_line *line = &invoice->lines[i];
        if (line->kind == INVOICE_LINE_DISCOUNT) {
            PRICING_CHECK(line->amount.minor < 0);
            discount -= line->amount.minor;
            continue;
        }
        PRICING_CHECK(line->amount.minor >= 0);
        subtotal += line->amount.minor;
        if (is_usage_kind(line->kind))
            usage_sum += line->amount.minor;
        if (line->kind == INVOICE_LINE_COMMITMENT_TRUE_UP) {
            PRICING_CHECK(line->amount.minor > 0);
            true_up_count++;
        }
    }
    PRICING_CHECK(subtotal == invoice->subtotal.minor);
    PRICING_CHECK(discount == invoice->discount_total.minor);
    PRICING_CHECK(discount <= usage_sum);
    PRICING_CHECK(true_up_count <= 1);

    int64_t net = subtotal - discount;
    PRICING_CHECK(net >= 0);

    int64_t credits = 0;
    for (size_t i = 0; i < invoice->credit_count; i++) {
        const struct invoice_credit *credit = &invoice->credits[i];
        int64_t before = -1;
        for (size_t j = 0; j < usage->credit_count; j++)
            if (usage->credits[j].id == credit->id)
                before = usage->credits[j].balance_minor;
        PRICING_CHECK(credit->applied_minor > 0);
        PRICING_CHECK(credit->balance_after_minor >= 0);
        PRICING_CHECK(before >= 0 && before - credit->balance_after_minor == credit->applied_minor);
        credits += credit->applied_minor;
    }
    PRICING_CHECK(credits == invoice->credits_applied.minor);
    PRICING_CHECK(credits <= net);
    PRICING_CHECK(invoice->total.minor == net - credits);
    PRICING_CHECK(invoice->total.minor >= 0);
}

int pricing_rate(const struct usage_totals *usage, const struct pricebook *book,
                 struct invoice *out, char *error, size_t error_size)
{
    struct rating rating = {
        .usage = usage, .book = book, .invoice = out, .error = error, .error_size = error_size};
    char tenant_id[UUID_TEXT_SIZE];

    memset(out, 0, sizeof(*out));
    if (error != NULL && error_size > 0)
        error[0] = '\0';
    uuid_format(usage->tenant_id, tenant_id);
    snprintf(rating.tenant, sizeof(rating.tenant), "%.*s (%s)",
             (int)strnlen(usage->tenant_name, sizeof(usage->tenant_name) - 1), usage->tenant_name,
             tenant_id);

    int status = start_invoice(&rating);
    if (status == HM_OK)
        status = rate_fees(&rating);
    if (status == HM_OK)
        status = rate_usage(&rating);
    if (status == HM_OK)
        status = rate_discounts(&rating);
    if (status == HM_OK)
        status = rate_commitment(&rating);
    if (status == HM_OK)
        status = rate_adjustments(&rating);
    if (status == HM_OK)
        status = apply_credits(&rating);
    if (status != HM_OK) {
        invoice_free(out);
        return status;
    }

    out->total.minor = out->subtotal.minor - out->discount_total.minor - out->credits_applied.minor;
    check_invariants(out, usage);
    return HM_OK;
}

void invoice_free(struct invoice *invoice)
{
    if (invoice == NULL)
        return;
    free(invoice->lines);
    free(invoice->credits);
    memset(invoice, 0, sizeof(*invoice));
}
