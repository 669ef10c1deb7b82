/*
 * A close whose reads of the ledger fail or find damage: whether a tenant's
 * period is closed, a tenant's data for rating, and the void invoice that a
 * reopened period replaces.
 * The close must stop with an error that names the tenant, the period and
 * the invoice, and store nothing, instead of treating the failed read as
 * "closed" or "no earlier revision".
 *
 * The test binary is linked with -Wl,--wrap=mdb_get (tests/CMakeLists.txt),
 * so that a read can fail on request as a damaged page (MDB_CORRUPTED) would.
 */
#include <fcntl.h>
#include <jansson.h>

#include "engine/lib/billing.h"
#include "get_failure.h"
#include "ledger_fixture.h"

#define JUNE 202406
#define MAY 202405
/* 2024-06-01T00:00:00Z */
#define JUNE_1_S INT64_C(1717200000)
/* 2024-05-10T12:00:00Z */
#define MAY_10_US (JUNE_10_US - INT64_C(31) * 86400 * 1000000)

static const char book[] =
    "{\"name\": \"flat\", \"currency\": \"USD\", \"base_fee\": \"10.00\","
    " \"gpu_hour\": {\"A100\": \"2.00\"}}";

static void tenant_add(const uint8_t id[UUID_SIZE], const char *name)
{
    struct tenant tenant = { .active = 1, .created_s = JUNE_1_S, .service_start_s = JUNE_1_S };
    memcpy(tenant.id, id, UUID_SIZE);
    snprintf(tenant.name, sizeof tenant.name, "%s", name);
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
}

/* Stores one A100 hour of a tenant at `timestamp_us`. */
static void gpu_hour_append(const uint8_t tenant[UUID_SIZE], uint8_t id_byte,
                            int64_t timestamp_us)
{
    struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = timestamp_us };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memset(event.event_id, id_byte, UUID_SIZE);
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "A100");
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc-%u", id_byte);
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool");
    event.u.gpu.duration_s = 3600;
    append_one(&event);
}

/* Creates tenants alpha and beta, in service from June 2024, with one A100 hour each in June. */
static void setup(void)
{
    get_failure_armed = 0;
    ledger_fixture_open("close-read-failures");
    cr_assert_eq(ledger_pricebook_put(ledger, "default", book), HM_OK);
    tenant_add(tenant_a, "alpha");
    tenant_add(tenant_b, "beta");
    gpu_hour_append(tenant_a, 1, JUNE_10_US);
    gpu_hour_append(tenant_b, 2, JUNE_10_US);
}

TestSuite(close_read_failures, .init = setup, .fini = ledger_fixture_remove);

/* Reads a file into `text` (NUL-terminated, cut at size - 1). */
static void file_read(const char *path, char *text, size_t size)
{
    FILE *file = fopen(path, "r");
    cr_assert_not_null(file, "cannot open %s", path);
    size_t used = fread(text, 1, size - 1, file);
    text[used] = '\0';
    fclose(file);
}

/* Closes June with stderr captured into `log`; returns the status of billing_close. */
static int close_logged(char *log, size_t log_size)
{
    char log_path[300], summary_path[300];
    snprintf(log_path, sizeof log_path, "%s/stderr.log", dir);
    snprintf(summary_path, sizeof summary_path, "%s/summary.txt", dir);
    FILE *summary = fopen(summary_path, "w");
    cr_assert_not_null(summary);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(log_fd, 0);
    dup2(log_fd, STDERR_FILENO);
    int rc = billing_close(ledger, JUNE, NULL, summary);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(log_fd);
    fclose(summary);
    file_read(log_path, log, log_size);
    return rc;
}

/* Counts meterctl's error lines in a captured stderr, leaving out the notes on closed tenants. */
static int meterctl_errors(const char *log)
{
    int count = 0;
    for (const char *line = log; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t size = end != NULL ? (size_t)(end - line) : strlen(line);
        char text[1024];
        snprintf(text, sizeof text, "%.*s", (int)size, line);
        if (strncmp(text, "meterctl: ", 10) == 0 && strstr(text, "is already closed") == NULL)
            count++;
        line += size + (end != NULL);
    }
    return count;
}

