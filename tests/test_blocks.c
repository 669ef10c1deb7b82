/*
 * Event blocks and the writer's id index: duplicates found across blocks and
 * inside the pending block, aborts that roll the index back (also after it
 * grew), appends by another process, rollups summed per transaction, rollup
 * changes of conflicts taken away again, fingerprints of ids that a sender
 * chose, corrupt blocks reported as errors, and the rollup log: read the
 * same before and after a fold, folded when it grows (from the writer's sum,
 * which leaves out aborted and failed commits, or read back after another
 * process or a restart), and damaged records reported as errors.
 */
#include <criterion/criterion.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/dedup.h"
#include "rollup/deltas.h"
#include "rollup/ledger.h"

#include "ledger_fixture.h"

static void setup(void) { ledger_fixture_open("blocks"); }

TestSuite(blocks, .init = setup, .fini = ledger_fixture_remove);

/* An inference event whose id holds `number`, with `tokens` input tokens. */
static struct event numbered(const uint8_t tenant[UUID_SIZE], uint32_t number, uint64_t tokens)
{
    struct event event = { .kind = EVENT_INFERENCE, .timestamp_us = JUNE_10_US };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memset(event.event_id, 0x5a, UUID_SIZE);
    memcpy(event.event_id, &number, sizeof number);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "m-small");
    event.u.inference.input_tokens = tokens;
    event.u.inference.output_tokens = 1;
    return event;
}

struct outcomes {
    uint32_t stored, duplicates, conflicts;
};

/* Appends events first..first+count-1 of a tenant in the open transaction. */
static struct outcomes append_range(struct ledger_txn *txn, const uint8_t tenant[UUID_SIZE],
                                    uint32_t first, uint32_t count, uint64_t tokens)
{
    struct outcomes outcomes = { 0 };
    for (uint32_t i = first; i < first + count; i++) {
        struct event event = numbered(tenant, i, tokens);
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        cr_assert_gt(size, 0);
        int outcome = ledger_append(txn, &event, record, (size_t)size);
        cr_assert_geq(outcome, 0, "append of event %u failed: %d", i, outcome);
        outcomes.stored += outcome == APPEND_STORED;
        outcomes.duplicates += outcome == APPEND_DUPLICATE;
        outcomes.conflicts += outcome == APPEND_CONFLICT;
    }
    return outcomes;
}

static struct outcomes commit_range(const uint8_t tenant[UUID_SIZE], uint32_t first,
                                    uint32_t count, uint64_t tokens)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    struct outcomes outcomes = append_range(txn, tenant, first, count, tokens);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    return outcomes;
}

static uint64_t event_count(const uint8_t tenant[UUID_SIZE])
{
    uint64_t count = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant, &count), HM_OK);
    return count;
}

/* Reads the rollup of input tokens of model m-small in June 2024. */
static unsigned __int128 input_tokens(const uint8_t tenant[UUID_SIZE], uint64_t *events_out)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant, 202406, &rows, &count), HM_OK);
    unsigned __int128 quantity = 0;
    *events_out = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_INPUT_TOKENS && strcmp(rows[i].dimension, "m-small") == 0) {
            quantity = rows[i].quantity;
            *events_out = rows[i].event_count;
        }
    }
    free(rows);
    return quantity;
}

Test(blocks, duplicates_across_full_blocks)
{
    /* 10,000 events span three blocks of at most 4,096 records. */
    struct outcomes first = commit_range(tenant_a, 0, 10000, 3);
    cr_expect_eq(first.stored, 10000);
    struct outcomes again = commit_range(tenant_a, 0, 10000, 3);
    cr_expect_eq(again.stored, 0);
    cr_expect_eq(again.duplicates, 10000);
    cr_expect_eq(event_count(tenant_a), 10000);
    uint64_t events = 0;
    cr_expect(input_tokens(tenant_a, &events) == 30000);
    cr_expect_eq(events, 10000);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
}

Test(blocks, duplicate_inside_one_transaction)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    /* The second range repeats events of the pending block and of the block written before it. */
    struct outcomes first = append_range(txn, tenant_a, 0, 5000, 1);
    struct outcomes again = append_range(txn, tenant_a, 0, 5000, 1);
    struct outcomes changed = append_range(txn, tenant_a, 4990, 20, 2);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    cr_expect_eq(first.stored, 5000);
    cr_expect_eq(again.duplicates, 5000);
    cr_expect_eq(changed.conflicts, 10);
    cr_expect_eq(changed.stored, 10);
    cr_expect_eq(event_count(tenant_a), 5010);
}

Test(blocks, tenants_interleaved_keep_own_sequences)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (uint32_t round = 0; round < 5; round++) {
        append_range(txn, tenant_a, round * 10, 10, 1);
        append_range(txn, tenant_b, round * 10, 10, 1);
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
    uint64_t last_a = 0, last_b = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &last_a), HM_OK);
    cr_assert_eq(ledger_arrival_last(ledger, tenant_b, &last_b), HM_OK);
    cr_expect_eq(last_a, 50);
    cr_expect_eq(last_b, 50);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_b), HM_OK);
    /* The same id under the other tenant is another event. */
    struct outcomes cross = commit_range(tenant_b, 50, 10, 1);
    cr_expect_eq(cross.stored, 10);
}

Test(blocks, abort_forgets_ids)
{
    commit_range(tenant_a, 0, 100, 1);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    struct outcomes aborted = append_range(txn, tenant_a, 100, 100, 1);
    cr_expect_eq(aborted.stored, 100);
    ledger_abort(txn);
    struct outcomes retried = commit_range(tenant_a, 50, 150, 1);
    cr_expect_eq(retried.duplicates, 50);
    cr_expect_eq(retried.stored, 100);
    uint64_t events = 0;
    cr_expect(input_tokens(tenant_a, &events) == 200);
    cr_expect_eq(events, 200);
}

