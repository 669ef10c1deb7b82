/* The ledger's arrival sequence: per tenant, the order in which events were stored. */
#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

#include "get_failure.h"
#include "ledger_fixture.h"

static void setup(void)
{
    get_failure_armed = 0;
    ledger_fixture_open("arrivals");
}

TestSuite(arrivals, .init = setup, .fini = ledger_fixture_remove);

static struct event api_call(const uint8_t tenant[UUID_SIZE], uint8_t id_byte)
{
    struct event event = { .kind = EVENT_API_CALL, .timestamp_us = JUNE_10_US };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memset(event.event_id, id_byte, UUID_SIZE);
    snprintf(event.u.api.endpoint, sizeof event.u.api.endpoint, "/v1/models");
    event.u.api.response_code = 200;
    return event;
}

/* Appends events in one transaction; returns how many were stored (not duplicates). */
static int append_all(const struct event *events, size_t count)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    int stored = 0;
    for (size_t i = 0; i < count; i++) {
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&events[i], record);
        cr_assert_gt(size, 0);
        int outcome = ledger_append(txn, &events[i], record, (size_t)size);
        cr_assert_geq(outcome, 0);
        stored += outcome == APPEND_STORED;
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
    return stored;
}

struct seen {
    uint64_t seqs[64];
    uint8_t first_bytes[64];
    size_t count;
};

static int remember(void *context, uint64_t seq, const struct event *event)
{
    struct seen *seen = context;
    cr_assert_lt(seen->count, 64);
    seen->seqs[seen->count] = seq;
    seen->first_bytes[seen->count] = event->event_id[0];
    seen->count++;
    return HM_OK;
}

Test(arrivals, numbers_in_store_order_not_uuid_order)
{
    /* Ids 0x90, 0x10, 0x50 arrive in that order; the table sorts them 0x10, 0x50, 0x90. */
    struct event first[] = { api_call(tenant_a, 0x90), api_call(tenant_a, 0x10) };
    struct event second[] = { api_call(tenant_a, 0x50) };
    cr_assert_eq(append_all(first, 2), 2);
    cr_assert_eq(append_all(second, 1), 1);

    struct seen seen = { 0 };
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_a, 0, 0, remember, &seen), HM_OK);
    cr_assert_eq(seen.count, 3);
    cr_expect_eq(seen.first_bytes[0], 0x90);
    cr_expect_eq(seen.first_bytes[1], 0x10);
    cr_expect_eq(seen.first_bytes[2], 0x50);
    cr_expect_eq(seen.seqs[0], 1);
    cr_expect_eq(seen.seqs[2], 3);
}

Test(arrivals, resume_after_checkpoint_finds_smaller_uuid)
{
    struct event early[] = { api_call(tenant_a, 0x80) };
    cr_assert_eq(append_all(early, 1), 1);
    uint64_t checkpoint = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &checkpoint), HM_OK);
    cr_assert_eq(checkpoint, 1);

    /* A later event with a smaller UUID: a checkpoint on the UUID would skip it. */
    struct event late[] = { api_call(tenant_a, 0x01) };
    cr_assert_eq(append_all(late, 1), 1);
    struct seen seen = { 0 };
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_a, checkpoint, 0, remember, &seen), HM_OK);
    cr_assert_eq(seen.count, 1);
    cr_expect_eq(seen.first_bytes[0], 0x01);
    cr_expect_eq(seen.seqs[0], 2);
}

Test(arrivals, tenants_interleaved_in_one_batch)
{
    struct event events[] = { api_call(tenant_a, 1), api_call(tenant_b, 2), api_call(tenant_a, 3),
                              api_call(tenant_b, 4), api_call(tenant_b, 5) };
    cr_assert_eq(append_all(events, 5), 5);
    uint64_t last_a = 0, last_b = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &last_a), HM_OK);
    cr_assert_eq(ledger_arrival_last(ledger, tenant_b, &last_b), HM_OK);
    cr_expect_eq(last_a, 2);
    cr_expect_eq(last_b, 3);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_b), HM_OK);
    cr_expect_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    cr_expect_eq(ledger_verify(ledger, tenant_b, 202406), HM_OK);
}

Test(arrivals, duplicates_take_no_number)
{
    struct event events[] = { api_call(tenant_a, 7), api_call(tenant_a, 7) };
    cr_assert_eq(append_all(events, 2), 1);
    struct event again[] = { api_call(tenant_a, 7), api_call(tenant_a, 8) };
    cr_assert_eq(append_all(again, 2), 1);
    uint64_t last = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &last), HM_OK);
    cr_expect_eq(last, 2);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
}

