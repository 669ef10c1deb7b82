/*
 * Rating: usage totals and a price book in, an invoice out. A pure function
 * with no I/O, so that an invoice can be recomputed and compared at any time.
 *
 * Invariants of a rated invoice, checked by pricing_rate before it returns:
 * 1. Every usage line's amount is its exact quantity times its unit price,
 *    rounded once to the currency's minor unit under the book's rounding.
 * 2. subtotal is the sum of the non-discount lines, all of which are >= 0.
 * 3. discount_total is the negated sum of the discount lines, each <= 0 and
 *    rounded once on the amount it applies to, and discount_total <= subtotal.
 * 4. total = subtotal - discount_total >= 0.
 */
#ifndef HM_PRICING_INVOICE_H
#define HM_PRICING_INVOICE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pricing/money.h"
#include "pricing/pricebook.h"
#include "pricing/usage.h"

/* Maximum length of a line description in bytes, with room for a 64-byte model name. */
#define INVOICE_DESCRIPTION_MAX 127
/*
 * Usage items per pricing_rate call. The engine sends one item per meter and
 * dimension, so 256 GPU types and 3 x 256 models fit with room to spare. The
 * limit also bounds the quadratic merge of items with the same dimension.
 */
#define INVOICE_USAGE_ITEMS_MAX 4096

enum invoice_line_kind {
    INVOICE_LINE_BASE_FEE = 1,
    INVOICE_LINE_GPU = 2,
    INVOICE_LINE_INPUT_TOKENS = 3,
    INVOICE_LINE_OUTPUT_TOKENS = 4,
    INVOICE_LINE_CACHED_INPUT_TOKENS = 5,
    INVOICE_LINE_API_CALLS = 6,
    INVOICE_LINE_STORAGE = 7,
    INVOICE_LINE_TRANSFER = 8,
    INVOICE_LINE_DISCOUNT = 9,
    INVOICE_LINE_SUPPORT_FEE = 10,
    INVOICE_LINE_COMMITMENT_TRUE_UP = 11,
    INVOICE_LINE_ADJUSTMENT = 12, /* an earlier period's late usage */
};

/*
 * One invoice line. quantity and unit_price are display strings: the amount
 * is computed from the exact rationals, never from these strings. A quantity
 * that has no finite decimal form (7 GPU-seconds is 0.00194... GPU-hours) is
 * rounded half-even to 12 fraction digits and quantity_exact is false.
 */
struct invoice_line {
    enum invoice_line_kind kind;
    char description[INVOICE_DESCRIPTION_MAX + 1];
    char dimension[USAGE_DIMENSION_MAX + 1]; /* GPU type or model; empty for the others */
    char quantity[MONEY_TEXT_SIZE];          /* in unit: "493.78" GPU-hours, "4500000000" tokens */
    bool quantity_exact;
    const char *unit;                 /* static: "month", "GPU-hour", "token", "call", ... */
    char unit_price[MONEY_TEXT_SIZE]; /* decimal, per price_unit */
    bool unit_price_exact;
    const char *price_unit;     /* static: "per GPU-hour", "per 1M tokens", ... */
    struct money_amount amount; /* negative for a discount */
    int64_t slice_start_s;      /* the slice of a usage or fee line; 0 when the period has one */
    uint32_t adjusted_period;   /* adjustment lines: the earlier period; else 0 */
    uint64_t event_count;       /* usage lines: events behind the quantity; else 0 */
};

/* What rating took from one credit grant. */
struct invoice_credit {
    uint64_t id;
    int64_t applied_minor;       /* > 0 */
    int64_t balance_after_minor; /* the grant's balance after this invoice */
};

struct invoice {
    uint8_t tenant_id[16];
    char tenant_name[65];
    uint32_t period; /* yyyymm */
    int64_t period_start_s;
    int64_t period_end_s;
    char pricebook_name[PRICEBOOK_NAME_MAX + 1];
    const struct money_currency *currency; /* static table entry */
    size_t line_count;
    struct invoice_line *lines;         /* owned; freed by invoice_free */
    struct money_amount subtotal;       /* sum of the non-discount lines */
    struct money_amount discount_total; /* >= 0: the discounts taken off the subtotal */
    struct money_amount credits_applied; /* >= 0, <= subtotal - discount_total */
    size_t credit_count;
    struct invoice_credit *credits;     /* owned; grants in the order they were burned */
    struct money_amount total;          /* subtotal - discount_total - credits_applied, >= 0 */
};

/*
 * Rates one tenant's usage for one period against a price book and fills
 * *out with the invoice: base fee, then GPU, input, output and cached-input
 * token, API call, storage and transfer lines in that order, then the GPU
 * volume discount. Items with the same meter and dimension are summed before
 * rounding; items with quantity 0 make no line.
 *
 * Returns 0 and an invoice that the caller releases with invoice_free, or:
 * - HM_ERR_NOT_FOUND when a GPU type, model or meter has no price in the book
 *   (and no "*" fallback): error names the tenant, the item and the fix;
 * - HM_ERR_OVERFLOW when an exact result does not fit: error names the
 *   tenant, the line and the values;
 * - HM_ERR_INVALID for inconsistent usage (period_end_s <= period_start_s,
 *   an unknown meter, a dimension on a meter that has none, more than
 *   INVOICE_USAGE_ITEMS_MAX items);
 * - HM_ERR_NOMEM.
 * On error *out contains no lines and needs no invoice_free. usage and book are
 * borrowed for the call only. Thread-safe: it touches no shared state.
 */
int pricing_rate(const struct usage_totals *usage, const struct pricebook *book,
                 struct invoice *out, char *error, size_t error_size);

/*
 * Builds the JSON form of an invoice: tenant_id, tenant_name, period
 * ("2024-06"), price_book, currency, lines, subtotal, discount and total,
 * every amount as a decimal string ("amount") with its integer "amount_minor".
 * Returns 0 and a new reference in *out that the caller releases with
 * json_decref, or HM_ERR_NOMEM.
 */
int invoice_to_json(const struct invoice *invoice, json_t **out);

/* Frees the invoice's lines and empties it; the struct itself stays the caller's. */
void invoice_free(struct invoice *invoice);

/* Returns the line kind's name as used in JSON: "base_fee", "gpu", ..., "discount". */
const char *invoice_line_kind_name(enum invoice_line_kind kind);

#endif