Test(blocks, abort_after_index_growth)
{
    commit_range(tenant_a, 0, 1000, 1);
    /* 100,000 new ids grow the index past its first size inside the aborted transaction. */
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    append_range(txn, tenant_a, 1000, 100000, 1);
    ledger_abort(txn);
    struct outcomes retried = commit_range(tenant_a, 0, 101000, 1);
    cr_expect_eq(retried.duplicates, 1000);
    cr_expect_eq(retried.stored, 100000);
    cr_expect_eq(event_count(tenant_a), 101000);
}

Test(blocks, failed_commit_forgets_ids)
{
    commit_range(tenant_a, 0, 10, 1);
    /* A commit that LMDB cannot finish: the map is too small for 50,000 more events. */
    ledger_close(ledger);
    struct ledger_options small = { .map_size = 1 << 20 };
    cr_assert_eq(ledger_open(&ledger, dir, &small), HM_OK);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    int full = 0;
    for (uint32_t i = 10; i < 50010 && !full; i++) {
        struct event event = numbered(tenant_a, i, 1);
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        int outcome = ledger_append(txn, &event, record, (size_t)size);
        full = outcome == HM_ERR_FULL;
        cr_assert(outcome >= 0 || full, "append failed: %d", outcome);
    }
    int rc = full ? HM_ERR_FULL : ledger_commit(txn);
    if (full)
        ledger_abort(txn);
    cr_assert_eq(rc, HM_ERR_FULL);
    /* The same handle, so the index of this process must have forgotten the ids. */
    struct outcomes retried = commit_range(tenant_a, 0, 20, 1);
    cr_expect_eq(retried.duplicates, 10);
    cr_expect_eq(retried.stored, 10);
}

/* Stores events 10..19 of tenant_a in one transaction. */
/* The first event and the tokens of store_ten_more, set before the child starts. */
static uint32_t other_first = 10;
static uint64_t other_tokens = 1;

static int store_ten_more(struct ledger *other)
{
    struct ledger_txn *txn = NULL;
    int rc = ledger_begin(other, &txn);
    for (uint32_t i = other_first; rc == HM_OK && i < other_first + 10; i++) {
        struct event event = numbered(tenant_a, i, other_tokens);
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        rc = ledger_append(txn, &event, record, (size_t)size) == APPEND_STORED ? HM_OK : 1;
    }
    if (rc == HM_OK)
        return ledger_commit(txn);
    if (txn != NULL)
        ledger_abort(txn);
    return rc;
}

Test(blocks, append_by_another_process_is_seen)
{
    commit_range(tenant_a, 0, 10, 1);
    in_other_process(store_ten_more);

    /* This process's index predates the child's events; they must still be duplicates. */
    struct outcomes again = commit_range(tenant_a, 0, 25, 1);
    cr_expect_eq(again.duplicates, 20);
    cr_expect_eq(again.stored, 5);
    cr_expect_eq(event_count(tenant_a), 25);
    uint64_t total = 0;
    cr_assert_eq(ledger_events_total(ledger, &total), HM_OK);
    cr_expect_eq(total, 25);
}

/*
 * With little memory for the index, most ids are in sorted runs on disk:
 * duplicates and conflicts of those events are still found, by this
 * process, after a reopen, and after another process appended.
 */
Test(blocks, duplicates_found_in_spilled_runs)
{
    enum { EVENTS = 120000, PER_TXN = 1000 };
    ledger_close(ledger);
    struct ledger_options options = { .index_memory = (size_t)4 << 20 };
    cr_assert_eq(ledger_open(&ledger, dir, &options), HM_OK);
    for (uint32_t i = 0; i < EVENTS; i += PER_TXN) {
        cr_assert_eq(commit_range(tenant_a, i, PER_TXN, 2).stored, PER_TXN);
        cr_assert_eq(commit_range(tenant_b, i, PER_TXN, 2).stored, PER_TXN);
    }
    struct ledger_index_stats index;
    ledger_index_stats(ledger, &index);
    cr_assert_gt(index.runs, 0, "no run was written");
    cr_assert_eq(index.ids, 2 * EVENTS);
    cr_assert_leq(index.memory_bytes, options.index_memory + ((size_t)1 << 20));

    uint32_t duplicates = 0, conflicts = 0;
    for (uint32_t i = 0; i < EVENTS; i += PER_TXN)
        duplicates += commit_range(tenant_b, i, PER_TXN, 2).duplicates;
    conflicts = commit_range(tenant_a, 0, 3000, 5).conflicts;
    cr_expect_eq(duplicates, EVENTS);
    cr_expect_eq(conflicts, 3000);

    /* A reopen rebuilds the index from the ledger, writing runs as it loads. */
    ledger_close(ledger);
    cr_assert_eq(ledger_open(&ledger, dir, &options), HM_OK);
    duplicates = 0;
    for (uint32_t i = 0; i < EVENTS; i += PER_TXN)
        duplicates += commit_range(tenant_a, i, PER_TXN, 2).duplicates;
    cr_expect_eq(duplicates, EVENTS);
    ledger_index_stats(ledger, &index);
    cr_assert_gt(index.runs, 0, "the rebuild wrote no run");

    other_first = EVENTS;
    other_tokens = 2;
    in_other_process(store_ten_more);
    struct outcomes again = commit_range(tenant_a, EVENTS - 10, 25, 2);
    cr_expect_eq(again.duplicates, 20, "ten of this process and ten of the other");
    cr_expect_eq(again.stored, 5);
    cr_expect_eq(event_count(tenant_a), EVENTS + 15);
    cr_expect_eq(event_count(tenant_b), EVENTS);
    uint64_t events = 0;
    cr_expect(input_tokens(tenant_b, &events) == 2 * EVENTS);
    cr_expect_eq(events, EVENTS);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

static void claim_four(uint8_t *copy, size_t *size)
{
    (void)size;
    copy[0] = 4;
}

Test(blocks, corrupt_block_is_an_error)
{
    commit_range(tenant_a, 0, 3, 1);
    /* Claims four records in a block of three, behind the ledger's back. */
    ledger_reopen_rewritten("blocks", claim_four);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_ERR_STORAGE);
    struct ledger_txn *append_txn;
    cr_assert_eq(ledger_begin(ledger, &append_txn), HM_OK);
    struct event event = numbered(tenant_a, 1, 1);
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&event, record);
    cr_expect_eq(ledger_append(append_txn, &event, record, (size_t)size), HM_ERR_STORAGE);
    ledger_abort(append_txn);
}

