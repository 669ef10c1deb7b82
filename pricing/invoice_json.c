/* The JSON form of an invoice, for exporters and tools. */
#include "pricing/invoice.h"

#include <stdio.h>
#include <time.h>

#include "common/status.h"
#include "common/uuid.h"

/* Sets key to value, taking the reference; a NULL value (failed allocation) counts as failure. */
static bool set_new(json_t *object, const char *key, json_t *value)
{
    return value != NULL && json_object_set_new(object, key, value) == 0;
}

/* Builds {"amount": "1234.45", "amount_minor": 123445}. */
static json_t *amount_json(struct money_amount amount, const struct money_currency *currency)
{
    char text[MONEY_TEXT_SIZE];
    json_t *object = json_object();
    bool ok = object != NULL && money_amount_format(amount, currency, text, sizeof(text)) == HM_OK;

    ok = ok && set_new(object, "amount", json_string(text));
    ok = ok && set_new(object, "amount_minor", json_integer(amount.minor));
    if (!ok) {
        json_decref(object);
        return NULL;
    }
    return object;
}

/* Formats Unix seconds as "2024-06-01T00:00:00Z". */
static json_t *timestamp_json(int64_t unix_s)
{
    char text[32];
    time_t seconds = (time_t)unix_s;
    struct tm utc;

    if (gmtime_r(&seconds, &utc) == NULL ||
        strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc) == 0)
        return json_integer(unix_s);
    return json_string(text);
}

static bool is_usage_kind(enum invoice_line_kind kind)
{
    return kind >= INVOICE_LINE_GPU && kind <= INVOICE_LINE_TRANSFER;
}

static json_t *line_json(const struct invoice *invoice, const struct invoice_line *line)
{
    char amount[MONEY_TEXT_SIZE];
    json_t *object = json_object();
    bool ok = object != NULL &&
              money_amount_format(line->amount, invoice->currency, amount, sizeof(amount)) == HM_OK;
    bool sliced = line->kind == INVOICE_LINE_BASE_FEE || line->kind == INVOICE_LINE_SUPPORT_FEE ||
                  is_usage_kind(line->kind);

    ok = ok && set_new(object, "kind", json_string(invoice_line_kind_name(line->kind)));
    ok = ok && set_new(object, "description", json_string(line->description));
    if (line->dimension[0] != '\0')
        ok = ok && set_new(object, "dimension", json_string(line->dimension));
    ok = ok && set_new(object, "quantity", json_string(line->quantity));
    ok = ok && set_new(object, "quantity_exact", json_boolean(line->quantity_exact));
    ok = ok && set_new(object, "unit", json_string(line->unit));
    ok = ok && set_new(object, "unit_price", json_string(line->unit_price));
    ok = ok && set_new(object, "unit_price_exact", json_boolean(line->unit_price_exact));
    ok = ok && set_new(object, "price_unit", json_string(line->price_unit));
    ok = ok && set_new(object, "amount", json_string(amount));
    ok = ok && set_new(object, "amount_minor", json_integer(line->amount.minor));
    if (sliced && invoice->slice_count > 1)
        ok = ok && set_new(object, "slice_start", timestamp_json(line->slice_start_s));
    if (is_usage_kind(line->kind) || line->kind == INVOICE_LINE_ADJUSTMENT)
        ok = ok && set_new(object, "events", json_integer((json_int_t)line->event_count));
    if (line->kind == INVOICE_LINE_ADJUSTMENT) {
        char period[16];
        snprintf(period, sizeof(period), "%04u-%02u", (unsigned)(line->adjusted_period / 100),
                 (unsigned)(line->adjusted_period % 100));
        ok = ok && set_new(object, "period", json_string(period));
    }
    if (!ok) {
        json_decref(object);
        return NULL;
    }
    return object;
}

/* Builds {"id": "42", "applied": {...}, "balance_after": {...}} for one burned grant. */
static json_t *credit_json(const struct invoice_credit *credit,
                           const struct money_currency *currency)
{
    char id[24];
    json_t *object = json_object();
    bool ok = object != NULL;

    snprintf(id, sizeof(id), "%llu", (unsigned long long)credit->id);
    ok = ok && set_new(object, "id", json_string(id));
    ok = ok && set_new(object, "applied",
                       amount_json((struct money_amount){credit->applied_minor}, currency));
    ok = ok && set_new(object, "balance_after",
                       amount_json((struct money_amount){credit->balance_after_minor}, currency));
    if (!ok) {
        json_decref(object);
        return NULL;
    }
    return object;
}

int invoice_to_json(const struct invoice *invoice, json_t **out)
{
    char tenant_id[UUID_TEXT_SIZE];
    char period[16];
    json_t *root = json_object();
    json_t *lines = json_array();
    json_t *credits = json_array();
    bool ok = root != NULL && lines != NULL && credits != NULL;

    uuid_format(invoice->tenant_id, tenant_id);
    snprintf(period, sizeof(period), "%04u-%02u", (unsigned)(invoice->period / 100),
             (unsigned)(invoice->period % 100));
    for (size_t i = 0; ok && i < invoice->line_count; i++) {
        json_t *line = line_json(invoice, &invoice->lines[i]);
        ok = line != NULL && json_array_append_new(lines, line) == 0;
    }
    for (size_t i = 0; ok && i < invoice->credit_count; i++) {
        json_t *credit = credit_json(&invoice->credits[i], invoice->currency);
        ok = credit != NULL && json_array_append_new(credits, credit) == 0;
    }

    ok = ok && set_new(root, "tenant_id", json_string(tenant_id));
    ok = ok && set_new(root, "tenant_name", json_string(invoice->tenant_name));
    ok = ok && set_new(root, "period", json_string(period));
    ok = ok && set_new(root, "period_start", timestamp_json(invoice->period_start_s));
    ok = ok && set_new(root, "period_end", timestamp_json(invoice->period_end_s));
    ok = ok && set_new(root, "price_book", json_string(invoice->pricebook_name));
    ok = ok && set_new(root, "currency", json_string(invoice->currency->code));
    ok = ok && set_new(root, "currency_exponent", json_integer(invoice->currency->exponent));
    ok = ok && set_new(root, "lines", json_incref(lines));
    ok = ok && set_new(root, "subtotal", amount_json(invoice->subtotal, invoice->currency));
    ok = ok && set_new(root, "discount", amount_json(invoice->discount_total, invoice->currency));
    ok = ok &&
         set_new(root, "credits_applied", amount_json(invoice->credits_applied, invoice->currency));
    ok = ok && set_new(root, "credits", json_incref(credits));
    ok = ok && set_new(root, "total", amount_json(invoice->total, invoice->currency));
    json_decref(lines);
    json_decref(credits);
    if (!ok) {
        json_decref(root);
        return HM_ERR_NOMEM;
    }
    *out = root;
    return HM_OK;
}
