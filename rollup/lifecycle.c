/*
 * Records of the invoice lifecycle: tenant settings, issuers and their
 * gapless number sequences, sealed documents by number, price book
 * snapshots, prepaid credit grants and the billed state of closed periods.
 *
 * Every record added here is versioned JSON ({"version": 1, ...}), so that
 * a later version can add fields and still read what this one wrote. A
 * record with a version this code does not know is reported, never guessed.
 */
#include "ledger.h"
#include "ledger_private.h"

#include "rollup/json_build.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define RECORD_VERSION 1
/*
 * Billed periods: version 2 adds "billed_with", the tenant settings a period
 * was rated with, and version 3 "usage_sha256", the digest of its rated usage.
 */
#define BILLED_RECORD_VERSION 3

/* ---- JSON records ---- */

/* Reads a JSON record of version 1 to version_max, as record_get does. */
static int record_get_versioned(MDB_txn *txn, const struct ledger *ledger, enum table table,
                                MDB_val *key, const char *what, int version_max, json_t **out)
{
    MDB_val value;
    int rc = table_get(txn, ledger, table, key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read record");
    json_error_t error;
    json_t *json = json_loadb(value.mv_data, value.mv_size, 0, &error);
    json_int_t version = json_integer_value(json_object_get(json, "version"));
    if (json == NULL || version < 1 || version > version_max) {
        log_error("ledger", "%s record is %s (version %lld); this meterctl reads versions 1 to %d",
                  what, json ? "of another version" : "not JSON", (long long)version,
                  version_max);
        json_decref(json);
        return HM_ERR_STORAGE;
    }
    *out = json;
    return HM_OK;
}

/* Reads a versioned JSON record; HM_ERR_NOT_FOUND when absent, HM_ERR_STORAGE when unreadable. */
static int record_get(MDB_txn *txn, const struct ledger *ledger, enum table table, MDB_val *key,
                      const char *what, json_t **out)
{
    return record_get_versioned(txn, ledger, table, key, what, RECORD_VERSION, out);
}

/* Stores a JSON record as `version` and takes the reference; flags as for mdb_put. */
static int record_put_versioned(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, json_t *json,
                                int version, unsigned flags, const char *operation)
{
    if (json == NULL)
        return HM_ERR_NOMEM;
    int failed = 0;
    json_add(json, "version", json_integer(version), &failed);
    if (failed) {
        json_decref(json);
        return HM_ERR_NOMEM;
    }
    char *text = json_dumps_whole(json, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(json);
    if (text == NULL)
        return HM_ERR_NOMEM;
    MDB_val value = { strlen(text), text };
    int rc = mdb_put(txn, dbi, key, &value, flags);
    free(text);
    if (rc == MDB_KEYEXIST)
        return HM_ERR_EXISTS;
    return rc == 0 ? HM_OK : status_of(rc, operation);
}

/* Stores a JSON record of RECORD_VERSION and takes the reference; flags as for mdb_put. */
static int record_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, json_t *json, unsigned flags,
                      const char *operation)
{
    return record_put_versioned(txn, dbi, key, json, RECORD_VERSION, flags, operation);
}

static void copy_string(json_t *object, const char *key, char *out, size_t size)
{
    const char *text = json_string_value(json_object_get(object, key));
    snprintf(out, size, "%s", text ? text : "");
}

static int64_t integer_of(json_t *object, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(object, key));
}

static int write_begin(struct ledger *ledger, MDB_txn **txn)
{
    int rc = txn_begin(ledger, 0, txn);
    return rc == 0 ? HM_OK : status_of(rc, "begin write transaction");
}

/* Commits, or aborts when status is an error; returns the first error. */
static int write_end(MDB_txn *txn, int status)
{
    if (status != HM_OK) {
        mdb_txn_abort(txn);
        return status;
    }
    int rc = mdb_txn_commit(txn);
    return rc == 0 ? HM_OK : status_of(rc, "commit");
}

static void period_key(uint8_t key[UUID_SIZE + 4], const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period)
{
    memcpy(key, tenant_id, UUID_SIZE);
    store_be32(key + UUID_SIZE, period);
}

/* ---- Tenant settings ---- */

void ledger_tenant_settings_default(struct tenant_settings *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->support_tier, sizeof out->support_tier, "none");
    snprintf(out->issuer, sizeof out->issuer, "%s", ISSUER_DEFAULT);
}

static int settings_read(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         struct tenant_settings *out)
{
    ledger_tenant_settings_default(out);
    MDB_val key = { UUID_SIZE, (void *)tenant_id };
    json_t *json = NULL;
    int rc = record_get(txn, ledger, TABLE_TENANT_SETTINGS, &key, "tenant settings", &json);
    if (rc == HM_ERR_NOT_FOUND)
        return HM_OK;
    if (rc != HM_OK)
        return rc;
    copy_string(json, "support_tier", out->support_tier, sizeof out->support_tier);
    copy_string(json, "issuer", out->issuer, sizeof out->issuer);
    out->service_end_s = integer_of(json, "service_end_s");
    copy_string(json, "stripe_customer", out->stripe_customer, sizeof out->stripe_customer);
    json_decref(json);
    return HM_OK;
}

int ledger_tenant_settings_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                               struct tenant_settings *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = settings_read(ledger, txn, tenant_id, out);
    mdb_txn_abort(txn);
    return rc;
}

static int issuer_read(struct ledger *ledger, MDB_txn *txn, const char *name, struct issuer *out);