Test(blocks, index_grows_across_commits)
{
    /*
     * 300 commits of 1,000 events grow the index several times; each commit
     * also resends the previous commit's events, which may sit in the table
     * being moved or in the new one.
     */
    for (uint32_t commit = 0; commit < 300; commit++) {
        struct ledger_txn *txn;
        cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
        struct outcomes fresh = append_range(txn, tenant_a, commit * 1000, 1000, 1);
        struct outcomes resent = { 0 };
        if (commit > 0)
            resent = append_range(txn, tenant_a, (commit - 1) * 1000, 1000, 1);
        /* Every tenth commit is aborted and sent again, while a move may be under way. */
        if (commit % 10 == 5) {
            ledger_abort(txn);
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            fresh = append_range(txn, tenant_a, commit * 1000, 1000, 1);
        }
        cr_assert_eq(ledger_commit(txn), HM_OK);
        cr_assert_eq(fresh.stored, 1000, "commit %u stored %u", commit, fresh.stored);
        if (commit > 0 && commit % 10 != 5)
            cr_assert_eq(resent.duplicates, 1000, "commit %u: %u duplicates", commit,
                         resent.duplicates);
    }
    struct outcomes all = commit_range(tenant_a, 0, 300000, 1);
    cr_expect_eq(all.duplicates, 300000);
    cr_expect_eq(all.stored, 0);
    cr_expect_eq(event_count(tenant_a), 300000);
}

/* Counts the stored rollup rows of a tenant's period, the storage row left out. */
static size_t rollup_row_count(const uint8_t tenant[UUID_SIZE], uint32_t period)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups_stored(ledger, tenant, period, &rows, &count), HM_OK);
    free(rows);
    return count;
}

Test(blocks, conflicts_taken_away_leave_no_rows)
{
    commit_range(tenant_a, 1, 1, 5);
    size_t june_rows = rollup_row_count(tenant_a, 202406);
    cr_assert_eq(june_rows, 3, "input tokens, output tokens and events of m-small");

    /* The same id with another model, and with a timestamp in July. */
    struct event other_model = numbered(tenant_a, 1, 5);
    snprintf(other_model.u.inference.model, sizeof other_model.u.inference.model, "m-other");
    struct event other_month = numbered(tenant_a, 1, 5);
    other_month.timestamp_us += INT64_C(30) * 86400 * 1000000;
    const struct event *conflicts[] = { &other_model, &other_month };

    /* As meterd commits a batch: every event's changes first, then those not stored away. */
    struct rollup_deltas *batch = NULL, *not_stored = NULL;
    cr_assert_eq(rollup_deltas_create(&batch, 64), HM_OK);
    cr_assert_eq(rollup_deltas_create(&not_stored, 64), HM_OK);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (size_t i = 0; i < 2; i++) {
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(conflicts[i], record);
        cr_assert_gt(size, 0);
        cr_expect_eq(ledger_append_record(txn, tenant_a, record, (size_t)size), APPEND_CONFLICT);
        cr_assert_eq(rollup_deltas_add_event(batch, conflicts[i]), HM_OK);
        cr_assert_eq(rollup_deltas_add_event(not_stored, conflicts[i]), HM_OK);
    }
    cr_assert_eq(ledger_rollups_apply(txn, batch, 0), HM_OK);
    cr_assert_eq(ledger_rollups_apply(txn, not_stored, 1), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    rollup_deltas_free(batch);
    rollup_deltas_free(not_stored);

    cr_expect_eq(rollup_row_count(tenant_a, 202406), june_rows);
    cr_expect_eq(rollup_row_count(tenant_a, 202407), 0);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202407), HM_OK);
}

