#include "billing.h"

#include "common/log.h"
#include "common/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert((int)ROLLUP_GPU_SECONDS == (int)METER_GPU_SECONDS, "meters share numbers");
_Static_assert((int)ROLLUP_INPUT_TOKENS == (int)METER_INPUT_TOKENS, "meters share numbers");
_Static_assert((int)ROLLUP_OUTPUT_TOKENS == (int)METER_OUTPUT_TOKENS, "meters share numbers");
_Static_assert((int)ROLLUP_CACHED_INPUT_TOKENS == (int)METER_CACHED_INPUT_TOKENS,
               "meters share numbers");
_Static_assert((int)ROLLUP_API_CALLS == (int)METER_API_CALLS, "meters share numbers");
_Static_assert((int)ROLLUP_STORAGE_BYTE_SECONDS == (int)METER_STORAGE_BYTE_SECONDS,
               "meters share numbers");
_Static_assert((int)ROLLUP_TRANSFER_BYTES == (int)METER_TRANSFER_BYTES, "meters share numbers");

int billing_usage_totals(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                         struct usage_totals *usage, uint64_t *event_count_out)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = ledger_rollups(ledger, tenant->id, period, &rows, &count);
    if (rc != HM_OK)
        return rc;
    memset(usage, 0, sizeof *usage);
    usage->items = calloc(count ? count : 1, sizeof *usage->items);
    if (usage->items == NULL) {
        free(rows);
        return HM_ERR_NOMEM;
    }
    uint64_t events = 0;
    for (size_t i = 0; i < count; i++) {
        /* Event counts per kind are counted, not billed. */
        if (rows[i].meter == ROLLUP_EVENTS) {
            events += (uint64_t)rows[i].quantity;
            continue;
        }
        size_t dimension_size = strlen(rows[i].dimension);
        /* Billed dimensions are GPU types and models, which the wire format caps at 64 bytes. */
        if (dimension_size > USAGE_DIMENSION_MAX) {
            free(rows);
            free(usage->items);
            return HM_ERR_INVALID;
        }
        struct usage_item *item = &usage->items[usage->item_count++];
        item->meter = (enum meter)rows[i].meter;
        memcpy(item->dimension, rows[i].dimension, dimension_size + 1);
        item->quantity = rows[i].quantity;
        item->event_count = rows[i].event_count;
    }
    free(rows);
    memcpy(usage->tenant_id, tenant->id, UUID_SIZE);
    snprintf(usage->tenant_name, sizeof usage->tenant_name, "%s", tenant->name);
    usage->period = period;
    usage->period_start_s = period_start_us(period) / 1000000;
    usage->period_end_s = period_start_us(period_next(period)) / 1000000;
    usage->service_start_s = tenant->service_start_s;
    if (event_count_out != NULL)
        *event_count_out = events;
    return HM_OK;
}

int billing_pricebook_for(struct ledger *ledger, const struct tenant *tenant,
                          struct pricebook **book_out, char *error, size_t error_size)
{
    char scope[UUID_TEXT_SIZE];
    uuid_format(tenant->id, scope);
    char *json = NULL;
    int rc = ledger_pricebook_get(ledger, scope, &json);
    if (rc == HM_ERR_NOT_FOUND)
        rc = ledger_pricebook_get(ledger, "default", &json);
    if (rc == HM_ERR_NOT_FOUND) {
        snprintf(error, error_size,
                 "no price book for tenant %s and no default; load one with "
                 "`meterctl pricebook load FILE`", tenant->name);
        return rc;
    }
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the price book of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    rc = pricebook_parse(json, strlen(json), book_out, error, error_size);
    free(json);
    return rc;
}

int billing_draft(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                  struct invoice *invoice, uint64_t *event_count_out, char *error,
                  size_t error_size)
{
    struct pricebook *book = NULL;
    int rc = billing_pricebook_for(ledger, tenant, &book, error, error_size);
    if (rc != HM_OK)
        return rc;
    struct usage_totals usage;
    rc = billing_usage_totals(ledger, tenant, period, &usage, event_count_out);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the usage of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        pricebook_free(book);
        return rc;
    }
    rc = pricing_rate(&usage, book, invoice, error, error_size);
    free(usage.items);
    pricebook_free(book);
    return rc;
}

int billing_event_count(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                        uint64_t *count_out)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = ledger_rollups(ledger, tenant->id, period, &rows, &count);
    if (rc != HM_OK)
        return rc;
    uint64_t events = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_EVENTS)
            events += (uint64_t)rows[i].quantity;
    }
    free(rows);
    *count_out = events;
    return HM_OK;
}