Test(arrivals, aborted_batch_takes_no_number)
{
    struct event kept[] = { api_call(tenant_a, 1) };
    cr_assert_eq(append_all(kept, 1), 1);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    struct event dropped = api_call(tenant_a, 2);
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&dropped, record);
    cr_assert_eq(ledger_append(txn, &dropped, record, (size_t)size), APPEND_STORED);
    ledger_abort(txn);

    struct event next[] = { api_call(tenant_a, 3) };
    cr_assert_eq(append_all(next, 1), 1);
    uint64_t last = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &last), HM_OK);
    cr_expect_eq(last, 2);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
}

Test(arrivals, walk_stops_at_limit)
{
    struct event events[] = { api_call(tenant_a, 1), api_call(tenant_a, 2), api_call(tenant_a, 3),
                              api_call(tenant_a, 4) };
    cr_assert_eq(append_all(events, 4), 4);
    struct seen seen = { 0 };
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_a, 1, 2, remember, &seen), HM_OK);
    cr_assert_eq(seen.count, 2);
    cr_expect_eq(seen.seqs[0], 2);
    cr_expect_eq(seen.seqs[1], 3);
}

/*
 * Writes events in the layout of ledgers made before the arrival sequence
 * existed, with LMDB directly: each record under (tenant, event id) in the
 * events table, no arrival numbers and no backfill mark. The ledger is closed
 * meanwhile and stays closed.
 */
static void put_old_layout(const struct event *events, size_t count)
{
    ledger_close(ledger);
    ledger = NULL;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi table, meta;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_set_mapsize(env, (size_t)1 << 30), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "events", MDB_CREATE, &table), 0);
    for (size_t i = 0; i < count; i++) {
        uint8_t key_bytes[2 * UUID_SIZE], record[RECORD_SIZE_MAX];
        memcpy(key_bytes, events[i].tenant_id, UUID_SIZE);
        memcpy(key_bytes + UUID_SIZE, events[i].event_id, UUID_SIZE);
        int size = record_encode(&events[i], record);
        cr_assert_gt(size, 0);
        MDB_val key = { sizeof key_bytes, key_bytes }, value = { (size_t)size, record };
        cr_assert_eq(mdb_put(txn, table, &key, &value, 0), 0);
    }
    cr_assert_eq(mdb_dbi_open(txn, "arrivals", MDB_CREATE, &table), 0);
    cr_assert_eq(mdb_drop(txn, table, 0), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta), 0);
    MDB_val mark = { strlen("arrival_index"), "arrival_index" };
    int rc = mdb_del(txn, meta, &mark, NULL);
    cr_assert(rc == 0 || rc == MDB_NOTFOUND);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(arrivals, older_ledger_numbered_on_open)
{
    struct event events[] = { api_call(tenant_b, 9), api_call(tenant_a, 5), api_call(tenant_a, 2),
                              api_call(tenant_b, 1) };
    put_old_layout(events, 4);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);

    /* Numbered in (tenant, event id) order: a's ids 2, 5 and b's ids 1, 9. */
    struct seen seen = { 0 };
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_a, 0, 0, remember, &seen), HM_OK);
    cr_assert_eq(seen.count, 2);
    cr_expect_eq(seen.first_bytes[0], 2);
    cr_expect_eq(seen.first_bytes[1], 5);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_b), HM_OK);

    /* New events continue each tenant's sequence, in blocks after the older numbers. */
    struct event later[] = { api_call(tenant_b, 0) };
    cr_assert_eq(append_all(later, 1), 1);
    uint64_t last = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_b, &last), HM_OK);
    cr_expect_eq(last, 3);
    struct seen after = { 0 };
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_b, 1, 0, remember, &after), HM_OK);
    cr_assert_eq(after.count, 2);
    cr_expect_eq(after.seqs[0], 2);
    cr_expect_eq(after.first_bytes[0], 9);
    cr_expect_eq(after.seqs[1], 3);
    cr_expect_eq(after.first_bytes[1], 0);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_b), HM_OK);
    uint64_t count = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant_b, &count), HM_OK);
    cr_expect_eq(count, 3);
}

