#include "store.h"

#include "common/status.h"
#include "rollup/deltas.h"

#include <stdlib.h>
#include <string.h>

static int lookup_begin(void *context)
{
    struct store *store = context;
    return ledger_read_begin(store->ledger);
}

static void lookup_end(void *context)
{
    struct store *store = context;
    ledger_read_end(store->ledger);
}

static int key_lookup(void *context, uint64_t key_id, struct ingest_key *out)
{
    struct store *store = context;
    struct key_record record;
    int rc = ledger_key_lookup(store->ledger, key_id, &record);
    if (rc != HM_OK)
        return rc;
    memcpy(out->tenant_id, record.tenant_id, UUID_SIZE);
    memcpy(out->signing_key, record.signing_key, sizeof out->signing_key);
    out->revoked = record.status != KEY_ACTIVE;
    out->expires_s = record.expires_s;
    return HM_OK;
}

static void log_conflict(struct store *store, const struct event *event)
{
    uint64_t suppressed = 0;
    if (!log_limit_pass(&store->conflict_log, &suppressed))
        return;
    char tenant[UUID_TEXT_SIZE], event_id[UUID_TEXT_SIZE];
    uuid_format(event->tenant_id, tenant);
    uuid_format(event->event_id, event_id);
    log_warn("store",
             "event rejected reason=conflict tenant=%s event_id=%s: this id was stored with "
             "other content; send a new id for a new event (suppressed=%llu)",
             tenant, event_id, (unsigned long long)suppressed);
}

/*
 * Records ahead of the one being appended whose id index slots are fetched
 * meanwhile. Each probe is a random memory access, and several in flight
 * hide most of their latency.
 */
#define PREFETCH_AHEAD 16

static size_t record_size_of(const uint8_t *record)
{
    return (size_t)record[2] | (size_t)record[3] << 8;
}

/*
 * On the loop's thread: sums the rollup changes of a frame's events into its
 * batch's table, so that the commit thread only stores records.
 */
static int prepare(void *context, struct ingest_batch *batch, const struct batch_entry *entry,
                   const uint8_t *body, const struct event *events)
{
    (void)body;
    struct store *store = context;
    struct rollup_deltas *deltas = batch->hook_state;
    if (deltas == NULL) {
        if (store->batch_state_count == STORE_BATCH_STATES_MAX)
            return HM_ERR_NOMEM;
        int rc = rollup_deltas_create(&deltas, 1024);
        if (rc != HM_OK)
            return rc;
        store->batch_states[store->batch_state_count++] = deltas;
        batch->hook_state = deltas;
    }
    /* Every change of the frame or none: rollup_deltas_add_events makes room first. */
    return rollup_deltas_add_events(deltas, events, entry->event_count);
}

static void batch_reset(void *context, struct ingest_batch *batch)
{
    (void)context;
    if (batch->hook_state != NULL)
        rollup_deltas_clear(batch->hook_state);
}

/*
 * Stores the records of one accepted frame. The batch's rollup changes
 * count every event, so those of a duplicate or a conflict go to
 * store->not_stored, to be taken away again.
 */
static int append_frame(struct store *store, struct ledger_txn *txn, struct batch_entry *entry,
                        const uint8_t *body)
{
    size_t offset = 0, ahead = 0;
    uint16_t ahead_index = 0;
    for (uint16_t i = 0; i < entry->event_count; i++) {
        while (ahead_index < entry->event_count && ahead_index < i + PREFETCH_AHEAD &&
               ahead + RECORD_HEADER_SIZE <= entry->body_size) {
            size_t size = record_size_of(body + ahead);
            if (size < RECORD_HEADER_SIZE)
                break;
            ledger_append_prefetch(txn, entry->tenant_id, body + ahead + RECORD_ID_AT);
            ahead += size;
            ahead_index++;
        }
        const uint8_t *record = body + offset;
        size_t size = record_size_of(record);
        int outcome = ledger_append_record(txn, entry->tenant_id, record, size);
        offset += size;
        if (outcome < 0)
            return outcome;
        if (outcome == APPEND_STORED) {
            entry->stored++;
            continue;
        }
        struct event event;
        size_t at = 0;
        const char *reason = NULL;
        if (record_decode(record, size, &at, entry->tenant_id, &event, &reason))
            return HM_ERR_INVALID;
        int rc = rollup_deltas_add_event(store->not_stored, &event);
        if (rc != HM_OK)
            return rc;
        if (outcome == APPEND_DUPLICATE) {
            entry->duplicates++;
        } else {
            entry->conflicts++;
            log_conflict(store, &event);
        }
    }
    return HM_OK;
}

static int commit(void *context, struct ingest_batch *batch)
{
    struct store *store = context;
    batch->write_us = batch->lock_us = 0;
    if (store->not_stored == NULL) {
        int rc = rollup_deltas_create(&store->not_stored, 64);
        if (rc != HM_OK)
            return rc;
    }
    rollup_deltas_clear(store->not_stored);
    struct ledger_txn *txn;
    int rc = ledger_begin(store->ledger, &txn);
    batch->lock_us = ledger_begin_lock_us(store->ledger);
    if (rc != HM_OK)
        return rc;
    for (size_t i = 0; i < batch->entry_count; i++) {
        struct batch_entry *entry = &batch->entries[i];
        if (entry->status != FRAME_ACCEPTED)
            continue;
        rc = append_frame(store, txn, entry, batch->arena + entry->body_offset);
        if (rc != HM_OK) {
            ledger_abort(txn);
            return rc;
        }
    }
    /* Every accepted frame was prepared, so the batch has its table of changes. */
    if (batch->hook_state != NULL)
        rc = ledger_rollups_apply(txn, batch->hook_state, 0);
    if (rc == HM_OK)
        rc = ledger_rollups_apply(txn, store->not_stored, 1);
    if (rc != HM_OK) {
        ledger_abort(txn);
        return rc;
    }
    rc = ledger_commit(txn);
    batch->write_us = ledger_commit_write_us(store->ledger);
    store_index_read(store, &batch->index);
    return rc;
}

void store_index_read(const struct store *store, struct batch_index *out)
{
    struct ledger_index_stats index;
    ledger_index_stats(store->ledger, &index);
    *out = (struct batch_index){ index.ids,        index.memory_bytes, index.disk_bytes,
                                 index.runs,       index.spill_failures, index.spill_waits,
                                 index.spill_wait_us };
}

void store_release(struct store *store)
{
    for (size_t i = 0; i < store->batch_state_count; i++)
        rollup_deltas_free(store->batch_states[i]);
    store->batch_state_count = 0;
    rollup_deltas_free(store->not_stored);
    store->not_stored = NULL;
}

void store_hooks(struct store *store, struct server_hooks *hooks)
{
    store->conflict_log = (struct log_limit)LOG_LIMIT_INIT(20, 10);
    hooks->context = store;
    hooks->lookup_begin = lookup_begin;
    hooks->lookup_end = lookup_end;
    hooks->key_lookup = key_lookup;
    hooks->commit = commit;
    hooks->prepare = prepare;
    hooks->batch_reset = batch_reset;
}
