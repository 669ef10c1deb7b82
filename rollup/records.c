/*
 * Tenants, API keys, price books, closed periods and invoices in the ledger.
 * NOTE: tenants and keys are stored as the raw bytes of their C structs, with
 * no format version, so a change to either struct needs a migration. Key
 * records are distinguished by size, because the expiry was appended to the end.
 */
#include "ledger.h"
#include "ledger_private.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int write_begin(struct ledger *ledger, MDB_txn **txn)
{
    int rc = txn_begin(ledger, 0, txn);
    return rc == 0 ? HM_OK : status_of(rc, "begin write transaction");
}

static int write_commit(MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    if (rc == 0)
        ledger_full_logged = 0;
    return rc == 0 ? HM_OK : status_of(rc, "commit");
}

/* Reads one value into a caller buffer of exactly `size` bytes. */
static int get_fixed(struct ledger *ledger, MDB_txn *txn, enum table table, MDB_val *key,
                     void *out, size_t size)
{
    MDB_val value;
    int rc = table_get(txn, ledger, table, key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read record");
    if (value.mv_size != size) {
        log_error("ledger", "record of table %d has size %zu, expected %zu", (int)table,
                  value.mv_size, size);
        return HM_ERR_STORAGE;
    }
    memcpy(out, value.mv_data, size);
    return HM_OK;
}

static int get_text(struct ledger *ledger, enum table table, MDB_val *key, char **text_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val value;
    rc = table_get(txn, ledger, table, key, &value);
    if (rc == 0) {
        char *text = malloc(value.mv_size + 1);
        if (text != NULL) {
            memcpy(text, value.mv_data, value.mv_size);
            text[value.mv_size] = '\0';
            *text_out = text;
        }
        rc = text ? HM_OK : HM_ERR_NOMEM;
    } else {
        rc = rc == MDB_NOTFOUND ? HM_ERR_NOT_FOUND : status_of(rc, "read record");
    }
    mdb_txn_abort(txn);
    return rc;
}

/* ---- Tenants ---- */

int ledger_tenant_create(struct ledger *ledger, const struct tenant *tenant)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val name = { strlen(tenant->name), (void *)tenant->name };
    MDB_val id = { UUID_SIZE, (void *)tenant->id };
    MDB_val value = { sizeof *tenant, (void *)tenant };
    rc = mdb_put(txn, ledger->tables[TABLE_NAMES], &name, &id, MDB_NOOVERWRITE);
    if (rc == 0)
        rc = mdb_put(txn, ledger->tables[TABLE_TENANTS], &id, &value, MDB_NOOVERWRITE);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc == MDB_KEYEXIST ? HM_ERR_EXISTS : status_of(rc, "create tenant");
    }
    return write_commit(txn);
}

int ledger_tenant_get(struct ledger *ledger, const uint8_t id[UUID_SIZE], struct tenant *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val key = { UUID_SIZE, (void *)id };
    rc = get_fixed(ledger, txn, TABLE_TENANTS, &key, out, sizeof *out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_tenant_find(struct ledger *ledger, const char *name_or_id, struct tenant *out)
{
    uint8_t id[UUID_SIZE];
    if (uuid_parse(name_or_id, id) == HM_OK)
        return ledger_tenant_get(ledger, id, out);

    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val key = { strlen(name_or_id), (void *)name_or_id };
    rc = get_fixed(ledger, txn, TABLE_NAMES, &key, id, UUID_SIZE);
    mdb_txn_abort(txn);
    return rc == HM_OK ? ledger_tenant_get(ledger, id, out) : rc;
}

int ledger_tenant_list(struct ledger *ledger, struct tenant **tenants_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    rc = table_cursor_open(txn, ledger, TABLE_NAMES, &cursor);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return status_of(rc, "open tenant cursor");
    }
    struct tenant *tenants = NULL;
    size_t count = 0, capacity = 0;
    int status = HM_OK;
    MDB_val key, value;
    while ((rc = cursor_get(cursor, &key, &value, count ? MDB_NEXT : MDB_FIRST)) == 0) {
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            struct tenant *grown = realloc(tenants, capacity * sizeof *grown);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            tenants = grown;
        }
        status = get_fixed(ledger, txn, TABLE_TENANTS, &value, &tenants[count], sizeof *tenants);
        if (status != HM_OK)
            break;
        count++;
    }
    cursor_close(cursor);
    /* A failed read is an error, not the end of the list, because a close would skip the rest. */
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read tenants");
    mdb_txn_abort(txn);
    if (status != HM_OK) {
        free(tenants);
        return status;
    }
    *tenants_out = tenants;
    *count_out = count;
    return HM_OK;
}

