/*
 * Preloaded into meterctl by tests (LD_PRELOAD): every cursor read and
 * every mdb_get of the LMDB table named by the environment variable
 * HM_TEST_FAILING_TABLE fails with MDB_CORRUPTED, as a damaged page would. The table is recognized by
 * the handle that mdb_dbi_open returns for its name.
 */
#include <dlfcn.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>

static MDB_dbi failing_dbi;
static int failing_dbi_known;

int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
{
    static int (*real_open)(MDB_txn *, const char *, unsigned int, MDB_dbi *);
    if (real_open == NULL)
        real_open = (int (*)(MDB_txn *, const char *, unsigned int, MDB_dbi *))dlsym(
            RTLD_NEXT, "mdb_dbi_open");
    int rc = real_open(txn, name, flags, dbi);
    const char *failing = getenv("HM_TEST_FAILING_TABLE");
    if (rc == 0 && name != NULL && failing != NULL && strcmp(name, failing) == 0) {
        failing_dbi = *dbi;
        failing_dbi_known = 1;
    }
    return rc;
}

int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)
{
    static int (*real_get)(MDB_cursor *, MDB_val *, MDB_val *, MDB_cursor_op);
    if (real_get == NULL)
        real_get = (int (*)(MDB_cursor *, MDB_val *, MDB_val *, MDB_cursor_op))dlsym(
            RTLD_NEXT, "mdb_cursor_get");
    if (failing_dbi_known && mdb_cursor_dbi(cursor) == failing_dbi)
        return MDB_CORRUPTED;
    return real_get(cursor, key, data, op);
}

int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
{
    static int (*real_get)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *);
    if (real_get == NULL)
        real_get = (int (*)(MDB_txn *, MDB_dbi, MDB_val *, MDB_val *))dlsym(RTLD_NEXT, "mdb_get");
    if (failing_dbi_known && dbi == failing_dbi)
        return MDB_CORRUPTED;
    return real_get(txn, dbi, key, data);
}
