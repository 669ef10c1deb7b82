/* Layout of the ledger's LMDB environment, shared by the files of rollup/. */
#ifndef HM_LEDGER_PRIVATE_H
#define HM_LEDGER_PRIVATE_H

#include "ledger.h"
#include "ingest/masterkey.h"

#include "common/log.h"
#include "common/status.h"

#include <errno.h>
#include <lmdb.h>
#include <string.h>

/* Named tables; see ledger.h for what each holds. */
enum table {
    TABLE_EVENTS,     /* tenant(16) event id(16) -> canonical record bytes */
    TABLE_ROLLUPS,    /* tenant(16) period(4, BE) meter(1) dimension -> quantity(16) count(8) */
    TABLE_STORAGE,    /* tenant(16) microsecond(8, BE, biased) event id(16) -> bytes stored(8) */
    TABLE_TENANTS,    /* tenant(16) -> struct tenant_value */
    TABLE_NAMES,      /* tenant name -> tenant(16) */
    TABLE_KEYS,       /* key id(8, BE) -> struct key_value */
    TABLE_PRICEBOOKS, /* scope -> SHA-256 hex of a book snapshot, or the JSON text (older ledgers) */
    TABLE_PERIODS,    /* tenant(16) period(4, BE) -> closed flag(1) */
    TABLE_INVOICES,   /* tenant(16) period(4, BE) -> current invoice number, or JSON (older) */
    TABLE_META,       /* name -> value */
    TABLE_TENANT_SETTINGS, /* tenant(16) -> settings JSON {"version": 1, ...} */
    TABLE_ISSUERS,    /* issuer name -> issuer JSON {"version": 1, ...} */
    TABLE_DOCUMENTS,  /* document number -> sealed invoice or credit note JSON */
    TABLE_BOOK_SNAPSHOTS, /* SHA-256 hex of a price book's text -> the text */
    TABLE_BILLED,     /* tenant(16) period(4, BE) -> billed state JSON {"version": 2, ...} */
    TABLE_CREDITS,    /* tenant(16) grant id(8, BE) -> credit grant JSON {"version": 1, ...} */
    TABLE_EXPORTS,    /* "stripe/" document number -> export state JSON {"version": 1, ...} */
    TABLE_ARRIVALS,   /* tenant(16) arrival number(8, BE) -> event id(16); see ledger.h */
    TABLE_BLOCKS,     /* tenant(16) first arrival number(8, BE) -> event block, see below */
    TABLE_ROLLUP_LOG, /* sequence(8, BE) -> rollup changes of a transaction; see rollup_log.c */
    TABLE_COUNT,
};

/*
 * Events are stored in blocks: one value holds the canonical records of
 * consecutive arrivals of one tenant, so that storing a frame of events costs
 * one B-tree insert at the end of the tenant's key range, not one insert per
 * event at a random place. The value is the event count (4 bytes,
 * little-endian) followed by that many records; record i has the arrival
 * number first + i. Older ledgers stored each event under (tenant, event id)
 * in TABLE_EVENTS, numbered in TABLE_ARRIVALS; those events keep their
 * numbers 1..L, and the tenant's blocks continue from L + 1.
 */
#define BLOCK_HEADER_SIZE 4
#define BLOCK_EVENTS_MAX 4096
#define BLOCK_BYTES_MAX (256 * 1024)
#define BLOCK_KEY_SIZE (UUID_SIZE + 8)

struct dedup_index;
struct rollup_deltas;

/*
 * Keys of summed rollup changes that ledger_append keeps in memory before
 * it writes them; the rest are written at commit.
 */
#define ROLLUP_DELTAS_MAX 2048