/* ---- API keys ---- */

/* Size of a key record without expires_s: the only layout that older ledgers hold. */
#define KEY_RECORD_V1_SIZE offsetof(struct key_record, expires_s)
_Static_assert(KEY_RECORD_V1_SIZE == 112, "the older key layout must keep its size");

/* Returns the short layout's size for a key without expiry, so that older builds can read it. */
static size_t key_value_size(const struct key_record *key)
{
    return key->expires_s != 0 ? sizeof *key : KEY_RECORD_V1_SIZE;
}

/* Reads a key record of either layout; the older one has no expiry. */
static int key_decode(const MDB_val *value, struct key_record *out)
{
    if (value->mv_size != sizeof *out && value->mv_size != KEY_RECORD_V1_SIZE) {
        log_error("ledger", "key record has size %zu, expected %zu or %zu", value->mv_size,
                  (size_t)KEY_RECORD_V1_SIZE, sizeof *out);
        return HM_ERR_STORAGE;
    }
    memset(out, 0, sizeof *out);
    memcpy(out, value->mv_data, value->mv_size);
    return HM_OK;
}

static int key_read(struct ledger *ledger, MDB_txn *txn, uint64_t key_id,
                    struct key_record *out)
{
    uint8_t id[8];
    store_be64(id, key_id);
    MDB_val key = { sizeof id, id }, value;
    int rc = table_get(txn, ledger, TABLE_KEYS, &key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read key");
    return key_decode(&value, out);
}

int ledger_key_put(struct ledger *ledger, const struct key_record *key)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    uint8_t id[8];
    store_be64(id, key->key_id);
    MDB_val key_val = { sizeof id, id }, value = { key_value_size(key), (void *)key };
    rc = mdb_put(txn, ledger->tables[TABLE_KEYS], &key_val, &value, MDB_NOOVERWRITE);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc == MDB_KEYEXIST ? HM_ERR_EXISTS : status_of(rc, "store key");
    }
    return write_commit(txn);
}

int ledger_key_get(struct ledger *ledger, uint64_t key_id, struct key_record *out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    rc = key_read(ledger, txn, key_id, out);
    mdb_txn_abort(txn);
    return rc;
}

int ledger_key_revoke(struct ledger *ledger, uint64_t key_id, int64_t now_s)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    uint8_t id[8];
    store_be64(id, key_id);
    MDB_val key = { sizeof id, id };
    struct key_record record;
    rc = key_read(ledger, txn, key_id, &record);
    if (rc == HM_OK && record.status == KEY_REVOKED)
        rc = HM_ERR_STATE;
    if (rc == HM_OK) {
        record.status = KEY_REVOKED;
        record.revoked_s = now_s;
        MDB_val value = { key_value_size(&record), &record };
        int mdb_rc = mdb_put(txn, ledger->tables[TABLE_KEYS], &key, &value, 0);
        rc = mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "revoke key");
    }
    if (rc != HM_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return write_commit(txn);
}

int ledger_key_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                    struct key_record **keys_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_cursor *cursor;
    rc = table_cursor_open(txn, ledger, TABLE_KEYS, &cursor);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return status_of(rc, "open key cursor");
    }
    struct key_record *keys = NULL;
    size_t count = 0, capacity = 0;
    int status = HM_OK;
    MDB_val key, value;
    MDB_cursor_op op = MDB_FIRST;
    while ((rc = cursor_get(cursor, &key, &value, op)) == 0) {
        op = MDB_NEXT;
        struct key_record record;
        if (key_decode(&value, &record) != HM_OK ||
            memcmp(record.tenant_id, tenant_id, UUID_SIZE) != 0)
            continue;
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 8;
            struct key_record *grown = realloc(keys, capacity * sizeof *grown);
            if (grown == NULL) {
                status = HM_ERR_NOMEM;
                break;
            }
            keys = grown;
        }
        keys[count++] = record;
    }
    cursor_close(cursor);
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read keys");
    mdb_txn_abort(txn);
    if (status != HM_OK) {
        free(keys);
        return status;
    }
    *keys_out = keys;
    *count_out = count;
    return HM_OK;
}

int ledger_read_begin(struct ledger *ledger)
{
    if (ledger->lookup_txn != NULL) {
        int rc = mdb_txn_renew(ledger->lookup_txn);
        if (rc == 0)
            return HM_OK;
        /* A grown map (MDB_MAP_RESIZED) or any other failure: start a new transaction. */
        mdb_txn_abort(ledger->lookup_txn);
        ledger->lookup_txn = NULL;
        if (rc != MDB_MAP_RESIZED)
            return status_of(rc, "renew read transaction");
    }
    return read_begin(ledger, &ledger->lookup_txn);
}

