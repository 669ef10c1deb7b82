#include "ledger.h"
#include "ledger_private.h"

#include "dedup.h"
#include "deltas_private.h"

#include "common/log.h"
#include "common/status.h"
#include "ingest/wire.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

_Thread_local struct log_limit ledger_error_log = LOG_LIMIT_INIT(10, 10);
_Thread_local int ledger_full_logged;

/* Cause and fix of the last failed ledger_open, for ledger_open_error. */
static char open_error[1024];

const char *ledger_open_error(void)
{
    return open_error;
}

/*
 * Records (and logs) why the ledger in `dir` could not be opened, naming the
 * fix for the causes that an operator can remove.
 */
static void open_error_set(const char *dir, int error)
{
    if (error == ENOSPC)
        snprintf(open_error, sizeof open_error, "no space left on device in %s; free disk space "
                 "on that file system, or give a data directory on one with free space", dir);
    else if (error == EROFS)
        snprintf(open_error, sizeof open_error, "%s is on a read-only file system; remount it "
                 "read-write (mount -o remount,rw), or copy the data directory to a writable "
                 "one and give that", dir);
    else if (error == EACCES || error == EPERM)
        snprintf(open_error, sizeof open_error, "permission denied on %s or its files; run as "
                 "the user that owns them, or fix their permissions", dir);
    else if (error == MDB_MAP_FULL)
        snprintf(open_error, sizeof open_error, "the ledger map in %s is full; give a larger "
                 "--map-size", dir);
    else
        snprintf(open_error, sizeof open_error, "%s: %s", dir, mdb_strerror(error));
    log_error("ledger", "cannot open the ledger: %s", open_error);
}

/* Bytes of the lock file to allocate before LMDB maps it; it needs about 16 KiB for 256 readers. */
#define LOCK_FILE_RESERVE (64 * 1024)

/*
 * Allocates disk blocks for a new LMDB lock file before mdb_env_open maps
 * it. LMDB sizes the lock file with ftruncate and writes it through a shared
 * mapping, so on a full file system its first write raises SIGBUS instead of
 * returning an error. FALLOC_FL_KEEP_SIZE leaves the file size to LMDB.
 * Returns 0, or ENOSPC when the disk is full. An existing lock file is left
 * alone: its first pages were written when it was made, and a full disk must
 * not keep readers out. A file system without fallocate, or a read-only one,
 * is left to LMDB.
 */
static int lock_file_reserve(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == ENOSPC || errno == EDQUOT ? ENOSPC : 0;
    struct stat status;
    int rc = 0;
    if (fstat(fd, &status) == 0 && status.st_size == 0 &&
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, LOCK_FILE_RESERVE) != 0)
        rc = errno;
    close(fd);
    return rc == ENOSPC || rc == EDQUOT ? ENOSPC : 0;
}

static const char *const table_names[TABLE_COUNT] = {
    "events", "rollups", "storage", "tenants", "names",
    "keys",   "pricebooks", "periods", "invoices", "meta",
    "tenant_settings", "issuers", "documents", "book_snapshots", "billed", "credits",
    "exports",
    "arrivals", "blocks", "rollup_log",
};

/* Free space below which a failed write is blamed on a full disk. */
#define DISK_FULL_BYTES (1024 * 1024)

/* Returns 1 when the file system of `dir` has less than DISK_FULL_BYTES free. */
static int dir_space_low(const char *dir)
{
    struct statvfs space;
    if (statvfs(dir, &space) != 0)
        return 0;
    return (unsigned long long)space.f_bavail * space.f_frsize < DISK_FULL_BYTES;
}

/*
 * Layout of the stored events. 1: one record per event in the events
 * table. 2: blocks per tenant (blocks table), read beside the records of
 * layout 1. 3: rollup changes in the rollup log until they are folded into
 * the rollup rows (rollup_log.c). 4: key records whose signing key is
 * wrapped with the master key (records.c). An older build cannot check
 * frames signed with such a key, and it would store new keys unwrapped.
 *
 * The meta record "layout" contains the newest layout of any build that
 * wrote to this ledger. An older build rejects the ledger: it would store
 * resent events where the newer build does not look and count them twice,
 * or read the rollup rows without the log. Builds from before the record
 * existed cannot check it.
 */
#define LEDGER_LAYOUT 4
static const char layout_name[] = "layout";

/*
 * Reads the layout record in the transaction that opens the ledger and
 * writes it when the ledger has none or an older one (not in a read-only
 * open). Returns 0, -1 for a ledger of a newer layout or a damaged record
 * (open_error describes which), or an LMDB error.
 */
static int layout_check(struct ledger *ledger, MDB_txn *txn, const char *dir, int read_only)
{
    if (ledger->table_missing[TABLE_META])
        return 0;
    MDB_val key = { sizeof layout_name - 1, (void *)layout_name }, value;
    uint32_t layout = 0;
    int rc = mdb_get(txn, ledger->tables[TABLE_META], &key, &value);
    if (rc == 0 && value.mv_size != sizeof layout) {
        snprintf(open_error, sizeof open_error, "the layout record of the ledger in %s has %zu "
                 "bytes, expected %zu: the ledger is damaged; restore the data directory from "
                 "a backup", dir, value.mv_size, sizeof layout);
        log_error("ledger", "cannot open the ledger: %s", open_error);
        return -1;
    }
    if (rc == 0)
        memcpy(&layout, value.mv_data, sizeof layout);
    else if (rc != MDB_NOTFOUND)
        return rc;
    if (layout > LEDGER_LAYOUT) {
        snprintf(open_error, sizeof open_error, "the ledger in %s has layout %u, written by a "
                 "newer Harpoon Meter; this build knows layouts up to %u and would miss or "
                 "double its events; run the newer meterd and meterctl", dir, layout,
                 LEDGER_LAYOUT);
        log_error("ledger", "cannot open the ledger: %s", open_error);
        return -1;
    }
    if (read_only || layout == LEDGER_LAYOUT)
        return 0;
    layout = LEDGER_LAYOUT;
    value = (MDB_val){ sizeof layout, &layout };
    return mdb_put(txn, ledger->tables[TABLE_META], &key, &value, 0);
}

