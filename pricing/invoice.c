#include "pricing/invoice.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/uuid.h"
#include "pricing/discount.h"

#define INT128_MAX_VALUE ((__int128)(((unsigned __int128)1 << 127) - 1))

/* Units of the metered quantities. */
#define SECONDS_PER_HOUR 3600
#define TOKENS_PER_PRICE_UNIT 1000000 /* token and API call prices are per million */
#define BYTES_PER_GB 1000000000       /* 1 GB = 10^9 bytes */

/* Checks an invariant in every build type: a failure is a bug in rating, so it aborts. */
#define PRICING_CHECK(condition)                                                                   \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            fprintf(stderr, "%s:%d: pricing invariant failed: %s\n", __FILE__, __LINE__,           \
                    #condition);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The quantity of one meter and dimension, summed over the usage items. */
struct aggregate {
    enum meter meter;
    const char *dimension;
    unsigned __int128 quantity;
};

/* State of one pricing_rate call. */
struct rating {
    const struct usage_totals *usage;
    const struct pricebook *book;
    struct invoice *invoice;
    char *error;
    size_t error_size;
    char tenant[128]; /* "name (uuid)" for messages */
};

/* Pricing of one usage line: quantity in the billing unit times price per price_divisor units. */
struct line_pricing {
    enum invoice_line_kind kind;
    const char *dimension;
    struct money_ratio quantity;
    const char *unit;
    __int128 price_pico;
    __int128 price_divisor; /* 1, or 10^6 for prices per million */
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

/*
 * Checks the items and sums those with the same meter and dimension, so that
 * each line is rounded once. Returns the number of aggregates or a negative
 * status.
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

        int found = -1;
        for (int j = 0; j < count && found < 0; j++) {
            if (aggregates[j].meter == item->meter &&
                strcmp(aggregates[j].dimension, item->dimension) == 0)
                found = j;
        }
        if (found < 0) {
            aggregates[count] = (struct aggregate){item->meter, item->dimension, 0};
            found = count++;
        }
        if (__builtin_add_overflow(aggregates[found].quantity, item->quantity,
                                   &aggregates[found].quantity)) {
            rating_error(rating, "overflow summing %s of \"%s\": the total exceeds 128 bits",
                         meter_name(item->meter), item->dimension);
            return HM_ERR_OVERFLOW;
        }
    }
    return count;
}

/* Formats the quantity for display: 12 fraction digits when they fit, else whole units. */
static void format_quantity(struct money_ratio quantity, struct invoice_line *line)
{
    int status = money_ratio_format(quantity, 0, MONEY_DECIMAL_DIGITS, line->quantity,
                                    sizeof(line->quantity), &line->quantity_exact);
    if (status != HM_OK)
        status = money_ratio_format(quantity, 0, 0, line->quantity, sizeof(line->quantity),
                                    &line->quantity_exact);
    PRICING_CHECK(status == HM_OK);
}

/*
 * Computes quantity * price_pico / (10^12 * price_divisor) in minor units as
 * one exact rational and rounds it once. Returns 0 or HM_ERR_OVERFLOW.
 */
static int compute_amount(const struct rating *rating, const struct line_pricing *pricing,
                          struct money_amount *out)
{
    __int128 minor_per_unit = 1;
    for (int i = 0; i < rating->book->currency->exponent; i++)
        minor_per_unit *= 10;

