/*
 * The invoice lifecycle end to end: a real meterd on loopback stores the
 * events, meterctl closes, voids, credits and re-issues, and the tests read
 * the documents back from the ledger.
 */
#include "meterd_harness.h"

#include <jansson.h>
#include <lmdb.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "engine/lib/billing.h"

static struct harness harness;
static struct test_tenant tenant_a, tenant_b, tenant_c;
static uint32_t next_event_id = 1;

/* USD 2.00 per H100 hour, and half off the GPU subtotal above 10 GPU-hours. */
static const char book_json[] =
    "{\"name\": \"lifecycle\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": \"2.00\"},"
    " \"gpu_volume_discount\": {\"mode\": \"volume\","
    " \"tiers\": [{\"above_hours\": \"10\", \"percent\": \"50\"}]}}";
/* The same book without an H100 price, so that a tenant on it cannot be rated. */
static const char unpriced_book_json[] =
    "{\"name\": \"unpriced\", \"currency\": \"USD\", \"gpu_hour\": {\"A100\": \"1.00\"}}";

/* Runs meterctl on the harness's ledger; returns its exit status and its output in out. */
static int meterctl(char *out, size_t out_size, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int status = harness_meterctl_v(harness.dir, out, out_size, format, args);
    va_end(args);
    return status;
}

static void write_file(const char *path, const char *text)
{
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file);
    fputs(text, file);
    fclose(file);
}

static void load_book(const char *json, const char *tenant)
{
    char path[300], out[4096];
    snprintf(path, sizeof path, "%s/book.json", harness.dir);
    write_file(path, json);
    int status = tenant ? meterctl(out, sizeof out, "pricebook load %s --tenant %s", path, tenant)
                        : meterctl(out, sizeof out, "pricebook load %s", path);
    cr_assert_eq(status, 0, "pricebook load failed: %s", out);
}

/* Unix seconds of midnight UTC on a day. */
static int64_t day_s(int year, int month, int day)
{
    struct tm tm = { .tm_year = year - 1900, .tm_mon = month - 1, .tm_mday = day };
    return (int64_t)timegm(&tm);
}

/* Gives an event the next event id, sends it through meterd and checks that it was stored. */
static void send_event(const struct test_tenant *tenant, struct event *event)
{
    uint32_t id = next_event_id++;
    memcpy(event->event_id, &id, sizeof id);
    event->event_id[15] = 0x4c;
    uint8_t frame[FRAME_BODY_MAX + 256];
    size_t size = harness_frame(frame, tenant, id, event, 1);
    struct frame_ack ack = harness_send_frame(&harness, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
}

/* Sends one H100 allocation of `seconds` at `at_us` through meterd. */
static void send_gpu_us(const struct test_tenant *tenant, int64_t at_us, uint32_t seconds)
{
    struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = at_us };
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc-%u",
             next_event_id);
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool-1");
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "H100");
    event.u.gpu.duration_s = seconds;
    send_event(tenant, &event);
}

static void send_gpu(const struct test_tenant *tenant, int64_t at_s, uint32_t seconds)
{
    send_gpu_us(tenant, at_s * 1000000, seconds);
}

/* Reads a document by number from the ledger as JSON. */
static json_t *document(const char *number)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    char *text = NULL;
    int rc = ledger_document_get(ledger, number, &text);
    ledger_close(ledger);
    cr_assert_eq(rc, HM_OK, "document %s not found", number);
    json_error_t error;
    json_t *json = json_loads(text, 0, &error);
    free(text);
    cr_assert_not_null(json);
    return json;
}

static const char *text_of(json_t *object, const char *key)
{
    const char *text = json_string_value(json_object_get(object, key));
    return text ? text : "";
}

static json_int_t minor_of(json_t *object, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(object, key), "amount_minor"));
}

/* Recomputes the seal of a document and compares it with its "sha256". */
static void assert_sealed(json_t *json)
{
    json_t *copy = json_deep_copy(json);
    cr_assert_eq(billing_document_seal(copy), HM_OK);
    cr_assert_str_eq(text_of(copy, "sha256"), text_of(json, "sha256"));
    cr_assert_eq(strlen(text_of(json, "sha256")), 64);
    json_decref(copy);
}

static void setup(void)
{
    memset(&harness, 0, sizeof harness);
    harness_make_dir(&harness);
    harness_tenant(&harness, "alpha", &tenant_a);
    harness_tenant(&harness, "beta", &tenant_b);
    harness_tenant(&harness, "gamma", &tenant_c);
    harness_start(&harness);
    load_book(book_json, NULL);
}

static void teardown(void) { harness_remove(&harness); }

TestSuite(lifecycle, .init = setup, .fini = teardown, .timeout = 120);

