/*
 * Usage totals of one tenant for one billing period: the input of rating.
 * Built by the engine from the rollups; pricing never reads the ledger.
 */
#ifndef HM_PRICING_USAGE_H
#define HM_PRICING_USAGE_H

#include <stddef.h>
#include <stdint.h>

#define USAGE_DIMENSION_MAX 64

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

struct usage_item {
    enum meter meter;
    char dimension[USAGE_DIMENSION_MAX + 1]; /* empty when the meter has none */
    unsigned __int128 quantity;              /* in the meter's unit, exact */
    uint64_t event_count;                    /* events behind the quantity */
};

struct usage_totals {
    uint8_t tenant_id[16];
    char tenant_name[65];
    uint32_t period;           /* yyyymm */
    int64_t period_start_s;    /* Unix seconds, inclusive */
    int64_t period_end_s;      /* Unix seconds, exclusive */
    int64_t service_start_s;   /* the tenant's start, for proration; <= period_start_s when none */
    size_t item_count;
    struct usage_item *items;  /* borrowed; owned by the caller */
};

#endif