int ledger_open(struct ledger **out, const char *dir, const struct ledger_options *options)
{
    open_error[0] = '\0';
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        open_error_set(dir, errno);
        return HM_ERR_IO;
    }
    int reserve_rc = lock_file_reserve(dir);
    if (reserve_rc != 0) {
        open_error_set(dir, reserve_rc);
        return HM_ERR_FULL;
    }
    struct ledger *ledger = calloc(1, sizeof *ledger);
    if (ledger == NULL)
        return HM_ERR_NOMEM;
    if (rollup_log_summary_create(ledger) != HM_OK) {
        free(ledger);
        return HM_ERR_NOMEM;
    }
    ledger->index_memory = options && options->index_memory ? options->index_memory
                                                             : LEDGER_INDEX_MEMORY_DEFAULT;
    ledger->key_log = (struct log_limit)LOG_LIMIT_INIT(10, 60);

    /*
     * An existing ledger keeps the map size recorded in it unless the caller
     * sets one, so that a meterctl beside meterd never changes the operator's
     * limit. A new ledger starts at the default.
     */
    char data_path[4096];
    snprintf(data_path, sizeof data_path, "%s/data.mdb", dir);
    size_t map_size = options && options->map_size ? options->map_size : 0;
    if (map_size == 0 && access(data_path, F_OK) != 0)
        map_size = LEDGER_MAP_SIZE_DEFAULT;
    unsigned flags = MDB_NOTLS | (options && options->read_only ? MDB_RDONLY : 0);
    int rc = mdb_env_create(&ledger->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(ledger->env, TABLE_COUNT);
    if (rc == 0 && map_size > 0)
        rc = mdb_env_set_mapsize(ledger->env, map_size);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(ledger->env, 256);
    if (rc == 0)
        rc = mdb_env_open(ledger->env, dir, flags, 0600);
    if (rc != 0) {
        open_error_set(dir, rc);
        goto fail_env;
    }

    /* Frees reader slots left by processes that died inside a read transaction. */
    int stale_readers = 0;
    mdb_reader_check(ledger->env, &stale_readers);
    if (stale_readers > 0)
        log_warn("ledger", "cleared %d reader slots of dead processes in %s", stale_readers, dir);

    MDB_txn *txn = NULL;
    rc = mdb_txn_begin(ledger->env, NULL, options && options->read_only ? MDB_RDONLY : 0, &txn);
    if (rc != 0)
        goto fail_open;
    for (int i = 0; i < TABLE_COUNT; i++) {
        int read_only = options && options->read_only;
        rc = mdb_dbi_open(txn, table_names[i], read_only ? 0 : MDB_CREATE, &ledger->tables[i]);
        /* A read-only open cannot add a table that an older ledger lacks: it reads as empty. */
        if (rc == MDB_NOTFOUND && read_only) {
            log_debug("ledger", "the ledger in %s has no table \"%s\"; it reads as empty",
                      dir, table_names[i]);
            ledger->table_missing[i] = 1;
            rc = 0;
            continue;
        }
        if (rc != 0) {
            mdb_txn_abort(txn);
            goto fail_open;
        }
    }
    rc = layout_check(ledger, txn, dir, options && options->read_only);
    if (rc == -1) {
        mdb_txn_abort(txn);
        rc = MDB_INCOMPATIBLE;
        goto fail_env;
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        goto fail_open;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        goto fail_open;
    if (!(options && options->read_only) && (rc = arrivals_backfill(ledger)) != HM_OK) {
        snprintf(open_error, sizeof open_error, "numbering the stored events of the ledger in "
                 "%s failed (%s); the ledger error logged above names the cause", dir,
                 hm_status_str(rc));
        mdb_env_close(ledger->env);
        rollup_log_summary_free(ledger);
        free(ledger);
        return rc;
    }
    *out = ledger;
    return HM_OK;

fail_open:
    /* LMDB reports a write cut short by a full disk as EIO. */
    open_error_set(dir, rc == EIO && dir_space_low(dir) ? ENOSPC : rc);
fail_env:
    mdb_env_close(ledger->env);
    rollup_log_summary_free(ledger);
    free(ledger);
    return rc == MDB_MAP_FULL || rc == ENOSPC ? HM_ERR_FULL : HM_ERR_STORAGE;
}

const char *ledger_path(const struct ledger *ledger)
{
    const char *path = NULL;
    /* LMDB keeps the path given to mdb_env_open. The call fails only for a NULL argument. */
    if (mdb_env_get_path(ledger->env, &path) != 0)
        return ".";
    return path;
}

void ledger_close(struct ledger *ledger)
{
    if (ledger == NULL)
        return;
    if (ledger->lookup_txn)
        mdb_txn_abort(ledger->lookup_txn);
    mdb_env_close(ledger->env);
    dedup_free(ledger->dedup);
    free(ledger->block);
    rollup_deltas_free(ledger->deltas);
    rollup_log_writer_free(ledger);
    rollup_log_summary_free(ledger);
    master_key_clear(&ledger->master);
    free(ledger);
}

/* Microseconds from `start` to now on the monotonic clock. */
static uint64_t elapsed_us(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)((now.tv_sec - start->tv_sec) * 1000000 +
                      (now.tv_nsec - start->tv_nsec) / 1000);
}

int ledger_begin(struct ledger *ledger, struct ledger_txn **out)
{
    struct ledger_txn *txn = malloc(sizeof *txn);
    if (txn == NULL)
        return HM_ERR_NOMEM;
    /* LMDB's write lock: another process's write transaction makes this wait. */
    struct timespec lock_start;
    clock_gettime(CLOCK_MONOTONIC, &lock_start);
    int rc = txn_begin(ledger, 0, &txn->txn);
    ledger->lock_us_last = elapsed_us(&lock_start);
    if (rc != 0) {
        free(txn);
        return status_of(rc, "begin write transaction");
    }
    txn->ledger = ledger;
    txn->appending = 0;
    txn->appended = 0;
    txn->block_count = 0;
    txn->block_size = 0;
    memset(txn->seq_cache, 0, sizeof txn->seq_cache);
    txn->found.valid = 0;
    txn->log_records = 0;
    txn->log_base = 0;
    txn->log_folded = 0;
    *out = txn;
    return HM_OK;
}

