/*
 * The invoice lifecycle end to end: a real meterd on loopback stores the
 * events, meterctl closes, voids, credits and re-issues, and the tests read
 * the documents back from the ledger.
 */
#include "meterd_harness.h"

#include <jansson.h>
#include <stdarg.h>

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
    char arguments[2048], command[3072];
    va_list args;
    va_start(args, format);
    vsnprintf(arguments, sizeof arguments, format, args);
    va_end(args);
    snprintf(command, sizeof command, "METER_DATA='%s' '%s/meterctl' %s 2>&1", harness.dir,
             HM_BINARY_DIR, arguments);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = 0;
    size_t got;
    while (used + 1 < out_size && (got = fread(out + used, 1, out_size - used - 1, pipe)) > 0)
        used += got;
    out[used] = '\0';
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
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

/* Sends one H100 allocation of `seconds` at `at_s` through meterd and checks that it was stored. */
static void send_gpu(const struct test_tenant *tenant, int64_t at_s, uint32_t seconds)
{
    struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = at_s * 1000000 };
    uint32_t id = next_event_id++;
    memcpy(event.event_id, &id, sizeof id);
    event.event_id[15] = 0x4c;
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc-%u", id);
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool-1");
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "H100");
    event.u.gpu.duration_s = seconds;
    uint8_t frame[FRAME_BODY_MAX + 256];
    size_t size = harness_frame(frame, tenant, id, &event, 1);
    struct frame_ack ack = harness_send_frame(&harness, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
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
    cr_assert_not_null(strstr(out, "corrected by HM-CN-000001"), "%s", out);
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
