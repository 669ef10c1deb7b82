#include "engine/lib/export_postgres.h"

#include "common/status.h"
#include "common/uuid.h"
#include "engine/lib/postgres.h"
#include "rollup/json_build.h"

#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Session advisory lock held for a whole export ("HMEXPORT" in ASCII). */
#define EXPORT_LOCK_KEY "5209896589544346196"

/* Months of partitions known to exist, remembered for the rest of a run. */
#define PARTITION_CACHE_MAX 1024

struct text_buffer {
    char *data;
    size_t size;
    size_t capacity;
};

struct exporter {
    struct ledger *ledger;
    PGconn *conn;
    const struct export_postgres_options *options;
    FILE *out;
    struct export_postgres_counts counts;
    uint64_t rows_sent; /* event rows sent into COPY in this run, for the test hook */
    uint32_t partitions[PARTITION_CACHE_MAX];
    size_t partition_count;
    char *error;
    size_t error_size;
};

/* ---- Small helpers ---- */

static int buffer_reserve(struct text_buffer *buffer, size_t more)
{
    if (buffer->size + more + 1 <= buffer->capacity)
        return HM_OK;
    size_t capacity = buffer->capacity ? buffer->capacity : 65536;
    while (capacity < buffer->size + more + 1)
        capacity *= 2;
    char *grown = realloc(buffer->data, capacity);
    if (grown == NULL)
        return HM_ERR_NOMEM;
    buffer->data = grown;
    buffer->capacity = capacity;
    return HM_OK;
}

static int buffer_printf(struct text_buffer *buffer, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int buffer_printf(struct text_buffer *buffer, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int needed = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    if (needed < 0 || buffer_reserve(buffer, (size_t)needed) != HM_OK)
        return HM_ERR_NOMEM;
    va_start(args, fmt);
    vsnprintf(buffer->data + buffer->size, buffer->capacity - buffer->size, fmt, args);
    va_end(args);
    buffer->size += (size_t)needed;
    return HM_OK;
}

/* Appends a string as a JSON string literal. Event names are printable ASCII (wire.c). */
static int buffer_json_string(struct text_buffer *buffer, const char *text)
{
    if (buffer_reserve(buffer, 2 * strlen(text) + 2) != HM_OK)
        return HM_ERR_NOMEM;
    buffer->data[buffer->size++] = '"';
    for (const char *c = text; *c; c++) {
        if (*c == '"' || *c == '\\')
            buffer->data[buffer->size++] = '\\';
        buffer->data[buffer->size++] = *c;
    }
    buffer->data[buffer->size++] = '"';
    buffer->data[buffer->size] = '\0';
    return HM_OK;
}

/* Appends text as one field of COPY's text format: backslash, tab, newline and CR escaped. */
static int buffer_copy_field(struct text_buffer *buffer, const char *text, size_t size)
{
    if (buffer_reserve(buffer, 2 * size) != HM_OK)
        return HM_ERR_NOMEM;
    for (size_t i = 0; i < size; i++) {
        char escaped;
        switch (text[i]) {
        case '\\':
            escaped = '\\';
            break;
        case '\t':
            escaped = 't';
            break;
        case '\n':
            escaped = 'n';
            break;
        case '\r':
            escaped = 'r';
            break;
        default:
            buffer->data[buffer->size++] = text[i];
            continue;
        }
        buffer->data[buffer->size++] = '\\';
        buffer->data[buffer->size++] = escaped;
    }
    buffer->data[buffer->size] = '\0';
    return HM_OK;
}

/* Formats Unix seconds as "2024-06-01T00:00:00Z", or 0 as "" (which the caller sends as NULL). */
static void iso_seconds(int64_t seconds, char *out, size_t size)
{
    time_t time_s = (time_t)seconds;
    struct tm utc;
    if (seconds == 0 || gmtime_r(&time_s, &utc) == NULL)
        out[0] = '\0';
    else
        strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &utc);
}

/* Formats microseconds since 1970 as "2024-06-01 00:00:00.000001+00". */
static void timestamp_micros(int64_t timestamp_us, char *out, size_t size)
{
    int64_t seconds = timestamp_us / 1000000;
    int64_t micros = timestamp_us % 1000000;
    if (micros < 0) {
        micros += 1000000;
        seconds -= 1;
    }
    time_t time_s = (time_t)seconds;
    struct tm utc;
    gmtime_r(&time_s, &utc);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &utc);
    snprintf(out, size, "%s.%06" PRId64 "+00", date, micros);
}

static int fail(struct exporter *exporter, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct exporter *exporter, int status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(exporter->error, exporter->error_size, fmt, args);
    va_end(args);
    return status;
}

/* Writes the server's last message, scrubbed and on one line, into out. */
static void server_message(struct exporter *exporter, char *out, size_t size)
{
    pg_message_scrub(exporter->options->dsn, PQerrorMessage(exporter->conn), out, size);
}

/*
 * Runs a statement with text parameters (NULL for SQL NULL). Returns the
 * number of rows it returned (>= 0), or HM_ERR_IO with "<what> failed: ..."
 * in the error.
 */
static int run(struct exporter *exporter, const char *what, const char *sql, int count,
               const char *const *params)
{
    PGresult *result = PQexecParams(exporter->conn, sql, count, NULL, params, NULL, NULL, 0);
    ExecStatusType status = PQresultStatus(result);
    int rows = status == PGRES_TUPLES_OK ? PQntuples(result) : 0;
    PQclear(result);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        char message[1024];
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "%s failed: %s", what, message);
    }
    return rows;
}

static void rollback(struct exporter *exporter)
{
    PQclear(PQexec(exporter->conn, "ROLLBACK"));
}

/* ---- Tenants, settings and keys ---- */

static const char tenant_upsert[] =
    "INSERT INTO tenants (id, organization_name, deployment_mode, created_at, updated_at, status,"
    " support_tier, issuer, service_start, service_end)"
    " VALUES ($1, $2, 'shared', $3, now(), $4, $5, $6, $7, $8)"
    " ON CONFLICT (id) DO UPDATE SET organization_name = EXCLUDED.organization_name,"
    " created_at = EXCLUDED.created_at, status = EXCLUDED.status,"
    " support_tier = EXCLUDED.support_tier, issuer = EXCLUDED.issuer,"
    " service_start = EXCLUDED.service_start, service_end = EXCLUDED.service_end,"
    " updated_at = now()"
    " WHERE (tenants.organization_name, tenants.created_at, tenants.status, tenants.support_tier,"
    " tenants.issuer, tenants.service_start, tenants.service_end)"
    " IS DISTINCT FROM (EXCLUDED.organization_name, EXCLUDED.created_at, EXCLUDED.status,"
    " EXCLUDED.support_tier, EXCLUDED.issuer, EXCLUDED.service_start, EXCLUDED.service_end)"
    " RETURNING 1";

