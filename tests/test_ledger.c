/* The LMDB ledger on disk: exactly-once appends, rollups, tenant scoping, restarts. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

#include "ledger_fixture.h"

#include <lmdb.h>

static void setup(void) { ledger_fixture_open("ledger"); }

static struct event inference(const uint8_t tenant[UUID_SIZE], uint8_t id_byte, uint64_t input,
                              uint64_t output)
{
    struct event event = { .kind = EVENT_INFERENCE, .timestamp_us = JUNE_10_US };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memset(event.event_id, id_byte, UUID_SIZE);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "m-large");
    event.u.inference.input_tokens = input;
    event.u.inference.output_tokens = output;
    return event;
}

/* Appends one event in its own committed transaction and returns the outcome. */
static unsigned __int128 quantity_of(const uint8_t tenant[UUID_SIZE], enum rollup_meter meter,
                                     const char *dimension)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant, 202406, &rows, &count), HM_OK);
    unsigned __int128 quantity = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == meter && strcmp(rows[i].dimension, dimension) == 0)
            quantity = rows[i].quantity;
    }
    free(rows);
    return quantity;
}

TestSuite(ledger, .init = setup, .fini = ledger_fixture_remove);

Test(ledger, same_event_twice_counted_once)
{
    struct event event = inference(tenant_a, 0x42, 1200000, 300000);
    cr_assert_eq(append_one(&event), APPEND_STORED);
    cr_assert_eq(append_one(&event), APPEND_DUPLICATE);
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == 1200000);
    cr_assert(quantity_of(tenant_a, ROLLUP_OUTPUT_TOKENS, "m-large") == 300000);
    uint64_t count = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant_a, &count), HM_OK);
    cr_assert_eq(count, 1);
}

Test(ledger, same_id_other_content_is_conflict)
{
    struct event first = inference(tenant_a, 0x42, 1200000, 300000);
    struct event changed = inference(tenant_a, 0x42, 1200000, 300001);
    cr_assert_eq(append_one(&first), APPEND_STORED);
    cr_assert_eq(append_one(&changed), APPEND_CONFLICT);
    cr_assert(quantity_of(tenant_a, ROLLUP_OUTPUT_TOKENS, "m-large") == 300000);
}

Test(ledger, same_id_two_tenants_two_events)
{
    struct event for_a = inference(tenant_a, 0x42, 10, 1);
    struct event for_b = inference(tenant_b, 0x42, 10, 1);
    cr_assert_eq(append_one(&for_a), APPEND_STORED);
    cr_assert_eq(append_one(&for_b), APPEND_STORED);
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == 10);
    cr_assert(quantity_of(tenant_b, ROLLUP_INPUT_TOKENS, "m-large") == 10);
}

Test(ledger, duplicate_after_reopen)
{
    struct event event = inference(tenant_a, 0x07, 500, 50);
    cr_assert_eq(append_one(&event), APPEND_STORED);
    ledger_close(ledger);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    cr_assert_eq(append_one(&event), APPEND_DUPLICATE);
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == 500);
}

Test(ledger, aborted_batch_stores_nothing)
{
    struct event event = inference(tenant_a, 0x09, 500, 50);
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&event, record);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_append(txn, &event, record, (size_t)size), APPEND_STORED);
    ledger_abort(txn);
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == 0);
    cr_assert_eq(append_one(&event), APPEND_STORED);
}

Test(ledger, cached_tokens_split_from_input)
{
    struct event event = inference(tenant_a, 0x11, 1000, 10);
    event.u.inference.cached_input_tokens = 600;
    cr_assert_eq(append_one(&event), APPEND_STORED);
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == 400);
    cr_assert(quantity_of(tenant_a, ROLLUP_CACHED_INPUT_TOKENS, "m-large") == 600);
}

Test(ledger, large_token_counts_do_not_wrap)
{
    for (uint8_t i = 1; i <= 3; i++) {
        struct event event = inference(tenant_a, i, UINT64_C(1500000000), 0);
        cr_assert_eq(append_one(&event), APPEND_STORED);
    }
    cr_assert(quantity_of(tenant_a, ROLLUP_INPUT_TOKENS, "m-large") == UINT64_C(4500000000));
}

