#include "range.h"
#include "ledger_private.h"

#include "ingest/wire.h"

#include <stdio.h>
#include <stdlib.h>

struct range_rows {
    struct rollup_row *rows;
    size_t count;
    size_t capacity;
};

/* Finds the row of a meter and dimension, adding an empty one when missing; NULL when out of
 * memory. */
static struct rollup_row *range_row(struct range_rows *list, enum rollup_meter meter,
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

static int range_add(struct range_rows *list, enum rollup_meter meter, const char *dimension,
                     uint64_t quantity)
{
    struct rollup_row *row = range_row(list, meter, dimension);
    if (row == NULL)
        return HM_ERR_NOMEM;
    row->quantity += quantity;
    row->event_count += 1;
    return HM_OK;
}

/*
 * Adds one event to the rows. NOTE: this repeats the mapping of
 * event_rollups in ledger.c, which is private to that file; test_range
 * compares a whole month's range with ledger_rollups, so a change to one
 * and not the other fails there.
 */
static int range_add_event(struct range_rows *list, const struct event *event)
{
    int rc = range_add(list, ROLLUP_EVENTS, event_kind_name(event->kind), 1);
    if (rc != HM_OK)
        return rc;
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        return range_add(list, ROLLUP_GPU_SECONDS, event->u.gpu.gpu_type, event->u.gpu.duration_s);
    case EVENT_INFERENCE: {
        const struct event_inference *inference = &event->u.inference;
        uint64_t uncached = inference->input_tokens - inference->cached_input_tokens;
        if (uncached > 0 && (rc = range_add(list, ROLLUP_INPUT_TOKENS, inference->model, uncached)))
            return rc;
        if (inference->output_tokens > 0 &&
            (rc =
                 range_add(list, ROLLUP_OUTPUT_TOKENS, inference->model, inference->output_tokens)))
            return rc;
        if (inference->cached_input_tokens > 0)
            return range_add(list, ROLLUP_CACHED_INPUT_TOKENS, inference->model,
                             inference->cached_input_tokens);
        return HM_OK;
    }
    case EVENT_STORAGE:
        if (event->u.storage.bytes_transferred > 0)
            return range_add(list, ROLLUP_TRANSFER_BYTES, "", event->u.storage.bytes_transferred);
        return HM_OK;
    case EVENT_API_CALL: return range_add(list, ROLLUP_API_CALLS, "", 1);
    }
    return HM_ERR_INVALID;
}

/* Scans every stored event of the tenant and adds those in [start_us, end_us). */
static int range_events(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        int64_t start_us, int64_t end_us, struct range_rows *list)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, ledger->tables[TABLE_EVENTS], &cursor);
    if (rc != 0)
        return status_of(rc, "open event cursor");
    MDB_val key = {UUID_SIZE, (void *)tenant_id}, value;
    int status = HM_OK;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (rc == 0 && key.mv_size >= UUID_SIZE && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        struct event event;
        size_t offset = 0;
        const char *reason = NULL;
        if (record_decode(value.mv_data, value.mv_size, &offset, tenant_id, &event, &reason)) {
            log_error("ledger", "stored event cannot be decoded: %s", reason);
            status = HM_ERR_STORAGE;
            break;
        }
        if (event.timestamp_us >= start_us && event.timestamp_us < end_us &&
            (status = range_add_event(list, &event)) != HM_OK)
            break;
        rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read events");
    mdb_cursor_close(cursor);
    return status;
}

static int64_t sample_seconds(const MDB_val *key)
{
    uint64_t biased = load_be64((const uint8_t *)key->mv_data + UUID_SIZE);
    return floor_seconds((int64_t)(biased ^ (UINT64_C(1) << 63)));
}

/*
 * Integrates the storage level over [start_s, end_s) inside the caller's
 * transaction. NOTE: this repeats storage_byte_seconds of ledger.c (private
 * to that file) so that the events and the samples come from one snapshot;
 * test_range checks that both agree on a whole month.
 */
static int range_storage(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         int64_t start_s, int64_t end_s, unsigned __int128 *out)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, ledger->tables[TABLE_STORAGE], &cursor);
    if (rc != 0)
        return status_of(rc, "open storage cursor");

    /* The level at start_s is the one of the last sample before it. */
    uint8_t seek[UUID_SIZE + 8];
    memcpy(seek, tenant_id, UUID_SIZE);
    store_be64(seek + UUID_SIZE, biased_time(start_s * 1000000));
    MDB_val key = {sizeof seek, seek}, value;
    uint64_t level = 0;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    int have_previous = rc == 0 ? mdb_cursor_get(cursor, &key, &value, MDB_PREV) == 0
                                : mdb_cursor_get(cursor, &key, &value, MDB_LAST) == 0;
    if (have_previous && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0 && value.mv_size == 8)
        memcpy(&level, value.mv_data, 8);

    unsigned __int128 total = 0;
    int64_t at = start_s;
    key.mv_size = sizeof seek;
    key.mv_data = seek;
    rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (rc == 0 && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        int64_t sample_s = sample_seconds(&key);
        if (sample_s >= end_s)
            break;
        total += (unsigned __int128)level * (uint64_t)(sample_s - at);
        if (value.mv_size == 8)
            memcpy(&level, value.mv_data, 8);
        at = sample_s;
        rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    total += (unsigned __int128)level * (uint64_t)(end_s - at);
    mdb_cursor_close(cursor);
    *out = total;
    return HM_OK;
}

int ledger_usage_range(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], int64_t start_us,
                       int64_t end_us, struct rollup_row **rows_out, size_t *count_out)
{
    if (end_us < start_us)
        return HM_ERR_INVALID;
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct range_rows list = {0};
    rc = range_events(ledger, txn, tenant_id, start_us, end_us, &list);

    unsigned __int128 byte_seconds = 0;
    if (rc == HM_OK)
        rc = range_storage(ledger, txn, tenant_id, floor_seconds(start_us), floor_seconds(end_us),
                           &byte_seconds);
    mdb_txn_abort(txn);
    if (rc == HM_OK && byte_seconds > 0) {
        struct rollup_row *row = range_row(&list, ROLLUP_STORAGE_BYTE_SECONDS, "");
        if (row == NULL)
            rc = HM_ERR_NOMEM;
        else
            row->quantity = byte_seconds;
    }
    if (rc != HM_OK) {
        free(list.rows);
        return rc;
    }
    *rows_out = list.rows;
    *count_out = list.count;
    return HM_OK;
}