static int settings_write(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          const struct tenant_settings *settings)
{
    struct issuer issuer;
    int rc = issuer_read(ledger, txn, settings->issuer, &issuer);
    if (rc != HM_OK)
        return rc;
    json_t *json = json_pack("{s:s, s:s, s:I}", "support_tier", settings->support_tier, "issuer",
                             settings->issuer, "service_end_s", (json_int_t)settings->service_end_s);
    /* Written only when set, so that settings without it read the same in older versions. */
    int failed = 0;
    if (json != NULL && settings->stripe_customer[0] != '\0')
        json_add(json, "stripe_customer", json_string(settings->stripe_customer), &failed);
    MDB_val key = { UUID_SIZE, (void *)tenant_id };
    return record_put(txn, ledger->tables[TABLE_TENANT_SETTINGS], &key, json_built(json, failed),
                      0, "store tenant settings");
}

int ledger_tenant_create_with(struct ledger *ledger, const struct tenant *tenant,
                              const struct tenant_settings *settings)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val name = { strlen(tenant->name), (void *)tenant->name };
    MDB_val id = { UUID_SIZE, (void *)tenant->id };
    MDB_val value = { sizeof *tenant, (void *)tenant };
    int mdb_rc = mdb_put(txn, ledger->tables[TABLE_NAMES], &name, &id, MDB_NOOVERWRITE);
    if (mdb_rc == 0)
        mdb_rc = mdb_put(txn, ledger->tables[TABLE_TENANTS], &id, &value, MDB_NOOVERWRITE);
    if (mdb_rc != 0)
        rc = mdb_rc == MDB_KEYEXIST ? HM_ERR_EXISTS : status_of(mdb_rc, "create tenant");
    if (rc == HM_OK)
        rc = settings_write(ledger, txn, tenant->id, settings);
    return write_end(txn, rc);
}

int ledger_tenant_update(struct ledger *ledger, const struct tenant *tenant,
                         const struct tenant_settings *settings)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val id = { UUID_SIZE, (void *)tenant->id }, value;
    int mdb_rc = table_get(txn, ledger, TABLE_TENANTS, &id, &value);
    if (mdb_rc == MDB_NOTFOUND)
        rc = HM_ERR_NOT_FOUND;
    else if (mdb_rc != 0)
        rc = status_of(mdb_rc, "read tenant");
    else if (value.mv_size != sizeof *tenant ||
             strcmp(((const struct tenant *)value.mv_data)->name, tenant->name) != 0)
        rc = HM_ERR_INVALID;
    if (rc == HM_OK) {
        value.mv_size = sizeof *tenant;
        value.mv_data = (void *)tenant;
        mdb_rc = mdb_put(txn, ledger->tables[TABLE_TENANTS], &id, &value, 0);
        rc = mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "update tenant");
    }
    if (rc == HM_OK)
        rc = settings_write(ledger, txn, tenant->id, settings);
    return write_end(txn, rc);
}

/* ---- Ledger settings ---- */

static size_t setting_key(char *key, size_t size, const char *name)
{
    return (size_t)snprintf(key, size, "setting:%s", name);
}

int ledger_setting_get(struct ledger *ledger, const char *name, int64_t fallback,
                       int64_t *value_out)
{
    char key_text[128];
    MDB_val key = { setting_key(key_text, sizeof key_text, name), key_text }, value;
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    int mdb_rc = table_get(txn, ledger, TABLE_META, &key, &value);
    *value_out = fallback;
    if (mdb_rc == 0 && value.mv_size == sizeof *value_out)
        memcpy(value_out, value.mv_data, sizeof *value_out);
    else if (mdb_rc == 0)
        rc = HM_ERR_STORAGE;
    else if (mdb_rc != MDB_NOTFOUND)
        rc = status_of(mdb_rc, "read setting");
    mdb_txn_abort(txn);
    return rc;
}

int ledger_setting_set(struct ledger *ledger, const char *name, int64_t value)
{
    char key_text[128];
    MDB_val key = { setting_key(key_text, sizeof key_text, name), key_text };
    MDB_val data = { sizeof value, &value };
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    int mdb_rc = mdb_put(txn, ledger->tables[TABLE_META], &key, &data, 0);
    return write_end(txn, mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "store setting"));
}

/* ---- Issuers ---- */

static void issuer_default(struct issuer *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", ISSUER_DEFAULT);
    snprintf(out->prefix, sizeof out->prefix, "%s", ISSUER_DEFAULT_PREFIX);
}

static int issuer_read(struct ledger *ledger, MDB_txn *txn, const char *name, struct issuer *out)
{
    if (strcmp(name, ISSUER_DEFAULT) == 0) {
        issuer_default(out);
        return HM_OK;
    }
    MDB_val key = { strlen(name), (void *)name };
    json_t *json = NULL;
    int rc = record_get(txn, ledger, TABLE_ISSUERS, &key, "issuer", &json);
    if (rc != HM_OK)
        return rc;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    copy_string(json, "prefix", out->prefix, sizeof out->prefix);
    out->created_s = integer_of(json, "created_s");
    json_decref(json);
    return HM_OK;
}

int ledger_issuer_get(struct ledger *ledger, const char *name, struct issuer *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = issuer_read(ledger, txn, name, out);
    mdb_txn_abort(txn);
    return rc;
}

