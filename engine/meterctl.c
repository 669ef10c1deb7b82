/* meterctl: the command line of billing staff and operators. */
#include "common/log.h"
#include "common/status.h"
#include "engine/lib/billing.h"
#include "engine/lib/replay.h"
#include "ingest/apikey.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: meterctl [--data DIR] COMMAND ...\n"
    "\n"
    "  tenant create NAME [--id UUID] [--service-start YYYY-MM-DD]\n"
    "                               create a tenant (prints its id); the base fee is\n"
    "                               charged from the service start (default: now), prorated\n"
    "  tenant list                  list tenants\n"
    "  key create TENANT [--keys-file FILE]\n"
    "                               create an API key; the key is printed once, or appended\n"
    "                               to FILE (mode 0600) as \"TENANT_ID NAME KEY\" instead\n"
    "  key revoke KEY_ID            revoke a key (16 hex digits)\n"
    "  key list TENANT              list a tenant's keys (ids and status, never secrets)\n"
    "  pricebook check FILE         validate a price book and print every error\n"
    "  pricebook load FILE [--tenant TENANT]\n"
    "                               store the default price book, or a tenant's own\n"
    "  pricebook show [--tenant TENANT]\n"
    "  usage TENANT --period YYYY-MM\n"
    "                               show a tenant's usage and its draft invoice\n"
    "  verify TENANT --period YYYY-MM\n"
    "                               recount the period from the ledger and compare rollups\n"
    "  close --period YYYY-MM [--invoices DIR]\n"
    "                               close the period for every tenant and seal the invoices\n"
    "                               (files under DIR, default DATA/invoices)\n"
    "  invoice show TENANT --period YYYY-MM [--json]\n"
    "  replay ...                   send trace events to meterd (meterctl replay --help)\n"
    "\n"
    "TENANT is a tenant name or id. DATA is ./meter-data, or $METER_DATA, or --data.\n";

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

/* Returns the value of "--name VALUE" in argv, or NULL. */
static const char *option_value(int argc, char **argv, const char *name)
{
    for (int i = 0; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    }
    return NULL;
}

static int has_flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return 1;
    }
    return 0;
}

/* Rejects any option not in `allowed` (a NULL-terminated list of names that take a value). */
static int check_options(int argc, char **argv, int first, const char *const *with_value,
                         const char *const *flags)
{
    for (int i = first; i < argc; i++) {
        int known = 0;
        for (const char *const *name = with_value; *name && !known; name++) {
            if (strcmp(argv[i], *name) == 0) {
                if (i + 1 >= argc)
                    return fail("option %s needs a value", argv[i]);
                known = 1;
                i++;
            }
        }
        for (const char *const *name = flags; name && *name && !known; name++)
            known = strcmp(argv[i], *name) == 0;
        if (!known)
            return fail("unexpected argument \"%s\"; see meterctl --help", argv[i]);
    }
    return 0;
}

static int find_tenant(struct ledger *ledger, const char *name_or_id, struct tenant *out)
{
    int rc = ledger_tenant_find(ledger, name_or_id, out);
    if (rc == HM_ERR_NOT_FOUND)
        return fail("tenant \"%s\" not found; `meterctl tenant list` shows the tenants",
                    name_or_id);
    if (rc != HM_OK)
        return fail("cannot read tenant \"%s\": %s", name_or_id, hm_status_str(rc));
    return 0;
}

static int period_option(int argc, char **argv, uint32_t *period)
{
    const char *text = option_value(argc, argv, "--period");
    if (text == NULL)
        return fail("missing --period YYYY-MM");
    if (period_parse(text, period) != HM_OK)
        return fail("invalid period \"%s\": write the month as YYYY-MM, for example 2024-06",
                    text);
    return 0;
}

/* Copies text for an error message, writing bytes outside printable ASCII as \xNN. */
static void escape_for_terminal(const char *text, char *out, size_t size)
{
    size_t used = 0;
    for (const unsigned char *c = (const unsigned char *)text; *c != '\0' && used + 5 < size;
         c++) {
        if (*c >= 0x20 && *c < 0x7f)
            out[used++] = (char)*c;
        else
            used += (size_t)snprintf(out + used, size - used, "\\x%02x", *c);
    }
    out[used] = '\0';
}

/*
 * Tenant names are file names of invoices and labels in logs: [A-Za-z0-9._-],
 * 1 to 64 bytes. A name may not have the shape of a UUID, because a TENANT
 * argument is looked up as an id first.
 */
