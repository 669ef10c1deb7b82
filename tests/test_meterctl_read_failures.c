/*
 * meterctl commands whose reads of the ledger fail: each prints an error
 * and exits nonzero instead of printing a result from a read that failed.
 * A library preloaded into meterctl (tests/preload/failing_table.c) makes
 * every cursor read of one table fail, as a damaged page would.
 */
#include "meterd_harness.h"

static struct harness harness;
static struct test_tenant alpha;

/* Tenant alpha with one inference in June 2024. */
static void setup(void)
{
    harness_make_dir(&harness);
    harness_tenant(&harness, "alpha", &alpha);
    struct event event = harness_inference(1, "model-a", 100, 10);
    memcpy(event.tenant_id, alpha.id, UUID_SIZE);
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&event, record);
    cr_assert_gt(size, 0);
    struct ledger *ledger = NULL;
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_append(txn, &event, record, (size_t)size), APPEND_STORED);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    ledger_close(ledger);
}

static void teardown(void) { harness_remove(&harness); }

TestSuite(meterctl_read_failures, .init = setup, .fini = teardown);

/*
 * Runs meterctl with every cursor read of `table` failing; returns its exit
 * status and its output in `out`.
 */
static int meterctl_failing(const char *table, char *out, size_t out_size, const char *format,
                            ...)
{
    setenv("LD_PRELOAD", HM_FAILING_TABLE_LIBRARY, 1);
    setenv("HM_TEST_FAILING_TABLE", table, 1);
    /* A sanitizer build wants its runtime first; the preloaded library comes before it. */
    setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
    va_list args;
    va_start(args, format);
    int status = harness_meterctl_v(harness.dir, out, out_size, format, args);
    va_end(args);
    unsetenv("LD_PRELOAD");
    unsetenv("HM_TEST_FAILING_TABLE");
    unsetenv("ASAN_OPTIONS");
    return status;
}

Test(meterctl_read_failures, verify_event_count_error)
{
    char out[4096];
    int status = meterctl_failing("none", out, sizeof out, "verify alpha --period 2024-06");
    cr_assert_eq(status, 0, "verify failed without a failing read: %s", out);
    cr_assert(strstr(out, "(1 events stored") != NULL, "unexpected output: %s", out);

    /* The recount reads the event blocks, and only the count reads the older events table. */
    status = meterctl_failing("events", out, sizeof out, "verify alpha --period 2024-06");
    cr_expect_neq(status, 0, "verify exited 0 with a failed count: %s", out);
    cr_expect(strstr(out, "rollups match the ledger") == NULL, "verify printed a match: %s", out);
    cr_expect(strstr(out, "tenant alpha 2024-06") != NULL, "the error does not name the tenant: %s",
              out);
    cr_expect(strstr(out, "cannot be counted") != NULL, "the error does not say what failed: %s",
              out);
}

Test(meterctl_read_failures, usage_closed_flag_error)
{
    char out[4096];
    int status = meterctl_failing("none", out, sizeof out, "usage alpha --period 2024-06");
    cr_assert_eq(status, 0, "usage failed without a failing read: %s", out);
    cr_assert(strstr(out, "draft invoice") != NULL, "unexpected output: %s", out);

    /* Whether the period is closed cannot be read: no draft of a period that may be billed. */
    status = meterctl_failing("periods", out, sizeof out, "usage alpha --period 2024-06");
    cr_expect_neq(status, 0, "usage exited 0 with a failed read: %s", out);
    cr_expect(strstr(out, "draft invoice") == NULL, "usage went on to a draft: %s", out);
    cr_expect(strstr(out, "cannot read whether 2024-06 is closed for tenant alpha") != NULL,
              "the error does not name the period and tenant: %s", out);
}
