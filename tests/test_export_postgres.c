/*
 * `meterctl export postgres` against a real PostgreSQL server: a private
 * cluster on 127.0.0.1 (tests/pg_cluster.sh), one database per test. Every
 * exported value is compared with the ledger it came from.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

/* The cluster is shared by every test of this program; each test has its own database. */
static char cluster_dir[256];
static char ledger_dir[256];
static char dsn[1024];
static PGconn *conn;

static const uint8_t tenant_a[UUID_SIZE] = { 0xa0, 1, 2, 3, 4, 5, 0x46, 7, 0x88, 9, 10, 11, 12, 13,
                                             14, 15 };
static const uint8_t tenant_b[UUID_SIZE] = { 0xb0, 1, 2, 3, 4, 5, 0x46, 7, 0x88, 9, 10, 11, 12, 13,
                                             14, 15 };

/* 2024-05-10T10:00:00Z, 2024-07-04T00:00:00Z and the last microsecond of 2023. */
#define MAY_10_US (INT64_C(1715335200) * 1000000)
#define JULY_4_US (INT64_C(1720051200) * 1000000)
#define NEW_YEAR_US (INT64_C(1704067200) * 1000000)

ReportHook(PRE_ALL)(struct criterion_test_set *tests)
{
    (void)tests;
    snprintf(cluster_dir, sizeof cluster_dir, "/tmp/hm-test-pg-XXXXXX");
    if (mkdtemp(cluster_dir) == NULL)
        return;
    char command[1024];
    snprintf(command, sizeof command, "bash '%s/tests/pg_cluster.sh' start '%s' >/dev/null",
             HM_SOURCE_DIR, cluster_dir);
    if (system(command) != 0)
        fprintf(stderr, "test_export_postgres: the PostgreSQL cluster did not start (see above)\n");
    setenv("HM_TEST_PG_DIR", cluster_dir, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    (void)stats;
    char command[1024];
    snprintf(command, sizeof command, "bash '%s/tests/pg_cluster.sh' stop '%s'; rm -rf '%s'",
             HM_SOURCE_DIR, cluster_dir, cluster_dir);
    if (cluster_dir[0] != '\0' && system(command) != 0)
        fprintf(stderr, "test_export_postgres: stopping the PostgreSQL cluster failed\n");
}

/* Reads PGPORT and PGPASSWORD from the cluster's env file. */
static void cluster_read(char *port, size_t port_size, char *password, size_t password_size)
{
    const char *dir = getenv("HM_TEST_PG_DIR");
    cr_assert_not_null(dir, "HM_TEST_PG_DIR is not set: the test cluster hook did not run");
    char path[512], line[512];
    snprintf(path, sizeof path, "%s/env", dir);
    FILE *file = fopen(path, "r");
    cr_assert_not_null(file, "no %s: the PostgreSQL test cluster did not start; run "
                       "`bash tests/pg_cluster.sh start /tmp/x` to see why", path);
    port[0] = password[0] = '\0';
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "PGPORT=", 7) == 0) {
            int length = snprintf(port, port_size, "%s", line + 7);
            cr_assert(length > 0 && (size_t)length < port_size, "%s: bad port: %s", path, line);
        }
        if (strncmp(line, "PGPASSWORD=", 11) == 0) {
            int length = snprintf(password, password_size, "%s", line + 11);
            cr_assert(length > 0 && (size_t)length < password_size, "%s: password too long",
                      path);
        }
    }
    fclose(file);
    cr_assert(port[0] != '\0' && password[0] != '\0');
}

static void exec_ok(PGconn *on, const char *sql)
{
    PGresult *result = PQexec(on, sql);
    cr_assert(PQresultStatus(result) == PGRES_COMMAND_OK ||
                  PQresultStatus(result) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(on));
    PQclear(result);
}

static void setup(void)
{
    char port[16], password[128];
    cluster_read(port, sizeof port, password, sizeof password);
    char database[64], admin_dsn[512], sql[256];
    snprintf(database, sizeof database, "export_%d", (int)getpid());
    snprintf(admin_dsn, sizeof admin_dsn,
             "host=127.0.0.1 port=%s dbname=meter user=meter password=%s", port, password);
    PGconn *admin = PQconnectdb(admin_dsn);
    cr_assert_eq(PQstatus(admin), CONNECTION_OK, "%s", PQerrorMessage(admin));
    exec_ok(admin, "SET client_min_messages = warning");
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", database);
    exec_ok(admin, sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", database);
    exec_ok(admin, sql);
    PQfinish(admin);

    snprintf(dsn, sizeof dsn, "host=127.0.0.1 port=%s dbname=%s user=meter password=%s", port,
             database, password);
    conn = PQconnectdb(dsn);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));

    snprintf(ledger_dir, sizeof ledger_dir, "/tmp/hm-test-export-XXXXXX");
    cr_assert_not_null(mkdtemp(ledger_dir));
}

