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

#include "ingest/masterkey.h"
#include "ingest/event.h"

struct ledger;
struct ledger_txn;

struct ledger_options {
    size_t map_size;  /* bytes; 0 keeps an existing ledger's size, or LEDGER_MAP_SIZE_DEFAULT */
    int read_only;
    /*
     * Bytes of memory for the writer's index of event ids; 0 is
     * LEDGER_INDEX_MEMORY_DEFAULT. Past it, ids go to sorted runs in files
     * of the data directory that have no name (see rollup/dedup.h).
     */
    size_t index_memory;
};

#define LEDGER_INDEX_MEMORY_DEFAULT ((size_t)128 << 20)

/* 16 GiB of address space; LMDB only uses the disk that the data needs. */
#define LEDGER_MAP_SIZE_DEFAULT ((size_t)16 << 30)

/*
 * Opens (creating when missing) the ledger in directory `dir`. Returns
 * HM_OK, HM_ERR_IO (directory or file error), HM_ERR_FULL (no space left on
 * the device, or the map is full), HM_ERR_STORAGE (LMDB error); every error
 * is logged and described by ledger_open_error. The caller closes it with
 * ledger_close.
 */
int ledger_open(struct ledger **out, const char *dir, const struct ledger_options *options);

/*
 * Returns why the last ledger_open of this process failed, with the fix when
 * the operator can remove the cause (a full disk, a read-only file system,
 * permissions), for the caller's last error line. Empty after a success.
 * Static storage, overwritten by the next ledger_open.
 */
const char *ledger_open_error(void);
void ledger_close(struct ledger *ledger);

/* Returns the directory the ledger was opened in, owned by the ledger. */
const char *ledger_path(const struct ledger *ledger);

/* The writer's index of event ids (rollup/dedup.h), all 0 before the process's first append. */
struct ledger_index_stats {
    uint64_t ids;
    uint64_t memory_bytes;
    uint64_t disk_bytes; /* sorted runs of ids, in files of the data directory with no name */
    uint64_t runs;
    uint64_t spill_failures;
    uint64_t spill_waits; /* transactions that waited for a run to be written */
    uint64_t spill_wait_us;
};

void ledger_index_stats(const struct ledger *ledger, struct ledger_index_stats *out);

/* ---- Write transactions ---- */

/* Begins the single write transaction; HM_ERR_STORAGE on failure. */
int ledger_begin(struct ledger *ledger, struct ledger_txn **out);

/* Commits and syncs. On error the transaction is gone and nothing of it is stored. */
int ledger_commit(struct ledger_txn *txn);

/*
 * Microseconds that the last ledger_commit spent in its durable write:
 * LMDB writing the transaction's pages and waiting for the disk to sync
 * them and then the meta page. The rest of a commit is work of the CPU.
 */
uint64_t ledger_commit_write_us(const struct ledger *ledger);

/*
 * Microseconds that the last ledger_begin waited for LMDB's write lock,
 * which another process's write transaction holds (meterctl close, a
 * rollups rebuild).
 */
uint64_t ledger_begin_lock_us(const struct ledger *ledger);
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

/*
 * Builds the writer's index of stored event ids now, which the first
 * ledger_append of a process does otherwise. It reads every stored event
 * once: tests/crash/restart_time.sh measured about 0.3 s for 3,000,000
 * events on a 2-core VM. The index takes 12 bytes per slot and keeps 25 %
 * to 80 % of its slots in use, about 25 to 29 bytes of memory per stored
 * event. HM_ERR_NOMEM, HM_ERR_STORAGE.
 */
int ledger_writer_prepare(struct ledger *ledger);

/*
 * Hints that an event with this id will be appended soon, so that its slot
 * in the id index is fetched from memory meanwhile. Only a hint: it changes
 * nothing, and before the first ledger_append of a transaction it does nothing.
 */
void ledger_append_prefetch(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                            const uint8_t event_id[UUID_SIZE]);

/*
 * Appends one event given only its canonical record, which the caller has
 * validated (record_decode): stores it as ledger_append does, but changes no
 * rollup. The caller adds the rollup changes of the events that come back
 * APPEND_STORED with ledger_rollups_apply, in the same transaction, so that
 * the rollups still equal the stored events at commit.
 */
int ledger_append_record(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         const uint8_t *record, size_t record_size);

struct rollup_deltas;