/*
 * Returns 1 when the file system of the ledger has less than DISK_FULL_BYTES
 * free. LMDB reports a write cut short by a full disk as EIO, not ENOSPC,
 * and a full disk must hold frames back (HM_ERR_FULL) rather than fail them.
 */
static int disk_full(struct ledger *ledger)
{
    const char *dir = NULL;
    return mdb_env_get_path(ledger->env, &dir) == 0 && dir_space_low(dir);
}

#ifndef HM_NO_TEST_HOOKS
/*
 * Test hook for the failure paths of a commit, read from the environment at
 * the first commit of the process: METER_TEST_FAIL_COMMITS=N makes the next N
 * commits abort their transaction and return HM_ERR_STORAGE, as a failed
 * disk write would, and METER_TEST_COMMIT_DELAY_MS=MS makes each of those
 * failing commits take MS milliseconds first, so that a test can send while
 * one runs. METER_TEST_FULL_COMMITS=N makes the next N commits return
 * HM_ERR_FULL instead, as a full map would. METER_TEST_SLOW_COMMITS=N makes
 * the next N commits take METER_TEST_COMMIT_DELAY_MS and then succeed, as a
 * disk that stalls a sync would. Returns 0 to commit, or the
 * status to return. Building with -DHM_NO_TEST_HOOKS leaves the hook out.
 */
static int commit_fault_inject(MDB_txn *txn)
{
    static int loaded;
    static long failures_left;
    static long full_left;
    static long slow_left;
    static long delay_ms;
    if (!loaded) {
        loaded = 1;
        const char *failures = getenv("METER_TEST_FAIL_COMMITS");
        const char *full = getenv("METER_TEST_FULL_COMMITS");
        const char *delay = getenv("METER_TEST_COMMIT_DELAY_MS");
        const char *slow = getenv("METER_TEST_SLOW_COMMITS");
        slow_left = slow ? strtol(slow, NULL, 10) : 0;
        failures_left = failures ? strtol(failures, NULL, 10) : 0;
        full_left = full ? strtol(full, NULL, 10) : 0;
        delay_ms = delay ? strtol(delay, NULL, 10) : 0;
        if (failures_left > 0)
            log_warn("ledger", "test hook: the next %ld commits fail (METER_TEST_FAIL_COMMITS)",
                     failures_left);
        if (full_left > 0)
            log_warn("ledger", "test hook: the next %ld commits find the map full "
                     "(METER_TEST_FULL_COMMITS)", full_left);
        if (slow_left > 0)
            log_warn("ledger", "test hook: the next %ld commits take %ld ms "
                     "(METER_TEST_SLOW_COMMITS)", slow_left, delay_ms);
    }
    if (full_left > 0) {
        full_left--;
        mdb_txn_abort(txn);
        return status_of(MDB_MAP_FULL, "commit (METER_TEST_FULL_COMMITS)");
    }
    if (failures_left <= 0 && slow_left <= 0)
        return 0;
    if (delay_ms > 0) {
        struct timespec pause = { delay_ms / 1000, (delay_ms % 1000) * 1000000 };
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
            continue;
    }
    if (failures_left <= 0) {
        slow_left--;
        return 0;
    }
    failures_left--;
    mdb_txn_abort(txn);
    log_error("ledger", "commit failed: injected by METER_TEST_FAIL_COMMITS (%ld more to fail)",
              failures_left);
    return HM_ERR_STORAGE;
}
#endif

/* ---- Writer state: the id index, the pending block, the rollup changes ---- */

/*
 * Meta record of the appends: a generation that every transaction storing
 * new events increments, and the number of events in blocks. A process
 * whose id index reflects another generation rebuilds it, so that events
 * appended by another process are never missed.
 */
static const char append_state_name[] = "append_state";
#define DEDUP_STALE UINT64_MAX

struct append_state {
    uint64_t generation;
    uint64_t block_events;
};

static int append_state_get(struct ledger *ledger, MDB_txn *txn, struct append_state *out)
{
    MDB_val key = { sizeof append_state_name - 1, (void *)append_state_name }, value;
    memset(out, 0, sizeof *out);
    int rc = table_get(txn, ledger, TABLE_META, &key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_OK;
    if (rc != 0)
        return status_of(rc, "read append state");
    if (value.mv_size != sizeof *out) {
        log_error("ledger", "append state record of size %zu, expected %zu", value.mv_size,
                  sizeof *out);
        return HM_ERR_STORAGE;
    }
    memcpy(out, value.mv_data, sizeof *out);
    return HM_OK;
}

static int append_state_put(struct ledger_txn *txn, const struct append_state *state)
{
    MDB_val key = { sizeof append_state_name - 1, (void *)append_state_name };
    MDB_val value = { sizeof *state, (void *)state };
    int rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_META], &key, &value, 0);
    return rc == 0 ? HM_OK : status_of(rc, "write append state");
}

/* Allocates the writer state on the first append of the process. */
static int writer_alloc(struct ledger *ledger)
{
    if (ledger->dedup != NULL)
        return HM_OK;
    ledger->block = malloc(BLOCK_BYTES_MAX);
    int rc = ledger->block ? rollup_deltas_create(&ledger->deltas, ROLLUP_DELTAS_MAX)
                           : HM_ERR_NOMEM;
    if (rc == HM_OK)
        rc = rollup_log_writer_create(ledger);
    if (rc == HM_OK)
        rc = dedup_create(&ledger->dedup);
    if (rc != HM_OK) {
        free(ledger->block);
        rollup_deltas_free(ledger->deltas);
        rollup_log_writer_free(ledger);
        ledger->block = NULL;
        ledger->deltas = NULL;
        return rc;
    }
    ledger->dedup->generation = DEDUP_STALE;
    if (dedup_spill_to(ledger->dedup, ledger_path(ledger), ledger->index_memory) != HM_OK)
        log_warn("ledger", "cannot open the data directory %s to write runs of the event id "
                 "index (%s); the index stays in memory and grows with the events",
                 ledger_path(ledger), strerror(errno));
    return HM_OK;
}

