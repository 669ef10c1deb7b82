/*
 * The rollup log: the rollup changes of each appending transaction, written
 * as one record at the end of a table of their own instead of into the
 * rollup rows. A batch of events then copies the log's last page and its own
 * event blocks, and not one B-tree page for each tenant and month it
 * touches. Every few hundred records a transaction folds the log into the
 * rows and empties it. The writer keeps the log summed per key in memory as
 * its commits write it, so that the fold does not read the records back
 * within a commit that acks wait for. Readers add the records still in the
 * log to the rows they read, in the same read transaction, so that they see
 * the totals that the stored events give at every commit.
 *
 * Record: key = sequence number (8 bytes, big-endian, from 1 after each
 * fold); value = changes, each a key size (1 byte), the rollup key, the
 * quantity (16 bytes, little-endian) and the event count (8 bytes,
 * little-endian). A record contains only changes of at least one event.
 */
#include "ledger_private.h"
#include "deltas.h"
#include "deltas_private.h"

#include "common/uuid.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* The log is folded at the commit that takes it to this many records or pages. */
#define ROLLUP_LOG_FOLD_RECORDS 256
#define ROLLUP_LOG_FOLD_PAGES 1024

#define CHANGE_FIXED_SIZE (1 + 16 + 8)

/*
 * More events than one transaction can store: a map is at most 16 TiB
 * (meterd --map-size), and a stored record takes more than 16 bytes.
 */
#define CHANGE_EVENTS_MAX (UINT64_C(1) << 40)

_Atomic uint64_t rollups_damage_count;

void rollups_damaged(const char *where, const char *format, ...)
{
    char what[256];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    atomic_fetch_add(&rollups_damage_count, 1);
    log_error("ledger", "%s is damaged: %s. The rollups cannot be read until `meterctl rollups "
              "rebuild` recounts them from the stored events", where, what);
}