static int fingerprint_order(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(blocks, chosen_ids_get_distinct_fingerprints)
{
    /*
     * Ids whose last 8 bytes, read little-endian, equal the hash's public
     * constant k2. Without a seed in that factor of the hash, such ids make it
     * zero, so all of them share one fingerprint and each append probes every
     * earlier one.
     */
    enum { IDS = 4096 };
    const uint64_t k2 = UINT64_C(0xe7037ed1a0b428db);
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    static uint64_t fingerprints[IDS];
    for (uint64_t i = 0; i < IDS; i++) {
        uint8_t id[UUID_SIZE];
        memcpy(id, &i, sizeof i);
        memcpy(id + 8, &k2, sizeof k2);
        fingerprints[i] = dedup_fingerprint(index, tenant_a, id);
    }
    dedup_free(index);
    qsort(fingerprints, IDS, sizeof fingerprints[0], fingerprint_order);
    size_t repeated = 0;
    for (size_t i = 1; i < IDS; i++)
        repeated += fingerprints[i] == fingerprints[i - 1];
    cr_expect_eq(repeated, 0, "%zu of %d chosen ids share a fingerprint", repeated, IDS);
}

/*
 * Resends in an order that jumps back and forth inside blocks and between
 * them, and between tenants, so that every lookup of a stored record starts
 * both after and before the record found last.
 */
/*
 * Moves tenant a's only block, in the closed ledger, to start at arrival
 * number `first`, as if the tenant had stored that many events before.
 */
static void raw_block_renumber(uint64_t first)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    raw_begin("blocks", &env, &txn, &dbi);
    uint8_t key_bytes[UUID_SIZE + 8];
    memcpy(key_bytes, tenant_a, UUID_SIZE);
    for (int i = 0; i < 8; i++)
        key_bytes[UUID_SIZE + i] = (uint8_t)(UINT64_C(1) >> (56 - 8 * i));
    MDB_val key = { sizeof key_bytes, key_bytes }, value;
    cr_assert_eq(mdb_get(txn, dbi, &key, &value), 0, "tenant a has no block at 1");
    void *copy = malloc(value.mv_size);
    cr_assert_not_null(copy);
    memcpy(copy, value.mv_data, value.mv_size);
    MDB_val moved = { value.mv_size, copy };
    cr_assert_eq(mdb_del(txn, dbi, &key, NULL), 0);
    for (int i = 0; i < 8; i++)
        key_bytes[UUID_SIZE + i] = (uint8_t)(first >> (56 - 8 * i));
    cr_assert_eq(mdb_put(txn, dbi, &key, &moved, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);
}

/*
 * Stores three events of tenant a, renumbers their block from `first` and
 * reopens the ledger. Resent, they must be duplicates, and one with other
 * content a conflict.
 */
static void renumbered_resends(uint64_t first)
{
    cr_assert_eq(commit_range(tenant_a, 0, 3, 1).stored, 3);
    ledger_close(ledger);
    ledger = NULL;
    raw_block_renumber(first);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    struct outcomes resent = commit_range(tenant_a, 0, 3, 1);
    cr_expect_eq(resent.duplicates, 3);
    cr_expect_eq(resent.stored, 0);
    cr_expect_eq(commit_range(tenant_a, 1, 1, 2).conflicts, 1);
}

Test(blocks, arrival_numbers_past_32_bits)
{
    /*
     * The index keeps an arrival number modulo 2^32 - 1. Events numbered
     * from 2 (2^32 - 1) + 1 keep the values 1, 2, 3, like the numbers 1, 2,
     * 3 that no block holds: a resend must still be found.
     */
    renumbered_resends(2 * DEDUP_SPAN + 1);
    /* New events continue the numbers, and a resend of them is found in the same way. */
    cr_expect_eq(commit_range(tenant_a, 3, 3, 1).stored, 3);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_expect_eq(append_range(txn, tenant_a, 6, 2, 1).stored, 2);
    cr_expect_eq(append_range(txn, tenant_a, 0, 8, 1).duplicates, 8);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    cr_expect_eq(event_count(tenant_a), 8);
}

Test(blocks, arrival_numbers_across_span)
{
    /*
     * A block numbered from 2^32 - 2 holds the numbers 2^32 - 2, 2^32 - 1
     * and 2^32, which the index keeps as 2^32 - 2, 0 and 1. The kept value 0
     * also matches number 0, which no block contains, and the resend must
     * still be found.
     */
    renumbered_resends(DEDUP_SPAN - 1);
    /* New events continue the numbers, and their resends in the same transaction are found. */
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_expect_eq(append_range(txn, tenant_a, 3, 4, 1).stored, 4);
    cr_expect_eq(append_range(txn, tenant_a, 0, 7, 1).duplicates, 7);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    cr_expect_eq(commit_range(tenant_a, 0, 7, 1).duplicates, 7);
    cr_expect_eq(event_count(tenant_a), 7);
}

Test(blocks, damaged_event_count_sizes_index)
{
    /*
     * The stored count of events sizes the id index at start. Damaged to
     * 2^40, it would ask for millions of segments; the ledger's pages cap it,
     * and duplicates are still found.
     */
    cr_assert_eq(commit_range(tenant_a, 0, 3, 1).stored, 3);
    ledger_close(ledger);
    ledger = NULL;
    const uint64_t state[2] = { 12345, UINT64_C(1) << 40 };
    raw_put("meta", "append_state", strlen("append_state"), state, sizeof state);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    struct outcomes resent = commit_range(tenant_a, 0, 4, 1);
    cr_expect_eq(resent.duplicates, 3);
    cr_expect_eq(resent.stored, 1);
}

Test(blocks, resends_in_shuffled_order)
{
    enum { EVENTS = 9000 };
    static uint32_t order[EVENTS];
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    append_range(txn, tenant_a, 0, EVENTS, 1);
    append_range(txn, tenant_b, 0, 100, 1);
    /* Inside the same transaction: tenant b's pending block, then a's blocks, back and forth. */
    cr_expect_eq(append_range(txn, tenant_b, 50, 50, 1).duplicates, 50);
    cr_expect_eq(append_range(txn, tenant_a, 8000, 10, 1).duplicates, 10);
    cr_expect_eq(append_range(txn, tenant_b, 0, 10, 1).duplicates, 10);
    cr_expect_eq(append_range(txn, tenant_a, 100, 10, 1).duplicates, 10);
    cr_assert_eq(ledger_commit(txn), HM_OK);

    uint64_t state = 7;
    for (uint32_t i = 0; i < EVENTS; i++)
        order[i] = i;
    for (uint32_t i = EVENTS - 1; i > 0; i--) {
        state = state * 6364136223846793005u + 1442695040888963407u;
        uint32_t j = (uint32_t)((state >> 33) % (i + 1));
        uint32_t swap = order[i];
        order[i] = order[j];
        order[j] = swap;
    }
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    struct outcomes outcomes = { 0 };
    for (uint32_t i = 0; i < EVENTS; i++) {
        /* Every seventh event comes back with other content: a conflict. */
        uint64_t tokens = order[i] % 7 == 0 ? 2 : 1;
        struct outcomes one = append_range(txn, tenant_a, order[i], 1, tokens);
        outcomes.stored += one.stored;
        outcomes.duplicates += one.duplicates;
        outcomes.conflicts += one.conflicts;
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
    cr_expect_eq(outcomes.stored, 0);
    cr_expect_eq(outcomes.conflicts, (EVENTS + 6) / 7);
    cr_expect_eq(outcomes.duplicates, EVENTS - (EVENTS + 6) / 7);
    cr_expect_eq(event_count(tenant_a), EVENTS);
    cr_expect_eq(event_count(tenant_b), 100);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

/*
 * The first commit passes 20 % load of the first table, so a helper makes
 * the next one. The second fills the table past three quarters inside one
 * transaction, which then grows into the helper's table.
 */
Test(blocks, growth_inside_one_transaction)
{
    cr_assert_eq(commit_range(tenant_a, 0, 14000, 1).stored, 14000);
    struct outcomes big = commit_range(tenant_a, 14000, 40000, 1);
    cr_expect_eq(big.stored, 40000);
    struct outcomes again = commit_range(tenant_a, 0, 54000, 1);
    cr_expect_eq(again.duplicates, 54000);
    cr_expect_eq(again.stored, 0);
    cr_expect_eq(commit_range(tenant_a, 54000, 60000, 1).stored, 60000);
    cr_expect_eq(commit_range(tenant_a, 50000, 20000, 1).duplicates, 20000);
    cr_expect_eq(event_count(tenant_a), 114000);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

/* Copies a tenant's rollup rows of a period; *count_out gets their number. */
static struct rollup_row *rows_of(const uint8_t tenant[UUID_SIZE], uint32_t period,
                                  size_t *count_out)
{
    struct rollup_row *rows = NULL;
    cr_assert_eq(ledger_rollups(ledger, tenant, period, &rows, count_out), HM_OK);
    return rows;
}

/* Commits one event of a tenant with a model of its own, at `timestamp_us`. */
static void commit_model_event(const uint8_t tenant[UUID_SIZE], uint32_t number,
                               const char *model, int64_t timestamp_us)
{
    struct event event = numbered(tenant, number, 3);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "%s", model);
    event.timestamp_us = timestamp_us;
    cr_assert_eq(append_one(&event), APPEND_STORED);
}

Test(blocks, log_reads_match_after_fold)
{
    const int64_t july_2_us = JUNE_10_US + INT64_C(22) * 86400 * 1000000;
    commit_range(tenant_a, 1, 50, 7);
    commit_range(tenant_b, 1, 20, 2);
    /* Models that sort before and after m-small, and a month found only in the log. */
    commit_model_event(tenant_a, 1000, "a-first", JUNE_10_US);
    commit_model_event(tenant_a, 1001, "z-last", JUNE_10_US);
    commit_model_event(tenant_a, 1002, "m-small", july_2_us);
    commit_range(tenant_a, 51, 10, 7);

    size_t before_count = 0, after_count = 0;
    struct rollup_row *before = rows_of(tenant_a, 202406, &before_count);
    uint32_t *periods = NULL;
    size_t period_count = 0;
    cr_assert_eq(ledger_event_periods(ledger, tenant_a, 202412, &periods, &period_count), HM_OK);
    cr_assert_eq(period_count, 2);
    cr_assert_eq(periods[0], 202406);
    cr_assert_eq(periods[1], 202407);
    free(periods);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202407), HM_OK);

    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    struct rollup_row *after = rows_of(tenant_a, 202406, &after_count);
    cr_assert_eq(after_count, before_count);
    /* One row of inference events, and input and output tokens of three models, in key order. */
    cr_assert_eq(before_count, 7, "%zu rows", before_count);
    for (size_t i = 0; i < before_count; i++) {
        cr_assert_eq(before[i].meter, after[i].meter, "row %zu", i);
        cr_assert_str_eq(before[i].dimension, after[i].dimension, "row %zu", i);
        cr_assert(before[i].quantity == after[i].quantity, "row %zu", i);
        cr_assert_eq(before[i].event_count, after[i].event_count, "row %zu", i);
    }
    uint64_t events = 0;
    cr_assert(input_tokens(tenant_a, &events) == 60 * 7);
    cr_assert_eq(events, 60);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202407), HM_OK);
    cr_assert_eq(ledger_verify(ledger, tenant_b, 202406), HM_OK);
    /* A second fold finds the log empty. */
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    free(before);
    free(after);
}