    struct money_ratio price;
    struct money_ratio per_minor;
    struct money_ratio amount;
    int status =
        money_ratio_make(pricing->price_pico, MONEY_DECIMAL_SCALE * pricing->price_divisor, &price);
    if (status == HM_OK)
        status = money_ratio_mul(price, (struct money_ratio){minor_per_unit, 1}, &per_minor);
    if (status == HM_OK)
        status = money_ratio_mul(pricing->quantity, per_minor, &amount);
    if (status == HM_OK)
        status = money_amount_from_ratio(amount, rating->book->rounding, out);
    return status;
}

static struct invoice_line *next_line(struct rating *rating)
{
    struct invoice_line *line = &rating->invoice->lines[rating->invoice->line_count++];
    memset(line, 0, sizeof(*line));
    return line;
}

/* Adds a priced usage line and its amount to the subtotal. Returns 0 or HM_ERR_OVERFLOW. */
static int add_usage_line(struct rating *rating, const struct line_pricing *pricing,
                          const char *description)
{
    struct money_amount amount;
    int status = compute_amount(rating, pricing, &amount);
    if (status != HM_OK) {
        char quantity[MONEY_TEXT_SIZE];
        char price[MONEY_TEXT_SIZE];
        bool exact;
        if (money_ratio_format(pricing->quantity, 0, 0, quantity, sizeof(quantity), &exact) != 0)
            snprintf(quantity, sizeof(quantity), "(beyond 128 bits)");
        money_decimal_format(pricing->price_pico, 0, price, sizeof(price));
        rating_error(rating,
                     "overflow in %s line \"%s\": %s %s at %s %s %s does not fit a 64-bit "
                     "amount in minor units",
                     invoice_line_kind_name(pricing->kind), description, quantity, pricing->unit,
                     price, rating->book->currency->code, pricing->price_unit);
        return HM_ERR_OVERFLOW;
    }

    struct invoice *invoice = rating->invoice;
    if (__builtin_add_overflow(invoice->subtotal.minor, amount.minor, &invoice->subtotal.minor)) {
        rating_error(rating, "overflow adding line \"%s\" to the subtotal", description);
        return HM_ERR_OVERFLOW;
    }

    struct invoice_line *line = next_line(rating);
    line->kind = pricing->kind;
    snprintf(line->description, sizeof(line->description), "%s", description);
    snprintf(line->dimension, sizeof(line->dimension), "%s",
             pricing->dimension != NULL ? pricing->dimension : "");
    format_quantity(pricing->quantity, line);
    line->unit = pricing->unit;
    money_decimal_format(pricing->price_pico, rating->book->currency->exponent, line->unit_price,
                         sizeof(line->unit_price));
    line->unit_price_exact = true;
    line->price_unit = pricing->price_unit;
    line->amount = amount;
    return HM_OK;
}

/* Adds the base fee, prorated by seconds when the service starts inside the period. */
static int rate_base_fee(struct rating *rating)
{
    const struct usage_totals *usage = rating->usage;
    if (!rating->book->has_base_fee)
        return HM_OK;

    int64_t start_s = usage->service_start_s > usage->period_start_s ? usage->service_start_s
                                                                     : usage->period_start_s;
    if (start_s >= usage->period_end_s)
        return HM_OK; /* the service starts at or after the period end: no fee */

    struct line_pricing pricing = {INVOICE_LINE_BASE_FEE,
                                   NULL,
                                   {0, 1},
                                   "month",
                                   rating->book->base_fee_per_month.pico,
                                   1,
                                   "per month"};
    int status = money_ratio_make(usage->period_end_s - start_s,
                                  usage->period_end_s - usage->period_start_s, &pricing.quantity);
    PRICING_CHECK(status == HM_OK);

    bool prorated = start_s > usage->period_start_s;
    return add_usage_line(rating, &pricing,
                          prorated ? "Base platform fee, prorated from the service start"
                                   : "Base platform fee");
}

static int price_missing(struct rating *rating, const char *what, const char *fix)
{
    rating_error(rating, "no price for %s in price book \"%s\"; %s", what, rating->book->name, fix);
    return HM_ERR_NOT_FOUND;
}

/* The title of a usage line, before its dimension. */
static const char *usage_line_title(enum invoice_line_kind kind)
{
    switch (kind) {
    case INVOICE_LINE_GPU: return "GPU usage";
    case INVOICE_LINE_INPUT_TOKENS: return "Uncached input tokens";
    case INVOICE_LINE_OUTPUT_TOKENS: return "Output tokens";
    case INVOICE_LINE_CACHED_INPUT_TOKENS: return "Cached input tokens";
    case INVOICE_LINE_API_CALLS: return "API calls";
    case INVOICE_LINE_STORAGE: return "Storage";
    case INVOICE_LINE_TRANSFER: return "Data transfer";
    default: return "Usage";
    }
}

/* Finds the token price of an aggregate's model and direction. */
static int find_token_price(struct rating *rating, const struct aggregate *aggregate,
                            struct line_pricing *pricing)
{
    const struct pricebook_model_price *model =
        pricebook_find_model(rating->book, aggregate->dimension);
    char what[USAGE_DIMENSION_MAX + 64];
    char fix[2 * USAGE_DIMENSION_MAX + 128];

    snprintf(what, sizeof(what), "%s of model \"%s\"", meter_name(aggregate->meter),
             aggregate->dimension);
    if (model == NULL) {
        snprintf(fix, sizeof(fix),
                 "add \"%s\" (or a \"*\" fallback) to tokens_per_million in the price book",
                 aggregate->dimension);
        return price_missing(rating, what, fix);
    }