/* ---- Closing a period ---- */

struct closing {
    struct tenant tenant;
    struct invoice invoice;
    json_t *json;
    char number[32];
};

/* Adds the invoice number, status, close time and SHA-256 seal to the invoice JSON. */
static int invoice_seal(json_t *json, const char *number, int64_t closed_s)
{
    char closed[32];
    time_t closed_time = (time_t)closed_s;
    struct tm tm;
    gmtime_r(&closed_time, &tm);
    strftime(closed, sizeof closed, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(json, "invoice_number", json_string(number));
    json_object_set_new(json, "status", json_string("finalized"));
    json_object_set_new(json, "closed_at", json_string(closed));

    /* The seal covers the canonical form: sorted keys, no whitespace, before the seal is added. */
    char *canonical = json_dumps(json, JSON_SORT_KEYS | JSON_COMPACT);
    if (canonical == NULL)
        return HM_ERR_NOMEM;
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    int ok = EVP_Digest(canonical, strlen(canonical), digest, &digest_size, EVP_sha256(), NULL);
    free(canonical);
    if (!ok)
        return HM_ERR_NOMEM;
    char hex[2 * 32 + 1];
    hex_encode(digest, 32, hex);
    json_object_set_new(json, "sha256", json_string(hex));
    return HM_OK;
}

/*
 * Writes a file atomically: a temporary file in the same directory, synced,
 * then renamed over the target, so that a crash leaves the old file or the
 * new one, never a part.
 */
static int file_write_atomic(const char *path, const char *text)
{
    char temporary[4200];
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    /* Invoices are customer billing data: readable by the owner only, like the ledger. */
    int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *file = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (file == NULL) {
        if (fd >= 0)
            close(fd);
        return HM_ERR_IO;
    }
    int written = fputs(text, file) >= 0 && fputc('\n', file) != EOF && fflush(file) == 0 &&
                  fsync(fileno(file)) == 0;
    if (fclose(file) != 0 || !written || rename(temporary, path) != 0) {
        unlink(temporary);
        return HM_ERR_IO;
    }
    return HM_OK;
}

/*
 * Writes the file of every sealed invoice of the period from the ledger,
 * which stays the record: a close interrupted after its commit gets its
 * files on the next run.
 */
static void invoice_files_write(struct ledger *ledger, uint32_t period, const char *invoices_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%04u-%02u", invoices_dir, period / 100, period % 100);
    if ((mkdir(invoices_dir, 0700) != 0 && errno != EEXIST) ||
        (mkdir(path, 0700) != 0 && errno != EEXIST)) {
        fprintf(stderr, "meterctl: cannot create %s: %s; the invoices are stored in the ledger, "
                "and `meterctl invoice show` prints them\n", path, strerror(errno));
        return;
    }
    struct tenant *tenants = NULL;
    size_t count = 0;
    if (ledger_tenant_list(ledger, &tenants, &count) != HM_OK)
        return;
    for (size_t i = 0; i < count; i++) {
        char *text = NULL;
        if (ledger_invoice_get(ledger, tenants[i].id, period, &text) != HM_OK)
            continue;
        snprintf(path, sizeof path, "%s/%04u-%02u/%s.json", invoices_dir, period / 100,
                 period % 100, tenants[i].name);
        if (file_write_atomic(path, text) != HM_OK)
            fprintf(stderr, "meterctl: writing %s failed: %s; the invoice is stored in the "
                    "ledger, and `meterctl invoice show` prints it\n", path, strerror(errno));
        free(text);
    }
    free(tenants);
}

static void summary_print(FILE *out, uint32_t period, struct closing *closings, size_t count,
                          int failures)
{
    fprintf(out, "\nPeriod %04u-%02u closed: %zu invoice%s", period / 100, period % 100, count,
            count == 1 ? "" : "s");
    if (failures > 0)
        fprintf(out, "; %d tenant%s could not be rated and stay%s open", failures,
                failures == 1 ? "" : "s", failures == 1 ? "s" : "");
    fprintf(out, "\n\n");
    fprintf(out, "%-16s %-20s %-8s %6s %16s %14s %16s\n", "invoice", "tenant", "currency",
            "lines", "subtotal", "discount", "total");
    for (size_t i = 0; i < count; i++) {
        const struct invoice *invoice = &closings[i].invoice;
        char subtotal[MONEY_TEXT_SIZE], discount[MONEY_TEXT_SIZE], total[MONEY_TEXT_SIZE];
        money_amount_format(invoice->subtotal, invoice->currency, subtotal, sizeof subtotal);
        struct money_amount taken_off = { -invoice->discount_total.minor };
        money_amount_format(taken_off, invoice->currency, discount, sizeof discount);
        money_amount_format(invoice->total, invoice->currency, total, sizeof total);
        fprintf(out, "%-16s %-20s %-8s %6zu %16s %14s %16s\n", closings[i].number,
                closings[i].tenant.name, invoice->currency->code, invoice->line_count, subtotal,
                discount, total);
    }
}

static void closings_free(struct closing *closings, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        invoice_free(&closings[i].invoice);
        json_decref(closings[i].json);
    }
    free(closings);
}