static const char key_upsert[] =
    "INSERT INTO api_keys (id, tenant_id, key_hash, created_at, revoked_at, status, expires_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
    " ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
    " key_hash = EXCLUDED.key_hash, created_at = EXCLUDED.created_at,"
    " revoked_at = EXCLUDED.revoked_at, status = EXCLUDED.status,"
    " expires_at = EXCLUDED.expires_at"
    " WHERE (api_keys.tenant_id, api_keys.key_hash, api_keys.created_at, api_keys.revoked_at,"
    " api_keys.status, api_keys.expires_at) IS DISTINCT FROM (EXCLUDED.tenant_id,"
    " EXCLUDED.key_hash, EXCLUDED.created_at, EXCLUDED.revoked_at, EXCLUDED.status,"
    " EXCLUDED.expires_at)"
    " RETURNING 1";

/* The platform may set the other columns of billing_config; the export owns these two. */
static const char billing_upsert[] =
    "INSERT INTO billing_config (tenant_id, billing_provider, customer_id) VALUES ($1, 'stripe', $2)"
    " ON CONFLICT (tenant_id) DO UPDATE SET billing_provider = 'stripe',"
    " customer_id = EXCLUDED.customer_id"
    " WHERE (billing_config.billing_provider, billing_config.customer_id)"
    " IS DISTINCT FROM ('stripe', EXCLUDED.customer_id)"
    " RETURNING 1";

static int tenant_export(struct exporter *exporter, const struct tenant *tenant)
{
    char id[UUID_TEXT_SIZE], created[32], service_start[32], service_end[32];
    struct tenant_settings settings;
    int rc = ledger_tenant_settings_get(exporter->ledger, tenant->id, &settings);
    if (rc != HM_OK)
        return fail(exporter, rc, "reading the settings of tenant %s failed: %s", tenant->name,
                    hm_status_str(rc));
    uuid_format(tenant->id, id);
    iso_seconds(tenant->created_s, created, sizeof created);
    iso_seconds(tenant->service_start_s, service_start, sizeof service_start);
    iso_seconds(settings.service_end_s, service_end, sizeof service_end);
    const char *params[] = { id,
                             tenant->name,
                             created,
                             tenant->active ? "active" : "inactive",
                             settings.support_tier,
                             settings.issuer,
                             service_start[0] ? service_start : NULL,
                             service_end[0] ? service_end : NULL };
    int rows = run(exporter, "upserting a tenant", tenant_upsert, 8, params);
    if (rows < 0)
        return rows;
    exporter->counts.tenants++;
    exporter->counts.tenants_written += (uint64_t)rows;

    if (settings.stripe_customer[0] != '\0') {
        const char *billing[] = { id, settings.stripe_customer };
        rows = run(exporter, "upserting a billing configuration", billing_upsert, 2, billing);
        if (rows < 0)
            return rows;
    }

    struct key_record *keys = NULL;
    size_t key_count = 0;
    rc = ledger_key_list(exporter->ledger, tenant->id, &keys, &key_count);
    if (rc != HM_OK)
        return fail(exporter, rc, "reading the API keys of tenant %s failed: %s", tenant->name,
                    hm_status_str(rc));
    for (size_t i = 0; i < key_count; i++) {
        char key_id[17], hash[8 + 64 + 1], key_created[32], revoked[32], expires[32];
        snprintf(key_id, sizeof key_id, "%016" PRIx64, keys[i].key_id);
        memcpy(hash, "sha256:", 7);
        hex_encode(keys[i].secret_hash, sizeof keys[i].secret_hash, hash + 7);
        iso_seconds(keys[i].created_s, key_created, sizeof key_created);
        int revoked_key = keys[i].status == KEY_REVOKED;
        iso_seconds(revoked_key ? keys[i].revoked_s : 0, revoked, sizeof revoked);
        iso_seconds(keys[i].expires_s, expires, sizeof expires);
        const char *key_params[] = { key_id, id, hash, key_created,
                                     revoked[0] ? revoked : NULL,
                                     revoked_key ? "revoked" : "active",
                                     expires[0] ? expires : NULL };
        rows = run(exporter, "upserting an API key", key_upsert, 7, key_params);
        if (rows < 0)
            break;
        exporter->counts.keys++;
        exporter->counts.keys_written += (uint64_t)rows;
    }
    free(keys);
    return rows < 0 ? rows : HM_OK;
}

/* Exports the tenants, their settings and keys in one transaction. */
static int tenants_export(struct exporter *exporter, const struct tenant *tenants, size_t count)
{
    int rc = run(exporter, "BEGIN", "BEGIN", 0, NULL);
    for (size_t i = 0; rc >= 0 && i < count; i++)
        rc = tenant_export(exporter, &tenants[i]);
    if (rc < 0) {
        rollback(exporter);
        return rc;
    }
    rc = run(exporter, "committing tenants and keys", "COMMIT", 0, NULL);
    return rc < 0 ? rc : HM_OK;
}

/* ---- Invoices and credit notes ---- */

static const char *string_of(json_t *object, const char *key)
{
    return json_string_value(json_object_get(object, key));
}

