#include "store.h"

#include "common/status.h"

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
 * meanwhile: each probe is a random memory access, and several in flight
 * hide most of their latency.
 */
#define PREFETCH_AHEAD 16

/* Appends the events of one accepted frame. */
static int append_frame(struct store *store, struct ledger_txn *txn, struct batch_entry *entry,
                        const uint8_t *body)
{
    size_t offset = 0, ahead = 0;
    uint16_t ahead_index = 0;
    for (uint16_t i = 0; i < entry->event_count; i++) {
        while (ahead_index < entry->event_count && ahead_index < i + PREFETCH_AHEAD &&
               ahead + RECORD_HEADER_SIZE <= entry->body_size) {
            size_t size = (size_t)body[ahead + 2] | (size_t)body[ahead + 3] << 8;
            if (size < RECORD_HEADER_SIZE)
                break;
            ledger_append_prefetch(txn, entry->tenant_id, body + ahead + 4);
            ahead += size;
            ahead_index++;
        }
        struct event event;
        const char *reason = NULL;
        size_t start = offset;
        /* The server verified every record, so a failure here is a bug. */
        if (record_decode(body, entry->body_size, &offset, entry->tenant_id, &event, &reason))
            return HM_ERR_INVALID;
        int outcome = ledger_append(txn, &event, body + start, offset - start);
        if (outcome < 0)
            return outcome;
        if (outcome == APPEND_STORED) {
            entry->stored++;
        } else if (outcome == APPEND_DUPLICATE) {
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
    struct ledger_txn *txn;
    int rc = ledger_begin(store->ledger, &txn);
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
    return ledger_commit(txn);
}

void store_hooks(struct store *store, struct server_hooks *hooks)
{
    store->conflict_log = (struct log_limit)LOG_LIMIT_INIT(20, 10);
    hooks->context = store;
    hooks->lookup_begin = lookup_begin;
    hooks->lookup_end = lookup_end;
    hooks->key_lookup = key_lookup;
    hooks->commit = commit;
}