/*
 * Rates every tenant whose period is open. A tenant that cannot be rated is
 * reported on stderr, counted in *failures_out and left out, so that it
 * stays open while the others close.
 */
static int close_rate_all(struct ledger *ledger, uint32_t period, struct closing **out,
                          size_t *count_out, int *failures_out)
{
    struct tenant *tenants = NULL;
    size_t tenant_count = 0;
    int rc = ledger_tenant_list(ledger, &tenants, &tenant_count);
    if (rc != HM_OK)
        return rc;
    struct closing *closings = calloc(tenant_count ? tenant_count : 1, sizeof *closings);
    if (closings == NULL) {
        free(tenants);
        return HM_ERR_NOMEM;
    }
    size_t count = 0;
    int failures = 0;
    int64_t period_end_s = period_start_us(period_next(period)) / 1000000;
    for (size_t i = 0; i < tenant_count; i++) {
        int closed = ledger_period_closed(ledger, tenants[i].id, period);
        if (closed != 0) {
            if (closed > 0)
                fprintf(stderr, "meterctl: tenant %s: period %04u-%02u is already closed; "
                        "skipped\n", tenants[i].name, period / 100, period % 100);
            else
                failures++;
            continue;
        }
        struct closing *closing = &closings[count];
        closing->tenant = tenants[i];
        char error[512] = "";
        uint64_t events = 0;
        rc = billing_draft(ledger, &tenants[i], period, &closing->invoice, &events, error,
                           sizeof error);
        /* A tenant whose service starts after the period, and that used nothing in it, gets no invoice. */
        if (rc == HM_OK && tenants[i].service_start_s >= period_end_s &&
            closing->invoice.line_count == 0) {
            invoice_free(&closing->invoice);
            continue;
        }
        if (rc == HM_OK)
            rc = invoice_to_json(&closing->invoice, &closing->json);
        /* The events behind the invoice, so that usage arriving after the close can be counted apart. */
        if (rc == HM_OK)
            json_object_set_new(closing->json, "event_count", json_integer((json_int_t)events));
        if (rc != HM_OK) {
            fprintf(stderr, "meterctl: cannot rate tenant %s for %04u-%02u: %s\n",
                    tenants[i].name, period / 100, period % 100,
                    error[0] ? error : hm_status_str(rc));
            invoice_free(&closing->invoice);
            failures++;
            continue;
        }
        count++;
    }
    free(tenants);
    *out = closings;
    *count_out = count;
    *failures_out = failures;
    return HM_OK;
}

static int close_failures_report(uint32_t period, int failures)
{
    fprintf(stderr, "meterctl: %d tenant%s could not be rated and stay%s open for %04u-%02u; "
            "fix the errors above and run close again, which closes only the open ones\n",
            failures, failures == 1 ? "" : "s", failures == 1 ? "s" : "", period / 100,
            period % 100);
    return HM_ERR_INVALID;
}