static int issuers_read(struct ledger *ledger, MDB_txn *txn, struct issuer **issuers_out,
                        size_t *count_out)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_ISSUERS, &cursor);
    if (rc != 0)
        return status_of(rc, "open issuer cursor");
    size_t count = 1, capacity = 8;
    struct issuer *issuers = malloc(capacity * sizeof *issuers);
    int status = issuers ? HM_OK : HM_ERR_NOMEM;
    if (issuers != NULL)
        issuer_default(&issuers[0]);
    MDB_val key, value;
    MDB_cursor_op op = MDB_FIRST;
    while (status == HM_OK && (rc = cursor_get(cursor, &key, &value, op)) == 0) {
        op = MDB_NEXT;
        if (count == capacity) {
            capacity *= 2;
            struct issuer *grown = realloc(issuers, capacity * sizeof *grown);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            issuers = grown;
        }
        char name[ISSUER_NAME_MAX + 1];
        snprintf(name, sizeof name, "%.*s", (int)key.mv_size, (const char *)key.mv_data);
        status = issuer_read(ledger, txn, name, &issuers[count]);
        count++;
    }
    cursor_close(cursor);
    /* A failed read is an error, not the end, because the prefix check would miss the rest. */
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read issuers");
    if (status != HM_OK) {
        free(issuers);
        return status;
    }
    *issuers_out = issuers;
    *count_out = count;
    return HM_OK;
}

int ledger_issuer_list(struct ledger *ledger, struct issuer **issuers_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = issuers_read(ledger, txn, issuers_out, count_out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_issuer_add(struct ledger *ledger, const struct issuer *issuer)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    if (strcmp(issuer->name, ISSUER_DEFAULT) == 0)
        return write_end(txn, HM_ERR_EXISTS);

    /* Numbers are unique over all issuers only if prefixes are. */
    struct issuer *issuers = NULL;
    size_t count = 0;
    rc = issuers_read(ledger, txn, &issuers, &count);
    for (size_t i = 0; rc == HM_OK && i < count; i++) {
        if (strcmp(issuers[i].prefix, issuer->prefix) == 0)
            rc = HM_ERR_CONFLICT;
    }
    free(issuers);
    if (rc == HM_OK) {
        json_t *json = json_pack("{s:s, s:I}", "prefix", issuer->prefix, "created_s",
                                 (json_int_t)issuer->created_s);
        MDB_val key = { strlen(issuer->name), (void *)issuer->name };
        rc = record_put(txn, ledger->tables[TABLE_ISSUERS], &key, json, MDB_NOOVERWRITE,
                        "store issuer");
    }
    return write_end(txn, rc);
}

/* ---- Document numbers ---- */

int ledger_number_next(struct ledger_txn *txn, const char *issuer_name, enum document_kind kind,
                       char *number_out, size_t number_size)
{
    struct ledger *ledger = txn->ledger;
    struct issuer issuer;
    int rc = issuer_read(ledger, txn->txn, issuer_name, &issuer);
    if (rc != HM_OK)
        return rc;

    /* The default issuer's invoices keep the counter that older ledgers used for every invoice. */
    char name[ISSUER_NAME_MAX + 32];
    if (kind == DOCUMENT_INVOICE && strcmp(issuer_name, ISSUER_DEFAULT) == 0)
        snprintf(name, sizeof name, "invoice_seq");
    else
        snprintf(name, sizeof name, "%s_seq:%s",
                 kind == DOCUMENT_INVOICE ? "invoice" : "credit_note", issuer_name);
    MDB_val key = { strlen(name), name }, value;
    uint64_t seq = 0;
    int mdb_rc = table_get(txn->txn, ledger, TABLE_META, &key, &value);
    if (mdb_rc == 0 && value.mv_size == sizeof seq)
        memcpy(&seq, value.mv_data, sizeof seq);
    else if (mdb_rc != MDB_NOTFOUND)
        return mdb_rc == 0 ? HM_ERR_STORAGE : status_of(mdb_rc, "read document sequence");
    seq++;
    value.mv_size = sizeof seq;
    value.mv_data = &seq;
    mdb_rc = mdb_put(txn->txn, ledger->tables[TABLE_META], &key, &value, 0);
    if (mdb_rc != 0)
        return status_of(mdb_rc, "write document sequence");
    int size = snprintf(number_out, number_size, "%s-%s%06llu", issuer.prefix,
                        kind == DOCUMENT_INVOICE ? "" : "CN-", (unsigned long long)seq);
    return size > 0 && (size_t)size < number_size ? HM_OK : HM_ERR_INVALID;
}

/* ---- Documents ---- */

int ledger_document_put(struct ledger_txn *txn, const char *number, const char *json)
{
    MDB_val key = { strlen(number), (void *)number }, value = { strlen(json), (void *)json };
    int rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_DOCUMENTS], &key, &value,
                     MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return HM_ERR_EXISTS;
    return rc == 0 ? HM_OK : status_of(rc, "store document");
}

int ledger_document_replace(struct ledger_txn *txn, const char *number, const char *json)
{
    MDB_val key = { strlen(number), (void *)number }, value;
    int rc = table_get(txn->txn, txn->ledger, TABLE_DOCUMENTS, &key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    value.mv_size = strlen(json);
    value.mv_data = (void *)json;
    if (rc == 0)
        rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_DOCUMENTS], &key, &value, 0);
    return rc == 0 ? HM_OK : status_of(rc, "replace document");
}

static char *text_copy(const MDB_val *value)
{
    char *text = malloc(value->mv_size + 1);
    if (text != NULL) {
        memcpy(text, value->mv_data, value->mv_size);
        text[value->mv_size] = '\0';
    }
    return text;
}

/* Returns 1 when an invoice stored in place by an older ledger has this number. */
static int legacy_invoice_has_number(const MDB_val *value, const char *number)
{
    if (value->mv_size == 0 || ((const char *)value->mv_data)[0] != '{')
        return 0;
    json_error_t error;
    json_t *json = json_loadb(value->mv_data, value->mv_size, 0, &error);
    const char *stored = json_string_value(json_object_get(json, "invoice_number"));
    int same = stored != NULL && strcmp(stored, number) == 0;
    json_decref(json);
    return same;
}