    const char *direction = NULL;
    switch (aggregate->meter) {
    case METER_INPUT_TOKENS:
        pricing->kind = INVOICE_LINE_INPUT_TOKENS;
        if (model->has_input)
            pricing->price_pico = model->input_per_million.pico;
        else
            direction = "input";
        break;
    case METER_OUTPUT_TOKENS:
        pricing->kind = INVOICE_LINE_OUTPUT_TOKENS;
        if (model->has_output)
            pricing->price_pico = model->output_per_million.pico;
        else
            direction = "output";
        break;
    default:
        /* Cached input falls back to the model's input price. */
        pricing->kind = INVOICE_LINE_CACHED_INPUT_TOKENS;
        if (model->has_cached_input)
            pricing->price_pico = model->cached_input_per_million.pico;
        else if (model->has_input)
            pricing->price_pico = model->input_per_million.pico;
        else
            direction = "cached_input\" or \"input";
        break;
    }
    if (direction != NULL) {
        snprintf(fix, sizeof(fix), "add \"%s\" to tokens_per_million entry \"%s\"", direction,
                 model->model);
        return price_missing(rating, what, fix);
    }
    return HM_OK;
}

/* Finds the price of a GPU aggregate; the quantity is GPU-seconds, billed per GPU-hour. */
static int find_gpu_price(struct rating *rating, const struct aggregate *aggregate,
                          struct line_pricing *pricing, __int128 *divisor)
{
    const struct pricebook_gpu_price *gpu = pricebook_find_gpu(rating->book, aggregate->dimension);
    if (gpu == NULL) {
        char what[USAGE_DIMENSION_MAX + 16];
        char fix[USAGE_DIMENSION_MAX + 80];
        snprintf(what, sizeof(what), "GPU type \"%s\"", aggregate->dimension);
        snprintf(fix, sizeof(fix), "add \"%s\" (or a \"*\" fallback) to gpu_hour",
                 aggregate->dimension);
        return price_missing(rating, what, fix);
    }
    *pricing = (struct line_pricing){INVOICE_LINE_GPU, aggregate->dimension, {0, 1},
                                     "GPU-hour",       gpu->per_hour.pico,   1,
                                     "per GPU-hour"};
    *divisor = SECONDS_PER_HOUR;
    return HM_OK;
}

/* Finds the price of an aggregate without a dimension: API calls, storage or transfer. */
static int find_flat_price(struct rating *rating, const struct aggregate *aggregate,
                           struct line_pricing *pricing, __int128 *divisor)
{
    const struct pricebook *book = rating->book;
    const struct usage_totals *usage = rating->usage;