/* Formats a JSON integer member as decimal text into out. Returns NULL when it is not an integer. */
static const char *integer_text(json_t *object, const char *key, char *out, size_t size)
{
    json_t *value = json_object_get(object, key);
    if (!json_is_integer(value))
        return NULL;
    snprintf(out, size, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
    return out;
}

/* The "amount_minor" of an amount object such as "total": {"amount": ..., "amount_minor": ...}. */
static const char *amount_minor_text(json_t *object, const char *key, char *out, size_t size)
{
    return integer_text(json_object_get(object, key), "amount_minor", out, size);
}

/* Turns "2024-05" into "2024-05-01". Returns NULL when the text is not YYYY-MM. */
static const char *period_date(const char *period, char *out, size_t size)
{
    uint32_t parsed;
    if (period == NULL || period_parse(period, &parsed) != HM_OK)
        return NULL;
    snprintf(out, size, "%04u-%02u-01", parsed / 100, parsed % 100);
    return out;
}

/* Names a missing member of a document: the data is wrong, so the export stops on it. */
static int document_invalid(struct exporter *exporter, const char *number, const char *member)
{
    return fail(exporter, HM_ERR_STORAGE,
                "document %s in the ledger has no valid \"%s\"; `meterctl invoice show %s "
                "--json` prints it",
                number, member, number);
}

static const char invoice_upsert[] =
    "INSERT INTO invoices (number, tenant_id, issuer, period, period_start, period_end, revision,"
    " replaces, status, currency, currency_exponent, subtotal_minor, discount_minor,"
    " credits_applied_minor, total_minor, price_book, price_book_sha256, event_count, closed_at,"
    " voided_at, void_reason, sha256, document, exported_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
    " $19, $20, $21, $22, $23, now())"
    " ON CONFLICT (number) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
    " issuer = EXCLUDED.issuer, period = EXCLUDED.period, period_start = EXCLUDED.period_start,"
    " period_end = EXCLUDED.period_end, revision = EXCLUDED.revision,"
    " replaces = EXCLUDED.replaces, status = EXCLUDED.status, currency = EXCLUDED.currency,"
    " currency_exponent = EXCLUDED.currency_exponent, subtotal_minor = EXCLUDED.subtotal_minor,"
    " discount_minor = EXCLUDED.discount_minor,"
    " credits_applied_minor = EXCLUDED.credits_applied_minor,"
    " total_minor = EXCLUDED.total_minor, price_book = EXCLUDED.price_book,"
    " price_book_sha256 = EXCLUDED.price_book_sha256, event_count = EXCLUDED.event_count,"
    " closed_at = EXCLUDED.closed_at, voided_at = EXCLUDED.voided_at,"
    " void_reason = EXCLUDED.void_reason, sha256 = EXCLUDED.sha256,"
    " document = EXCLUDED.document, exported_at = now()"
    " WHERE invoices.sha256 <> EXCLUDED.sha256"
    " RETURNING 1";

static const char line_insert[] =
    "INSERT INTO invoice_lines (invoice_number, line_number, kind, description, dimension,"
    " quantity, quantity_exact, unit, unit_price, unit_price_exact, price_unit, amount_minor,"
    " events, slice_start, adjusted_period)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

static int lines_export(struct exporter *exporter, const char *number, json_t *lines)
{
    int rows = run(exporter, "replacing invoice lines",
                   "DELETE FROM invoice_lines WHERE invoice_number = $1", 1, &number);
    if (rows < 0)
        return rows;
    size_t index;
    json_t *line;
    json_array_foreach(lines, index, line) {
        char line_number[24], amount[32], events[32], adjusted[16], slice[32];
        snprintf(line_number, sizeof line_number, "%zu", index + 1);
        const char *slice_start = string_of(line, "slice_start");
        if (slice_start == NULL && json_is_integer(json_object_get(line, "slice_start"))) {
            iso_seconds((int64_t)json_integer_value(json_object_get(line, "slice_start")), slice,
                        sizeof slice);
            slice_start = slice;
        }
        const char *params[] = {
            number,
            line_number,
            string_of(line, "kind"),
            string_of(line, "description"),
            string_of(line, "dimension"),
            string_of(line, "quantity"),
            json_is_true(json_object_get(line, "quantity_exact")) ? "true" : "false",
            string_of(line, "unit"),
            string_of(line, "unit_price"),
            json_is_true(json_object_get(line, "unit_price_exact")) ? "true" : "false",
            string_of(line, "price_unit"),
            integer_text(line, "amount_minor", amount, sizeof amount),
            integer_text(line, "events", events, sizeof events),
            slice_start,
            period_date(string_of(line, "period"), adjusted, sizeof adjusted),
        };
        static const char *const required[] = { NULL, NULL, "kind", "description", NULL,
                                                "quantity", NULL, "unit", "unit_price", NULL,
                                                "price_unit", "amount_minor" };
        for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
            if (required[i] != NULL && params[i] == NULL)
                return document_invalid(exporter, number, required[i]);
        }
        rows = run(exporter, "inserting an invoice line", line_insert, 15, params);
        if (rows < 0)
            return rows;
        exporter->counts.invoice_lines_written++;
    }
    return HM_OK;
}

static int invoice_export(struct exporter *exporter, const char *number, json_t *invoice)
{
    char period[16], revision[16] = "1", exponent[16], subtotal[32], discount[32], credits[32];
    char total[32], events[32];
    const char *status = string_of(invoice, "status");
    json_t *lines = json_object_get(invoice, "lines");
    const char *params[] = {
        number,
        string_of(invoice, "tenant_id"),
        string_of(invoice, "issuer") ? string_of(invoice, "issuer") : ISSUER_DEFAULT,
        period_date(string_of(invoice, "period"), period, sizeof period),
        string_of(invoice, "period_start"),
        string_of(invoice, "period_end"),
        /* Invoices of ledgers from before revisions are revision 1. */
        json_object_get(invoice, "revision") ? integer_text(invoice, "revision", revision,
                                                            sizeof revision)
                                             : revision,
        string_of(invoice, "replaces"),
        status,
        string_of(invoice, "currency"),
        integer_text(invoice, "currency_exponent", exponent, sizeof exponent),
        amount_minor_text(invoice, "subtotal", subtotal, sizeof subtotal),
        amount_minor_text(invoice, "discount", discount, sizeof discount),
        amount_minor_text(invoice, "credits_applied", credits, sizeof credits),
        amount_minor_text(invoice, "total", total, sizeof total),
        string_of(invoice, "price_book"),
        string_of(invoice, "price_book_sha256"),
        integer_text(invoice, "event_count", events, sizeof events),
        string_of(invoice, "closed_at"),
        string_of(invoice, "voided_at"),
        string_of(invoice, "void_reason"),
        string_of(invoice, "sha256"),
        NULL, /* the document, set below */
    };
    static const char *const required[] = { NULL, "tenant_id", NULL, "period", "period_start",
                                            "period_end", "revision", NULL, "status",
                                            "currency", "currency_exponent", "subtotal",
                                            "discount", NULL, "total" };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (required[i] != NULL && params[i] == NULL)
            return document_invalid(exporter, number, required[i]);
    }
    if (params[21] == NULL)
        return document_invalid(exporter, number, "sha256");
    if (!json_is_array(lines))
        return document_invalid(exporter, number, "lines");
    /* Invoices of ledgers from before credit grants have no credits_applied: none applied. */
    if (params[13] == NULL)
        params[13] = "0";

    char *document = json_dumps_whole(invoice, JSON_COMPACT | JSON_SORT_KEYS);
    if (document == NULL)
        return fail(exporter, HM_ERR_NOMEM, "out of memory");
    params[22] = document;
    int rows = run(exporter, "upserting an invoice", invoice_upsert, 23, params);
    free(document);
    if (rows < 0)
        return rows;
    exporter->counts.invoices++;
    if (rows == 0)
        return HM_OK;
    exporter->counts.invoices_written++;
    return lines_export(exporter, number, lines);
}

