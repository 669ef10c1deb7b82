/*
 * The arrival sequence: per tenant, the order in which events were stored.
 * The events table is keyed by (tenant, event id), which is not the order
 * of arrival, so a reader that resumes "after the last event it saw" needs
 * these numbers (see ledger.h).
 */
#include "ledger.h"
#include "ledger_private.h"

#include "ingest/wire.h"

#include <stdlib.h>

#define ARRIVAL_KEY_SIZE (UUID_SIZE + 8)

/* Marks in the meta table that every stored event has its arrival number. */
static const char backfill_mark[] = "arrival_index";
/* Meta key of the last event key numbered so far, while the numbering is unfinished. */
static const char backfill_progress[] = "arrival_index_after";

/*
 * Events numbered per write transaction when an older ledger is numbered,
 * so that a transaction stays far below LMDB's limit of dirty pages.
 */
#define ARRIVAL_BACKFILL_BATCH 100000

static void arrival_key(uint8_t key[ARRIVAL_KEY_SIZE], const uint8_t tenant_id[UUID_SIZE],
                        uint64_t seq)
{
    memcpy(key, tenant_id, UUID_SIZE);
    store_be64(key + UUID_SIZE, seq);
}

/* Finds the tenant's highest number in the older arrival table: the last key with its prefix. */
static int last_seq(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                    uint64_t *seq_out)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, ledger->tables[TABLE_ARRIVALS], &cursor);
    if (rc != 0)
        return status_of(rc, "open arrival cursor");
    uint8_t seek[ARRIVAL_KEY_SIZE];
    arrival_key(seek, tenant_id, UINT64_MAX);
    MDB_val key = { sizeof seek, seek }, value;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    if (rc == 0 && key.mv_size == sizeof seek && memcmp(key.mv_data, seek, sizeof seek) == 0) {
        mdb_cursor_close(cursor);
        log_error("ledger", "the arrival sequence of a tenant reached its maximum");
        return HM_ERR_OVERFLOW;
    }
    rc = rc == 0 ? mdb_cursor_get(cursor, &key, &value, MDB_PREV)
                 : mdb_cursor_get(cursor, &key, &value, MDB_LAST);
    *seq_out = 0;
    if (rc == 0 && key.mv_size == ARRIVAL_KEY_SIZE &&
        memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0)
        *seq_out = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
    mdb_cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read arrival sequence");
    return HM_OK;
}

/*
 * Numbers up to ARRIVAL_BACKFILL_BATCH events after the saved position in one
 * write transaction. Sets *done when every event is numbered.
 */