    switch (aggregate->meter) {
    case METER_API_CALLS:
        if (!book->has_api_calls)
            return price_missing(rating, "API calls",
                                 "add api_calls_per_million to the price book");
        *pricing = (struct line_pricing){
            INVOICE_LINE_API_CALLS, NULL,          {0, 1}, "call", book->api_calls_per_million.pico,
            TOKENS_PER_PRICE_UNIT,  "per 1M calls"};
        return HM_OK;
    case METER_STORAGE_BYTE_SECONDS:
        if (!book->has_storage)
            return price_missing(rating, "storage", "add storage_gb_month to the price book");
        *pricing = (struct line_pricing){
            INVOICE_LINE_STORAGE, NULL, {0, 1}, "GB-month", book->storage_per_gb_month.pico, 1,
            "per GB-month"};
        /* GB-months = byte-seconds / 10^9 / the period's own length in seconds. */
        *divisor = (__int128)BYTES_PER_GB * (usage->period_end_s - usage->period_start_s);
        return HM_OK;
    default:
        if (!book->has_transfer)
            return price_missing(rating, "data transfer", "add transfer_gb to the price book");
        *pricing = (struct line_pricing){INVOICE_LINE_TRANSFER,      NULL, {0, 1},  "GB",
                                         book->transfer_per_gb.pico, 1,    "per GB"};
        *divisor = BYTES_PER_GB;
        return HM_OK;
    }
}

/* Prices one aggregate: finds its price, converts its quantity to the billing unit, adds the line.
 */
static int rate_aggregate(struct rating *rating, const struct aggregate *aggregate)
{
    struct line_pricing pricing = {0, aggregate->dimension, {0, 1}, NULL, 0, 1, NULL};
    char description[INVOICE_DESCRIPTION_MAX + 1];
    __int128 divisor = 1;
    int status;

    if (aggregate->quantity > (unsigned __int128)INT128_MAX_VALUE) {
        rating_error(rating, "overflow: %s of \"%s\" exceed 2^127 - 1",
                     meter_name(aggregate->meter), aggregate->dimension);
        return HM_ERR_OVERFLOW;
    }

    switch (aggregate->meter) {
    case METER_GPU_SECONDS: status = find_gpu_price(rating, aggregate, &pricing, &divisor); break;
    case METER_INPUT_TOKENS:
    case METER_OUTPUT_TOKENS:
    case METER_CACHED_INPUT_TOKENS:
        status = find_token_price(rating, aggregate, &pricing);
        pricing.unit = "token";
        pricing.price_divisor = TOKENS_PER_PRICE_UNIT;
        pricing.price_unit = "per 1M tokens";
        break;
    default: status = find_flat_price(rating, aggregate, &pricing, &divisor); break;
    }
    if (status != HM_OK)
        return status;

    if (aggregate->dimension[0] != '\0')
        snprintf(description, sizeof(description), "%s, %s", usage_line_title(pricing.kind),
                 aggregate->dimension);
    else
        snprintf(description, sizeof(description), "%s", usage_line_title(pricing.kind));

    status = money_ratio_make((__int128)aggregate->quantity, divisor, &pricing.quantity);
    PRICING_CHECK(status == HM_OK);
    return add_usage_line(rating, &pricing, description);
}

/* Validates the period and fills the invoice header. */
static int start_invoice(struct rating *rating)
{
    const struct usage_totals *usage = rating->usage;
    struct invoice *invoice = rating->invoice;

    int64_t period_s;
    if (usage->period_end_s <= usage->period_start_s ||
        __builtin_sub_overflow(usage->period_end_s, usage->period_start_s, &period_s)) {
        rating_error(rating, "invalid period [%lld, %lld): the end must follow the start",
                     (long long)usage->period_start_s, (long long)usage->period_end_s);
        return HM_ERR_INVALID;
    }
    if (usage->item_count > INVOICE_USAGE_ITEMS_MAX) {
        rating_error(rating, "%zu usage items; at most %d are rated at once", usage->item_count,
                     INVOICE_USAGE_ITEMS_MAX);
        return HM_ERR_INVALID;
    }

    memcpy(invoice->tenant_id, usage->tenant_id, sizeof(invoice->tenant_id));
    snprintf(invoice->tenant_name, sizeof(invoice->tenant_name), "%.*s",
             (int)sizeof(usage->tenant_name) - 1, usage->tenant_name);
    invoice->period = usage->period;
    invoice->period_start_s = usage->period_start_s;
    invoice->period_end_s = usage->period_end_s;
    snprintf(invoice->pricebook_name, sizeof(invoice->pricebook_name), "%s", rating->book->name);
    invoice->currency = rating->book->currency;

    /* One line per aggregate, plus the base fee and the discount. */
    invoice->lines = calloc(usage->item_count + 2, sizeof(*invoice->lines));
    return invoice->lines == NULL ? HM_ERR_NOMEM : HM_OK;
}

/* Line order on the invoice: the meters in this order, each in usage order. */
static const enum meter meter_order[] = {
    METER_GPU_SECONDS, METER_INPUT_TOKENS,         METER_OUTPUT_TOKENS,  METER_CACHED_INPUT_TOKENS,
    METER_API_CALLS,   METER_STORAGE_BYTE_SECONDS, METER_TRANSFER_BYTES,
};

/* Adds the GPU volume discount line, computed on the GPU subtotal and rounded once. */
static int add_discount_line(struct rating *rating, unsigned __int128 gpu_seconds,
                             struct money_amount gpu_subtotal)
{
    const struct pricebook *book = rating->book;
    struct pricing_discount discount;
    int status = pricing_discount_compute(book, gpu_seconds, gpu_subtotal, &discount);

    if (status != HM_OK) {
        char seconds[MONEY_TEXT_SIZE];
        char subtotal[MONEY_TEXT_SIZE];
        money_int128_format((__int128)gpu_seconds, seconds, sizeof(seconds));
        money_amount_format(gpu_subtotal, book->currency, subtotal, sizeof(subtotal));
        rating_error(rating,
                     "overflow in the GPU volume discount: %s GPU-seconds, GPU subtotal %s %s",
                     seconds, subtotal, book->currency->code);
        return HM_ERR_OVERFLOW;
    }
    if (!discount.applies || discount.amount.minor == 0)
        return HM_OK;