static int tenant_name_valid(const char *name)
{
    size_t size = strlen(name);
    uint8_t id[UUID_SIZE];
    if (size == 0 || size > TENANT_NAME_MAX || name[0] == '.' || name[0] == '-' ||
        uuid_parse(name, id) == HM_OK)
        return 0;
    for (size_t i = 0; i < size; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Parses YYYY-MM-DD as midnight UTC; a day that the month does not have is invalid. */
static int date_parse(const char *text, int64_t *seconds_out)
{
    struct tm tm = { 0 };
    const char *end = strptime(text, "%Y-%m-%d", &tm);
    if (end == NULL || *end != '\0')
        return HM_ERR_INVALID;
    int year = tm.tm_year, month = tm.tm_mon, day = tm.tm_mday;
    time_t seconds = timegm(&tm);
    /* timegm normalizes 2024-02-30 to 2024-03-01; a changed date means it did not exist. */
    if (tm.tm_year != year || tm.tm_mon != month || tm.tm_mday != day)
        return HM_ERR_INVALID;
    *seconds_out = (int64_t)seconds;
    return HM_OK;
}

/* ---- tenant ---- */

static int tenant_create(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--id", "--service-start", NULL };
    if (argc < 3)
        return fail("usage: meterctl tenant create NAME [--id UUID] [--service-start YYYY-MM-DD]");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    struct tenant tenant = { 0 };
    if (!tenant_name_valid(argv[2])) {
        char shown[4 * TENANT_NAME_MAX + 8];
        escape_for_terminal(argv[2], shown, sizeof shown);
        return fail("invalid tenant name \"%s\": use 1 to 64 letters, digits, '.', '_' or '-', "
                    "not starting with '.' or '-' and not shaped like a UUID", shown);
    }
    snprintf(tenant.name, sizeof tenant.name, "%s", argv[2]);
    const char *id = option_value(argc, argv, "--id");
    if (id != NULL && uuid_parse(id, tenant.id) != HM_OK)
        return fail("invalid --id \"%s\": expected a UUID such as "
                    "0b7c6a52-8f1e-4c1a-9a57-0f3c2d1e4b6a", id);
    if (id == NULL && uuid_random(tenant.id) != HM_OK)
        return fail("cannot generate a tenant id: the system random source failed");
    const char *start = option_value(argc, argv, "--service-start");
    if (start != NULL && date_parse(start, &tenant.service_start_s) != HM_OK)
        return fail("invalid --service-start \"%s\": expected a date that exists, as YYYY-MM-DD",
                    start);
    tenant.created_s = (int64_t)time(NULL);
    /* Without a start date the service starts now, so no base fee is charged for earlier months. */
    if (start == NULL)
        tenant.service_start_s = tenant.created_s;
    tenant.active = 1;

    int rc = ledger_tenant_create(ledger, &tenant);
    if (rc == HM_ERR_EXISTS)
        return fail("tenant \"%s\" or its id already exists; pick another name or id", tenant.name);
    if (rc != HM_OK)
        return fail("cannot create tenant \"%s\": %s", tenant.name, hm_status_str(rc));
    char text[UUID_TEXT_SIZE];
    uuid_format(tenant.id, text);
    printf("%s %s\n", text, tenant.name);
    return 0;
}

static int tenant_list(struct ledger *ledger)
{
    struct tenant *tenants = NULL;
    size_t count = 0;
    int rc = ledger_tenant_list(ledger, &tenants, &count);
    if (rc != HM_OK)
        return fail("cannot list tenants: %s", hm_status_str(rc));
    printf("%-36s  %-24s  %s\n", "id", "name", "status");
    for (size_t i = 0; i < count; i++) {
        char id[UUID_TEXT_SIZE];
        uuid_format(tenants[i].id, id);
        printf("%-36s  %-24s  %s\n", id, tenants[i].name, tenants[i].active ? "active" : "inactive");
    }
    free(tenants);
    return 0;
}

/* ---- key ---- */

/*
 * Opens a keys file for appending. A file that other users can read is
 * rejected before any key is made, because the line written contains a secret.
 * Returns the descriptor, or -1 after printing the error.
 */
static int keys_file_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail("cannot open keys file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat info;
    if (fstat(fd, &info) == 0 && (info.st_mode & 077) != 0) {
        close(fd);
        fail("keys file %s can be read by other users; run chmod 600 %s and try again", path,
             path);
        return -1;
    }
    return fd;
}

static int keys_file_append(int fd, const char *path, const struct tenant *tenant,
                            const char *key_text)
{
    char id[UUID_TEXT_SIZE];
    uuid_format(tenant->id, id);
    char line[256];
    int size = snprintf(line, sizeof line, "%s %s %s\n", id, tenant->name, key_text);
    ssize_t written = write(fd, line, (size_t)size);
    memset(line, 0, sizeof line);
    if (written != size)
        return fail("cannot write keys file %s: %s; the key was created, so revoke it with "
                    "`meterctl key revoke` and create another", path, strerror(errno));
    return 0;
}

static int key_create(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--keys-file", NULL };
    if (argc < 3)
        return fail("usage: meterctl key create TENANT [--keys-file FILE]");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    struct tenant tenant;
    if (find_tenant(ledger, argv[2], &tenant))
        return 1;
    const char *keys_file = option_value(argc, argv, "--keys-file");
    int keys_fd = keys_file ? keys_file_open(keys_file) : -1;
    if (keys_file && keys_fd < 0)
        return 1;

    struct apikey key;
    int rc = apikey_generate(&key);
    struct key_record record = { .key_id = key.key_id, .status = KEY_ACTIVE,
                                 .created_s = (int64_t)time(NULL) };
    if (rc == HM_OK) {
        memcpy(record.tenant_id, tenant.id, UUID_SIZE);
        apikey_signing_key(key.secret, record.signing_key);
        apikey_secret_hash(key.secret, record.secret_hash);
        rc = ledger_key_put(ledger, &record);
    }
    if (rc != HM_OK) {
        if (keys_fd >= 0)
            close(keys_fd);
        return fail("cannot create the key: %s", hm_status_str(rc));
    }

    char text[APIKEY_TEXT_SIZE];
    apikey_format(&key, text);
    int status = 0;
    if (keys_fd >= 0) {
        status = keys_file_append(keys_fd, keys_file, &tenant, text);
        if (close(keys_fd) != 0 && status == 0)
            status = fail("cannot write keys file %s: %s", keys_file, strerror(errno));
        if (status == 0)
            printf("key %016" PRIx64 " created for tenant %s; appended to %s\n", key.key_id,
                   tenant.name, keys_file);
    } else {
        printf("%s\n", text);
    }
    memset(&key, 0, sizeof key);
    memset(text, 0, sizeof text);
    return status;
}

static int key_revoke(struct ledger *ledger, int argc, char **argv)
{
    if (argc != 3)
        return fail("usage: meterctl key revoke KEY_ID");
    uint8_t bytes[8];
    if (strlen(argv[2]) != 16 || hex_decode(argv[2], bytes, 8) != HM_OK)
        return fail("invalid key id \"%s\": expected the 16 hex digits after \"hmk_\"", argv[2]);
    uint64_t key_id = 0;
    for (int i = 0; i < 8; i++)
        key_id = key_id << 8 | bytes[i];
    int rc = ledger_key_revoke(ledger, key_id, (int64_t)time(NULL));
    if (rc == HM_ERR_NOT_FOUND)
        return fail("key %s not found; `meterctl key list TENANT` shows the keys", argv[2]);
    if (rc == HM_ERR_STATE)
        return fail("key %s is already revoked", argv[2]);
    if (rc != HM_OK)
        return fail("cannot revoke key %s: %s", argv[2], hm_status_str(rc));
    printf("key %s revoked\n", argv[2]);
    return 0;
}

static int key_list(struct ledger *ledger, int argc, char **argv)
{
    if (argc != 3)
        return fail("usage: meterctl key list TENANT");
    struct tenant tenant;
    if (find_tenant(ledger, argv[2], &tenant))
        return 1;
    struct key_record *keys = NULL;
    size_t count = 0;
    int rc = ledger_key_list(ledger, tenant.id, &keys, &count);
    if (rc != HM_OK)
        return fail("cannot list keys: %s", hm_status_str(rc));
    printf("%-16s  %-8s  %s\n", "key id", "status", "created");
    for (size_t i = 0; i < count; i++) {
        char created[32];
        time_t at = (time_t)keys[i].created_s;
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&at));
        printf("%016" PRIx64 "  %-8s  %s\n", keys[i].key_id,
               keys[i].status == KEY_ACTIVE ? "active" : "revoked", created);
    }
    free(keys);
    return 0;
}