Test(lifecycle, numbering_gapless_per_issuer)
{
    char out[8192];
    cr_assert_eq(meterctl(out, sizeof out, "issuer add acme --prefix AC"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "tenant set beta --issuer acme"), 0, "%s", out);
    load_book(unpriced_book_json, "gamma");
    send_gpu(&tenant_a, day_s(2024, 3, 5), 3600);
    send_gpu(&tenant_b, day_s(2024, 3, 5), 7200);
    send_gpu(&tenant_c, day_s(2024, 3, 5), 3600);

    /* gamma cannot be rated: the others close, and gamma takes no number. */
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "HM-000001"), "%s", out);
    cr_assert_not_null(strstr(out, "AC-000001"), "%s", out);
    json_t *alpha = document("HM-000001");
    cr_assert_str_eq(text_of(alpha, "tenant_name"), "alpha");
    cr_assert_str_eq(text_of(alpha, "issuer"), "default");
    cr_assert_eq(json_integer_value(json_object_get(alpha, "revision")), 1);
    cr_assert_eq(strlen(text_of(alpha, "price_book_sha256")), 64);
    assert_sealed(alpha);
    json_decref(alpha);
    json_t *beta = document("AC-000001");
    cr_assert_str_eq(text_of(beta, "tenant_name"), "beta");
    cr_assert_eq(minor_of(beta, "total"), 400);
    json_decref(beta);

    /* A transaction that takes a number and aborts leaves the sequence where it was. */
    struct ledger *ledger = NULL;
    struct ledger_txn *txn = NULL;
    char number[DOCUMENT_NUMBER_MAX];
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_number_next(txn, "acme", DOCUMENT_INVOICE, number, sizeof number), HM_OK);
    cr_assert_str_eq(number, "AC-000002");
    ledger_abort(txn);
    ledger_close(ledger);

    load_book(book_json, "gamma");
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *gamma = document("HM-000002");
    cr_assert_str_eq(text_of(gamma, "tenant_name"), "gamma");
    json_decref(gamma);

    send_gpu(&tenant_b, day_s(2024, 4, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-04"), 0, "%s", out);
    json_t *beta_april = document("AC-000002");
    cr_assert_str_eq(text_of(beta_april, "period"), "2024-04");
    json_decref(beta_april);

    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note AC-000001 --amount 1 --reason "
                          "goodwill"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "AC-CN-000001"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 0.50 "
                          "--reason goodwill"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "HM-CN-000001"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice list --tenant beta"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "AC-CN-000001"), "%s", out);
    cr_assert_null(strstr(out, "HM-000001"), "%s", out);
}

Test(lifecycle, void_then_reissue_revision_2)
{
    char out[8192];
    send_gpu(&tenant_a, day_s(2024, 3, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *first = document("HM-000001");
    cr_assert_eq(minor_of(first, "total"), 200);
    const char *first_seal = text_of(first, "sha256");
    char seal[65];
    snprintf(seal, sizeof seal, "%s", first_seal);
    json_decref(first);

    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason 'wrong meter'"), 0,
                 "%s", out);
    json_t *voided = document("HM-000001");
    cr_assert_str_eq(text_of(voided, "status"), "void");
    cr_assert_str_eq(text_of(voided, "void_reason"), "wrong meter");
    cr_assert_neq(text_of(voided, "voided_at")[0], '\0');
    cr_assert_str_neq(text_of(voided, "sha256"), seal);
    assert_sealed(voided);
    json_decref(voided);

    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason again"), 1);
    cr_assert_not_null(strstr(out, "is void"), "%s", out);

    /* More usage for March arrives; the re-issue bills all of it under a new number. */
    send_gpu(&tenant_a, day_s(2024, 3, 6), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *reissued = NULL;
    json_t *beta = document("HM-000002");
    json_t *gamma = document("HM-000003");
    json_t *candidates[] = { document("HM-000004"), beta, gamma };
    for (size_t i = 0; i < 3; i++) {
        if (strcmp(text_of(candidates[i], "tenant_name"), "alpha") == 0)
            reissued = candidates[i];
    }
    cr_assert_not_null(reissued, "no re-issued invoice of alpha");
    cr_assert_eq(json_integer_value(json_object_get(reissued, "revision")), 2);
    cr_assert_str_eq(text_of(reissued, "replaces"), "HM-000001");
    cr_assert_eq(minor_of(reissued, "total"), 400);
    for (size_t i = 0; i < 3; i++)
        json_decref(candidates[i]);
    cr_assert_eq(meterctl(out, sizeof out, "invoice show alpha --period 2024-03"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "revision 2"), "%s", out);
}

Test(lifecycle, credit_notes_and_limit)
{
    char out[8192];
    send_gpu(&tenant_a, day_s(2024, 3, 5), 10 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *invoice = document("HM-000001");
    cr_assert_eq(minor_of(invoice, "total"), 2000);
    json_decref(invoice);

    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 15.00 "
                          "--reason 'outage credit'"), 0, "%s", out);
    json_t *note = document("HM-CN-000001");
    cr_assert_str_eq(text_of(note, "document_type"), "credit_note");
    cr_assert_str_eq(text_of(note, "credited_invoice"), "HM-000001");
    cr_assert_eq(minor_of(note, "amount"), 1500);
    cr_assert_str_eq(text_of(note, "reason"), "outage credit");
    assert_sealed(note);
    json_decref(note);

    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 5.01 "
                          "--reason more"), 1);
    cr_assert_not_null(strstr(out, "5.00 USD remain"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 1,00 "
                          "--reason x"), 1);
    cr_assert_not_null(strstr(out, "\"1,00\""), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 0.001 "
                          "--reason x"), 1);
    cr_assert_not_null(strstr(out, "minor unit of USD"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 0 "
                          "--reason x"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 5.00 "
                          "--reason rest"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "HM-CN-000002"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 0.01 "
                          "--reason over"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-CN-000001 --amount 1 "
                          "--reason x"), 1);
    cr_assert_not_null(strstr(out, "is a credit note"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-CN-000001 --reason x"), 1);
    cr_assert_not_null(strstr(out, "is a credit note"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason x"), 1);
    cr_assert_not_null(strstr(out, "manual credit notes HM-CN-000001, HM-CN-000002"), "%s", out);
    cr_assert_not_null(strstr(out, "add --with-credit-notes"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-999999 --reason x"), 1);
    cr_assert_not_null(strstr(out, "\"HM-999999\" not found"), "%s", out);
}

Test(lifecycle, late_event_lowering_gives_credit_note)
{
    char out[16384];
    /* 10 GPU-hours exactly get no discount: 20.00. One more hour crosses the tier: 11.00. */
    send_gpu(&tenant_a, day_s(2024, 5, 5), 10 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 5, 20), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-06"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "-9.00 USD  a credit note"), "%s", out);

    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *note = document("HM-CN-000001");
    cr_assert_str_eq(text_of(note, "credited_invoice"), "HM-000001");
    cr_assert_str_eq(text_of(note, "kind"), "late_usage");
    cr_assert_str_eq(text_of(note, "period"), "2024-05");
    cr_assert_eq(minor_of(note, "amount"), 900);
    cr_assert_str_eq(text_of(note, "reason"), "Late usage for 2024-05: 1 events");
    json_decref(note);

    /* The new billed state is stored: the next close issues nothing more for May. */
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    struct ledger *ledger = NULL;
    char *text = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_document_get(ledger, "HM-CN-000002", &text), HM_ERR_NOT_FOUND);
    ledger_close(ledger);
}

/* Needs the rater that bills usage adjustments. */
Test(lifecycle, late_event_raising_adjusts_next_invoice)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-07"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "2.00 USD  an adjustment line"), "%s", out);

    send_gpu(&tenant_a, day_s(2024, 7, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    json_t *july = document("HM-000004");
    cr_assert_str_eq(text_of(july, "tenant_name"), "alpha");
    json_t *adjustment = NULL;
    size_t index;
    json_t *line;
    json_array_foreach(json_object_get(july, "lines"), index, line) {
        if (strcmp(text_of(line, "kind"), "adjustment") == 0)
            adjustment = line;
    }
    cr_assert_not_null(adjustment, "no adjustment line on the July invoice");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 200);
    cr_assert_str_eq(text_of(adjustment, "period"), "2024-06");
    cr_assert_str_eq(text_of(adjustment, "description"), "Late usage for 2024-06: 1 events");
    cr_assert_eq(minor_of(july, "total"), 400);
    json_decref(july);
}

/* Needs the rater that applies credits. */
Test(lifecycle, credit_grant_burned_and_carried)
{
    char out[8192];
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 5.00 --note prepaid"), 0, "%s",
                 out);
    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *june = document("HM-000001");
    cr_assert_eq(minor_of(june, "credits_applied"), 400);
    cr_assert_eq(minor_of(june, "total"), 0);
    json_decref(june);
    cr_assert_eq(meterctl(out, sizeof out, "credit list alpha"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "1.00"), "%s", out);
    cr_assert_not_null(strstr(out, "by HM-000001"), "%s", out);

    send_gpu(&tenant_a, day_s(2024, 7, 5), 3 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    json_t *july = document("HM-000004");
    cr_assert_eq(minor_of(july, "credits_applied"), 100);
    cr_assert_eq(minor_of(july, "total"), 500);
    json_decref(july);

    /* A void gives the credit back to the grant. */
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000004 --reason test"), 0, "%s", out);
    struct ledger *ledger = NULL;
    struct credit_grant *grants = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_credit_list(ledger, tenant_a.id, &grants, &count), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(count, 1);
    cr_assert_eq(grants[0].balance_minor, 100);
    ledger_credit_grants_free(grants, count);
}

Test(lifecycle, grant_stored_with_exact_amount)
{
    char out[8192];
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 12.5 --expires 2099-01-01"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 1,00"), 1);
    cr_assert_not_null(strstr(out, "\"1,00\""), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 0.001"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 5 --currency usd"), 1);
    cr_assert_not_null(strstr(out, "\"usd\""), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 5 --expires 2020-01-01"), 1);
    struct ledger *ledger = NULL;
    struct credit_grant *grants = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_credit_list(ledger, tenant_a.id, &grants, &count), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(count, 1);
    cr_assert_eq(grants[0].amount_minor, 1250);
    cr_assert_eq(grants[0].balance_minor, 1250);
    cr_assert_str_eq(grants[0].currency, "USD");
    cr_assert_eq(grants[0].expires_s, day_s(2099, 1, 1));
    ledger_credit_grants_free(grants, count);
}

Test(lifecycle, grace_window_refuses_close)
{
    char out[8192];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int year = tm.tm_year + 1900, month = tm.tm_mon + 1;
    /* The month before this one ended less than 31 days ago, well inside 2208 hours. */
    int previous_year = month == 1 ? year - 1 : year, previous_month = month == 1 ? 12 : month - 1;
    cr_assert_eq(meterctl(out, sizeof out, "settings set close-grace-hours 2208"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "settings show"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "close-grace-hours 2208"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period %04d-%02d", previous_year,
                          previous_month), 1, "%s", out);
    cr_assert_not_null(strstr(out, "cannot be closed until"), "%s", out);
    cr_assert_not_null(strstr(out, "grace window of 2208 hours"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "settings set close-grace-hours 0"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period %04d-%02d", previous_year,
                          previous_month), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "settings set close-grace-hours -1"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "settings set close-grace-hours 2209"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "settings set close-grace-hours 1x"), 1);
    cr_assert_not_null(strstr(out, "\"1x\""), "%s", out);
}

/* An invoice and a price book stored the way older versions stored them. */
Test(lifecycle, older_ledger_records_still_read)
{
    char out[8192];
    harness_stop(&harness);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    char tenant_id[UUID_TEXT_SIZE];
    uuid_format(tenant_a.id, tenant_id);
    char legacy[1024];
    snprintf(legacy, sizeof legacy,
             "{\"currency\": \"USD\", \"currency_exponent\": 2, \"event_count\": 0, "
             "\"invoice_number\": \"HM-000001\", \"lines\": [], \"period\": \"2024-01\", "
             "\"status\": \"finalized\", \"tenant_id\": \"%s\", \"tenant_name\": \"alpha\", "
             "\"total\": {\"amount\": \"3.00\", \"amount_minor\": 300}}", tenant_id);
    uint64_t seq = 0;
    cr_assert_eq(ledger_next_invoice_seq(txn, &seq), HM_OK);
    cr_assert_eq(seq, 1);
    cr_assert_eq(ledger_period_close(txn, tenant_a.id, 202401, legacy), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);
    ledger_close(ledger);

    /* A tenant record without settings reads with the defaults. */
    cr_assert_eq(meterctl(out, sizeof out, "tenant list"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "alpha"), "%s", out);
    cr_assert_not_null(strstr(out, "none        default"), "%s", out);

    cr_assert_eq(meterctl(out, sizeof out, "invoice show HM-000001"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "period 2024-01"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 3.01 "
                          "--reason x"), 1);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason 'moved'"), 0, "%s",
                 out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-01"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "HM-000002"), "the default counter continues: %s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice show alpha --period 2024-01 --json"), 0);
    json_error_t error;
    json_t *reissued = json_loads(out, 0, &error);
    cr_assert_not_null(reissued, "%s", out);
    cr_assert_eq(json_integer_value(json_object_get(reissued, "revision")), 2);
    json_decref(reissued);

    /* Settings stored later sit beside the unchanged tenant record. */
    cr_assert_eq(meterctl(out, sizeof out, "tenant set alpha --support-tier pro "
                          "--service-end 2030-01-01"), 0, "%s", out);
    struct tenant tenant;
    struct tenant_settings settings;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_tenant_find(ledger, "alpha", &tenant), HM_OK);
    cr_assert_eq(ledger_tenant_settings_get(ledger, tenant.id, &settings), HM_OK);
    ledger_close(ledger);
    cr_assert_str_eq(settings.support_tier, "pro");
    cr_assert_eq(settings.service_end_s, day_s(2030, 1, 1));
    cr_assert_str_eq(settings.issuer, "default");
}