static int backfill_step(struct ledger *ledger, MDB_txn *txn, int *done)
{
    MDB_val mark = { sizeof backfill_mark - 1, (void *)backfill_mark }, value;
    int rc = mdb_get(txn, ledger->tables[TABLE_META], &mark, &value);
    if (rc == 0) {
        *done = 1;
        return HM_OK;
    }
    if (rc != MDB_NOTFOUND)
        return status_of(rc, "read arrival mark");

    /* Resumes after the last event that an earlier step numbered, in (tenant, event id) order. */
    MDB_val progress = { sizeof backfill_progress - 1, (void *)backfill_progress }, after;
    uint8_t after_key[2 * UUID_SIZE];
    rc = mdb_get(txn, ledger->tables[TABLE_META], &progress, &after);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read arrival progress");
    int resume = rc == 0;
    /* Starting over would give the events numbered so far a second number. */
    if (resume && after.mv_size != sizeof after_key) {
        log_error("ledger", "the progress record of the arrival numbering (meta key %s) has %zu "
                  "bytes, expected %zu: the ledger is damaged; restore the data directory from "
                  "a backup", backfill_progress, after.mv_size, sizeof after_key);
        return HM_ERR_STORAGE;
    }
    if (resume)
        memcpy(after_key, after.mv_data, sizeof after_key);

    MDB_cursor *cursor;
    rc = mdb_cursor_open(txn, ledger->tables[TABLE_EVENTS], &cursor);
    if (rc != 0)
        return status_of(rc, "open event cursor");
    MDB_val key = { sizeof after_key, after_key };
    rc = resume ? mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE)
                : mdb_cursor_get(cursor, &key, &value, MDB_FIRST);
    if (rc == 0 && resume && key.mv_size == sizeof after_key &&
        memcmp(key.mv_data, after_key, sizeof after_key) == 0)
        rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);

    uint8_t tenant[UUID_SIZE] = { 0 };
    uint64_t seq = 0, numbered = 0;
    int status = HM_OK;
    for (; rc == 0 && numbered < ARRIVAL_BACKFILL_BATCH;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
        const uint8_t *bytes = key.mv_data;
        if (key.mv_size != 2 * UUID_SIZE) {
            status = HM_ERR_STORAGE;
            log_error("ledger", "event key of size %zu, expected %d", key.mv_size, 2 * UUID_SIZE);
            break;
        }
        if (seq == 0 || memcmp(bytes, tenant, UUID_SIZE) != 0) {
            memcpy(tenant, bytes, UUID_SIZE);
            if ((status = last_seq(ledger, txn, tenant, &seq)) != HM_OK)
                break;
        }
        uint8_t arrival_bytes[ARRIVAL_KEY_SIZE];
        arrival_key(arrival_bytes, tenant, ++seq);
        MDB_val arrival = { sizeof arrival_bytes, arrival_bytes };
        MDB_val event_id = { UUID_SIZE, (void *)(bytes + UUID_SIZE) };
        int put_rc = mdb_put(txn, ledger->tables[TABLE_ARRIVALS], &arrival, &event_id, 0);
        if (put_rc != 0) {
            status = status_of(put_rc, "number stored events");
            break;
        }
        memcpy(after_key, bytes, sizeof after_key);
        numbered++;
    }
    mdb_cursor_close(cursor);
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read events");
    if (status != HM_OK)
        return status;

    *done = rc == MDB_NOTFOUND;
    if (*done) {
        uint8_t one = 1;
        MDB_val flag = { sizeof one, &one };
        rc = mdb_put(txn, ledger->tables[TABLE_META], &mark, &flag, 0);
        if (rc == 0)
            rc = mdb_del(txn, ledger->tables[TABLE_META], &progress, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    } else {
        MDB_val saved = { sizeof after_key, after_key };
        rc = mdb_put(txn, ledger->tables[TABLE_META], &progress, &saved, 0);
    }
    if (rc != 0)
        return status_of(rc, "write arrival progress");
    if (numbered > 0)
        log_info("ledger", "numbered %llu stored events in arrival order%s",
                 (unsigned long long)numbered, *done ? "" : ", continuing");
    return HM_OK;
}

int arrivals_backfill(struct ledger *ledger)
{
    int done = 0;
    while (!done) {
        MDB_txn *txn;
        int rc = txn_begin(ledger, 0, &txn);
        if (rc != 0)
            return status_of(rc, "begin write transaction");
        rc = backfill_step(ledger, txn, &done);
        if (rc != HM_OK) {
            mdb_txn_abort(txn);
            return rc;
        }
        rc = mdb_txn_commit(txn);
        if (rc != 0)
            return status_of(rc, "commit arrival numbers");
    }
    return HM_OK;
}

int arrival_last_legacy(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        uint64_t *seq_out)
{
    if (ledger->table_missing[TABLE_ARRIVALS]) {
        *seq_out = 0;
        return HM_OK;
    }
    return last_seq(ledger, txn, tenant_id, seq_out);
}

int ledger_arrival_last(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                        uint64_t *seq_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = arrival_last(ledger, txn, tenant_id, seq_out);
    mdb_txn_abort(txn);
    return rc;
}

/* Reads the record that an older arrival entry names, in TABLE_EVENTS. */
static int legacy_record(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t seq, const MDB_val *event_id, MDB_val *record)
{
    if (event_id->mv_size != UUID_SIZE) {
        log_error("ledger", "arrival %llu has a value of size %zu", (unsigned long long)seq,
                  event_id->mv_size);
        return HM_ERR_STORAGE;
    }
    uint8_t key_bytes[2 * UUID_SIZE];
    memcpy(key_bytes, tenant_id, UUID_SIZE);
    memcpy(key_bytes + UUID_SIZE, event_id->mv_data, UUID_SIZE);
    MDB_val key = { sizeof key_bytes, key_bytes };
    int rc = table_get(txn, ledger, TABLE_EVENTS, &key, record);
    if (rc == MDB_NOTFOUND) {
        log_error("ledger", "arrival %llu names an event that is not stored",
                  (unsigned long long)seq);
        return HM_ERR_STORAGE;
    }
    if (rc != 0)
        return status_of(rc, "read event");
    if (record->mv_size < RECORD_HEADER_SIZE) {
        log_error("ledger", "stored event of arrival %llu is truncated", (unsigned long long)seq);
        return HM_ERR_STORAGE;
    }
    return HM_OK;
}