static const char credit_note_upsert[] =
    "INSERT INTO credit_notes (number, tenant_id, issuer, credited_invoice, period, kind, status,"
    " revision, currency, currency_exponent, amount_minor, reason, events, price_book_sha256,"
    " issued_at, sha256, document, exported_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, now())"
    " ON CONFLICT (number) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
    " issuer = EXCLUDED.issuer, credited_invoice = EXCLUDED.credited_invoice,"
    " period = EXCLUDED.period, kind = EXCLUDED.kind, status = EXCLUDED.status,"
    " revision = EXCLUDED.revision, currency = EXCLUDED.currency,"
    " currency_exponent = EXCLUDED.currency_exponent, amount_minor = EXCLUDED.amount_minor,"
    " reason = EXCLUDED.reason, events = EXCLUDED.events,"
    " price_book_sha256 = EXCLUDED.price_book_sha256, issued_at = EXCLUDED.issued_at,"
    " sha256 = EXCLUDED.sha256, document = EXCLUDED.document, exported_at = now()"
    " WHERE credit_notes.sha256 <> EXCLUDED.sha256"
    " RETURNING 1";

static int credit_note_export(struct exporter *exporter, const char *number, json_t *note)
{
    char period[16], revision[16] = "1", exponent[16], amount[32], events[32];
    const char *params[] = {
        number,
        string_of(note, "tenant_id"),
        string_of(note, "issuer") ? string_of(note, "issuer") : ISSUER_DEFAULT,
        string_of(note, "credited_invoice"),
        period_date(string_of(note, "period"), period, sizeof period),
        string_of(note, "kind"),
        string_of(note, "status"),
        json_object_get(note, "revision") ? integer_text(note, "revision", revision,
                                                         sizeof revision)
                                          : revision,
        string_of(note, "currency"),
        integer_text(note, "currency_exponent", exponent, sizeof exponent),
        amount_minor_text(note, "amount", amount, sizeof amount),
        string_of(note, "reason"),
        integer_text(note, "events", events, sizeof events),
        string_of(note, "price_book_sha256"),
        string_of(note, "issued_at"),
        string_of(note, "sha256"),
        NULL, /* the document, set below */
    };
    static const char *const required[] = { NULL, "tenant_id", NULL, "credited_invoice",
                                            "period", "kind", "status", "revision", "currency",
                                            "currency_exponent", "amount", "reason", NULL, NULL,
                                            "issued_at", "sha256" };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (required[i] != NULL && params[i] == NULL)
            return document_invalid(exporter, number, required[i]);
    }
    char *document = json_dumps_whole(note, JSON_COMPACT | JSON_SORT_KEYS);
    if (document == NULL)
        return fail(exporter, HM_ERR_NOMEM, "out of memory");
    params[16] = document;
    int rows = run(exporter, "upserting a credit note", credit_note_upsert, 17, params);
    free(document);
    if (rows < 0)
        return rows;
    exporter->counts.credit_notes++;
    exporter->counts.credit_notes_written += (uint64_t)rows;
    return HM_OK;
}

/* Selection of the documents that one walk over the ledger exports. */
struct document_walk {
    struct exporter *exporter;
    int credit_notes; /* 0: invoices (first, for the foreign key), 1: credit notes */
};

static int document_visit(void *context, const char *number, const char *text)
{
    struct document_walk *walk = context;
    struct exporter *exporter = walk->exporter;
    json_error_t parse_error;
    json_t *document = json_loads(text, 0, &parse_error);
    if (document == NULL)
        return fail(exporter, HM_ERR_STORAGE, "document %s in the ledger is not JSON: %s",
                    number ? number : "(stored under its period)", parse_error.text);

    /* Invoices that older ledgers stored under their period carry only "invoice_number". */
    const char *type = string_of(document, "document_type");
    int is_credit_note = type != NULL && strcmp(type, "credit_note") == 0;
    const char *own_number = number ? number : string_of(document, "invoice_number");
    const char *tenant_id = string_of(document, "tenant_id");
    int rc = HM_OK;
    if (own_number == NULL) {
        rc = fail(exporter, HM_ERR_STORAGE, "an invoice stored under its period in the ledger "
                  "has no \"invoice_number\"");
    } else if (is_credit_note == walk->credit_notes) {
        char only[UUID_TEXT_SIZE] = "";
        if (exporter->options->only != NULL)
            uuid_format(exporter->options->only->id, only);
        if (only[0] == '\0' || (tenant_id != NULL && strcmp(tenant_id, only) == 0))
            rc = is_credit_note ? credit_note_export(exporter, own_number, document)
                                : invoice_export(exporter, own_number, document);
    }
    json_decref(document);
    return rc;
}

/* Exports invoices, then credit notes (which name their invoice), in one transaction. */
static int documents_export(struct exporter *exporter)
{
    int rc = run(exporter, "BEGIN", "BEGIN", 0, NULL);
    for (int credit_notes = 0; rc >= 0 && credit_notes <= 1; credit_notes++) {
        struct document_walk walk = { exporter, credit_notes };
        rc = ledger_document_each(exporter->ledger, document_visit, &walk);
        if (rc > 0)
            rc = HM_ERR_STORAGE;
        if (rc < 0 && exporter->error[0] == '\0')
            fail(exporter, rc, "reading the documents of the ledger failed: %s",
                 hm_status_str(rc));
    }
    if (rc < 0) {
        rollback(exporter);
        return rc;
    }
    rc = run(exporter, "committing invoices and credit notes", "COMMIT", 0, NULL);
    return rc < 0 ? rc : HM_OK;
}

/* ---- Usage events ---- */

/* One transaction's worth of events of one tenant, as COPY text rows. */
struct event_batch {
    const char *tenant_id; /* UUID text */
    struct text_buffer rows;
    size_t *row_ends; /* offset after each row in `rows` */
    uint64_t row_count;
    uint64_t capacity;
    uint64_t last_seq;
    uint32_t months[PARTITION_CACHE_MAX]; /* periods (yyyymm) of the batch's events */
    size_t month_count;
    int months_overflow;
    struct text_buffer metadata; /* scratch for one event's JSON */
};