Test(blocks, log_summary_follows_snapshots)
{
    /* Forty tenants, read one after the other from one snapshot's summary of the log. */
    enum { TENANTS = 40 };
    uint8_t tenants[TENANTS][UUID_SIZE];
    for (int t = 0; t < TENANTS; t++) {
        memcpy(tenants[t], tenant_a, UUID_SIZE);
        tenants[t][15] = (uint8_t)(100 + t);
        commit_range(tenants[t], 0, (uint32_t)(t + 1), 3);
    }
    for (int t = 0; t < TENANTS; t++) {
        uint64_t events = 0;
        cr_assert(input_tokens(tenants[t], &events) == (unsigned __int128)(t + 1) * 3,
                  "tenant %d", t);
        cr_assert_eq(events, (uint64_t)(t + 1), "tenant %d", t);
    }
    /* A commit makes a new snapshot: the next read sums the log again. */
    commit_range(tenants[7], 100, 5, 3);
    uint64_t events = 0;
    cr_assert(input_tokens(tenants[7], &events) == 13 * 3);
    cr_assert_eq(events, 13);
    /* So does a commit of another process. */
    commit_range(tenant_a, 0, 10, 1);
    cr_assert(input_tokens(tenant_a, &events) == 10);
    in_other_process(store_ten_more);
    cr_assert(input_tokens(tenant_a, &events) == 20);
    cr_assert_eq(events, 20);
    /* After a fold the rows alone give the same totals. */
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    cr_assert(input_tokens(tenants[39], &events) == 40 * 3);
    cr_assert(input_tokens(tenant_a, &events) == 20);
}

/* Stores events 10..19 of tenant_a and folds the rollup log into the rows. */
static int store_ten_more_and_fold(struct ledger *other)
{
    int rc = store_ten_more(other);
    return rc == HM_OK ? ledger_rollups_fold(other) : rc;
}

