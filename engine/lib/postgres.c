#include "engine/lib/postgres.h"

#include "common/status.h"
#include "common/uuid.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/* Session advisory lock that serializes `meterctl db migrate` runs ("HMMIGRAT" in ASCII). */
#define MIGRATE_LOCK_KEY "5209905321062056276"

/* Upper bound of migration files in a directory, far above the few this schema needs. */
#define MIGRATIONS_MAX 1000

#define CHECKSUM_HEX_SIZE 65

const char *pg_migrations_dir(void)
{
    const char *dir = getenv(PG_MIGRATIONS_ENV);
    return dir && dir[0] ? dir : HM_SQL_DIR;
}

const char *pg_dsn_resolve(const char *option, char *error, size_t error_size)
{
    const char *dsn = option ? option : getenv(PG_DSN_ENV);
    if (dsn == NULL || dsn[0] == '\0') {
        snprintf(error, error_size,
                 "missing --dsn DSN (or $%s): the PostgreSQL connection string, for example "
                 "\"host=127.0.0.1 port=5432 dbname=meter user=meter\"",
                 PG_DSN_ENV);
        return NULL;
    }
    return dsn;
}

/*
 * Returns a copy of text with every occurrence of `secret` (when at least 1
 * byte) replaced by "***", or NULL without memory. The whole text is scrubbed
 * before anything is cut to an output size, so that no prefix of a secret
 * survives a cut.
 */
static char *scrub_secret(char *text, const char *secret, size_t secret_size)
{
    if (text == NULL || secret_size == 0)
        return text;
    size_t count = 0;
    for (const char *at = text; (at = strstr(at, secret)) != NULL; at += secret_size)
        count++;
    if (count == 0)
        return text;
    char *out = malloc(strlen(text) + 3 * count + 1);
    if (out != NULL) {
        size_t used = 0;
        for (const char *at = text; *at;) {
            if (strncmp(at, secret, secret_size) == 0) {
                memcpy(out + used, "***", 3);
                used += 3;
                at += secret_size;
            } else {
                out[used++] = *at++;
            }
        }
        out[used] = '\0';
    }
    free(text);
    return out;
}

/*
 * Scrubs the password candidates of a DSN that libpq may not parse. These are
 * the text after "password=" (key/value form, quoted or not) and the userinfo
 * password of a URI ("scheme://user:PASSWORD@", up to the last '@'), at any
 * length. An error about a malformed DSN then never echoes them.
 */
static char *scrub_dsn_passwords(const char *dsn, char *text)
{
    for (const char *at = dsn; text != NULL && (at = strstr(at, "password")) != NULL;) {
        const char *value = at + strlen("password");
        while (*value == ' ')
            value++;
        at = value;
        if (*value != '=')
            continue;
        value++;
        while (*value == ' ')
            value++;
        char quote = *value == '\'' ? '\'' : 0;
        if (quote)
            value++;
        size_t length = 0;
        while (value[length] && (quote ? value[length] != quote
                                       : value[length] != ' ' && value[length] != '&'))
            length++;
        char *candidate = strndup(value, length);
        if (candidate == NULL) {
            free(text);
            return NULL;
        }
        text = scrub_secret(text, candidate, length);
        free(candidate);
    }
    const char *scheme = strstr(dsn, "://");
    const char *last_at = scheme ? strrchr(scheme + 3, '@') : NULL;
    const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (text != NULL && last_at != NULL && colon != NULL && colon < last_at) {
        char *candidate = strndup(colon + 1, (size_t)(last_at - colon - 1));
        if (candidate == NULL) {
            free(text);
            return NULL;
        }
        text = scrub_secret(text, candidate, strlen(candidate));
        free(candidate);
    }
    return text;
}

/* Copies text into out on one line: no trailing newline, tabs and newlines as single spaces. */
static void one_line(const char *text, char *out, size_t out_size)
{
    snprintf(out, out_size, "%s", text);
    size_t length = strlen(out);
    while (length > 0 && (out[length - 1] == '\n' || out[length - 1] == ' '))
        out[--length] = '\0';
    size_t kept = 0;
    for (size_t i = 0; out[i]; i++) {
        char c = out[i] == '\n' || out[i] == '\t' ? ' ' : out[i];
        if (c != ' ' || kept == 0 || out[kept - 1] != ' ')
            out[kept++] = c;
    }
    out[kept] = '\0';
}