int billing_close(struct ledger *ledger, uint32_t period, const char *invoices_dir, FILE *out)
{
    /*
     * The write transaction begins first. While it holds the writer lock no
     * commit of meterd or of another close can land, so every tenant is rated
     * from the same state of the ledger that the seal is written on. The
     * rating reads through read transactions beside it (MDB_NOTLS allows that).
     */
    struct ledger_txn *txn = NULL;
    int rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: period %04u-%02u not closed: %s\n", period / 100,
                period % 100, hm_status_str(rc));
        return rc;
    }
    struct closing *closings = NULL;
    size_t count = 0;
    int failures = 0;
    rc = close_rate_all(ledger, period, &closings, &count, &failures);
    if (rc != HM_OK) {
        ledger_abort(txn);
        fprintf(stderr, "meterctl: period %04u-%02u not closed: cannot list the tenants: %s\n",
                period / 100, period % 100, hm_status_str(rc));
        return rc;
    }
    if (count == 0) {
        ledger_abort(txn);
        closings_free(closings, count);
        if (invoices_dir != NULL)
            invoice_files_write(ledger, period, invoices_dir);
        if (failures == 0) {
            fprintf(out, "Period %04u-%02u: nothing to close; every tenant's invoice for it is "
                    "already sealed\n", period / 100, period % 100);
            return HM_OK;
        }
        return close_failures_report(period, failures);
    }

    int64_t now_s = (int64_t)time(NULL);
    for (size_t i = 0; rc == HM_OK && i < count; i++) {
        uint64_t seq = 0;
        rc = ledger_next_invoice_seq(txn, &seq);
        if (rc != HM_OK)
            break;
        snprintf(closings[i].number, sizeof closings[i].number, "HM-%06llu",
                 (unsigned long long)seq);
        rc = invoice_seal(closings[i].json, closings[i].number, now_s);
        char *text = rc == HM_OK ? json_dumps(closings[i].json, JSON_INDENT(2) | JSON_SORT_KEYS)
                                 : NULL;
        if (rc == HM_OK && text == NULL)
            rc = HM_ERR_NOMEM;
        if (rc == HM_OK)
            rc = ledger_period_close(txn, closings[i].tenant.id, period, text);
        free(text);
    }
    if (rc == HM_OK)
        rc = ledger_commit(txn);
    else
        ledger_abort(txn);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: period %04u-%02u not closed: %s\n", period / 100,
                period % 100, hm_status_str(rc));
        closings_free(closings, count);
        return rc;
    }

    if (invoices_dir != NULL)
        invoice_files_write(ledger, period, invoices_dir);
    summary_print(out, period, closings, count, failures);
    closings_free(closings, count);
    return failures ? close_failures_report(period, failures) : HM_OK;
}

/* ---- Rendering ---- */

static const char *string_of(json_t *object, const char *key)
{
    const char *text = json_string_value(json_object_get(object, key));
    return text ? text : "";
}

/* Prints an amount that the invoice JSON stores as positive, with a minus sign. */
static void negated(const char *amount, char *out, size_t size)
{
    if (amount[0] == '\0' || strspn(amount, "0.") == strlen(amount))
        snprintf(out, size, "%s", amount);
    else
        snprintf(out, size, "-%s", amount);
}

int billing_invoice_print(const char *invoice_json, FILE *out)
{
    json_error_t error;
    json_t *invoice = json_loads(invoice_json, 0, &error);
    if (invoice == NULL)
        return HM_ERR_INVALID;
    const char *currency = string_of(invoice, "currency");
    const char *number = string_of(invoice, "invoice_number");
    const char *status = string_of(invoice, "status");
    fprintf(out, "Invoice %s  tenant %s (%s)  period %s  status %s\n", number[0] ? number : "(draft)",
            string_of(invoice, "tenant_name"), string_of(invoice, "tenant_id"),
            string_of(invoice, "period"), status[0] ? status : "draft");
    fprintf(out, "Price book %s, currency %s\n\n", string_of(invoice, "price_book"), currency);

    /* The description column is as wide as the longest description. */
    json_t *lines = json_object_get(invoice, "lines");
    int width = 8;
    size_t index;
    json_t *line;
    json_array_foreach(lines, index, line) {
        int size = (int)strlen(string_of(line, "description"));
        width = size > width ? size : width;
    }
    fprintf(out, "%-*s %22s %-10s %18s %-18s %14s\n", width, "line", "quantity", "unit",
            "unit price", "", "amount");
    json_array_foreach(lines, index, line) {
        fprintf(out, "%-*s %22s %-10s %18s %-18s %14s\n", width, string_of(line, "description"),
                string_of(line, "quantity"), string_of(line, "unit"),
                string_of(line, "unit_price"), string_of(line, "price_unit"),
                string_of(line, "amount"));
    }
    int total_width = width + 22 + 10 + 18 + 18 + 14 + 5;
    char discount[MONEY_TEXT_SIZE + 1];
    negated(string_of(json_object_get(invoice, "discount"), "amount"), discount, sizeof discount);
    fprintf(out, "\n%-*s %*s\n", width, "subtotal", total_width - width - 1,
            string_of(json_object_get(invoice, "subtotal"), "amount"));
    fprintf(out, "%-*s %*s\n", width, "discount", total_width - width - 1, discount);
    fprintf(out, "%-*s %*s %s\n", width, "total", total_width - width - 1,
            string_of(json_object_get(invoice, "total"), "amount"), currency);
    if (string_of(invoice, "sha256")[0])
        fprintf(out, "sealed sha256 %s\n", string_of(invoice, "sha256"));
    json_decref(invoice);
    return HM_OK;
}