Test(blocks, log_summary_after_fold_elsewhere)
{
    /* This process sums a log of 10 events, then another process adds 10 and empties the log. */
    commit_range(tenant_a, 0, 10, 1);
    uint64_t events = 0;
    cr_assert(input_tokens(tenant_a, &events) == 10);
    in_other_process(store_ten_more_and_fold);
    /* A sum kept from the old snapshot would count the first 10 twice. */
    cr_assert(input_tokens(tenant_a, &events) == 20);
    cr_assert_eq(events, 20);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

/* A reader thread's tenant, and the reads that did not match their own snapshot. */
struct summary_reader {
    const uint8_t *tenant;
    uint64_t tokens; /* input tokens of each of the tenant's events */
    _Atomic int *stop;
    int reads;
    int mismatches;
    int failures;
};

static void *summary_reader_run(void *context)
{
    struct summary_reader *reader = context;
    uint64_t last_events = 0;
    while (!atomic_load(reader->stop)) {
        struct rollup_row *rows = NULL;
        size_t count = 0;
        if (ledger_rollups(ledger, reader->tenant, 202406, &rows, &count) != HM_OK ||
            ledger_verify(ledger, reader->tenant, 202406) != HM_OK) {
            free(rows);
            reader->failures++;
            continue;
        }
        for (size_t i = 0; i < count; i++) {
            if (rows[i].meter != ROLLUP_INPUT_TOKENS)
                continue;
            if (rows[i].quantity != (unsigned __int128)rows[i].event_count * reader->tokens ||
                rows[i].event_count < last_events)
                reader->mismatches++;
            last_events = rows[i].event_count;
        }
        free(rows);
        reader->reads++;
    }
    return NULL;
}

Test(blocks, log_summary_readers_in_threads)
{
    /*
     * Two threads read one tenant each while this thread commits past a
     * fold, so that their snapshots and the shared sum change under them.
     */
    _Atomic int stop = 0;
    struct summary_reader readers[2] = {
        { .tenant = tenant_a, .tokens = 3, .stop = &stop },
        { .tenant = tenant_b, .tokens = 5, .stop = &stop },
    };
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, summary_reader_run, &readers[i]), 0);
    for (uint32_t i = 0; i < 300; i++) {
        struct ledger_txn *txn;
        cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
        append_range(txn, tenant_a, i * 2, 2, 3);
        append_range(txn, tenant_b, i, 1, 5);
        cr_assert_eq(ledger_commit(txn), HM_OK);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(pthread_join(threads[i], NULL), 0);
        cr_expect_eq(readers[i].failures, 0, "reader %d: %d failed reads", i,
                     readers[i].failures);
        cr_expect_eq(readers[i].mismatches, 0, "reader %d: %d reads off their snapshot", i,
                     readers[i].mismatches);
        cr_expect_gt(readers[i].reads, 0, "reader %d never read", i);
    }
    uint64_t events = 0;
    cr_assert(input_tokens(tenant_a, &events) == 600 * 3);
    cr_assert_eq(events, 600);
    cr_assert(input_tokens(tenant_b, &events) == 300 * 5);
    cr_assert_eq(events, 300);
}

Test(blocks, log_folded_as_it_grows)
{
    for (uint32_t i = 0; i < 300; i++)
        commit_range(tenant_a, i, 1, 2);
    ledger_close(ledger);
    ledger = NULL;
    size_t logged = raw_entries("rollup_log");
    cr_assert_lt(logged, 256, "the log kept %zu records", logged);
    cr_assert_gt(raw_entries("rollups"), 0, "no fold wrote the rollup rows");
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    uint64_t events = 0;
    cr_assert(input_tokens(tenant_a, &events) == 600);
    cr_assert_eq(events, 300);
}

/* Commits `commits` transactions of one new event of tenant_a each, from event `first` on. */
static void commit_singles(uint32_t first, uint32_t commits, uint64_t tokens)
{
    for (uint32_t i = first; i < first + commits; i++)
        commit_range(tenant_a, i, 1, tokens);
}

static void expect_folds(uint64_t summed, uint64_t read)
{
    uint64_t got_summed = 0, got_read = 0;
    ledger_fold_counts(ledger, &got_summed, &got_read);
    cr_expect_eq(got_summed, summed, "%llu folds from the writer's sum, expected %llu",
                 (unsigned long long)got_summed, (unsigned long long)summed);
    cr_expect_eq(got_read, read, "%llu folds read the log, expected %llu",
                 (unsigned long long)got_read, (unsigned long long)read);
}