static int document_read(struct ledger *ledger, MDB_txn *txn, const char *number, char **json_out)
{
    MDB_val key = { strlen(number), (void *)number }, value;
    int rc = table_get(txn, ledger, TABLE_DOCUMENTS, &key, &value);
    if (rc == MDB_NOTFOUND) {
        /* An invoice sealed before documents had their own table is found by its period. */
        MDB_cursor *cursor;
        if ((rc = table_cursor_open(txn, ledger, TABLE_INVOICES, &cursor)) != 0)
            return status_of(rc, "open invoice cursor");
        MDB_cursor_op op = MDB_FIRST;
        while ((rc = cursor_get(cursor, &key, &value, op)) == 0 &&
               !legacy_invoice_has_number(&value, number))
            op = MDB_NEXT;
        cursor_close(cursor);
    }
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read document");
    *json_out = text_copy(&value);
    return *json_out ? HM_OK : HM_ERR_NOMEM;
}

int ledger_document_get(struct ledger *ledger, const char *number, char **json_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = document_read(ledger, txn, number, json_out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_document_get_txn(struct ledger_txn *txn, const char *number, char **json_out)
{
    return document_read(txn->ledger, txn->txn, number, json_out);
}

static int table_each(MDB_txn *txn, const struct ledger *ledger, enum table table,
                      int legacy_only,
                      int (*visit)(void *context, const char *number, const char *json),
                      void *context)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, table, &cursor);
    if (rc != 0)
        return status_of(rc, "open document cursor");
    int status = HM_OK;
    MDB_val key, value;
    MDB_cursor_op op = MDB_FIRST;
    while (status == HM_OK && (rc = cursor_get(cursor, &key, &value, op)) == 0) {
        op = MDB_NEXT;
        if (legacy_only && (value.mv_size == 0 || ((const char *)value.mv_data)[0] != '{'))
            continue;
        char *number = legacy_only ? NULL : text_copy(&key);
        char *json = text_copy(&value);
        if (json == NULL || (!legacy_only && number == NULL))
            status = HM_ERR_NOMEM;
        else
            status = visit(context, number, json);
        free(number);
        free(json);
    }
    cursor_close(cursor);
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read documents");
    return status;
}

int ledger_document_each(struct ledger *ledger,
                         int (*visit)(void *context, const char *number, const char *json),
                         void *context)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = table_each(txn, ledger, TABLE_DOCUMENTS, 0, visit, context);
    if (rc == HM_OK)
        rc = table_each(txn, ledger, TABLE_INVOICES, 1, visit, context);
    mdb_txn_abort(txn);
    return rc;
}

/* ---- Periods and their current invoice ---- */

int ledger_period_close_with(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                             uint32_t period, const char *number)
{
    struct ledger *ledger = txn->ledger;
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    uint8_t closed = 1;
    MDB_val flag = { 1, &closed };
    int rc = mdb_put(txn->txn, ledger->tables[TABLE_PERIODS], &key, &flag, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return HM_ERR_STATE;
    if (rc != 0)
        return status_of(rc, "close period");
    MDB_val pointer = { strlen(number), (void *)number };
    rc = mdb_put(txn->txn, ledger->tables[TABLE_INVOICES], &key, &pointer, 0);
    return rc == 0 ? HM_OK : status_of(rc, "store invoice number");
}

int ledger_invoice_point(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period, const char *number)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    MDB_val pointer = { strlen(number), (void *)number };
    int rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_INVOICES], &key, &pointer, 0);
    return rc == 0 ? HM_OK : status_of(rc, "store invoice number");
}

int ledger_period_reopen(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    int rc = mdb_del(txn->txn, txn->ledger->tables[TABLE_PERIODS], &key, NULL);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_STATE;
    return rc == 0 ? HM_OK : status_of(rc, "reopen period");
}

int ledger_invoice_number_txn(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                              uint32_t period, char *number_out, size_t number_size)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes }, value;
    int rc = table_get(txn->txn, txn->ledger, TABLE_INVOICES, &key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read invoice number");
    if (value.mv_size > 0 && ((const char *)value.mv_data)[0] == '{') {
        json_error_t error;
        json_t *json = json_loadb(value.mv_data, value.mv_size, 0, &error);
        const char *number = json_string_value(json_object_get(json, "invoice_number"));
        rc = number ? HM_OK : HM_ERR_NOT_FOUND;
        if (number)
            snprintf(number_out, number_size, "%s", number);
        json_decref(json);
        return rc;
    }
    snprintf(number_out, number_size, "%.*s", (int)value.mv_size, (const char *)value.mv_data);
    return HM_OK;
}

/* ---- Price book snapshots ---- */

void ledger_book_sha256(const char *json, char hex_out[BOOK_SHA256_HEX_SIZE])
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    if (!EVP_Digest(json, strlen(json), digest, &digest_size, EVP_sha256(), NULL))
        memset(digest, 0, 32);
    hex_encode(digest, 32, hex_out);
    hex_out[64] = '\0';
}