Test(ledger, gpu_api_and_events_rollups)
{
    struct event gpu = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = JUNE_10_US };
    memcpy(gpu.tenant_id, tenant_a, UUID_SIZE);
    memset(gpu.event_id, 0x21, UUID_SIZE);
    strcpy(gpu.u.gpu.allocation_id, "alloc-1");
    strcpy(gpu.u.gpu.pool_id, "pool-1");
    strcpy(gpu.u.gpu.gpu_type, "H100");
    gpu.u.gpu.duration_s = 3600;
    struct event api = { .kind = EVENT_API_CALL, .timestamp_us = JUNE_10_US };
    memcpy(api.tenant_id, tenant_a, UUID_SIZE);
    memset(api.event_id, 0x22, UUID_SIZE);
    strcpy(api.u.api.endpoint, "/v1/chat/completions");
    api.u.api.response_code = 200;
    cr_assert_eq(append_one(&gpu), APPEND_STORED);
    cr_assert_eq(append_one(&api), APPEND_STORED);
    cr_assert(quantity_of(tenant_a, ROLLUP_GPU_SECONDS, "H100") == 3600);
    cr_assert(quantity_of(tenant_a, ROLLUP_API_CALLS, "") == 1);
    cr_assert(quantity_of(tenant_a, ROLLUP_EVENTS, "gpu_allocation") == 1);
    cr_assert(quantity_of(tenant_a, ROLLUP_EVENTS, "api_call") == 1);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
}

static struct event storage_sample(uint8_t id_byte, int64_t seconds, uint64_t bytes)
{
    struct event event = { .kind = EVENT_STORAGE, .timestamp_us = seconds * 1000000 };
    memcpy(event.tenant_id, tenant_a, UUID_SIZE);
    memset(event.event_id, id_byte, UUID_SIZE);
    event.u.storage.bytes_stored = bytes;
    return event;
}

Test(ledger, storage_time_weighted_over_leap_february)
{
    /* 2024-02-01T00:00Z and 2024-02-15T00:00Z: 100 GB held for 14 of 29 days. */
    const int64_t february_1 = 1706745600, february_15 = 1707955200, march_1 = 1709251200;
    struct event full = storage_sample(0x31, february_1, UINT64_C(100000000000));
    struct event empty = storage_sample(0x32, february_15, 0);
    cr_assert_eq(append_one(&full), APPEND_STORED);
    cr_assert_eq(append_one(&empty), APPEND_STORED);
    unsigned __int128 byte_seconds = 0;
    cr_assert_eq(ledger_storage_byte_seconds(ledger, tenant_a, february_1, march_1,
                                             &byte_seconds), HM_OK);
    unsigned __int128 expected = (unsigned __int128)UINT64_C(100000000000) * 14 * 86400;
    cr_assert(byte_seconds == expected);
}

Test(ledger, storage_level_carries_into_next_period)
{
    const int64_t january_20 = 1705708800, february_1 = 1706745600, march_1 = 1709251200;
    struct event sample = storage_sample(0x33, january_20, 1000);
    cr_assert_eq(append_one(&sample), APPEND_STORED);
    unsigned __int128 byte_seconds = 0;
    cr_assert_eq(ledger_storage_byte_seconds(ledger, tenant_a, february_1, march_1,
                                             &byte_seconds), HM_OK);
    cr_assert(byte_seconds == (unsigned __int128)1000 * 29 * 86400);
}