/* Logs damage of the rollup log: record `sequence`, or the log as a whole when 0. */
static void damaged(uint64_t sequence, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static void damaged(uint64_t sequence, const char *format, ...)
{
    char what[256];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    char where[48] = "the rollup log";
    if (sequence > 0)
        snprintf(where, sizeof where, "rollup log record %llu", (unsigned long long)sequence);
    rollups_damaged(where, "%s", what);
}

/* Logs damage of the rollup row with key `key`. */
static void row_damaged(const uint8_t *key, const char *what)
{
    char tenant[UUID_TEXT_SIZE], where[128];
    uuid_format(key, tenant);
    uint32_t period = rollup_key_period(key);
    snprintf(where, sizeof where, "the rollup row of tenant %s, period %u, meter %u", tenant,
             period, key[ROLLUP_KEY_METER_AT]);
    rollups_damaged(where, "%s", what);
}

/* A period of the form yyyymm with a month from 1 to 12. */
static int period_valid(uint32_t period)
{
    uint32_t month = period % 100;
    return period / 100 >= 1 && period / 100 <= 9999 && month >= 1 && month <= 12;
}

static int log_missing(const struct ledger *ledger)
{
    return ledger->table_missing[TABLE_ROLLUP_LOG];
}

/* ---- The writer's sum of the log ---- */

int rollup_log_writer_create(struct ledger *ledger)
{
    int rc = rollup_deltas_create(&ledger->log_sum, 1024);
    if (rc == HM_OK)
        rc = rollup_deltas_create(&ledger->log_txn, 1024);
    if (rc == HM_OK)
        rc = rollup_deltas_create(&ledger->log_fold, 1024);
    if (rc != HM_OK)
        rollup_log_writer_free(ledger);
    ledger->log_sum_valid = 0;
    return rc;
}

void rollup_log_writer_free(struct ledger *ledger)
{
    rollup_deltas_free(ledger->log_sum);
    rollup_deltas_free(ledger->log_txn);
    rollup_deltas_free(ledger->log_fold);
    ledger->log_sum = ledger->log_txn = ledger->log_fold = NULL;
    ledger->log_sum_valid = 0;
}

/*
 * Returns 1 when ledger->log_sum is the sum of the log whose last valid
 * record is `last` (NULL: the log is empty), numbered `sequence`. An empty
 * log sums to nothing, also after a fold or rebuild by another process.
 * Otherwise the sum must be valid: writer_prepare makes it invalid when
 * another process stored events or logged changes, the only way to add
 * records to the log. Folds and rebuilds elsewhere only empty it.
 */
static int log_sum_matches(struct ledger *ledger, const MDB_val *last, uint64_t sequence)
{
    if (last == NULL) {
        rollup_deltas_clear(ledger->log_sum);
        ledger->log_sum_last = 0;
        ledger->log_sum_valid = 1;
        return 1;
    }
    return ledger->log_sum_valid && sequence == ledger->log_sum_last;
}

/* log_sum_matches for the log of `txn`; 0 when the log ends in a damaged key. */
static int log_sum_matches_now(struct ledger *ledger, MDB_txn *txn)
{
    MDB_cursor *cursor;
    if (mdb_cursor_open(txn, ledger->tables[TABLE_ROLLUP_LOG], &cursor) != 0)
        return 0;
    MDB_val key, value;
    int rc = mdb_cursor_get(cursor, &key, &value, MDB_LAST);
    int matches = 0;
    if (rc == MDB_NOTFOUND)
        matches = log_sum_matches(ledger, NULL, 0);
    else if (rc == 0 && key.mv_size == 8 && load_be64(key.mv_data) != UINT64_MAX)
        matches = log_sum_matches(ledger, &value, load_be64(key.mv_data));
    mdb_cursor_close(cursor);
    return matches;
}

void rollup_log_committed(struct ledger_txn *txn)
{
    struct ledger *ledger = txn->ledger;
    if (ledger->log_sum == NULL)
        return;
    if (txn->log_folded == LOG_FOLDED_FROM_SUM)
        ledger->folds_summed++;
    else if (txn->log_folded == LOG_FOLDED_BY_READING)
        ledger->folds_read++;
    if (txn->log_folded) {
        rollup_deltas_clear(ledger->log_sum);
        ledger->log_sum_last = 0;
        ledger->log_sum_valid = 1;
    } else if (txn->log_records > 0) {
        ledger->log_sum_valid =
            txn->log_base && rollup_deltas_merge(ledger->log_sum, ledger->log_txn, 0) == HM_OK;
        ledger->log_sum_last = txn->log_last;
    }
    rollup_deltas_clear(ledger->log_txn);
}

void ledger_fold_counts(const struct ledger *ledger, uint64_t *summed, uint64_t *read)
{
    *summed = ledger->folds_summed;
    *read = ledger->folds_read;
}

void rollup_log_aborted(struct ledger_txn *txn)
{
    if (txn->ledger->log_txn != NULL)
        rollup_deltas_clear(txn->ledger->log_txn);
}

int rollup_log_append(struct ledger_txn *txn, const struct rollup_deltas *deltas)
{
    size_t size = 0;
    for (size_t i = 0; i < deltas->count; i++) {
        const struct rollup_delta *delta = &deltas->slots[deltas->used[i]];
        if (delta->count > 0)
            size += CHANGE_FIXED_SIZE + delta->key_size;
        else if (delta->quantity != 0) {
            log_error("ledger", "a rollup change of no events has a quantity; the transaction "
                      "is not committed");
            return HM_ERR_STORAGE;
        }
    }
    if (size == 0)
        return HM_OK;

    MDB_dbi dbi = txn->ledger->tables[TABLE_ROLLUP_LOG];
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn->txn, dbi, &cursor);
    if (rc != 0)
        return status_of(rc, "open rollup log");
    /*
     * The next sequence number follows the last valid key. Damaged keys at
     * the end (another size, or the highest number) are skipped, so that
     * every tenant's events are still stored. Readers report the damage.
     */
    MDB_val key, value;
    uint64_t sequence = 1;
    int tail_damaged = 0;
    for (rc = mdb_cursor_get(cursor, &key, &value, MDB_LAST); rc == 0;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_PREV)) {
        if (key.mv_size == 8 && load_be64(key.mv_data) != UINT64_MAX) {
            sequence = load_be64(key.mv_data) + 1;
            break;
        }
        tail_damaged = 1;
    }
    mdb_cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read rollup log");

    if (txn->log_records == 0)
        txn->log_base = !tail_damaged && log_sum_matches(txn->ledger, rc == 0 ? &value : NULL,
                                                       sequence - 1);

    uint8_t key_bytes[8];
    store_be64(key_bytes, sequence);
    key = (MDB_val){ sizeof key_bytes, key_bytes };
    value = (MDB_val){ size, NULL };
    /* MDB_RESERVE: the changes are written straight into the new record. */
    rc = mdb_put(txn->txn, dbi, &key, &value,
                 (tail_damaged ? MDB_NOOVERWRITE : MDB_APPEND) | MDB_RESERVE);
    if (rc != 0)
        return status_of(rc, "write rollup log");
    uint8_t *out = value.mv_data;
    for (size_t i = 0; i < deltas->count; i++) {
        const struct rollup_delta *delta = &deltas->slots[deltas->used[i]];
        if (delta->count == 0)
            continue;
        *out++ = delta->key_size;
        memcpy(out, delta->key, delta->key_size);
        out += delta->key_size;
        uint64_t low = htole64((uint64_t)delta->quantity);
        uint64_t high = htole64((uint64_t)(delta->quantity >> 64));
        uint64_t count = htole64(delta->count);
        memcpy(out, &low, 8);
        memcpy(out + 8, &high, 8);
        memcpy(out + 16, &count, 8);
        out += 24;
    }
    txn->log_records++;
    txn->log_last = sequence;
    /* Without room for the sum, the fold reads the log back, as it does after a restart. */
    /* A log record keeps the changes of at least one event, and so does the sum. */
    if (txn->log_base && rollup_deltas_add_counted(txn->ledger->log_txn, deltas) != HM_OK)
        txn->log_base = 0;
    return HM_OK;
}

