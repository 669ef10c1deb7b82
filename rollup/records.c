/*
 * Tenants, API keys, price books, closed periods and invoices in the ledger.
 * NOTE: tenants and keys are stored as the raw bytes of their C structs, with
 * no format version, so a change to either struct needs a migration. Key
 * records are distinguished by size (see "API keys" below).
 */
#include "ledger.h"
#include "ledger_private.h"

#include <openssl/crypto.h>
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

/*
 * Key records come in three layouts, distinguished by size. The first ends at
 * revoked_s. The second adds expires_s; a key without expiry is still
 * stored in the first, so that older builds read it. Both hold the signing
 * key as it is. The third, written whenever the ledger has a master key,
 * has the whole struct with the signing key zeroed, then the id of the
 * master key and the signing key wrapped under it.
 */
#define KEY_RECORD_V1_SIZE offsetof(struct key_record, expires_s)
_Static_assert(KEY_RECORD_V1_SIZE == 112, "the older key layout must keep its size");
#define KEY_RECORD_WRAPPED_SIZE \
    (sizeof(struct key_record) + MASTER_KEY_ID_SIZE + MASTER_KEY_WRAP_SIZE)
_Static_assert(KEY_RECORD_WRAPPED_SIZE == 188, "the wrapped key layout must keep its size");

/* A key record as stored: the record and, in the wrapped layout, its wrapped signing key. */
struct key_value {
    struct key_record record; /* signing_key is zero while wrapped */
    int wrapped;
    uint8_t master_id[MASTER_KEY_ID_SIZE];
    uint8_t wrap[MASTER_KEY_WRAP_SIZE];
};

static void key_binding(const struct key_record *key, uint8_t out[MASTER_KEY_BINDING_SIZE])
{
    store_be64(out, key->key_id);
    memcpy(out + 8, key->tenant_id, UUID_SIZE);
}

void ledger_master_key_set(struct ledger *ledger, const struct master_key *master)
{
    master_key_clear(&ledger->master);
    ledger->has_master = master != NULL;
    if (master != NULL)
        ledger->master = *master;
}

/* Reads a key record of any layout, without unwrapping. */
static int key_decode(const MDB_val *value, struct key_value *out)
{
    size_t size = value->mv_size;
    if (size != sizeof out->record && size != KEY_RECORD_V1_SIZE &&
        size != KEY_RECORD_WRAPPED_SIZE) {
        log_error("ledger", "key record has size %zu, expected %zu, %zu or %zu", size,
                  (size_t)KEY_RECORD_V1_SIZE, sizeof out->record, (size_t)KEY_RECORD_WRAPPED_SIZE);
        return HM_ERR_STORAGE;
    }
    memset(out, 0, sizeof *out);
    const uint8_t *bytes = value->mv_data;
    memcpy(&out->record, bytes, size < sizeof out->record ? size : sizeof out->record);
    if (size == KEY_RECORD_WRAPPED_SIZE) {
        out->wrapped = 1;
        memcpy(out->master_id, bytes + sizeof out->record, MASTER_KEY_ID_SIZE);
        memcpy(out->wrap, bytes + sizeof out->record + MASTER_KEY_ID_SIZE, MASTER_KEY_WRAP_SIZE);
        memset(out->record.signing_key, 0, sizeof out->record.signing_key);
    }
    return HM_OK;
}

/*
 * Fills the signing key of a wrapped record. Returns HM_ERR_STATE when this
 * process has no master key or another one, and HM_ERR_STORAGE when the
 * wrapped bytes do not unwrap. Each failure is logged with the key and the fix.
 */
