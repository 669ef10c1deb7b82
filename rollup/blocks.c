/*
 * Event blocks: the stored events of each tenant in arrival order, many
 * records to one LMDB value (layout in ledger_private.h).
 */
#include "ledger.h"
#include "ledger_private.h"

#include "dedup.h"
#include "ingest/wire.h"

static void block_key(uint8_t key[BLOCK_KEY_SIZE], const uint8_t tenant_id[UUID_SIZE],
                      uint64_t first)
{
    memcpy(key, tenant_id, UUID_SIZE);
    store_be64(key + UUID_SIZE, first);
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Checks that a block value holds exactly its count of well-formed records. */
static int block_check(const uint8_t *bytes, size_t size)
{
    if (size < BLOCK_HEADER_SIZE)
        return HM_ERR_STORAGE;
    uint32_t count = load_le32(bytes);
    size_t at = BLOCK_HEADER_SIZE;
    for (uint32_t i = 0; i < count; i++) {
        if (size - at < RECORD_HEADER_SIZE)
            return HM_ERR_STORAGE;
        size_t record_size = record_size_at(bytes + at);
        if (record_size < RECORD_HEADER_SIZE || record_size > size - at)
            return HM_ERR_STORAGE;
        at += record_size;
    }
    return count > 0 && at == size ? HM_OK : HM_ERR_STORAGE;
}

/*
 * Finds record `index` of a checked block, walking from the last record
 * found in the same block when that lies before it, and remembers it.
 */
static const uint8_t *block_record(struct ledger_txn *spot, const uint8_t *bytes, uint32_t index,
                                   size_t *size_out)
{
    uint32_t i = 0;
    size_t at = BLOCK_HEADER_SIZE;
    if (spot->found.valid && spot->found.index <= index) {
        i = spot->found.index;
        at = spot->found.at;
    }
    for (; i < index; i++)
        at += record_size_at(bytes + at);
    spot->found.index = index;
    spot->found.at = at;
    *size_out = record_size_at(bytes + at);
    return bytes + at;
}

/* Says whether the last record found lies in this block, so that walking on from it is valid. */
static int found_in(struct ledger_txn *spot, const uint8_t tenant_id[UUID_SIZE], uint64_t first,
                    size_t block_size)
{
    int same = spot->found.valid && spot->found.first == first &&
               spot->found.block_size == block_size &&
               memcmp(spot->found.tenant_id, tenant_id, UUID_SIZE) == 0;
    if (!same) {
        memcpy(spot->found.tenant_id, tenant_id, UUID_SIZE);
        spot->found.first = first;
        spot->found.block_size = block_size;
        spot->found.valid = 0;
    }
    return same;
}

/* Logs a block that fails block_check and returns HM_ERR_STORAGE. */
static int block_corrupt(const uint8_t tenant_id[UUID_SIZE], uint64_t first)
{
    char tenant[UUID_TEXT_SIZE];
    uuid_format(tenant_id, tenant);
    log_error("ledger", "corrupt event block tenant=%s first=%llu: its records do not match "
              "its count", tenant, (unsigned long long)first);
    return HM_ERR_STORAGE;
}

/* Finds the last number in a tenant's blocks (0 when it has none). */
static int blocks_last(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                       uint64_t *last_out)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_BLOCKS, &cursor);
    if (rc != 0)
        return status_of(rc, "open block cursor");
    uint8_t seek[BLOCK_KEY_SIZE];
    block_key(seek, tenant_id, UINT64_MAX);
    MDB_val key = { sizeof seek, seek }, value;
    rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
    rc = rc == 0 ? cursor_get(cursor, &key, &value, MDB_PREV)
                 : cursor_get(cursor, &key, &value, MDB_LAST);
    *last_out = 0;
    int status = HM_OK;
    if (rc == 0 && key.mv_size == BLOCK_KEY_SIZE &&
        memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        uint64_t first = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
        if (value.mv_size < BLOCK_HEADER_SIZE || load_le32(value.mv_data) == 0)
            status = block_corrupt(tenant_id, first);
        else
            *last_out = first + load_le32(value.mv_data) - 1;
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        status = status_of(rc, "read blocks");
    }
    cursor_close(cursor);
    return status;
}