int ledger_key_lookup(struct ledger *ledger, uint64_t key_id, struct key_record *out)
{
    return key_read(ledger, ledger->lookup_txn, key_id, out);
}

void ledger_read_end(struct ledger *ledger)
{
    if (ledger->lookup_txn != NULL)
        mdb_txn_reset(ledger->lookup_txn);
}

/* ---- Price books, periods and invoices ---- */

/* A scope's value is the SHA-256 hex of a snapshot; older ledgers stored the book's text. */
int ledger_pricebook_is_reference(const MDB_val *value)
{
    if (value->mv_size != BOOK_SHA256_HEX_SIZE - 1)
        return 0;
    const char *text = value->mv_data;
    for (size_t i = 0; i < value->mv_size; i++) {
        if (!((text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f')))
            return 0;
    }
    return 1;
}

int ledger_pricebook_put(struct ledger *ledger, const char *scope, const char *json)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    char sha256[BOOK_SHA256_HEX_SIZE];
    ledger_book_sha256(json, sha256);
    MDB_val hash = { BOOK_SHA256_HEX_SIZE - 1, sha256 };
    MDB_val text = { strlen(json), (void *)json };
    rc = mdb_put(txn, ledger->tables[TABLE_BOOK_SNAPSHOTS], &hash, &text, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        rc = 0;
    MDB_val key = { strlen(scope), (void *)scope };
    if (rc == 0)
        rc = mdb_put(txn, ledger->tables[TABLE_PRICEBOOKS], &key, &hash, 0);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return status_of(rc, "store price book");
    }
    return write_commit(txn);
}

int ledger_pricebook_get(struct ledger *ledger, const char *scope, char **json_out)
{
    char sha256[BOOK_SHA256_HEX_SIZE];
    return ledger_pricebook_get_snapshot(ledger, scope, json_out, sha256);
}

static void period_key(uint8_t key[UUID_SIZE + 4], const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period)
{
    memcpy(key, tenant_id, UUID_SIZE);
    store_be32(key + UUID_SIZE, period);
}

int ledger_period_closed(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes }, value;
    rc = table_get(txn, ledger, TABLE_PERIODS, &key, &value);
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc == 0 ? 1 : status_of(rc, "read period");
}

int ledger_period_close(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        uint32_t period, const char *invoice_json)
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
    MDB_val invoice = { strlen(invoice_json), (void *)invoice_json };
    rc = mdb_put(txn->txn, ledger->tables[TABLE_INVOICES], &key, &invoice, 0);
    return rc == 0 ? HM_OK : status_of(rc, "store invoice");
}

int ledger_next_invoice_seq(struct ledger_txn *txn, uint64_t *seq_out)
{
    static const char name[] = "invoice_seq";
    MDB_val key = { sizeof name - 1, (void *)name }, value;
    uint64_t seq = 0;
    int rc = table_get(txn->txn, txn->ledger, TABLE_META, &key, &value);
    if (rc == 0 && value.mv_size == sizeof seq)
        memcpy(&seq, value.mv_data, sizeof seq);
    else if (rc != MDB_NOTFOUND)
        return status_of(rc, "read invoice sequence");
    seq++;
    value.mv_size = sizeof seq;
    value.mv_data = &seq;
    rc = mdb_put(txn->txn, txn->ledger->tables[TABLE_META], &key, &value, 0);
    if (rc != 0)
        return status_of(rc, "write invoice sequence");
    *seq_out = seq;
    return HM_OK;
}

int ledger_invoice_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period, char **json_out)
{
    uint8_t key_bytes[UUID_SIZE + 4];
    period_key(key_bytes, tenant_id, period);
    MDB_val key = { sizeof key_bytes, key_bytes };
    char *value = NULL;
    int rc = get_text(ledger, TABLE_INVOICES, &key, &value);
    if (rc != HM_OK)
        return rc;
    /* Older ledgers stored the invoice itself; newer ones its document number. */
    if (value[0] == '{') {
        *json_out = value;
        return HM_OK;
    }
    MDB_val number = { strlen(value), value };
    rc = get_text(ledger, TABLE_DOCUMENTS, &number, json_out);
    if (rc == HM_ERR_NOT_FOUND) {
        log_error("ledger", "a period points to invoice %s, which is not stored", value);
        rc = HM_ERR_STORAGE;
    }
    free(value);
    return rc;
}