void pg_message_scrub(const char *dsn, const char *message, char *out, size_t out_size)
{
    char *text = strdup(message ? message : "");
    PQconninfoOption *options = dsn ? PQconninfoParse(dsn, NULL) : NULL;
    for (PQconninfoOption *option = options; option && option->keyword; option++) {
        if (strcmp(option->keyword, "password") == 0 && option->val != NULL)
            text = scrub_secret(text, option->val, strlen(option->val));
    }
    PQconninfoFree(options);
    if (dsn)
        text = scrub_dsn_passwords(dsn, text);
    /* Without memory for the copy, print nothing rather than a secret. */
    one_line(text ? text : "(message withheld)", out, out_size);
    free(text);
}

/*
 * libpq's reason for rejecting a DSN without the parts of the DSN that it
 * quotes: a quoted text is kept only when it is one of the fixed tokens of
 * libpq's messages ("=", ":", "/", "]").
 */
static void parse_reason(const char *message, char *out, size_t out_size)
{
    size_t used = 0;
    for (const char *at = message; *at && used + 8 < out_size;) {
        if (*at != '"') {
            out[used++] = *at++;
            continue;
        }
        const char *close = strchr(at + 1, '"');
        if (close == NULL)
            break; /* an unclosed quote: the rest is DSN text */
        size_t length = (size_t)(close - at - 1);
        int token = length == 1 && strchr("=:/]", at[1]) != NULL;
        const char *shown = token ? at : "\"...\"";
        size_t shown_size = token ? 3 : 5;
        if (used + shown_size + 1 >= out_size)
            break;
        memcpy(out + used, shown, shown_size);
        used += shown_size;
        at = close + 1;
    }
    out[used] = '\0';
    char line[512];
    one_line(out, line, sizeof line);
    snprintf(out, out_size, "%s", line);
}

/*
 * Checks that a DSN parses, and that a URI has no character that libpq would
 * read as the end of the password. An unencoded '@', '/', '?' or '#' in a
 * password moves the rest of it into the host, port or database, which are
 * printed. Returns 1 and a reason that quotes no part of the DSN when the DSN
 * is rejected.
 */
static int dsn_rejected(const char *dsn, char *reason, size_t reason_size)
{
    char *parse_error = NULL;
    PQconninfoOption *parsed = PQconninfoParse(dsn, &parse_error);
    if (parsed == NULL) {
        parse_reason(parse_error ? parse_error : "out of memory", reason, reason_size);
        PQfreemem(parse_error);
        return 1;
    }
    PQconninfoFree(parsed);
    int uri = strncmp(dsn, "postgresql://", 13) == 0 || strncmp(dsn, "postgres://", 11) == 0;
    if (!uri)
        return 0;
    const char *authority = strstr(dsn, "://") + 3;
    const char *at = strchr(authority, '@');
    if (at != NULL && strchr(at + 1, '@') != NULL) {
        snprintf(reason, reason_size, "the URI has more than one \"@\"; write an \"@\" of the "
                 "user name or password as %%40");
        return 1;
    }
    if (at != NULL && strcspn(authority, "/?#") < (size_t)(at - authority)) {
        snprintf(reason, reason_size, "a \"/\", \"?\" or \"#\" comes before the \"@\" that ends "
                 "the user name and password; write them as %%2F, %%3F and %%23");
        return 1;
    }
    return 0;
}