struct ledger {
    MDB_env *env;
    MDB_dbi tables[TABLE_COUNT];
    /*
     * 1 for a table that a read-only open did not find, because the ledger
     * was made before the table existed. It reads as empty (table_get,
     * table_cursor_open). A read-only ledger never writes to it.
     */
    uint8_t table_missing[TABLE_COUNT];
    MDB_txn *lookup_txn; /* reused read transaction of ledger_read_begin */
    /* The key that wraps the signing keys of key records; see ledger_master_key_set. */
    struct master_key master;
    int has_master;
    struct log_limit key_log; /* keys that cannot be unwrapped */
    /* Writer state, made by the first append of the process and reused by every transaction. */
    struct dedup_index *dedup;
    size_t index_memory;           /* see ledger_options */
    uint8_t *block;                /* the pending block: header and records */
    struct rollup_deltas *deltas;  /* rollup changes of ledger_append, written at commit */
    int64_t period_day_start_us;   /* the UTC day whose period append saw last; see period_of */
    uint32_t period_day;           /* 0: none yet */
    /*
     * Set when a fold found the rollup log or a rollup row damaged, with the
     * log's record count as this process last read it. A damaged log only
     * grows, so fewer records mean that a rebuild or another process
     * emptied it. Until then commits go on without folding.
     */
    int fold_refused;
    size_t fold_refused_records;
    /* The rollup log summed per key for read transactions (rollup_log_each_read). */
    struct log_summary *log_summary;
    /*
     * The writer's sum of the rollup log, so that a fold adds it to the rows
     * without reading the log back (rollup_log.c). It is valid while no other
     * process has stored events or logged changes since this process's last
     * commit, which writer_prepare checks by the append generation. It is
     * used only while the log still ends at log_sum_last.
     */
    struct rollup_deltas *log_sum;
    struct rollup_deltas *log_txn;  /* the changes that the open transaction logged */
    struct rollup_deltas *log_fold; /* log_sum and log_txn added, for a fold */
    uint64_t log_sum_last;          /* sequence number of the last record; 0: the log is empty */
    int log_sum_valid;
    uint64_t folds_summed, folds_read; /* ledger_fold_counts */
    uint64_t write_us_last;            /* ledger_commit_write_us */
    uint64_t lock_us_last;             /* ledger_begin_lock_us */
};

/* Tenants whose next arrival number a write transaction remembers. */
#define SEQ_CACHE_SIZE 256

struct seq_cache_entry {
    uint8_t tenant_id[UUID_SIZE];
    uint64_t next; /* 0: empty */
};

/* How a transaction folded the rollup log (ledger_txn.log_folded). */
enum log_fold_kind {
    LOG_FOLDED_FROM_SUM = 1, /* from ledger->log_sum */
    LOG_FOLDED_BY_READING,   /* by reading the log back */
};

struct ledger_txn {
    struct ledger *ledger;
    MDB_txn *txn;
    int appending; /* set by the first ledger_append: the writer state is in use */
    uint64_t appended; /* events stored by this transaction */
    /* The pending block, in ledger->block: not yet in TABLE_BLOCKS. */
    uint8_t block_tenant[UUID_SIZE];
    uint64_t block_first;  /* arrival number of its first record */
    uint32_t block_count;  /* 0: no pending block */
    size_t block_size;     /* bytes in ledger->block, header included */
    struct seq_cache_entry seq_cache[SEQ_CACHE_SIZE];
    /*
     * The position of the record that block_record_find found last. A
     * resent frame requests consecutive numbers, so the next search in the
     * same block starts there and does not check the block again.
     */
    struct {
        uint8_t tenant_id[UUID_SIZE];
        uint64_t first;
        size_t block_size; /* of the stored block; 0 for the pending block */
        uint32_t index;
        size_t at;
        int valid;
    } found;
    /* The rollup log as this transaction wrote it (rollup_log.c). */
    uint32_t log_records;   /* records it appended */
    int log_base;           /* 1: ledger->log_sum matched the log before its first record */
    int log_folded;         /* 0, or how it folded the log: enum log_fold_kind */
    uint64_t log_last;      /* sequence number of its last record */
};

#define ROLLUP_KEY_MAX (UUID_SIZE + 4 + 1 + EVENT_ENDPOINT_MAX)
#define ROLLUP_VALUE_SIZE 24

/* Reads a rollup row's value: the quantity (16 bytes) and the event count (8). */
static inline void rollup_value_decode(const uint8_t *value, unsigned __int128 *quantity,
                                       uint64_t *count)
{
    memcpy(quantity, value, 16);
    memcpy(count, value + 16, 8);
}