/* Logs a failure of the id index's spill thread that `take` returns, once per run of them. */
static void index_failure_log(struct ledger *ledger,
                              int (*take)(struct dedup_index *index, int *errno_out),
                              const char *failed, const char *consequence)
{
    int sys = 0;
    int rc = take(ledger->dedup, &sys);
    if (rc != HM_OK)
        log_warn("ledger", "%s in %s: %s; %s. Free space there, or make it writable", failed,
                 ledger_path(ledger), sys != 0 ? strerror(sys) : hm_status_str(rc), consequence);
}

/*
 * Readies the writer state for the first append of a transaction: rebuilds
 * the id index when it does not reflect the stored events.
 */
static int writer_prepare(struct ledger_txn *txn)
{
    struct ledger *ledger = txn->ledger;
    int rc = writer_alloc(ledger);
    if (rc != HM_OK)
        return rc;
    struct append_state state;
    if ((rc = append_state_get(ledger, txn->txn, &state)) != HM_OK)
        return rc;
    if (ledger->dedup->generation != state.generation) {
        /* Another process changed the ledger, or the index is stale: so is the sum of the log. */
        ledger->log_sum_valid = 0;
        struct timespec started;
        clock_gettime(CLOCK_MONOTONIC, &started);
        MDB_stat legacy = { 0 };
        if (!ledger->table_missing[TABLE_EVENTS])
            mdb_stat(txn->txn, ledger->tables[TABLE_EVENTS], &legacy);
        /*
         * The count sizes the index. A damaged one must not ask for more
         * events than the ledger's pages can hold, at a record's header each.
         */
        MDB_envinfo info;
        MDB_stat env_stat;
        mdb_env_info(ledger->env, &info);
        mdb_env_stat(ledger->env, &env_stat);
        uint64_t used_bytes = ((uint64_t)info.me_last_pgno + 1) * env_stat.ms_psize;
        uint64_t expected = state.block_events + legacy.ms_entries;
        if (expected > used_bytes / RECORD_HEADER_SIZE) {
            log_warn("ledger", "the stored event count %llu is more than the ledger's %llu bytes "
                     "can contain; the id index is sized for %llu events. Run `meterctl verify` "
                     "on the tenants if this repeats",
                     (unsigned long long)expected, (unsigned long long)used_bytes,
                     (unsigned long long)(used_bytes / RECORD_HEADER_SIZE));
            expected = used_bytes / RECORD_HEADER_SIZE;
        }
        rc = dedup_rebuild(ledger, txn->txn, expected);
        if (rc != HM_OK) {
            ledger->dedup->generation = DEDUP_STALE;
            return rc;
        }
        ledger->dedup->generation = state.generation;
        log_info("ledger", "event id index built events=%zu bytes=%zu runs=%zu disk_bytes=%zu "
                 "ms=%llu", dedup_count(ledger->dedup), dedup_bytes(ledger->dedup),
                 dedup_run_count(ledger->dedup), dedup_disk_bytes(ledger->dedup),
                 (unsigned long long)(elapsed_us(&started) / 1000));
    }
    dedup_txn_begin(ledger->dedup);
    index_failure_log(ledger, dedup_spill_failure, "cannot write a run of the event id index",
                      "its ids stay in memory, and the write is tried again later");
    index_failure_log(ledger, dedup_merge_failure, "cannot merge runs of the event id index",
                      "the runs stay unmerged, so each lookup of a new id reads more of them");
    txn->appending = 1;
    return HM_OK;
}

void ledger_index_stats(const struct ledger *ledger, struct ledger_index_stats *out)
{
    memset(out, 0, sizeof *out);
    const struct dedup_index *index = ledger->dedup;
    if (index == NULL)
        return;
    out->ids = dedup_count(index);
    out->memory_bytes = dedup_bytes(index);
    out->disk_bytes = dedup_disk_bytes(index);
    out->runs = dedup_run_count(index);
    out->spill_failures = index->spill_failure.count;
    out->spill_waits = index->spill_waits;
    out->spill_wait_us = index->spill_wait_us;
}

int ledger_writer_prepare(struct ledger *ledger)
{
    struct ledger_txn *txn;
    int rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = writer_prepare(txn);
    ledger_abort(txn);
    return rc;
}

/* Undoes the writer state of a transaction that is aborted or failed to commit. */
static void writer_abort(struct ledger_txn *txn)
{
    if (!txn->appending)
        return;
    if (dedup_txn_abort(txn->ledger->dedup))
        txn->ledger->dedup->generation = DEDUP_STALE;
    rollup_deltas_clear(txn->ledger->deltas);
    rollup_log_aborted(txn);
    txn->block_count = 0;
    txn->appending = 0;
}

int ledger_rollups_apply(struct ledger_txn *txn, const struct rollup_deltas *deltas,
                         int subtract)
{
    if (!txn->appending) {
        int rc = writer_prepare(txn);
        if (rc != HM_OK)
            return rc;
    }
    int rc = rollup_deltas_merge(txn->ledger->deltas, deltas, subtract);
    if (rc == HM_ERR_STORAGE)
        log_error("ledger", "a rollup change to take away exceeds the changes that its "
                  "transaction added");
    return rc;
}

/* Writes the summed rollup changes of the transaction to the rollup log and empties their table. */
static int deltas_flush(struct ledger_txn *txn)
{
    int rc = rollup_log_append(txn, txn->ledger->deltas);
    rollup_deltas_clear(txn->ledger->deltas);
    return rc;
}

/*
 * Returns 1 when a transaction stored events or logged rollup changes. Such
 * a transaction advances the append generation, from which other processes
 * learn that their id index and their sum of the log are out of date.
 */
static int generation_advances(const struct ledger_txn *txn)
{
    return txn->appended > 0 || txn->log_records > 0;
}

/* Writes what the appends of a transaction keep in memory: the pending block, rollups, state. */
static int writer_flush(struct ledger_txn *txn)
{
    int rc = block_flush(txn);
    if (rc == HM_OK)
        rc = deltas_flush(txn);
    if (rc == HM_OK)
        rc = rollup_log_fold_due(txn);
    if (rc != HM_OK || !generation_advances(txn))
        return rc;
    struct append_state state;
    if ((rc = append_state_get(txn->ledger, txn->txn, &state)) != HM_OK)
        return rc;
    state.generation++;
    state.block_events += txn->appended;
    return append_state_put(txn, &state);
}