static int event_metadata(struct text_buffer *json, const struct event *event)
{
    json->size = 0;
    int rc = HM_OK;
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION: {
        const struct event_gpu_allocation *gpu = &event->u.gpu;
        rc = buffer_printf(json, "{\"allocation_id\": ");
        rc = rc ? rc : buffer_json_string(json, gpu->allocation_id);
        rc = rc ? rc : buffer_printf(json, ", \"pool_id\": ");
        rc = rc ? rc : buffer_json_string(json, gpu->pool_id);
        rc = rc ? rc : buffer_printf(json, ", \"gpu_type\": ");
        rc = rc ? rc : buffer_json_string(json, gpu->gpu_type);
        /* cost_per_hour is an exact decimal number (micro-units), never a float. */
        rc = rc ? rc : buffer_printf(json, ", \"duration_seconds\": %" PRIu32
                                     ", \"cost_per_hour\": %" PRId64 ".%06" PRId64 "}",
                                     gpu->duration_s, gpu->cost_per_hour_micro / 1000000,
                                     gpu->cost_per_hour_micro % 1000000);
        break;
    }
    case EVENT_INFERENCE: {
        const struct event_inference *inference = &event->u.inference;
        rc = buffer_printf(json, "{\"model\": ");
        rc = rc ? rc : buffer_json_string(json, inference->model);
        rc = rc ? rc : buffer_printf(json, ", \"input_tokens\": %" PRIu64
                                     ", \"output_tokens\": %" PRIu64
                                     ", \"cached_input_tokens\": %" PRIu64
                                     ", \"latency_ms\": %" PRIu32 ", \"gpu_time_ms\": %" PRIu64
                                     "}",
                                     inference->input_tokens, inference->output_tokens,
                                     inference->cached_input_tokens, inference->latency_ms,
                                     inference->gpu_time_ms);
        break;
    }
    case EVENT_STORAGE:
        rc = buffer_printf(json, "{\"bytes_stored\": %" PRIu64 ", \"bytes_transferred\": %" PRIu64
                           "}", event->u.storage.bytes_stored,
                           event->u.storage.bytes_transferred);
        break;
    case EVENT_API_CALL:
        rc = buffer_printf(json, "{\"endpoint\": ");
        rc = rc ? rc : buffer_json_string(json, event->u.api.endpoint);
        rc = rc ? rc : buffer_printf(json, ", \"response_code\": %u, \"response_time_ms\": %" PRIu32
                                     "}", (unsigned)event->u.api.response_code,
                                     event->u.api.response_time_ms);
        break;
    default:
        return HM_ERR_INVALID;
    }
    return rc;
}

static int batch_add(void *context, uint64_t seq, const struct event *event)
{
    struct event_batch *batch = context;
    if (batch->row_count == batch->capacity) {
        uint64_t capacity = batch->capacity ? 2 * batch->capacity : 1024;
        size_t *grown = realloc(batch->row_ends, capacity * sizeof *grown);
        if (grown == NULL)
            return HM_ERR_NOMEM;
        batch->row_ends = grown;
        batch->capacity = capacity;
    }
    /* A batch stops before an event of one month more than it can create partitions for. */
    uint32_t month = event_period_of(event->timestamp_us);
    int month_known = 0;
    for (size_t i = 0; i < batch->month_count && !month_known; i++)
        month_known = batch->months[i] == month;
    if (!month_known && batch->month_count == PARTITION_CACHE_MAX) {
        batch->months_overflow = 1;
        return 1;
    }
    int rc = event_metadata(&batch->metadata, event);
    if (rc != HM_OK)
        return rc;
    char event_id[UUID_TEXT_SIZE], timestamp[48];
    uuid_format(event->event_id, event_id);
    timestamp_micros(event->timestamp_us, timestamp, sizeof timestamp);
    /* Columns: id, tenant_id, "timestamp", event_type, metadata, ledger_seq. */
    rc = buffer_printf(&batch->rows, "%s\t%s\t%s\t%s\t", event_id, batch->tenant_id, timestamp,
                       event_kind_name(event->kind));
    rc = rc ? rc : buffer_copy_field(&batch->rows, batch->metadata.data, batch->metadata.size);
    rc = rc ? rc : buffer_printf(&batch->rows, "\t%" PRIu64 "\n", seq);
    if (rc != HM_OK)
        return rc;
    batch->row_ends[batch->row_count++] = batch->rows.size;
    batch->last_seq = seq;
    if (!month_known)
        batch->months[batch->month_count++] = month;
    return HM_OK;
}

static int partition_known(const struct exporter *exporter, uint32_t month)
{
    for (size_t i = 0; i < exporter->partition_count; i++) {
        if (exporter->partitions[i] == month)
            return 1;
    }
    return 0;
}

/*
 * Checks that an existing table of a partition's name is the partition of
 * usage_events for that month. Another table of that name (a plain table, a
 * partition of other bounds) would make COPY fail with "no partition of
 * relation usage_events found for row", which names neither it nor a fix.
 * The bounds are compared as PostgreSQL prints them, in the session's time
 * zone, on both sides.
 */
static int partition_bounds_check(struct exporter *exporter, const char *name, uint32_t month,
                                  uint32_t next)
{
    char from[32], to[32];
    snprintf(from, sizeof from, "%04u-%02u-01 00:00:00+00", month / 100, month % 100);
    snprintf(to, sizeof to, "%04u-%02u-01 00:00:00+00", next / 100, next % 100);
    const char *params[] = { name, from, to };
    PGresult *result = PQexecParams(
        exporter->conn,
        "SELECT coalesce(i.inhparent = 'usage_events'::regclass, false),"
        " coalesce(pg_get_expr(c.relpartbound, c.oid), ''),"
        " coalesce(pg_get_expr(c.relpartbound, c.oid), '')"
        " = format('FOR VALUES FROM (%L) TO (%L)', $2::timestamptz, $3::timestamptz),"
        " c.relkind::text"
        " FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
        " WHERE c.oid = to_regclass($1)",
        3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(result) != PGRES_TUPLES_OK || PQntuples(result) != 1) {
        PQclear(result);
        char message[1024];
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "checking the bounds of partition %s failed: %s", name,
                    message);
    }
    int child = strcmp(PQgetvalue(result, 0, 0), "t") == 0;
    int same = strcmp(PQgetvalue(result, 0, 2), "t") == 0;
    char bounds[256], kind[8];
    snprintf(bounds, sizeof bounds, "%s", PQgetvalue(result, 0, 1));
    snprintf(kind, sizeof kind, "%s", PQgetvalue(result, 0, 3));
    PQclear(result);
    if (child && same)
        return HM_OK;
    char what[320];
    if (!child)
        snprintf(what, sizeof what, "is not a partition of usage_events (it is %s)",
                 strcmp(kind, "v") == 0 ? "a view" : strcmp(kind, "p") == 0
                                                         ? "a partitioned table of its own"
                                                         : "a table of its own");
    else
        snprintf(what, sizeof what, "is a partition of usage_events %s", bounds);
    return fail(exporter, HM_ERR_STATE,
                "%s exists but %s, and the export needs it to be the partition for %04u-%02u "
                "(FOR VALUES FROM ('%s') TO ('%s')); rename or drop it (ALTER TABLE %s RENAME "
                "TO %s_old, or ALTER TABLE usage_events DETACH PARTITION %s), then run the "
                "export again: it creates the partition, and no event was lost",
                name, what, month / 100, month % 100, from, to, name, name, name);
}