/* The stored rows are the rows of ledger_rollups without the computed storage row. */
Test(ledger, stored_rollups_without_storage_row)
{
    const int64_t june_1 = 1717200000;
    struct event sample = storage_sample(0x34, june_1, 5000);
    sample.u.storage.bytes_transferred = 70;
    struct event call = inference(tenant_a, 0x35, 100, 10);
    cr_assert_eq(append_one(&sample), APPEND_STORED);
    cr_assert_eq(append_one(&call), APPEND_STORED);

    struct rollup_row *all = NULL, *stored = NULL;
    size_t all_count = 0, stored_count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant_a, 202406, &all, &all_count), HM_OK);
    cr_assert_eq(ledger_rollups_stored(ledger, tenant_a, 202406, &stored, &stored_count), HM_OK);
    size_t storage_rows = 0;
    for (size_t i = 0; i < all_count; i++)
        storage_rows += all[i].meter == ROLLUP_STORAGE_BYTE_SECONDS;
    cr_assert_eq(storage_rows, 1);
    cr_assert_eq(stored_count, all_count - 1);
    for (size_t i = 0; i < stored_count; i++) {
        cr_assert_neq(stored[i].meter, ROLLUP_STORAGE_BYTE_SECONDS);
        const struct rollup_row *same = NULL;
        for (size_t j = 0; j < all_count; j++) {
            if (all[j].meter == stored[i].meter &&
                strcmp(all[j].dimension, stored[i].dimension) == 0)
                same = &all[j];
        }
        cr_assert_not_null(same, "row %d/%s is missing from ledger_rollups", stored[i].meter,
                           stored[i].dimension);
        cr_assert(same->quantity == stored[i].quantity);
        cr_assert_eq(same->event_count, stored[i].event_count);
    }
    free(all);
    free(stored);
}

Test(ledger, period_closes_once)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_period_closed(ledger, tenant_a, 202406), 0);
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_period_close(txn, tenant_a, 202406, "{\"total\": 1}"), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    cr_assert_eq(ledger_period_closed(ledger, tenant_a, 202406), 1);
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_period_close(txn, tenant_a, 202406, "{}"), HM_ERR_STATE);
    ledger_abort(txn);
    char *json = NULL;
    cr_assert_eq(ledger_invoice_get(ledger, tenant_a, 202406, &json), HM_OK);
    cr_assert_str_eq(json, "{\"total\": 1}");
    free(json);
}

Test(ledger, tenant_names_unique)
{
    struct tenant tenant = { .active = 1 };
    memcpy(tenant.id, tenant_a, UUID_SIZE);
    strcpy(tenant.name, "acme");
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
    memcpy(tenant.id, tenant_b, UUID_SIZE);
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_ERR_EXISTS);
    struct tenant found;
    cr_assert_eq(ledger_tenant_find(ledger, "acme", &found), HM_OK);
    cr_assert_eq(memcmp(found.id, tenant_a, UUID_SIZE), 0);
    cr_assert_eq(ledger_tenant_find(ledger, "nobody", &found), HM_ERR_NOT_FOUND);
}

Test(ledger, revoked_key_stays_revoked)
{
    struct key_record key = { .key_id = 77, .status = KEY_ACTIVE };
    memcpy(key.tenant_id, tenant_a, UUID_SIZE);
    cr_assert_eq(ledger_key_put(ledger, &key), HM_OK);
    cr_assert_eq(ledger_key_revoke(ledger, 77, 1000), HM_OK);
    cr_assert_eq(ledger_key_revoke(ledger, 77, 1001), HM_ERR_STATE);
    cr_assert_eq(ledger_key_revoke(ledger, 78, 1001), HM_ERR_NOT_FOUND);
    struct key_record read;
    cr_assert_eq(ledger_read_begin(ledger), HM_OK);
    cr_assert_eq(ledger_key_lookup(ledger, 77, &read), HM_OK);
    ledger_read_end(ledger);
    cr_assert_eq(read.status, KEY_REVOKED);
    cr_assert_eq(read.revoked_s, 1000);
}