/* USD 2.00 per H100 hour, with support fees per month for the pro and enterprise tiers. */
static const char support_book_json[] =
    "{\"name\": \"support\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": \"2.00\"},"
    " \"support_fee\": {\"pro\": \"30.00\", \"enterprise\": \"100.00\"}}";

static json_t *line_of_kind(json_t *invoice, const char *kind)
{
    size_t index;
    json_t *line;
    json_array_foreach(json_object_get(invoice, "lines"), index, line) {
        if (strcmp(text_of(line, "kind"), kind) == 0)
            return line;
    }
    return NULL;
}

Test(lifecycle, late_rerate_uses_billed_settings)
{
    char out[16384];
    load_book(support_book_json, "alpha");
    cr_assert_eq(meterctl(out, sizeof out, "tenant set alpha --support-tier pro"), 0, "%s", out);
    /* June: pro support 30.00 + 2 GPU-hours x 2.00 = 34.00. */
    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *june = document("HM-000001");
    cr_assert_str_eq(text_of(june, "tenant_name"), "alpha");
    cr_assert_eq(minor_of(june, "total"), 3400);
    json_decref(june);

    struct ledger *ledger = NULL;
    struct billed_period billed;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_billed_get(ledger, tenant_a.id, 202406, &billed), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(billed.has_billed_with, 1);
    cr_assert_str_eq(billed.support_tier, "pro");
    cr_assert_eq(billed.service_end_s, 0);
    ledger_billed_free(&billed);

    /* The tier changes after the close, then one late GPU-hour of June arrives. */
    cr_assert_eq(meterctl(out, sizeof out, "tenant set alpha --support-tier enterprise"), 0, "%s",
                 out);
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-07"), 0, "%s", out);
    cr_assert_not_null(strstr(out, " 2.00 USD  an adjustment line"), "%s", out);

    /* July: enterprise support 100.00 + 1 GPU-hour 2.00 + the late hour of June 2.00 = 104.00. */
    send_gpu(&tenant_a, day_s(2024, 7, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    json_t *july = document("HM-000004");
    cr_assert_str_eq(text_of(july, "tenant_name"), "alpha");
    json_t *adjustment = line_of_kind(july, "adjustment");
    cr_assert_not_null(adjustment, "no adjustment line on the July invoice");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 200);
    cr_assert_str_eq(text_of(adjustment, "period"), "2024-06");
    json_t *support = line_of_kind(july, "support_fee");
    cr_assert_not_null(support);
    cr_assert_eq(json_integer_value(json_object_get(support, "amount_minor")), 10000);
    cr_assert_eq(minor_of(july, "total"), 10400);
    json_decref(july);
}

/* A billed state of record version 1 has no settings: it still reads, and re-rates as before. */
Test(lifecycle, billed_record_version_1_reads)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    harness_stop(&harness);

    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 32), 0);
    cr_assert_eq(mdb_env_open(env, harness.dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "billed", 0, &dbi), 0);
    /* The key is the tenant id and the period 202406 as 4 bytes, big-endian. */
    uint8_t key_bytes[UUID_SIZE + 4];
    memcpy(key_bytes, tenant_a.id, UUID_SIZE);
    for (int i = 0; i < 4; i++)
        key_bytes[UUID_SIZE + i] = (uint8_t)(202406u >> (24 - 8 * i));
    json_t *june = document("HM-000001");
    char record[512];
    snprintf(record, sizeof record,
             "{\"changes\":[],\"currency\":\"USD\",\"events\":1,\"issuer\":\"default\","
             "\"net_minor\":400,\"number\":\"HM-000001\",\"price_book_sha256\":\"%s\","
             "\"recheck\":false,\"total_minor\":400,\"version\":1}",
             text_of(june, "price_book_sha256"));
    json_decref(june);
    MDB_val key = { sizeof key_bytes, key_bytes }, value = { strlen(record), record };
    cr_assert_eq(mdb_put(txn, dbi, &key, &value, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    struct ledger *ledger = NULL;
    struct billed_period billed;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_billed_get(ledger, tenant_a.id, 202406, &billed), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(billed.has_billed_with, 0);
    cr_assert_eq(billed.net_minor, 400);
    ledger_billed_free(&billed);

    harness_start(&harness);
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-07"), 0, "%s", out);
    cr_assert_not_null(strstr(out, " 2.00 USD  an adjustment line"), "%s", out);
}

/*
 * alpha's own book for June 2024: a version from the beginning of time and
 * one from 2024-06-16T07:00:00Z, which cuts June into two slices. H100 hours
 * are graduated in both: the first 10 hours at 2.00, then 1.00; from the
 * change at 3.00, then 1.50. Input tokens cost 1.00, then 1.50 per million.
 */
static const char versioned_book_json[] =
    "{\"name\": \"acme-2024\", \"currency\": \"USD\", \"versions\": ["
    " {\"base_fee\": \"30.00\","
    "  \"gpu_hour\": {\"H100\": {\"model\": \"graduated\", \"tiers\": ["
    "   {\"up_to\": \"10\", \"price\": \"2.00\"}, {\"price\": \"1.00\"}]}},"
    "  \"tokens_per_million\": {\"*\": {\"input\": \"1.00\"}}},"
    " {\"effective_from\": \"2024-06-16T07:00:00Z\", \"base_fee\": \"60.00\","
    "  \"gpu_hour\": {\"H100\": {\"model\": \"graduated\", \"tiers\": ["
    "   {\"up_to\": \"10\", \"price\": \"3.00\"}, {\"price\": \"1.50\"}]}},"
    "  \"tokens_per_million\": {\"*\": {\"input\": \"1.50\"}}}]}";

static void send_inference_us(const struct test_tenant *tenant, int64_t at_us,
                              uint64_t input_tokens)
{
    struct event event = { .kind = EVENT_INFERENCE, .timestamp_us = at_us };
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "m-chat");
    event.u.inference.input_tokens = input_tokens;
    send_event(tenant, &event);
}