/*
 * Within a write transaction: adds summed rollup changes (rollup/deltas.h)
 * to the transaction's changes, or takes them away with `subtract` set (for
 * events that a batch counted but that turned out to be duplicates). The
 * commit writes them to the rollup log (rollup_log.c) as one record. A
 * subtraction may only take away what the same transaction added:
 * HM_ERR_STORAGE otherwise, which only a bug can cause.
 */
int ledger_rollups_apply(struct ledger_txn *txn, const struct rollup_deltas *deltas,
                         int subtract);

/*
 * Adds the changes of the rollup log to the rollup rows and empties the
 * log, in a write transaction of its own. A reader gets the same totals
 * before and after; one that reads many tenants (a close) reads faster
 * after. HM_OK when the log was empty.
 */
int ledger_rollups_fold(struct ledger *ledger);

/*
 * Returns the counts of rollup log folds in this handle's committed
 * transactions: those from the writer's sum of the log, and those that read
 * the log back, as the first fold after a restart or after another process
 * wrote to the log does. Call it on the thread that commits: the counts are
 * plain fields that each commit updates.
 */
void ledger_fold_counts(const struct ledger *ledger, uint64_t *summed, uint64_t *read);

/*
 * Recounts every rollup row from the stored events of every tenant and
 * replaces the rows and the rollup log with the result, in one write
 * transaction: the way out when the rollups are damaged. It reads every
 * event, and meterd's commits wait for it meanwhile. Sets *events_out and
 * *rows_out to the events read and the rows written.
 */
int ledger_rollups_rebuild(struct ledger *ledger, uint64_t *events_out, size_t *rows_out);

/* ---- Arrival order ---- */

/*
 * Every stored event also gets the next number of its tenant's arrival
 * sequence (1, 2, ...), written by ledger_append in the same write
 * transaction as the event. Readers see committed transactions only, and
 * LMDB has one writer at a time, so the numbers a reader sees for a tenant
 * are 1..N without gaps, and an event committed later always gets a higher
 * number. An exporter that remembers the last number it copied finds every
 * later event, whatever its UUID. Ledgers written before the sequence
 * existed are numbered in (tenant, event id) order when first opened
 * read-write.
 */

/* Reads the highest arrival number of a tenant into *seq_out (0 when it has no events). */
int ledger_arrival_last(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                        uint64_t *seq_out);

/*
 * Calls visit(context, seq, event) for the tenant's events with arrival
 * numbers after_seq + 1, after_seq + 2, ... in order, at most `limit` of
 * them (0: no limit), from one consistent snapshot. A nonzero return of
 * visit stops the walk and is returned. HM_ERR_STORAGE when a number points
 * at a missing or undecodable event.
 */
int ledger_arrivals_each(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t after_seq, uint64_t limit,
                         int (*visit)(void *context, uint64_t seq, const struct event *event),
                         void *context);

/*
 * Checks a tenant's arrival sequence against its stored events: numbers
 * 1..N without gaps, each naming a stored event, and N equal to the event
 * count. Returns HM_OK, or HM_ERR_CONFLICT with each difference logged.
 */
int ledger_arrivals_verify(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE]);

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

/* Receives one rollup change of an event. */
typedef int (*rollup_sink)(void *context, enum rollup_meter meter, const char *dimension,
                           uint64_t quantity);

/*
 * Maps one event to its rollup changes: one ROLLUP_EVENTS count under its
 * kind, then its metered quantities. Returns the first error of sink, or
 * HM_ERR_INVALID for an unknown event kind. This is the one rule of what an
 * event adds to the rollups.
 */
int ledger_event_rollups(const struct event *event, rollup_sink sink, void *context);

/*
 * Reads every rollup row of a tenant's period, plus one
 * ROLLUP_STORAGE_BYTE_SECONDS row (time-weighted storage, see
 * ledger_storage_byte_seconds) when it is nonzero. *rows_out is allocated;
 * the caller frees it with free(). Reads a consistent snapshot.
 */
int ledger_rollups(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], uint32_t period,
                   struct rollup_row **rows_out, size_t *count_out);

/*
 * Reads the stored rollup rows of a tenant's period like ledger_rollups,
 * without the ROLLUP_STORAGE_BYTE_SECONDS row, so that no storage sample
 * is read. For callers that only count events.
 */
int ledger_rollups_stored(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                          uint32_t period, struct rollup_row **rows_out, size_t *count_out);

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

