/*
 * The writer's index of stored event ids: a hash table in memory that maps
 * a fingerprint of (tenant, event id) to where the event is stored. It lets
 * an append find a possible earlier copy of an event without a B-tree
 * lookup. It is never the truth: every match is confirmed against the
 * stored record before an event counts as a duplicate, so a collision of
 * fingerprints or a stale slot cannot drop an event. The ledger rebuilds
 * the index from the stored events when a process first appends, and again
 * when another process appended in between.
 *
 * The table is split into segments of 8,192 slots, found through a
 * directory indexed by the top bits of the fingerprint (extendible
 * hashing). A segment splits in two by the next bit once it passes its own
 * split point, drawn between half and four fifths full, and no other
 * segment moves. Growth thus pauses for one segment at a time, spread over
 * the inserts, and never needs a second copy of the table. A slot keeps the 64-bit fingerprint
 * and 32 bits of the locator, in separate arrays, so that a probe compares
 * eight fingerprints per cache line: 12 bytes a slot, about 25 to 29 bytes
 * per stored id.
 *
 * Invariants:
 *   1. Every stored event has a slot, so a missing slot proves the event new.
 *   2. A segment always has an empty slot, which ends every probe.
 *   3. An abort marks the slots of its transaction as removed (a tombstone
 *      that probes step over). When the segment reaches its split point,
 *      it drops them: by a split, or by putting its live slots back in place
 *      when at most half of its split point is live.
 *
 * Threads: the ledger's single writer, and a helper thread that faults in
 * the memory of the next arena ahead of need.
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

/*
 * A slot keeps a locator modulo DEDUP_SPAN, in 32 bits. The event's arrival
 * number in its tenant's blocks is the kept value plus a multiple of
 * DEDUP_SPAN, so only a tenant past four billion events has more than one
 * number to try. The value DEDUP_SPAN itself marks DEDUP_LEGACY.
 */
#define DEDUP_SPAN UINT64_C(0xffffffff)

struct dedup_segment;

/* Mapped memory that segments are carved from, kept until the index is emptied. */
struct dedup_arena {
    struct dedup_arena *next;
    uint8_t *base;
    size_t used; /* segments carved */
};

struct dedup_index {
    struct dedup_segment **directory; /* 1 << depth entries */
    unsigned depth;                   /* bits of the fingerprint that index the directory */
    size_t count;                     /* ids in the index */
    size_t segments;
    struct dedup_arena *arenas;
    /* The next arena, mapped and faulted in by a helper thread; see spare_state. */
    uint8_t *spare;
    pthread_t spare_thread;
    _Atomic int spare_state; /* SPARE_NONE, SPARE_MAKING, SPARE_READY or SPARE_FAILED */
    struct dedup_segment *scratch; /* a split's copy of the segment it divides */
    uint64_t seed[2];
    uint64_t generation; /* the ledger's append generation that the slots reflect */
    /* Slots added by the open transaction, for an abort. */
    struct dedup_undo *undo;
    size_t undo_count;
    size_t undo_capacity;
};

/*
 * One lookup: dedup_probe_start, then dedup_probe_next until it returns 0.
 * Afterwards `slot` is the empty slot of `segment` where the id belongs,
 * for dedup_insert.
 */
struct dedup_probe {
    uint64_t tag; /* the fingerprint as the slots keep it */
    uint32_t at;
    uint32_t slot;
    struct dedup_segment *segment;
};

/* Creates an empty index with random hash seeds. HM_ERR_NOMEM, HM_ERR_IO (no randomness). */
int dedup_create(struct dedup_index **out);
void dedup_free(struct dedup_index *index);

/*
 * Empties the index, keeping its seeds, with the fewest segments that could
 * take `expected` ids below their split points. Segments that get more than
 * their own split point split as usual. HM_ERR_NOMEM when the segments
 * cannot be made.
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

/* Returns the bytes of the index's segments and directory. */
size_t dedup_bytes(const struct dedup_index *index);

/* Returns the nonzero fingerprint of an event id within its tenant. */
uint64_t dedup_fingerprint(const struct dedup_index *index, const uint8_t tenant_id[UUID_SIZE],
                           const uint8_t event_id[UUID_SIZE]);

/* Fetches the first slot of a fingerprint into the cache, ahead of its lookup. */
void dedup_prefetch(const struct dedup_index *index, uint64_t fingerprint);

void dedup_probe_start(const struct dedup_index *index, uint64_t fingerprint,
                       struct dedup_probe *probe);

/*
 * Finds the next slot with the probe's fingerprint: returns 1 and sets
 * *locator_out to DEDUP_LEGACY or to the kept arrival number (see
 * DEDUP_SPAN), or returns 0 when there is none left.
 */
int dedup_probe_next(const struct dedup_index *index, struct dedup_probe *probe,
                     uint64_t *locator_out);

/*
 * Adds a slot for the probe's id after dedup_probe_next returned 0, with no
 * other change to the index in between. Inside a transaction (in_txn) the
 * slot is logged for dedup_txn_abort. HM_ERR_NOMEM leaves the ids of the
 * index unchanged, and so does HM_ERR_FULL: a segment that cannot split any
 * further is full (after about 10^11 ids).
 */
int dedup_insert(struct dedup_index *index, const struct dedup_probe *probe, uint64_t locator,
                 int in_txn);

void dedup_txn_begin(struct dedup_index *index);
void dedup_txn_commit(struct dedup_index *index);
/*
 * Removes the slots of the transaction. Returns 1 when one of them was not
 * found, which means the index is damaged: the caller must rebuild it.
 */
int dedup_txn_abort(struct dedup_index *index);

#endif