/* Reads the current invoice of a tenant's period from the ledger as JSON. */
static json_t *period_invoice(const uint8_t tenant_id[UUID_SIZE], uint32_t period)
{
    struct ledger *ledger = NULL;
    char *text = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_invoice_get(ledger, tenant_id, period, &text), HM_OK);
    ledger_close(ledger);
    json_error_t error;
    json_t *json = json_loads(text, 0, &error);
    free(text);
    cr_assert_not_null(json);
    return json;
}

/* Checks one invoice line: kind, dimension (NULL: none), slice_start (NULL: none), amount. */
static void assert_line(json_t *invoice, size_t index, const char *kind, const char *dimension,
                        const char *slice_start, json_int_t amount_minor, json_int_t events)
{
    json_t *line = json_array_get(json_object_get(invoice, "lines"), index);
    cr_assert_not_null(line, "no line %zu", index + 1);
    cr_assert_str_eq(text_of(line, "kind"), kind, "line %zu", index + 1);
    if (dimension != NULL)
        cr_assert_str_eq(text_of(line, "dimension"), dimension, "line %zu", index + 1);
    if (slice_start != NULL)
        cr_assert_str_eq(text_of(line, "slice_start"), slice_start, "line %zu", index + 1);
    else
        cr_assert_null(json_object_get(line, "slice_start"), "line %zu", index + 1);
    cr_assert_eq(json_integer_value(json_object_get(line, "amount_minor")), amount_minor,
                 "line %zu", index + 1);
    if (events >= 0)
        cr_assert_eq(json_integer_value(json_object_get(line, "events")), events, "line %zu",
                     index + 1);
}

/* Checks the rollup of an explained usage line: its slice, quantity and events. */
static void assert_explained(json_t *explained, size_t index, const char *slice_start,
                             const char *slice_end, const char *quantity, json_int_t events)
{
    json_t *rollup = json_object_get(json_array_get(json_object_get(explained, "lines"), index),
                                     "rollup");
    cr_assert_not_null(rollup, "line %zu has no rollup", index + 1);
    cr_assert_str_eq(text_of(rollup, "slice_start"), slice_start, "line %zu", index + 1);
    cr_assert_str_eq(text_of(rollup, "slice_end"), slice_end, "line %zu", index + 1);
    cr_assert_str_eq(text_of(rollup, "quantity"), quantity, "line %zu", index + 1);
    cr_assert_eq(json_integer_value(json_object_get(rollup, "events")), events, "line %zu",
                 index + 1);
}

