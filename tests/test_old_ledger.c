/*
 * Read-only opens of ledgers made before the newest tables existed: the
 * missing tables read as empty, `meterctl rerate` and `meterctl invoice
 * explain` work on them, and neither adds a table. The old layout is made
 * with LMDB directly: the newer tables are dropped and the price book is
 * stored as text in place, as older versions stored it.
 */
#include "meterd_harness.h"

#include <jansson.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"
#include "rollup/range.h"

static char dir[256];
static uint8_t next_id = 1;

static const uint8_t tenant_id[UUID_SIZE] = {0xa0, 1, 2,  3,  4,  5,  6,  7,
                                             8,    9, 10, 11, 12, 13, 14, 15};

/* Tables that the lifecycle of invoices added; older ledgers lack them. */
static const char *const newer_tables[] = {"tenant_settings", "issuers", "documents",
                                           "book_snapshots",  "billed",  "credits",
                                           "rollup_log"};
#define NEWER_TABLE_COUNT (sizeof newer_tables / sizeof newer_tables[0])

/* USD 2.00 per H100 hour; the re-rating book charges 3.00. */
static const char old_book_json[] =
    "{\"name\": \"old\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": \"2.00\"}}";
static const char new_book_json[] =
    "{\"name\": \"new\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": \"3.00\"}}";

/* Unix seconds of 2024-05-10 and 2024-06-10, 00:00 UTC. */
#define MAY_10_S INT64_C(1715299200)
#define JUNE_10_S INT64_C(1717977600)

static void gpu(struct ledger *ledger, int64_t at_s, uint32_t seconds)
{
    struct event event = {.kind = EVENT_GPU_ALLOCATION, .timestamp_us = at_s * 1000000};
    memcpy(event.tenant_id, tenant_id, UUID_SIZE);
    memset(event.event_id, next_id++, UUID_SIZE);
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "H100");
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool");
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc");
    event.u.gpu.duration_s = seconds;
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(&event, record);
    cr_assert_gt(size, 0);
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_append(txn, &event, record, (size_t)size), APPEND_STORED);
    cr_assert_eq(ledger_commit(txn), HM_OK);
}

static MDB_env *env_open(unsigned flags)
{
    MDB_env *env = NULL;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 32), 0);
    cr_assert_eq(mdb_env_open(env, dir, flags, 0600), 0);
    return env;
}

/*
 * Builds the ledger of an older version: tenant "alpha" with one H100 hour
 * in May 2024, closed into an invoice stored in place under its period, and
 * two H100 hours in June 2024, still open. Then drops the newer tables and
 * stores the default price book as text.
 */
static void old_ledger_build(void)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    struct tenant tenant = {.active = 1};
    memcpy(tenant.id, tenant_id, UUID_SIZE);
    snprintf(tenant.name, sizeof tenant.name, "alpha");
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
    gpu(ledger, MAY_10_S, 3600);
    gpu(ledger, JUNE_10_S, 7200);

    char id_text[UUID_TEXT_SIZE];
    uuid_format(tenant_id, id_text);
    char invoice[1024];
    snprintf(invoice, sizeof invoice,
             "{\"currency\": \"USD\", \"currency_exponent\": 2, \"event_count\": 1, "
             "\"invoice_number\": \"HM-000001\", \"period\": \"2024-05\", \"price_book\": \"old\", "
             "\"status\": \"finalized\", \"tenant_id\": \"%s\", \"tenant_name\": \"alpha\", "
             "\"lines\": [{\"kind\": \"gpu\", \"dimension\": \"H100\", \"description\": "
             "\"GPU H100\", \"quantity\": \"1\", \"unit\": \"GPU-hour\", \"amount\": \"2.00\", "
             "\"amount_minor\": 200}], "
             "\"subtotal\": {\"amount\": \"2.00\", \"amount_minor\": 200}, "
             "\"discount\": {\"amount\": \"0.00\", \"amount_minor\": 0}, "
             "\"total\": {\"amount\": \"2.00\", \"amount_minor\": 200}}",
             id_text);
    struct ledger_txn *txn = NULL;
    uint64_t seq = 0;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_next_invoice_seq(txn, &seq), HM_OK);
    cr_assert_eq(ledger_period_close(txn, tenant_id, 202405, invoice), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    /* Older ledgers kept every rollup change in the rows. */
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    ledger_close(ledger);

    MDB_env *env = env_open(0);
    MDB_txn *mdb_txn = NULL;
    MDB_dbi dbi;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &mdb_txn), 0);
    for (size_t i = 0; i < NEWER_TABLE_COUNT; i++) {
        cr_assert_eq(mdb_dbi_open(mdb_txn, newer_tables[i], 0, &dbi), 0);
        cr_assert_eq(mdb_drop(mdb_txn, dbi, 1), 0, "cannot drop %s", newer_tables[i]);
    }
    cr_assert_eq(mdb_dbi_open(mdb_txn, "pricebooks", 0, &dbi), 0);
    MDB_val key = {7, "default"}, value = {strlen(old_book_json), (void *)old_book_json};
    cr_assert_eq(mdb_put(mdb_txn, dbi, &key, &value, 0), 0);
    cr_assert_eq(mdb_txn_commit(mdb_txn), 0);
    mdb_env_close(env);
}