int arrivals_walk_legacy(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t after_seq, uint64_t limit, record_visit visit, void *context,
                         uint64_t *visited_out, uint64_t *last_out)
{
    *visited_out = 0;
    int rc = arrival_last_legacy(ledger, txn, tenant_id, last_out);
    if (rc != HM_OK || *last_out <= after_seq)
        return rc;
    MDB_cursor *cursor;
    rc = table_cursor_open(txn, ledger, TABLE_ARRIVALS, &cursor);
    if (rc != 0)
        return status_of(rc, "open arrival cursor");
    uint8_t seek[ARRIVAL_KEY_SIZE];
    arrival_key(seek, tenant_id, after_seq + 1);
    MDB_val key = { sizeof seek, seek }, value;
    uint64_t expected = after_seq + 1;
    int status = HM_OK;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (rc == 0 && (limit == 0 || *visited_out < limit) && key.mv_size == ARRIVAL_KEY_SIZE &&
           memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        uint64_t seq = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
        if (seq != expected) {
            log_error("ledger", "arrival sequence jumps from %llu to %llu",
                      (unsigned long long)(expected - 1), (unsigned long long)seq);
            status = HM_ERR_STORAGE;
            break;
        }
        MDB_val record;
        status = legacy_record(ledger, txn, tenant_id, seq, &value, &record);
        if (status != HM_OK)
            break;
        status = visit(context, tenant_id, seq, record.mv_data, record.mv_size);
        if (status != 0)
            break;
        expected++;
        (*visited_out)++;
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read arrivals");
    cursor_close(cursor);
    return status;
}

struct decode_walk {
    int (*visit)(void *context, uint64_t seq, const struct event *event);
    void *context;
};

static int decode_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                        const uint8_t *record, size_t record_size)
{
    struct decode_walk *walk = context;
    struct event event;
    size_t offset = 0;
    const char *reason = NULL;
    if (record_decode(record, record_size, &offset, tenant_id, &event, &reason) != HM_OK ||
        offset != record_size) {
        log_error("ledger", "stored event of arrival %llu cannot be decoded: %s",
                  (unsigned long long)seq, reason ? reason : "trailing bytes");
        return HM_ERR_STORAGE;
    }
    return walk->visit(walk->context, seq, &event);
}

int ledger_arrivals_each(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t after_seq, uint64_t limit,
                         int (*visit)(void *context, uint64_t seq, const struct event *event),
                         void *context)
{
    if (after_seq == UINT64_MAX)
        return HM_OK;
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct decode_walk walk = { visit, context };
    rc = records_walk(ledger, txn, tenant_id, after_seq, limit, decode_visit, &walk);
    mdb_txn_abort(txn);
    return rc;
}

static int count_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                       const uint8_t *record, size_t record_size)
{
    (void)tenant_id;
    (void)seq;
    (void)record;
    (void)record_size;
    (*(uint64_t *)context)++;
    return HM_OK;
}

int ledger_arrivals_verify(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE])
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    /* One snapshot, so that a writer beside this check cannot make the counts differ. */
    uint64_t events = 0, last = 0, numbered = 0;
    rc = events_count(ledger, txn, tenant_id, &events);
    if (rc == HM_OK)
        rc = arrival_last(ledger, txn, tenant_id, &last);
    /* The walk checks that the numbers have no gap and that each names a stored event. */
    if (rc == HM_OK)
        rc = records_walk(ledger, txn, tenant_id, 0, 0, count_visit, &numbered);
    mdb_txn_abort(txn);
    if (rc == HM_ERR_STORAGE)
        return HM_ERR_CONFLICT;
    if (rc != HM_OK)
        return rc;
    if (numbered != events || last != events) {
        log_error("ledger", "arrival sequence has %llu numbers up to %llu for %llu stored events",
                  (unsigned long long)numbered, (unsigned long long)last,
                  (unsigned long long)events);
        return HM_ERR_CONFLICT;
    }
    return HM_OK;
}