Test(lifecycle, price_change_mid_june_through_meterd)
{
    char out[65536];
    load_book(versioned_book_json, "alpha");
    const int64_t change_us = (day_s(2024, 6, 16) + 7 * 3600) * 1000000;

    /* alpha: GPU 14,400 s and 9,000 s (the last microsecond before the change), then 15,001 s. */
    send_gpu(&tenant_a, day_s(2024, 6, 3), 14400);
    send_gpu_us(&tenant_a, change_us - 1, 9000);
    send_gpu_us(&tenant_a, change_us, 15001);
    send_inference_us(&tenant_a, day_s(2024, 6, 5) * 1000000, 1000000);
    send_inference_us(&tenant_a, day_s(2024, 6, 10) * 1000000, 234567);
    send_inference_us(&tenant_a, day_s(2024, 6, 20) * 1000000, 765433);
    /* beta, on the default book: 36,000 s before the change and 3,601 s after it. */
    send_gpu(&tenant_b, day_s(2024, 6, 5), 36000);
    send_gpu(&tenant_b, day_s(2024, 6, 20), 3601);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);

    /*
     * Expected amounts, computed with Python fractions.Fraction and rounded
     * half up to cents. June has 2,592,000 s; slice 1 is 1,321,200 s (June 1
     * to June 16 07:00), slice 2 is 1,270,800 s.
     *   base fee 1: 30 * 1321200/2592000 = 367/24 = 15.2916... -> 15.29 (1529)
     *   base fee 2: 60 * 1270800/2592000 = 353/12 = 29.4166... -> 29.42 (2942)
     *   H100 slice 1: q1 = 23400/3600 = 13/2 h; F1(13/2) - F1(0) = 13/2 * 2.00 = 13.00 (1300)
     *   H100 slice 2: q2 = 15001/3600 h, Q2 = 13/2 + q2 = 38401/3600 h (past the 10 h tier);
     *     F2(Q2) - F2(13/2) = (10 - 13/2) * 3.00 + (38401/3600 - 10) * 1.50
     *     = 27601/2400 = 11.5004... -> 11.50 (1150). Without the carried tier position
     *     it would be F2(q2) = 12.50.
     *   input slice 1: 1234567/10^6 * 1.00 = 1.234567 -> 1.23 (123)
     *   input slice 2: 765433/10^6 * 1.50 = 2296299/2000000 = 1.1481495 -> 1.15 (115)
     *   total 15.29 + 29.42 + 13.00 + 11.50 + 1.23 + 1.15 = 71.59 (7159)
     */
    json_t *alpha = period_invoice(tenant_a.id, 202406);
    cr_assert_str_eq(text_of(alpha, "price_book"), "acme-2024");
    cr_assert_eq(json_array_size(json_object_get(alpha, "lines")), 6);
    assert_line(alpha, 0, "base_fee", NULL, "2024-06-01T00:00:00Z", 1529, -1);
    assert_line(alpha, 1, "base_fee", NULL, "2024-06-16T07:00:00Z", 2942, -1);
    assert_line(alpha, 2, "gpu", "H100", "2024-06-01T00:00:00Z", 1300, 2);
    assert_line(alpha, 3, "gpu", "H100", "2024-06-16T07:00:00Z", 1150, 1);
    assert_line(alpha, 4, "input_tokens", "m-chat", "2024-06-01T00:00:00Z", 123, 2);
    assert_line(alpha, 5, "input_tokens", "m-chat", "2024-06-16T07:00:00Z", 115, 1);
    cr_assert_eq(minor_of(alpha, "total"), 7159);

    /*
     * beta is priced by the default book, which has no versions: one slice,
     * no slice_start. 39601/3600 h * 2.00 = 39601/1800 = 22.0005... -> 22.00;
     * above 10 h the volume discount takes 50 %: 11.00; total 11.00 (1100).
     */
    json_t *beta = period_invoice(tenant_b.id, 202406);
    cr_assert_str_eq(text_of(beta, "price_book"), "lifecycle");
    cr_assert_eq(json_array_size(json_object_get(beta, "lines")), 2);
    assert_line(beta, 0, "gpu", "H100", NULL, 2200, 2);
    assert_line(beta, 1, "discount", NULL, NULL, -1100, -1);
    cr_assert_eq(minor_of(beta, "total"), 1100);

    /* Each invoice names the snapshot of the book it was rated with. */
    struct ledger *ledger = NULL;
    char *text = NULL, sha256[BOOK_SHA256_HEX_SIZE], scope[UUID_TEXT_SIZE];
    uuid_format(tenant_a.id, scope);
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_pricebook_get_snapshot(ledger, scope, &text, sha256), HM_OK);
    cr_assert_str_eq(text_of(alpha, "price_book_sha256"), sha256);
    free(text);
    cr_assert_eq(ledger_pricebook_get_snapshot(ledger, "default", &text, sha256), HM_OK);
    cr_assert_str_eq(text_of(beta, "price_book_sha256"), sha256);
    free(text);
    ledger_close(ledger);
    json_decref(alpha);
    json_decref(beta);

    /* The explanation recounts each slice from the events, and they add up to the month. */
    cr_assert_eq(meterctl(out, sizeof out, "invoice explain alpha --period 2024-06 --json"), 0,
                 "%s", out);
    json_error_t error;
    json_t *explained = json_loads(out, 0, &error);
    cr_assert_not_null(explained, "%s", out);
    cr_assert(json_is_true(json_object_get(explained, "sliced")));
    json_t *fee = json_object_get(json_array_get(json_object_get(explained, "lines"), 0), "fee");
    cr_assert_eq(json_integer_value(json_object_get(fee, "service_seconds")), 1321200);
    fee = json_object_get(json_array_get(json_object_get(explained, "lines"), 1), "fee");
    cr_assert_eq(json_integer_value(json_object_get(fee, "service_seconds")), 1270800);
    assert_explained(explained, 2, "2024-06-01T00:00:00Z", "2024-06-16T07:00:00Z", "23400", 2);
    assert_explained(explained, 3, "2024-06-16T07:00:00Z", "2024-07-01T00:00:00Z", "15001", 1);
    assert_explained(explained, 4, "2024-06-01T00:00:00Z", "2024-06-16T07:00:00Z", "1234567", 2);
    assert_explained(explained, 5, "2024-06-16T07:00:00Z", "2024-07-01T00:00:00Z", "765433", 1);
    cr_assert_eq(harness_quantity(&harness, tenant_a.id, ROLLUP_GPU_SECONDS, "H100"),
                 23400 + 15001);
    cr_assert_eq(harness_quantity(&harness, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-chat"),
                 1234567 + 765433);
    json_t *checks = json_object_get(explained, "events_check");
    cr_assert_eq(json_array_size(checks), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *check = json_array_get(checks, i);
        cr_assert(json_is_true(json_object_get(check, "match")), "%s", text_of(check, "meter"));
        cr_assert_eq(json_integer_value(json_object_get(check, "line_events")), 3);
        cr_assert_eq(json_integer_value(json_object_get(check, "period_events")), 3);
    }
    json_decref(explained);
}

/* Reads a file into out; returns 0, or -1 when it cannot be read. */
static int file_text(const char *path, char *out, size_t size)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    size_t got = fread(out, 1, size - 1, file);
    out[got] = '\0';
    fclose(file);
    return 0;
}