/* Creates the monthly partitions that the batch needs and that do not exist yet. */
static int partitions_ensure(struct exporter *exporter, const struct event_batch *batch,
                             uint64_t *created)
{
    for (size_t i = 0; i < batch->month_count; i++) {
        uint32_t month = batch->months[i], next = period_next(month);
        if (partition_known(exporter, month))
            continue;
        char name[64], sql[512];
        snprintf(name, sizeof name, "usage_events_y%04um%02u", month / 100, month % 100);
        const char *params[] = { name };
        PGresult *result = PQexecParams(exporter->conn, "SELECT to_regclass($1) IS NULL", 1,
                                        NULL, params, NULL, NULL, 0);
        int missing = PQresultStatus(result) == PGRES_TUPLES_OK &&
                      strcmp(PQgetvalue(result, 0, 0), "t") == 0;
        int ok = PQresultStatus(result) == PGRES_TUPLES_OK;
        PQclear(result);
        if (!ok) {
            char message[1024];
            server_message(exporter, message, sizeof message);
            return fail(exporter, HM_ERR_IO, "looking up partition %s failed: %s", name,
                        message);
        }
        if (!missing) {
            int rc = partition_bounds_check(exporter, name, month, next);
            if (rc != HM_OK)
                return rc;
            continue;
        }
        snprintf(sql, sizeof sql,
                 "CREATE TABLE IF NOT EXISTS %s PARTITION OF usage_events FOR VALUES FROM "
                 "('%04u-%02u-01 00:00:00+00') TO ('%04u-%02u-01 00:00:00+00')",
                 name, month / 100, month % 100, next / 100, next % 100);
        int rows = run(exporter, "creating a monthly partition", sql, 0, NULL);
        if (rows < 0)
            return rows;
        (*created)++;
    }
    return HM_OK;
}

/* Sends the batch's rows into a COPY; the test hook may kill the process in the middle. */
static int batch_copy(struct exporter *exporter, const struct event_batch *batch)
{
    PGresult *result = PQexec(exporter->conn,
                              "COPY usage_events (id, tenant_id, \"timestamp\", event_type, "
                              "metadata, ledger_seq) FROM STDIN");
    int started = PQresultStatus(result) == PGRES_COPY_IN;
    PQclear(result);
    char message[1024];
    if (!started) {
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "starting COPY into usage_events failed: %s", message);
    }
    size_t start = 0;
    int sent = 1;
    for (uint64_t i = 0; i < batch->row_count && sent; i++) {
        size_t end = batch->row_ends[i];
        sent = PQputCopyData(exporter->conn, batch->rows.data + start, (int)(end - start)) == 1;
        start = end;
        exporter->rows_sent++;
        if (exporter->options->kill_after_rows != 0 &&
            exporter->rows_sent == exporter->options->kill_after_rows) {
            /* Push what is buffered, so that the server is in the middle of the COPY. */
            while (PQflush(exporter->conn) == 1)
                ;
            fprintf(exporter->out, "export: %s=%" PRIu64 " reached; killing the export\n",
                    EXPORT_KILL_AFTER_ROWS_ENV, exporter->options->kill_after_rows);
            fflush(exporter->out);
            raise(SIGKILL);
        }
    }
    if (!sent || PQputCopyEnd(exporter->conn, NULL) != 1) {
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "sending events to PostgreSQL failed: %s", message);
    }
    int status = HM_OK;
    while ((result = PQgetResult(exporter->conn)) != NULL) {
        if (PQresultStatus(result) != PGRES_COMMAND_OK && status == HM_OK) {
            server_message(exporter, message, sizeof message);
            status = fail(exporter, HM_ERR_IO, "COPY into usage_events failed: %s", message);
        }
        PQclear(result);
    }
    return status;
}

static const char checkpoint_upsert[] =
    "INSERT INTO export_checkpoints (tenant_id, ledger_seq, events_exported, updated_at)"
    " VALUES ($1, $2, $3, now())"
    " ON CONFLICT (tenant_id) DO UPDATE SET ledger_seq = EXCLUDED.ledger_seq,"
    " events_exported = export_checkpoints.events_exported + EXCLUDED.events_exported,"
    " updated_at = now()"
    " WHERE export_checkpoints.ledger_seq = $4"
    " RETURNING 1";

/*
 * Stores one batch: partitions, rows and the moved checkpoint in one
 * transaction, which is what makes a crash at any point safe.
 */
static int batch_store(struct exporter *exporter, const struct tenant *tenant,
                       const struct event_batch *batch, uint64_t checkpoint)
{
    uint64_t created = 0;
    int rc = run(exporter, "BEGIN", "BEGIN", 0, NULL);
    if (rc >= 0)
        rc = partitions_ensure(exporter, batch, &created);
    if (rc >= 0)
        rc = batch_copy(exporter, batch);
    if (rc >= 0) {
        char seq[24], rows[24], previous[24];
        snprintf(seq, sizeof seq, "%" PRIu64, batch->last_seq);
        snprintf(rows, sizeof rows, "%" PRIu64, batch->row_count);
        snprintf(previous, sizeof previous, "%" PRIu64, checkpoint);
        const char *params[] = { batch->tenant_id, seq, rows, previous };
        rc = run(exporter, "moving the export checkpoint", checkpoint_upsert, 4, params);
        if (rc == 0)
            rc = fail(exporter, HM_ERR_STATE,
                      "the export checkpoint of tenant %s moved during this export; another "
                      "exporter wrote to the database without its lock",
                      tenant->name);
    }
    if (rc >= 0)
        rc = run(exporter, "committing events", "COMMIT", 0, NULL);
    if (rc < 0) {
        rollback(exporter);
        return rc;
    }
    /* Only a committed partition is known to exist. */
    for (size_t i = 0; i < batch->month_count; i++) {
        if (exporter->partition_count < PARTITION_CACHE_MAX &&
            !partition_known(exporter, batch->months[i]))
            exporter->partitions[exporter->partition_count++] = batch->months[i];
    }
    exporter->counts.partitions_created += created;
    exporter->counts.events_written += batch->row_count;
    exporter->counts.event_transactions++;
    return HM_OK;
}

/*
 * A tenant without a checkpoint must have no events in usage_events: its
 * first batch would copy arrivals from 1 again, and COPY would fail on the
 * primary key. A row deleted by hand is reported with the statement that
 * restores it, when the rows are exactly arrivals 1..N (each batch commits
 * with its checkpoint, so an intact table contains whole batches from 1 on).
 */