int ledger_commit(struct ledger_txn *txn)
{
    struct ledger *ledger = txn->ledger;
    ledger->write_us_last = 0;
    if (txn->appending) {
        int rc = writer_flush(txn);
        if (rc != HM_OK) {
            writer_abort(txn);
            mdb_txn_abort(txn->txn);
            free(txn);
            return rc;
        }
    }
#ifndef HM_NO_TEST_HOOKS
    int injected = commit_fault_inject(txn->txn);
    if (injected != 0) {
        writer_abort(txn);
        free(txn);
        return injected;
    }
#endif
    int appending = txn->appending, advanced = generation_advances(txn);
    struct timespec write_start;
    clock_gettime(CLOCK_MONOTONIC, &write_start);
    int rc = mdb_txn_commit(txn->txn);
    ledger->write_us_last = elapsed_us(&write_start);
    if (appending && rc == 0) {
        rollup_log_committed(txn);
        dedup_txn_commit(ledger->dedup);
        if (advanced && ledger->dedup->generation != DEDUP_STALE)
            ledger->dedup->generation++;
        txn->appending = 0;
    }
    writer_abort(txn);
    free(txn);
    if (rc == EIO && disk_full(ledger))
        rc = ENOSPC;
    if (rc == 0)
        ledger_full_logged = 0;
    return rc == 0 ? HM_OK : status_of(rc, "commit");
}

uint64_t ledger_commit_write_us(const struct ledger *ledger)
{
    return ledger->write_us_last;
}

uint64_t ledger_begin_lock_us(const struct ledger *ledger)
{
    return ledger->lock_us_last;
}

void ledger_abort(struct ledger_txn *txn)
{
    if (txn == NULL)
        return;
    writer_abort(txn);
    mdb_txn_abort(txn->txn);
    free(txn);
}

int ledger_event_rollups(const struct event *event, rollup_sink sink, void *context)
{
    int rc = sink(context, ROLLUP_EVENTS, event_kind_name(event->kind), 1);
    if (rc != HM_OK)
        return rc;
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        return sink(context, ROLLUP_GPU_SECONDS, event->u.gpu.gpu_type, event->u.gpu.duration_s);
    case EVENT_INFERENCE: {
        const struct event_inference *inference = &event->u.inference;
        uint64_t uncached = inference->input_tokens - inference->cached_input_tokens;
        if (uncached > 0 && (rc = sink(context, ROLLUP_INPUT_TOKENS, inference->model, uncached)))
            return rc;
        if (inference->output_tokens > 0 &&
            (rc = sink(context, ROLLUP_OUTPUT_TOKENS, inference->model, inference->output_tokens)))
            return rc;
        if (inference->cached_input_tokens > 0)
            return sink(context, ROLLUP_CACHED_INPUT_TOKENS, inference->model,
                        inference->cached_input_tokens);
        return HM_OK;
    }
    case EVENT_STORAGE:
        if (event->u.storage.bytes_transferred > 0)
            return sink(context, ROLLUP_TRANSFER_BYTES, "", event->u.storage.bytes_transferred);
        return HM_OK;
    case EVENT_API_CALL:
        return sink(context, ROLLUP_API_CALLS, "", 1);
    }
    return HM_ERR_INVALID;
}

struct append_context {
    struct ledger_txn *txn;
    struct rollup_key_memo memo;
};

/* Adds one rollup change of an appended event to the transaction's summed changes. */
static int append_sink(void *context, enum rollup_meter meter, const char *dimension,
                       uint64_t quantity)
{
    struct append_context *append = context;
    int rc = rollup_deltas_add(append->txn->ledger->deltas, &append->memo, meter, dimension,
                               quantity, 1, NULL);
    if (rc != HM_OK)
        return rc;
    /* Past the limit the changes are written now, so that the table stays small. */
    return rollup_deltas_count(append->txn->ledger->deltas) >= ROLLUP_DELTAS_MAX
               ? deltas_flush(append->txn)
               : HM_OK;
}

/*
 * Returns the billing period of a timestamp, remembering the last day seen:
 * the events of a batch mostly fall on a few days, and the calendar
 * arithmetic of event_period_of is the larger part of a rollup change.
 */
static uint32_t period_of(struct ledger *ledger, int64_t timestamp_us)
{
    if (ledger->period_day != 0 && timestamp_us >= ledger->period_day_start_us &&
        timestamp_us - ledger->period_day_start_us < INT64_C(86400000000))
        return ledger->period_day;
    int64_t day_start_us = floor_seconds(timestamp_us) / 86400 * 86400;
    if (floor_seconds(timestamp_us) % 86400 < 0)
        day_start_us -= 86400;
    day_start_us *= 1000000;
    ledger->period_day_start_us = day_start_us;
    ledger->period_day = event_period_of(timestamp_us);
    return ledger->period_day;
}

/* Stores the level of a storage event's record under its tenant, time and id. */
static int storage_sample_put(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                              const uint8_t *record)
{
    int64_t timestamp_us;
    uint64_t bytes_stored;
    memcpy(&timestamp_us, record + RECORD_TIMESTAMP_AT, sizeof timestamp_us);
    memcpy(&bytes_stored, record + RECORD_HEADER_SIZE, sizeof bytes_stored);
    timestamp_us = (int64_t)le64toh((uint64_t)timestamp_us);
    bytes_stored = le64toh(bytes_stored);
    uint8_t key_bytes[UUID_SIZE + 8 + UUID_SIZE];
    memcpy(key_bytes, tenant_id, UUID_SIZE);
    store_be64(key_bytes + UUID_SIZE, biased_time(timestamp_us));
    memcpy(key_bytes + UUID_SIZE + 8, record + RECORD_ID_AT, UUID_SIZE);
    MDB_val key = { sizeof key_bytes, key_bytes };
    MDB_val value = { sizeof bytes_stored, &bytes_stored };
    int rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_STORAGE], &key, &value, 0);
    return rc == 0 ? HM_OK : status_of(rc, "write storage sample");
}