/*
 * Calls `visit` for each change of record `sequence` whose key starts with
 * `prefix`. Every change is checked, whatever its tenant, since a damaged
 * one makes the place of the next unknown: HM_ERR_STORAGE.
 */
static int record_each(uint64_t sequence, const MDB_val *value, const uint8_t *prefix,
                       size_t prefix_size, rollup_log_visit visit, void *context)
{
    const uint8_t *at = value->mv_data, *end = at + value->mv_size;
    if (at == end) {
        damaged(sequence, "it is empty");
        return HM_ERR_STORAGE;
    }
    while (at < end) {
        size_t key_size = *at;
        if (key_size <= ROLLUP_KEY_METER_AT || key_size > ROLLUP_KEY_MAX) {
            damaged(sequence, "a change has a key of %zu bytes", key_size);
            return HM_ERR_STORAGE;
        }
        if ((size_t)(end - at) < CHANGE_FIXED_SIZE + key_size) {
            damaged(sequence, "its %zu bytes end inside a change", value->mv_size);
            return HM_ERR_STORAGE;
        }
        const uint8_t *key = at + 1;
        at += 1 + key_size;
        uint64_t low, high, count;
        memcpy(&low, at, 8);
        memcpy(&high, at + 8, 8);
        memcpy(&count, at + 16, 8);
        at += 24;
        count = le64toh(count);
        uint8_t meter = key[ROLLUP_KEY_METER_AT];
        uint32_t period = rollup_key_period(key);
        int meter_valid = meter >= ROLLUP_GPU_SECONDS && meter <= ROLLUP_EVENTS &&
                          meter != ROLLUP_STORAGE_BYTE_SECONDS;
        if (count == 0 || count > CHANGE_EVENTS_MAX || !meter_valid || !period_valid(period)) {
            damaged(sequence, "a change has %llu events, meter %u and period %u",
                    (unsigned long long)count, meter, period);
            return HM_ERR_STORAGE;
        }
        /* Each event adds at most a 64-bit quantity. */
        if (le64toh(high) >= count) {
            damaged(sequence, "a change of %llu events has a quantity above 2^64 per event",
                    (unsigned long long)count);
            return HM_ERR_STORAGE;
        }
        if (prefix_size == 0 || memcmp(key, prefix, prefix_size) == 0) {
            unsigned __int128 quantity = (unsigned __int128)le64toh(high) << 64 | le64toh(low);
            int rc = visit(context, key, key_size, quantity, count);
            if (rc != HM_OK)
                return rc;
        }
    }
    return HM_OK;
}