static void teardown(void)
{
    PQfinish(conn);
    char command[512];
    snprintf(command, sizeof command, "rm -rf '%s'", ledger_dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(export_postgres, .init = setup, .fini = teardown, .timeout = 300);

/*
 * Runs meterctl on the test's ledger with `environment` (may be "") in
 * front. Returns the exit status, or 128 + the signal that killed it.
 */
static int meterctl(char *out, size_t out_size, const char *environment, const char *format, ...)
{
    char arguments[2048], command[4096];
    va_list args;
    va_start(args, format);
    vsnprintf(arguments, sizeof arguments, format, args);
    va_end(args);
    snprintf(command, sizeof command, "exec env METER_DATA='%s' %s '%s/meterctl' %s 2>&1",
             ledger_dir, environment, HM_BINARY_DIR, arguments);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = 0, got;
    while (used + 1 < out_size && (got = fread(out + used, 1, out_size - used - 1, pipe)) > 0)
        used += got;
    out[used] = '\0';
    int status = pclose(pipe);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void migrate(void)
{
    char out[8192];
    cr_assert_eq(meterctl(out, sizeof out, "", "db migrate --dsn '%s'", dsn), 0, "%s", out);
}

static int export_run(char *out, size_t out_size, const char *environment, const char *options)
{
    return meterctl(out, out_size, environment, "export postgres --dsn '%s' %s", dsn, options);
}

/* Runs a query with text parameters that must return exactly one row; the caller PQclears. */
static PGresult *one_row(const char *sql, int count, const char *const *params)
{
    PGresult *result = PQexecParams(conn, sql, count, NULL, params, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(result), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(conn));
    cr_assert_eq(PQntuples(result), 1, "%s returned %d rows", sql, PQntuples(result));
    return result;
}

static long long scalar(const char *sql)
{
    PGresult *result = one_row(sql, 0, NULL);
    long long value = atoll(PQgetvalue(result, 0, 0));
    PQclear(result);
    return value;
}

/* ---- Building the ledger ---- */

static void tenants_create(struct ledger *ledger)
{
    struct tenant a = { .created_s = 1714000000, .service_start_s = 1714521600, .active = 1 };
    memcpy(a.id, tenant_a, UUID_SIZE);
    snprintf(a.name, sizeof a.name, "acme");
    struct tenant_settings settings;
    ledger_tenant_settings_default(&settings);
    snprintf(settings.support_tier, sizeof settings.support_tier, "pro");
    snprintf(settings.stripe_customer, sizeof settings.stripe_customer, "cus_Test123");
    cr_assert_eq(ledger_tenant_create_with(ledger, &a, &settings), HM_OK);

    struct tenant b = { .created_s = 1714000001, .service_start_s = 1714521600, .active = 1 };
    memcpy(b.id, tenant_b, UUID_SIZE);
    snprintf(b.name, sizeof b.name, "beta");
    ledger_tenant_settings_default(&settings);
    settings.service_end_s = 1735689600; /* 2025-01-01 */
    cr_assert_eq(ledger_tenant_create_with(ledger, &b, &settings), HM_OK);
}

static void keys_create(struct ledger *ledger)
{
    for (int i = 0; i < 3; i++) {
        struct key_record key = { .key_id = UINT64_C(0xfedcba9876543210) + (uint64_t)i,
                                  .status = KEY_ACTIVE, .created_s = 1714000100 + i };
        memcpy(key.tenant_id, i < 2 ? tenant_a : tenant_b, UUID_SIZE);
        if (i == 2)
            key.expires_s = 1735689600; /* 2025-01-01 */
        memset(key.signing_key, 0x5a, sizeof key.signing_key);
        for (size_t j = 0; j < sizeof key.secret_hash; j++)
            key.secret_hash[j] = (uint8_t)(j * 7 + (size_t)i);
        cr_assert_eq(ledger_key_put(ledger, &key), HM_OK);
    }
    cr_assert_eq(ledger_key_revoke(ledger, UINT64_C(0xfedcba9876543211), 1714500000), HM_OK);
}

static struct event event_base(const uint8_t tenant[UUID_SIZE], uint32_t id, int64_t time_us,
                               enum event_kind kind)
{
    struct event event = { .kind = kind, .timestamp_us = time_us };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    /* A version 4 shaped UUID whose first bytes carry the number, so ids sort by it. */
    memset(event.event_id, 0x11, UUID_SIZE);
    event.event_id[0] = (uint8_t)(id >> 24);
    event.event_id[1] = (uint8_t)(id >> 16);
    event.event_id[2] = (uint8_t)(id >> 8);
    event.event_id[3] = (uint8_t)id;
    return event;
}

static void append(struct ledger *ledger, const struct event *events, size_t count)
{
    struct ledger_txn *txn;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (size_t i = 0; i < count; i++) {
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&events[i], record);
        cr_assert_gt(size, 0, "event %zu does not encode", i);
        cr_assert_eq(ledger_append(txn, &events[i], record, (size_t)size), APPEND_STORED);
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
}

/* Events of every kind with edge values. May 2024 gets only events that the default book prices. */
static void events_create(struct ledger *ledger)
{
    struct event events[10];
    events[0] = event_base(tenant_a, 0x70000000, MAY_10_US + 123456, EVENT_INFERENCE);
    snprintf(events[0].u.inference.model, EVENT_NAME_MAX + 1, "coder-7b");
    events[0].u.inference.input_tokens = 1000000;
    events[0].u.inference.output_tokens = 2000;
    events[0].u.inference.latency_ms = 900;
    events[0].u.inference.gpu_time_ms = 850;

    events[1] = event_base(tenant_a, 0x20000000, MAY_10_US + 1, EVENT_GPU_ALLOCATION);
    snprintf(events[1].u.gpu.allocation_id, EVENT_NAME_MAX + 1, "alloc-1");
    snprintf(events[1].u.gpu.pool_id, EVENT_NAME_MAX + 1, "pool-eu");
    snprintf(events[1].u.gpu.gpu_type, EVENT_NAME_MAX + 1, "A100");
    events[1].u.gpu.duration_s = 3600;
    events[1].u.gpu.cost_per_hour_micro = 2500001;

    events[2] = event_base(tenant_a, 0x30000000, MAY_10_US + 2, EVENT_STORAGE);
    events[2].u.storage.bytes_stored = UINT64_C(1000000000000);
    events[2].u.storage.bytes_transferred = UINT64_C(5000000000);

    /* Backslash and quote are printable ASCII: the JSON and the COPY text escape them. */
    events[3] = event_base(tenant_a, 0x40000000, MAY_10_US + 3, EVENT_API_CALL);
    snprintf(events[3].u.api.endpoint, EVENT_ENDPOINT_MAX + 1, "/v1/a\\b\"c\\n");
    events[3].u.api.response_code = 503;
    events[3].u.api.response_time_ms = UINT32_MAX;

    /* The same event id in both tenants: two events, since the key includes the tenant. */
    events[4] = event_base(tenant_b, 0x40000000, MAY_10_US + 4, EVENT_API_CALL);
    snprintf(events[4].u.api.endpoint, EVENT_ENDPOINT_MAX + 1, "/v1/models");
    events[4].u.api.response_code = 200;
    events[4].u.api.response_time_ms = 12;

    /* Both sides of a new year, with the largest counts the wire format carries. */
    events[5] = event_base(tenant_a, 0x10000000, NEW_YEAR_US - 1, EVENT_INFERENCE);
    snprintf(events[5].u.inference.model, EVENT_NAME_MAX + 1, "odd\\\"model");
    events[5].u.inference.input_tokens = UINT64_MAX;
    events[5].u.inference.output_tokens = UINT64_MAX;
    events[5].u.inference.cached_input_tokens = UINT64_MAX;
    events[5].u.inference.latency_ms = UINT32_MAX;
    events[5].u.inference.gpu_time_ms = UINT64_MAX;

    events[6] = event_base(tenant_a, 0x10000001, NEW_YEAR_US, EVENT_STORAGE);
    events[6].u.storage.bytes_stored = UINT64_MAX;
    events[6].u.storage.bytes_transferred = 0;

    events[7] = event_base(tenant_b, 0x05000000, JULY_4_US, EVENT_GPU_ALLOCATION);
    snprintf(events[7].u.gpu.allocation_id, EVENT_NAME_MAX + 1, "a");
    snprintf(events[7].u.gpu.pool_id, EVENT_NAME_MAX + 1, "p");
    snprintf(events[7].u.gpu.gpu_type, EVENT_NAME_MAX + 1, "H100");
    events[7].u.gpu.duration_s = UINT32_MAX;
    events[7].u.gpu.cost_per_hour_micro = INT64_MAX;

    events[8] = event_base(tenant_b, 0x06000000, JULY_4_US + 999999, EVENT_INFERENCE);
    snprintf(events[8].u.inference.model, EVENT_NAME_MAX + 1, "kimi-chat");
    events[8].u.inference.input_tokens = 10;
    events[8].u.inference.cached_input_tokens = 10;

    events[9] = event_base(tenant_b, 0x07000000, MAY_10_US + 5, EVENT_GPU_ALLOCATION);
    snprintf(events[9].u.gpu.allocation_id, EVENT_NAME_MAX + 1, "alloc-2");
    snprintf(events[9].u.gpu.pool_id, EVENT_NAME_MAX + 1, "pool-us");
    snprintf(events[9].u.gpu.gpu_type, EVENT_NAME_MAX + 1, "H100");
    events[9].u.gpu.duration_s = 7200;
    events[9].u.gpu.cost_per_hour_micro = 0;

    append(ledger, events, 5);
    append(ledger, events + 5, 5);
}

/* Loads the default book, closes May 2024 (with earlier months left open), voids acme's invoice,
 * closes again, credits beta. */
static void invoices_create(void)
{
    char out[16384];
    cr_assert_eq(meterctl(out, sizeof out, "", "pricebook load '%s/data/pricebooks/default.json'",
                          HM_SOURCE_DIR), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "", "close --period 2024-05 --allow-gaps"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "", "invoice void HM-000001 --reason 'wrong meter'"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "", "close --period 2024-05 --allow-gaps"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "",
                          "invoice credit-note HM-000002 --amount 1.25 --reason outage"), 0,
                 "%s", out);
}

static struct ledger *ledger_build(void)
{
    struct ledger *ledger;
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    keys_create(ledger);
    events_create(ledger);
    ledger_close(ledger);
    invoices_create();
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    return ledger;
}

/* ---- Comparing ---- */

/* Writes the expected metadata of an event as (member, text) pairs; returns their count. */
static size_t expected_metadata(const struct event *event, char names[6][32], char values[6][160])
{
    size_t count = 0;
#define FIELD(name, ...)                                                                           \
    do {                                                                                           \
        snprintf(names[count], 32, "%s", name);                                                    \
        snprintf(values[count], 160, __VA_ARGS__);                                                 \
        count++;                                                                                   \
    } while (0)
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        FIELD("allocation_id", "%s", event->u.gpu.allocation_id);
        FIELD("pool_id", "%s", event->u.gpu.pool_id);
        FIELD("gpu_type", "%s", event->u.gpu.gpu_type);
        FIELD("duration_seconds", "%" PRIu32, event->u.gpu.duration_s);
        FIELD("cost_per_hour", "%" PRId64 ".%06" PRId64, event->u.gpu.cost_per_hour_micro / 1000000,
              event->u.gpu.cost_per_hour_micro % 1000000);
        break;
    case EVENT_INFERENCE:
        FIELD("model", "%s", event->u.inference.model);
        FIELD("input_tokens", "%" PRIu64, event->u.inference.input_tokens);
        FIELD("output_tokens", "%" PRIu64, event->u.inference.output_tokens);
        FIELD("cached_input_tokens", "%" PRIu64, event->u.inference.cached_input_tokens);
        FIELD("latency_ms", "%" PRIu32, event->u.inference.latency_ms);
        FIELD("gpu_time_ms", "%" PRIu64, event->u.inference.gpu_time_ms);
        break;
    case EVENT_STORAGE:
        FIELD("bytes_stored", "%" PRIu64, event->u.storage.bytes_stored);
        FIELD("bytes_transferred", "%" PRIu64, event->u.storage.bytes_transferred);
        break;
    case EVENT_API_CALL:
        FIELD("endpoint", "%s", event->u.api.endpoint);
        FIELD("response_code", "%u", (unsigned)event->u.api.response_code);
        FIELD("response_time_ms", "%" PRIu32, event->u.api.response_time_ms);
        break;
    }
#undef FIELD
    return count;
}

static int event_compare(void *context, uint64_t seq, const struct event *event)
{
    uint64_t *compared = context;
    char tenant[UUID_TEXT_SIZE], id[UUID_TEXT_SIZE];
    uuid_format(event->tenant_id, tenant);
    uuid_format(event->event_id, id);
    const char *key[] = { tenant, id };
    PGresult *row = one_row("SELECT (extract(epoch FROM \"timestamp\") * 1000000)::bigint,"
                            " event_type, ledger_seq, cost_usd IS NULL"
                            " FROM usage_events WHERE tenant_id = $1 AND id = $2",
                            2, key);
    cr_expect_eq(strtoll(PQgetvalue(row, 0, 0), NULL, 10), event->timestamp_us,
                 "timestamp of %s", id);
    cr_expect_str_eq(PQgetvalue(row, 0, 1), event_kind_name(event->kind));
    cr_expect_eq(strtoull(PQgetvalue(row, 0, 2), NULL, 10), seq, "ledger_seq of %s", id);
    cr_expect_str_eq(PQgetvalue(row, 0, 3), "t");
    PQclear(row);

    char names[6][32], values[6][160];
    size_t count = expected_metadata(event, names, values);
    for (size_t i = 0; i < count; i++) {
        const char *params[] = { tenant, id, names[i] };
        PGresult *field = one_row("SELECT metadata ->> $3 FROM usage_events"
                                  " WHERE tenant_id = $1 AND id = $2",
                                  3, params);
        cr_expect_str_eq(PQgetvalue(field, 0, 0), values[i], "%s of event %s", names[i], id);
        PQclear(field);
    }
    const char *tenant_only[] = { tenant, id };
    PGresult *members = one_row("SELECT count(*) FROM usage_events, jsonb_object_keys(metadata)"
                                " WHERE tenant_id = $1 AND id = $2",
                                2, tenant_only);
    cr_expect_eq((size_t)atoll(PQgetvalue(members, 0, 0)), count, "metadata members of %s", id);
    PQclear(members);
    (*compared)++;
    return HM_OK;
}

/* Compares every event of both tenants; returns how many the ledger has. */
static uint64_t events_compare(struct ledger *ledger)
{
    uint64_t compared = 0;
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_a, 0, 0, event_compare, &compared), HM_OK);
    cr_assert_eq(ledger_arrivals_each(ledger, tenant_b, 0, 0, event_compare, &compared), HM_OK);
    cr_expect_eq((uint64_t)scalar("SELECT count(*) FROM usage_events"), compared);
    return compared;
}

