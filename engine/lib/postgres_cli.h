/* The meterctl commands of the PostgreSQL export: `db migrate` and `export postgres`. */
#ifndef HM_ENGINE_POSTGRES_CLI_H
#define HM_ENGINE_POSTGRES_CLI_H

#include <stdio.h>

#include "rollup/ledger.h"

/*
 * Runs `meterctl db migrate [--dsn DSN] [--migrations DIR]` (argv[0] is
 * "db"). Needs no ledger. Prints progress to `out` and errors to stderr;
 * returns the exit status (0 or 1).
 */
int postgres_db_command(int argc, char **argv, FILE *out);

/*
 * Runs `meterctl export postgres [--dsn DSN] [--tenant TENANT]
 * [--batch-rows N]` (argv[0] is "export"). Prints progress and a summary to
 * `out` and errors to stderr; returns the exit status (0 or 1).
 */
int postgres_export_command(struct ledger *ledger, int argc, char **argv, FILE *out);

#endif