int ledger_pricebook_get_snapshot(struct ledger *ledger, const char *scope, char **json_out,
                                  char sha256_out[BOOK_SHA256_HEX_SIZE])
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val key = { strlen(scope), (void *)scope }, value;
    int mdb_rc = table_get(txn, ledger, TABLE_PRICEBOOKS, &key, &value);
    if (mdb_rc == 0 && ledger_pricebook_is_reference(&value)) {
        snprintf(sha256_out, BOOK_SHA256_HEX_SIZE, "%.64s", (const char *)value.mv_data);
        MDB_val hash = value;
        mdb_rc = table_get(txn, ledger, TABLE_BOOK_SNAPSHOTS, &hash, &value);
        if (mdb_rc == MDB_NOTFOUND) {
            log_error("ledger", "price book scope %s names snapshot %s, which is not stored",
                      scope, sha256_out);
            mdb_txn_abort(txn);
            return HM_ERR_STORAGE;
        }
    }
    if (mdb_rc == 0) {
        *json_out = text_copy(&value);
        rc = *json_out ? HM_OK : HM_ERR_NOMEM;
        if (rc == HM_OK)
            ledger_book_sha256(*json_out, sha256_out);
    } else {
        rc = mdb_rc == MDB_NOTFOUND ? HM_ERR_NOT_FOUND : status_of(mdb_rc, "read price book");
    }
    mdb_txn_abort(txn);
    return rc;
}

int ledger_book_snapshot_get(struct ledger *ledger, const char *sha256_hex, char **json_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val key = { strlen(sha256_hex), (void *)sha256_hex }, value;
    int mdb_rc = table_get(txn, ledger, TABLE_BOOK_SNAPSHOTS, &key, &value);
    if (mdb_rc == 0) {
        *json_out = text_copy(&value);
        rc = *json_out ? HM_OK : HM_ERR_NOMEM;
    } else {
        rc = mdb_rc == MDB_NOTFOUND ? HM_ERR_NOT_FOUND : status_of(mdb_rc, "read book snapshot");
    }
    mdb_txn_abort(txn);
    return rc;
}

int ledger_book_snapshot_put(struct ledger_txn *txn, const char *json)
{
    char sha256[BOOK_SHA256_HEX_SIZE];
    ledger_book_sha256(json, sha256);
    MDB_val key = { BOOK_SHA256_HEX_SIZE - 1, sha256 }, value = { strlen(json), (void *)json };
    int rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_BOOK_SNAPSHOTS], &key, &value,
                     MDB_NOOVERWRITE);
    return rc == 0 || rc == MDB_KEYEXIST ? HM_OK : status_of(rc, "store book snapshot");
}

/* ---- Credit grants ---- */

static void credit_key(uint8_t key[UUID_SIZE + 8], const uint8_t tenant_id[UUID_SIZE],
                       uint64_t id)
{
    memcpy(key, tenant_id, UUID_SIZE);
    store_be64(key + UUID_SIZE, id);
}

/* Returns 1 when jansson takes the text as a JSON string, that is, when it is UTF-8. */
static int text_is_utf8(const char *text)
{
    json_t *string = json_string(text);
    json_decref(string);
    return string != NULL;
}

static json_t *credit_to_json(const struct credit_grant *grant)
{
    json_t *uses = json_array();
    int failed = 0;
    for (size_t i = 0; uses != NULL && i < grant->use_count; i++)
        json_add(uses, NULL, json_pack("{s:s, s:I, s:I}", "number", grant->uses[i].number,
                                       "change_minor", (json_int_t)grant->uses[i].change_minor,
                                       "at_s", (json_int_t)grant->uses[i].at_s),
                 &failed);
    json_t *json = json_pack("{s:s, s:I, s:I, s:I, s:I, s:s, s:o}", "currency", grant->currency,
                             "amount_minor", (json_int_t)grant->amount_minor, "balance_minor",
                             (json_int_t)grant->balance_minor, "granted_s",
                             (json_int_t)grant->granted_s, "expires_s",
                             (json_int_t)grant->expires_s, "note", grant->note, "uses", uses);
    /* Written only when revoked; older versions read such a grant as one with balance 0. */
    if (json != NULL && grant->revoked_s != 0)
        json_add(json, "revoked",
                 json_pack("{s:I, s:I, s:s}", "at_s", (json_int_t)grant->revoked_s,
                           "balance_minor", (json_int_t)grant->revoked_balance_minor, "reason",
                           grant->revoke_reason),
                 &failed);
    return json_built(json, failed);
}

static int credit_from_json(json_t *json, struct credit_grant *out)
{
    copy_string(json, "currency", out->currency, sizeof out->currency);
    out->amount_minor = integer_of(json, "amount_minor");
    out->balance_minor = integer_of(json, "balance_minor");
    out->granted_s = integer_of(json, "granted_s");
    out->expires_s = integer_of(json, "expires_s");
    copy_string(json, "note", out->note, sizeof out->note);
    json_t *revoked = json_object_get(json, "revoked");
    out->revoked_s = integer_of(revoked, "at_s");
    out->revoked_balance_minor = integer_of(revoked, "balance_minor");
    copy_string(revoked, "reason", out->revoke_reason, sizeof out->revoke_reason);
    json_t *uses = json_object_get(json, "uses");
    out->use_count = 0;
    out->uses = calloc(json_array_size(uses) + 1, sizeof *out->uses);
    if (out->uses == NULL)
        return HM_ERR_NOMEM;
    size_t index;
    json_t *use;
    json_array_foreach(uses, index, use) {
        struct credit_use *entry = &out->uses[out->use_count++];
        copy_string(use, "number", entry->number, sizeof entry->number);
        entry->change_minor = integer_of(use, "change_minor");
        entry->at_s = integer_of(use, "at_s");
    }
    return HM_OK;
}