/* ---- pricebook ---- */

static char *file_read(const char *path, size_t *size_out)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return NULL;
    char *text = malloc(PRICEBOOK_FILE_SIZE_MAX + 1);
    size_t size = text ? fread(text, 1, PRICEBOOK_FILE_SIZE_MAX + 1, file) : 0;
    fclose(file);
    if (text == NULL || size > PRICEBOOK_FILE_SIZE_MAX) {
        free(text);
        errno = EFBIG;
        return NULL;
    }
    text[size] = '\0';
    *size_out = size;
    return text;
}

static int pricebook_command(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--tenant", NULL };
    if (argc < 2)
        return fail("usage: meterctl pricebook check|load|show ...");
    const char *tenant_name = option_value(argc, argv, "--tenant");
    char scope[UUID_TEXT_SIZE] = "default";
    if (tenant_name) {
        struct tenant tenant;
        if (find_tenant(ledger, tenant_name, &tenant))
            return 1;
        uuid_format(tenant.id, scope);
    }
    if (strcmp(argv[1], "show") == 0) {
        if (check_options(argc, argv, 2, with_value, NULL))
            return 1;
        char *json = NULL;
        int rc = ledger_pricebook_get(ledger, scope, &json);
        if (rc == HM_ERR_NOT_FOUND)
            return fail(tenant_name ? "tenant %s has no price book of its own, so the default "
                                      "applies; load one with `meterctl pricebook load FILE "
                                      "--tenant %s`"
                                    : "no default price book is loaded%s; load one with "
                                      "`meterctl pricebook load FILE`%s",
                        tenant_name ? tenant_name : "", tenant_name ? tenant_name : "");
        if (rc != HM_OK)
            return fail("cannot read the price book: %s", hm_status_str(rc));
        printf("%s\n", json);
        free(json);
        return 0;
    }
    if (argc < 3)
        return fail("usage: meterctl pricebook %s FILE", argv[1]);
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    size_t size = 0;
    char *text = file_read(argv[2], &size);
    if (text == NULL)
        return fail("cannot read price book %s: %s", argv[2], strerror(errno));
    char errors[8192];
    size_t error_count = 0;
    int rc = pricebook_check(text, size, errors, sizeof errors, &error_count);
    if (rc != HM_OK) {
        size_t errors_size = strlen(errors);
        fprintf(stderr, "%s: %zu error%s\n%s%s", argv[2], error_count, error_count == 1 ? "" : "s",
                errors, errors_size > 0 && errors[errors_size - 1] != '\n' ? "\n" : "");
        free(text);
        return 1;
    }
    if (strcmp(argv[1], "check") == 0) {
        printf("%s: valid\n", argv[2]);
    } else if (strcmp(argv[1], "load") == 0) {
        rc = ledger_pricebook_put(ledger, scope, text);
        if (rc != HM_OK) {
            free(text);
            return fail("cannot store the price book: %s", hm_status_str(rc));
        }
        printf("price book %s loaded as %s\n", argv[2], tenant_name ? tenant_name : "default");
    } else {
        free(text);
        return fail("unknown pricebook command \"%s\": use check, load or show", argv[1]);
    }
    free(text);
    return 0;
}