/* Copies a JSON string member of the tenant's June invoice into `out`. */
static void invoice_text(const uint8_t tenant[UUID_SIZE], const char *member, char *out,
                         size_t size)
{
    char *text = NULL;
    cr_assert_eq(ledger_invoice_get(ledger, tenant, JUNE, &text), HM_OK);
    json_t *invoice = json_loads(text, 0, NULL);
    free(text);
    cr_assert_not_null(invoice);
    const char *value = json_string_value(json_object_get(invoice, member));
    cr_assert_not_null(value, "the invoice has no %s", member);
    snprintf(out, size, "%s", value);
    json_decref(invoice);
}

static json_int_t invoice_revision(const uint8_t tenant[UUID_SIZE])
{
    char *text = NULL;
    cr_assert_eq(ledger_invoice_get(ledger, tenant, JUNE, &text), HM_OK);
    json_t *invoice = json_loads(text, 0, NULL);
    free(text);
    cr_assert_not_null(invoice);
    json_int_t revision = json_integer_value(json_object_get(invoice, "revision"));
    json_decref(invoice);
    return revision;
}

/* Closes June, voids alpha's invoice and copies its number into `voided`. */
static void close_then_void(char voided[DOCUMENT_NUMBER_MAX])
{
    char log[4096];
    cr_assert_eq(close_logged(log, sizeof log), HM_OK, "%s", log);
    invoice_text(tenant_a, "number", voided, DOCUMENT_NUMBER_MAX);
    char notes[256], error[512];
    cr_assert_eq(billing_void(ledger, voided, "wrong rate", 0, JUNE_1_S + 40 * 86400, notes,
                              sizeof notes, error, sizeof error),
                 HM_OK, "%s", error);
    cr_assert_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0);
}

/* Checks that a stopped close left alpha's June open, still on the void invoice. */
static void assert_nothing_stored(const char *voided)
{
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0, "alpha's June was closed");
    char current[DOCUMENT_NUMBER_MAX];
    invoice_text(tenant_a, "number", current, sizeof current);
    cr_expect_str_eq(current, voided, "alpha's June points at a new invoice");
}

Test(close_read_failures, void_invoice_read_error_stops_close)
{
    char voided[DOCUMENT_NUMBER_MAX];
    close_then_void(voided);

    char log[4096];
    get_failure_arm(voided, strlen(voided));
    int rc = close_logged(log, sizeof log);
    cr_expect_eq(get_failure_armed, 0, "the close did not read the void invoice");
    cr_expect_eq(rc, HM_ERR_STORAGE, "the close returned %d; stderr: %s", rc, log);
    cr_expect(strstr(log, "tenant alpha") != NULL, "stderr does not name the tenant: %s", log);
    cr_expect(strstr(log, "2024-06") != NULL, "stderr does not name the period: %s", log);
    cr_expect(strstr(log, voided) != NULL, "stderr does not name %s: %s", voided, log);
    cr_expect(strstr(log, "not closed") != NULL, "stderr does not say June is not closed: %s",
              log);
    cr_expect_eq(meterctl_errors(log), 1, "the failure is reported more than once: %s", log);
    assert_nothing_stored(voided);

    /* Once the read succeeds, the new invoice is the void one's next revision. */
    cr_assert_eq(close_logged(log, sizeof log), HM_OK, "%s", log);
    cr_expect_eq(invoice_revision(tenant_a), 2);
    char replaces[DOCUMENT_NUMBER_MAX];
    invoice_text(tenant_a, "replaces", replaces, sizeof replaces);
    cr_expect_str_eq(replaces, voided);
}

Test(close_read_failures, rating_read_error_stops_close)
{
    /*
     * Alpha is rated first. Beta's record is read once as the tenants are
     * listed; the next read keyed by its id, of its settings, fails.
     */
    char log[4096];
    get_failure_arm(tenant_b, UUID_SIZE);
    get_failure_skip = 1;
    int rc = close_logged(log, sizeof log);
    cr_expect_eq(get_failure_armed, 0, "the close did not read beta's settings");
    cr_expect_eq(rc, HM_ERR_STORAGE, "the close returned %d; stderr: %s", rc, log);
    cr_expect(strstr(log, "tenant beta") != NULL, "stderr does not name the tenant: %s", log);
    cr_expect(strstr(log, "not closed") != NULL, "stderr does not say June is not closed: %s",
              log);
    cr_expect_eq(meterctl_errors(log), 1, "the failure is reported more than once: %s", log);
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0, "alpha's June was closed");
    cr_expect_eq(ledger_period_closed(ledger, tenant_b, JUNE), 0, "beta's June was closed");

    cr_assert_eq(close_logged(log, sizeof log), HM_OK, "%s", log);
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 1);
    cr_expect_eq(ledger_period_closed(ledger, tenant_b, JUNE), 1);
}