static int checkpoint_missing_check(struct exporter *exporter, const char *tenant_id)
{
    const char *params[] = { tenant_id };
    PGresult *result = PQexecParams(exporter->conn,
                                    "SELECT count(*), count(DISTINCT ledger_seq),"
                                    " coalesce(min(ledger_seq), 0), coalesce(max(ledger_seq), 0)"
                                    " FROM usage_events WHERE tenant_id = $1",
                                    1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        PQclear(result);
        char message[1024];
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "counting the exported events failed: %s", message);
    }
    uint64_t rows = strtoull(PQgetvalue(result, 0, 0), NULL, 10);
    uint64_t distinct = strtoull(PQgetvalue(result, 0, 1), NULL, 10);
    uint64_t first = strtoull(PQgetvalue(result, 0, 2), NULL, 10);
    uint64_t last = strtoull(PQgetvalue(result, 0, 3), NULL, 10);
    PQclear(result);
    if (rows == 0)
        return HM_OK;
    if (rows == distinct && first == 1 && last == rows)
        return fail(exporter, HM_ERR_STATE,
                    "tenant %s has %" PRIu64 " events in usage_events (arrivals 1 to %" PRIu64
                    ") but no row in export_checkpoints, which was deleted by hand; restore it "
                    "with INSERT INTO export_checkpoints (tenant_id, ledger_seq, events_exported,"
                    " updated_at) VALUES ('%s', %" PRIu64 ", %" PRIu64 ", now()) and run the "
                    "export again",
                    tenant_id, rows, last, tenant_id, last, rows);
    return fail(exporter, HM_ERR_STATE,
                "tenant %s has %" PRIu64 " events in usage_events (arrivals %" PRIu64 " to %"
                PRIu64 ", %" PRIu64 " distinct) but no row in export_checkpoints, and they are "
                "not arrivals 1 to N exactly once; delete them (DELETE FROM usage_events WHERE "
                "tenant_id = '%s') and run the export again, which copies them anew",
                tenant_id, rows, first, last, distinct, tenant_id);
}

/* Reads the tenant's checkpoint: the last arrival number already in usage_events, or 0. */
static int checkpoint_read(struct exporter *exporter, const char *tenant_id, uint64_t *seq_out)
{
    const char *params[] = { tenant_id };
    PGresult *result = PQexecParams(exporter->conn,
                                    "SELECT ledger_seq FROM export_checkpoints "
                                    "WHERE tenant_id = $1",
                                    1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        PQclear(result);
        char message[1024];
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "reading the export checkpoint failed: %s", message);
    }
    int found = PQntuples(result) == 1;
    *seq_out = found ? strtoull(PQgetvalue(result, 0, 0), NULL, 10) : 0;
    PQclear(result);
    if (found)
        return HM_OK;
    return checkpoint_missing_check(exporter, tenant_id);
}

static int tenant_events_export(struct exporter *exporter, const struct tenant *tenant)
{
    char tenant_id[UUID_TEXT_SIZE];
    uuid_format(tenant->id, tenant_id);
    uint64_t checkpoint = 0, last = 0;
    int rc = checkpoint_read(exporter, tenant_id, &checkpoint);
    if (rc != HM_OK)
        return rc;
    rc = ledger_arrival_last(exporter->ledger, tenant->id, &last);
    if (rc != HM_OK)
        return fail(exporter, rc, "reading the arrival sequence of tenant %s failed: %s",
                    tenant->name, hm_status_str(rc));
    if (checkpoint > last)
        return fail(exporter, HM_ERR_STATE,
                    "the database has events of tenant %s up to arrival %" PRIu64 " but the "
                    "ledger has only %" PRIu64 "; it was exported from another ledger, so "
                    "export this ledger into an empty database",
                    tenant->name, checkpoint, last);
    if (checkpoint == last) {
        fprintf(exporter->out, "export: tenant %s: no new events (%" PRIu64 " exported)\n",
                tenant->name, checkpoint);
        return HM_OK;
    }
    fprintf(exporter->out, "export: tenant %s: %" PRIu64 " new events after arrival %" PRIu64
            "\n", tenant->name, last - checkpoint, checkpoint);

    /* Events stored after `last` was read wait for the next run, so that a run ends. */
    struct event_batch batch = { .tenant_id = tenant_id };
    while (rc == HM_OK && checkpoint < last) {
        uint64_t limit = last - checkpoint < exporter->options->batch_rows
                             ? last - checkpoint
                             : exporter->options->batch_rows;
        batch.rows.size = 0;
        batch.row_count = 0;
        batch.month_count = 0;
        batch.months_overflow = 0;
        rc = ledger_arrivals_each(exporter->ledger, tenant->id, checkpoint, limit, batch_add,
                                  &batch);
        if (rc == 1 && batch.months_overflow)
            rc = HM_OK;
        if (rc != HM_OK) {
            fail(exporter, rc < 0 ? rc : HM_ERR_STORAGE,
                 "reading events of tenant %s after arrival %" PRIu64 " failed: %s",
                 tenant->name, checkpoint, hm_status_str(rc < 0 ? rc : HM_ERR_STORAGE));
            rc = rc < 0 ? rc : HM_ERR_STORAGE;
            break;
        }
        if (batch.row_count == 0) {
            rc = fail(exporter, HM_ERR_STORAGE, "the ledger has no event for arrival %" PRIu64
                      " of tenant %s", checkpoint + 1, tenant->name);
            break;
        }
        rc = batch_store(exporter, tenant, &batch, checkpoint);
        if (rc != HM_OK)
            break;
        checkpoint = batch.last_seq;
        fprintf(exporter->out, "export: tenant %s: %" PRIu64 " events stored, through arrival %"
                PRIu64 " of %" PRIu64 "\n", tenant->name, batch.row_count, checkpoint, last);
        fflush(exporter->out);
    }
    free(batch.rows.data);
    free(batch.metadata.data);
    free(batch.row_ends);
    return rc;
}

/* ---- The run ---- */

/* The tables and columns that the export writes, as the migrations create them. */
static const struct {
    const char *table;
    const char *columns;
} schema_expected[] = {
    { "tenants", "id organization_name deployment_mode created_at updated_at status support_tier "
                 "issuer service_start service_end" },
    { "api_keys", "id tenant_id key_hash created_at revoked_at status" },
    { "billing_config", "tenant_id billing_provider customer_id" },
    { "invoices", "number tenant_id issuer period period_start period_end revision replaces "
                  "status currency currency_exponent subtotal_minor discount_minor "
                  "credits_applied_minor total_minor price_book price_book_sha256 event_count "
                  "closed_at voided_at void_reason sha256 document exported_at" },
    { "invoice_lines", "invoice_number line_number kind description dimension quantity "
                       "quantity_exact unit unit_price unit_price_exact price_unit amount_minor "
                       "events slice_start adjusted_period" },
    { "credit_notes", "number tenant_id issuer credited_invoice period kind status revision "
                      "currency currency_exponent amount_minor reason events price_book_sha256 "
                      "issued_at sha256 document exported_at" },
    { "usage_events", "id tenant_id timestamp event_type metadata ledger_seq" },
    { "export_checkpoints", "tenant_id ledger_seq events_exported updated_at" },
};

/*
 * Checks that every table and column the export writes exists, so that a
 * database changed by hand (a dropped column, a renamed table) gets an error
 * that names what is missing instead of a failing statement later on.
 */