static const char *text_of(json_t *object, const char *key)
{
    return json_string_value(json_object_get(object, key));
}

static long long minor_of(json_t *object, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(object, key), "amount_minor"));
}

static void invoice_compare(const char *number, json_t *invoice)
{
    const char *key[] = { number };
    PGresult *row = one_row("SELECT tenant_id, status, revision, currency, currency_exponent,"
                            " subtotal_minor, discount_minor, credits_applied_minor, total_minor,"
                            " sha256, to_char(period, 'YYYY-MM'), coalesce(void_reason, ''),"
                            " document ->> 'sha256', issuer, event_count"
                            " FROM invoices WHERE number = $1",
                            1, key);
    cr_expect_str_eq(PQgetvalue(row, 0, 0), text_of(invoice, "tenant_id"));
    cr_expect_str_eq(PQgetvalue(row, 0, 1), text_of(invoice, "status"), "status of %s", number);
    cr_expect_eq(atoll(PQgetvalue(row, 0, 2)), json_integer_value(json_object_get(invoice,
                                                                                  "revision")));
    cr_expect_str_eq(PQgetvalue(row, 0, 3), text_of(invoice, "currency"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 4)),
                 json_integer_value(json_object_get(invoice, "currency_exponent")));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 5)), minor_of(invoice, "subtotal"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 6)), minor_of(invoice, "discount"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 7)), minor_of(invoice, "credits_applied"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 8)), minor_of(invoice, "total"), "total of %s", number);
    cr_expect_str_eq(PQgetvalue(row, 0, 9), text_of(invoice, "sha256"));
    cr_expect_str_eq(PQgetvalue(row, 0, 10), text_of(invoice, "period"));
    const char *reason = text_of(invoice, "void_reason");
    cr_expect_str_eq(PQgetvalue(row, 0, 11), reason ? reason : "");
    cr_expect_str_eq(PQgetvalue(row, 0, 12), text_of(invoice, "sha256"));
    cr_expect_str_eq(PQgetvalue(row, 0, 13), text_of(invoice, "issuer"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 14)),
                 json_integer_value(json_object_get(invoice, "event_count")));
    PQclear(row);

    json_t *lines = json_object_get(invoice, "lines");
    char count_sql[256];
    snprintf(count_sql, sizeof count_sql,
             "SELECT count(*) FROM invoice_lines WHERE invoice_number = '%s'", number);
    cr_expect_eq((size_t)scalar(count_sql), json_array_size(lines), "lines of %s", number);
    size_t index;
    json_t *line;
    json_array_foreach(lines, index, line) {
        char line_number[24];
        snprintf(line_number, sizeof line_number, "%zu", index + 1);
        const char *line_key[] = { number, line_number };
        PGresult *stored = one_row("SELECT kind, description, quantity::text, unit_price::text,"
                                   " amount_minor, unit, price_unit, coalesce(dimension, ''),"
                                   " coalesce(events, -1)"
                                   " FROM invoice_lines WHERE invoice_number = $1"
                                   " AND line_number = $2",
                                   2, line_key);
        cr_expect_str_eq(PQgetvalue(stored, 0, 0), text_of(line, "kind"));
        cr_expect_str_eq(PQgetvalue(stored, 0, 1), text_of(line, "description"));
        cr_expect_str_eq(PQgetvalue(stored, 0, 2), text_of(line, "quantity"),
                         "quantity of %s line %zu", number, index + 1);
        cr_expect_str_eq(PQgetvalue(stored, 0, 3), text_of(line, "unit_price"));
        cr_expect_eq(atoll(PQgetvalue(stored, 0, 4)),
                     json_integer_value(json_object_get(line, "amount_minor")),
                     "amount of %s line %zu", number, index + 1);
        cr_expect_str_eq(PQgetvalue(stored, 0, 5), text_of(line, "unit"));
        cr_expect_str_eq(PQgetvalue(stored, 0, 6), text_of(line, "price_unit"));
        const char *dimension = text_of(line, "dimension");
        cr_expect_str_eq(PQgetvalue(stored, 0, 7), dimension ? dimension : "");
        json_t *events = json_object_get(line, "events");
        cr_expect_eq(atoll(PQgetvalue(stored, 0, 8)), events ? json_integer_value(events) : -1);
        PQclear(stored);
    }
}