/* ---- usage, verify, close, invoice ---- */

static const char *meter_name(enum rollup_meter meter)
{
    switch (meter) {
    case ROLLUP_GPU_SECONDS: return "gpu_seconds";
    case ROLLUP_INPUT_TOKENS: return "input_tokens";
    case ROLLUP_OUTPUT_TOKENS: return "output_tokens";
    case ROLLUP_CACHED_INPUT_TOKENS: return "cached_input_tokens";
    case ROLLUP_API_CALLS: return "api_calls";
    case ROLLUP_STORAGE_BYTE_SECONDS: return "storage_byte_seconds";
    case ROLLUP_TRANSFER_BYTES: return "transfer_bytes";
    case ROLLUP_EVENTS: return "events";
    }
    return "unknown";
}

/* Reports the events of a closed period that arrived after its invoice was sealed. */
static void late_events_report(struct ledger *ledger, const struct tenant *tenant,
                               uint32_t period, const char *invoice_json)
{
    json_error_t error;
    json_t *invoice = json_loads(invoice_json, 0, &error);
    json_t *sealed = invoice ? json_object_get(invoice, "event_count") : NULL;
    uint64_t now = 0;
    if (json_is_integer(sealed) && billing_event_count(ledger, tenant, period, &now) == HM_OK &&
        now > (uint64_t)json_integer_value(sealed))
        printf("\nNOTE: %" PRIu64 " events of %04u-%02u arrived after the close. They are "
               "stored and in the rollups above, but on no invoice yet.\n",
               now - (uint64_t)json_integer_value(sealed), period / 100, period % 100);
    json_decref(invoice);
}