/*
 * Lists the periods (yyyymm, ascending) before `before_period` in which a
 * tenant has rollups, that is stored events or storage samples.
 * *periods_out is allocated (free()).
 */
int ledger_event_periods(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t before_period, uint32_t **periods_out, size_t *count_out);

/* Counts the stored events of a tenant (all periods). */
int ledger_event_count(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint64_t *count_out);

/* Reads the number of stored events of all tenants, without scanning them. */
int ledger_events_total(struct ledger *ledger, uint64_t *count_out);

/*
 * Calls visit(context, tenant, record, size) for every stored event's
 * canonical record, from one snapshot: the events of older ledgers in
 * (tenant, event id) order, then the blocks in (tenant, arrival) order. A
 * nonzero return of visit stops the walk and is returned; HM_ERR_STORAGE for
 * a corrupt block.
 */
int ledger_records_each(struct ledger *ledger,
                        int (*visit)(void *context, const uint8_t tenant_id[UUID_SIZE],
                                     const uint8_t *record, size_t record_size),
                        void *context);

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
     * HMAC key for frames, derived from the secret. Stored wrapped with the
     * ledger's master key when it has one (ledger_master_key_set).
     */
    uint8_t signing_key[32];
    uint8_t secret_hash[32]; /* SHA-256 of the secret */
    enum key_status status;
    int64_t created_s;
    int64_t revoked_s;
    /*
     * Frames signed with the key are rejected from this Unix time on; 0 for
     * never. Added after the first release: a key without expiry is stored in
     * the older, shorter layout that ends at revoked_s, so older builds still
     * read it, and both layouts are read.
     */
    int64_t expires_s;
};

/*
 * Gives the ledger the master key that wraps the signing keys of key
 * records (NULL takes it away). With one, ledger_key_put and
 * ledger_key_revoke store the signing key wrapped, and lookups unwrap it.
 * Without one, new keys are stored as they are, and a wrapped key's lookup
 * fails with HM_ERR_STATE. The ledger keeps a copy and clears it on close.
 */
void ledger_master_key_set(struct ledger *ledger, const struct master_key *master);

struct ledger_key_wrap_counts {
    size_t wrapped; /* keys written wrapped with the ledger's master key by this call */
    size_t current; /* keys that were wrapped with it already */
    size_t foreign; /* keys wrapped with another master key than these two, left as they are */
    uint8_t foreign_id[MASTER_KEY_ID_SIZE]; /* the master key of the first of those */
};

/*
 * Wraps with the ledger's master key every signing key stored as is, and
 * rewraps those wrapped with `old` (NULL for none), in one transaction.
 * HM_ERR_STATE without a master key; HM_ERR_STORAGE when a key does not
 * unwrap with `old`, and then nothing is written.
 */
int ledger_keys_wrap(struct ledger *ledger, const struct master_key *old,
                     struct ledger_key_wrap_counts *counts);

/* Counts the keys stored wrapped, and gives the master key id of the first one. */
int ledger_keys_wrapped(struct ledger *ledger, size_t *count_out,
                        uint8_t first_id[MASTER_KEY_ID_SIZE]);

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

/*
 * Reads the current invoice of a tenant's period: the document that the
 * period points to (finalized, or void until the period is closed again),
 * or the JSON that older ledgers stored in place. *json_out is allocated.
 * HM_ERR_NOT_FOUND when the period has no invoice.
 */
int ledger_invoice_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       uint32_t period, char **json_out);

/* ---- Tenant settings ---- */

#define ISSUER_NAME_MAX 64
#define ISSUER_PREFIX_MAX 12
#define ISSUER_DEFAULT "default"
#define ISSUER_DEFAULT_PREFIX "HM"
#define SUPPORT_TIER_NAME_MAX 15
/* Room for PREFIX-CN-nnnnnn with a counter up to 2^64 - 1. */
#define DOCUMENT_NUMBER_MAX 40
/* Stripe object ids are at most 255 characters (Stripe's API reference, "Object IDs"). */
#define STRIPE_CUSTOMER_ID_MAX 255

/*
 * Settings of a tenant beside its record. They live in their own table as
 * versioned JSON, so that tenant records written by older versions are read
 * unchanged; a tenant without a settings record has the defaults.
 */
