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
#include <stdint.h>

#include "pricing/money.h"
#include "pricing/usage.h"

/* Name of a price book in bytes: it is printed on invoices and log lines. */
#define PRICEBOOK_NAME_MAX 64
/*
 * GPU types and models per version. Rating looks prices up linearly, and 256
 * is several times the number of GPU types or models any provider sells.
 */
#define PRICEBOOK_GPU_TYPES_MAX 256
#define PRICEBOOK_MODELS_MAX 256
/* Tiers per charge or discount: a table longer than 16 rows is a contract, not a price book. */
#define PRICEBOOK_TIERS_MAX 16
/*
 * Size of a price book file. A book at the GPU type and model limits, with
 * 64-byte names and indentation, is an estimated 100 KiB, so 1 MiB rejects
 * only files that cannot be price books.
 */
#define PRICEBOOK_FILE_SIZE_MAX (1024 * 1024)
/* The key that prices every GPU type or model that the book does not list. */
#define PRICEBOOK_FALLBACK_KEY "*"

/* Versions per book; effective times are whole seconds. */
#define PRICEBOOK_VERSIONS_MAX 64
/* Discounts per version, counting the gpu_volume_discount shorthand. */
#define PRICEBOOK_DISCOUNTS_MAX 16
/* Line kinds a discount can apply to or be driven by: gpu .. transfer. */
#define PRICEBOOK_USAGE_KINDS 7

enum pricebook_charge_model {
    PRICEBOOK_CHARGE_PER_UNIT = 1, /* price * quantity */
    PRICEBOOK_CHARGE_PACKAGE = 2,  /* ceil(quantity / package_size) * price */
    PRICEBOOK_CHARGE_GRADUATED = 3, /* each tier's price on the quantity inside it */
    PRICEBOOK_CHARGE_VOLUME = 4,    /* the tier holding the quantity prices all of it */
};

/* A charge tier: quantities in (previous up_to, up_to], in billing units. */
struct pricebook_charge_tier {
    bool bounded;       /* false for the last tier, which has no up_to */
    __int128 up_to_pico; /* 10^-12 billing units */
    struct money_price price;
};

/* How one meter (and dimension) is charged, per billing unit. */
struct pricebook_charge {
    enum pricebook_charge_model model;
    struct money_price price;      /* per_unit and package */
    __int128 package_size_pico;    /* package: > 0, 10^-12 billing units */
    size_t tier_count;             /* graduated and volume: 1 to PRICEBOOK_TIERS_MAX */
    struct pricebook_charge_tier tiers[PRICEBOOK_TIERS_MAX];
};

struct pricebook_gpu_price {
    char gpu_type[USAGE_DIMENSION_MAX + 1];
    struct pricebook_charge per_hour;
};

/* Token charges of one model, each per million tokens; a charge is used only when its flag is set. */
struct pricebook_model_price {
    char model[USAGE_DIMENSION_MAX + 1];
    bool has_input;
    bool has_output;
    bool has_cached_input;
    struct pricebook_charge input;
    struct pricebook_charge output;
    struct pricebook_charge cached_input;
};

enum pricebook_discount_mode {
    PRICEBOOK_DISCOUNT_VOLUME = 1,    /* the whole base gets the highest tier exceeded */
    PRICEBOOK_DISCOUNT_GRADUATED = 2, /* each tier's rate weighted by the driver inside it */
};

/* A discount tier: a driver quantity strictly above `above` gets percent off. */
struct pricebook_tier {
    __int128 above_pico;   /* driver quantity in 10^-12 billing units */
    __int128 percent_pico; /* 0 to 100, in 10^-12 units */
};

/*
 * A percentage discount on the sum of the rounded usage lines of some kinds,
 * with tiers chosen by the whole period's quantity of a driver meter.
 * Kinds and the driver are usage line kinds (INVOICE_LINE_GPU ..
 * INVOICE_LINE_TRANSFER, numbered 2 to 8) minus 2, so 0 is gpu.
 */
struct pricebook_discount {
    char name[PRICEBOOK_NAME_MAX + 1];
    bool applies_to[PRICEBOOK_USAGE_KINDS];
    int driver;
    enum pricebook_discount_mode mode;
    size_t tier_count;
    struct pricebook_tier tiers[PRICEBOOK_TIERS_MAX]; /* strictly ascending above_pico */
};

/* The prices in effect from effective_from_s until the next version. */
struct pricebook_version {
    bool has_effective_from; /* false: in effect from the beginning of time (first version only) */
    int64_t effective_from_s;

    bool has_base_fee;
    struct money_price base_fee_per_month;
    bool has_support_fee[4]; /* indexed by enum support_tier; [SUPPORT_NONE] is always false */
    struct money_price support_fee_per_month[4];

    size_t gpu_count;
    struct pricebook_gpu_price *gpu; /* owned */
    size_t model_count;
    struct pricebook_model_price *models; /* owned */

    bool has_api_calls;
    struct pricebook_charge api_calls_per_million;
    bool has_storage;
    struct pricebook_charge storage_per_gb_month; /* 1 GB = 10^9 bytes */
    bool has_transfer;
    struct pricebook_charge transfer_per_gb;

    size_t discount_count;
    struct pricebook_discount discounts[PRICEBOOK_DISCOUNTS_MAX]; /* book order, shorthand first */

    bool has_commitment;
    struct money_price commitment_per_month;
};

struct pricebook {
    char name[PRICEBOOK_NAME_MAX + 1];
    const struct money_currency *currency; /* static table entry */
    enum money_rounding rounding;
    size_t version_count;                  /* 1 to PRICEBOOK_VERSIONS_MAX */
    struct pricebook_version *versions;    /* owned; ascending effective_from_s */
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
 * Finds the charge of a GPU type in a version: its own entry, else the "*"
 * entry. Returns the entry (borrowed from the book) or NULL when neither exists.
 */
const struct pricebook_gpu_price *pricebook_find_gpu(const struct pricebook_version *version,
                                                     const char *gpu_type);

/*
 * Finds the token charges of a model in a version: its own entry, else the
 * "*" entry. Returns the entry (borrowed from the book) or NULL when neither exists.
 */
const struct pricebook_model_price *pricebook_find_model(const struct pricebook_version *version,
                                                         const char *model);

/* Returns the version in effect at time_s, or NULL when the first starts later. */
const struct pricebook_version *pricebook_version_at(const struct pricebook *book, int64_t time_s);

/*
 * Lists the slices of [start_s, end_s) under the book's versions: the first
 * starts at start_s, and each further one at the effective time of a version
 * that takes effect strictly inside the range. Writes at most `max` starts,
 * ascending, to starts_out and their number to *count_out.
 * Returns 0, HM_ERR_NOT_FOUND when no version is in effect at start_s (the
 * book's first version starts later), or HM_ERR_INVALID when start_s >= end_s
 * or when the slices outnumber max (PRICEBOOK_VERSIONS_MAX is always enough).
 */
int pricebook_slices(const struct pricebook *book, int64_t start_s, int64_t end_s,
                     int64_t *starts_out, size_t max, size_t *count_out);

#endif