/* A grant in another currency pays nothing, is named at close, and can be revoked. */
Test(lifecycle, credit_other_currency_warned_and_revoked)
{
    char out[16384];
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 10.00 --currency EUR"), 1, "%s",
                 out);
    cr_assert_not_null(strstr(out, "bills in USD"), "%s", out);
    cr_assert_not_null(strstr(out, "omit --currency"), "%s", out);

    /* A EUR grant made before the check existed. */
    struct ledger *ledger = NULL;
    struct credit_grant grant = { .amount_minor = 1000, .granted_s = day_s(2024, 1, 1) };
    memcpy(grant.tenant_id, tenant_a.id, UUID_SIZE);
    snprintf(grant.currency, sizeof grant.currency, "EUR");
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_credit_grant(ledger, &grant), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(meterctl(out, sizeof out, "credit grant alpha 1.00"), 0, "%s", out);

    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-06"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "credit grant 1 is in EUR"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "warning: tenant alpha: credit grant 1 is in EUR"), "%s", out);
    json_t *june = document("HM-000001");
    cr_assert_eq(minor_of(june, "credits_applied"), 100);
    cr_assert_eq(minor_of(june, "total"), 300);
    json_decref(june);

    cr_assert_eq(meterctl(out, sizeof out, "credit revoke 1"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "missing --reason"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit revoke x1 --reason y"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "\"x1\""), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit revoke 99 --reason y"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "credit grant 99 not found"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit revoke 1 --reason 'wrong currency'"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit revoke 1 --reason again"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "already revoked"), "%s", out);
    /* A used grant keeps its history when revoked; a later void gives it nothing back. */
    cr_assert_eq(meterctl(out, sizeof out, "credit revoke 2 --reason 'contract ended'"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason test"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "credit list alpha"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "revoked  10.00 on"), "%s", out);
    cr_assert_not_null(strstr(out, "wrong currency"), "%s", out);
    cr_assert_not_null(strstr(out, "taken    -1.00 by HM-000001"), "%s", out);
    cr_assert_not_null(strstr(out, "(not restored: the grant is revoked)"), "%s", out);
    cr_assert_not_null(strstr(out, "revoked  0.00 on"), "%s", out);

    struct credit_grant *grants = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_credit_list(ledger, tenant_a.id, &grants, &count), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(count, 2);
    cr_assert_eq(grants[0].balance_minor, 0);
    cr_assert_eq(grants[1].balance_minor, 0);
    cr_assert_neq(grants[1].revoked_s, 0);
    ledger_credit_grants_free(grants, count);
}

/* A month closes only after the earlier months with service or events, unless gaps are allowed. */
Test(lifecycle, close_out_of_order_refused)
{
    char out[16384];
    cr_assert_eq(meterctl(out, sizeof out, "tenant create delta --service-start 2024-02-01"), 0,
                 "%s", out);
    send_gpu(&tenant_a, day_s(2024, 3, 5), 3600);
    send_gpu(&tenant_a, day_s(2024, 5, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "tenant alpha: 2024-03 (has events)"), "%s", out);
    cr_assert_not_null(strstr(out, "tenant delta: 2024-02 (in service)"), "%s", out);
    cr_assert_not_null(strstr(out, "tenant delta: 2024-04 (in service)"), "%s", out);
    cr_assert_not_null(strstr(out, "--allow-gaps"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice show alpha --period 2024-05"), 1, "%s", out);

    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-02"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 1, "%s", out);
    cr_assert_null(strstr(out, "tenant alpha"), "%s", out);
    cr_assert_not_null(strstr(out, "1 earlier month is still open"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05 --allow-gaps"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice show alpha --period 2024-05"), 0, "%s", out);
}

/* A refusal over 70 open months names ten, counts the rest and ends with the fix. */
Test(lifecycle, close_refusal_bounded_list)
{
    char out[16384];
    cr_assert_eq(meterctl(out, sizeof out, "tenant create omega --service-start 2020-01-01"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2025-11"), 1, "%s", out);
    cr_assert_not_null(strstr(out, "70 earlier months are still open"), "%s", out);
    cr_assert_not_null(strstr(out, "tenant omega: 2020-01 (in service), "), "%s", out);
    cr_assert_not_null(strstr(out, "tenant omega: 2020-10 (in service) and 60 more; "), "%s",
                       out);
    cr_assert_null(strstr(out, "2020-11"), "%s", out);
    cr_assert_not_null(strstr(out, "oldest first (`meterctl close --period 2020-01`)"), "%s",
                       out);
    cr_assert_not_null(strstr(out, "pass --allow-gaps to close 2025-11 anyway\n"), "%s", out);

    /* A buffer too small for ten months gets fewer of them and the whole sentence. */
    struct ledger *ledger = NULL;
    char error[300];
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    int rc = billing_close_order_check(ledger, 202511, error, sizeof error);
    ledger_close(ledger);
    cr_assert_eq(rc, HM_ERR_STATE);
    cr_assert_lt(strlen(error), sizeof error - 1, "%s", error);
    cr_assert_not_null(strstr(error, "tenant omega: 2020-01 (in service)"), "%s", error);
    cr_assert_not_null(strstr(error, " more; close those months first"), "%s", error);
    cr_assert_not_null(strstr(error, "--allow-gaps to close 2025-11 anyway"), "%s", error);
}

/* A month in which no tenant was in service closes nothing and leaves no folder. */
Test(lifecycle, close_with_no_tenant_in_service)
{
    char out[8192];
    const char *names[] = { "alpha", "beta", "gamma" };
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(meterctl(out, sizeof out, "tenant set %s --service-start 2030-01-01",
                              names[i]), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-02"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "no tenant was in service in 2024-02; nothing to close"), "%s",
                       out);
    char path[400];
    snprintf(path, sizeof path, "%s/invoices/2024-02", harness.dir);
    cr_assert_neq(access(path, F_OK), 0, "%s exists", path);
}

/* Every document gets a file by number; the period file is the current invoice. */
Test(lifecycle, document_files_by_number)
{
    char out[16384], text[16384], path[400];
    send_gpu(&tenant_a, day_s(2024, 3, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    snprintf(path, sizeof path, "%s/invoices/documents/HM-000001.json", harness.dir);
    struct stat info;
    cr_assert_eq(stat(path, &info), 0, "%s is missing", path);
    cr_assert_eq(info.st_mode & 0777, 0600);

    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason test"), 0, "%s", out);
    cr_assert_eq(file_text(path, text, sizeof text), 0);
    cr_assert_not_null(strstr(text, "\"status\": \"void\""), "%s", text);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    cr_assert_eq(file_text(path, text, sizeof text), 0);
    cr_assert_not_null(strstr(text, "\"status\": \"void\""), "%s", text);
    snprintf(path, sizeof path, "%s/invoices/2024-03/alpha.json", harness.dir);
    cr_assert_eq(file_text(path, text, sizeof text), 0);
    cr_assert_not_null(strstr(text, "\"replaces\": \"HM-000001\""), "%s", text);
    json_t *current = json_loads(text, 0, NULL);
    cr_assert_not_null(current);
    char number[DOCUMENT_NUMBER_MAX];
    snprintf(number, sizeof number, "%s", text_of(current, "number"));
    json_decref(current);
    snprintf(path, sizeof path, "%s/invoices/documents/%s.json", harness.dir, number);
    cr_assert_eq(access(path, F_OK), 0, "%s is missing", path);

    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note %s --amount 0.50 --reason x",
                          number), 0, "%s", out);
    snprintf(path, sizeof path, "%s/invoices/documents/HM-CN-000001.json", harness.dir);
    cr_assert_eq(file_text(path, text, sizeof text), 0, "%s is missing", path);
    cr_assert_not_null(strstr(text, "\"credit_note\""), "%s", text);
}

/* Re-rates alpha's period under the book it was billed with and looks for the expected row. */
static void assert_rerate_row(const char *period, const char *row)
{
    char out[8192], path[300];
    snprintf(path, sizeof path, "%s/same-book.json", harness.dir);
    write_file(path, book_json);
    cr_assert_eq(meterctl(out, sizeof out, "rerate --period %s --book %s --tenant alpha",
                          period, path), 0, "%s", out);
    cr_assert_not_null(strstr(out, row), "expected \"%s\" in %s", row, out);
}

/* Late usage billed on later invoices counts as billed; re-rating the same book changes nothing. */
Test(lifecycle, rerate_after_late_usage_billed)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 6, 5), 2 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3600);
    send_gpu(&tenant_a, day_s(2024, 7, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    assert_rerate_row("2024-06",
                      "finalized                6.00               6.00               0.00");

    /* July carries June's adjustment; a late July event is still billed as July's own usage. */
    send_gpu(&tenant_a, day_s(2024, 7, 20), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-08"), 0, "%s", out);
    json_t *august = period_invoice(tenant_a.id, 202408);
    json_t *adjustment = line_of_kind(august, "adjustment");
    cr_assert_not_null(adjustment, "no adjustment for July on the August invoice");
    cr_assert_str_eq(text_of(adjustment, "period"), "2024-07");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 200);
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "events")), 1);
    json_decref(august);
    assert_rerate_row("2024-07",
                      "finalized                4.00               4.00               0.00");
}

/* A sealed invoice is explained as it was at close, with the late events and their document. */
Test(lifecycle, explain_sealed_invoice_with_late_events)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 6, 5), 12 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "invoice explain alpha --period 2024-06"), 0, "%s",
                 out);
    cr_assert_not_null(strstr(out, "at close (the sealed line): quantity 12 GPU-hour, events 1"),
                       "%s", out);
    cr_assert_not_null(strstr(out, "now: quantity 46800 gpu_seconds, events 2; 1 late event "
                                   "since the close, pending: billed on the next close"),
                       "%s", out);
    cr_assert_not_null(strstr(out, "tiers: above 10 GPU-hour: 50 %"), "%s", out);
    cr_assert_not_null(strstr(out, "gpu_seconds                       1              1  match"),
                       "%s", out);
    cr_assert_null(strstr(out, "DIFFER"), "%s", out);

    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice explain alpha --period 2024-06"), 0, "%s",
                 out);
    cr_assert_not_null(strstr(out, "1 late event since the close, billed by HM-"), "%s", out);
    cr_assert_null(strstr(out, "pending"), "%s", out);
}