static void credit_note_compare(const char *number, json_t *note)
{
    const char *key[] = { number };
    PGresult *row = one_row("SELECT tenant_id, credited_invoice, amount_minor, status, kind,"
                            " reason, currency, sha256 FROM credit_notes WHERE number = $1",
                            1, key);
    cr_expect_str_eq(PQgetvalue(row, 0, 0), text_of(note, "tenant_id"));
    cr_expect_str_eq(PQgetvalue(row, 0, 1), text_of(note, "credited_invoice"));
    cr_expect_eq(atoll(PQgetvalue(row, 0, 2)), minor_of(note, "amount"));
    cr_expect_str_eq(PQgetvalue(row, 0, 3), text_of(note, "status"));
    cr_expect_str_eq(PQgetvalue(row, 0, 4), text_of(note, "kind"));
    cr_expect_str_eq(PQgetvalue(row, 0, 5), text_of(note, "reason"));
    cr_expect_str_eq(PQgetvalue(row, 0, 6), text_of(note, "currency"));
    cr_expect_str_eq(PQgetvalue(row, 0, 7), text_of(note, "sha256"));
    PQclear(row);
}

struct document_counts {
    int invoices;
    int credit_notes;
};

static int document_compare(void *context, const char *number, const char *text)
{
    struct document_counts *counts = context;
    cr_assert_not_null(number);
    json_t *document = json_loads(text, 0, NULL);
    cr_assert_not_null(document);
    if (strcmp(text_of(document, "document_type"), "credit_note") == 0) {
        credit_note_compare(number, document);
        counts->credit_notes++;
    } else {
        invoice_compare(number, document);
        counts->invoices++;
    }
    json_decref(document);
    return 0;
}

