/*
 * The ledger: every accepted event of every tenant, its rollups per billing
 * period, and the engine's records (tenants, API keys, price books, closed
 * periods, invoices), in one LMDB environment.
 *
 * Invariants (checked by ledger_verify and the tests):
 *   1. An event is stored at most once per (tenant, event id): the events
 *      table is keyed by both, and a second put of the same key is a
 *      duplicate (same bytes) or a conflict (other bytes), never a write.
 *   2. The rollups of a period equal the sum over that period's stored
 *      events, because both change in the same write transaction.
 *   3. A batch is committed whole or not at all; an acknowledgement is sent
 *      only after ledger_commit returned HM_OK, which synced to disk.
 *
 * Threads: one writer at a time (LMDB's rule). Readers in other threads or
 * processes (meterctl) never block the writer and see committed state only.
 */
#ifndef HM_LEDGER_H
#define HM_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/event.h"

struct ledger;
struct ledger_txn;

struct ledger_options {
    size_t map_size;  /* bytes; 0 keeps an existing ledger's size, or LEDGER_MAP_SIZE_DEFAULT */
    int read_only;
};

/* 16 GiB of address space; LMDB only uses the disk that the data needs. */
#define LEDGER_MAP_SIZE_DEFAULT ((size_t)16 << 30)

/*
 * Opens (creating when missing) the ledger in directory `dir`. Returns
 * HM_OK, HM_ERR_IO (directory or file error), HM_ERR_STORAGE (LMDB error,
 * logged). The caller closes it with ledger_close.
 */
int ledger_open(struct ledger **out, const char *dir, const struct ledger_options *options);
void ledger_close(struct ledger *ledger);

/* ---- Write transactions ---- */

/* Begins the single write transaction; HM_ERR_STORAGE on failure. */
int ledger_begin(struct ledger *ledger, struct ledger_txn **out);

/* Commits and syncs. On error the transaction is gone and nothing of it is stored. */
int ledger_commit(struct ledger_txn *txn);
void ledger_abort(struct ledger_txn *txn);

/* Outcome of appending one event. */
enum append_outcome {
    APPEND_STORED = 0,
    APPEND_DUPLICATE = 1, /* same id, same bytes: nothing changes */
    APPEND_CONFLICT = 2,  /* same id, other bytes: rejected, nothing changes */
};

/*
 * Appends one decoded event whose canonical record bytes are `record`:
 * stores it under (tenant, event id) unless present, and on a new event adds
 * it to the rollups of its period. Returns an append_outcome (>= 0), or
 * HM_ERR_FULL (map full) or HM_ERR_STORAGE; after an error the transaction
 * can only be aborted.
 */
int ledger_append(struct ledger_txn *txn, const struct event *event, const uint8_t *record,
                  size_t record_size);

/* ---- Rollups ---- */

/* Metered quantities kept per tenant, period and dimension. */
enum rollup_meter {
    ROLLUP_GPU_SECONDS = 1,         /* dimension: GPU type */
    ROLLUP_INPUT_TOKENS = 2,        /* dimension: model; input minus cached input */
    ROLLUP_OUTPUT_TOKENS = 3,       /* dimension: model */
    ROLLUP_CACHED_INPUT_TOKENS = 4, /* dimension: model */
    ROLLUP_API_CALLS = 5,
    ROLLUP_STORAGE_BYTE_SECONDS = 6, /* computed from storage samples, never stored */
    ROLLUP_TRANSFER_BYTES = 7,
    ROLLUP_EVENTS = 8,               /* dimension: event kind name; all events */
};

struct rollup_row {
    enum rollup_meter meter;
    char dimension[EVENT_ENDPOINT_MAX + 1];
    unsigned __int128 quantity;
    uint64_t event_count;
};

/*
 * Reads every rollup row of a tenant's period, plus one
 * ROLLUP_STORAGE_BYTE_SECONDS row (time-weighted storage, see
 * ledger_storage_byte_seconds) when it is nonzero. *rows_out is allocated;
 * the caller frees it with free(). Reads a consistent snapshot.
 */
int ledger_rollups(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], uint32_t period,
                   struct rollup_row **rows_out, size_t *count_out);

