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
 * With a bound on its memory (dedup_spill_to), the table in memory is
 * written out as a sorted run once it is full, and lookups search the runs
 * after the tables. Invariant 1 then holds for the tables and runs together.
 *
 * Threads: the ledger's single writer, and a helper thread that faults in
 * the memory of the next arena ahead of need. A spill thread reads the
 * frozen table and the runs, which nothing changes while it runs. It
 * writes new runs, which the writer takes at the start of a transaction.
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

struct dedup_table;
struct dedup_run;

struct dedup_undo;

/* Failures of one kind of write of the spill thread, as the writer took them in. */
struct dedup_failure {
    uint64_t count;
    int status;      /* of the last failure */
    int errno_value; /* the system's reason for it, or 0 */
    int failing;     /* the last try failed */
    int reported;    /* this run of failures was returned to the caller */
};

struct dedup_index {
    struct dedup_table *hot;    /* takes the inserts */
    struct dedup_table *frozen; /* full, written to a run by the spill thread; or NULL */
    struct dedup_run **runs;    /* sorted runs of ids on disk, oldest first */
    size_t run_count;
    struct dedup_segment *scratch; /* a split's copy of the segment it divides */
    uint64_t seed[2];
    uint64_t generation; /* the ledger's append generation that the slots reflect */
    /* Slots added by the open transaction, for an abort. */
    struct dedup_undo *undo;
    size_t undo_count;
    size_t undo_capacity;
    /* Spilling; see dedup_spill_to. */
    int spill_dir;     /* directory of the run files, or -1 */
    size_t memory_max; /* bytes of memory for the tables */
    _Atomic int spill_state;   /* SPILL_NONE, SPILL_RUNNING or SPILL_DONE */
    struct dedup_run **spill_runs; /* the spill thread's result */
    size_t spill_run_count;
    int spill_status;      /* HM_OK, or why the last spill failed */
    int spill_errno;       /* the system's reason for a failed spill, or 0 */
    unsigned spill_wait;   /* transactions before a failed spill is tried again */
    uint64_t spills;       /* runs written */
    uint64_t spill_waits;  /* transactions that waited for a spill to end */
    uint64_t spill_wait_us;
    int spill_merge_status; /* HM_OK, or why the spill thread's last merge failed */
    int spill_merge_errno;
    struct dedup_failure spill_failure; /* spills that failed; their ids stay in memory */
    struct dedup_failure merge_failure; /* merges that failed; their runs stay unmerged */
};

/*
 * One lookup: dedup_probe_start, then dedup_probe_next until it returns 0.
 * It looks in the table in memory, the frozen one, then each run.
 * Afterwards `slot` is the empty slot of `segment` in the table in memory
 * where the id belongs, for dedup_insert.
 */
struct dedup_probe {
    uint64_t tag; /* the fingerprint as the slots keep it */
    uint32_t at;  /* the next slot to read in `looking` */
    uint32_t slot;
    struct dedup_segment *segment;
    const struct dedup_segment *looking;
    unsigned tier;  /* 0: the table in memory, 1: the frozen one, 2 + k: run k */
    size_t run_at;  /* the next entry to read in the run, or SIZE_MAX before its search */
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

/* Returns the bytes of memory that the tables' segments and directories take. */
size_t dedup_bytes(const struct dedup_index *index);

/* Returns the bytes of the runs on disk, and their number. */
size_t dedup_disk_bytes(const struct dedup_index *index);
size_t dedup_run_count(const struct dedup_index *index);

/*
 * Bounds the memory of the index. Once the table in memory takes half of
 * `memory_max` bytes, it is frozen at the start of the next transaction,
 * and a new table takes the inserts. A spill thread writes the frozen
 * ids, sorted, to a run. A run is a file in `dir` with no name (O_TMPFILE),
 * so it is gone with the process. When the new table also takes half the
 * bound before the spill ends, the next transaction waits for it. Runs are
 * merged two by two, so there are about log2 of the spills of them. A
 * lookup that finds no slot in memory searches each run. The runs' pages
 * are in the kernel's page cache, which can drop them and read them again.
 *
 * A spill that fails (a full disk) keeps the frozen table in memory, and
 * is tried again after a number of transactions; no id is lost. A merge
 * that fails after the new run is written keeps the runs unmerged, and the
 * next spill tries to merge them again.
 * HM_ERR_IO when `dir` cannot be opened. memory_max 0 turns spilling off.
 */
int dedup_spill_to(struct dedup_index *index, const char *dir, size_t memory_max);

/*
 * Returns HM_OK, or the status of a failed spill (with the system's errno
 * in *errno_out, 0 if none) for the caller to report. A run of failures is
 * returned once, so a retry that fails again reports nothing new until a
 * spill succeeds.
 */
int dedup_spill_failure(struct dedup_index *index, int *errno_out);

/*
 * Returns HM_OK, or the status of a merge of runs that failed (with the
 * system's errno in *errno_out, 0 if none), once until a spill merges all
 * of its runs again. A failed merge keeps its runs: no id is lost, but a
 * lookup reads more runs.
 */
int dedup_merge_failure(struct dedup_index *index, int *errno_out);

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