static void documents_compare(struct ledger *ledger, int invoices, int credit_notes)
{
    struct document_counts counts = { 0 };
    cr_assert_eq(ledger_document_each(ledger, document_compare, &counts), HM_OK);
    cr_expect_eq(counts.invoices, invoices);
    cr_expect_eq(counts.credit_notes, credit_notes);
    cr_expect_eq(scalar("SELECT count(*) FROM invoices"), invoices);
    cr_expect_eq(scalar("SELECT count(*) FROM credit_notes"), credit_notes);
}

/* ---- Tests ---- */

Test(export_postgres, exact_values)
{
    struct ledger *ledger = ledger_build();
    migrate();
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    cr_expect_not_null(strstr(out, "usage events         10 new"), "%s", out);

    /* Tenants with their settings. */
    const char *a_key[] = { "a0010203-0405-4607-8809-0a0b0c0d0e0f" };
    PGresult *row = one_row("SELECT organization_name, extract(epoch FROM created_at)::bigint,"
                            " status, support_tier, issuer,"
                            " extract(epoch FROM service_start)::bigint, service_end IS NULL,"
                            " deployment_mode FROM tenants WHERE id = $1",
                            1, a_key);
    cr_expect_str_eq(PQgetvalue(row, 0, 0), "acme");
    cr_expect_str_eq(PQgetvalue(row, 0, 1), "1714000000");
    cr_expect_str_eq(PQgetvalue(row, 0, 2), "active");
    cr_expect_str_eq(PQgetvalue(row, 0, 3), "pro");
    cr_expect_str_eq(PQgetvalue(row, 0, 4), "default");
    cr_expect_str_eq(PQgetvalue(row, 0, 5), "1714521600");
    cr_expect_str_eq(PQgetvalue(row, 0, 6), "t");
    cr_expect_str_eq(PQgetvalue(row, 0, 7), "shared");
    PQclear(row);
    cr_expect_eq(scalar("SELECT extract(epoch FROM service_end)::bigint FROM tenants"
                        " WHERE organization_name = 'beta'"),
                 1735689600);
    cr_expect_eq(scalar("SELECT count(*) FROM billing_config WHERE customer_id = 'cus_Test123'"
                        " AND billing_provider = 'stripe'"
                        " AND tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'"),
                 1);
    cr_expect_eq(scalar("SELECT count(*) FROM billing_config"), 1);

    /* Keys: the hash of the secret and the status, never the signing key. */
    cr_expect_eq(scalar("SELECT count(*) FROM api_keys"), 3);
    row = one_row("SELECT key_hash, status, extract(epoch FROM revoked_at)::bigint, tenant_id"
                  " FROM api_keys WHERE id = 'fedcba9876543211'",
                  0, NULL);
    char expected_hash[80] = "sha256:";
    for (int j = 0; j < 32; j++)
        snprintf(expected_hash + 7 + 2 * j, 3, "%02x", (unsigned)(j * 7 + 1) & 0xff);
    cr_expect_str_eq(PQgetvalue(row, 0, 0), expected_hash);
    cr_expect_str_eq(PQgetvalue(row, 0, 1), "revoked");
    cr_expect_str_eq(PQgetvalue(row, 0, 2), "1714500000");
    cr_expect_str_eq(PQgetvalue(row, 0, 3), "a0010203-0405-4607-8809-0a0b0c0d0e0f");
    PQclear(row);
    cr_expect_eq(scalar("SELECT count(*) FROM api_keys WHERE status = 'active'"
                        " AND revoked_at IS NULL"),
                 2);
    cr_expect_eq(scalar("SELECT count(*) FROM api_keys"
                        " WHERE key_hash LIKE '%5a5a5a5a5a5a5a5a%'"),
                 0);
    cr_expect_eq(scalar("SELECT extract(epoch FROM expires_at)::bigint FROM api_keys"
                        " WHERE id = 'fedcba9876543212'"),
                 1735689600);
    cr_expect_eq(scalar("SELECT count(*) FROM api_keys WHERE expires_at IS NULL"), 2);

    /* Every event, field by field, and the partitions of its months. */
    cr_expect_eq(events_compare(ledger), 10);
    PGresult *partitions = PQexec(conn, "SELECT string_agg(c.relname, ',' ORDER BY c.relname)"
                                        " FROM pg_inherits i JOIN pg_class c"
                                        " ON c.oid = i.inhrelid"
                                        " WHERE i.inhparent = 'usage_events'::regclass");
    cr_assert_eq(PQresultStatus(partitions), PGRES_TUPLES_OK);
    cr_expect_str_eq(PQgetvalue(partitions, 0, 0), "usage_events_y2023m12,usage_events_y2024m01,"
                                                   "usage_events_y2024m05,usage_events_y2024m07");
    PQclear(partitions);

    /* HM-000001 (void), HM-000002 (acme, revision 2), beta's invoice, one credit note. */
    documents_compare(ledger, 3, 1);
    cr_expect_eq(scalar("SELECT count(*) FROM invoices WHERE status = 'void'"), 1);
    cr_expect_eq(scalar("SELECT sum(ledger_seq) FROM export_checkpoints"), 10);
    ledger_close(ledger);
}