int ledger_credit_grant(struct ledger *ledger, struct credit_grant *grant)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    static const char name[] = "credit_seq";
    MDB_val key = { sizeof name - 1, (void *)name }, value;
    uint64_t seq = 0;
    int mdb_rc = table_get(txn, ledger, TABLE_META, &key, &value);
    if (mdb_rc == 0 && value.mv_size == sizeof seq)
        memcpy(&seq, value.mv_data, sizeof seq);
    else if (mdb_rc != MDB_NOTFOUND)
        return write_end(txn, mdb_rc == 0 ? HM_ERR_STORAGE : status_of(mdb_rc, "read grant id"));
    seq++;
    value.mv_size = sizeof seq;
    value.mv_data = &seq;
    mdb_rc = mdb_put(txn, ledger->tables[TABLE_META], &key, &value, 0);
    if (mdb_rc != 0)
        return write_end(txn, status_of(mdb_rc, "write grant id"));

    /* A note that is not UTF-8 would fail as JSON and read as out of memory. */
    if (!text_is_utf8(grant->note))
        return write_end(txn, HM_ERR_INVALID);
    grant->id = seq;
    grant->balance_minor = grant->amount_minor;
    grant->use_count = 0;
    grant->uses = NULL;
    uint8_t key_bytes[UUID_SIZE + 8];
    credit_key(key_bytes, grant->tenant_id, grant->id);
    MDB_val grant_key = { sizeof key_bytes, key_bytes };
    rc = record_put(txn, ledger->tables[TABLE_CREDITS], &grant_key, credit_to_json(grant),
                    MDB_NOOVERWRITE, "store credit grant");
    return write_end(txn, rc);
}

void ledger_credit_grants_free(struct credit_grant *grants, size_t count)
{
    for (size_t i = 0; grants != NULL && i < count; i++)
        free(grants[i].uses);
    free(grants);
}

int ledger_credit_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       struct credit_grant **grants_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    if ((rc = table_cursor_open(txn, ledger, TABLE_CREDITS, &cursor)) != 0) {
        mdb_txn_abort(txn);
        return status_of(rc, "open credit cursor");
    }
    struct credit_grant *grants = NULL;
    size_t count = 0, capacity = 0;
    int status = HM_OK;
    MDB_val key = { UUID_SIZE, (void *)tenant_id }, value;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (status == HM_OK && rc == 0 && key.mv_size == UUID_SIZE + 8 &&
           memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 8;
            struct credit_grant *grown = realloc(grants, capacity * sizeof *grown);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            grants = grown;
        }
        struct credit_grant *grant = &grants[count];
        memset(grant, 0, sizeof *grant);
        grant->id = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
        memcpy(grant->tenant_id, tenant_id, UUID_SIZE);
        json_t *json = NULL;
        status = record_get(txn, ledger, TABLE_CREDITS, &key, "credit grant", &json);
        if (status == HM_OK) {
            status = credit_from_json(json, grant);
            count++;
        }
        json_decref(json);
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    cursor_close(cursor);
    mdb_txn_abort(txn);
    /* A failed read is an error, not the end, because a close would skip the grants after it. */
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read credit grants");
    if (status != HM_OK) {
        ledger_credit_grants_free(grants, count);
        return status;
    }
    *grants_out = grants;
    *count_out = count;
    return HM_OK;
}

int ledger_credit_change(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t grant_id, int64_t change_minor, const char *number,
                         int64_t at_s)
{
    struct ledger *ledger = txn->ledger;
    uint8_t key_bytes[UUID_SIZE + 8];
    credit_key(key_bytes, tenant_id, grant_id);
    MDB_val key = { sizeof key_bytes, key_bytes };
    json_t *json = NULL;
    int rc = record_get(txn->txn, ledger, TABLE_CREDITS, &key, "credit grant", &json);
    if (rc != HM_OK)
        return rc;
    struct credit_grant grant = { .id = grant_id };
    memcpy(grant.tenant_id, tenant_id, UUID_SIZE);
    rc = credit_from_json(json, &grant);
    json_decref(json);
    int64_t balance;
    if (rc == HM_OK && (__builtin_add_overflow(grant.balance_minor, change_minor, &balance) ||
                        balance < 0 || balance > grant.amount_minor))
        rc = HM_ERR_INVALID;
    /* What a void gives back to a revoked grant is recorded, but the revocation keeps it. */
    if (rc == HM_OK && grant.revoked_s != 0 && change_minor > 0)
        balance = grant.balance_minor;
    if (rc == HM_OK) {
        grant.balance_minor = balance;
        struct credit_use *use = &grant.uses[grant.use_count++];
        snprintf(use->number, sizeof use->number, "%s", number);
        use->change_minor = change_minor;
        use->at_s = at_s;
        rc = record_put(txn->txn, ledger->tables[TABLE_CREDITS], &key, credit_to_json(&grant), 0,
                        "update credit grant");
    }
    free(grant.uses);
    return rc;
}

