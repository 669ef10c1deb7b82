/*
 * Event blocks and the writer's id index: duplicates found across blocks and
 * inside the pending block, aborts that roll the index back (also after it
 * grew), appends by another process, rollups summed per transaction, and
 * corrupt blocks reported as errors.
 */
#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

static char dir[256];
static struct ledger *ledger;

static const uint8_t tenant_a[UUID_SIZE] = { 0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };
static const uint8_t tenant_b[UUID_SIZE] = { 0xb0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

/* 2024-06-10T12:00:00Z */
#define JUNE_10_US (INT64_C(1718020800) * 1000000)

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-blocks-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
}

static void teardown(void)
{
    ledger_close(ledger);
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(blocks, .init = setup, .fini = teardown);

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

Test(blocks, append_by_another_process_is_seen)
{
    commit_range(tenant_a, 0, 10, 1);
    fflush(NULL);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        /* The child opens the ledger on its own and stores events 10..19. */
        struct ledger *other;
        if (ledger_open(&other, dir, NULL) != HM_OK)
            _exit(2);
        struct ledger_txn *txn;
        int rc = ledger_begin(other, &txn);
        for (uint32_t i = 10; rc == HM_OK && i < 20; i++) {
            struct event event = numbered(tenant_a, i, 1);
            uint8_t record[RECORD_SIZE_MAX];
            int size = record_encode(&event, record);
            rc = ledger_append(txn, &event, record, (size_t)size) == APPEND_STORED ? HM_OK : 1;
        }
        if (rc == HM_OK)
            rc = ledger_commit(txn);
        ledger_close(other);
        _exit(rc == HM_OK ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);

    /* This process's index predates the child's events; they must still be duplicates. */
    struct outcomes again = commit_range(tenant_a, 0, 25, 1);
    cr_expect_eq(again.duplicates, 20);
    cr_expect_eq(again.stored, 5);
    cr_expect_eq(event_count(tenant_a), 25);
    uint64_t total = 0;
    cr_assert_eq(ledger_events_total(ledger, &total), HM_OK);
    cr_expect_eq(total, 25);
}

Test(blocks, corrupt_block_is_an_error)
{
    commit_range(tenant_a, 0, 3, 1);
    ledger_close(ledger);
    ledger = NULL;

    /* Claims four records in a block of three, behind the ledger's back. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi blocks;
    MDB_cursor *cursor;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "blocks", 0, &blocks), 0);
    cr_assert_eq(mdb_cursor_open(txn, blocks, &cursor), 0);
    MDB_val key, value;
    cr_assert_eq(mdb_cursor_get(cursor, &key, &value, MDB_FIRST), 0);
    uint8_t *copy = malloc(value.mv_size);
    cr_assert_not_null(copy);
    memcpy(copy, value.mv_data, value.mv_size);
    copy[0] = 4;
    MDB_val changed = { value.mv_size, copy };
    cr_assert_eq(mdb_cursor_put(cursor, &key, &changed, MDB_CURRENT), 0);
    mdb_cursor_close(cursor);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);

    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
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