int arrival_last(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t *seq_out)
{
    uint64_t legacy = 0, blocks = 0;
    int rc = arrival_last_legacy(ledger, txn, tenant_id, &legacy);
    if (rc == HM_OK)
        rc = blocks_last(ledger, txn, tenant_id, &blocks);
    *seq_out = legacy > blocks ? legacy : blocks;
    return rc;
}

static struct seq_cache_entry *seq_cache_slot(struct ledger_txn *txn,
                                              const uint8_t tenant_id[UUID_SIZE])
{
    unsigned hash = (unsigned)tenant_id[0] * 31u + tenant_id[7] * 7u + tenant_id[15];
    return &txn->seq_cache[hash % SEQ_CACHE_SIZE];
}

/*
 * Returns the tenant's next arrival number after its flushed blocks, from
 * the cache or else from the tables.
 */
static int seq_next(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE], uint64_t *next_out)
{
    struct seq_cache_entry *entry = seq_cache_slot(txn, tenant_id);
    if (entry->next != 0 && memcmp(entry->tenant_id, tenant_id, UUID_SIZE) == 0) {
        *next_out = entry->next;
        return HM_OK;
    }
    uint64_t last = 0;
    int rc = arrival_last(txn->ledger, txn->txn, tenant_id, &last);
    if (rc != HM_OK)
        return rc;
    /* Block numbers stay below the locator bit of the id index. */
    if (last + 1 + BLOCK_EVENTS_MAX >= DEDUP_LEGACY) {
        log_error("ledger", "the arrival sequence of a tenant reached its maximum");
        return HM_ERR_OVERFLOW;
    }
    memcpy(entry->tenant_id, tenant_id, UUID_SIZE);
    entry->next = last + 1;
    *next_out = last + 1;
    return HM_OK;
}

int block_flush(struct ledger_txn *txn)
{
    if (txn->block_count == 0)
        return HM_OK;
    struct ledger *ledger = txn->ledger;
    store_le32(ledger->block, txn->block_count);
    uint8_t key_bytes[BLOCK_KEY_SIZE];
    block_key(key_bytes, txn->block_tenant, txn->block_first);
    MDB_val key = { sizeof key_bytes, key_bytes };
    MDB_val value = { txn->block_size, ledger->block };
    int rc = mdb_put(txn->txn, ledger->tables[TABLE_BLOCKS], &key, &value, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
        log_error("ledger", "an event block with first number %llu is already stored",
                  (unsigned long long)txn->block_first);
        return HM_ERR_STORAGE;
    }
    if (rc != 0)
        return status_of(rc, "append event block");

    struct seq_cache_entry *entry = seq_cache_slot(txn, txn->block_tenant);
    memcpy(entry->tenant_id, txn->block_tenant, UUID_SIZE);
    entry->next = txn->block_first + txn->block_count;
    txn->block_count = 0;
    txn->block_size = 0;
    return HM_OK;
}

int block_append(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 const uint8_t *record, size_t record_size, uint64_t *seq_out)
{
    int rc;
    if (txn->block_count > 0 &&
        (memcmp(txn->block_tenant, tenant_id, UUID_SIZE) != 0 ||
         txn->block_count == BLOCK_EVENTS_MAX ||
         txn->block_size + record_size > BLOCK_BYTES_MAX) &&
        (rc = block_flush(txn)) != HM_OK)
        return rc;
    if (txn->block_count == 0) {
        uint64_t next;
        if ((rc = seq_next(txn, tenant_id, &next)) != HM_OK)
            return rc;
        memcpy(txn->block_tenant, tenant_id, UUID_SIZE);
        txn->block_first = next;
        txn->block_size = BLOCK_HEADER_SIZE;
    }
    memcpy(txn->ledger->block + txn->block_size, record, record_size);
    txn->block_size += record_size;
    *seq_out = txn->block_first + txn->block_count;
    txn->block_count++;
    return HM_OK;
}