int rollup_log_each(struct ledger *ledger, MDB_txn *txn, const uint8_t *prefix,
                    size_t prefix_size, rollup_log_visit visit, void *context)
{
    if (log_missing(ledger))
        return HM_OK;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, ledger->tables[TABLE_ROLLUP_LOG], &cursor);
    if (rc != 0)
        return status_of(rc, "open rollup log");
    MDB_val key, value;
    int status = HM_OK;
    for (rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0 && status == HM_OK;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size != 8 || load_be64(key.mv_data) == UINT64_MAX) {
            damaged(0, "a record has a key of %zu bytes that is not a sequence number",
                    key.mv_size);
            status = HM_ERR_STORAGE;
            break;
        }
        status = record_each(load_be64(key.mv_data), &value, prefix, prefix_size, visit, context);
    }
    mdb_cursor_close(cursor);
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read rollup log");
    return status;
}

static int sum_change(void *context, const uint8_t *key, size_t key_size,
                      unsigned __int128 quantity, uint64_t count)
{
    int rc = rollup_deltas_add_key(context, key, key_size, quantity, count);
    if (rc == HM_ERR_STORAGE)
        row_damaged(key, "the changes of the rollup log would overflow it");
    return rc;
}

/* ---- The summary of one snapshot's log, for readers ---- */

struct log_summary {
    pthread_mutex_t lock; /* held while the summary is made or visited */
    size_t snapshot;      /* mdb_txn_id of the snapshot summed; 0: none */
    size_t seen;          /* the snapshot of the last read, summed or not */
    struct rollup_deltas *sums;
    const struct rollup_delta **sorted; /* the keys of `sums` in the order of the rollup rows */
    size_t sorted_capacity;
};

int rollup_log_summary_create(struct ledger *ledger)
{
    struct log_summary *summary = calloc(1, sizeof *summary);
    if (summary == NULL)
        return HM_ERR_NOMEM;
    if (rollup_deltas_create(&summary->sums, 64) != HM_OK) {
        free(summary);
        return HM_ERR_NOMEM;
    }
    pthread_mutex_init(&summary->lock, NULL);
    ledger->log_summary = summary;
    return HM_OK;
}

void rollup_log_summary_free(struct ledger *ledger)
{
    struct log_summary *summary = ledger->log_summary;
    if (summary == NULL)
        return;
    pthread_mutex_destroy(&summary->lock);
    rollup_deltas_free(summary->sums);
    free(summary->sorted);
    free(summary);
    ledger->log_summary = NULL;
}

/* Orders keys as LMDB orders the rollup rows: by their bytes, a prefix first. */
static int key_compare(const uint8_t *a, size_t a_size, const uint8_t *b, size_t b_size)
{
    int order = memcmp(a, b, a_size < b_size ? a_size : b_size);
    if (order != 0)
        return order;
    return a_size < b_size ? -1 : a_size > b_size;
}

static int delta_order(const void *a, const void *b)
{
    const struct rollup_delta *x = *(const struct rollup_delta *const *)a;
    const struct rollup_delta *y = *(const struct rollup_delta *const *)b;
    return key_compare(x->key, x->key_size, y->key, y->key_size);
}

/* Sums the log of the transaction's snapshot, unless the summary is of that snapshot already. */
static int summary_update(struct ledger *ledger, struct log_summary *summary, MDB_txn *txn)
{
    size_t snapshot = mdb_txn_id(txn);
    if (summary->snapshot == snapshot && snapshot != 0)
        return HM_OK;
    summary->snapshot = 0;
    rollup_deltas_clear(summary->sums);
    int rc = rollup_log_each(ledger, txn, NULL, 0, sum_change, summary->sums);
    if (rc != HM_OK)
        return rc;
    size_t count = summary->sums->count;
    if (count > summary->sorted_capacity) {
        const struct rollup_delta **sorted = realloc(summary->sorted, count * sizeof *sorted);
        if (sorted == NULL)
            return HM_ERR_NOMEM;
        summary->sorted = sorted;
        summary->sorted_capacity = count;
    }
    for (size_t i = 0; i < count; i++)
        summary->sorted[i] = &summary->sums->slots[summary->sums->used[i]];
    if (count > 1)
        qsort(summary->sorted, count, sizeof *summary->sorted, delta_order);
    summary->snapshot = snapshot;
    return HM_OK;
}