static int schema_columns_check(struct exporter *exporter)
{
    PGresult *result = PQexec(exporter->conn,
                              "SELECT table_name || '.' || column_name FROM "
                              "information_schema.columns WHERE table_schema = current_schema()");
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        PQclear(result);
        char message[1024];
        server_message(exporter, message, sizeof message);
        return fail(exporter, HM_ERR_IO, "reading the schema's columns failed: %s", message);
    }
    int status = HM_OK;
    for (size_t t = 0; status == HM_OK && t < sizeof schema_expected / sizeof *schema_expected;
         t++) {
        const char *table = schema_expected[t].table;
        int table_found = 0;
        for (int row = 0; row < PQntuples(result) && !table_found; row++) {
            const char *name = PQgetvalue(result, row, 0);
            table_found = strncmp(name, table, strlen(table)) == 0 && name[strlen(table)] == '.';
        }
        if (!table_found) {
            status = fail(exporter, HM_ERR_STATE,
                          "the database has no table %s, which the migrations create and the "
                          "export writes; it was renamed or dropped by hand: restore it, or "
                          "export into a new database after `meterctl db migrate --dsn DSN`",
                          table);
            break;
        }
        const char *column = schema_expected[t].columns;
        while (status == HM_OK && *column) {
            size_t length = strcspn(column, " ");
            char wanted[128];
            snprintf(wanted, sizeof wanted, "%s.%.*s", table, (int)length, column);
            int found = 0;
            for (int row = 0; row < PQntuples(result) && !found; row++)
                found = strcmp(PQgetvalue(result, row, 0), wanted) == 0;
            if (!found)
                status = fail(exporter, HM_ERR_STATE,
                              "the database has no column %s, which the migrations create and "
                              "the export writes; it was renamed or dropped by hand: restore it, "
                              "or export into a new database after `meterctl db migrate --dsn "
                              "DSN`",
                              wanted);
            column += length;
            while (*column == ' ')
                column++;
        }
    }
    PQclear(result);
    return status;
}

/* Takes the export lock; waits up to the lock timeout while another export holds it. */
static int export_lock(struct exporter *exporter)
{
    PGresult *result = PQexec(exporter->conn, "SELECT pg_try_advisory_lock(" EXPORT_LOCK_KEY ")");
    int taken = PQresultStatus(result) == PGRES_TUPLES_OK &&
                strcmp(PQgetvalue(result, 0, 0), "t") == 0;
    PQclear(result);
    if (taken)
        return HM_OK;
    fprintf(exporter->out, "export: another export to this database is running; waiting up "
            "to 60 seconds for it\n");
    fflush(exporter->out);
    int rc = run(exporter, "setting the lock timeout", "SET lock_timeout = '60s'", 0, NULL);
    if (rc >= 0)
        rc = run(exporter, "waiting for the export lock",
                 "SELECT pg_advisory_lock(" EXPORT_LOCK_KEY ")", 0, NULL);
    if (rc >= 0)
        rc = run(exporter, "resetting the lock timeout", "RESET lock_timeout", 0, NULL);
    if (rc < 0) {
        char cause[512];
        snprintf(cause, sizeof cause, "%s", exporter->error);
        return fail(exporter, HM_ERR_STATE, "another export to this database holds its lock; "
                    "wait for it to finish and run the export again (%s)", cause);
    }
    return HM_OK;
}

static void summary_print(const struct exporter *exporter, const char *target)
{
    const struct export_postgres_counts *counts = &exporter->counts;
    fprintf(exporter->out,
            "export: done (%s)\n"
            "  tenants        %8" PRIu64 " (%" PRIu64 " inserted or changed)\n"
            "  api keys       %8" PRIu64 " (%" PRIu64 " inserted or changed)\n"
            "  invoices       %8" PRIu64 " (%" PRIu64 " inserted or changed, %" PRIu64
            " lines written)\n"
            "  credit notes   %8" PRIu64 " (%" PRIu64 " inserted or changed)\n"
            "  usage events   %8" PRIu64 " new in %" PRIu64 " transactions, %" PRIu64
            " partitions created\n",
            target, counts->tenants, counts->tenants_written, counts->keys, counts->keys_written,
            counts->invoices, counts->invoices_written, counts->invoice_lines_written,
            counts->credit_notes, counts->credit_notes_written, counts->events_written,
            counts->event_transactions, counts->partitions_created);
}

int export_postgres(struct ledger *ledger, PGconn *conn,
                    const struct export_postgres_options *options, FILE *out,
                    struct export_postgres_counts *counts, char *error, size_t error_size)
{
    struct exporter *exporter = calloc(1, sizeof *exporter);
    if (exporter == NULL) {
        snprintf(error, error_size, "out of memory");
        return HM_ERR_NOMEM;
    }
    exporter->ledger = ledger;
    exporter->conn = conn;
    exporter->options = options;
    exporter->out = out;
    exporter->error = error;
    exporter->error_size = error_size;
    error[0] = '\0';

    char target[512];
    pg_dsn_describe(options->dsn, target, sizeof target);
    int rc = pg_schema_check(conn, PG_SCHEMA_VERSION_EXPORT, error, error_size);
    if (rc == HM_OK)
        rc = schema_columns_check(exporter);
    if (rc == HM_OK)
        rc = export_lock(exporter);

    struct tenant *tenants = NULL;
    size_t tenant_count = 0;
    if (rc == HM_OK && options->only != NULL) {
        tenants = malloc(sizeof *tenants);
        if (tenants == NULL)
            rc = fail(exporter, HM_ERR_NOMEM, "out of memory");
        else
            tenants[tenant_count++] = *options->only;
    } else if (rc == HM_OK) {
        rc = ledger_tenant_list(ledger, &tenants, &tenant_count);
        if (rc != HM_OK)
            fail(exporter, rc, "reading the tenants of the ledger failed: %s", hm_status_str(rc));
    }
    if (rc == HM_OK) {
        fprintf(out, "export: to %s, %zu tenant%s\n", target, tenant_count,
                tenant_count == 1 ? "" : "s");
        rc = tenants_export(exporter, tenants, tenant_count);
    }
    if (rc == HM_OK)
        rc = documents_export(exporter);
    for (size_t i = 0; rc == HM_OK && i < tenant_count; i++)
        rc = tenant_events_export(exporter, &tenants[i]);
    if (rc == HM_OK)
        summary_print(exporter, target);
    else if (exporter->counts.events_written > 0)
        fprintf(out, "export: %" PRIu64 " events were committed before the error; the next run "
                "resumes after them\n", exporter->counts.events_written);

    PQclear(PQexec(conn, "SELECT pg_advisory_unlock_all()"));
    if (counts != NULL)
        *counts = exporter->counts;
    free(tenants);
    free(exporter);
    return rc;
}