int block_seq_end(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE], uint64_t *end_out)
{
    if (txn->block_count > 0 && memcmp(txn->block_tenant, tenant_id, UUID_SIZE) == 0) {
        *end_out = txn->block_first + txn->block_count;
        return HM_OK;
    }
    return seq_next(txn, tenant_id, end_out);
}

/* Positions a cursor on the block of a tenant that holds number `seq`. */
static int block_seek(MDB_cursor *cursor, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                      uint8_t seek[BLOCK_KEY_SIZE], MDB_val *key, MDB_val *value)
{
    block_key(seek, tenant_id, seq);
    key->mv_size = BLOCK_KEY_SIZE;
    key->mv_data = seek;
    int rc = cursor_get(cursor, key, value, MDB_SET_RANGE);
    if (rc == 0 && key->mv_size == BLOCK_KEY_SIZE && memcmp(key->mv_data, seek, BLOCK_KEY_SIZE) == 0)
        return 0;
    rc = rc == 0 ? cursor_get(cursor, key, value, MDB_PREV)
                 : cursor_get(cursor, key, value, MDB_LAST);
    if (rc != 0)
        return rc;
    if (key->mv_size != BLOCK_KEY_SIZE || memcmp(key->mv_data, tenant_id, UUID_SIZE) != 0)
        return MDB_NOTFOUND;
    return 0;
}

int block_record_find(struct ledger *ledger, MDB_txn *txn, struct ledger_txn *pending,
                      const uint8_t tenant_id[UUID_SIZE], uint64_t seq, const uint8_t **record_out,
                      size_t *size_out)
{
    if (pending != NULL && pending->block_count > 0 &&
        memcmp(pending->block_tenant, tenant_id, UUID_SIZE) == 0 &&
        seq >= pending->block_first && seq - pending->block_first < pending->block_count) {
        /* Records are only added at the end of the pending block, so offsets stay valid. */
        found_in(pending, tenant_id, pending->block_first, 0);
        *record_out = block_record(pending, ledger->block,
                                   (uint32_t)(seq - pending->block_first), size_out);
        pending->found.valid = 1;
        return HM_OK;
    }
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_BLOCKS, &cursor);
    if (rc != 0)
        return status_of(rc, "open block cursor");
    uint8_t seek[BLOCK_KEY_SIZE];
    MDB_val key, value;
    rc = block_seek(cursor, tenant_id, seq, seek, &key, &value);
    cursor_close(cursor);
    if (rc == MDB_NOTFOUND)
        return HM_ERR_NOT_FOUND;
    if (rc != 0)
        return status_of(rc, "read event block");
    uint64_t first = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
    /* A stored block never changes, so one check serves every record found in it. */
    struct ledger_txn scratch = { .found.valid = 0 };
    struct ledger_txn *spot = pending != NULL ? pending : &scratch;
    if (!found_in(spot, tenant_id, first, value.mv_size) &&
        block_check(value.mv_data, value.mv_size) != HM_OK)
        return block_corrupt(tenant_id, first);
    uint32_t count = load_le32(value.mv_data);
    if (seq < first || seq - first >= count)
        return HM_ERR_NOT_FOUND;
    *record_out = block_record(spot, value.mv_data, (uint32_t)(seq - first), size_out);
    spot->found.valid = 1;
    return HM_OK;
}

/* Visits the records of one checked block from number `from` on; counts them in *visited. */
static int block_visit(const uint8_t tenant_id[UUID_SIZE], uint64_t first, const MDB_val *value,
                       uint64_t from, uint64_t limit, uint64_t *visited, record_visit visit,
                       void *context)
{
    uint32_t count = load_le32(value->mv_data);
    const uint8_t *bytes = value->mv_data;
    size_t at = BLOCK_HEADER_SIZE;
    for (uint32_t i = 0; i < count && (limit == 0 || *visited < limit); i++) {
        size_t size = record_size_at(bytes + at);
        if (first + i >= from) {
            int rc = visit(context, tenant_id, first + i, bytes + at, size);
            if (rc != 0)
                return rc;
            (*visited)++;
        }
        at += size;
    }
    return HM_OK;
}