static int key_unwrap(struct ledger *ledger, struct key_value *value)
{
    if (!value->wrapped)
        return HM_OK;
    char wanted[MASTER_KEY_ID_TEXT_SIZE], have[MASTER_KEY_ID_TEXT_SIZE] = "none";
    master_key_id_text(value->master_id, wanted);
    if (ledger->has_master)
        master_key_id_text(ledger->master.id, have);
    int rc = HM_ERR_STATE;
    int same_master = ledger->has_master &&
                      memcmp(ledger->master.id, value->master_id, MASTER_KEY_ID_SIZE) == 0;
    if (same_master) {
        uint8_t binding[MASTER_KEY_BINDING_SIZE];
        key_binding(&value->record, binding);
        rc = master_key_unwrap(&ledger->master, binding, value->wrap, value->record.signing_key);
        if (rc == HM_OK)
            return HM_OK;
    }
    uint64_t suppressed = 0;
    if (!log_limit_pass(&ledger->key_log, &suppressed))
        return rc;
    if (rc == HM_ERR_STATE)
        log_error("ledger", "the signing key of key %016llx is wrapped with master key %s, and "
                  "this process has master key %s: give it the master key file that wrapped the "
                  "key (--master-key)%s", (unsigned long long)value->record.key_id, wanted, have,
                  suppressed ? " (earlier lines suppressed)" : "");
    else
        log_error("ledger", "the signing key of key %016llx does not unwrap with master key %s: "
                  "the record is damaged; revoke the key and create a new one%s",
                  (unsigned long long)value->record.key_id, have,
                  suppressed ? " (earlier lines suppressed)" : "");
    return rc;
}

/*
 * Writes a key record: a wrapped one keeps its wrapped key, and one stored
 * as is gets wrapped when the ledger has a master key.
 */
static int key_write(struct ledger *ledger, MDB_txn *txn, const struct key_value *value,
                     unsigned flags)
{
    uint8_t bytes[KEY_RECORD_WRAPPED_SIZE];
    struct key_value out = *value;
    size_t size;
    if (!out.wrapped && ledger->has_master) {
        uint8_t binding[MASTER_KEY_BINDING_SIZE];
        key_binding(&out.record, binding);
        int rc = master_key_wrap(&ledger->master, binding, out.record.signing_key, out.wrap);
        if (rc != HM_OK) {
            OPENSSL_cleanse(&out, sizeof out);
            return rc;
        }
        memcpy(out.master_id, ledger->master.id, MASTER_KEY_ID_SIZE);
        out.wrapped = 1;
    }
    if (out.wrapped) {
        memset(out.record.signing_key, 0, sizeof out.record.signing_key);
        memcpy(bytes, &out.record, sizeof out.record);
        memcpy(bytes + sizeof out.record, out.master_id, MASTER_KEY_ID_SIZE);
        memcpy(bytes + sizeof out.record + MASTER_KEY_ID_SIZE, out.wrap, MASTER_KEY_WRAP_SIZE);
        size = KEY_RECORD_WRAPPED_SIZE;
    } else {
        /* The short layout for a key without expiry, so that older builds can read it. */
        size = out.record.expires_s != 0 ? sizeof out.record : KEY_RECORD_V1_SIZE;
        memcpy(bytes, &out.record, size);
    }
    OPENSSL_cleanse(&out, sizeof out);
    uint8_t id[8];
    store_be64(id, value->record.key_id);
    MDB_val key = { sizeof id, id }, data = { size, bytes };
    int rc = mdb_put(txn, ledger->tables[TABLE_KEYS], &key, &data, flags);
    OPENSSL_cleanse(bytes, sizeof bytes);
    if (rc == MDB_KEYEXIST)
        return HM_ERR_EXISTS;
    return rc == 0 ? HM_OK : status_of(rc, "store key");
}

static int key_read_value(struct ledger *ledger, MDB_txn *txn, uint64_t key_id,
                          struct key_value *out)
{
    uint8_t id[8];
    store_be64(id, key_id);
    MDB_val key = { sizeof id, id }, value;
    int rc = table_get(txn, ledger, TABLE_KEYS, &key, &value);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read key");
    rc = key_decode(&value, out);
    /* The wrap is bound to the id inside the record: a record under another id is damage. */
    if (rc == HM_OK && out->record.key_id != key_id) {
        log_error("ledger", "the record of key %016llx contains key %016llx: the record is "
                  "damaged; revoke the key and create a new one", (unsigned long long)key_id,
                  (unsigned long long)out->record.key_id);
        OPENSSL_cleanse(out, sizeof *out);
        return HM_ERR_STORAGE;
    }
    return rc;
}