void pg_dsn_describe(const char *dsn, char *out, size_t out_size)
{
    char reason[512];
    if (dsn_rejected(dsn, reason, sizeof reason)) {
        snprintf(out, out_size, "a DSN that cannot be parsed (not shown)");
        return;
    }
    const char *host = NULL, *hostaddr = NULL, *port = NULL, *dbname = NULL, *user = NULL;
    PQconninfoOption *options = PQconninfoParse(dsn, NULL);
    for (PQconninfoOption *option = options; option && option->keyword; option++) {
        if (option->val == NULL || option->val[0] == '\0')
            continue;
        if (strcmp(option->keyword, "host") == 0)
            host = option->val;
        else if (strcmp(option->keyword, "hostaddr") == 0)
            hostaddr = option->val;
        else if (strcmp(option->keyword, "port") == 0)
            port = option->val;
        else if (strcmp(option->keyword, "dbname") == 0)
            dbname = option->val;
        else if (strcmp(option->keyword, "user") == 0)
            user = option->val;
    }
    if (host == NULL)
        host = hostaddr;
    char *text = NULL;
    if (asprintf(&text, "host %s port %s database %s user %s", host ? host : "default",
                 port ? port : "default", dbname ? dbname : "default",
                 user ? user : "default") < 0)
        text = NULL;
    PQconninfoFree(options);
    /* A password typed into another field is scrubbed here too. */
    pg_message_scrub(dsn, text ? text : "(target withheld)", out, out_size);
    free(text);
}

int pg_connect(const char *dsn, PGconn **conn_out, char *error, size_t error_size)
{
    char reason[512];
    if (dsn_rejected(dsn, reason, sizeof reason)) {
        /* Nothing of a DSN that failed to parse is printed: its parts may be a password's. */
        snprintf(error, error_size,
                 "invalid PostgreSQL DSN: the DSN cannot be parsed: %s; write it as \"host=H "
                 "port=P dbname=D user=U\" or \"postgresql://U@H:P/D\" (quote a value with "
                 "spaces in single quotes; percent-encode @ / ? # in a URI)",
                 reason);
        return HM_ERR_INVALID;
    }

    char target[512];
    pg_dsn_describe(dsn, target, sizeof target);
    /* Defaults first: with expand_dbname, the DSN's own settings override them. */
    const char *const keywords[] = { "connect_timeout", "application_name", "dbname", NULL };
    const char *const values[] = { "10", "meterctl", dsn, NULL };
    PGconn *conn = PQconnectdbParams(keywords, values, 1);
    if (conn == NULL) {
        snprintf(error, error_size, "cannot connect to PostgreSQL (%s): out of memory", target);
        return HM_ERR_NOMEM;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char message[1024];
        pg_message_scrub(dsn, PQerrorMessage(conn), message, sizeof message);
        int needs_password = PQconnectionNeedsPassword(conn);
        PQfinish(conn);
        if (needs_password)
            snprintf(error, error_size,
                     "cannot connect to PostgreSQL (%s): %s; the server requires a password "
                     "and none was given: set PGPASSWORD, or add the line "
                     "\"host:port:database:user:password\" to ~/.pgpass (mode 0600)",
                     target, message);
        else
            snprintf(error, error_size,
                     "cannot connect to PostgreSQL (%s): %s; check that the server runs and "
                     "accepts TCP connections there, the user and database of the DSN, and the "
                     "password (from PGPASSWORD, ~/.pgpass or password= in the DSN)",
                     target, message);
        return HM_ERR_IO;
    }
    /* The schema's IF NOT EXISTS notices are expected; warnings and errors still show. */
    PGresult *result = PQexec(conn, "SET client_min_messages = warning");
    PQclear(result);
    *conn_out = conn;
    return HM_OK;
}

int pg_exec(PGconn *conn, const char *sql, const char *what, char *error, size_t error_size)
{
    PGresult *result = PQexec(conn, sql);
    ExecStatusType status = PQresultStatus(result);
    int ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok) {
        char message[1024];
        pg_message_scrub(NULL, PQerrorMessage(conn), message, sizeof message);
        /* A message longer than the caller's buffer is cut to fit it. */
        if (snprintf(error, error_size, "%s failed: %s", what, message) < 0 && error_size > 0)
            error[0] = '\0';
    }
    PQclear(result);
    return ok ? HM_OK : HM_ERR_IO;
}

/* ---- Migration files ---- */

struct migration {
    int version;
    char file[256];
    char *text;
    char checksum[CHECKSUM_HEX_SIZE]; /* SHA-256 of the file's bytes, lowercase hex */
    int applied;
};

struct migration_set {
    struct migration *items;
    size_t count;
};

static void migration_set_free(struct migration_set *set)
{
    for (size_t i = 0; i < set->count; i++)
        free(set->items[i].text);
    free(set->items);
    set->items = NULL;
    set->count = 0;
}

