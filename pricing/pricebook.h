/*
 * Price books: the prices, currency, rounding mode and GPU volume discount
 * that rating applies, parsed from JSON. The format is described field by
 * field in docs/PRICING.md.
 *
 * A parsed book is read-only; its layout is public so that rating and
 * exports can read it without accessor calls.
 */
#ifndef HM_PRICING_PRICEBOOK_H
#define HM_PRICING_PRICEBOOK_H

#include <stdbool.h>
#include <stddef.h>

#include "pricing/money.h"
#include "pricing/usage.h"

/* Name of a price book in bytes: it is printed on invoices and log lines. */
#define PRICEBOOK_NAME_MAX 64
/*
 * GPU types and models per book. Rating looks prices up linearly, and 256
 * is several times the number of GPU types or models any provider sells.
 */
#define PRICEBOOK_GPU_TYPES_MAX 256
#define PRICEBOOK_MODELS_MAX 256
/* Discount tiers per book: a tier table longer than 16 rows is a contract, not a price book. */
#define PRICEBOOK_TIERS_MAX 16
/*
 * Size of a price book file. A book at the GPU type and model limits, with
 * 64-byte names and indentation, is an estimated 100 KiB, so 1 MiB rejects
 * only files that cannot be price books.
 */
#define PRICEBOOK_FILE_SIZE_MAX (1024 * 1024)
/* The key that prices every GPU type or model that the book does not list. */
#define PRICEBOOK_FALLBACK_KEY "*"

struct pricebook_gpu_price {
    char gpu_type[USAGE_DIMENSION_MAX + 1];
    struct money_price per_hour;
};

/* Token prices of one model, each per million tokens; a price is used only when its flag is set. */
struct pricebook_model_price {
    char model[USAGE_DIMENSION_MAX + 1];
    bool has_input;
    bool has_output;
    bool has_cached_input;
    struct money_price input_per_million;
    struct money_price output_per_million;
    struct money_price cached_input_per_million;
};

enum pricebook_discount_mode {
    PRICEBOOK_DISCOUNT_NONE = 0,
    PRICEBOOK_DISCOUNT_VOLUME = 1,    /* the whole GPU subtotal gets the highest tier exceeded */
    PRICEBOOK_DISCOUNT_GRADUATED = 2, /* each tier's rate applies to the hours inside that tier */
};

/* A discount tier: GPU-hours strictly above above_hours get percent off. */
struct pricebook_tier {
    __int128 above_hours_pico; /* GPU-hours in 10^-12 units */
    __int128 percent_pico;     /* 0 to 100, in 10^-12 units */
};

struct pricebook {
    char name[PRICEBOOK_NAME_MAX + 1];
    const struct money_currency *currency; /* static table entry */
    enum money_rounding rounding;

    bool has_base_fee;
    struct money_price base_fee_per_month;

    size_t gpu_count;
    struct pricebook_gpu_price gpu[PRICEBOOK_GPU_TYPES_MAX];

    size_t model_count;
    struct pricebook_model_price models[PRICEBOOK_MODELS_MAX];

    bool has_api_calls;
    struct money_price api_calls_per_million;
    bool has_storage;
    struct money_price storage_per_gb_month; /* 1 GB = 10^9 bytes */
    bool has_transfer;
    struct money_price transfer_per_gb;

    enum pricebook_discount_mode discount_mode;
    size_t tier_count;
    struct pricebook_tier tiers[PRICEBOOK_TIERS_MAX]; /* strictly ascending above_hours */
};

/*
 * Parses a price book from JSON text of the given length (need not be
 * NUL-terminated). On success *out is a new book that the caller frees with
 * pricebook_free. On failure *out is NULL and error receives the first
 * problem as "JSON path: what is wrong; how to fix it".
 * Returns 0, HM_ERR_INVALID for any invalid content or syntax, or
 * HM_ERR_NOMEM.
 */
int pricebook_parse(const char *text, size_t length, struct pricebook **out, char *error,
                    size_t error_size);

/*
 * Reads and parses a price book file of at most PRICEBOOK_FILE_SIZE_MAX
 * bytes, with the same contract as pricebook_parse. It also returns
 * HM_ERR_IO when the file cannot be read, with the path and the system error
 * in error, and HM_ERR_INVALID when the file is too large.
 */
int pricebook_load_file(const char *path, struct pricebook **out, char *error, size_t error_size);

/*
 * Validates a price book without keeping it, collecting every problem, one
 * per line, into errors (truncated at a line boundary when errors_size is too
 * small). *error_count (if not NULL) receives the number of problems found.
 * Returns 0 when the book is valid, HM_ERR_INVALID when it is not, or
 * HM_ERR_NOMEM.
 */
int pricebook_check(const char *text, size_t length, char *errors, size_t errors_size,
                    size_t *error_count);

/* Frees a book from pricebook_parse or pricebook_load_file; NULL is a no-op. */
void pricebook_free(struct pricebook *book);

/*
 * Finds the price of a GPU type: its own entry, else the "*" entry.
 * Returns the entry (borrowed from the book) or NULL when neither exists.
 */
const struct pricebook_gpu_price *pricebook_find_gpu(const struct pricebook *book,
                                                     const char *gpu_type);

/*
 * Finds the token prices of a model: its own entry, else the "*" entry.
 * Returns the entry (borrowed from the book) or NULL when neither exists.
 */
const struct pricebook_model_price *pricebook_find_model(const struct pricebook *book,
                                                         const char *model);

#endif