int rollup_log_each_read(struct ledger *ledger, MDB_txn *txn, const uint8_t *prefix,
                         size_t prefix_size, rollup_log_visit visit, void *context)
{
    if (log_missing(ledger))
        return HM_OK;
    struct log_summary *summary = ledger->log_summary;
    size_t snapshot = mdb_txn_id(txn);
    pthread_mutex_lock(&summary->lock);
    if (snapshot != summary->snapshot && snapshot != summary->seen) {
        /*
         * The first read of a snapshot walks the log for its own prefix, as
         * cheap as a walk gets, and in parallel with other readers. Only a
         * second read of the same snapshot, the sign of a reader of many
         * tenants, pays for the sum.
         */
        summary->seen = snapshot;
        pthread_mutex_unlock(&summary->lock);
        return rollup_log_each(ledger, txn, prefix, prefix_size, visit, context);
    }
    int rc = summary_update(ledger, summary, txn);
    size_t count = rc == HM_OK ? summary->sums->count : 0;
    /* The first key at or after the prefix: every key that starts with it follows. */
    size_t low = 0, high = count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        const struct rollup_delta *delta = summary->sorted[middle];
        if (key_compare(delta->key, delta->key_size, prefix, prefix_size) < 0)
            low = middle + 1;
        else
            high = middle;
    }
    for (size_t i = low; rc == HM_OK && i < count; i++) {
        const struct rollup_delta *delta = summary->sorted[i];
        if (delta->key_size < prefix_size || memcmp(delta->key, prefix, prefix_size) != 0)
            break;
        rc = visit(context, delta->key, delta->key_size, delta->quantity, delta->count);
    }
    pthread_mutex_unlock(&summary->lock);
    return rc;
}

/* Adds summed changes to the rollup rows, one read and one write per key. */
static int rows_add(struct ledger *ledger, MDB_txn *txn, const struct rollup_deltas *sums)
{
    MDB_dbi dbi = ledger->tables[TABLE_ROLLUPS];
    for (size_t i = 0; i < sums->count; i++) {
        const struct rollup_delta *delta = &sums->slots[sums->used[i]];
        MDB_val key = { delta->key_size, (void *)delta->key }, value;
        unsigned __int128 total = 0;
        uint64_t count = 0;
        int rc = mdb_get(txn, dbi, &key, &value);
        if (rc == 0 && value.mv_size == ROLLUP_VALUE_SIZE)
            rollup_value_decode(value.mv_data, &total, &count);
        else if (rc == 0) {
            char what[64];
            snprintf(what, sizeof what, "it has %zu bytes, not %d", value.mv_size,
                     ROLLUP_VALUE_SIZE);
            row_damaged(delta->key, what);
            return HM_ERR_STORAGE;
        } else if (rc != MDB_NOTFOUND) {
            return status_of(rc, "read rollup");
        }
        if (total + delta->quantity < total || count + delta->count < count) {
            row_damaged(delta->key, "adding the rollup log would overflow it");
            return HM_ERR_STORAGE;
        }
        total += delta->quantity;
        count += delta->count;
        uint8_t bytes[ROLLUP_VALUE_SIZE];
        memcpy(bytes, &total, 16);
        memcpy(bytes + 16, &count, 8);
        value = (MDB_val){ sizeof bytes, bytes };
        if ((rc = mdb_put(txn, dbi, &key, &value, 0)) != 0)
            return status_of(rc, "write rollup");
    }
    return HM_OK;
}

int rollup_log_fold(struct ledger *ledger, MDB_txn *txn)
{
    if (log_missing(ledger))
        return HM_OK;
    struct rollup_deltas *sums;
    int rc = rollup_deltas_create(&sums, 1024);
    if (rc != HM_OK)
        return rc;
    rc = rollup_log_each(ledger, txn, NULL, 0, sum_change, sums);
    if (rc == HM_OK)
        rc = rows_add(ledger, txn, sums);
    if (rc == HM_OK)
        log_debug("ledger", "rollup log folded into %zu rollup rows", rollup_deltas_count(sums));
    rollup_deltas_free(sums);
    if (rc != HM_OK)
        return rc;
    /* Empties the table and keeps it. */
    int mdb_rc = mdb_drop(txn, ledger->tables[TABLE_ROLLUP_LOG], 0);
    return mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "empty rollup log");
}

/* rollup_log_fold from the writer's sums: the log is not read. */
static int fold_sums(struct ledger *ledger, MDB_txn *txn)
{
    rollup_deltas_clear(ledger->log_fold);
    int rc = rollup_deltas_merge(ledger->log_fold, ledger->log_sum, 0);
    if (rc == HM_OK)
        rc = rollup_deltas_merge(ledger->log_fold, ledger->log_txn, 0);
    if (rc == HM_OK)
        rc = rows_add(ledger, txn, ledger->log_fold);
    if (rc == HM_OK)
        log_debug("ledger", "rollup log folded into %zu rollup rows",
                  rollup_deltas_count(ledger->log_fold));
    rollup_deltas_clear(ledger->log_fold);
    if (rc != HM_OK)
        return rc;
    int mdb_rc = mdb_drop(txn, ledger->tables[TABLE_ROLLUP_LOG], 0);
    return mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "empty rollup log");
}