/* Expects tenant_a's input tokens and events, from the rows and the log, and from the events. */
static void expect_tokens(unsigned __int128 tokens, uint64_t events)
{
    uint64_t got = 0;
    cr_expect(input_tokens(tenant_a, &got) == tokens, "input tokens differ");
    cr_expect_eq(got, events, "%llu events, expected %llu", (unsigned long long)got,
                 (unsigned long long)events);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

Test(blocks, log_fold_from_writer_sum)
{
    commit_singles(0, 100, 2);
    /* Resends only: the commit logs nothing. */
    commit_range(tenant_a, 0, 50, 2);
    /*
     * Events of more models than a transaction sums in memory, so a record
     * is logged before the end, and then the transaction is aborted.
     */
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (uint32_t i = 0; i < 2100; i++) {
        struct event event = numbered(tenant_a, 100000 + i, 9);
        snprintf(event.u.inference.model, sizeof event.u.inference.model, "model-%u", i);
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        cr_assert_eq(ledger_append(txn, &event, record, (size_t)size), APPEND_STORED);
    }
    ledger_abort(txn);
    commit_singles(100, 500, 2);
    /* Two folds, both from the sum, which counts neither the resends nor the aborted events. */
    expect_folds(2, 0);
    expect_tokens(600 * 2, 600);
    cr_expect_eq(ledger_rollups_fold(ledger), HM_OK);
    expect_tokens(600 * 2, 600);
}

Test(blocks, log_fold_after_failed_commit)
{
    /* The first commit of this process fails after it wrote its log record. */
    cr_assert_eq(setenv("METER_TEST_FAIL_COMMITS", "1", 1), 0);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    append_range(txn, tenant_a, 0, 5, 2);
    cr_assert_eq(ledger_commit(txn), HM_ERR_STORAGE);
    commit_singles(0, 302, 2);
    expect_folds(1, 0);
    expect_tokens(302 * 2, 302);
}

Test(blocks, log_fold_after_another_writer)
{
    commit_singles(0, 10, 1);
    in_other_process(store_ten_more);
    /* The other process's record is not in this process's sum: the fold reads the log. */
    commit_singles(20, 300, 1);
    expect_folds(0, 1);
    expect_tokens(320, 320);
    commit_singles(320, 256, 1);
    expect_folds(1, 1);
    expect_tokens(576, 576);
}

/* Input tokens of the last of the five events that fold_and_commit_five commits. */
static uint64_t last_of_five_tokens = 7;

/*
 * Folds the log, then commits five events, one per transaction: four of 7
 * input tokens and one of last_of_five_tokens.
 */
static int fold_and_commit_five(struct ledger *other)
{
    int rc = ledger_rollups_fold(other);
    for (uint32_t i = 0; rc == HM_OK && i < 5; i++) {
        struct event event = numbered(tenant_a, 5000 + i, i < 4 ? 7 : last_of_five_tokens);
        int outcome = store_one(other, &event);
        if (outcome != APPEND_STORED)
            return outcome < 0 ? outcome : 1;
    }
    return rc;
}

Test(blocks, log_fold_after_same_records_elsewhere)
{
    /*
     * This process logs records 1 to 5. Another process folds them and logs
     * its own records 1 to 5, so the log's last number is the one this
     * process wrote last, but its bytes are not.
     */
    commit_singles(0, 5, 1);
    in_other_process(fold_and_commit_five);
    commit_singles(5, 300, 1);
    expect_folds(0, 1);
    expect_tokens(305 + 5 * 7, 310);
}

Test(blocks, log_fold_after_same_last_record)
{
    /*
     * As above, but the other process's last record has the bytes of this
     * process's last one: four events of 7 tokens, then one of 1 token.
     */
    commit_singles(0, 5, 1);
    last_of_five_tokens = 1;
    in_other_process(fold_and_commit_five);
    commit_singles(5, 300, 1);
    expect_folds(0, 1);
    expect_tokens(305 + 4 * 7 + 1, 310);
}

Test(blocks, log_fold_after_restart)
{
    commit_singles(0, 100, 3);
    ledger_close(ledger);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    commit_singles(100, 200, 3);
    expect_folds(0, 1);
    commit_singles(300, 256, 3);
    expect_folds(1, 1);
    expect_tokens(556 * 3, 556);
}

Test(blocks, subtract_beyond_transaction_fails)
{
    commit_range(tenant_a, 1, 1, 5);
    struct event event = numbered(tenant_a, 1, 5);
    struct rollup_deltas *not_stored = NULL;
    cr_assert_eq(rollup_deltas_create(&not_stored, 64), HM_OK);
    cr_assert_eq(rollup_deltas_add_event(not_stored, &event), HM_OK);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    /* The stored rollup contains the event, but this transaction added nothing to take away. */
    cr_assert_eq(ledger_rollups_apply(txn, not_stored, 1), HM_ERR_STORAGE);
    ledger_abort(txn);
    rollup_deltas_free(not_stored);
    uint64_t events = 0;
    cr_assert(input_tokens(tenant_a, &events) == 5);
    cr_assert_eq(events, 1);
}

static void cut_inside_change(uint8_t *copy, size_t *size)
{
    (void)copy;
    *size = 30;
}

static void empty_record(uint8_t *copy, size_t *size)
{
    (void)copy;
    *size = 0;
}

/* The first change of a record: key size, key, quantity, count. */
static size_t first_count_at(const uint8_t *copy)
{
    return 1 + copy[0] + 16;
}

static void zero_events(uint8_t *copy, size_t *size)
{
    (void)size;
    memset(copy + first_count_at(copy), 0, 8);
}

static void unknown_meter(uint8_t *copy, size_t *size)
{
    (void)size;
    copy[1 + UUID_SIZE + 4] = 99;
}

static void month_13(uint8_t *copy, size_t *size)
{
    (void)size;
    copy[1 + UUID_SIZE + 3] = 13; /* period 202413: the low byte of the big-endian number */
    copy[1 + UUID_SIZE + 2] = (uint8_t)(202413 >> 8);
}

static void short_row(uint8_t *copy, size_t *size)
{
    (void)copy;
    *size = 23;
}

/*
 * Damages the stored rollups with `change` on the first value of `table`,
 * then checks: reads and the fold fail, commits go on past the fold limit,
 * and `meterctl rollups rebuild` (ledger_rollups_rebuild) recounts them.
 */
static void damage_with(int in_rows, void (*damage)(void))
{
    commit_range(tenant_a, 1, 3, 1);
    if (in_rows)
        cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    ledger_close(ledger);
    ledger = NULL;
    damage();

    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    struct rollup_row *rows = NULL;
    size_t count = 0;
    if (!in_rows) {
        cr_expect_eq(ledger_rollups(ledger, tenant_a, 202406, &rows, &count), HM_ERR_STORAGE);
        cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_ERR_STORAGE);
        /* A fold must not write rows from a damaged log. */
        cr_expect_eq(ledger_rollups_fold(ledger), HM_ERR_STORAGE);
    }
    /* Past the fold limit, the commits of every tenant still store their events. */
    for (uint32_t i = 0; i < 300; i++)
        commit_range(i % 2 ? tenant_a : tenant_b, 100 + i, 1, 1);
    cr_assert_eq(event_count(tenant_a), 153);
    cr_assert_eq(event_count(tenant_b), 150);

    uint64_t events = 0;
    size_t row_count = 0;
    cr_assert_eq(ledger_rollups_rebuild(ledger, &events, &row_count), HM_OK);
    cr_assert_eq(events, 303);
    /* Per tenant: inference events, input and output tokens of m-small. */
    cr_assert_eq(row_count, 6);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    cr_assert_eq(ledger_verify(ledger, tenant_b, 202406), HM_OK);
    uint64_t counted = 0;
    cr_assert(input_tokens(tenant_a, &counted) == 153);
    cr_assert_eq(counted, 153);
    /* Folds work again. */
    for (uint32_t i = 0; i < 300; i++)
        commit_range(tenant_b, 1000 + i, 1, 1);
    ledger_close(ledger);
    ledger = NULL;
    cr_assert_lt(raw_entries("rollup_log"), 256);
}