/* Parses "NNN_name.sql" (three digits, then [a-z0-9_]) into its version; -1 otherwise. */
static int migration_version(const char *name)
{
    size_t length = strlen(name);
    if (length < 9 || strcmp(name + length - 4, ".sql") != 0 || name[3] != '_')
        return -1;
    for (int i = 0; i < 3; i++) {
        if (!isdigit((unsigned char)name[i]))
            return -1;
    }
    for (size_t i = 4; i < length - 4; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return -1;
    }
    int version = (name[0] - '0') * 100 + (name[1] - '0') * 10 + (name[2] - '0');
    return version >= 1 ? version : -1;
}

static char *text_read(const char *path, size_t *size_out)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return NULL;
    char *text = NULL;
    size_t size = 0, capacity = 0;
    for (;;) {
        if (size + 4096 + 1 > capacity) {
            capacity = capacity ? 2 * capacity : 8192;
            char *grown = realloc(text, capacity);
            if (grown == NULL) {
                free(text);
                fclose(file);
                return NULL;
            }
            text = grown;
        }
        size_t got = fread(text + size, 1, 4096, file);
        size += got;
        if (got < 4096)
            break;
    }
    int failed = ferror(file);
    fclose(file);
    if (failed) {
        free(text);
        return NULL;
    }
    text[size] = '\0';
    *size_out = size;
    return text;
}

static int migration_compare(const void *a, const void *b)
{
    const struct migration *left = a, *right = b;
    return (left->version > right->version) - (left->version < right->version);
}

/* Reads every NNN_name.sql file of dir with its checksum, sorted by version. */
static int migrations_load(const char *dir, struct migration_set *set, char *error,
                           size_t error_size)
{
    DIR *handle = opendir(dir);
    if (handle == NULL) {
        snprintf(error, error_size,
                 "cannot read the migrations directory %s: %s; pass --migrations DIR (the sql/ "
                 "directory of the source tree) or set $%s",
                 dir, strerror(errno), PG_MIGRATIONS_ENV);
        return HM_ERR_IO;
    }
    int status = HM_OK;
    struct dirent *entry;
    while (status == HM_OK && (entry = readdir(handle)) != NULL) {
        const char *name = entry->d_name;
        size_t length = strlen(name);
        if (length < 4 || strcmp(name + length - 4, ".sql") != 0)
            continue;
        int version = migration_version(name);
        if (version < 0 || length >= sizeof set->items[0].file) {
            snprintf(error, error_size,
                     "migration file name \"%s\" in %s is invalid: name it NNN_name.sql (three "
                     "digits from 001, then lowercase letters, digits or _)",
                     name, dir);
            status = HM_ERR_INVALID;
            break;
        }
        if (set->count == MIGRATIONS_MAX) {
            snprintf(error, error_size, "more than %d migration files in %s", MIGRATIONS_MAX,
                     dir);
            status = HM_ERR_INVALID;
            break;
        }
        struct migration *grown = realloc(set->items, (set->count + 1) * sizeof *grown);
        if (grown == NULL) {
            status = HM_ERR_NOMEM;
            break;
        }
        set->items = grown;
        struct migration *migration = &set->items[set->count];
        memset(migration, 0, sizeof *migration);
        migration->version = version;
        snprintf(migration->file, sizeof migration->file, "%s", name);

        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        size_t size = 0;
        migration->text = text_read(path, &size);
        if (migration->text == NULL) {
            snprintf(error, error_size, "cannot read migration %s: %s", path, strerror(errno));
            status = HM_ERR_IO;
            break;
        }
        set->count++;
        uint8_t digest[EVP_MAX_MD_SIZE];
        unsigned int digest_size = 0;
        if (!EVP_Digest(migration->text, size, digest, &digest_size, EVP_sha256(), NULL)) {
            status = HM_ERR_NOMEM;
            break;
        }
        hex_encode(digest, 32, migration->checksum);
    }
    closedir(handle);
    if (status != HM_OK)
        return status;

    qsort(set->items, set->count, sizeof *set->items, migration_compare);
    for (size_t i = 1; i < set->count; i++) {
        if (set->items[i].version == set->items[i - 1].version) {
            snprintf(error, error_size, "migrations %s and %s in %s have the same version %03d; "
                     "give each file its own number",
                     set->items[i - 1].file, set->items[i].file, dir, set->items[i].version);
            return HM_ERR_INVALID;
        }
    }
    if (set->count == 0) {
        snprintf(error, error_size, "no migration files (NNN_name.sql) in %s; pass --migrations "
                 "DIR with the sql/ directory of the source tree",
                 dir);
        return HM_ERR_NOT_FOUND;
    }
    return HM_OK;
}

