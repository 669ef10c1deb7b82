/*
 * PostgreSQL connections and schema migrations for the exporter.
 *
 * A DSN is a libpq connection string ("host=... port=... dbname=... user=...
 * password=...") or URI ("postgresql://user:password@host:port/dbname").
 * Nothing here prints or logs a password: messages name the host, port,
 * database and user only, and libpq's messages are scrubbed of the DSN's
 * password before they reach `error`.
 */
#ifndef HM_ENGINE_POSTGRES_H
#define HM_ENGINE_POSTGRES_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdio.h>

/* Environment variable that supplies the DSN when --dsn is not given. */
#define PG_DSN_ENV "METER_PG_DSN"

/* Environment variable that overrides the compiled-in migrations directory. */
#define PG_MIGRATIONS_ENV "METER_SQL_DIR"

/*
 * Returns the migrations directory: $METER_SQL_DIR when set, else the sql/
 * directory of the source tree that this program was built from.
 */
const char *pg_migrations_dir(void);

/*
 * Schema version that the exporter needs: the highest migration it writes
 * to (sql/003_export_checkpoints.sql).
 */
#define PG_SCHEMA_VERSION_EXPORT 3

/*
 * Returns the DSN of --dsn (`option`, may be NULL) or of $METER_PG_DSN, or
 * NULL with the fix in `error` when neither is set or the value is empty.
 */
const char *pg_dsn_resolve(const char *option, char *error, size_t error_size);

/*
 * Writes "host H port P database D user U" for a DSN into out, from what
 * the DSN sets (libpq defaults shown as "default"). Never the password.
 */
void pg_dsn_describe(const char *dsn, char *out, size_t out_size);

/*
 * Connects with the DSN. Returns HM_OK and *conn_out, which the caller
 * closes with PQfinish. Returns HM_ERR_INVALID for a DSN that libpq cannot
 * parse, and HM_ERR_IO when the connection fails (server unreachable,
 * authentication failed, database missing). `error` then names the target
 * and the fix.
 * A DSN without connect_timeout gets 10 seconds.
 */
int pg_connect(const char *dsn, PGconn **conn_out, char *error, size_t error_size);

/*
 * Copies a libpq message into out with every occurrence of the DSN's
 * password replaced by "***" and the trailing newline removed.
 */
void pg_message_scrub(const char *dsn, const char *message, char *out, size_t out_size);

/*
 * Applies the migrations of directory `dir` (files NNN_name.sql) that the
 * database lacks, in version order, each in its own transaction together
 * with its row in schema_migrations. A session advisory lock makes
 * concurrent runs wait for each other. Before applying anything it checks
 * every applied migration. It returns HM_ERR_CONFLICT, with the file and the
 * fix in `error`, for a file whose SHA-256 differs from the one recorded,
 * an applied version without a file, or a missing version below an applied
 * one.
 * A failing migration is rolled back and returns HM_ERR_INVALID with the
 * server's message. Prints one line per applied migration and a summary
 * to `out`.
 */
int pg_migrate(PGconn *conn, const char *dsn, const char *dir, FILE *out, char *error,
               size_t error_size);

/*
 * Checks that the database has at least migration `version` applied.
 * HM_ERR_STATE with the fix ("run meterctl db migrate") when not.
 */
int pg_schema_check(PGconn *conn, int version, char *error, size_t error_size);

/*
 * Runs a statement that returns no rows to keep. Returns HM_OK, or HM_ERR_IO
 * with "<what> failed: <server message>" in `error`.
 */
int pg_exec(PGconn *conn, const char *sql, const char *what, char *error, size_t error_size);

#endif
