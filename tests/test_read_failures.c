/*
 * Reads of the ledger whose walk meets an LMDB error part way. The error
 * must come back to the caller, never a shorter result with HM_OK, which
 * would bill from missing rows, grants or tenants.
 *
 * The test binary is linked with -Wl,--wrap=mdb_cursor_get (tests/CMakeLists.txt),
 * so that a read can fail on request as a damaged page (MDB_CORRUPTED) would.
 */
#include "ledger_fixture.h"

int __real_mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op);
int __wrap_mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op);

/* The next cursor_get with op failing_op fails with MDB_CORRUPTED once, while failing_armed. */
static int failing_armed;
static MDB_cursor_op failing_op;

int __wrap_mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)
{
    if (failing_armed && op == failing_op) {
        failing_armed = 0;
        return MDB_CORRUPTED;
    }
    return __real_mdb_cursor_get(cursor, key, data, op);
}

static void fail_next_step(void)
{
    failing_op = MDB_NEXT;
    failing_armed = 1;
}

static void setup(void)
{
    failing_armed = 0;
    ledger_fixture_open("read-failures");
}

TestSuite(read_failures, .init = setup, .fini = ledger_fixture_remove);

static void tenant_add(const uint8_t id[UUID_SIZE], const char *name)
{
    struct tenant tenant = { .active = 1, .created_s = 1700000000 };
    memcpy(tenant.id, id, UUID_SIZE);
    snprintf(tenant.name, sizeof tenant.name, "%s", name);
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
}

static void event_base(struct event *event, enum event_kind kind, uint8_t id_byte,
                       int64_t timestamp_us)
{
    memset(event, 0, sizeof *event);
    memcpy(event->tenant_id, tenant_a, UUID_SIZE);
    memset(event->event_id, id_byte, UUID_SIZE);
    event->timestamp_us = timestamp_us;
    event->kind = kind;
}

Test(read_failures, rollup_rows_error_returned)
{
    /* One inference gives three rows in June: events, input tokens and output tokens. */
    struct event event;
    event_base(&event, EVENT_INFERENCE, 1, JUNE_10_US);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "model-a");
    event.u.inference.input_tokens = 100;
    event.u.inference.output_tokens = 10;
    append_one(&event);
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);

    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups_stored(ledger, tenant_a, 202406, &rows, &count), HM_OK);
    cr_assert_eq(count, 3);
    free(rows);

    rows = NULL;
    fail_next_step();
    int rc = ledger_rollups_stored(ledger, tenant_a, 202406, &rows, &count);
    cr_expect_eq(rc, HM_ERR_STORAGE, "a failed read returned %d with %zu rows", rc, count);
    cr_expect_eq(failing_armed, 0, "the read did not reach the failure");
    if (rc == HM_OK)
        free(rows);
}

Test(read_failures, storage_samples_error_returned)
{
    struct event event;
    event_base(&event, EVENT_STORAGE, 1, JUNE_10_US);
    event.u.storage.bytes_stored = 1000;
    append_one(&event);
    event_base(&event, EVENT_STORAGE, 2, JUNE_10_US + INT64_C(3600) * 1000000);
    event.u.storage.bytes_stored = 5000;
    append_one(&event);

    int64_t start_s = JUNE_10_US / 1000000 - 60, end_s = start_s + 7200;
    unsigned __int128 byte_seconds = 0;
    cr_assert_eq(ledger_storage_byte_seconds(ledger, tenant_a, start_s, end_s, &byte_seconds),
                 HM_OK);
    cr_assert(byte_seconds == (unsigned __int128)1000 * 3600 + (unsigned __int128)5000 * 3540);

    fail_next_step();
    int rc = ledger_storage_byte_seconds(ledger, tenant_a, start_s, end_s, &byte_seconds);
    cr_expect_eq(rc, HM_ERR_STORAGE, "a failed read returned %d", rc);
    cr_expect_eq(failing_armed, 0, "the read did not reach the failure");
}

Test(read_failures, tenant_list_error_returned)
{
    tenant_add(tenant_a, "alpha");
    tenant_add(tenant_b, "beta");
    struct tenant *tenants = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_tenant_list(ledger, &tenants, &count), HM_OK);
    cr_assert_eq(count, 2);
    free(tenants);

    tenants = NULL;
    fail_next_step();
    int rc = ledger_tenant_list(ledger, &tenants, &count);
    cr_expect_eq(rc, HM_ERR_STORAGE, "a failed read returned %d with %zu tenants", rc, count);
    if (rc == HM_OK)
        free(tenants);
}

Test(read_failures, credit_list_error_returned)
{
    for (int i = 0; i < 2; i++) {
        struct credit_grant grant = { .amount_minor = 1000, .granted_s = 1700000000 };
        memcpy(grant.tenant_id, tenant_a, UUID_SIZE);
        snprintf(grant.currency, sizeof grant.currency, "USD");
        cr_assert_eq(ledger_credit_grant(ledger, &grant), HM_OK);
    }
    struct credit_grant *grants = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_credit_list(ledger, tenant_a, &grants, &count), HM_OK);
    cr_assert_eq(count, 2);
    ledger_credit_grants_free(grants, count);

    grants = NULL;
    fail_next_step();
    int rc = ledger_credit_list(ledger, tenant_a, &grants, &count);
    cr_expect_eq(rc, HM_ERR_STORAGE, "a failed read returned %d with %zu grants", rc, count);
    if (rc == HM_OK)
        ledger_credit_grants_free(grants, count);
}

Test(read_failures, billed_list_error_returned)
{
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (uint32_t period = 202405; period <= 202406; period++) {
        struct billed_period billed = { .period = period, .events = 1 };
        snprintf(billed.number, sizeof billed.number, "HM-%06u", period % 100);
        snprintf(billed.issuer, sizeof billed.issuer, "default");
        snprintf(billed.currency, sizeof billed.currency, "USD");
        cr_assert_eq(ledger_billed_put(txn, tenant_a, &billed), HM_OK);
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
    struct billed_period *periods = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_billed_list(ledger, tenant_a, &periods, &count), HM_OK);
    cr_assert_eq(count, 2);
    for (size_t i = 0; i < count; i++)
        ledger_billed_free(&periods[i]);
    free(periods);

    periods = NULL;
    fail_next_step();
    int rc = ledger_billed_list(ledger, tenant_a, &periods, &count);
    cr_expect_eq(rc, HM_ERR_STORAGE, "a failed read returned %d with %zu periods", rc, count);
    if (rc == HM_OK) {
        for (size_t i = 0; i < count; i++)
            ledger_billed_free(&periods[i]);
        free(periods);
    }
}
