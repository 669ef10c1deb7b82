/*
 * The rollup log: the rollup changes of each appending transaction, written
 * as one record at the end of a table of their own instead of into the
 * rollup rows. A batch of events then copies the log's last page and its own
 * event blocks, and not one B-tree page for each tenant and month it
 * touches. Every few hundred records a transaction folds the log into the
 * rows and empties it. Readers add the records still in the log to the rows
 * they read, in the same read transaction, so that they see the totals that
 * the stored events give at every commit.
 *
 * Record: key = sequence number (8 bytes, big-endian, from 1 after each
 * fold); value = changes, each a key size (1 byte), the rollup key, the
 * quantity (16 bytes, little-endian) and the event count (8 bytes,
 * little-endian). A record holds only changes of at least one event.
 */
#include "ledger_private.h"
#include "deltas.h"
#include "deltas_private.h"

#include <stdlib.h>

/* The log is folded at the commit that takes it to this many records or pages. */
#define ROLLUP_LOG_FOLD_RECORDS 256
#define ROLLUP_LOG_FOLD_PAGES 1024

#define CHANGE_FIXED_SIZE (1 + 16 + 8)

static int log_missing(const struct ledger *ledger)
{
    return ledger->table_missing[TABLE_ROLLUP_LOG];
}

int rollup_log_append(struct ledger_txn *txn, const struct rollup_deltas *deltas)
{
    size_t size = 0;
    for (size_t i = 0; i < deltas->count; i++) {
        const struct rollup_delta *delta = &deltas->slots[deltas->used[i]];
        if (delta->count > 0)
            size += CHANGE_FIXED_SIZE + delta->key_size;
        else if (delta->quantity != 0) {
            log_error("ledger", "a rollup change of no events has a quantity");
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
    MDB_val key, value;
    uint64_t sequence = 1;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_LAST);
    if (rc == 0 && key.mv_size == 8)
        sequence = load_be64(key.mv_data) + 1;
    mdb_cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read rollup log");

    uint8_t key_bytes[8];
    store_be64(key_bytes, sequence);
    key = (MDB_val){ sizeof key_bytes, key_bytes };
    value = (MDB_val){ size, NULL };
    /* MDB_RESERVE: the changes are written straight into the new record. */
    rc = mdb_put(txn->txn, dbi, &key, &value, MDB_APPEND | MDB_RESERVE);
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
    return HM_OK;
}

/* Calls `visit` for each change of one record; HM_ERR_STORAGE for a damaged record. */
static int record_each(const MDB_val *value, const uint8_t *prefix, size_t prefix_size,
                       rollup_log_visit visit, void *context)
{
    const uint8_t *at = value->mv_data, *end = at + value->mv_size;
    while (at < end) {
        size_t key_size = *at;
        if (key_size <= ROLLUP_KEY_METER_AT || key_size > ROLLUP_KEY_MAX) {
            log_error("ledger", "a rollup log record has a change with a key of %zu bytes",
                      key_size);
            return HM_ERR_STORAGE;
        }
        if ((size_t)(end - at) < CHANGE_FIXED_SIZE + key_size) {
            log_error("ledger", "a rollup log record of %zu bytes ends inside a change",
                      value->mv_size);
            return HM_ERR_STORAGE;
        }
        const uint8_t *key = at + 1;
        at += 1 + key_size;
        if (prefix_size == 0 || memcmp(key, prefix, prefix_size) == 0) {
            uint64_t low, high, count;
            memcpy(&low, at, 8);
            memcpy(&high, at + 8, 8);
            memcpy(&count, at + 16, 8);
            unsigned __int128 quantity = (unsigned __int128)le64toh(high) << 64 | le64toh(low);
            int rc = visit(context, key, key_size, quantity, le64toh(count));
            if (rc != HM_OK)
                return rc;
        }
        at += 24;
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
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT))
        status = record_each(&value, prefix, prefix_size, visit, context);
    mdb_cursor_close(cursor);
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read rollup log");
    return status;
}

static int sum_change(void *context, const uint8_t *key, size_t key_size,
                      unsigned __int128 quantity, uint64_t count)
{
    return rollup_deltas_add_key(context, key, key_size, quantity, count);
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
            log_error("ledger", "corrupt rollup record of size %zu", value.mv_size);
            return HM_ERR_STORAGE;
        } else if (rc != MDB_NOTFOUND) {
            return status_of(rc, "read rollup");
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

int rollup_log_fold_due(struct ledger *ledger, MDB_txn *txn)
{
    MDB_stat stat;
    int rc = mdb_stat(txn, ledger->tables[TABLE_ROLLUP_LOG], &stat);
    if (rc != 0)
        return status_of(rc, "read rollup log size");
    if (stat.ms_entries < ROLLUP_LOG_FOLD_RECORDS &&
        stat.ms_leaf_pages + stat.ms_overflow_pages < ROLLUP_LOG_FOLD_PAGES)
        return HM_OK;
    return rollup_log_fold(ledger, txn);
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