Test(export_postgres, rerun_and_later_events)
{
    struct ledger *ledger = ledger_build();
    migrate();
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    cr_expect_not_null(strstr(out, "usage events          0 new in 0 transactions"), "%s", out);
    cr_expect_not_null(strstr(out, "invoices              3 (0 inserted or changed"), "%s", out);
    cr_expect_not_null(strstr(out, "tenants               2 (0 inserted or changed)"), "%s", out);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 10);

    /* Events stored after the export, with ids below every exported one, and a void. */
    struct event later[3];
    for (uint32_t i = 0; i < 3; i++) {
        later[i] = event_base(tenant_a, i, MAY_10_US + 10 + i, EVENT_API_CALL);
        snprintf(later[i].u.api.endpoint, EVENT_ENDPOINT_MAX + 1, "/late/%u", i);
        later[i].u.api.response_code = 200;
    }
    append(ledger, later, 3);
    ledger_close(ledger);
    cr_assert_eq(meterctl(out, sizeof out, "", "invoice void HM-000003 --reason rerated"), 0,
                 "%s", out);
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);

    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    cr_expect_not_null(strstr(out, "usage events          3 new in 1 transactions"), "%s", out);
    cr_expect_eq(events_compare(ledger), 13);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events WHERE metadata ->> 'endpoint'"
                        " LIKE '/late/%'"),
                 3);
    documents_compare(ledger, 3, 1);
    cr_expect_eq(scalar("SELECT count(*) FROM invoices WHERE status = 'void'"), 2);
    cr_expect_eq(scalar("SELECT events_exported FROM export_checkpoints"
                        " WHERE tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'"),
                 9);
    ledger_close(ledger);
}