/*
 * Replaces alpha's void invoice with `damaged_json` and checks that the next
 * close stops with an error that names it and leaves alpha's June open.
 */
static void damaged_void_invoice_check(const char *damaged_json)
{
    char voided[DOCUMENT_NUMBER_MAX];
    close_then_void(voided);
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_document_replace(txn, voided, damaged_json), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);

    char log[4096];
    int rc = close_logged(log, sizeof log);
    cr_expect_eq(rc, HM_ERR_STORAGE, "the close returned %d; stderr: %s", rc, log);
    cr_expect(strstr(log, "tenant alpha") != NULL, "stderr does not name the tenant: %s", log);
    cr_expect(strstr(log, "2024-06") != NULL, "stderr does not name the period: %s", log);
    cr_expect(strstr(log, voided) != NULL, "stderr does not name %s: %s", voided, log);
    cr_expect(strstr(log, "damaged") != NULL, "stderr does not say it is damaged: %s", log);
    cr_expect(strstr(log, "restore the data directory from a backup") != NULL,
              "stderr does not name the fix: %s", log);
    cr_expect_eq(meterctl_errors(log), 1, "the failure is reported more than once: %s", log);
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0, "alpha's June was closed");
}

Test(close_read_failures, void_invoice_bad_json_stops_close)
{
    damaged_void_invoice_check("{\"revision\": 1, \"status\"");
}

Test(close_read_failures, void_invoice_bad_revision_stops_close)
{
    damaged_void_invoice_check("{\"revision\": \"two\"}");
}

Test(close_read_failures, void_invoice_missing_stops_close)
{
    char voided[DOCUMENT_NUMBER_MAX];
    close_then_void(voided);
    static const char missing[] = "HM-999999";
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_invoice_point(txn, tenant_a, JUNE, missing), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);

    char log[4096];
    int rc = close_logged(log, sizeof log);
    cr_expect_eq(rc, HM_ERR_STORAGE, "the close returned %d; stderr: %s", rc, log);
    cr_expect(strstr(log, "tenant alpha") != NULL, "stderr does not name the tenant: %s", log);
    cr_expect(strstr(log, missing) != NULL, "stderr does not name %s: %s", missing, log);
    cr_expect(strstr(log, "restore the data directory from a backup") != NULL,
              "stderr does not name the fix: %s", log);
    cr_expect_eq(meterctl_errors(log), 1, "the failure is reported more than once: %s", log);
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0, "alpha's June was closed");
}

Test(close_read_failures, period_read_error_stops_close)
{
    char log[4096];
    get_failure_arm_period(tenant_b, JUNE);
    int rc = close_logged(log, sizeof log);
    cr_expect_eq(get_failure_armed, 0, "the close did not read beta's period");
    cr_expect_eq(rc, HM_ERR_STORAGE, "the close returned %d; stderr: %s", rc, log);
    cr_expect(strstr(log, "tenant beta") != NULL, "stderr does not name the tenant: %s", log);
    cr_expect(strstr(log, "2024-06") != NULL, "stderr does not name the period: %s", log);
    cr_expect_eq(ledger_period_closed(ledger, tenant_a, JUNE), 0, "alpha's June was closed");
    cr_expect_eq(ledger_period_closed(ledger, tenant_b, JUNE), 0, "beta's June was closed");
}

Test(close_read_failures, order_check_read_error_returned)
{
    gpu_hour_append(tenant_a, 3, MAY_10_US);
    char error[1536] = "";
    cr_assert_eq(billing_close_order_check(ledger, JUNE, error, sizeof error), HM_ERR_STATE,
                 "alpha's open May was not found: %s", error);

    error[0] = '\0';
    get_failure_arm_period(tenant_a, MAY);
    int rc = billing_close_order_check(ledger, JUNE, error, sizeof error);
    cr_expect_eq(get_failure_armed, 0, "the check did not read alpha's May");
    cr_expect_eq(rc, HM_ERR_STORAGE, "the check returned %d: %s", rc, error);
    cr_expect(strstr(error, "tenant alpha") != NULL, "the error does not name the tenant: %s",
              error);
    cr_expect(strstr(error, "2024-05") != NULL, "the error does not name the month: %s", error);
}
