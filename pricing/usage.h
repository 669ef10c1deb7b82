/*
 * Usage of one tenant for one billing period: the input of rating. Built by
 * the engine from the rollups and the tenant's records; pricing never reads
 * the ledger.
 */
#ifndef HM_PRICING_USAGE_H
#define HM_PRICING_USAGE_H

#include <stddef.h>
#include <stdint.h>

#define USAGE_DIMENSION_MAX 64
/* Credit grants and adjustments per rating; a tenant with more is a data error. */
#define USAGE_CREDITS_MAX 256
#define USAGE_ADJUSTMENTS_MAX 64
#define USAGE_ADJUSTMENT_TEXT_MAX 127

/* A metered quantity and its unit. */
enum meter {
    METER_GPU_SECONDS = 1,          /* dimension: GPU type */
    METER_INPUT_TOKENS = 2,         /* dimension: model; uncached input only */
    METER_OUTPUT_TOKENS = 3,        /* dimension: model */
    METER_CACHED_INPUT_TOKENS = 4,  /* dimension: model */
    METER_API_CALLS = 5,            /* no dimension */
    METER_STORAGE_BYTE_SECONDS = 6, /* no dimension; bytes held times seconds held */
    METER_TRANSFER_BYTES = 7,       /* no dimension */
};

/* The support plan of a tenant, priced by the book's support_fee. */
enum support_tier {
    SUPPORT_NONE = 0,
    SUPPORT_BASIC = 1,
    SUPPORT_PRO = 2,
    SUPPORT_ENTERPRISE = 3,
};

/*
 * A quantity of one meter and dimension used inside one slice of the
 * period. A slice starts at the period's start or at the effective time of
 * a price book version inside the period (pricebook_slices), and runs to the
 * next one. start_s names the slice; 0 stands for the period's start.
 */
struct usage_item {
    enum meter meter;
    char dimension[USAGE_DIMENSION_MAX + 1]; /* empty when the meter has none */
    unsigned __int128 quantity;              /* in the meter's unit, exact */
    uint64_t event_count;                    /* events behind the quantity */
    int64_t start_s;                         /* the slice; 0 or period_start_s for the first */
};

/*
 * A prepaid credit grant with its balance before this rating. Rating burns
 * the grants that apply (in the book's currency, and not expired at the
 * period's start, however late they were granted) in order: earliest expiry
 * first, grants without expiry last, then earliest granted_s, then lowest
 * id. A grant in another currency does not apply and is left as it is.
 */
struct usage_credit {
    uint64_t id;
    char currency[4];     /* ISO 4217; applies only when it equals the book's currency */
    int64_t balance_minor; /* >= 0, in the currency's minor unit */
    int64_t granted_s;
    int64_t expires_s; /* 0: never expires */
};

/*
 * An amount owed for an earlier, already finalized period whose usage
 * changed after its close (late events). The engine computes it; rating
 * adds it as an "adjustment" line and counts it in the subtotal.
 */
struct usage_adjustment {
    uint32_t period;       /* yyyymm of the earlier period */
    int64_t amount_minor;  /* > 0: a decrease goes on a credit note instead */
    uint64_t event_count;  /* late events behind it */
    char description[USAGE_ADJUSTMENT_TEXT_MAX + 1];
};

struct usage_totals {
    uint8_t tenant_id[16];
    char tenant_name[65];
    uint32_t period;          /* yyyymm */
    int64_t period_start_s;   /* Unix seconds, inclusive */
    int64_t period_end_s;     /* Unix seconds, exclusive */
    int64_t service_start_s;  /* the tenant's start, for proration; <= period_start_s when none */
    int64_t service_end_s;    /* the tenant's end, for proration; 0 when none */
    enum support_tier support_tier;
    size_t item_count;
    struct usage_item *items; /* borrowed; owned by the caller */
    size_t credit_count;
    const struct usage_credit *credits; /* borrowed */
    size_t adjustment_count;
    const struct usage_adjustment *adjustments; /* borrowed */
};

/* Returns "none", "basic", "pro" or "enterprise". */
const char *support_tier_name(enum support_tier tier);
/* Parses a support tier name; returns 0 or HM_ERR_INVALID. */
int support_tier_parse(const char *name, enum support_tier *out);

#endif