struct tenant_settings {
    char support_tier[SUPPORT_TIER_NAME_MAX + 1]; /* "none", "basic", "pro" or "enterprise" */
    char issuer[ISSUER_NAME_MAX + 1];             /* issuer of its documents */
    int64_t service_end_s;                        /* end of service (exclusive); 0 for none */
    char stripe_customer[STRIPE_CUSTOMER_ID_MAX + 1]; /* "cus_..." or empty: not billed in Stripe */
};

/* Fills the defaults: support tier "none", issuer "default", no service end. */
void ledger_tenant_settings_default(struct tenant_settings *out);

/* Reads a tenant's settings, or the defaults when none are stored. */
int ledger_tenant_settings_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                               struct tenant_settings *out);

/*
 * Creates a tenant with its settings in one transaction. HM_ERR_EXISTS when
 * the id or name is taken, HM_ERR_NOT_FOUND when settings->issuer is unknown.
 */
int ledger_tenant_create_with(struct ledger *ledger, const struct tenant *tenant,
                              const struct tenant_settings *settings);

/*
 * Rewrites an existing tenant's record (same id and name) and its settings
 * in one transaction. HM_ERR_NOT_FOUND for an unknown tenant or issuer,
 * HM_ERR_INVALID when the name differs from the stored one.
 */
int ledger_tenant_update(struct ledger *ledger, const struct tenant *tenant,
                         const struct tenant_settings *settings);

/* ---- Ledger settings ---- */

/* Reads an integer setting stored with ledger_setting_set; *value_out = fallback when unset. */
int ledger_setting_get(struct ledger *ledger, const char *name, int64_t fallback,
                       int64_t *value_out);
int ledger_setting_set(struct ledger *ledger, const char *name, int64_t value);

/* ---- Issuers and document numbers ---- */

/*
 * An issuer of invoices and credit notes, with its own gapless sequences.
 * The built-in issuer "default" (prefix "HM") always exists and is not stored.
 */
struct issuer {
    char name[ISSUER_NAME_MAX + 1];
    char prefix[ISSUER_PREFIX_MAX + 1]; /* 1 to 12 of [A-Z0-9], unique among issuers */
    int64_t created_s;
};

/* Adds an issuer. HM_ERR_EXISTS when the name is taken, HM_ERR_CONFLICT when the prefix is. */
int ledger_issuer_add(struct ledger *ledger, const struct issuer *issuer);
/* Reads an issuer by name; HM_ERR_NOT_FOUND when unknown. */
int ledger_issuer_get(struct ledger *ledger, const char *name, struct issuer *out);
/* Lists the issuers, "default" first, then by name; the caller frees *issuers_out. */
int ledger_issuer_list(struct ledger *ledger, struct issuer **issuers_out, size_t *count_out);

enum document_kind {
    DOCUMENT_INVOICE = 1,     /* PREFIX-000001, ... */
    DOCUMENT_CREDIT_NOTE = 2, /* PREFIX-CN-000001, ... */
};

/*
 * Within a write transaction: takes the next number of an issuer's sequence
 * of invoices or credit notes and formats it into number_out (at least
 * DOCUMENT_NUMBER_MAX bytes). The counter changes with the transaction, so
 * an aborted transaction takes no number and the sequence stays gapless.
 * The invoice counter of "default" is the counter of older ledgers, so that
 * the numbers already issued stay valid. HM_ERR_NOT_FOUND for an unknown issuer.
 */
int ledger_number_next(struct ledger_txn *txn, const char *issuer, enum document_kind kind,
                       char *number_out, size_t number_size);

/* ---- Documents: sealed invoices and credit notes by number ---- */

/* Within a write transaction: stores a new document; HM_ERR_EXISTS when the number is used. */
int ledger_document_put(struct ledger_txn *txn, const char *number, const char *json);
/* Within a write transaction: replaces a stored document (a void); HM_ERR_NOT_FOUND when none. */
int ledger_document_replace(struct ledger_txn *txn, const char *number, const char *json);
/*
 * Reads a document by number, also an invoice that an older ledger stored
 * only under its period. *json_out is allocated. HM_ERR_NOT_FOUND when none.
 */
int ledger_document_get(struct ledger *ledger, const char *number, char **json_out);
/* The same within a write transaction, so that it sees the transaction's own writes. */
int ledger_document_get_txn(struct ledger_txn *txn, const char *number, char **json_out);

