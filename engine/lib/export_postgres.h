/*
 * Export of the ledger to PostgreSQL (the schema of sql/): tenants with
 * their settings, API key hashes, sealed invoices with their lines, credit
 * notes, and every stored usage event.
 *
 * Exactly once for events: each tenant's events are copied in ledger
 * arrival order (ledger_arrivals_each), in transactions of at most
 * batch_rows rows, and each transaction also moves the tenant's row in
 * export_checkpoints to the last arrival number it copied. A run killed at
 * any point leaves either the whole transaction (rows and checkpoint) or
 * none of it, so the next run resumes after the last committed checkpoint.
 * Documents and tenants are upserts keyed by number and id, so a rerun
 * copies status changes (a void) and nothing twice.
 */
#ifndef HM_ENGINE_EXPORT_POSTGRES_H
#define HM_ENGINE_EXPORT_POSTGRES_H

#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>

#include "rollup/ledger.h"

/* Default of --batch-rows: events per transaction. */
#define EXPORT_BATCH_ROWS_DEFAULT 10000
/* Upper bound of --batch-rows: a batch is held in memory (a few hundred bytes per event). */
#define EXPORT_BATCH_ROWS_MAX 1000000

/*
 * Test hook: when this environment variable is N > 0, the exporter kills
 * itself with SIGKILL right after it has sent its Nth event row of the run
 * into a COPY. The COPY has not ended then, so tests crash it at a known
 * point.
 */
#define EXPORT_KILL_AFTER_ROWS_ENV "METER_EXPORT_TEST_KILL_AFTER_ROWS"

struct export_postgres_options {
    const char *dsn;          /* for messages: host, port and database, never the password */
    const struct tenant *only; /* export this tenant only; NULL: all tenants */
    uint64_t batch_rows;      /* events per transaction, 1..EXPORT_BATCH_ROWS_MAX */
    uint64_t kill_after_rows; /* test hook (see above); 0: off */
};

struct export_postgres_counts {
    uint64_t tenants, tenants_written; /* seen, inserted or changed */
    uint64_t keys, keys_written;
    uint64_t invoices, invoices_written;
    uint64_t invoice_lines_written;
    uint64_t credit_notes, credit_notes_written;
    uint64_t events_written;
    uint64_t event_transactions;
    uint64_t partitions_created;
};

/*
 * Exports the ledger through `conn` (schema at PG_SCHEMA_VERSION_EXPORT or
 * later). Prints progress and a summary to `out`, and fills *counts when not
 * NULL. Returns HM_OK or an error with the reason and the fix in `error`:
 * HM_ERR_STATE when the schema is missing, another export keeps the lock or
 * a checkpoint is ahead of the ledger. HM_ERR_IO when a statement failed,
 * in which case what was committed before stays and the next run resumes.
 * Or the ledger's error.
 */
int export_postgres(struct ledger *ledger, PGconn *conn,
                    const struct export_postgres_options *options, FILE *out,
                    struct export_postgres_counts *counts, char *error, size_t error_size);

#endif