/*
 * Visits every record of a block, checking each record's size as it goes,
 * so that a walk over all blocks reads each block once. A corrupt block is
 * reported after the records before the fault were visited.
 */
static int block_visit_checking(const uint8_t tenant_id[UUID_SIZE], uint64_t first,
                                const MDB_val *value, record_visit visit, void *context)
{
    const uint8_t *bytes = value->mv_data;
    size_t size = value->mv_size;
    if (size < BLOCK_HEADER_SIZE)
        return block_corrupt(tenant_id, first);
    uint32_t count = load_le32(bytes);
    size_t at = BLOCK_HEADER_SIZE;
    for (uint32_t i = 0; i < count; i++) {
        if (size - at < RECORD_HEADER_SIZE)
            return block_corrupt(tenant_id, first);
        size_t record_size = record_size_at(bytes + at);
        if (record_size < RECORD_HEADER_SIZE || record_size > size - at)
            return block_corrupt(tenant_id, first);
        int rc = visit(context, tenant_id, first + i, bytes + at, record_size);
        if (rc != 0)
            return rc;
        at += record_size;
    }
    return count > 0 && at == size ? HM_OK : block_corrupt(tenant_id, first);
}

int records_walk(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t after_seq, uint64_t limit, record_visit visit, void *context)
{
    uint64_t visited = 0, legacy_last = 0;
    int rc = arrivals_walk_legacy(ledger, txn, tenant_id, after_seq, limit, visit, context,
                                  &visited, &legacy_last);
    if (rc != HM_OK || (limit != 0 && visited >= limit))
        return rc;

    uint64_t expected = (after_seq > legacy_last ? after_seq : legacy_last) + 1;
    MDB_cursor *cursor;
    rc = table_cursor_open(txn, ledger, TABLE_BLOCKS, &cursor);
    if (rc != 0)
        return status_of(rc, "open block cursor");
    uint8_t seek[BLOCK_KEY_SIZE];
    MDB_val key, value;
    rc = block_seek(cursor, tenant_id, expected, seek, &key, &value);
    int status = HM_OK;
    while (rc == 0 && (limit == 0 || visited < limit) && key.mv_size == BLOCK_KEY_SIZE &&
           memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0) {
        uint64_t first = load_be64((const uint8_t *)key.mv_data + UUID_SIZE);
        if (block_check(value.mv_data, value.mv_size) != HM_OK) {
            status = block_corrupt(tenant_id, first);
            break;
        }
        uint64_t end = first + load_le32(value.mv_data);
        /* The block before `expected` is skipped when it ends before it. */
        if (end <= expected) {
            rc = cursor_get(cursor, &key, &value, MDB_NEXT);
            continue;
        }
        if (first > expected) {
            log_error("ledger", "arrival sequence jumps from %llu to %llu",
                      (unsigned long long)(expected - 1), (unsigned long long)first);
            status = HM_ERR_STORAGE;
            break;
        }
        status = block_visit(tenant_id, first, &value, expected, limit, &visited, visit, context);
        if (status != HM_OK)
            break;
        expected = end;
        rc = cursor_get(cursor, &key, &value, MDB_NEXT);
    }
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read event blocks");
    cursor_close(cursor);
    return status;
}

