/* Layout of the summed rollup changes, shared by deltas.c and ledger.c. */
#ifndef HM_ROLLUP_DELTAS_PRIVATE_H
#define HM_ROLLUP_DELTAS_PRIVATE_H

#include "deltas.h"
#include "ledger.h"
#include "ledger_private.h"

struct rollup_delta {
    uint64_t hash;
    unsigned __int128 quantity;
    uint64_t count;
    uint8_t key_size; /* 0: empty slot */
    uint8_t key[ROLLUP_KEY_MAX];
};

_Static_assert(ROLLUP_KEY_MAX <= UINT8_MAX, "a rollup key size fits its byte");

struct rollup_deltas {
    struct rollup_delta *slots; /* open addressing, at most half full */
    size_t mask;                /* slot count - 1, a power of two */
    size_t count;               /* occupied slots */
    size_t *used;               /* their indexes, in the order they were added */
};

/*
 * The rollup key of the dimension that an event's changes used last. The
 * token meters of an inference event share its model, so the key and most
 * of its hash are made once per event and dimension, not once per meter.
 */
struct rollup_key_memo {
    const uint8_t *tenant_id;
    uint32_t period;
    const char *dimension; /* of `key`; NULL before the first change */
    size_t key_size;
    uint64_t key_hash;     /* of the key with a meter byte of 0 */
    uint8_t key[ROLLUP_KEY_MAX];
};

/* Offset of the meter byte in a rollup key (tenant 16, period 4, meter 1, dimension). */
#define ROLLUP_KEY_METER_AT (UUID_SIZE + 4)

static inline void rollup_key_memo_start(struct rollup_key_memo *memo,
                                         const uint8_t tenant_id[UUID_SIZE], uint32_t period)
{
    memo->tenant_id = tenant_id;
    memo->period = period;
    memo->dimension = NULL;
}

static inline size_t rollup_key(uint8_t *key, const uint8_t tenant_id[UUID_SIZE], uint32_t period,
                                enum rollup_meter meter, const char *dimension)
{
    size_t dimension_size = strlen(dimension);
    memcpy(key, tenant_id, UUID_SIZE);
    store_be32(key + UUID_SIZE, period);
    key[ROLLUP_KEY_METER_AT] = (uint8_t)meter;
    memcpy(key + UUID_SIZE + 5, dimension, dimension_size);
    return UUID_SIZE + 5 + dimension_size;
}

/*
 * Hashes a rollup key with the process's random seeds, which
 * rollup_deltas_create makes: call it only after one table exists.
 */
uint64_t rollup_key_hash(const uint8_t *bytes, size_t size);

/*
 * Adds a change of `count` events to a key, and sets *slot_out to the key's
 * slot when slot_out is not NULL. HM_ERR_NOMEM when the table had to grow
 * and could not.
 */
int rollup_deltas_add(struct rollup_deltas *deltas, struct rollup_key_memo *memo,
                      enum rollup_meter meter, const char *dimension,
                      unsigned __int128 quantity, uint64_t count, size_t *slot_out);

/*
 * Adds a change to a whole rollup key, as stored (rollup_key). HM_ERR_INVALID
 * for a key too short to hold a meter or too long; HM_ERR_STORAGE when the
 * sum would overflow (and nothing is added); HM_ERR_NOMEM.
 */
int rollup_deltas_add_key(struct rollup_deltas *deltas, const uint8_t *key, size_t key_size,
                          unsigned __int128 quantity, uint64_t count);

/*
 * Adds the changes of `from` to `into`, or takes them away with `subtract`
 * set. A key taken away must have at least that much in `into`, else
 * HM_ERR_STORAGE, and `into` is left part changed. A key taken away to zero
 * stays in the table with a zero change. HM_ERR_NOMEM.
 */
int rollup_deltas_merge(struct rollup_deltas *into, const struct rollup_deltas *from,
                        int subtract);

/*
 * Adds the changes of `from` that count at least one event to `into`,
 * with the hashes that `from` keeps. HM_ERR_STORAGE when a sum would
 * overflow (`into` is then left part changed); HM_ERR_NOMEM.
 */
int rollup_deltas_add_counted(struct rollup_deltas *into, const struct rollup_deltas *from);

#endif
