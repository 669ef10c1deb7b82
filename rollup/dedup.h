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
 * The table grows without a pause: at 40 % load a table of twice the size
 * takes the new slots, and the commits that follow move the old slots over a
 * bounded number at a time, while lookups probe both tables. The bigger
 * table is mapped and its pages faulted in by a helper thread from 20 % load
 * on, because zeroing hundreds of megabytes on the writer stalls commits.
 *
 * Invariants:
 *   1. Every stored event has a slot, so a missing slot proves the event new.
 *   2. Inside a transaction slots are only added, to the current table; an
 *      abort removes exactly those slots. Moving slots between tables
 *      happens only between transactions.
 *
 * Threads: the ledger's single writer only.
 */
#ifndef HM_DEDUP_H
#define HM_DEDUP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/uuid.h"

/* Locator bit of an event stored in the events table of older ledgers, keyed by its id. */
#define DEDUP_LEGACY (UINT64_C(1) << 63)

struct dedup_slot {
    uint64_t fingerprint; /* 0: empty */
    uint64_t locator;     /* arrival number in the tenant's blocks, or DEDUP_LEGACY */
};

struct dedup_table {
    struct dedup_slot *slots; /* NULL: no table */
    size_t mask;              /* slot count - 1; the slot count is a power of two */
    size_t count;             /* occupied slots */
};

struct dedup_index {
    struct dedup_table current; /* takes every new slot */
    struct dedup_table old;     /* being moved into `current`; empty when no move runs */
    size_t move_at;             /* next slot of `old` to move */
    /* The next bigger table, made by a helper thread; see spare_state. */
    struct dedup_table spare;
    pthread_t spare_thread;
    _Atomic int spare_state; /* SPARE_NONE, SPARE_MAKING, SPARE_READY or SPARE_FAILED */
    uint64_t seed[2];
    uint64_t generation; /* the ledger's append generation that the slots reflect */
    /* Slots added by the open transaction, in order, for an abort. */
    size_t *undo;
    size_t undo_count;
    size_t undo_capacity;
    int resized; /* the table had to grow inside the open transaction */
};

/*
 * One lookup: dedup_probe_start, then dedup_probe_next until it returns 0.
 * Afterwards `slot` is the empty slot of the current table where the id
 * belongs, for dedup_insert.
 */
struct dedup_probe {
    uint64_t fingerprint;
    int in_old; /* probing the old table */
    size_t at;
    size_t slot;
};

/* Creates an empty index with random hash seeds. HM_ERR_NOMEM, HM_ERR_IO (no randomness). */
int dedup_create(struct dedup_index **out);
void dedup_free(struct dedup_index *index);

/*
 * Empties the index, keeping its seeds, with room for `expected` ids before
 * it grows. HM_ERR_NOMEM when a table cannot be made.
 */
int dedup_clear(struct dedup_index *index, size_t expected);

/*
 * Adds `count` ids of stored events that are known to be distinct and not
 * in the index, outside any transaction (a rebuild). Their slots are
 * prefetched together, which hides most of the memory latency.
 */
int dedup_load(struct dedup_index *index, const uint64_t *fingerprints, const uint64_t *locators,
               size_t count);

/* Returns the number of ids in the index. */
size_t dedup_count(const struct dedup_index *index);

/* Returns the nonzero fingerprint of an event id within its tenant. */
uint64_t dedup_fingerprint(const struct dedup_index *index, const uint8_t tenant_id[UUID_SIZE],
                           const uint8_t event_id[UUID_SIZE]);

/* Fetches the first slot of a fingerprint into the cache, ahead of its lookup. */
void dedup_prefetch(const struct dedup_index *index, uint64_t fingerprint);

void dedup_probe_start(const struct dedup_index *index, uint64_t fingerprint,
                       struct dedup_probe *probe);

/*
 * Finds the next slot with the probe's fingerprint: returns 1 and sets
 * *locator_out, or 0 when there is none left.
 */
int dedup_probe_next(const struct dedup_index *index, struct dedup_probe *probe,
                     uint64_t *locator_out);

/*
 * Adds a slot at probe->slot after dedup_probe_next returned 0. Inside a
 * transaction (in_txn) the slot is logged for dedup_txn_abort. HM_ERR_NOMEM
 * leaves the index unchanged.
 */
int dedup_insert(struct dedup_index *index, const struct dedup_probe *probe, uint64_t locator,
                 int in_txn);

void dedup_txn_begin(struct dedup_index *index);
/*
 * Keeps the slots of the transaction, then moves old slots into the
 * current table: about four for each slot the transaction added, so that
 * the move ends before the current table fills.
 */
void dedup_txn_commit(struct dedup_index *index);
/*
 * Removes the slots of the transaction. Returns 1 when that was not
 * possible because the table grew meanwhile: the caller must rebuild it.
 */
int dedup_txn_abort(struct dedup_index *index);

#endif