/* Service dates cannot take service away from a finalized month. */
Test(lifecycle, service_dates_against_finalized_months)
{
    char out[8192];
    cr_assert_eq(meterctl(out, sizeof out, "tenant create delta --service-start 2024-03-01"), 0,
                 "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "tenant set delta --service-end 2024-03-15"), 1, "%s",
                 out);
    cr_assert_not_null(strstr(out, "invalid --service-end 2024-03-15"), "%s", out);
    cr_assert_not_null(strstr(out, "meterctl invoice void HM-"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "tenant set delta --service-start 2024-03-10"), 1,
                 "%s", out);
    cr_assert_not_null(strstr(out, "invalid --service-start 2024-03-10"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "tenant set delta --service-end 2024-04-01"), 0, "%s",
                 out);
    cr_assert_eq(meterctl(out, sizeof out, "tenant set delta --service-start 2024-02-01"), 0,
                 "%s", out);
}

/* GB-month storage at 1.00 USD, so that a storage level shows in whole amounts. */
static const char storage_book_json[] =
    "{\"name\": \"storage\", \"currency\": \"USD\", \"storage_gb_month\": \"1.00\"}";

static void send_storage(const struct test_tenant *tenant, int64_t at_s, uint64_t bytes)
{
    struct event event = { .kind = EVENT_STORAGE, .timestamp_us = at_s * 1000000 };
    event.u.storage.bytes_stored = bytes;
    send_event(tenant, &event);
}

/* A late storage sample carries its level into the closed months after it, which are re-rated. */
Test(lifecycle, late_storage_sample_rerates_later_months)
{
    char out[16384];
    load_book(storage_book_json, "alpha");
    send_storage(&tenant_a, day_s(2024, 5, 1), 0);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *june = period_invoice(tenant_a.id, 202406);
    cr_assert_eq(minor_of(june, "total"), 0);
    json_decref(june);

    /* 100 GB held from the last second of May: June has no late event of its own. */
    send_storage(&tenant_a, day_s(2024, 6, 1) - 1, 100000000000);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-07"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "100.00 USD  an adjustment line"), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    json_t *july = period_invoice(tenant_a.id, 202407);
    json_t *adjustment = line_of_kind(july, "adjustment");
    cr_assert_not_null(adjustment, "no adjustment for June on the July invoice");
    cr_assert_str_eq(text_of(adjustment, "period"), "2024-06");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 10000);
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "events")), 0);
    cr_assert_str_eq(text_of(adjustment, "description"),
                     "Late usage for 2024-06: storage level from late earlier samples");
    /* July's own storage line and June's adjustment: 100.00 each. */
    cr_assert_eq(minor_of(july, "total"), 20000);
    json_decref(july);

    /* The billed record keeps the digest of June's usage now, so nothing is billed twice. */
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-08"), 0, "%s", out);
    json_t *august = period_invoice(tenant_a.id, 202408);
    cr_assert_null(line_of_kind(august, "adjustment"), "June or July billed again");
    cr_assert_eq(minor_of(august, "total"), 10000);
    json_decref(august);
}

