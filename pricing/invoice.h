/*
 * Rating: usage totals and a price book in, an invoice out. A pure function
 * with no I/O, so that an invoice can be recomputed and compared at any time.
 *
 * Invariants of a rated invoice. pricing_rate checks 2 to 7 before it
 * returns and aborts when one fails. Invariant 1 follows from how each line
 * is computed and has no separate check.
 * 1. Every line's amount is one exact rational (charge of the slice's
 *    quantity, share of a fee, percent of a base) rounded once to the
 *    currency's minor unit under the book's rounding.
 * 2. subtotal is the sum of the non-discount lines, all of which are >= 0.
 * 3. discount_total is the negated sum of the discount lines, each < 0, and
 *    discount_total <= the sum of the usage lines.
 * 4. net = subtotal - discount_total >= 0.
 * 5. There is at most one commitment true-up line, and it is > 0.
 * 6. Every credit entry applied > 0 and left balance_after >= 0, with
 *    balance before - balance_after = applied; credits_applied is their sum
 *    and credits_applied <= net.
 * 7. total = net - credits_applied >= 0.
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
/* Maximum length of a line's unit and price unit: the PostgreSQL export stores VARCHAR(40). */
#define INVOICE_UNIT_MAX 39
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
    /* "month", "GPU-hour", "token", "call", ..., or "package of 0.5M tokens" */
    char unit[INVOICE_UNIT_MAX + 1];
    char unit_price[MONEY_TEXT_SIZE]; /* decimal, per price_unit */
    bool unit_price_exact;
    /*
     * "per GPU-hour", "per 1M tokens", ...; "per package" for a package
     * charge, "average per ..." for a graduated one and "per ..., tier N"
     * for a volume one.
     */
    char price_unit[INVOICE_UNIT_MAX + 1];
    struct money_amount amount; /* negative for a discount */
    int64_t slice_start_s;      /* the slice of a usage or fee line; 0 when the period has one */
    uint32_t adjusted_period;   /* adjustment lines: the earlier period; else 0 */
    uint64_t event_count;       /* usage and adjustment lines: events behind it; else 0 */
};

/* The amount rating took from one credit grant, and the balance it left. */
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
    size_t slice_count; /* parts of the period under one price book version; >= 1 */
    char pricebook_name[PRICEBOOK_NAME_MAX + 1];
    const struct money_currency *currency; /* static table entry */
    size_t line_count;
    struct invoice_line *lines;          /* owned; freed by invoice_free */
    struct money_amount subtotal;        /* sum of the non-discount lines */
    struct money_amount discount_total;  /* >= 0: the discounts taken off the subtotal */
    struct money_amount credits_applied; /* >= 0, <= subtotal - discount_total */
    size_t credit_count;
    struct invoice_credit *credits; /* owned; grants in the order they were burned */
    struct money_amount total;      /* subtotal - discount_total - credits_applied, >= 0 */
};

/*
 * Rates one tenant's usage for one period against a price book and fills
 * *out with the invoice. The period is cut into slices at every version that
 * takes effect inside it. Lines come in this order:
 * - base fee, then support fee, per slice, prorated by the service start and end;
 * - usage lines by kind (GPU, input, output and cached-input tokens, API
 *   calls, storage, transfer), then dimension, then slice;
 * - the discounts of the last slice's version;
 * - the commitment true-up;
 * - the adjustments in input order. Items with the same
 * meter, dimension and slice are summed before rounding; a slice with
 * quantity 0 makes no line. Graduated and package charges continue the
 * running total of the period across slices; a volume charge takes its tier
 * from the whole period's quantity. Credits are burned last, earliest expiry
 * first.
 *
 * Returns 0 and an invoice that the caller releases with invoice_free, or:
 * - HM_ERR_NOT_FOUND when a GPU type, model, meter or support tier has no
 *   price in a slice's version (and no "*" fallback), or when the book's
 *   first version starts after the period start. The error names the
 *   tenant, the item, the version and the fix;
 * - HM_ERR_OVERFLOW when an exact result does not fit: error names the
 *   tenant, the line and the values;
 * - HM_ERR_INVALID for inconsistent input (period_end_s <= period_start_s,
 *   an unknown meter, a dimension on a meter that has none, an item whose
 *   start_s is not a slice start, more than INVOICE_USAGE_ITEMS_MAX items,
 *   an adjustment <= 0, a negative credit balance or a repeated grant id);
 *   a credit grant in another currency than the book's is no error: it
 *   does not apply;
 * - HM_ERR_NOMEM.
 * On error *out contains no lines and needs no invoice_free. usage and book are
 * borrowed for the call only. Thread-safe: it touches no shared state.
 */
int pricing_rate(const struct usage_totals *usage, const struct pricebook *book,
                 struct invoice *out, char *error, size_t error_size);

/*
 * Builds the JSON form of an invoice: tenant_id, tenant_name, period
 * ("2024-06"), price_book, currency, lines, subtotal, discount,
 * credits_applied, credits and total (after credits), every amount as a
 * decimal string ("amount") with its integer "amount_minor". Fee and usage
 * lines carry "slice_start" when the period has several slices. Usage and
 * adjustment lines carry "events", and adjustment lines carry "period". Keys
 * come out in a fixed order, so equal invoices give equal text.
 * Returns 0 and a new reference in *out that the caller releases with
 * json_decref, or HM_ERR_NOMEM.
 */
int invoice_to_json(const struct invoice *invoice, json_t **out);

/* Frees the invoice's lines and credits and empties it; the struct itself stays the caller's. */
void invoice_free(struct invoice *invoice);

/* Returns the line kind's name as used in JSON: "base_fee", "gpu", ..., "discount". */
const char *invoice_line_kind_name(enum invoice_line_kind kind);

#endif