Test(arrivals, older_layout_event_sent_again_is_duplicate)
{
    struct event events[] = { api_call(tenant_a, 7) };
    put_old_layout(events, 1);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    cr_expect_eq(append_all(events, 1), 0);

    struct event changed = api_call(tenant_a, 7);
    changed.u.api.response_code = 404;
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&changed, record);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_expect_eq(ledger_append(txn, &changed, record, (size_t)size), APPEND_CONFLICT);
    ledger_abort(txn);
    uint64_t count = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant_a, &count), HM_OK);
    cr_expect_eq(count, 1);
}

Test(arrivals, verify_detects_missing_block)
{
    /* Three transactions store three blocks: numbers 1, 2 and 3. */
    for (uint8_t id = 1; id <= 3; id++) {
        struct event event = api_call(tenant_a, id);
        cr_assert_eq(append_all(&event, 1), 1);
    }
    ledger_close(ledger);
    ledger = NULL;

    /* Removes the block of number 2 behind the ledger's back. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi blocks;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "blocks", 0, &blocks), 0);
    uint8_t key_bytes[UUID_SIZE + 8] = { 0 };
    memcpy(key_bytes, tenant_a, UUID_SIZE);
    key_bytes[UUID_SIZE + 7] = 2;
    MDB_val key = { sizeof key_bytes, key_bytes };
    cr_assert_eq(mdb_del(txn, blocks, &key, NULL), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_ERR_CONFLICT);
    struct seen seen = { 0 };
    cr_expect_eq(ledger_arrivals_each(ledger, tenant_a, 0, 0, remember, &seen), HM_ERR_STORAGE);
    cr_expect_eq(seen.count, 1);
}

Test(arrivals, older_ledger_numbered_in_steps)
{
    /* More events than one numbering transaction takes (100,000), so the work resumes. */
    enum { EVENT_COUNT = 150001 };
    struct event *events = calloc(EVENT_COUNT, sizeof *events);
    cr_assert_not_null(events);
    for (uint32_t i = 0; i < EVENT_COUNT; i++) {
        events[i] = api_call(i % 3 ? tenant_a : tenant_b, 0);
        memcpy(events[i].event_id, &i, sizeof i);
    }
    put_old_layout(events, EVENT_COUNT);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);

    uint64_t last_a = 0, last_b = 0;
    cr_assert_eq(ledger_arrival_last(ledger, tenant_a, &last_a), HM_OK);
    cr_assert_eq(ledger_arrival_last(ledger, tenant_b, &last_b), HM_OK);
    cr_expect_eq(last_a, 100000);
    cr_expect_eq(last_b, 50001);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_b), HM_OK);

    /* Every older event is in the id index: sending them again stores nothing. */
    cr_expect_eq(append_all(events, EVENT_COUNT), 0);
    free(events);
}

/* Meta key of the numbering's saved position, as rollup/arrivals.c names it. */
static const char progress_key[] = "arrival_index_after";

Test(arrivals, damaged_progress_fails_open)
{
    struct event events[] = { api_call(tenant_a, 1), api_call(tenant_a, 2) };
    put_old_layout(events, 2);
    static const uint8_t cut[5] = { 0xa0, 1, 2, 3, 4 };
    raw_put("meta", progress_key, strlen(progress_key), cut, sizeof cut);

    int rc = ledger_open(&ledger, dir, NULL);
    cr_expect_eq(rc, HM_ERR_STORAGE, "an open with a damaged progress record returned %d", rc);
    if (rc == HM_OK) {
        ledger_close(ledger);
        ledger = NULL;
    }
    cr_expect_not_null(strstr(ledger_open_error(), "numbering the stored events"),
                       "the open error names no cause: \"%s\"", ledger_open_error());
    cr_expect_eq(raw_entries("arrivals"), 0, "events were numbered from the first again");
}

Test(arrivals, progress_read_error_fails_open)
{
    struct event events[] = { api_call(tenant_a, 1), api_call(tenant_a, 2) };
    put_old_layout(events, 2);

    get_failure_arm(progress_key, strlen(progress_key));
    int rc = ledger_open(&ledger, dir, NULL);
    cr_expect_eq(get_failure_armed, 0, "the open did not read the progress record");
    cr_expect_eq(rc, HM_ERR_STORAGE, "an open whose progress read failed returned %d", rc);
    if (rc == HM_OK) {
        ledger_close(ledger);
        ledger = NULL;
    }
    cr_expect_eq(raw_entries("arrivals"), 0, "events were numbered from the first again");
}