int records_each_all(struct ledger *ledger, MDB_txn *txn, record_visit visit, void *context)
{
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_EVENTS, &cursor);
    if (rc != 0)
        return status_of(rc, "open event cursor");
    MDB_val key, value;
    int status = HM_OK;
    for (rc = cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0 && status == HM_OK;
         rc = cursor_get(cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size != 2 * UUID_SIZE || value.mv_size < RECORD_HEADER_SIZE) {
            log_error("ledger", "event key of size %zu, expected %d", key.mv_size, 2 * UUID_SIZE);
            status = HM_ERR_STORAGE;
            break;
        }
        status = visit(context, key.mv_data, 0, value.mv_data, value.mv_size);
    }
    cursor_close(cursor);
    if (status != HM_OK)
        return status;
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read events");

    if ((rc = table_cursor_open(txn, ledger, TABLE_BLOCKS, &cursor)) != 0)
        return status_of(rc, "open block cursor");
    for (rc = cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0 && status == HM_OK;
         rc = cursor_get(cursor, &key, &value, MDB_NEXT)) {
        const uint8_t *key_bytes = key.mv_data;
        if (key.mv_size != BLOCK_KEY_SIZE) {
            log_error("ledger", "event block key of size %zu, expected %d", key.mv_size,
                      BLOCK_KEY_SIZE);
            status = HM_ERR_STORAGE;
            break;
        }
        uint64_t first = load_be64(key_bytes + UUID_SIZE);
        status = block_visit_checking(key_bytes, first, &value, visit, context);
    }
    cursor_close(cursor);
    if (status == HM_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = status_of(rc, "read event blocks");
    return status;
}

/* Ids gathered before they go into the index together, so that their slots are prefetched. */
#define REBUILD_BATCH 64

struct rebuild {
    struct dedup_index *index;
    uint64_t fingerprints[REBUILD_BATCH];
    uint64_t locators[REBUILD_BATCH];
    size_t count;
};

static int rebuild_visit(void *context, const uint8_t tenant_id[UUID_SIZE], uint64_t seq,
                         const uint8_t *record, size_t record_size)
{
    (void)record_size;
    struct rebuild *rebuild = context;
    rebuild->fingerprints[rebuild->count] =
        dedup_fingerprint(rebuild->index, tenant_id, record + 4);
    rebuild->locators[rebuild->count] = seq == 0 ? DEDUP_LEGACY : seq;
    if (++rebuild->count < REBUILD_BATCH)
        return HM_OK;
    rebuild->count = 0;
    return dedup_load(rebuild->index, rebuild->fingerprints, rebuild->locators, REBUILD_BATCH);
}

int dedup_rebuild(struct ledger *ledger, MDB_txn *txn, uint64_t expected)
{
    struct rebuild rebuild = { .index = ledger->dedup };
    if (dedup_clear(ledger->dedup, expected) != HM_OK)
        return HM_ERR_NOMEM;
    int rc = records_each_all(ledger, txn, rebuild_visit, &rebuild);
    if (rc == HM_OK && rebuild.count > 0)
        rc = dedup_load(rebuild.index, rebuild.fingerprints, rebuild.locators, rebuild.count);
    return rc;
}

int events_count(struct ledger *ledger, MDB_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                 uint64_t *count_out)
{
    uint64_t count = 0;
    MDB_cursor *cursor;
    int rc = table_cursor_open(txn, ledger, TABLE_EVENTS, &cursor);
    if (rc != 0)
        return status_of(rc, "open event cursor");
    MDB_val key = { UUID_SIZE, (void *)tenant_id }, value;
    for (rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && key.mv_size >= UUID_SIZE && memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0;
         rc = cursor_get(cursor, &key, &value, MDB_NEXT))
        count++;
    cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read events");

    if ((rc = table_cursor_open(txn, ledger, TABLE_BLOCKS, &cursor)) != 0)
        return status_of(rc, "open block cursor");
    key.mv_size = UUID_SIZE;
    key.mv_data = (void *)tenant_id;
    for (rc = cursor_get(cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && key.mv_size == BLOCK_KEY_SIZE &&
         memcmp(key.mv_data, tenant_id, UUID_SIZE) == 0;
         rc = cursor_get(cursor, &key, &value, MDB_NEXT)) {
        if (value.mv_size < BLOCK_HEADER_SIZE) {
            cursor_close(cursor);
            return block_corrupt(tenant_id, load_be64((const uint8_t *)key.mv_data + UUID_SIZE));
        }
        count += load_le32(value.mv_data);
    }
    cursor_close(cursor);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return status_of(rc, "read event blocks");
    *count_out = count;
    return HM_OK;
}