/*
 * Reads the stored record that an index slot points at, if it is the event
 * (tenant, event_id): HM_OK with the record, HM_ERR_NOT_FOUND when the slot
 * belongs to another event (a fingerprint collision) or to nothing stored.
 */
static int indexed_record(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          const uint8_t event_id[UUID_SIZE], uint64_t locator,
                          const uint8_t **record_out, size_t *size_out)
{
    struct ledger *ledger = txn->ledger;
    if (locator == DEDUP_LEGACY) {
        uint8_t key_bytes[2 * UUID_SIZE];
        memcpy(key_bytes, tenant_id, UUID_SIZE);
        memcpy(key_bytes + UUID_SIZE, event_id, UUID_SIZE);
        MDB_val key = { sizeof key_bytes, key_bytes }, value;
        int rc = table_get(txn->txn, ledger, TABLE_EVENTS, &key, &value);
        if (rc == MDB_NOTFOUND)
            return HM_ERR_NOT_FOUND;
        if (rc != 0)
            return status_of(rc, "read event");
        *record_out = value.mv_data;
        *size_out = value.mv_size;
        return HM_OK;
    }
    /* The slot kept the arrival number modulo DEDUP_SPAN: try each number it may stand for. */
    uint64_t end;
    int rc = block_seq_end(txn, tenant_id, &end);
    if (rc != HM_OK)
        return rc;
    for (uint64_t seq = locator; seq < end; seq += DEDUP_SPAN) {
        rc = block_record_find(ledger, txn->txn, txn, tenant_id, seq, record_out, size_out);
        if (rc == HM_ERR_NOT_FOUND)
            continue;
        if (rc != HM_OK)
            return rc;
        if (*size_out >= RECORD_HEADER_SIZE && memcmp(*record_out + 4, event_id, UUID_SIZE) == 0)
            return HM_OK;
    }
    return HM_ERR_NOT_FOUND;
}

void ledger_append_prefetch(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                            const uint8_t event_id[UUID_SIZE])
{
    const struct dedup_index *index = txn->ledger->dedup;
    if (index == NULL || !txn->appending)
        return;
    dedup_prefetch(index, dedup_fingerprint(index, tenant_id, event_id));
}

int ledger_append_record(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         const uint8_t *record, size_t record_size)
{
    int rc;
    if (!txn->appending && (rc = writer_prepare(txn)) != HM_OK)
        return rc;
    if (record_size < RECORD_HEADER_SIZE || record_size > BLOCK_BYTES_MAX - BLOCK_HEADER_SIZE ||
        record_size_at(record) != record_size)
        return HM_ERR_INVALID;
    const uint8_t *event_id = record + RECORD_ID_AT;
    int storage = record[0] == EVENT_STORAGE;
    if (storage && record_size < RECORD_HEADER_SIZE + 8)
        return HM_ERR_INVALID;

    /* Invariant 1: a slot with the same fingerprint is confirmed against the stored record. */
    struct dedup_index *index = txn->ledger->dedup;
    struct dedup_probe probe;
    dedup_probe_start(index, dedup_fingerprint(index, tenant_id, event_id), &probe);
    uint64_t locator;
    while (dedup_probe_next(index, &probe, &locator)) {
        const uint8_t *stored = NULL;
        size_t stored_size = 0;
        rc = indexed_record(txn, tenant_id, event_id, locator, &stored, &stored_size);
        if (rc == HM_ERR_NOT_FOUND)
            continue;
        if (rc != HM_OK)
            return rc;
        if (stored_size == record_size && memcmp(stored, record, record_size) == 0)
            return APPEND_DUPLICATE;
        return APPEND_CONFLICT;
    }

    uint64_t seq;
    if ((rc = block_append(txn, tenant_id, record, record_size, &seq)) != HM_OK)
        return rc;
    if ((rc = dedup_insert(index, &probe, seq, 1)) != HM_OK)
        return rc;
    txn->appended++;
    if (storage && (rc = storage_sample_put(txn, tenant_id, record)) != HM_OK)
        return rc;
    return APPEND_STORED;
}

int ledger_append(struct ledger_txn *txn, const struct event *event, const uint8_t *record,
                  size_t record_size)
{
    int outcome = ledger_append_record(txn, event->tenant_id, record, record_size);
    if (outcome != APPEND_STORED)
        return outcome;
    /*
     * An event of a period that is already closed is stored and rolled up like
     * any other, and the sealed invoice stays as it was. The next close of a
     * later period compares the event count with the billed one and bills the
     * difference (engine/lib/billing.c, billing_late_usage).
     */
    struct append_context context;
    context.txn = txn;
    rollup_key_memo_start(&context.memo, event->tenant_id,
                          period_of(txn->ledger, event->timestamp_us));
    int rc = ledger_event_rollups(event, append_sink, &context);
    return rc == HM_OK ? APPEND_STORED : rc;
}

/* ---- Reading rollups ---- */

struct rollup_row *ledger_row_list_find(struct row_list *list, enum rollup_meter meter,
                                       const char *dimension)
{
    for (size_t i = 0; i < list->count; i++) {
        if (list->rows[i].meter == meter && strcmp(list->rows[i].dimension, dimension) == 0)
            return &list->rows[i];
    }
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? 2 * list->capacity : 16;
        struct rollup_row *rows = realloc(list->rows, capacity * sizeof *rows);
        if (rows == NULL)
            return NULL;
        list->rows = rows;
        list->capacity = capacity;
    }
    struct rollup_row *row = &list->rows[list->count++];
    memset(row, 0, sizeof *row);
    row->meter = meter;
    snprintf(row->dimension, sizeof row->dimension, "%s", dimension);
    return row;
}

/* Reads the level of a storage sample; logs and returns HM_ERR_STORAGE for a damaged one. */
static int storage_level_read(const uint8_t tenant_id[UUID_SIZE], const MDB_val *value,
                              uint64_t *level)
{
    if (value->mv_size != sizeof *level) {
        char tenant[UUID_TEXT_SIZE];
        uuid_format(tenant_id, tenant);
        log_error("ledger", "a storage sample of tenant %s has %zu bytes, expected %zu: the "
                  "ledger is damaged; restore the data directory from a backup", tenant,
                  value->mv_size, sizeof *level);
        return HM_ERR_STORAGE;
    }
    memcpy(level, value->mv_data, sizeof *level);
    return HM_OK;
}