/* Returns the number of the newer tables that the ledger on disk has. */
static size_t newer_tables_present(void)
{
    MDB_env *env = env_open(MDB_RDONLY);
    MDB_txn *txn = NULL;
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    size_t present = 0;
    for (size_t i = 0; i < NEWER_TABLE_COUNT; i++) {
        MDB_dbi dbi;
        int rc = mdb_dbi_open(txn, newer_tables[i], 0, &dbi);
        cr_assert(rc == 0 || rc == MDB_NOTFOUND, "%s: %s", newer_tables[i], mdb_strerror(rc));
        present += rc == 0;
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return present;
}

/* Runs meterctl on the ledger; returns its exit status and its output (stdout and stderr). */
static int meterctl(char *out, size_t out_size, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int status = harness_meterctl_v(dir, out, out_size, format, args);
    va_end(args);
    return status;
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-old-ledger-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    next_id = 1;
}

static void teardown(void)
{
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(old_ledger, .init = setup, .fini = teardown, .timeout = 60);

Test(old_ledger, rerate_reads_old_tables_only)
{
    old_ledger_build();
    cr_assert_eq(newer_tables_present(), 0);
    char path[300], out[8192];
    snprintf(path, sizeof path, "%s/new-book.json", dir);
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file);
    fputs(new_book_json, file);
    fclose(file);

    /* May, sealed: 1 h x 2.00 = 2.00, re-rated 1 h x 3.00 = 3.00. */
    cr_assert_eq(meterctl(out, sizeof out, "rerate --period 2024-05 --book %s", path), 0, "%s",
                 out);
    cr_assert_not_null(strstr(out, "alpha                    finalized"), "%s", out);
    cr_assert_not_null(strstr(out, "2.00               3.00               1.00"), "%s", out);
    /* June, a draft: 2 h x 2.00 = 4.00, re-rated 2 h x 3.00 = 6.00. */
    cr_assert_eq(meterctl(out, sizeof out, "rerate --period 2024-06 --book %s", path), 0, "%s",
                 out);
    cr_assert_not_null(strstr(out, "alpha                    draft"), "%s", out);
    cr_assert_not_null(strstr(out, "4.00               6.00               2.00"), "%s", out);
    cr_assert_eq(newer_tables_present(), 0, "a read-only command added a table");
}

Test(old_ledger, explain_reads_old_tables_only)
{
    old_ledger_build();
    char out[16384];
    json_error_t error;
    cr_assert_eq(meterctl(out, sizeof out, "invoice explain alpha --period 2024-05 --json"), 0,
                 "%s", out);
    json_t *may = json_loads(out, 0, &error);
    cr_assert_not_null(may, "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(may, "status")), "finalized");
    json_t *rollup = json_object_get(json_array_get(json_object_get(may, "lines"), 0), "rollup");
    cr_assert_str_eq(json_string_value(json_object_get(rollup, "quantity")), "3600");
    cr_assert_eq(json_integer_value(json_object_get(rollup, "events")), 1);
    json_decref(may);

    cr_assert_eq(meterctl(out, sizeof out, "invoice explain alpha --period 2024-06 --json"), 0,
                 "%s", out);
    json_t *june = json_loads(out, 0, &error);
    cr_assert_not_null(june, "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(june, "status")), "draft");
    cr_assert_str_eq(json_string_value(json_object_get(june, "total")), "4.00");
    json_decref(june);
    cr_assert_eq(newer_tables_present(), 0, "a read-only command added a table");
}

/* A ledger without any table: every read of a read-only open finds nothing, and nothing fails. */
Test(old_ledger, read_only_open_of_empty_environment)
{
    MDB_env *env = env_open(0);
    MDB_txn *txn = NULL;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    struct ledger *ledger = NULL;
    struct ledger_options options = {.read_only = 1};
    cr_assert_eq(ledger_open(&ledger, dir, &options), HM_OK);
    struct tenant *tenants = NULL;
    size_t count = 99;
    cr_assert_eq(ledger_tenant_list(ledger, &tenants, &count), HM_OK);
    cr_assert_eq(count, 0);
    free(tenants);
    struct tenant tenant;
    cr_assert_eq(ledger_tenant_find(ledger, "alpha", &tenant), HM_ERR_NOT_FOUND);
    struct rollup_row *rows = NULL;
    count = 99;
    cr_assert_eq(ledger_rollups(ledger, tenant_id, 202406, &rows, &count), HM_OK);
    cr_assert_eq(count, 0);
    free(rows);
    count = 99;
    cr_assert_eq(ledger_usage_range(ledger, tenant_id, 0, JUNE_10_S * 1000000, &rows, &count),
                 HM_OK);
    cr_assert_eq(count, 0);
    free(rows);
    uint64_t events = 99;
    cr_assert_eq(ledger_event_count(ledger, tenant_id, &events), HM_OK);
    cr_assert_eq(events, 0);
    struct key_record key;
    cr_assert_eq(ledger_key_get(ledger, 1, &key), HM_ERR_NOT_FOUND);
    char *text = NULL;
    cr_assert_eq(ledger_pricebook_get(ledger, "default", &text), HM_ERR_NOT_FOUND);
    cr_assert_eq(ledger_period_closed(ledger, tenant_id, 202406), 0);
    cr_assert_eq(ledger_invoice_get(ledger, tenant_id, 202406, &text), HM_ERR_NOT_FOUND);
    cr_assert_eq(ledger_document_get(ledger, "HM-000001", &text), HM_ERR_NOT_FOUND);
    int64_t grace = -1;
    cr_assert_eq(ledger_setting_get(ledger, "close-grace-hours", 7, &grace), HM_OK);
    cr_assert_eq(grace, 7);
    struct tenant_settings settings;
    cr_assert_eq(ledger_tenant_settings_get(ledger, tenant_id, &settings), HM_OK);
    cr_assert_str_eq(settings.support_tier, "none");
    struct issuer *issuers = NULL;
    cr_assert_eq(ledger_issuer_list(ledger, &issuers, &count), HM_OK);
    cr_assert_eq(count, 1, "only the built-in issuer");
    free(issuers);
    struct credit_grant *grants = NULL;
    count = 99;
    cr_assert_eq(ledger_credit_list(ledger, tenant_id, &grants, &count), HM_OK);
    cr_assert_eq(count, 0);
    ledger_credit_grants_free(grants, count);
    struct billed_period *billed = NULL;
    count = 99;
    cr_assert_eq(ledger_billed_list(ledger, tenant_id, &billed, &count), HM_OK);
    cr_assert_eq(count, 0);
    free(billed);
    char sha256[BOOK_SHA256_HEX_SIZE];
    ledger_book_sha256(old_book_json, sha256);
    cr_assert_eq(ledger_book_snapshot_get(ledger, sha256, &text), HM_ERR_NOT_FOUND);
    ledger_close(ledger);
}