int ledger_credit_revoke(struct ledger *ledger, uint64_t grant_id, const char *reason,
                         int64_t now_s, struct credit_grant *grant_out)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    int mdb_rc = table_cursor_open(txn, ledger, TABLE_CREDITS, &cursor);
    if (mdb_rc != 0)
        return write_end(txn, status_of(mdb_rc, "open credit cursor"));

    /* Grants are keyed by tenant first, so the id is found by a scan. */
    uint8_t key_bytes[UUID_SIZE + 8];
    MDB_val key, value;
    rc = HM_ERR_NOT_FOUND;
    mdb_rc = cursor_get(cursor, &key, &value, MDB_FIRST);
    while (mdb_rc == 0 && rc == HM_ERR_NOT_FOUND) {
        if (key.mv_size == sizeof key_bytes &&
            load_be64((const uint8_t *)key.mv_data + UUID_SIZE) == grant_id) {
            memcpy(key_bytes, key.mv_data, sizeof key_bytes);
            rc = HM_OK;
        }
        mdb_rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    cursor_close(cursor);
    if (rc == HM_ERR_NOT_FOUND && mdb_rc != MDB_NOTFOUND)
        rc = status_of(mdb_rc, "read credit grants");
    if (rc != HM_OK)
        return write_end(txn, rc);

    key.mv_size = sizeof key_bytes;
    key.mv_data = key_bytes;
    json_t *json = NULL;
    rc = record_get(txn, ledger, TABLE_CREDITS, &key, "credit grant", &json);
    struct credit_grant grant = { .id = grant_id };
    memcpy(grant.tenant_id, key_bytes, UUID_SIZE);
    if (rc == HM_OK)
        rc = credit_from_json(json, &grant);
    json_decref(json);
    if (rc == HM_OK && grant.revoked_s != 0)
        rc = HM_ERR_STATE;
    if (rc == HM_OK && !text_is_utf8(reason))
        rc = HM_ERR_INVALID;
    if (rc == HM_OK) {
        grant.revoked_s = now_s;
        grant.revoked_balance_minor = grant.balance_minor;
        snprintf(grant.revoke_reason, sizeof grant.revoke_reason, "%s", reason);
        grant.balance_minor = 0;
        rc = record_put(txn, ledger->tables[TABLE_CREDITS], &key, credit_to_json(&grant), 0,
                        "revoke credit grant");
    }
    free(grant.uses);
    grant.uses = NULL;
    grant.use_count = 0;
    if (rc == HM_OK && grant_out != NULL)
        *grant_out = grant;
    return write_end(txn, rc);
}

/* ---- Billed state ---- */

void ledger_billed_free(struct billed_period *billed)
{
    if (billed == NULL)
        return;
    free(billed->changes);
    billed->changes = NULL;
    billed->change_count = 0;
}

static int billed_from_json(json_t *json, uint32_t period, struct billed_period *out)
{
    memset(out, 0, sizeof *out);
    out->period = period;
    copy_string(json, "number", out->number, sizeof out->number);
    copy_string(json, "issuer", out->issuer, sizeof out->issuer);
    copy_string(json, "currency", out->currency, sizeof out->currency);
    copy_string(json, "price_book_sha256", out->book_sha256, sizeof out->book_sha256);
    out->events = (uint64_t)integer_of(json, "events");
    out->net_minor = integer_of(json, "net_minor");
    out->total_minor = integer_of(json, "total_minor");
    out->recheck = json_is_true(json_object_get(json, "recheck"));
    json_t *billed_with = json_object_get(json, "billed_with");
    if (json_is_object(billed_with)) {
        out->has_billed_with = 1;
        copy_string(billed_with, "support_tier", out->support_tier, sizeof out->support_tier);
        out->service_start_s = integer_of(billed_with, "service_start_s");
        out->service_end_s = integer_of(billed_with, "service_end_s");
    }
    json_t *meter_events = json_object_get(json, "meter_events");
    if (json_is_array(meter_events) && json_array_size(meter_events) == ROLLUP_EVENTS + 1) {
        out->has_meter_events = 1;
        for (size_t i = 0; i <= ROLLUP_EVENTS; i++)
            out->meter_events[i] = (uint64_t)json_integer_value(json_array_get(meter_events, i));
    }
    copy_string(json, "usage_sha256", out->usage_sha256, sizeof out->usage_sha256);
    json_t *changes = json_object_get(json, "changes");
    out->changes = calloc(json_array_size(changes) + 1, sizeof *out->changes);
    if (out->changes == NULL)
        return HM_ERR_NOMEM;
    size_t index;
    json_t *change;
    json_array_foreach(changes, index, change) {
        struct billed_change *entry = &out->changes[out->change_count++];
        copy_string(change, "number", entry->number, sizeof entry->number);
        entry->amount_minor = integer_of(change, "amount_minor");
        entry->events_after = (uint64_t)integer_of(change, "events_after");
        entry->late_usage = json_is_true(json_object_get(change, "late_usage"));
    }
    return HM_OK;
}

static int billed_read(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period, struct billed_period *out)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    json_t *json = NULL;
    int rc = record_get_versioned(txn, ledger, TABLE_BILLED, &key, "billed period",
                                  BILLED_RECORD_VERSION, &json);
    if (rc != HM_OK)
        return rc;
    rc = billed_from_json(json, period, out);
    json_decref(json);
    return rc;
}

int ledger_billed_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                      uint32_t period, struct billed_period *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = billed_read(ledger, txn, tenant_id, period, out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_billed_get_txn(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          uint32_t period, struct billed_period *out)
{
    return billed_read(txn->ledger, txn->txn, tenant_id, period, out);
}

int ledger_billed_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       struct billed_period **periods_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    if ((rc = table_cursor_open(txn, ledger, TABLE_BILLED, &cursor)) != 0) {
        mdb_txn_abort(txn);
        return status_of(rc, "open billed cursor");
    }
    struct billed_period *periods = NULL;
    size_t count = 0, capacity = 0;
    int status = HM_OK;
    MDB_val key = { UUID_SIZE, (void *)tenant_id }, value;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (status == HM_OK && rc == 0 && key.mv_size == UUID_SIZE + 4 &&
           memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 8;
            struct billed_period *grown = realloc(periods, capacity * sizeof *grown);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            periods = grown;
        }
        const uint8_t *bytes = key.mv_data;
        uint32_t period = (uint32_t)bytes[16] << 24 | (uint32_t)bytes[17] << 16 |
                          (uint32_t)bytes[18] << 8 | bytes[19];
        json_t *json = NULL;
        status = record_get_versioned(txn, ledger, TABLE_BILLED, &key, "billed period",
                                      BILLED_RECORD_VERSION, &json);
        if (status == HM_OK)
            status = billed_from_json(json, period, &periods[count]);
        if (status == HM_OK)
            count++;
        json_decref(json);
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    cursor_close(cursor);
    mdb_txn_abort(txn);
    /* A failed read is an error, not the end, because a close would skip the later periods. */
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read billed periods");
    if (status != HM_OK) {
        for (size_t i = 0; i < count; i++)
            ledger_billed_free(&periods[i]);
        free(periods);
        return status;
    }
    *periods_out = periods;
    *count_out = count;
    return HM_OK;
}