    struct invoice_line *line = next_line(rating);
    line->kind = INVOICE_LINE_DISCOUNT;
    char above[MONEY_TEXT_SIZE];
    money_decimal_format(book->tiers[discount.tier_index].above_hours_pico, 0, above,
                         sizeof(above));
    if (book->discount_mode == PRICEBOOK_DISCOUNT_VOLUME)
        snprintf(line->description, sizeof(line->description),
                 "GPU volume discount, above %s GPU-hours", above);
    else
        snprintf(line->description, sizeof(line->description),
                 "GPU graduated discount, up to the tier above %s GPU-hours", above);

    /* Quantity: the GPU subtotal in currency units; unit price: the (effective) percent. */
    __int128 minor_per_unit = 1;
    for (int i = 0; i < book->currency->exponent; i++)
        minor_per_unit *= 10;
    struct money_ratio subtotal;
    status = money_ratio_make(gpu_subtotal.minor, minor_per_unit, &subtotal);
    PRICING_CHECK(status == HM_OK);
    format_quantity(subtotal, line);
    line->unit = book->currency->code;
    if (money_ratio_format(discount.percent, 0, MONEY_DECIMAL_DIGITS, line->unit_price,
                           sizeof(line->unit_price), &line->unit_price_exact) != HM_OK)
        PRICING_CHECK(!"a percent from 0 to 100 always formats");
    line->price_unit = "percent";
    line->amount.minor = -discount.amount.minor;
    rating->invoice->discount_total = discount.amount;
    return HM_OK;
}

static int rate_usage(struct rating *rating)
{
    struct aggregate *aggregates = calloc(rating->usage->item_count + 1, sizeof(*aggregates));
    if (aggregates == NULL)
        return HM_ERR_NOMEM;

    int status = aggregate_items(rating, aggregates);
    int aggregate_count = status;
    unsigned __int128 gpu_seconds = 0;
    struct money_amount gpu_subtotal = {0};

    status = status < 0 ? status : rate_base_fee(rating);
    for (size_t m = 0; m < sizeof(meter_order) / sizeof(meter_order[0]) && status == HM_OK; m++) {
        for (int i = 0; i < aggregate_count && status == HM_OK; i++) {
            const struct aggregate *aggregate = &aggregates[i];
            if (aggregate->meter != meter_order[m] || aggregate->quantity == 0)
                continue;
            status = rate_aggregate(rating, aggregate);
            if (status != HM_OK || aggregate->meter != METER_GPU_SECONDS)
                continue;

            /* Cannot overflow: the line amounts already fit in the subtotal. */
            const struct invoice_line *line =
                &rating->invoice->lines[rating->invoice->line_count - 1];
            gpu_subtotal.minor += line->amount.minor;
            gpu_seconds += aggregate->quantity;
        }
    }
    free(aggregates);

    if (status == HM_OK)
        status = add_discount_line(rating, gpu_seconds, gpu_subtotal);
    return status;
}

static void check_invariants(const struct invoice *invoice)
{
    int64_t subtotal = 0;
    int64_t discount = 0;

    for (size_t i = 0; i < invoice->line_count; i++) {
        const struct invoice_line *line = &invoice->lines[i];
        if (line->kind == INVOICE_LINE_DISCOUNT) {
            PRICING_CHECK(line->amount.minor <= 0);
            discount -= line->amount.minor;
        } else {
            PRICING_CHECK(line->amount.minor >= 0);
            subtotal += line->amount.minor;
        }
    }
    PRICING_CHECK(subtotal == invoice->subtotal.minor);
    PRICING_CHECK(discount == invoice->discount_total.minor);
    PRICING_CHECK(discount <= subtotal);
    PRICING_CHECK(invoice->total.minor == subtotal - discount);
    PRICING_CHECK(invoice->total.minor >= 0);
}

int pricing_rate(const struct usage_totals *usage, const struct pricebook *book,
                 struct invoice *out, char *error, size_t error_size)
{
    struct rating rating = {usage, book, out, error, error_size, ""};
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
        status = rate_usage(&rating);
    if (status != HM_OK) {
        invoice_free(out);
        return status;
    }

    out->total.minor = out->subtotal.minor - out->discount_total.minor;
    check_invariants(out);
    return HM_OK;
}

void invoice_free(struct invoice *invoice)
{
    if (invoice == NULL)
        return;
    free(invoice->lines);
    memset(invoice, 0, sizeof(*invoice));
}