int rollup_log_fold_due(struct ledger_txn *writer)
{
    struct ledger *ledger = writer->ledger;
    MDB_txn *txn = writer->txn;
    MDB_stat stat;
    int rc = mdb_stat(txn, ledger->tables[TABLE_ROLLUP_LOG], &stat);
    if (rc != 0)
        return status_of(rc, "read rollup log size");
    if (ledger->fold_refused) {
        /* Fewer records than last time: a rebuild or another process emptied the log. */
        if (stat.ms_entries < ledger->fold_refused_records)
            ledger->fold_refused = 0;
        else
            ledger->fold_refused_records = stat.ms_entries;
    }
    if (ledger->fold_refused)
        return HM_OK;
    size_t pages = stat.ms_leaf_pages + stat.ms_overflow_pages;
    if (stat.ms_entries < ROLLUP_LOG_FOLD_RECORDS && pages < ROLLUP_LOG_FOLD_PAGES)
        return HM_OK;
    /*
     * Damage must not stop the commits of every tenant: the events and
     * their log records are stored either way. A nested transaction lets a
     * fold that finds damage be undone while the commit goes on.
     */
    MDB_txn *fold;
    rc = mdb_txn_begin(ledger->env, txn, 0, &fold);
    if (rc != 0)
        return status_of(rc, "begin rollup fold");
    uint64_t damage_before = atomic_load(&rollups_damage_count);
    int summed = writer->log_records > 0 ? writer->log_base : log_sum_matches_now(ledger, txn);
    int status = summed ? fold_sums(ledger, fold) : rollup_log_fold(ledger, fold);
    if (status == HM_OK) {
        rc = mdb_txn_commit(fold);
        if (rc == 0)
            writer->log_folded = summed ? LOG_FOLDED_FROM_SUM : LOG_FOLDED_BY_READING;
        return rc == 0 ? HM_OK : status_of(rc, "commit rollup fold");
    }
    mdb_txn_abort(fold);
    /* Only damage is skipped. A failed read or write fails the commit, as before. */
    if (status != HM_ERR_STORAGE || atomic_load(&rollups_damage_count) == damage_before)
        return status;
    ledger->fold_refused = 1;
    ledger->fold_refused_records = stat.ms_entries;
    log_error("ledger", "the rollup log is not folded while it or the rollup rows are damaged; "
              "events are still stored, and it grows until `meterctl rollups rebuild`");
    return HM_OK;
}

int ledger_rollups_fold(struct ledger *ledger)
{
    if (log_missing(ledger))
        return HM_OK;
    struct ledger_txn *txn;
    int rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_stat stat;
    int mdb_rc = mdb_stat(txn->txn, ledger->tables[TABLE_ROLLUP_LOG], &stat);
    if (mdb_rc != 0 || stat.ms_entries == 0) {
        ledger_abort(txn);
        return mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "read rollup log size");
    }
    rc = rollup_log_fold(ledger, txn->txn);
    if (rc != HM_OK) {
        ledger_abort(txn);
        return rc;
    }
    return ledger_commit(txn);
}

struct rebuild_walk {
    struct rollup_deltas *sums;
    uint64_t events;
};

static int rebuild_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                         const uint8_t *record, size_t record_size)
{
    struct rebuild_walk *walk = context;
    struct event event;
    if (stored_event_decode(tenant_id, seq, record, record_size, &event) != HM_OK)
        return HM_ERR_STORAGE;
    walk->events++;
    return rollup_deltas_add_event(walk->sums, &event);
}

/*
 * Adds to `ids` each tenant that has a key in `table`, whose keys start
 * with the tenant id and are `key_size` bytes long. HM_ERR_NOMEM, or
 * HM_ERR_STORAGE for a key of another size.
 */