/*
 * Calls visit(context, number, json) for every document in number order,
 * then for every invoice that an older ledger stored only under its period
 * (number NULL). A nonzero return of visit stops the walk and is returned.
 */
int ledger_document_each(struct ledger *ledger,
                         int (*visit)(void *context, const char *number, const char *json),
                         void *context);

/*
 * Within a write transaction: closes a tenant's period and points it at the
 * stored document `number`. HM_ERR_STATE when the period is closed.
 */
int ledger_period_close_with(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                             uint32_t period, const char *number);

/*
 * Within a write transaction: points a tenant's period at document `number`
 * without closing it, for a void of an invoice that an older ledger stored
 * in place.
 */
int ledger_invoice_point(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period, const char *number);

/*
 * Within a write transaction: reopens a closed period, which keeps pointing
 * at its (void) invoice until the next close. HM_ERR_STATE when it is open.
 */
int ledger_period_reopen(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period);

/*
 * Within a write transaction: copies the number of the period's current
 * invoice into number_out (DOCUMENT_NUMBER_MAX bytes). An invoice of an
 * older ledger gives its "invoice_number". HM_ERR_NOT_FOUND when none.
 */
int ledger_invoice_number_txn(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                              uint32_t period, char *number_out, size_t number_size);

/* ---- Price book snapshots ---- */

#define BOOK_SHA256_HEX_SIZE 65

/* Computes the SHA-256 of a book's text as 64 lowercase hex digits. */
void ledger_book_sha256(const char *json, char hex_out[BOOK_SHA256_HEX_SIZE]);

/*
 * Reads the price book of a scope and its SHA-256. A scope of an older
 * ledger that stored the text in place gets the hash of that text.
 */
int ledger_pricebook_get_snapshot(struct ledger *ledger, const char *scope, char **json_out,
                                  char sha256_out[BOOK_SHA256_HEX_SIZE]);

/* Reads a stored snapshot by its SHA-256 hex; HM_ERR_NOT_FOUND when none. */
int ledger_book_snapshot_get(struct ledger *ledger, const char *sha256_hex, char **json_out);

/* Within a write transaction: stores a snapshot under its hash, unless present. */
int ledger_book_snapshot_put(struct ledger_txn *txn, const char *json);

/* ---- Prepaid credit grants ---- */

/* Bytes of a grant's note and of a revocation's reason, as of every reason on a document. */
#define CREDIT_NOTE_MAX 500

/* One change of a grant's balance: taken by an invoice (< 0) or given back by its void (> 0). */
struct credit_use {
    char number[DOCUMENT_NUMBER_MAX];
    int64_t change_minor;
    int64_t at_s;
};

struct credit_grant {
    uint64_t id; /* assigned by ledger_credit_grant: 1, 2, ... over all tenants */
    uint8_t tenant_id[UUID_SIZE];
    char currency[4];
    int64_t amount_minor;  /* granted, > 0, in the currency's minor unit */
    int64_t balance_minor; /* what is left, 0 to amount_minor */
    int64_t granted_s;
    int64_t expires_s; /* 0: never */
    char note[CREDIT_NOTE_MAX + 1];
    int64_t revoked_s; /* 0: not revoked; else the balance is 0 from then on */
    int64_t revoked_balance_minor; /* the balance that the revocation took */
    char revoke_reason[CREDIT_NOTE_MAX + 1];
    size_t use_count;
    struct credit_use *uses; /* owned; freed by ledger_credit_grants_free */
};

/*
 * Stores a new grant with its balance equal to its amount and sets grant->id.
 * HM_ERR_INVALID when the note is not UTF-8.
 */
int ledger_credit_grant(struct ledger *ledger, struct credit_grant *grant);

/* Lists a tenant's grants by id; free them with ledger_credit_grants_free. */
int ledger_credit_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       struct credit_grant **grants_out, size_t *count_out);
void ledger_credit_grants_free(struct credit_grant *grants, size_t count);

/*
 * Revokes a grant by id: records the time and the reason and sets its
 * balance to 0, keeping the uses recorded so far. The grant as revoked,
 * without its uses (use_count 0), goes to *grant_out when that is not NULL.
 * HM_ERR_NOT_FOUND for an unknown id, HM_ERR_STATE when already revoked,
 * HM_ERR_INVALID when the reason is not UTF-8.
 */