/* Stores `count` API call events per tenant in batches of 500, ids in a scrambled order. */
static void many_events(struct ledger *ledger, uint32_t count)
{
    struct event *events = calloc(count, sizeof *events);
    cr_assert_not_null(events);
    for (int t = 0; t < 2; t++) {
        for (uint32_t i = 0; i < count; i++) {
            uint32_t id = (i * 2654435761u) ^ 0x5bd1e995u;
            int64_t time_us = MAY_10_US + (int64_t)i * 86400 * 1000000 / 40;
            events[i] = event_base(t ? tenant_b : tenant_a, id, time_us, EVENT_API_CALL);
            snprintf(events[i].u.api.endpoint, EVENT_ENDPOINT_MAX + 1, "/bulk/%u", i);
            events[i].u.api.response_code = 200;
        }
        for (uint32_t start = 0; start < count; start += 500)
            append(ledger, events + start, count - start < 500 ? count - start : 500);
    }
    free(events);
}

/* Checks that usage_events contains each tenant's arrivals 1..count once, no more and no less. */
static void events_complete(uint32_t count)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT tenant_id, ledger_seq FROM usage_events"
             " GROUP BY tenant_id, ledger_seq HAVING count(*) > 1) AS duplicates");
    cr_expect_eq(scalar(sql), 0, "duplicate rows");
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 2 * (long long)count);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM usage_events WHERE ledger_seq BETWEEN 1 AND %u", count);
    cr_expect_eq(scalar(sql), 2 * (long long)count);
    cr_expect_eq(scalar("SELECT count(DISTINCT (tenant_id, ledger_seq)) FROM usage_events"),
                 2 * (long long)count);
    cr_expect_eq(scalar("SELECT min(ledger_seq) FROM export_checkpoints"), count);
}

Test(export_postgres, killed_in_copy_then_rerun)
{
    struct ledger *ledger;
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    many_events(ledger, 3000);
    migrate();

    /* Batches of 700: two commit, the third is killed after 1500 rows, 100 into its COPY. */
    char out[16384];
    int status = export_run(out, sizeof out, "METER_EXPORT_TEST_KILL_AFTER_ROWS=1500",
                            "--tenant acme --batch-rows 700");
    cr_assert_eq(status, 128 + SIGKILL, "exit status %d: %s", status, out);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 1400);
    cr_expect_eq(scalar("SELECT ledger_seq FROM export_checkpoints"), 1400);

    /* Killed in the first batch of beta, after acme is complete. */
    status = export_run(out, sizeof out, "METER_EXPORT_TEST_KILL_AFTER_ROWS=1601",
                        "--batch-rows 700");
    cr_assert_eq(status, 128 + SIGKILL, "exit status %d: %s", status, out);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 3000);

    cr_assert_eq(export_run(out, sizeof out, "", "--batch-rows 700"), 0, "%s", out);
    events_complete(3000);
    cr_expect_eq(ledger_arrivals_verify(ledger, tenant_a), HM_OK);

    /* A rerun after completion changes nothing. */
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(3000);
    ledger_close(ledger);
}

Test(export_postgres, checkpoint_ahead_of_ledger)
{
    struct ledger *ledger;
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    many_events(ledger, 20);
    ledger_close(ledger);
    migrate();
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);

    /* The same database, and another ledger whose tenant of the same id has fewer events. */
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'/*", ledger_dir);
    cr_assert_eq(system(command), 0);
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    many_events(ledger, 5);
    ledger_close(ledger);
    int status = export_run(out, sizeof out, "", "");
    cr_expect_eq(status, 1, "%s", out);
    cr_expect_not_null(strstr(out, "up to arrival 20 but the ledger has only 5"), "%s", out);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 40);
}