static int usage_command(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", NULL };
    uint32_t period;
    if (argc < 2)
        return fail("usage: meterctl usage TENANT --period YYYY-MM");
    struct tenant tenant;
    if (check_options(argc, argv, 2, with_value, NULL) || period_option(argc, argv, &period) ||
        find_tenant(ledger, argv[1], &tenant))
        return 1;
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = ledger_rollups(ledger, tenant.id, period, &rows, &count);
    if (rc != HM_OK)
        return fail("cannot read usage: %s", hm_status_str(rc));
    printf("Usage of %s for %04u-%02u\n\n%-22s %-24s %28s %12s\n", tenant.name, period / 100,
           period % 100, "meter", "dimension", "quantity", "events");
    for (size_t i = 0; i < count; i++) {
        char quantity[MONEY_TEXT_SIZE];
        money_int128_format((__int128)rows[i].quantity, quantity, sizeof quantity);
        /* Storage byte-seconds are integrated from the samples at read time, not counted. */
        char events[24] = "-";
        if (rows[i].meter != ROLLUP_STORAGE_BYTE_SECONDS)
            snprintf(events, sizeof events, "%" PRIu64, rows[i].event_count);
        printf("%-22s %-24s %28s %12s\n", meter_name(rows[i].meter), rows[i].dimension, quantity,
               events);
    }
    free(rows);

    int closed = ledger_period_closed(ledger, tenant.id, period);
    char *stored = NULL;
    if (closed > 0 && ledger_invoice_get(ledger, tenant.id, period, &stored) == HM_OK) {
        printf("\nThe period is closed; its invoice:\n\n");
        billing_invoice_print(stored, stdout);
        late_events_report(ledger, &tenant, period, stored);
        free(stored);
        return 0;
    }
    struct invoice invoice;
    char error[512] = "";
    rc = billing_draft(ledger, &tenant, period, &invoice, NULL, error, sizeof error);
    if (rc != HM_OK) {
        printf("\nNo draft invoice: %s\n", error[0] ? error : hm_status_str(rc));
        return 0;
    }
    json_t *json = NULL;
    char *text = NULL;
    if (invoice_to_json(&invoice, &json) == HM_OK && (text = json_dumps(json, 0)) != NULL) {
        printf("\nDraft invoice (the period is open):\n\n");
        billing_invoice_print(text, stdout);
    }
    free(text);
    json_decref(json);
    invoice_free(&invoice);
    return 0;
}

static int verify_command(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", NULL };
    uint32_t period;
    struct tenant tenant;
    if (argc < 2)
        return fail("usage: meterctl verify TENANT --period YYYY-MM");
    if (check_options(argc, argv, 2, with_value, NULL) || period_option(argc, argv, &period) ||
        find_tenant(ledger, argv[1], &tenant))
        return 1;
    int rc = ledger_verify(ledger, tenant.id, period);
    if (rc == HM_ERR_CONFLICT)
        return fail("tenant %s %04u-%02u: rollups differ from the recount of the ledger",
                    tenant.name, period / 100, period % 100);
    if (rc != HM_OK)
        return fail("cannot verify: %s", hm_status_str(rc));
    uint64_t events = 0;
    ledger_event_count(ledger, tenant.id, &events);
    printf("tenant %s %04u-%02u: rollups match the ledger (%" PRIu64 " events stored in all "
           "periods)\n", tenant.name, period / 100, period % 100, events);
    return 0;
}

static int close_command(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", "--invoices", NULL };
    uint32_t period;
    if (check_options(argc, argv, 1, with_value, NULL) || period_option(argc, argv, &period))
        return 1;
    int64_t period_end_s = period_start_us(period_next(period)) / 1000000;
    if (period_end_s > (int64_t)time(NULL)) {
        uint32_t next = period_next(period);
        return fail("period %04u-%02u has not ended yet (it ends %04u-%02u-01T00:00:00Z); "
                    "close it after it ends, so that no usage of it goes unbilled",
                    period / 100, period % 100, next / 100, next % 100);
    }
    char default_dir[4096];
    snprintf(default_dir, sizeof default_dir, "%s/invoices", data_dir);
    const char *invoices_dir = option_value(argc, argv, "--invoices");
    return billing_close(ledger, period, invoices_dir ? invoices_dir : default_dir, stdout) ==
                   HM_OK
               ? 0
               : 1;
}

