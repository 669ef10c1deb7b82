/*
 * The fixture of the ledger's test suites: a fresh ledger in a temporary
 * directory for each test, two tenants and a timestamp in June 2024.
 *
 * The raw_ helpers change or count a table of the closed ledger with LMDB
 * alone, as damage or an older build would leave it. in_other_process runs
 * work on the ledger from a child process, as another meterd or meterctl.
 *
 * A suite includes this file once and names its directory:
 *
 *     static void setup(void) { ledger_fixture_open("blocks"); }
 *     TestSuite(blocks, .init = setup, .fini = ledger_fixture_remove);
 */
#ifndef HM_TEST_LEDGER_FIXTURE_H
#define HM_TEST_LEDGER_FIXTURE_H

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

/* Opens a new ledger in /tmp/hm-test-SUITE-XXXXXX. */
static inline void ledger_fixture_open(const char *suite)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-%s-XXXXXX", suite);
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
}

/* Closes the ledger, if open, and removes its directory. */
static inline void ledger_fixture_remove(void)
{
    ledger_close(ledger);
    ledger = NULL;
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

/*
 * Runs `work` in a child process on a ledger of its own, opened on `dir`,
 * as another meterd or meterctl would, and checks that it returned HM_OK.
 */
static inline void in_other_process(int (*work)(struct ledger *other))
{
    fflush(NULL);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        struct ledger *other;
        if (ledger_open(&other, dir, NULL) != HM_OK)
            _exit(2);
        int rc = work(other);
        ledger_close(other);
        _exit(rc == HM_OK ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}

/*
 * Stores one event through `target` in a transaction of its own, without
 * asserts, so that a child process can call it. Returns the append_outcome,
 * or a negative status when the append or the commit failed.
 */
static inline int store_one(struct ledger *target, const struct event *event)
{
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(event, record);
    if (size <= 0)
        return HM_ERR_INVALID;
    struct ledger_txn *txn = NULL;
    int rc = ledger_begin(target, &txn);
    if (rc != HM_OK)
        return rc;
    int outcome = ledger_append(txn, event, record, (size_t)size);
    if (outcome < 0) {
        ledger_abort(txn);
        return outcome;
    }
    rc = ledger_commit(txn);
    return rc == HM_OK ? outcome : rc;
}

/* Stores one event in a transaction of its own and returns its append_outcome. */
static inline int append_one(const struct event *event)
{
    int outcome = store_one(ledger, event);
    cr_assert_geq(outcome, 0, "storing an event failed: %d", outcome);
    return outcome;
}

/* Opens the closed ledger with LMDB alone and begins a write transaction on `table`. */
static inline void raw_begin(const char *table, MDB_env **env, MDB_txn **txn, MDB_dbi *dbi)
{
    cr_assert_eq(mdb_env_create(env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(*env, 64), 0);
    cr_assert_eq(mdb_env_open(*env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(*env, NULL, 0, txn), 0);
    cr_assert_eq(mdb_dbi_open(*txn, table, 0, dbi), 0);
}

/*
 * Rewrites the first value of `table` in the closed ledger: `change` gets a
 * copy and its size, and may shorten it.
 */
static inline void raw_first_value_rewrite(const char *table,
                                           void (*change)(uint8_t *copy, size_t *size))
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cursor;
    raw_begin(table, &env, &txn, &dbi);
    cr_assert_eq(mdb_cursor_open(txn, dbi, &cursor), 0);
    MDB_val key, value;
    cr_assert_eq(mdb_cursor_get(cursor, &key, &value, MDB_FIRST), 0, "table %s is empty", table);
    uint8_t *copy = malloc(value.mv_size);
    cr_assert_not_null(copy);
    memcpy(copy, value.mv_data, value.mv_size);
    size_t size = value.mv_size;
    change(copy, &size);
    MDB_val changed = { size, copy };
    cr_assert_eq(mdb_cursor_put(cursor, &key, &changed, MDB_CURRENT), 0);
    mdb_cursor_close(cursor);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);
}

/* Closes the ledger, rewrites the first value of `table` as raw_first_value_rewrite does, and reopens it. */
static inline void ledger_reopen_rewritten(const char *table,
                                           void (*change)(uint8_t *copy, size_t *size))
{
    ledger_close(ledger);
    ledger = NULL;
    raw_first_value_rewrite(table, change);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
}

/* Puts a record into `table` of the closed ledger. */
static inline void raw_put(const char *table, const void *key, size_t key_size, const void *value,
                           size_t value_size)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    raw_begin(table, &env, &txn, &dbi);
    MDB_val key_value = { key_size, (void *)key }, data = { value_size, (void *)value };
    cr_assert_eq(mdb_put(txn, dbi, &key_value, &data, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Returns the number of entries of `table` in the closed ledger. */
static inline size_t raw_entries(const char *table)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat stat;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_open(env, dir, MDB_RDONLY, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, table, 0, &dbi), 0);
    cr_assert_eq(mdb_stat(txn, dbi, &stat), 0);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return stat.ms_entries;
}

#endif
