/*
 * The writer's index of stored event ids: an open-addressing hash table in
 * memory that maps a 64-bit fingerprint of (tenant, event id) to where the
 * event is stored. It lets an append find a possible earlier copy of an
 * event without a B-tree lookup, and it is never the truth: every match is
 * confirmed against the stored record before an event counts as a
 * duplicate, so a fingerprint collision or a stale slot can never drop an
 * event. The ledger rebuilds the index from the stored events when a process
 * first appends, and again when another process appended in between.
 *
 * Invariants:
 *   1. Every stored event has a slot, so a missing slot proves the event new.
 *   2. Slots are only added between dedup_txn_begin and the end of the
 *      transaction; an abort removes exactly the slots that it added.
 *
 * Threads: the ledger's single writer only.
 */
#ifndef HM_DEDUP_H
#define HM_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#include "common/uuid.h"

/* Locator bit of an event stored in the events table of older ledgers, keyed by its id. */
#define DEDUP_LEGACY (UINT64_C(1) << 63)

struct dedup_slot {
    uint64_t fingerprint; /* 0: empty */
    uint64_t locator;     /* arrival number in the tenant's blocks, or DEDUP_LEGACY */
};

struct dedup_index {
    struct dedup_slot *slots;
    size_t mask;  /* slot count - 1; the slot count is a power of two */
    size_t count; /* occupied slots */
    uint64_t seed[2];
    uint64_t generation; /* the ledger's append generation that the slots reflect */
    /* Slots added by the open transaction, in order, for an abort. */
    size_t *undo;
    size_t undo_count;
    size_t undo_capacity;
    int resized; /* the table grew during the open transaction */
};

/* Creates an empty index with random hash seeds. HM_ERR_NOMEM, HM_ERR_IO (no randomness). */
int dedup_create(struct dedup_index **out);
void dedup_free(struct dedup_index *index);

/* Empties the index, keeping its memory and seeds. */
void dedup_clear(struct dedup_index *index);

/* Returns the nonzero fingerprint of an event id within its tenant. */
uint64_t dedup_fingerprint(const struct dedup_index *index, const uint8_t tenant_id[UUID_SIZE],
                           const uint8_t event_id[UUID_SIZE]);

/* Returns the first slot to probe for a fingerprint; probe on with dedup_next. */
static inline size_t dedup_first(const struct dedup_index *index, uint64_t fingerprint)
{
    return (size_t)(fingerprint * UINT64_C(0x9e3779b97f4a7c15) >> 20) & index->mask;
}

static inline size_t dedup_next(const struct dedup_index *index, size_t slot)
{
    return (slot + 1) & index->mask;
}

/*
 * Adds a slot at `slot`, which the caller found empty by probing. Inside a
 * transaction the slot is logged for dedup_txn_abort. Grows the table when
 * it is half full. HM_ERR_NOMEM leaves the index unchanged.
 */
int dedup_insert(struct dedup_index *index, size_t slot, uint64_t fingerprint, uint64_t locator,
                 int in_txn);

void dedup_txn_begin(struct dedup_index *index);
/* Keeps the slots of the transaction. */
void dedup_txn_commit(struct dedup_index *index);
/*
 * Removes the slots of the transaction. Returns 1 when that was not
 * possible because the table grew meanwhile: the caller must rebuild it.
 */
int dedup_txn_abort(struct dedup_index *index);

#endif