static const char *damaged_table;
static void (*damage_change)(uint8_t *, size_t *);

static void rewrite_first_value(void)
{
    raw_first_value_rewrite(damaged_table, damage_change);
}

/* damage_with, where the damage is `change` on the first value of `table`. */
static void damage_then_rebuild(const char *table, void (*change)(uint8_t *, size_t *))
{
    damaged_table = table;
    damage_change = change;
    damage_with(strcmp(table, "rollups") == 0, rewrite_first_value);
}

static void quantity_above_its_events(uint8_t *copy, size_t *size)
{
    (void)size;
    memset(copy + first_count_at(copy) - 8, 0xff, 8);
}

static void events_near_overflow(uint8_t *copy, size_t *size)
{
    (void)size;
    memset(copy + first_count_at(copy), 0xff, 8);
}

/* A record of 1 change of 1 event, as a commit writes it, under the log key `key`. */
static void logged_record_put(const uint8_t *key, size_t key_size)
{
    uint8_t value[1 + UUID_SIZE + 5 + 7 + 24] = { 0 };
    value[0] = UUID_SIZE + 5 + 7;
    memcpy(value + 1, tenant_a, UUID_SIZE);
    const uint8_t june[4] = { 0, 0x03, 0x16, 0x26 }; /* 202406, big-endian */
    memcpy(value + 1 + UUID_SIZE, june, 4);
    value[1 + UUID_SIZE + 4] = 2; /* input tokens */
    memcpy(value + 1 + UUID_SIZE + 5, "m-small", 7);
    value[1 + UUID_SIZE + 5 + 7] = 1;      /* quantity 1 */
    value[1 + UUID_SIZE + 5 + 7 + 16] = 1; /* 1 event */
    raw_put("rollup_log", key, key_size, value, sizeof value);
}

static void short_key_last(void)
{
    const uint8_t key[7] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    logged_record_put(key, sizeof key);
}

static void highest_key_last(void)
{
    uint8_t key[8];
    memset(key, 0xff, sizeof key);
    logged_record_put(key, sizeof key);
}

Test(blocks, oversized_quantity_rebuilt)
{
    damage_then_rebuild("rollup_log", quantity_above_its_events);
}

Test(blocks, events_near_overflow_rebuilt)
{
    damage_then_rebuild("rollup_log", events_near_overflow);
}

Test(blocks, short_tail_key_rebuilt)
{
    damage_with(0, short_key_last);
}

Test(blocks, highest_tail_key_rebuilt)
{
    damage_with(0, highest_key_last);
}

Test(blocks, cut_log_record_rebuilt)
{
    damage_then_rebuild("rollup_log", cut_inside_change);
}

Test(blocks, empty_log_record_rebuilt)
{
    damage_then_rebuild("rollup_log", empty_record);
}

Test(blocks, change_of_no_events_rebuilt)
{
    damage_then_rebuild("rollup_log", zero_events);
}

Test(blocks, unknown_meter_rebuilt)
{
    damage_then_rebuild("rollup_log", unknown_meter);
}

Test(blocks, month_13_rebuilt)
{
    damage_then_rebuild("rollup_log", month_13);
}

Test(blocks, short_rollup_row_rebuilt)
{
    damage_then_rebuild("rollups", short_row);
}

/* Rebuilds the rollups and checks that they count the 303 stored events. */
static int rebuild_all_303(struct ledger *other)
{
    uint64_t events = 0;
    size_t rows = 0;
    int rc = ledger_rollups_rebuild(other, &events, &rows);
    return rc == HM_OK && events != 303 ? HM_ERR_CONFLICT : rc;
}

Test(blocks, damaged_log_fails_every_read)
{
    /* A failed sum is not kept: each read, of any tenant, walks the log again and fails. */
    commit_range(tenant_a, 1, 3, 1);
    commit_range(tenant_b, 1, 3, 1);
    ledger_reopen_rewritten("rollup_log", unknown_meter);
    for (int round = 0; round < 3; round++) {
        struct rollup_row *rows = NULL;
        size_t count = 0;
        cr_expect_eq(ledger_rollups(ledger, tenant_a, 202406, &rows, &count), HM_ERR_STORAGE,
                     "round %d", round);
        cr_expect_eq(ledger_rollups(ledger, tenant_b, 202406, &rows, &count), HM_ERR_STORAGE,
                     "round %d", round);
        uint32_t *periods = NULL;
        cr_expect_eq(ledger_event_periods(ledger, tenant_b, 202412, &periods, &count),
                     HM_ERR_STORAGE, "round %d", round);
        /* A commit in between makes a new snapshot with the same damage. */
        commit_range(tenant_b, 10 + (uint32_t)round, 1, 1);
    }
}

Test(blocks, other_process_rebuild_resumes_folds)
{
    commit_range(tenant_a, 1, 3, 1);
    ledger_reopen_rewritten("rollup_log", cut_inside_change);
    /* This process finds the damage at the fold limit and stops folding. */
    for (uint32_t i = 0; i < 300; i++)
        commit_range(tenant_a, 100 + i, 1, 1);

    /* Another process rebuilds, as `meterctl rollups rebuild` beside a running meterd would. */
    in_other_process(rebuild_all_303);

    /* The log was emptied by the rebuild, so this process folds again at the limit. */
    for (uint32_t i = 0; i < 300; i++)
        commit_range(tenant_a, 1000 + i, 1, 1);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    uint64_t counted = 0;
    cr_assert(input_tokens(tenant_a, &counted) == 603);
    ledger_close(ledger);
    ledger = NULL;
    cr_assert_lt(raw_entries("rollup_log"), 256);
    cr_assert_gt(raw_entries("rollups"), 0);
}