/* ---- Applying ---- */

static struct migration *migration_find(struct migration_set *set, int version)
{
    for (size_t i = 0; i < set->count; i++) {
        if (set->items[i].version == version)
            return &set->items[i];
    }
    return NULL;
}

/* Marks the applied migrations and checks their checksums against the recorded ones. */
static int migrations_compare_applied(PGconn *conn, struct migration_set *set, int *applied_max,
                                      char *error, size_t error_size)
{
    PGresult *result = PQexec(conn, "SELECT version, name, checksum, applied_at "
                                    "FROM schema_migrations ORDER BY version");
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        char message[1024];
        pg_message_scrub(NULL, PQerrorMessage(conn), message, sizeof message);
        snprintf(error, error_size, "reading schema_migrations failed: %s", message);
        PQclear(result);
        return HM_ERR_IO;
    }
    int status = HM_OK;
    *applied_max = 0;
    for (int row = 0; row < PQntuples(result) && status == HM_OK; row++) {
        int version = atoi(PQgetvalue(result, row, 0));
        const char *name = PQgetvalue(result, row, 1);
        const char *checksum = PQgetvalue(result, row, 2);
        const char *applied_at = PQgetvalue(result, row, 3);
        struct migration *migration = migration_find(set, version);
        if (migration == NULL) {
            snprintf(error, error_size,
                     "the database has migration %s (version %03d, applied %s) but the "
                     "migrations directory has no file of that version; use the migrations of "
                     "the meterctl that applied it",
                     name, version, applied_at);
            status = HM_ERR_CONFLICT;
        } else if (strcmp(migration->checksum, checksum) != 0) {
            snprintf(error, error_size,
                     "migration %s changed after it was applied (%s): its SHA-256 is now %s, "
                     "the database recorded %s; restore the file as it was applied and put the "
                     "change in a new migration file",
                     migration->file, applied_at, migration->checksum, checksum);
            status = HM_ERR_CONFLICT;
        } else {
            migration->applied = 1;
            if (version > *applied_max)
                *applied_max = version;
        }
    }
    PQclear(result);
    for (size_t i = 0; status == HM_OK && i < set->count; i++) {
        if (!set->items[i].applied && set->items[i].version < *applied_max) {
            snprintf(error, error_size,
                     "migration %s is not applied, but a later one (version %03d) is; a "
                     "migration added below the applied ones cannot be ordered, so renumber it "
                     "above %03d",
                     set->items[i].file, *applied_max, *applied_max);
            status = HM_ERR_CONFLICT;
        }
    }
    return status;
}

/* Applies one migration and records it, in one transaction. */
static int migration_apply(PGconn *conn, const struct migration *migration, char *error,
                           size_t error_size)
{
    char what[320];
    snprintf(what, sizeof what, "migration %s", migration->file);
    int rc = pg_exec(conn, "BEGIN", what, error, error_size);
    if (rc != HM_OK)
        return rc;
    PGresult *result = PQexec(conn, migration->text);
    if (PQresultStatus(result) != PGRES_COMMAND_OK && PQresultStatus(result) != PGRES_TUPLES_OK) {
        char message[1024];
        pg_message_scrub(NULL, PQerrorMessage(conn), message, sizeof message);
        snprintf(error, error_size,
                 "migration %s failed and was rolled back: %s; fix the file (it was never "
                 "applied) and run db migrate again",
                 migration->file, message);
        PQclear(result);
        PQclear(PQexec(conn, "ROLLBACK"));
        return HM_ERR_INVALID;
    }
    PQclear(result);

    char version[16];
    snprintf(version, sizeof version, "%d", migration->version);
    const char *params[] = { version, migration->file, migration->checksum };
    result = PQexecParams(conn,
                          "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                          "VALUES ($1, $2, $3, now())",
                          3, NULL, params, NULL, NULL, 0);
    int recorded = PQresultStatus(result) == PGRES_COMMAND_OK;
    PQclear(result);
    if (!recorded) {
        char message[1024];
        pg_message_scrub(NULL, PQerrorMessage(conn), message, sizeof message);
        snprintf(error, error_size, "recording migration %s failed: %s", migration->file,
                 message);
        PQclear(PQexec(conn, "ROLLBACK"));
        return HM_ERR_IO;
    }
    return pg_exec(conn, "COMMIT", what, error, error_size);
}