/*
 * One limit for every ledger error line of a thread, so that a full map logs
 * a few lines, not one per batch. Per thread, because meterd commits on its
 * own thread while the ingest loop reads keys.
 */
extern _Thread_local struct log_limit ledger_error_log;
/*
 * Set once a full map or disk was logged at error level, and cleared by the
 * next successful commit: a writer that retries while the ledger stays full
 * (meterd's held batch) logs the error once per full state, then at debug level.
 */
extern _Thread_local int ledger_full_logged;

static inline int status_of(int mdb_rc, const char *operation)
{
    int full = mdb_rc == MDB_MAP_FULL || mdb_rc == ENOSPC;
    if (full && ledger_full_logged) {
        log_debug("ledger", "%s failed: %s; still full", operation, mdb_strerror(mdb_rc));
        return HM_ERR_FULL;
    }
    ledger_full_logged |= full;
    uint64_t suppressed = 0;
    if (!log_limit_pass(&ledger_error_log, &suppressed))
        return full ? HM_ERR_FULL : HM_ERR_STORAGE;
    if (suppressed > 0)
        log_error("ledger", "%llu ledger errors suppressed", (unsigned long long)suppressed);
    if (full)
        log_error("ledger", "%s failed: %s; grow the map with --map-size or free disk space",
                  operation, mdb_strerror(mdb_rc));
    else if (mdb_rc == EIO)
        log_error("ledger", "%s failed: %s; a full disk can show as this error, so check the "
                  "free space of the data directory", operation, mdb_strerror(mdb_rc));
    else
        log_error("ledger", "%s failed: %s", operation, mdb_strerror(mdb_rc));
    return full ? HM_ERR_FULL : HM_ERR_STORAGE;
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static inline uint64_t load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* A time biased by 2^63 so that big-endian byte order sorts negative times first. */
static inline uint64_t biased_time(int64_t time) { return (uint64_t)time ^ (UINT64_C(1) << 63); }

static inline int64_t floor_seconds(int64_t timestamp_us)
{
    int64_t seconds = timestamp_us / 1000000;
    return timestamp_us % 1000000 < 0 ? seconds - 1 : seconds;
}

/*
 * Begins a transaction. When another process grew the map (MDB_MAP_RESIZED),
 * adopts the new size and tries once more; LMDB allows that here because
 * this process has no transaction open at that moment.
 */
static inline int txn_begin(struct ledger *ledger, unsigned flags, MDB_txn **txn)
{
    int rc = mdb_txn_begin(ledger->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED) {
        log_info("ledger", "another process grew the map; adopting the new size");
        rc = mdb_env_set_mapsize(ledger->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(ledger->env, NULL, flags, txn);
    }
    return rc;
}

static inline int read_begin(struct ledger *ledger, MDB_txn **txn)
{
    int rc = txn_begin(ledger, MDB_RDONLY, txn);
    return rc == 0 ? HM_OK : status_of(rc, "begin read transaction");
}

/* Reads a value as mdb_get does; MDB_NOTFOUND also when the table is missing. */
static inline int table_get(MDB_txn *txn, const struct ledger *ledger, enum table table,
                            MDB_val *key, MDB_val *value)
{
    if (ledger->table_missing[table])
        return MDB_NOTFOUND;
    return mdb_get(txn, ledger->tables[table], key, value);
}

/*
 * Opens a cursor on a table as mdb_cursor_open does. A missing table gets a
 * NULL cursor, on which cursor_get returns MDB_NOTFOUND, so it reads as empty.
 * Use cursor_get and cursor_close on the result.
 */
static inline int table_cursor_open(MDB_txn *txn, const struct ledger *ledger, enum table table,
                                    MDB_cursor **cursor)
{
    if (ledger->table_missing[table]) {
        *cursor = NULL;
        return 0;
    }
    return mdb_cursor_open(txn, ledger->tables[table], cursor);
}

static inline int cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *value, MDB_cursor_op op)
{
    return cursor != NULL ? mdb_cursor_get(cursor, key, value, op) : MDB_NOTFOUND;
}

static inline void cursor_close(MDB_cursor *cursor)
{
    if (cursor != NULL)
        mdb_cursor_close(cursor);
}

/* ---- Blocks (blocks.c) ---- */

static inline size_t record_size_at(const uint8_t *record)
{
    return (size_t)record[2] | (size_t)record[3] << 8;
}

/* Finds the last number of a tenant in the older arrival table (arrivals.c; 0: none). */
int arrival_last_legacy(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        uint64_t *seq_out);

/* Receives one stored record of a walk; a nonzero return stops the walk. */
typedef int (*record_visit)(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                            const uint8_t *record, size_t record_size);

/*
 * Visits a tenant's events of the older arrival table after after_seq
 * (arrivals.c), counting them in *visited_out; *last_out is the table's last
 * number for the tenant.
 */
int arrivals_walk_legacy(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t after_seq, uint64_t limit, record_visit visit, void *context,
                         uint64_t *visited_out, uint64_t *last_out);

/* ---- The rollup log (rollup_log.c) ---- */

/* Returns the period (yyyymm) of a rollup key: the 4 big-endian bytes after the tenant id. */
static inline uint32_t rollup_key_period(const uint8_t *key)
{
    return (uint32_t)key[UUID_SIZE] << 24 | (uint32_t)key[UUID_SIZE + 1] << 16 |
           (uint32_t)key[UUID_SIZE + 2] << 8 | key[UUID_SIZE + 3];
}

/*
 * Logs that `where` (a log record, a rollup row) is damaged, and what to
 * run, and counts it in rollups_damage_count.
 */
void rollups_damaged(const char *where, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
extern _Atomic uint64_t rollups_damage_count;

/* Writes the changes of `deltas` of at least one event as the log's next record. */
int rollup_log_append(struct ledger_txn *txn, const struct rollup_deltas *deltas);

/* Receives one logged change; a status other than HM_OK stops the walk. */
typedef int (*rollup_log_visit)(void *context, const uint8_t *key, size_t key_size,
                                unsigned __int128 quantity, uint64_t count);

/* Visits, oldest first, each logged change whose key starts with `prefix` (all: size 0). */
int rollup_log_each(struct ledger *ledger, MDB_txn *txn, const uint8_t *prefix,
                    size_t prefix_size, rollup_log_visit visit, void *context);

/*
 * rollup_log_each for a read-only transaction. The first read of a snapshot
 * walks the log. The second sums the log per key, sorted, and keeps the
 * sum for every later reader of the same snapshot, so a reader of a
 * thousand tenants walks the log twice, not a thousand times. A change
 * visited from the sum is the sum of the logged changes of its key.
 */
int rollup_log_each_read(struct ledger *ledger, MDB_txn *txn, const uint8_t *prefix,
                         size_t prefix_size, rollup_log_visit visit, void *context);

/* Makes and frees the summary that rollup_log_each_read keeps. HM_ERR_NOMEM. */
int rollup_log_summary_create(struct ledger *ledger);
void rollup_log_summary_free(struct ledger *ledger);

/* Adds every logged change to the rollup rows and empties the log. */
int rollup_log_fold(struct ledger *ledger, MDB_txn *txn);

/*
 * Folds the log once it has more records or pages than its limits, from
 * the writer's sum when that matches the log, else by reading the log. The
 * fold runs in a nested transaction, so a fold that finds damage is undone
 * and logged, and the commit goes on without it.
 */
int rollup_log_fold_due(struct ledger_txn *txn);

/* Makes the writer's sums of the log (writer_alloc). HM_ERR_NOMEM. */
int rollup_log_writer_create(struct ledger *ledger);
void rollup_log_writer_free(struct ledger *ledger);

/* Takes the log records of a committed transaction into the writer's sum. */
void rollup_log_committed(struct ledger_txn *txn);

/* Forgets the log records of a transaction that was aborted or failed to commit. */
void rollup_log_aborted(struct ledger_txn *txn);

/* Fills the writer's id index from every stored event, about `expected` of them (blocks.c). */
int dedup_rebuild(struct ledger *ledger, MDB_txn *txn, uint64_t expected);

/* Finds the highest arrival number of a tenant in its blocks and older tables (0: none). */
int arrival_last(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t *seq_out);

/*
 * Adds a record to the transaction's pending block and sets *seq_out to its
 * arrival number. Writes the pending block first when it belongs to
 * another tenant or is full.
 */
int block_append(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 const uint8_t *record, size_t record_size, uint64_t *seq_out);

/* Writes the pending block into TABLE_BLOCKS. */
int block_flush(struct ledger_txn *txn);

/*
 * Returns the arrival number after the tenant's last record, the pending
 * block included. HM_ERR_OVERFLOW when the numbers are used up.
 */
int block_seq_end(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE], uint64_t *end_out);

/*
 * Finds the record with arrival number `seq` of a tenant: in the pending
 * block of `pending` when not NULL, else in TABLE_BLOCKS. HM_ERR_NOT_FOUND
 * when no block holds it, HM_ERR_STORAGE for a corrupt block.
 */
int block_record_find(struct ledger *ledger, MDB_txn *txn, struct ledger_txn *pending,
                      const uint8_t tenant_id[UUID_SIZE], uint64_t seq, const uint8_t **record_out,
                      size_t *size_out);

/*
 * Visits a tenant's records with arrival numbers after after_seq in order:
 * the older tables first, then the blocks, at most `limit` (0: all). A gap
 * in the numbers, or a record that cannot be read, is HM_ERR_STORAGE.
 */
int records_walk(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t after_seq, uint64_t limit, record_visit visit, void *context);

/*
 * Decodes a stored record of a tenant into `out`. Logs and returns
 * HM_ERR_STORAGE when it cannot.
 */
int stored_event_decode(const uint8_t tenant_id[UUID_SIZE], uint64_t seq, const uint8_t *record,
                        size_t record_size, struct event *out);

/* Counts a tenant's stored events: those of the older events table and of its blocks. */
int events_count(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t *count_out);

/*
 * Visits every stored record of every tenant, tenant by tenant, without the
 * arrival order of the older tables (seq 0 for those records). A corrupt
 * block is HM_ERR_STORAGE after the records before the fault were visited.
 */
int records_each_all(struct ledger *ledger, MDB_txn *txn, record_visit visit, void *context);

/*
 * Called by ledger_open (read-write): numbers the events of a ledger written
 * before the arrival sequence existed, in write transactions of a bounded
 * size that a later open resumes, and marks the work done in the meta table.
 */
int arrivals_backfill(struct ledger *ledger);

/* Returns 1 when a price book scope's value names a snapshot by its hash, 0 for inline text. */
int ledger_pricebook_is_reference(const MDB_val *value);

/* ---- Rollups of events, shared by ledger.c (append, verify) and range.c (ranges) ---- */

/* Rollup rows under construction, found by meter and dimension. */
struct row_list {
    struct rollup_row *rows;
    size_t count;
    size_t capacity;
};

/*
 * Finds the row of a meter and dimension, adding an empty one when missing.
 * Returns NULL when out of memory.
 */
struct rollup_row *ledger_row_list_find(struct row_list *list, enum rollup_meter meter,
                                        const char *dimension);

/*
 * Recounts into list the rollup rows of a tenant's stored events whose
 * timestamp lies in [start_us, end_us), inside the caller's transaction.
 * Scans every event of the tenant. HM_ERR_STORAGE for an event that cannot
 * be decoded or an LMDB error, HM_ERR_NOMEM.
 */
int ledger_events_recount(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          int64_t start_us, int64_t end_us, struct row_list *list);

/*
 * Integrates the tenant's storage level over [start_s, end_s) inside the
 * caller's transaction; see ledger_storage_byte_seconds for the rule.
 */
int ledger_storage_integrate(struct ledger *ledger, MDB_txn *txn,
                             const uint8_t tenant_id[UUID_SIZE], int64_t start_s, int64_t end_s,
                             unsigned __int128 *out);

#endif