static int invoice_command(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", NULL };
    static const char *const flags[] = { "--json", NULL };
    uint32_t period;
    struct tenant tenant;
    if (argc < 3 || strcmp(argv[1], "show") != 0)
        return fail("usage: meterctl invoice show TENANT --period YYYY-MM [--json]");
    if (check_options(argc, argv, 3, with_value, flags) || period_option(argc, argv, &period) ||
        find_tenant(ledger, argv[2], &tenant))
        return 1;
    char *json = NULL;
    int rc = ledger_invoice_get(ledger, tenant.id, period, &json);
    if (rc == HM_ERR_NOT_FOUND)
        return fail("tenant %s has no invoice for %04u-%02u: the period is open; "
                    "`meterctl usage %s --period %04u-%02u` shows the draft",
                    tenant.name, period / 100, period % 100, tenant.name, period / 100,
                    period % 100);
    if (rc != HM_OK)
        return fail("cannot read the invoice: %s", hm_status_str(rc));
    if (has_flag(argc, argv, "--json"))
        printf("%s\n", json);
    else
        billing_invoice_print(json, stdout);
    free(json);
    return 0;
}

static int dispatch(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    const char *command = argv[0];
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(command, "tenant") == 0 && strcmp(sub, "create") == 0)
        return tenant_create(ledger, argc, argv);
    if (strcmp(command, "tenant") == 0 && strcmp(sub, "list") == 0)
        return tenant_list(ledger);
    if (strcmp(command, "key") == 0 && strcmp(sub, "create") == 0)
        return key_create(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "revoke") == 0)
        return key_revoke(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "list") == 0)
        return key_list(ledger, argc, argv);
    if (strcmp(command, "pricebook") == 0)
        return pricebook_command(ledger, argc, argv);
    if (strcmp(command, "usage") == 0)
        return usage_command(ledger, argc, argv);
    if (strcmp(command, "verify") == 0)
        return verify_command(ledger, argc, argv);
    if (strcmp(command, "close") == 0)
        return close_command(ledger, data_dir, argc, argv);
    if (strcmp(command, "invoice") == 0)
        return invoice_command(ledger, argc, argv);
    if (strcmp(command, "tenant") == 0)
        return fail("unknown tenant command \"%s\": use tenant create or tenant list", sub);
    if (strcmp(command, "key") == 0)
        return fail("unknown key command \"%s\": use key create, key revoke or key list", sub);
    return fail("unknown command \"%s\"; see meterctl --help", command);
}

int main(int argc, char **argv)
{
    const char *data_dir = getenv("METER_DATA") ? getenv("METER_DATA") : "meter-data";
    int first = 1;
    while (first < argc && argv[first][0] == '-') {
        if (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (strcmp(argv[first], "--data") == 0 && first + 1 < argc) {
            data_dir = argv[first + 1];
            first += 2;
        } else {
            return fail("unknown option \"%s\"; see meterctl --help", argv[first]);
        }
    }
    if (first >= argc) {
        fputs(usage_text, stderr);
        return 2;
    }
    /* The replay is a client of meterd and does not open the ledger. */
    if (strcmp(argv[first], "replay") == 0)
        return replay_command(argc - first, argv + first);
    if (has_flag(argc - first, argv + first, "--help") || has_flag(argc - first, argv + first, "-h")) {
        fputs(usage_text, stdout);
        return 0;
    }

    /* Only `tenant create` starts a new ledger, so that a mistyped directory is an error. */
    char data_file[4096];
    snprintf(data_file, sizeof data_file, "%s/data.mdb", data_dir);
    int creates = argc - first >= 2 && strcmp(argv[first], "tenant") == 0 &&
                  strcmp(argv[first + 1], "create") == 0;
    if (!creates && access(data_file, F_OK) != 0)
        return fail("no ledger in %s; check --data or METER_DATA, or start one with "
                    "`meterctl tenant create NAME`", data_dir);
    struct ledger *ledger = NULL;
    int rc = ledger_open(&ledger, data_dir, NULL);
    if (rc != HM_OK)
        return fail("cannot open the ledger in %s: %s", data_dir, hm_status_str(rc));
    int status = dispatch(ledger, data_dir, argc - first, argv + first);
    ledger_close(ledger);
    return status;
}