/*
 * Computes bytes held × seconds held over [start_s, end_s) from the tenant's
 * storage samples, taken in timestamp order (event id order for equal
 * microseconds): each sample's level applies from its second (microseconds
 * truncated) until the next sample's second, so of several samples in one
 * second the last one counts. The level before start_s is the last sample
 * before it.
 */
int ledger_storage_byte_seconds(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                                int64_t start_s, int64_t end_s, unsigned __int128 *out);

/*
 * Recounts the rollups of a tenant's period from the stored events and
 * compares them with the maintained rollups. Returns HM_OK when equal,
 * HM_ERR_CONFLICT when not (each difference logged).
 */
int ledger_verify(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], uint32_t period);

/* Counts the stored events of a tenant (all periods). */
int ledger_event_count(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint64_t *count_out);

/* ---- Tenants ---- */

#define TENANT_NAME_MAX 64

struct tenant {
    uint8_t id[UUID_SIZE];
    char name[TENANT_NAME_MAX + 1];
    int64_t created_s;
    int64_t service_start_s; /* the base fee is charged from here on, prorated; 0 for no start */
    int active;
};

/* Creates a tenant; HM_ERR_EXISTS when the id or the name is taken. */
int ledger_tenant_create(struct ledger *ledger, const struct tenant *tenant);
int ledger_tenant_get(struct ledger *ledger, const uint8_t id[UUID_SIZE], struct tenant *out);
/* Finds a tenant by name or by UUID text. */
int ledger_tenant_find(struct ledger *ledger, const char *name_or_id, struct tenant *out);
/* Lists all tenants, sorted by name; *tenants_out is freed by the caller. */
int ledger_tenant_list(struct ledger *ledger, struct tenant **tenants_out, size_t *count_out);

/* ---- API keys ---- */

enum key_status { KEY_ACTIVE = 1, KEY_REVOKED = 2 };

struct key_record {
    uint64_t key_id;
    uint8_t tenant_id[UUID_SIZE];
    /*
     * HMAC key for frames, derived from the secret. NOTE: stored as is, not
     * wrapped with a master key, so anyone who can read the ledger can sign frames.
     */
    uint8_t signing_key[32];
    uint8_t secret_hash[32]; /* SHA-256 of the secret */
    enum key_status status;
    int64_t created_s;
    int64_t revoked_s;
};

int ledger_key_put(struct ledger *ledger, const struct key_record *key);
int ledger_key_get(struct ledger *ledger, uint64_t key_id, struct key_record *out);
/* Marks a key revoked; HM_ERR_NOT_FOUND when unknown, HM_ERR_STATE when already revoked. */
int ledger_key_revoke(struct ledger *ledger, uint64_t key_id, int64_t now_s);
int ledger_key_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                    struct key_record **keys_out, size_t *count_out);

/*
 * Read transaction for frequent key lookups on the ingest loop: begin, any
 * number of ledger_key_lookup calls, end. Sees the keys committed at begin.
 */
int ledger_read_begin(struct ledger *ledger);
int ledger_key_lookup(struct ledger *ledger, uint64_t key_id, struct key_record *out);
void ledger_read_end(struct ledger *ledger);

/* ---- Price books, periods and invoices (stored as JSON text) ---- */

/* Stores a price book under `scope`: "default" or a tenant UUID text. */
int ledger_pricebook_put(struct ledger *ledger, const char *scope, const char *json);
/* Reads a price book; *json_out is allocated, the caller frees it. HM_ERR_NOT_FOUND when none. */
int ledger_pricebook_get(struct ledger *ledger, const char *scope, char **json_out);

/* Returns 1 when the tenant's period is closed, 0 when open, or a negative error. */
int ledger_period_closed(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period);

/*
 * Within a write transaction: stores the sealed invoice JSON of a tenant's
 * period and marks the period closed. HM_ERR_STATE when already closed.
 */
int ledger_period_close(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                        uint32_t period, const char *invoice_json);

/* Within a write transaction: returns the next invoice sequence number (1, 2, ...). */
int ledger_next_invoice_seq(struct ledger_txn *txn, uint64_t *seq_out);

int ledger_invoice_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period, char **json_out);

#endif