static int tenants_of_table(struct ledger *ledger, MDB_txn *txn, enum table table,
                            size_t key_size, uint8_t (**ids)[UUID_SIZE], size_t *count,
                            size_t *capacity)
{
    if (ledger->table_missing[table])
        return HM_OK;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, ledger->tables[table], &cursor);
    if (rc != 0)
        return status_of(rc, "open a cursor");
    uint8_t seek[UUID_SIZE + 16];
    MDB_val key, value;
    int status = HM_OK;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST);
    while (rc == 0 && key.mv_size == key_size) {
        /* Each tenant comes once per table; the caller drops those of both tables. */
        if (*count == *capacity) {
            size_t grown_capacity = *capacity ? 2 * *capacity : 64;
            uint8_t(*grown)[UUID_SIZE] = realloc(*ids, grown_capacity * UUID_SIZE);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            *ids = grown;
            *capacity = grown_capacity;
        }
        memcpy((*ids)[(*count)++], key.mv_data, UUID_SIZE);
        /* The next key is the first of the next tenant: past this tenant's highest key. */
        memcpy(seek, key.mv_data, UUID_SIZE);
        memset(seek + UUID_SIZE, 0xff, key_size - UUID_SIZE);
        key = (MDB_val){ key_size, seek };
        rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
        if (rc == 0 && key.mv_size == key_size && memcmp(key.mv_data, seek, key_size) == 0)
            rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    mdb_cursor_close(cursor);
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read the tenants of the stored events");
    if (status == HM_OK && rc == 0) {
        log_error("ledger", "a stored event has a key of %zu bytes, expected %zu: the ledger is "
                  "damaged; restore the data directory from a backup", key.mv_size, key_size);
        status = HM_ERR_STORAGE;
    }
    return status;
}

static int tenant_order(const void *a, const void *b)
{
    return memcmp(a, b, UUID_SIZE);
}

int ledger_rollups_rebuild(struct ledger *ledger, uint64_t *events_out, size_t *rows_out)
{
    struct rebuild_walk walk = { .events = 0 };
    int rc = rollup_deltas_create(&walk.sums, 4096);
    if (rc != HM_OK)
        return rc;
    struct ledger_txn *txn = NULL;
    if ((rc = ledger_begin(ledger, &txn)) != HM_OK) {
        rollup_deltas_free(walk.sums);
        return rc;
    }
    /* Every tenant with stored events: those of the blocks and of the older events table. */
    uint8_t(*tenants)[UUID_SIZE] = NULL;
    size_t tenant_count = 0, capacity = 0;
    rc = tenants_of_table(ledger, txn->txn, TABLE_BLOCKS, BLOCK_KEY_SIZE, &tenants,
                          &tenant_count, &capacity);
    if (rc == HM_OK)
        rc = tenants_of_table(ledger, txn->txn, TABLE_EVENTS, 2 * UUID_SIZE, &tenants,
                              &tenant_count, &capacity);
    if (rc == HM_OK && tenant_count > 1)
        qsort(tenants, tenant_count, UUID_SIZE, tenant_order);
    for (size_t i = 0; rc == HM_OK && i < tenant_count; i++) {
        /* records_walk visits both tables, so a tenant of both is walked once. */
        if (i > 0 && memcmp(tenants[i], tenants[i - 1], UUID_SIZE) == 0)
            continue;
        rc = records_walk(ledger, txn->txn, tenants[i], 0, 0, rebuild_visit, &walk);
    }
    free(tenants);
    /* The rows and the log are replaced as a whole, in the transaction that read the events. */
    int mdb_rc = 0;
    if (rc == HM_OK)
        mdb_rc = mdb_drop(txn->txn, ledger->tables[TABLE_ROLLUPS], 0);
    if (rc == HM_OK && mdb_rc == 0 && !log_missing(ledger))
        mdb_rc = mdb_drop(txn->txn, ledger->tables[TABLE_ROLLUP_LOG], 0);
    if (mdb_rc != 0)
        rc = status_of(mdb_rc, "empty the rollups");
    if (rc == HM_OK)
        rc = rows_add(ledger, txn->txn, walk.sums);
    size_t rows = rollup_deltas_count(walk.sums);
    rollup_deltas_free(walk.sums);
    if (rc != HM_OK) {
        ledger_abort(txn);
        return rc;
    }
    if ((rc = ledger_commit(txn)) != HM_OK)
        return rc;
    ledger->fold_refused = 0;
    *events_out = walk.events;
    *rows_out = rows;
    return HM_OK;
}