/* Reads a key record with its signing key. */
static int key_read(struct ledger *ledger, MDB_txn *txn, uint64_t key_id,
                    struct key_record *out)
{
    struct key_value value;
    int rc = key_read_value(ledger, txn, key_id, &value);
    if (rc == HM_OK)
        rc = key_unwrap(ledger, &value);
    if (rc == HM_OK)
        *out = value.record;
    OPENSSL_cleanse(&value, sizeof value);
    return rc;
}

int ledger_key_put(struct ledger *ledger, const struct key_record *key)
{
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct key_value value = { .record = *key };
    rc = key_write(ledger, txn, &value, MDB_NOOVERWRITE);
    OPENSSL_cleanse(&value, sizeof value);
    if (rc != HM_OK) {
        mdb_txn_abort(txn);
        return rc;
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
    struct key_value value;
    rc = key_read_value(ledger, txn, key_id, &value);
    if (rc == HM_OK && value.record.status == KEY_REVOKED)
        rc = HM_ERR_STATE;
    if (rc == HM_OK) {
        value.record.status = KEY_REVOKED;
        value.record.revoked_s = now_s;
        rc = key_write(ledger, txn, &value, 0);
    }
    OPENSSL_cleanse(&value, sizeof value);
    if (rc != HM_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return write_commit(txn);
}

/*
 * Calls `visit` with each key record of `txn` in key id order, decoded and
 * not unwrapped, and clears each copy after the call. Stops at the first
 * status other than HM_OK and returns it.
 */
static int keys_each(struct ledger *ledger, MDB_txn *txn,
                     int (*visit)(void *context, struct key_value *value), void *context)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_KEYS, &cursor);
    if (rc != 0)
        return status_of(rc, "open key cursor");
    int status = HM_OK;
    MDB_val key, data;
    MDB_cursor_op op = MDB_FIRST;
    while (status == HM_OK && (rc = cursor_get(cursor, &key, &data, op)) == 0) {
        op = MDB_NEXT;
        struct key_value value;
        status = key_decode(&data, &value);
        if (status == HM_OK)
            status = visit(context, &value);
        OPENSSL_cleanse(&value, sizeof value);
    }
    cursor_close(cursor);
    /* A failed read is an error, not the end of the keys. */
    if (status == HM_OK && rc != MDB_NOTFOUND)
        status = status_of(rc, "read keys");
    return status;
}

struct wrapped_count {
    size_t count;
    uint8_t *first_id;
};

static int wrapped_count_visit(void *context, struct key_value *value)
{
    struct wrapped_count *wrapped = context;
    if (value->wrapped && wrapped->count++ == 0)
        memcpy(wrapped->first_id, value->master_id, MASTER_KEY_ID_SIZE);
    return HM_OK;
}

int ledger_keys_wrapped(struct ledger *ledger, size_t *count_out,
                        uint8_t first_id[MASTER_KEY_ID_SIZE])
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct wrapped_count wrapped = { 0, first_id };
    rc = keys_each(ledger, txn, wrapped_count_visit, &wrapped);
    mdb_txn_abort(txn);
    *count_out = rc == HM_OK ? wrapped.count : 0;
    return rc;
}

/* The keys that ledger_keys_wrap writes, gathered first so that no put moves the cursor. */
struct wrap_walk {
    struct ledger *ledger;
    const struct master_key *old;
    struct ledger_key_wrap_counts *counts;
    struct key_value *pending;
    size_t capacity;
};