/* Takes the migration lock, waiting (and saying so) while another run holds it. */
static int migrate_lock(PGconn *conn, const char *target, FILE *out, char *error,
                        size_t error_size)
{
    PGresult *result = PQexec(conn, "SELECT pg_try_advisory_lock(" MIGRATE_LOCK_KEY ")");
    int taken = PQresultStatus(result) == PGRES_TUPLES_OK &&
                strcmp(PQgetvalue(result, 0, 0), "t") == 0;
    PQclear(result);
    if (taken)
        return HM_OK;
    fprintf(out, "migrate: another migration of %s is running; waiting for it\n", target);
    fflush(out);
    return pg_exec(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", "taking the migration "
                   "lock", error, error_size);
}

int pg_migrate(PGconn *conn, const char *dsn, const char *dir, FILE *out, char *error,
               size_t error_size)
{
    struct migration_set set = { 0 };
    int rc = migrations_load(dir, &set, error, error_size);
    if (rc != HM_OK) {
        migration_set_free(&set);
        return rc;
    }
    char target[512];
    pg_dsn_describe(dsn, target, sizeof target);
    rc = migrate_lock(conn, target, out, error, error_size);
    if (rc != HM_OK) {
        migration_set_free(&set);
        return rc;
    }

    /* The table of applied migrations comes first, under the lock, so that it exists once. */
    rc = pg_exec(conn,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " version INTEGER PRIMARY KEY CHECK (version >= 1),"
                 " name TEXT NOT NULL,"
                 " checksum CHAR(64) NOT NULL,"
                 " applied_at TIMESTAMPTZ NOT NULL)",
                 "creating schema_migrations", error, error_size);
    int applied_max = 0;
    if (rc == HM_OK)
        rc = migrations_compare_applied(conn, &set, &applied_max, error, error_size);

    int applied_now = 0, applied_before = 0;
    for (size_t i = 0; rc == HM_OK && i < set.count; i++) {
        if (set.items[i].applied) {
            applied_before++;
            continue;
        }
        rc = migration_apply(conn, &set.items[i], error, error_size);
        if (rc == HM_OK) {
            fprintf(out, "migrate: applied %s\n", set.items[i].file);
            applied_now++;
            applied_max = set.items[i].version;
        }
    }
    if (rc == HM_OK)
        fprintf(out, "migrate: %s is at version %03d (%d applied now, %d before)\n", target,
                applied_max, applied_now, applied_before);

    char unlock_error[256];
    pg_exec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", "releasing the lock",
            unlock_error, sizeof unlock_error);
    migration_set_free(&set);
    return rc;
}

int pg_schema_check(PGconn *conn, int version, char *error, size_t error_size)
{
    PGresult *result = PQexec(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations");
    int status = HM_OK;
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "42P01") == 0) {
            snprintf(error, error_size, "the database has no Harpoon Meter schema; run "
                     "`meterctl db migrate --dsn DSN` first");
        } else {
            char message[1024];
            pg_message_scrub(NULL, PQerrorMessage(conn), message, sizeof message);
            snprintf(error, error_size, "reading schema_migrations failed: %s", message);
        }
        status = HM_ERR_STATE;
    } else if (atoi(PQgetvalue(result, 0, 0)) < version) {
        snprintf(error, error_size, "the database schema is at version %03d and the export "
                 "needs %03d; run `meterctl db migrate --dsn DSN` first",
                 atoi(PQgetvalue(result, 0, 0)), version);
        status = HM_ERR_STATE;
    }
    PQclear(result);
    return status;
}