int ledger_storage_integrate(struct ledger *ledger, MDB_txn *txn,
                             const uint8_t tenant_id[UUID_SIZE], int64_t start_s, int64_t end_s,
                             unsigned __int128 *out)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_STORAGE, &cursor);
    if (rc != 0)
        return status_of(rc, "open storage cursor");

    /* Position on the first sample at or after start_s, then step back once for the level at start. */
    uint8_t seek[UUID_SIZE + 8];
    memcpy(seek, tenant_id, UUID_SIZE);
    store_be64(seek + UUID_SIZE, biased_time(start_s * 1000000));
    MDB_val key = { sizeof seek, seek }, value;
    uint64_t level = 0;
    int status = HM_OK;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    if (rc == 0 || rc == MDB_NOTFOUND)
        rc = rc == 0 ? cursor_get(cursor, &key, &value, MDB_PREV)
                     : cursor_get(cursor, &key, &value, MDB_LAST);
    if (rc == 0 && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0)
        status = storage_level_read(tenant_id, &value, &level);
    else if (rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read storage samples");

    unsigned __int128 total = 0;
    int64_t at = start_s;
    key.mv_size = sizeof seek;
    key.mv_data = seek;
    rc = status == HM_OK ? cursor_get(cursor, &key, &value, MDB_SET_RANGE) : MDB_NOTFOUND;
    while (status == HM_OK && rc == 0 && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        int64_t sample_us = (int64_t)(load_be64((const uint8_t *)key.mv_data + UUID_SIZE) ^
                                      (UINT64_C(1) << 63));
        int64_t sample_s = floor_seconds(sample_us);
        if (sample_s >= end_s)
            break;
        total += (unsigned __int128)level * (uint64_t)(sample_s - at);
        status = storage_level_read(tenant_id, &value, &level);
        at = sample_s;
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    cursor_close(cursor);
    /* A failed read or a damaged sample is an error, because the level would stay as it was. */
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read storage samples");
    if (status != HM_OK)
        return status;
    total += (unsigned __int128)level * (uint64_t)(end_s - at);
    *out = total;
    return HM_OK;
}

int ledger_storage_byte_seconds(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                                int64_t start_s, int64_t end_s, unsigned __int128 *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = ledger_storage_integrate(ledger, txn, tenant_id, start_s, end_s, out);
    mdb_txn_abort(txn);
    return rc;
}

/* Adds one change of the rollup log to the row list of rollups_read. */
static int log_change_add(void *context, const uint8_t *key, size_t key_size,
                          unsigned __int128 quantity, uint64_t count)
{
    struct row_list *list = context;
    size_t dimension_size = key_size - ROLLUP_KEY_METER_AT - 1;
    char dimension[EVENT_ENDPOINT_MAX + 1];
    if (dimension_size > EVENT_ENDPOINT_MAX)
        return HM_ERR_STORAGE;
    memcpy(dimension, key + ROLLUP_KEY_METER_AT + 1, dimension_size);
    dimension[dimension_size] = '\0';
    struct rollup_row *row =
        ledger_row_list_find(list, (enum rollup_meter)key[ROLLUP_KEY_METER_AT], dimension);
    if (row == NULL)
        return HM_ERR_NOMEM;
    if (row->quantity + quantity < row->quantity || row->event_count + count < row->event_count) {
        rollups_damaged("the rollup log", "its changes to a row of meter %u would overflow it",
                        key[ROLLUP_KEY_METER_AT]);
        return HM_ERR_STORAGE;
    }
    row->quantity += quantity;
    row->event_count += count;
    return HM_OK;
}

/* Orders rows as their keys sort in the rollup table: by meter, then dimension. */
static int row_order(const void *a, const void *b)
{
    const struct rollup_row *left = a, *right = b;
    if (left->meter != right->meter)
        return left->meter < right->meter ? -1 : 1;
    return strcmp(left->dimension, right->dimension);
}

/*
 * Reads a tenant's rollup rows of a period: the stored rows plus the
 * changes still in the rollup log, in the read transaction `txn`, in the
 * order of their keys whether or not the log was folded.
 */
static int rollups_read(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        uint32_t period, struct row_list *list)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_ROLLUPS, &cursor);
    if (rc != 0)
        return status_of(rc, "open rollup cursor");
    uint8_t prefix[UUID_SIZE + 4];
    memcpy(prefix, tenant_id, UUID_SIZE);
    store_be32(prefix + UUID_SIZE, period);
    MDB_val key = { sizeof prefix, prefix }, value;
    int status = HM_OK;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (rc == 0 && key.mv_size > sizeof prefix &&
           memcmp(key.mv_data, prefix, sizeof prefix) == 0) {
        const uint8_t *bytes = key.mv_data;
        char dimension[EVENT_ENDPOINT_MAX + 1];
        size_t dimension_size = key.mv_size - sizeof prefix - 1;
        if (dimension_size > EVENT_ENDPOINT_MAX || value.mv_size != ROLLUP_VALUE_SIZE) {
            status = HM_ERR_STORAGE;
            rollups_damaged("a rollup row", "its key has %zu bytes and its value %zu",
                            key.mv_size, value.mv_size);
            break;
        }
        memcpy(dimension, bytes + sizeof prefix + 1, dimension_size);
        dimension[dimension_size] = '\0';
        struct rollup_row *row = ledger_row_list_find(list, (enum rollup_meter)bytes[sizeof prefix],
                                               dimension);
        if (row == NULL) {
            status = HM_ERR_NOMEM;
            break;
        }
        rollup_value_decode(value.mv_data, &row->quantity, &row->event_count);
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    cursor_close(cursor);
    /* A failed read is an error, not the end of the rows, because totals would miss the rest. */
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read rollups");
    size_t stored = list->count;
    if (status == HM_OK)
        status = rollup_log_each_read(ledger, txn, prefix, sizeof prefix, log_change_add, list);
    if (status == HM_OK && list->count > stored)
        qsort(list->rows, list->count, sizeof *list->rows, row_order);
    return status;
}