Test(export_postgres, schema_missing)
{
    struct ledger *ledger;
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    ledger_close(ledger);
    char out[4096];
    cr_expect_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "run `meterctl db migrate --dsn DSN` first"), "%s", out);
}

/* A DSN without a password, and none in the environment, gets a hint that names both sources. */
Test(export_postgres, missing_password_hint)
{
    char port[16], password[128], out[4096];
    cluster_read(port, sizeof port, password, sizeof password);
    int status = meterctl(out, sizeof out, "PGPASSWORD= PGPASSFILE=/nonexistent",
                          "db migrate --dsn 'host=127.0.0.1 port=%s dbname=meter user=meter'",
                          port);
    cr_expect_eq(status, 1, "%s", out);
    cr_expect_not_null(strstr(out, "the server requires a password and none was given"), "%s",
                       out);
    cr_expect_not_null(strstr(out, "set PGPASSWORD, or add the line"), "%s", out);
    cr_expect_not_null(strstr(out, "~/.pgpass (mode 0600)"), "%s", out);
    cr_expect_null(strstr(out, password), "%s", out);
}

/* A ledger of two tenants with 20 events each, all of May 2024, and a migrated database. */
static struct ledger *may_ledger(void)
{
    struct ledger *ledger;
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    tenants_create(ledger);
    many_events(ledger, 20);
    migrate();
    return ledger;
}

Test(export_postgres, partition_name_with_other_bounds)
{
    struct ledger *ledger = may_ledger();
    exec_ok(conn, "CREATE TABLE usage_events_y2024m05 PARTITION OF usage_events"
                  " FOR VALUES FROM ('2030-01-01 00:00:00+00') TO ('2030-02-01 00:00:00+00')");
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "usage_events_y2024m05 exists but is a partition of "
                                   "usage_events FOR VALUES FROM ('2030-01-01"), "%s", out);
    cr_expect_not_null(strstr(out, "ALTER TABLE usage_events DETACH PARTITION "
                                   "usage_events_y2024m05"), "%s", out);
    cr_expect_null(strstr(out, "no partition of relation"), "%s", out);
    cr_expect_eq(scalar("SELECT count(*) FROM usage_events"), 0);

    /* After the fix the message names, the export resumes and loses nothing. */
    exec_ok(conn, "ALTER TABLE usage_events_y2024m05 RENAME TO usage_events_y2024m05_old");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(20);
    ledger_close(ledger);
}

Test(export_postgres, partition_name_taken_by_a_plain_table)
{
    struct ledger *ledger = may_ledger();
    exec_ok(conn, "CREATE TABLE usage_events_y2024m05 (note text)");
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "usage_events_y2024m05 exists but is not a partition of "
                                   "usage_events (it is a table of its own)"), "%s", out);
    cr_expect_not_null(strstr(out, "FOR VALUES FROM ('2024-05-01 00:00:00+00') TO "
                                   "('2024-06-01 00:00:00+00')"), "%s", out);
    exec_ok(conn, "DROP TABLE usage_events_y2024m05");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(20);
    ledger_close(ledger);
}

Test(export_postgres, checkpoint_row_deleted_by_hand)
{
    struct ledger *ledger = may_ledger();
    char out[16384];
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    exec_ok(conn, "DELETE FROM export_checkpoints"
                  " WHERE tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    const char *restore = "INSERT INTO export_checkpoints (tenant_id, ledger_seq, "
                          "events_exported, updated_at) VALUES "
                          "('a0010203-0405-4607-8809-0a0b0c0d0e0f', 20, 20, now())";
    cr_expect_not_null(strstr(out, restore), "%s", out);
    cr_expect_null(strstr(out, "duplicate key"), "%s", out);

    /* The statement the message gives restores the export. */
    exec_ok(conn, restore);
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(20);

    /* Rows that are not arrivals 1..N: the error gives the DELETE that lets them be recopied. */
    exec_ok(conn, "DELETE FROM export_checkpoints"
                  " WHERE tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'");
    exec_ok(conn, "DELETE FROM usage_events WHERE ledger_seq = 3"
                  " AND tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "DELETE FROM usage_events WHERE tenant_id = "
                                   "'a0010203-0405-4607-8809-0a0b0c0d0e0f'"), "%s", out);
    exec_ok(conn, "DELETE FROM usage_events"
                  " WHERE tenant_id = 'a0010203-0405-4607-8809-0a0b0c0d0e0f'");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(20);
    ledger_close(ledger);
}

Test(export_postgres, dropped_column_and_renamed_table)
{
    struct ledger *ledger = may_ledger();
    char out[16384];
    exec_ok(conn, "ALTER TABLE invoice_lines DROP COLUMN adjusted_period");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "the database has no column invoice_lines.adjusted_period, "
                                   "which the migrations create"), "%s", out);
    exec_ok(conn, "ALTER TABLE invoice_lines ADD COLUMN adjusted_period DATE");
    exec_ok(conn, "ALTER TABLE export_checkpoints RENAME TO checkpoints");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 1, "%s", out);
    cr_expect_not_null(strstr(out, "the database has no table export_checkpoints"), "%s", out);
    exec_ok(conn, "ALTER TABLE checkpoints RENAME TO export_checkpoints");
    cr_assert_eq(export_run(out, sizeof out, "", ""), 0, "%s", out);
    events_complete(20);
    ledger_close(ledger);
}