int ledger_credit_revoke(struct ledger *ledger, uint64_t grant_id, const char *reason,
                         int64_t now_s, struct credit_grant *grant_out);

/*
 * Within a write transaction: changes a grant's balance by change_minor on
 * behalf of document `number`, and records the change. A revoked grant
 * records a give-back (change_minor > 0, from a void) but keeps its balance
 * at 0. HM_ERR_NOT_FOUND for an unknown grant, HM_ERR_INVALID when the
 * balance would leave 0..amount.
 */
int ledger_credit_change(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint64_t grant_id, int64_t change_minor, const char *number,
                         int64_t at_s);

/* ---- Billed state of a closed period ---- */

/* One change of what a closed period has billed, after its invoice. */
struct billed_change {
    char number[DOCUMENT_NUMBER_MAX]; /* the invoice or credit note that carries it */
    int64_t amount_minor;             /* > 0 late usage billed later, < 0 a credit note */
    uint64_t events_after;            /* the period's event count it accounts for */
    int late_usage;                   /* 1: a late usage correction; 0: a manual credit note */
};

/*
 * Billed state of a finalized period. A later close compares late events
 * with it.
 */
struct billed_period {
    uint32_t period;
    char number[DOCUMENT_NUMBER_MAX]; /* the period's current invoice */
    char issuer[ISSUER_NAME_MAX + 1];
    char currency[4];
    char book_sha256[BOOK_SHA256_HEX_SIZE]; /* empty: billed before snapshots existed */
    uint64_t events;       /* events the billed amounts account for */
    int64_t net_minor;     /* invoice subtotal - discount when it was finalized */
    int64_t total_minor;   /* invoice total (after credits) when it was finalized */
    int recheck;           /* 1: compare again at the next close, even with the same events */
    /*
     * The tenant's settings that the period was rated with, so that late
     * usage re-rates it the same way after the tenant changes them. 0 in
     * records written before they were kept (record version 1): such a
     * period re-rates with the tenant's current settings.
     */
    int has_billed_with;
    char support_tier[SUPPORT_TIER_NAME_MAX + 1];
    int64_t service_start_s;
    int64_t service_end_s; /* 0 for none */
    /*
     * Events per meter at the close, indexed by enum rollup_meter (storage:
     * the storage events), for comparing the sealed lines with like counts.
     * has_meter_events is 0 in records written before they were kept.
     */
    int has_meter_events;
    uint64_t meter_events[ROLLUP_EVENTS + 1];
    /*
     * SHA-256 (hex) of the usage input that the amounts account for: every
     * usage item's meter, dimension, slice and quantity (storage included).
     * A later close re-rates the period when the digest of its usage now
     * differs. Empty in records written before it was kept (versions 1 and
     * 2): such a period is re-rated when its event count changes.
     */
    char usage_sha256[BOOK_SHA256_HEX_SIZE];
    size_t change_count;
    struct billed_change *changes; /* owned; freed by ledger_billed_free */
};

void ledger_billed_free(struct billed_period *billed);

/* Reads the billed state of a tenant's period; HM_ERR_NOT_FOUND when none. */
int ledger_billed_get(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                      uint32_t period, struct billed_period *out);
int ledger_billed_get_txn(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                          uint32_t period, struct billed_period *out);

/* Lists every billed period of a tenant in period order; free each, then the array. */
int ledger_billed_list(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE],
                       struct billed_period **periods_out, size_t *count_out);

/* Within a write transaction: stores (or replaces) the billed state of a period. */
int ledger_billed_put(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                      const struct billed_period *billed);
/* Within a write transaction: removes it (HM_OK when there was none). */
int ledger_billed_delete(struct ledger_txn *txn, const uint8_t tenant_id[UUID_SIZE],
                         uint32_t period);

/* ---- Export state ---- */

/*
 * What an exporter has done with a document in an outside system, stored
 * under a key such as "stripe/HM-000001" as JSON text that the exporter
 * defines. Each put is its own synced write transaction, so that an
 * exporter killed between two steps finds every step it finished.
 */

/* Reads the state under `key`; *json_out is allocated (free()). HM_ERR_NOT_FOUND when none. */
int ledger_export_get(struct ledger *ledger, const char *key, char **json_out);

/* Stores (or replaces) the state under `key` and commits. HM_ERR_INVALID for an empty key. */
int ledger_export_put(struct ledger *ledger, const char *key, const char *json);

#endif