static int wrap_visit(void *context, struct key_value *value)
{
    struct wrap_walk *walk = context;
    struct ledger_key_wrap_counts *counts = walk->counts;
    int current = value->wrapped &&
                  memcmp(value->master_id, walk->ledger->master.id, MASTER_KEY_ID_SIZE) == 0;
    int from_old = value->wrapped && walk->old != NULL &&
                   memcmp(value->master_id, walk->old->id, MASTER_KEY_ID_SIZE) == 0;
    if (current) {
        counts->current++;
        return HM_OK;
    }
    if (value->wrapped && !from_old) {
        if (counts->foreign++ == 0)
            memcpy(counts->foreign_id, value->master_id, MASTER_KEY_ID_SIZE);
        return HM_OK;
    }
    if (from_old) {
        uint8_t binding[MASTER_KEY_BINDING_SIZE];
        key_binding(&value->record, binding);
        int rc = master_key_unwrap(walk->old, binding, value->wrap, value->record.signing_key);
        if (rc != HM_OK)
            return rc;
        value->wrapped = 0;
    }
    if (counts->wrapped == walk->capacity) {
        size_t capacity = walk->capacity ? 2 * walk->capacity : 16;
        struct key_value *grown = malloc(capacity * sizeof *grown);
        if (grown == NULL)
            return HM_ERR_NOMEM;
        /* A copy, not realloc, so that no signing key is left behind in freed memory. */
        if (walk->pending != NULL) {
            memcpy(grown, walk->pending, walk->capacity * sizeof *grown);
            OPENSSL_cleanse(walk->pending, walk->capacity * sizeof *grown);
            free(walk->pending);
        }
        walk->pending = grown;
        walk->capacity = capacity;
    }
    walk->pending[counts->wrapped++] = *value;
    return HM_OK;
}

int ledger_keys_wrap(struct ledger *ledger, const struct master_key *old,
                     struct ledger_key_wrap_counts *counts)
{
    memset(counts, 0, sizeof *counts);
    if (!ledger->has_master)
        return HM_ERR_STATE;
    MDB_txn *txn;
    int rc = write_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct wrap_walk walk = { ledger, old, counts, NULL, 0 };
    int status = keys_each(ledger, txn, wrap_visit, &walk);
    for (size_t i = 0; status == HM_OK && i < counts->wrapped; i++)
        status = key_write(ledger, txn, &walk.pending[i], 0);
    if (walk.pending != NULL)
        OPENSSL_cleanse(walk.pending, walk.capacity * sizeof *walk.pending);
    free(walk.pending);
    if (status != HM_OK || counts->wrapped == 0) {
        mdb_txn_abort(txn);
        if (status != HM_OK)
            counts->wrapped = 0;
        return status;
    }
    return write_commit(txn);
}

struct key_list_walk {
    const uint8_t *tenant_id;
    struct key_record *keys;
    size_t count, capacity;
};

static int key_list_visit(void *context, struct key_value *value)
{
    struct key_list_walk *walk = context;
    if (memcmp(value->record.tenant_id, walk->tenant_id, UUID_SIZE) != 0)
        return HM_OK;
    if (walk->count == walk->capacity) {
        size_t capacity = walk->capacity ? 2 * walk->capacity : 8;
        struct key_record *grown = realloc(walk->keys, capacity * sizeof *grown);
        if (grown == NULL)
            return HM_ERR_NOMEM;
        walk->keys = grown;
        walk->capacity = capacity;
    }
    /* A list is for reading about keys: no signing key leaves it. */
    walk->keys[walk->count] = value->record;
    memset(walk->keys[walk->count].signing_key, 0, sizeof walk->keys[walk->count].signing_key);
    walk->count++;
    return HM_OK;
}

int ledger_key_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                    struct key_record **keys_out, size_t *count_out)
{
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    struct key_list_walk walk = { tenant_id, NULL, 0, 0 };
    rc = keys_each(ledger, txn, key_list_visit, &walk);
    mdb_txn_abort(txn);
    if (rc != HM_OK) {
        free(walk.keys);
        return rc;
    }
    *keys_out = walk.keys;
    *count_out = walk.count;
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