int ledger_billed_put(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                      const struct billed_period *billed)
{
    json_t *changes = json_array();
    int failed = 0;
    for (size_t i = 0; changes != NULL && i < billed->change_count; i++) {
        const struct billed_change *change = &billed->changes[i];
        json_add(changes, NULL,
                 json_pack("{s:s, s:I, s:I, s:b}", "number", change->number, "amount_minor",
                           (json_int_t)change->amount_minor, "events_after",
                           (json_int_t)change->events_after, "late_usage", change->late_usage),
                 &failed);
    }
    json_t *json = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:b, s:o}", "number",
                             billed->number, "issuer", billed->issuer, "currency",
                             billed->currency, "price_book_sha256", billed->book_sha256,
                             "events", (json_int_t)billed->events, "net_minor",
                             (json_int_t)billed->net_minor, "total_minor",
                             (json_int_t)billed->total_minor, "recheck", billed->recheck,
                             "changes", changes);
    if (json != NULL && billed->has_billed_with)
        json_add(json, "billed_with",
                 json_pack("{s:s, s:I, s:I}", "support_tier", billed->support_tier,
                           "service_start_s", (json_int_t)billed->service_start_s,
                           "service_end_s", (json_int_t)billed->service_end_s),
                 &failed);
    /* Written only when known; older versions ignore it. */
    if (json != NULL && billed->has_meter_events) {
        json_t *meter_events = json_array();
        for (size_t i = 0; meter_events != NULL && i <= ROLLUP_EVENTS; i++)
            json_add(meter_events, NULL, json_integer((json_int_t)billed->meter_events[i]),
                     &failed);
        json_add(json, "meter_events", meter_events, &failed);
    }
    if (json != NULL && billed->usage_sha256[0] != '\0')
        json_add(json, "usage_sha256", json_string(billed->usage_sha256), &failed);
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, billed->period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    return record_put_versioned(txn->txn, txn->ledger->tables[TABLE_BILLED], &key,
                                json_built(json, failed), BILLED_RECORD_VERSION, 0,
                                "store billed period");
}

int ledger_billed_delete(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    int rc = mdb_del(txn->txn, txn->ledger->tables[TABLE_BILLED], &key, NULL);
    return rc == 0 || rc == MDB_NOTFOUND ? HM_OK : status_of(rc, "delete billed period");
}

/* ---- Periods with events ---- */

struct period_list {
    uint32_t *periods;
    size_t count;
    size_t capacity;
    uint32_t before;
};

/* Adds a period before list->before that the list lacks. HM_ERR_NOMEM. */
static int period_list_add(struct period_list *list, uint32_t period)
{
    if (period >= list->before)
        return HM_OK;
    for (size_t i = 0; i < list->count; i++) {
        if (list->periods[i] == period)
            return HM_OK;
    }
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? 2 * list->capacity : 16;
        uint32_t *grown = realloc(list->periods, capacity * sizeof *grown);
        if (grown == NULL)
            return HM_ERR_NOMEM;
        list->periods = grown;
        list->capacity = capacity;
    }
    list->periods[list->count++] = period;
    return HM_OK;
}

/* Adds the period of a change in the rollup log that is not folded yet. */
static int logged_period_add(void *context, const uint8_t *key, size_t key_size,
                             unsigned __int128 quantity, uint64_t count)
{
    (void)key_size;
    (void)quantity;
    (void)count;
    return period_list_add(context, rollup_key_period(key));
}

static int period_order(const void *a, const void *b)
{
    uint32_t left = *(const uint32_t *)a, right = *(const uint32_t *)b;
    return left < right ? -1 : left > right;
}

int ledger_event_periods(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t before_period, uint32_t **periods_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    int mdb_rc = table_cursor_open(txn, ledger, TABLE_ROLLUPS, &cursor);
    if (mdb_rc != 0) {
        mdb_txn_abort(txn);
        return status_of(mdb_rc, "open rollup cursor");
    }
    struct period_list list = { .before = before_period };
    int status = HM_OK;
    uint8_t seek[UUID_SIZE + 4];
    period_key(seek, tenant_id, 0);
    MDB_val key = { sizeof seek, seek }, value;
    mdb_rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    while (status == HM_OK && mdb_rc == 0 && key.mv_size >= UUID_SIZE + 4 &&
           memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        uint32_t period = rollup_key_period(key.mv_data);
        if (period >= before_period)
            break;
        status = period_list_add(&list, period);
        /* Skips the period's other rows: the next key is at or after the next period number. */
        period_key(seek, tenant_id, period + 1);
        key.mv_size = sizeof seek;
        key.mv_data = seek;
        mdb_rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    }
    cursor_close(cursor);
    if (status == HM_OK && mdb_rc != 0 && mdb_rc != MDB_NOTFOUND)
        status = status_of(mdb_rc, "read rollups");
    if (status == HM_OK)
        status = rollup_log_each_read(ledger, txn, tenant_id, UUID_SIZE, logged_period_add, &list);
    mdb_txn_abort(txn);
    if (status != HM_OK) {
        free(list.periods);
        return status;
    }
    if (list.count > 1)
        qsort(list.periods, list.count, sizeof *list.periods, period_order);
    *periods_out = list.periods;
    *count_out = list.count;
    return HM_OK;
}