/* Reads the rollup rows of a period, with the computed storage row when with_storage is 1. */
static int rollups_collect(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                           uint32_t period, int with_storage, struct rollup_row **rows_out,
                           size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct row_list list = { 0 };
    rc = rollups_read(ledger, txn, tenant_id, period, &list);

    unsigned __int128 byte_seconds = 0;
    if (rc == HM_OK && with_storage)
        rc = ledger_storage_integrate(ledger, txn, tenant_id, period_start_us(period) / 1000000,
                                  period_start_us(period_next(period)) / 1000000, &byte_seconds);
    if (rc == HM_OK && byte_seconds > 0) {
        struct rollup_row *row = ledger_row_list_find(&list, ROLLUP_STORAGE_BYTE_SECONDS, "");
        if (row == NULL)
            rc = HM_ERR_NOMEM;
        else
            row->quantity = byte_seconds;
    }
    mdb_txn_abort(txn);
    if (rc != HM_OK) {
        free(list.rows);
        return rc;
    }
    *rows_out = list.rows;
    *count_out = list.count;
    return HM_OK;
}

int ledger_rollups(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], uint32_t period,
                   struct rollup_row **rows_out, size_t *count_out)
{
    return rollups_collect(ledger, tenant_id, period, 1, rows_out, count_out);
}

int ledger_rollups_stored(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                          uint32_t period, struct rollup_row **rows_out, size_t *count_out)
{
    return rollups_collect(ledger, tenant_id, period, 0, rows_out, count_out);
}

/* ---- Verification by recount ---- */

struct recount_context {
    struct row_list *list;
};

static int recount_sink(void *context, enum rollup_meter meter, const char *dimension,
                        uint64_t quantity)
{
    struct recount_context *recount = context;
    struct rollup_row *row = ledger_row_list_find(recount->list, meter, dimension);
    if (row == NULL)
        return HM_ERR_NOMEM;
    row->quantity += quantity;
    row->event_count += 1;
    return HM_OK;
}

struct recount_walk {
    struct recount_context recount;
    int64_t start_us;
    int64_t end_us;
};

int stored_event_decode(const uint8_t tenant_id[UUID_SIZE], uint64_t seq, const uint8_t *record,
                        size_t record_size, struct event *out)
{
    size_t offset = 0;
    const char *reason = NULL;
    if (record_decode(record, record_size, &offset, tenant_id, out, &reason) ||
        offset != record_size) {
        log_error("ledger", "stored event %llu cannot be decoded: %s", (unsigned long long)seq,
                  reason ? reason : "trailing bytes");
        return HM_ERR_STORAGE;
    }
    return HM_OK;
}

static int recount_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                         const uint8_t *record, size_t record_size)
{
    struct recount_walk *walk = context;
    struct event event;
    if (stored_event_decode(tenant_id, seq, record, record_size, &event) != HM_OK)
        return HM_ERR_STORAGE;
    if (event.timestamp_us < walk->start_us || event.timestamp_us >= walk->end_us)
        return HM_OK;
    return ledger_event_rollups(&event, recount_sink, &walk->recount);
}

int ledger_events_recount(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          int64_t start_us, int64_t end_us, struct row_list *list)
{
    struct recount_walk walk = { { list }, start_us, end_us };
    return records_walk(ledger, txn, tenant_id, 0, 0, recount_visit, &walk);
}

int ledger_verify(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], uint32_t period)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct row_list stored = { 0 }, recounted = { 0 };
    rc = rollups_read(ledger, txn, tenant_id, period, &stored);
    if (rc == HM_OK)
        rc = ledger_events_recount(ledger, txn, tenant_id, period_start_us(period),
                                   period_start_us(period_next(period)), &recounted);
    mdb_txn_abort(txn);

    if (rc == HM_OK && stored.count != recounted.count) {
        log_error("ledger", "verify period=%u rollup rows=%zu recounted rows=%zu", period,
                  stored.count, recounted.count);
        rc = HM_ERR_CONFLICT;
    }
    for (size_t i = 0; rc == HM_OK && i < recounted.count; i++) {
        const struct rollup_row *want = &recounted.rows[i];
        const struct rollup_row *have = NULL;
        for (size_t j = 0; j < stored.count; j++) {
            if (stored.rows[j].meter == want->meter &&
                strcmp(stored.rows[j].dimension, want->dimension) == 0)
                have = &stored.rows[j];
        }
        if (have == NULL || have->quantity != want->quantity ||
            have->event_count != want->event_count) {
            log_error("ledger", "verify period=%u meter=%d dimension=%s differs from recount",
                      period, (int)want->meter, want->dimension);
            rc = HM_ERR_CONFLICT;
        }
    }
    free(stored.rows);
    free(recounted.rows);
    return rc;
}

int ledger_event_count(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint64_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = events_count(ledger, txn, tenant_id, count_out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_events_total(struct ledger *ledger, uint64_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct append_state state;
    MDB_stat stat = { 0 };
    rc = append_state_get(ledger, txn, &state);
    if (rc == HM_OK && !ledger->table_missing[TABLE_EVENTS] &&
        mdb_stat(txn, ledger->tables[TABLE_EVENTS], &stat) != 0)
        rc = HM_ERR_STORAGE;
    mdb_txn_abort(txn);
    if (rc == HM_OK)
        *count_out = stat.ms_entries + state.block_events;
    return rc;
}

struct stored_walk {
    int (*visit)(void *context, const uint8_t tenant_id[UUID_SIZE], const uint8_t *record,
                 size_t record_size);
    void *context;
};

static int stored_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                        const uint8_t *record, size_t record_size)
{
    (void)seq;
    struct stored_walk *walk = context;
    return walk->visit(walk->context, tenant_id, record, record_size);
}

int ledger_records_each(struct ledger *ledger,
                        int (*visit)(void *context, const uint8_t tenant_id[UUID_SIZE],
                                     const uint8_t *record, size_t record_size),
                        void *context)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct stored_walk walk = { visit, context };
    rc = records_each_all(ledger, txn, stored_visit, &walk);
    mdb_txn_abort(txn);
    return rc;
}
