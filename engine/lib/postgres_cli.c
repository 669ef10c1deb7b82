#include "engine/lib/postgres_cli.h"

#include "common/status.h"
#include "engine/lib/export_postgres.h"
#include "engine/lib/postgres.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("meterctl: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return 1;
}

/*
 * Reads "--name VALUE" options from argv[first..]: every argument must be
 * one of `names`, each followed by its value. values[i] gets the value of
 * names[i] or NULL. Returns 0, or 1 after printing the error.
 */
static int options_read(int argc, char **argv, int first, const char *const *names,
                        const char **values, const char *usage)
{
    for (size_t i = 0; names[i] != NULL; i++)
        values[i] = NULL;
    for (int i = first; i < argc; i++) {
        size_t known = 0;
        while (names[known] != NULL && strcmp(argv[i], names[known]) != 0)
            known++;
        if (names[known] == NULL)
            return fail("unexpected argument \"%s\"; usage: %s", argv[i], usage);
        if (i + 1 >= argc)
            return fail("option %s needs a value; usage: %s", argv[i], usage);
        values[known] = argv[++i];
    }
    return 0;
}

/* Parses a decimal count from 1 to max; returns 0 on error. */
static uint64_t count_parse(const char *text, uint64_t max)
{
    if (text == NULL || text[0] < '0' || text[0] > '9')
        return 0;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 1 || value > max)
        return 0;
    return value;
}

int postgres_db_command(int argc, char **argv, FILE *out)
{
    static const char usage[] = "meterctl db migrate [--dsn DSN] [--migrations DIR]";
    if (argc < 2 || strcmp(argv[1], "migrate") != 0)
        return fail("unknown db command \"%s\"; usage: %s", argc < 2 ? "" : argv[1], usage);
    static const char *const names[] = { "--dsn", "--migrations", NULL };
    const char *values[2];
    if (options_read(argc, argv, 2, names, values, usage))
        return 1;
    char error[2048] = "";
    const char *dsn = pg_dsn_resolve(values[0], error, sizeof error);
    if (dsn == NULL)
        return fail("%s", error);
    const char *dir = values[1] ? values[1] : pg_migrations_dir();

    char target[512];
    pg_dsn_describe(dsn, target, sizeof target);
    fprintf(out, "migrate: %s, migrations from %s\n", target, dir);
    fflush(out);
    PGconn *conn = NULL;
    if (pg_connect(dsn, &conn, error, sizeof error) != HM_OK)
        return fail("%s", error);
    int rc = pg_migrate(conn, dsn, dir, out, error, sizeof error);
    PQfinish(conn);
    return rc == HM_OK ? 0 : fail("%s", error);
}

/* Reads the test hook's environment variable; returns 0 and sets *rows, or 1 on a bad value. */
static int kill_hook_read(uint64_t *rows)
{
    const char *text = getenv(EXPORT_KILL_AFTER_ROWS_ENV);
    *rows = 0;
    if (text == NULL || text[0] == '\0')
        return 0;
    *rows = count_parse(text, UINT64_MAX);
    if (*rows == 0)
        return fail("invalid %s \"%s\": expected a row count of 1 or more, or unset it",
                    EXPORT_KILL_AFTER_ROWS_ENV, text);
    return 0;
}

int postgres_export_command(struct ledger *ledger, int argc, char **argv, FILE *out)
{
    static const char usage[] =
        "meterctl export postgres [--dsn DSN] [--tenant TENANT] [--batch-rows N]";
    if (argc < 2 || strcmp(argv[1], "postgres") != 0)
        return fail("unknown export target \"%s\"; usage: %s", argc < 2 ? "" : argv[1], usage);
    static const char *const names[] = { "--dsn", "--tenant", "--batch-rows", NULL };
    const char *values[3];
    if (options_read(argc, argv, 2, names, values, usage))
        return 1;
    char error[2048] = "";
    struct export_postgres_options options = { .batch_rows = EXPORT_BATCH_ROWS_DEFAULT };
    options.dsn = pg_dsn_resolve(values[0], error, sizeof error);
    if (options.dsn == NULL)
        return fail("%s", error);
    if (values[2] != NULL) {
        options.batch_rows = count_parse(values[2], EXPORT_BATCH_ROWS_MAX);
        if (options.batch_rows == 0)
            return fail("invalid --batch-rows \"%s\": expected events per transaction from 1 "
                        "to %d",
                        values[2], EXPORT_BATCH_ROWS_MAX);
    }
    if (kill_hook_read(&options.kill_after_rows))
        return 1;

    struct tenant only;
    if (values[1] != NULL) {
        int rc = ledger_tenant_find(ledger, values[1], &only);
        if (rc == HM_ERR_NOT_FOUND)
            return fail("tenant \"%s\" not found; `meterctl tenant list` shows the tenants",
                        values[1]);
        if (rc != HM_OK)
            return fail("cannot read tenant \"%s\": %s", values[1], hm_status_str(rc));
        options.only = &only;
    }

    PGconn *conn = NULL;
    if (pg_connect(options.dsn, &conn, error, sizeof error) != HM_OK)
        return fail("%s", error);
    int rc = export_postgres(ledger, conn, &options, out, NULL, error, sizeof error);
    PQfinish(conn);
    return rc == HM_OK ? 0 : fail("%s", error);
}