Test(ledger, storage_samples_ordered_by_time_not_id)
{
    /* 2024-06-01T00:00:00Z: 1 TB at .1 s, then 0 at .9 s, whose id sorts first. */
    const int64_t june_1 = 1717200000, july_1 = 1719792000;
    struct event full = storage_sample(0xf0, june_1, UINT64_C(1000000000000));
    full.timestamp_us += 100000;
    struct event empty = storage_sample(0x01, june_1, 0);
    empty.timestamp_us += 900000;
    cr_assert_eq(append_one(&full), APPEND_STORED);
    cr_assert_eq(append_one(&empty), APPEND_STORED);
    unsigned __int128 byte_seconds = 1;
    cr_assert_eq(ledger_storage_byte_seconds(ledger, tenant_a, june_1, july_1, &byte_seconds),
                 HM_OK);
    cr_assert(byte_seconds == 0, "the later sample of the second must set the level");

    /* One more second at 1 TB, then 0 again: exactly 1 TB-second. */
    struct event again = storage_sample(0xf1, june_1 + 10, UINT64_C(1000000000000));
    struct event off = storage_sample(0xf2, june_1 + 11, 0);
    cr_assert_eq(append_one(&again), APPEND_STORED);
    cr_assert_eq(append_one(&off), APPEND_STORED);
    cr_assert_eq(ledger_storage_byte_seconds(ledger, tenant_a, june_1, july_1, &byte_seconds),
                 HM_OK);
    cr_assert(byte_seconds == UINT64_C(1000000000000));
}

static void add_one_token(uint8_t *copy, size_t *size)
{
    cr_assert_eq(*size, 24, "a rollup value holds a quantity and a count");
    copy[0]++;
}

Test(ledger, verify_detects_tampered_rollup)
{
    struct event event = inference(tenant_a, 0x61, 1000, 10);
    cr_assert_eq(append_one(&event), APPEND_STORED);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    /* The change is in the rollup log until a fold writes it to the rows. */
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_OK);
    /* Add one token to the first rollup record behind the ledger's back. */
    ledger_reopen_rewritten("rollups", add_one_token);
    cr_assert_eq(ledger_verify(ledger, tenant_a, 202406), HM_ERR_CONFLICT);
}

/*
 * Sets the layout record of the closed ledger in `dir` behind the ledger's
 * back to `size` bytes of `bytes`. Returns the old record as a layout.
 */
static uint32_t layout_bytes_write(const void *bytes, size_t size)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 32), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    MDB_val key = { 6, "layout" }, value;
    cr_assert_eq(mdb_get(txn, meta, &key, &value), 0, "a ledger records its layout");
    uint32_t old;
    cr_assert_eq(value.mv_size, sizeof old);
    memcpy(&old, value.mv_data, sizeof old);
    value = (MDB_val){ size, (void *)bytes };
    cr_assert_eq(mdb_put(txn, meta, &key, &value, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    return old;
}

/* Sets the layout record of the closed ledger in `dir` to `layout`; returns the old one. */
static uint32_t layout_write(uint32_t layout)
{
    return layout_bytes_write(&layout, sizeof layout);
}

Test(ledger, newer_layout_refused_at_open)
{
    struct event event = inference(tenant_a, 0x71, 1000, 10);
    cr_assert_eq(append_one(&event), APPEND_STORED);
    ledger_close(ledger);
    ledger = NULL;

    cr_assert_eq(layout_write(5), 4);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_ERR_STORAGE);
    cr_assert_null(ledger);
    cr_assert(strstr(ledger_open_error(), "layout 5") != NULL, "%s", ledger_open_error());
    cr_assert(strstr(ledger_open_error(), "run the newer meterd") != NULL, "%s",
              ledger_open_error());
    struct ledger_options read_only = { .read_only = 1 };
    cr_assert_eq(ledger_open(&ledger, dir, &read_only), HM_ERR_STORAGE);
    cr_assert_null(ledger);

    /* Back at this build's layout, the ledger opens with its event. */
    cr_assert_eq(layout_write(4), 5);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    cr_assert_eq(append_one(&event), APPEND_DUPLICATE);
}

Test(ledger, damaged_layout_record_refused_at_open)
{
    ledger_close(ledger);
    ledger = NULL;
    const uint8_t two_bytes[2] = { 4, 0 };
    cr_assert_eq(layout_bytes_write(two_bytes, sizeof two_bytes), 4);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_ERR_STORAGE);
    cr_assert_null(ledger);
    cr_assert(strstr(ledger_open_error(), "has 2 bytes, expected 4") != NULL, "%s",
              ledger_open_error());
    cr_assert(strstr(ledger_open_error(), "newer") == NULL, "%s", ledger_open_error());
}