/* Late usage of a month whose invoice carried an earlier month's adjustment is billed exactly. */
Test(lifecycle, late_usage_after_adjustment_billed_exactly)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 5, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 5, 20), 3600);
    send_gpu(&tenant_a, day_s(2024, 6, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *june = period_invoice(tenant_a.id, 202406);
    cr_assert_eq(minor_of(june, "total"), 400);
    json_decref(june);

    /* Three late GPU-hours of June: 6.00 on July, however June's invoice was made up. */
    send_gpu(&tenant_a, day_s(2024, 6, 25), 3 * 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-07"), 0, "%s", out);
    json_t *july = period_invoice(tenant_a.id, 202407);
    json_t *adjustment = line_of_kind(july, "adjustment");
    cr_assert_not_null(adjustment, "no adjustment for June on the July invoice");
    cr_assert_str_eq(text_of(adjustment, "period"), "2024-06");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 600);
    cr_assert_str_eq(text_of(adjustment, "description"), "Late usage for 2024-06: 1 events");
    cr_assert_eq(minor_of(july, "total"), 600);
    json_decref(july);

    /* A late GPU-second rounds to 0.00 on June's line, so it gives no correction at all. */
    send_gpu(&tenant_a, day_s(2024, 6, 26), 1);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-08"), 0, "%s", out);
    json_t *august = period_invoice(tenant_a.id, 202408);
    cr_assert_null(line_of_kind(august, "adjustment"), "a 0.00 late event was billed");
    json_decref(august);
    struct ledger *ledger = NULL;
    char *text = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    cr_assert_eq(ledger_document_get(ledger, "HM-CN-000001", &text), HM_ERR_NOT_FOUND);
    ledger_close(ledger);
}

/* A manually credited invoice is voided with its credit notes only when asked to. */
Test(lifecycle, void_with_manual_credit_notes)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 3, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice credit-note HM-000001 --amount 0.50 "
                          "--reason outage"), 0, "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason 'wrong meter'"), 1,
                 "%s", out);
    cr_assert_not_null(strstr(out, "manual credit note HM-CN-000001; add --with-credit-notes"),
                       "%s", out);
    json_t *invoice = document("HM-000001");
    cr_assert_str_eq(text_of(invoice, "status"), "finalized");
    json_decref(invoice);

    cr_assert_eq(meterctl(out, sizeof out, "invoice void HM-000001 --reason 'wrong meter' "
                          "--with-credit-notes"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "credit notes voided with it: HM-CN-000001"), "%s", out);
    json_t *note = document("HM-CN-000001");
    cr_assert_str_eq(text_of(note, "status"), "void");
    cr_assert_str_eq(text_of(note, "voided_with"), "HM-000001");
    cr_assert_str_eq(text_of(note, "void_reason"), "wrong meter");
    assert_sealed(note);
    json_decref(note);

    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *reissued = period_invoice(tenant_a.id, 202403);
    cr_assert_eq(json_integer_value(json_object_get(reissued, "revision")), 2);
    cr_assert_eq(minor_of(reissued, "total"), 200);
    json_decref(reissued);
}

/* An invoice whose late usage a later invoice billed is voided after that one, with true counts. */
Test(lifecycle, void_after_later_invoice_with_late_usage)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 5, 5), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-05"), 0, "%s", out);
    send_gpu(&tenant_a, day_s(2024, 5, 20), 3600);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *may = period_invoice(tenant_a.id, 202405);
    json_t *june = period_invoice(tenant_a.id, 202406);
    char may_number[DOCUMENT_NUMBER_MAX], june_number[DOCUMENT_NUMBER_MAX];
    snprintf(may_number, sizeof may_number, "%s", text_of(may, "number"));
    snprintf(june_number, sizeof june_number, "%s", text_of(june, "number"));
    json_decref(may);
    json_decref(june);

    cr_assert_eq(meterctl(out, sizeof out, "invoice void %s --reason x", may_number), 1, "%s",
                 out);
    char expected[200];
    snprintf(expected, sizeof expected, "billed on invoice %s", june_number);
    cr_assert_not_null(strstr(out, expected), "%s", out);
    cr_assert_not_null(strstr(out, "void that invoice first"), "%s", out);

    /* Voiding June first makes May's late event unbilled again, and its count stays true. */
    cr_assert_eq(meterctl(out, sizeof out, "invoice void %s --reason x", june_number), 0, "%s",
                 out);
    cr_assert_eq(meterctl(out, sizeof out, "usage alpha --period 2024-06"), 0, "%s", out);
    cr_assert_not_null(strstr(out, "2024-05  "), "%s", out);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-06"), 0, "%s", out);
    json_t *reissued = period_invoice(tenant_a.id, 202406);
    json_t *adjustment = line_of_kind(reissued, "adjustment");
    cr_assert_not_null(adjustment, "the re-issue does not bill May's late usage");
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "amount_minor")), 200);
    cr_assert_eq(json_integer_value(json_object_get(adjustment, "events")), 1);
    cr_assert_str_eq(text_of(adjustment, "description"), "Late usage for 2024-05: 1 events");
    json_decref(reissued);
}

/* Rating takes at most 256 grants: a tenant with more closes, burning the first in order. */
Test(lifecycle, close_with_more_grants_than_rating_takes)
{
    char out[16384];
    send_gpu(&tenant_a, day_s(2024, 3, 5), 2 * 3600);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, harness.dir, NULL), HM_OK);
    for (int i = 0; i < 300; i++) {
        struct credit_grant grant = { .amount_minor = 1, .granted_s = day_s(2024, 1, 1) };
        memcpy(grant.tenant_id, tenant_a.id, UUID_SIZE);
        snprintf(grant.currency, sizeof grant.currency, "USD");
        cr_assert_eq(ledger_credit_grant(ledger, &grant), HM_OK);
    }
    ledger_close(ledger);
    cr_assert_eq(meterctl(out, sizeof out, "close --period 2024-03"), 0, "%s", out);
    json_t *march = period_invoice(tenant_a.id, 202403);
    cr_assert_eq(json_array_size(json_object_get(march, "credits")), 256);
    cr_assert_eq(minor_of(march, "credits_applied"), 256);
    cr_assert_eq(minor_of(march, "total"), 400 - 256);
    json_t *first = json_array_get(json_object_get(march, "credits"), 0);
    cr_assert_str_eq(text_of(first, "id"), "1");
    json_decref(march);
}

Test(lifecycle, free_text_check)
{
    char error[256];
    cr_assert_eq(billing_text_check("--reason", "outage credit, 5 € – “ok”", 500, error,
                                    sizeof error), HM_OK);
    cr_assert_eq(billing_text_check("--reason", "two\nlines", 500, error, sizeof error),
                 HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "control character U+000A at offset 3"), "%s", error);
    cr_assert_eq(billing_text_check("--reason", "del\x7f", 500, error, sizeof error),
                 HM_ERR_INVALID);
    cr_assert_eq(billing_text_check("--reason", "c1 \xc2\x9b", 500, error, sizeof error),
                 HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "U+009B"), "%s", error);
    cr_assert_eq(billing_text_check("--reason", "bad \xff", 500, error, sizeof error),
                 HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "not valid UTF-8 (byte 0xff at offset 4)"), "%s", error);
    /* An overlong encoding of '/' and a UTF-16 surrogate are not UTF-8 either. */
    cr_assert_eq(billing_text_check("x", "\xc0\xaf", 500, error, sizeof error), HM_ERR_INVALID);
    cr_assert_eq(billing_text_check("x", "\xed\xa0\x80", 500, error, sizeof error),
                 HM_ERR_INVALID);
    char long_text[502];
    memset(long_text, 'a', 501);
    long_text[501] = '\0';
    cr_assert_eq(billing_text_check("--note", long_text, 500, error, sizeof error),
                 HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "--note is 501 bytes, more than the 500 allowed"), "%s",
                       error);
    long_text[500] = '\0';
    cr_assert_eq(billing_text_check("--note", long_text, 500, error, sizeof error), HM_OK);

    char shown[64];
    billing_text_printable("a\nb\xff\xe2\x80\xae", shown, sizeof shown);
    cr_assert_str_eq(shown, "a\\u000ab\\xff\\u202e");
}
