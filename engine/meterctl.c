/* meterctl: the command line of billing staff and operators. */
#include "common/log.h"
#include "common/status.h"
#include "engine/lib/billing.h"
#include "engine/lib/data_lock.h"
#include "engine/lib/date.h"
#include "engine/lib/explain.h"
#include "engine/lib/export_stripe.h"
#include "engine/lib/master_setup.h"
#include "engine/lib/postgres_cli.h"
#include "engine/lib/replay.h"
#include "ingest/apikey.h"
#include "rollup/json_build.h"

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
    "usage: meterctl [--data DIR] [--master-key FILE] COMMAND ...\n"
    "\n"
    "  tenant create NAME [--id UUID] [--service-start YYYY-MM-DD] [TENANT OPTIONS]\n"
    "                               create a tenant (prints \"ID NAME\"); the base fee is\n"
    "                               charged from the service start (default: now), prorated\n"
    "  tenant set TENANT [--service-start YYYY-MM-DD] [TENANT OPTIONS]\n"
    "                               change a tenant's service dates, support tier or issuer\n"
    "      TENANT OPTIONS: --service-end YYYY-MM-DD|none (service ends at that midnight UTC)\n"
    "                      --support-tier none|basic|pro|enterprise   --issuer NAME\n"
    "                      --stripe-customer cus_...|none (the tenant's Stripe customer)\n"
    "  tenant list                  list tenants with their settings and Stripe customer\n"
    "  issuer add NAME --prefix PREFIX\n"
    "                               add an issuer; its invoices are PREFIX-000001, ... and its\n"
    "                               credit notes PREFIX-CN-000001, ... (PREFIX: 1-12 of A-Z 0-9)\n"
    "  issuer list                  list issuers (\"default\", prefix HM, always exists)\n"
    "  credit grant TENANT AMOUNT [--currency CODE] [--expires YYYY-MM-DD] [--note TEXT]\n"
    "                               grant prepaid credit (AMOUNT as 100.00; currency default:\n"
    "                               the tenant's price book, and required to match it), used\n"
    "                               by the next closes; --expires: the grant stops at 00:00 UTC\n"
    "                               of that date\n"
    "  credit list TENANT           list a tenant's grants, balances and what invoices took\n"
    "  credit revoke GRANT_ID --reason TEXT\n"
    "                               set a grant's balance to 0; what invoices took stays\n"
    "  settings show                show the ledger settings\n"
    "  settings set close-grace-hours N\n"
    "                               wait N hours (0 to 2208) after a month ends before it can\n"
    "                               be closed, for late events (default 0)\n"
    "  key create TENANT [--keys-file FILE] [--expires YYYY-MM-DD]\n"
    "                               create an API key; the key is printed once, or appended\n"
    "                               to FILE (mode 0600) as \"TENANT_ID NAME KEY\" instead;\n"
    "                               frames signed with it are rejected from that midnight UTC\n"
    "  key revoke KEY_ID            revoke a key (16 hex digits)\n"
    "  key list TENANT              list a tenant's keys (ids and status, never secrets)\n"
    "  key rewrap --old-master-key FILE\n"
    "                               rewrap the signing keys wrapped with the master key in\n"
    "                               FILE, and wrap those stored as they are, with the master\n"
    "                               key of --master-key (stop meterd first, then start it\n"
    "                               with the new file)\n"
    "  master-key create FILE       write a new master key to FILE (mode 0600); it must not\n"
    "                               exist\n"
    "  master-key id FILE           print the id by which messages name the key in FILE\n"
    "  pricebook check FILE         validate a price book and print every error\n"
    "  pricebook load FILE [--tenant TENANT]\n"
    "                               store the default price book, or a tenant's own\n"
    "  pricebook show [--tenant TENANT]\n"
    "  usage TENANT --period YYYY-MM\n"
    "                               show a tenant's usage and its draft invoice\n"
    "  verify TENANT --period YYYY-MM\n"
    "                               recount the period from the ledger and compare rollups\n"
    "  rollups rebuild              recount every tenant's rollups from the stored events and\n"
    "                               replace them, when verify or a log says they are damaged;\n"
    "                               meterd's commits wait while it runs\n"
    "  close --period YYYY-MM [--invoices DIR] [--allow-gaps]\n"
    "                               close the period for every tenant and seal the invoices\n"
    "                               (files under DIR, default DATA/invoices); refused while a\n"
    "                               tenant has an earlier open month with service or events,\n"
    "                               unless --allow-gaps\n"
    "  invoice show NUMBER [--json] | invoice show TENANT --period YYYY-MM [--json]\n"
    "  invoice list [--tenant TENANT] [--period YYYY-MM]\n"
    "                               list invoices and credit notes\n"
    "  invoice void NUMBER --reason TEXT [--with-credit-notes]\n"
    "                               void a finalized invoice and its late usage credit notes,\n"
    "                               give back its credits and reopen its period; the next close\n"
    "                               issues the next revision. --with-credit-notes: void its\n"
    "                               manual credit notes too (else such an invoice is refused)\n"
    "  invoice credit-note NUMBER --amount X --reason TEXT\n"
    "                               issue a credit note of X (invoice currency) against an invoice\n"
    "  invoice explain TENANT --period YYYY-MM [--line N] [--json]\n"
    "                               show the rollups, prices and seconds of service behind\n"
    "                               each line (or line N) of the finalized invoice, else the draft\n"
    "  rerate --period YYYY-MM --book FILE [--tenant TENANT]\n"
    "                               price the period under the book FILE and print each\n"
    "                               tenant's current total, re-rated total and difference;\n"
    "                               changes nothing\n"
    "  export stripe [--tenant TENANT] [--check] [--api-base URL] [--ca-file FILE]\n"
    "                [--api-key-file FILE] [--rate N] [--timeout SECONDS] [--max-retries N]\n"
    "                [--debug]\n"
    "                               send finalized invoices and credit notes not yet exported\n"
    "                               to Stripe, and void there what was voided here; --check\n"
    "                               compares the exported invoices and credit notes with\n"
    "                               Stripe's and exits 1 on a difference. The key comes from\n"
    "                               $STRIPE_API_KEY or --api-key-file (mode 0600); --rate:\n"
    "                               requests per second (default 20), --timeout: seconds per\n"
    "                               request (default 30)\n"
    "  db migrate [--dsn DSN] [--migrations DIR]\n"
    "                               apply the PostgreSQL migrations (sql/NNN_name.sql) that the\n"
    "                               database lacks, each in its own transaction\n"
    "  export postgres [--dsn DSN] [--tenant TENANT] [--batch-rows N]\n"
    "                               copy tenants, key hashes, invoices, credit notes and new\n"
    "                               usage events to PostgreSQL; a rerun copies only what\n"
    "                               changed (N: events per transaction, default 10000)\n"
    "                               DSN: a libpq connection string or URI, else $METER_PG_DSN\n"
    "  replay ...                   send trace events to meterd (meterctl replay --help)\n"
    "\n"
    "TENANT is a tenant name or id. DATA is ./meter-data, or $METER_DATA, or --data.\n"
    "The master key that wraps the keys' signing keys is read from --master-key FILE, or\n"
    "$METER_MASTER_KEY, or DATA/master.key; `key create` writes that file when it is\n"
    "missing and no key of the ledger is wrapped yet.\n"
    "TEXT (--reason, --note) is at most 500 bytes of UTF-8 without control characters.\n";

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

/* ---- tenant ---- */

/* Issuer names follow the rule of tenant names: [A-Za-z0-9._-], 1 to 64 bytes. */
static int issuer_name_valid(const char *name)
{
    size_t size = strlen(name);
    if (size == 0 || size > ISSUER_NAME_MAX || name[0] == '.' || name[0] == '-')
        return 0;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
           size;
}

/* Reads --service-start, --service-end, --support-tier and --issuer into a tenant and its settings. */
static int tenant_options(struct ledger *ledger, int argc, char **argv, struct tenant *tenant,
                          struct tenant_settings *settings)
{
    const char *start = option_value(argc, argv, "--service-start");
    if (start != NULL && date_parse(start, &tenant->service_start_s) != HM_OK)
        return fail("invalid --service-start \"%s\": expected a date that exists, as YYYY-MM-DD",
                    start);
    const char *end = option_value(argc, argv, "--service-end");
    if (end != NULL && strcmp(end, "none") == 0)
        settings->service_end_s = 0;
    else if (end != NULL && date_parse(end, &settings->service_end_s) != HM_OK)
        return fail("invalid --service-end \"%s\": expected a date that exists, as YYYY-MM-DD, "
                    "or none", end);
    if (settings->service_end_s != 0 && settings->service_end_s <= tenant->service_start_s)
        return fail("invalid --service-end \"%s\": the service ends before it starts; give a "
                    "date after the service start", end ? end : "(stored)");
    const char *tier_text = option_value(argc, argv, "--support-tier");
    enum support_tier tier;
    if (tier_text != NULL && support_tier_parse(tier_text, &tier) != HM_OK)
        return fail("invalid --support-tier \"%s\": use none, basic, pro or enterprise", tier_text);
    if (tier_text != NULL)
        snprintf(settings->support_tier, sizeof settings->support_tier, "%s", tier_text);
    const char *issuer = option_value(argc, argv, "--issuer");
    if (issuer != NULL) {
        struct issuer found;
        int rc = issuer_name_valid(issuer) ? ledger_issuer_get(ledger, issuer, &found)
                                           : HM_ERR_NOT_FOUND;
        if (rc == HM_ERR_NOT_FOUND) {
            char shown[4 * ISSUER_NAME_MAX + 8];
            escape_for_terminal(issuer, shown, sizeof shown);
            return fail("unknown issuer \"%s\"; `meterctl issuer list` shows the issuers and "
                        "`meterctl issuer add NAME --prefix PREFIX` adds one", shown);
        }
        if (rc != HM_OK)
            return fail("cannot read issuer \"%s\": %s", issuer, hm_status_str(rc));
        snprintf(settings->issuer, sizeof settings->issuer, "%s", issuer);
    }
    const char *customer = option_value(argc, argv, "--stripe-customer");
    if (customer != NULL && strcmp(customer, "none") == 0) {
        settings->stripe_customer[0] = '\0';
    } else if (customer != NULL) {
        /* Stripe ids are a prefix and letters and digits; "cus_" names a customer. */
        size_t size = strlen(customer);
        if (size <= 4 || size > STRIPE_CUSTOMER_ID_MAX || strncmp(customer, "cus_", 4) != 0 ||
            strspn(customer + 4, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") !=
                size - 4) {
            char shown[4 * STRIPE_CUSTOMER_ID_MAX + 8];
            escape_for_terminal(customer, shown, sizeof shown);
            return fail("invalid --stripe-customer \"%s\": expected a Stripe customer id such as "
                        "cus_NffrFeUfNV2Hib (cus_ and letters or digits), or none", shown);
        }
        snprintf(settings->stripe_customer, sizeof settings->stripe_customer, "%s", customer);
    }
    return 0;
}

static int tenant_create(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--id", "--service-start", "--service-end",
                                              "--support-tier", "--issuer", "--stripe-customer",
                                              NULL };
    if (argc < 3)
        return fail("usage: meterctl tenant create NAME [--id UUID] [--service-start YYYY-MM-DD] "
                    "[--service-end YYYY-MM-DD] [--support-tier TIER] [--issuer NAME]");
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
    tenant.created_s = (int64_t)time(NULL);
    /* Without a start date the service starts now, so no base fee is charged for earlier months. */
    tenant.service_start_s = tenant.created_s;
    tenant.active = 1;
    struct tenant_settings settings;
    ledger_tenant_settings_default(&settings);
    if (tenant_options(ledger, argc, argv, &tenant, &settings))
        return 1;

    int rc = ledger_tenant_create_with(ledger, &tenant, &settings);
    if (rc == HM_ERR_EXISTS)
        return fail("tenant \"%s\" or its id already exists; pick another name or id", tenant.name);
    if (rc != HM_OK)
        return fail("cannot create tenant \"%s\": %s", tenant.name, hm_status_str(rc));
    char text[UUID_TEXT_SIZE];
    uuid_format(tenant.id, text);
    printf("%s %s\n", text, tenant.name);
    return 0;
}

/*
 * Rejects new service dates that take service away from a finalized month:
 * an end before the month's end, or a start after the month's start. Such a
 * month keeps its invoice until it is voided. Returns 0, or 1 after printing.
 */
static int service_dates_check(struct ledger *ledger, const struct tenant *tenant,
                               const struct tenant_settings *settings, int64_t old_start_s,
                               int64_t old_end_s)
{
    int64_t end_s = settings->service_end_s, start_s = tenant->service_start_s;
    int end_earlier = end_s != 0 && end_s != old_end_s;
    int start_later = start_s > old_start_s;
    if (!end_earlier && !start_later)
        return 0;
    struct billed_period *periods = NULL;
    size_t count = 0;
    int rc = ledger_billed_list(ledger, tenant->id, &periods, &count);
    if (rc != HM_OK)
        return fail("cannot read the finalized months of tenant %s: %s", tenant->name,
                    hm_status_str(rc));
    int status = 0;
    for (size_t i = 0; i < count && status == 0; i++) {
        const struct billed_period *billed = &periods[i];
        /* The service the month was billed for, when its record keeps the dates. */
        int64_t billed_start_s = period_start_us(billed->period) / 1000000;
        int64_t billed_end_s = period_start_us(period_next(billed->period)) / 1000000;
        if (billed->has_billed_with && billed->service_start_s > billed_start_s)
            billed_start_s = billed->service_start_s;
        if (billed->has_billed_with && billed->service_end_s != 0 &&
            billed->service_end_s < billed_end_s)
            billed_end_s = billed->service_end_s;
        /* A month billed for usage outside the service has no fee that the dates change. */
        if (billed_start_s >= billed_end_s)
            continue;
        char date[16];
        if (end_earlier && end_s < billed_end_s) {
            date_format(end_s, date, sizeof date);
            status = fail("invalid --service-end %s: tenant %s has the finalized invoice %s for "
                          "%04u-%02u, which bills service after that date; void it first "
                          "(`meterctl invoice void %s --reason TEXT`), together with every "
                          "later finalized month", date, tenant->name, billed->number,
                          billed->period / 100, billed->period % 100, billed->number);
        } else if (start_later && start_s > billed_start_s) {
            date_format(start_s, date, sizeof date);
            status = fail("invalid --service-start %s: tenant %s has the finalized invoice %s "
                          "for %04u-%02u, which bills service before that date; void it first "
                          "(`meterctl invoice void %s --reason TEXT`), together with every "
                          "earlier finalized month after the new start", date, tenant->name,
                          billed->number, billed->period / 100, billed->period % 100,
                          billed->number);
        }
    }
    for (size_t i = 0; i < count; i++)
        ledger_billed_free(&periods[i]);
    free(periods);
    return status;
}

static int tenant_set(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--service-start", "--service-end",
                                              "--support-tier", "--issuer", "--stripe-customer",
                                              NULL };
    if (argc < 4)
        return fail("usage: meterctl tenant set TENANT [--service-start YYYY-MM-DD] "
                    "[--service-end YYYY-MM-DD|none] [--support-tier TIER] [--issuer NAME]");
    struct tenant tenant;
    if (check_options(argc, argv, 3, with_value, NULL) || find_tenant(ledger, argv[2], &tenant))
        return 1;
    struct tenant_settings settings;
    int rc = ledger_tenant_settings_get(ledger, tenant.id, &settings);
    if (rc != HM_OK)
        return fail("cannot read the settings of tenant %s: %s", tenant.name, hm_status_str(rc));
    int64_t old_start_s = tenant.service_start_s, old_end_s = settings.service_end_s;
    if (tenant_options(ledger, argc, argv, &tenant, &settings) ||
        service_dates_check(ledger, &tenant, &settings, old_start_s, old_end_s))
        return 1;
    rc = ledger_tenant_update(ledger, &tenant, &settings);
    if (rc != HM_OK)
        return fail("cannot update tenant %s: %s", tenant.name, hm_status_str(rc));
    printf("tenant %s updated\n", tenant.name);
    return 0;
}

static int tenant_list(struct ledger *ledger)
{
    struct tenant *tenants = NULL;
    size_t count = 0;
    int rc = ledger_tenant_list(ledger, &tenants, &count);
    if (rc != HM_OK)
        return fail("cannot list tenants: %s", hm_status_str(rc));
    printf("%-36s  %-24s  %-8s  %-10s  %-16s  %-10s  %-10s  %s\n", "id", "name", "status",
           "support", "issuer", "start", "end", "stripe");
    for (size_t i = 0; i < count; i++) {
        char id[UUID_TEXT_SIZE], start[16], end[16];
        uuid_format(tenants[i].id, id);
        struct tenant_settings settings;
        rc = ledger_tenant_settings_get(ledger, tenants[i].id, &settings);
        if (rc != HM_OK) {
            free(tenants);
            return fail("cannot read the settings of tenant %s: %s", tenants[i].name,
                        hm_status_str(rc));
        }
        date_format(tenants[i].service_start_s, start, sizeof start);
        date_format(settings.service_end_s, end, sizeof end);
        printf("%-36s  %-24s  %-8s  %-10s  %-16s  %-10s  %-10s  %s\n", id, tenants[i].name,
               tenants[i].active ? "active" : "inactive", settings.support_tier, settings.issuer,
               start, end, settings.stripe_customer[0] ? settings.stripe_customer : "-");
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

/* The master key file: --master-key, else $METER_MASTER_KEY, else DATA/master.key. */
static const char *master_key_path;

/* Gives the ledger its master key (see master_setup) and reports what changed on stderr. */
static int master_key_load(struct ledger *ledger)
{
    char error[512];
    struct master_setup_result result;
    if (master_setup(ledger, master_key_path, 1, &result, error, sizeof error) != HM_OK)
        return fail("%s", error);
    if (result.created)
        fprintf(stderr, "meterctl: created the master key file %s; keep a copy apart from the "
                "ledger's backups: without it meterd cannot check the frames of this "
                "ledger's keys\n",
                master_key_path);
    if (result.wrapped > 0)
        fprintf(stderr, "meterctl: wrapped %zu signing keys that were stored as they were\n",
                result.wrapped);
    return 0;
}

static int key_create(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--keys-file", "--expires", NULL };
    if (argc < 3)
        return fail("usage: meterctl key create TENANT [--keys-file FILE] [--expires YYYY-MM-DD]");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    struct tenant tenant;
    if (find_tenant(ledger, argv[2], &tenant))
        return 1;
    int64_t now_s = (int64_t)time(NULL), expires_s = 0;
    const char *expires = option_value(argc, argv, "--expires");
    if (expires != NULL && date_parse(expires, &expires_s) != HM_OK)
        return fail("invalid --expires \"%s\": expected a date that exists, as YYYY-MM-DD",
                    expires);
    if (expires != NULL && expires_s <= now_s)
        return fail("invalid --expires \"%s\": the date has passed; give a later date", expires);
    if (master_key_load(ledger))
        return 1;
    const char *keys_file = option_value(argc, argv, "--keys-file");
    int keys_fd = keys_file ? keys_file_open(keys_file) : -1;
    if (keys_file && keys_fd < 0)
        return 1;

    struct apikey key;
    int rc = apikey_generate(&key);
    struct key_record record = { .key_id = key.key_id, .status = KEY_ACTIVE, .created_s = now_s,
                                 .expires_s = expires_s };
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

/*
 * Takes meterd's lock of the data directory, so that no meterd starts
 * while the keys change under it. Returns the descriptor, or -1 after
 * printing that meterd is running.
 */
static int meterd_lock_take(const char *data_dir)
{
    char holder[32];
    int fd = data_dir_lock(data_dir, holder, sizeof holder);
    if (fd < 0 && errno == EWOULDBLOCK)
        fail("meterd (pid %s) is serving %s, and it keeps the master key it started with: "
             "stop it, run this command, then start meterd with the new --master-key",
             holder[0] ? holder : "unknown", data_dir);
    else if (fd < 0)
        fail("cannot open the lock file %s/meterd.lock: %s", data_dir, strerror(errno));
    return fd;
}

static int key_rewrap_locked(struct ledger *ledger, const char *old_path)
{
    char error[512];
    struct master_key master, old;
    int rc = master_key_read(master_key_path, &master, error, sizeof error);
    if (rc == HM_ERR_NOT_FOUND)
        return fail("%s; give the new master key with --master-key FILE (`meterctl master-key "
                    "create FILE` makes one)", error);
    if (rc != HM_OK)
        return fail("%s", error);
    if (master_key_read(old_path, &old, error, sizeof error) != HM_OK) {
        master_key_clear(&master);
        return fail("%s", error);
    }
    ledger_master_key_set(ledger, &master);
    char new_id[MASTER_KEY_ID_TEXT_SIZE], old_id[MASTER_KEY_ID_TEXT_SIZE];
    master_key_id_text(master.id, new_id);
    master_key_id_text(old.id, old_id);
    master_key_clear(&master);
    struct ledger_key_wrap_counts counts;
    rc = ledger_keys_wrap(ledger, &old, &counts);
    master_key_clear(&old);
    if (rc == HM_ERR_STORAGE)
        return fail("a key wrapped with master key %s does not unwrap with %s: its record is "
                    "damaged; nothing was rewrapped", old_id, old_path);
    if (rc != HM_OK)
        return fail("cannot rewrap the keys: %s", hm_status_str(rc));
    printf("rewrapped %zu keys with master key %s of %s (from %s); %zu were wrapped with it "
           "already\n", counts.wrapped, new_id, master_key_path, old_id, counts.current);
    if (counts.foreign > 0) {
        char foreign[MASTER_KEY_ID_TEXT_SIZE];
        master_key_id_text(counts.foreign_id, foreign);
        return fail("%zu keys are wrapped with master key %s, neither of the two; rewrap them "
                    "with --old-master-key and that key's file", counts.foreign, foreign);
    }
    return 0;
}

static int key_rewrap(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    static const char *const with_value[] = { "--old-master-key", NULL };
    const char *old_path = option_value(argc, argv, "--old-master-key");
    if (check_options(argc, argv, 2, with_value, NULL))
        return 1;
    if (old_path == NULL)
        return fail("usage: meterctl [--master-key FILE] key rewrap --old-master-key FILE");
    int lock_fd = meterd_lock_take(data_dir);
    if (lock_fd < 0)
        return 1;
    int status = key_rewrap_locked(ledger, old_path);
    close(lock_fd);
    return status;
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
    printf("%-16s  %-8s  %-20s  %s\n", "key id", "status", "created", "expires");
    int64_t now_s = (int64_t)time(NULL);
    for (size_t i = 0; i < count; i++) {
        char created[32], expires[DATE_TEXT_SIZE] = "never";
        time_t at = (time_t)keys[i].created_s;
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&at));
        if (keys[i].expires_s != 0)
            date_format(keys[i].expires_s, expires, sizeof expires);
        const char *status = keys[i].status != KEY_ACTIVE          ? "revoked"
                             : keys[i].expires_s != 0 && now_s >= keys[i].expires_s ? "expired"
                                                                                   : "active";
        printf("%016" PRIx64 "  %-8s  %-20s  %s\n", keys[i].key_id, status, created, expires);
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

/* Reads a price book file and prints every error; returns its text (free()), or NULL. */
static char *pricebook_file_checked(const char *path, size_t *size_out)
{
    char *text = file_read(path, size_out);
    if (text == NULL) {
        fail("cannot read price book %s: %s", path, strerror(errno));
        return NULL;
    }
    char errors[8192];
    size_t error_count = 0;
    if (pricebook_check(text, *size_out, errors, sizeof errors, &error_count) != HM_OK) {
        size_t errors_size = strlen(errors);
        fprintf(stderr, "%s: %zu error%s\n%s%s", path, error_count, error_count == 1 ? "" : "s",
                errors, errors_size > 0 && errors[errors_size - 1] != '\n' ? "\n" : "");
        free(text);
        return NULL;
    }
    return text;
}

/* Runs `pricebook check FILE`, which reads no ledger, so it works before one exists. */
static int pricebook_check_command(int argc, char **argv)
{
    if (argc < 3)
        return fail("usage: meterctl pricebook check FILE");
    if (check_options(argc, argv, 3, (const char *const[]){ NULL }, NULL))
        return 1;
    size_t size = 0;
    char *text = pricebook_file_checked(argv[2], &size);
    if (text == NULL)
        return 1;
    printf("%s: valid\n", argv[2]);
    free(text);
    return 0;
}

static int pricebook_command(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--tenant", NULL };
    if (argc < 2)
        return fail("usage: meterctl pricebook check|load|show ...");
    if (strcmp(argv[1], "check") == 0)
        return pricebook_check_command(argc, argv);
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
    if (strcmp(argv[1], "load") != 0)
        return fail("unknown pricebook command \"%s\": use check, load or show", argv[1]);
    if (argc < 3)
        return fail("usage: meterctl pricebook load FILE [--tenant TENANT]");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    size_t size = 0;
    char *text = pricebook_file_checked(argv[2], &size);
    if (text == NULL)
        return 1;
    int rc = ledger_pricebook_put(ledger, scope, text);
    free(text);
    if (rc != HM_OK)
        return fail("cannot store the price book: %s", hm_status_str(rc));
    printf("price book %s loaded as %s\n", argv[2], tenant_name ? tenant_name : "default");
    return 0;
}

/* ---- issuer ---- */

static int issuer_add(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--prefix", NULL };
    if (argc < 3)
        return fail("usage: meterctl issuer add NAME --prefix PREFIX");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    char shown[4 * ISSUER_NAME_MAX + 8];
    escape_for_terminal(argv[2], shown, sizeof shown);
    if (!issuer_name_valid(argv[2]))
        return fail("invalid issuer name \"%s\": use 1 to 64 letters, digits, '.', '_' or '-', "
                    "not starting with '.' or '-'", shown);
    const char *prefix = option_value(argc, argv, "--prefix");
    if (prefix == NULL)
        return fail("missing --prefix PREFIX: the start of the issuer's document numbers");
    size_t size = strlen(prefix);
    if (size == 0 || size > ISSUER_PREFIX_MAX ||
        strspn(prefix, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != size) {
        char shown_prefix[4 * 64 + 8];
        escape_for_terminal(prefix, shown_prefix, sizeof shown_prefix);
        return fail("invalid prefix \"%s\": use 1 to 12 upper-case letters or digits, such as "
                    "ACME", shown_prefix);
    }
    struct issuer issuer = { .created_s = (int64_t)time(NULL) };
    snprintf(issuer.name, sizeof issuer.name, "%s", argv[2]);
    snprintf(issuer.prefix, sizeof issuer.prefix, "%s", prefix);
    int rc = ledger_issuer_add(ledger, &issuer);
    if (rc == HM_ERR_EXISTS)
        return fail("issuer \"%s\" already exists; `meterctl issuer list` shows the issuers",
                    shown);
    if (rc == HM_ERR_CONFLICT)
        return fail("prefix \"%s\" is taken by another issuer; document numbers must stay "
                    "unique, so pick another prefix", prefix);
    if (rc != HM_OK)
        return fail("cannot add issuer \"%s\": %s", shown, hm_status_str(rc));
    printf("issuer %s added with prefix %s\n", issuer.name, issuer.prefix);
    return 0;
}

static int issuer_command(struct ledger *ledger, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "add") == 0)
        return issuer_add(ledger, argc, argv);
    if (strcmp(sub, "list") != 0)
        return fail("unknown issuer command \"%s\": use issuer add or issuer list", sub);
    if (check_options(argc, argv, 2, (const char *const[]){ NULL }, NULL))
        return 1;
    struct issuer *issuers = NULL;
    size_t count = 0;
    int rc = ledger_issuer_list(ledger, &issuers, &count);
    if (rc != HM_OK)
        return fail("cannot list issuers: %s", hm_status_str(rc));
    printf("%-24s  %-12s  %s\n", "name", "prefix", "numbers");
    for (size_t i = 0; i < count; i++)
        printf("%-24s  %-12s  %s-000001, %s-CN-000001\n", issuers[i].name, issuers[i].prefix,
               issuers[i].prefix, issuers[i].prefix);
    free(issuers);
    return 0;
}

/* ---- credit ---- */

static int credit_grant(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--currency", "--expires", "--note", NULL };
    if (argc < 4)
        return fail("usage: meterctl credit grant TENANT AMOUNT [--currency CODE] "
                    "[--expires YYYY-MM-DD] [--note TEXT]");
    struct tenant tenant;
    if (check_options(argc, argv, 4, with_value, NULL) || find_tenant(ledger, argv[2], &tenant))
        return 1;
    const struct money_currency *currency = NULL;
    const char *code = option_value(argc, argv, "--currency");
    if (code != NULL && money_currency_find(code, &currency) != HM_OK)
        return fail("unknown currency \"%s\": use an ISO 4217 code in upper case, such as USD",
                    code);
    /* A grant pays only invoices in its currency, so it must be the currency of the book. */
    struct pricebook *book = NULL;
    char error[512] = "";
    int book_rc = billing_pricebook_for(ledger, &tenant, &book, error, sizeof error);
    if (book_rc != HM_OK && (code == NULL || book_rc != HM_ERR_NOT_FOUND))
        return fail("%s; or give the grant's currency with --currency CODE", error);
    if (book != NULL && currency != NULL && currency != book->currency) {
        fail("credit grant in %s for tenant %s: its price book \"%s\" bills in %s, so the grant "
             "would never be used; omit --currency to grant %s, or load a price book in %s "
             "first with `meterctl pricebook load FILE --tenant %s`", currency->code, tenant.name,
             book->name, book->currency->code, book->currency->code, currency->code,
             tenant.name);
        pricebook_free(book);
        return 1;
    }
    if (currency == NULL)
        currency = book->currency;
    pricebook_free(book);
    struct credit_grant grant = { .granted_s = (int64_t)time(NULL) };
    if (billing_amount_parse(argv[3], currency, &grant.amount_minor, error, sizeof error) !=
        HM_OK)
        return fail("%s", error);
    const char *expires = option_value(argc, argv, "--expires");
    if (expires != NULL && date_parse(expires, &grant.expires_s) != HM_OK)
        return fail("invalid --expires \"%s\": expected a date that exists, as YYYY-MM-DD",
                    expires);
    if (expires != NULL && grant.expires_s <= grant.granted_s)
        return fail("invalid --expires \"%s\": the date has passed; give a later date", expires);
    const char *note = option_value(argc, argv, "--note");
    if (note != NULL && billing_text_check("--note", note, CREDIT_NOTE_MAX, error,
                                           sizeof error) != HM_OK)
        return fail("%s", error);
    snprintf(grant.note, sizeof grant.note, "%s", note ? note : "");
    memcpy(grant.tenant_id, tenant.id, UUID_SIZE);
    snprintf(grant.currency, sizeof grant.currency, "%s", currency->code);
    int rc = ledger_credit_grant(ledger, &grant);
    if (rc != HM_OK)
        return fail("cannot store the credit grant: %s", hm_status_str(rc));
    char amount[MONEY_TEXT_SIZE];
    money_amount_format((struct money_amount){ grant.amount_minor }, currency, amount,
                        sizeof amount);
    printf("credit grant %" PRIu64 ": %s %s for tenant %s\n", grant.id, amount, currency->code,
           tenant.name);
    return 0;
}

static void amount_text(int64_t minor, const char *code, char *out, size_t size)
{
    const struct money_currency *currency = NULL;
    if (money_currency_find(code, &currency) != HM_OK ||
        money_amount_format((struct money_amount){ minor }, currency, out, size) != HM_OK)
        snprintf(out, size, "%lld minor units", (long long)minor);
}

static int credit_list(struct ledger *ledger, int argc, char **argv)
{
    if (argc != 3)
        return fail("usage: meterctl credit list TENANT");
    struct tenant tenant;
    if (find_tenant(ledger, argv[2], &tenant))
        return 1;
    struct credit_grant *grants = NULL;
    size_t count = 0;
    int rc = ledger_credit_list(ledger, tenant.id, &grants, &count);
    if (rc != HM_OK)
        return fail("cannot list credit grants: %s", hm_status_str(rc));
    printf("Credit grants of %s\n\n%-6s %-8s %16s %16s  %-10s  %-10s  %s\n", tenant.name, "id",
           "currency", "granted", "balance", "on", "expires", "note");
    for (size_t i = 0; i < count; i++) {
        const struct credit_grant *grant = &grants[i];
        char amount[MONEY_TEXT_SIZE], balance[MONEY_TEXT_SIZE], on[16], expires[16];
        amount_text(grant->amount_minor, grant->currency, amount, sizeof amount);
        amount_text(grant->balance_minor, grant->currency, balance, sizeof balance);
        date_format(grant->granted_s, on, sizeof on);
        date_format(grant->expires_s, expires, sizeof expires);
        /* Notes stored before they were checked may hold control characters. */
        char note[6 * CREDIT_NOTE_MAX + 16];
        billing_text_printable(grant->note, note, sizeof note);
        printf("%-6" PRIu64 " %-8s %16s %16s  %-10s  %-10s  %s\n", grant->id, grant->currency,
               amount, balance, on, grant->expires_s ? expires : "never", note);
        for (size_t j = 0; j < grant->use_count; j++) {
            const struct credit_use *use = &grant->uses[j];
            char change[MONEY_TEXT_SIZE];
            amount_text(use->change_minor, grant->currency, change, sizeof change);
            /* A void after the revocation gives back nothing: the revocation keeps it. */
            int forfeited = use->change_minor > 0 && grant->revoked_s != 0 &&
                            use->at_s >= grant->revoked_s;
            printf("       %s %s by %s%s\n", use->change_minor < 0 ? "taken   " : "restored",
                   change, use->number, forfeited ? " (not restored: the grant is revoked)" : "");
        }
        if (grant->revoked_s != 0) {
            char revoked_on[16], forfeited[MONEY_TEXT_SIZE];
            date_format(grant->revoked_s, revoked_on, sizeof revoked_on);
            amount_text(grant->revoked_balance_minor, grant->currency, forfeited,
                        sizeof forfeited);
            char reason[6 * CREDIT_NOTE_MAX + 16];
            billing_text_printable(grant->revoke_reason, reason, sizeof reason);
            printf("       revoked  %s on %s: %s\n", forfeited, revoked_on, reason);
        }
    }
    ledger_credit_grants_free(grants, count);
    return 0;
}

static int credit_revoke(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--reason", NULL };
    if (argc < 3 || argv[2][0] == '-')
        return fail("usage: meterctl credit revoke GRANT_ID --reason TEXT");
    if (check_options(argc, argv, 3, with_value, NULL))
        return 1;
    char *end = NULL;
    errno = 0;
    unsigned long long id = strtoull(argv[2], &end, 10);
    if (argv[2][0] < '1' || argv[2][0] > '9' || *end != '\0' || errno != 0) {
        char shown[256];
        escape_for_terminal(argv[2], shown, sizeof shown);
        return fail("invalid grant id \"%s\": give the number that `meterctl credit list "
                    "TENANT` shows", shown);
    }
    const char *reason = option_value(argc, argv, "--reason");
    if (reason == NULL || reason[0] == '\0')
        return fail("missing --reason TEXT: a revocation is recorded with its reason");
    char error[512];
    if (billing_text_check("--reason", reason, CREDIT_NOTE_MAX, error, sizeof error) != HM_OK)
        return fail("%s", error);
    struct credit_grant grant;
    int rc = ledger_credit_revoke(ledger, id, reason, (int64_t)time(NULL), &grant);
    if (rc == HM_ERR_NOT_FOUND)
        return fail("credit grant %llu not found; `meterctl credit list TENANT` shows a "
                    "tenant's grants", id);
    if (rc == HM_ERR_STATE)
        return fail("credit grant %llu is already revoked", id);
    if (rc != HM_OK)
        return fail("cannot revoke credit grant %llu: %s", id, hm_status_str(rc));
    char balance[MONEY_TEXT_SIZE];
    amount_text(grant.revoked_balance_minor, grant.currency, balance, sizeof balance);
    printf("credit grant %llu revoked; its balance of %s %s is no longer available\n", id,
           balance, grant.currency);
    return 0;
}

static int credit_command(struct ledger *ledger, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "grant") == 0)
        return credit_grant(ledger, argc, argv);
    if (strcmp(sub, "list") == 0)
        return credit_list(ledger, argc, argv);
    if (strcmp(sub, "revoke") == 0)
        return credit_revoke(ledger, argc, argv);
    return fail("unknown credit command \"%s\": use credit grant, credit list or credit revoke",
                sub);
}

/* ---- settings ---- */

static int settings_command(struct ledger *ledger, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "show") == 0 && argc == 2) {
        int64_t hours = 0;
        int rc = ledger_setting_get(ledger, BILLING_GRACE_SETTING, 0, &hours);
        if (rc != HM_OK)
            return fail("cannot read the settings: %s", hm_status_str(rc));
        printf("%s %lld\n", BILLING_GRACE_SETTING, (long long)hours);
        return 0;
    }
    if (strcmp(sub, "set") != 0 || argc != 4)
        return fail("usage: meterctl settings show | meterctl settings set %s N",
                    BILLING_GRACE_SETTING);
    if (strcmp(argv[2], BILLING_GRACE_SETTING) != 0)
        return fail("unknown setting \"%s\": the only setting is %s", argv[2],
                    BILLING_GRACE_SETTING);
    char *end = NULL;
    errno = 0;
    long long hours = strtoll(argv[3], &end, 10);
    if (argv[3][0] < '0' || argv[3][0] > '9' || *end != '\0' || errno != 0 || hours < 0 ||
        hours > BILLING_GRACE_HOURS_MAX)
        return fail("invalid %s \"%s\": give whole hours from 0 to %d", BILLING_GRACE_SETTING,
                    argv[3], BILLING_GRACE_HOURS_MAX);
    int rc = ledger_setting_set(ledger, BILLING_GRACE_SETTING, hours);
    if (rc != HM_OK)
        return fail("cannot store the setting: %s", hm_status_str(rc));
    printf("%s %lld\n", BILLING_GRACE_SETTING, hours);
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

/*
 * Prints the late usage of the tenant's finalized periods that the next close
 * bills: an adjustment on the invoice it closes, or a credit note when the
 * amount went down.
 */
static void pending_adjustments_report(struct ledger *ledger, const struct tenant *tenant)
{
    struct billing_late *late = NULL;
    size_t count = 0;
    char error[512] = "";
    if (billing_late_usage(ledger, tenant, 0, &late, &count, error, sizeof error) != HM_OK) {
        printf("\nPending adjustments cannot be computed: %s\n", error);
        return;
    }
    if (count > 0)
        printf("\nPending adjustments of %s (billed at the next close of a later period):\n"
               "%-8s %-20s %14s %14s %16s  %s\n", tenant->name, "period", "invoice", "events",
               "late events", "difference", "becomes");
    for (size_t i = 0; i < count; i++) {
        char amount[MONEY_TEXT_SIZE];
        money_amount_format((struct money_amount){ late[i].difference_minor }, late[i].currency,
                            amount, sizeof amount);
        printf("%04u-%02u  %-20s %14" PRIu64 " %14" PRIu64 " %12s %s  %s\n",
               late[i].period / 100, late[i].period % 100, late[i].number, late[i].events_billed,
               late[i].events_now - late[i].events_billed, amount, late[i].currency->code,
               late[i].difference_minor > 0   ? "an adjustment line"
               : late[i].difference_minor < 0 ? "a credit note"
                                              : "no change of amount");
    }
    free(late);
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
    pending_adjustments_report(ledger, &tenant);

    int closed = ledger_period_closed(ledger, tenant.id, period);
    if (closed < 0) {
        /* A draft would show an open period that may be closed and billed. */
        fprintf(stderr, "meterctl: cannot read whether %04u-%02u is closed for tenant %s: %s; "
                "the ledger error above names the cause\n", period / 100, period % 100,
                tenant.name, hm_status_str(closed));
        return 1;
    }
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
    if (invoice_to_json(&invoice, &json) == HM_OK && (text = json_dumps_whole(json, 0)) != NULL) {
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
    rc = ledger_event_count(ledger, tenant.id, &events);
    if (rc != HM_OK)
        return fail("tenant %s %04u-%02u: the rollups match, but the stored events cannot be "
                    "counted: %s", tenant.name, period / 100, period % 100, hm_status_str(rc));
    printf("tenant %s %04u-%02u: rollups match the ledger (%" PRIu64 " events stored in all "
           "periods)\n", tenant.name, period / 100, period % 100, events);
    return 0;
}

static int rollups_command(struct ledger *ledger, int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "rebuild") != 0)
        return fail("usage: meterctl rollups rebuild");
    uint64_t events = 0;
    size_t rows = 0;
    int rc = ledger_rollups_rebuild(ledger, &events, &rows);
    if (rc != HM_OK)
        return fail("cannot rebuild the rollups: %s; the rollups are as they were",
                    hm_status_str(rc));
    printf("rollups rebuilt: %" PRIu64 " stored events recounted into %zu rollup rows\n", events,
           rows);
    return 0;
}

static int close_command(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", "--invoices", NULL };
    static const char *const flags[] = { "--allow-gaps", NULL };
    uint32_t period;
    if (check_options(argc, argv, 1, with_value, flags) || period_option(argc, argv, &period))
        return 1;
    char error[1536] = "";
    if (billing_close_allowed(ledger, period, (int64_t)time(NULL), error, sizeof error) != HM_OK)
        return fail("%s", error);
    if (!has_flag(argc, argv, "--allow-gaps") &&
        billing_close_order_check(ledger, period, error, sizeof error) != HM_OK)
        return fail("%s", error);
    char default_dir[4096];
    snprintf(default_dir, sizeof default_dir, "%s/invoices", data_dir);
    const char *invoices_dir = option_value(argc, argv, "--invoices");
    return billing_close(ledger, period, invoices_dir ? invoices_dir : default_dir, stdout) ==
                   HM_OK
               ? 0
               : 1;
}

static int invoice_show(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--period", NULL };
    static const char *const flags[] = { "--json", NULL };
    if (argc < 3)
        return fail("usage: meterctl invoice show NUMBER [--json] | "
                    "meterctl invoice show TENANT --period YYYY-MM [--json]");
    if (check_options(argc, argv, 3, with_value, flags))
        return 1;
    char *json = NULL;
    int rc;
    if (option_value(argc, argv, "--period") == NULL) {
        rc = ledger_document_get(ledger, argv[2], &json);
        if (rc == HM_ERR_NOT_FOUND) {
            char shown[256];
            escape_for_terminal(argv[2], shown, sizeof shown);
            return fail("invoice or credit note \"%s\" not found; `meterctl invoice list` shows "
                        "the numbers, and `meterctl invoice show TENANT --period YYYY-MM` finds "
                        "a tenant's invoice", shown);
        }
    } else {
        uint32_t period;
        struct tenant tenant;
        if (period_option(argc, argv, &period) || find_tenant(ledger, argv[2], &tenant))
            return 1;
        rc = ledger_invoice_get(ledger, tenant.id, period, &json);
        if (rc == HM_ERR_NOT_FOUND)
            return fail("tenant %s has no invoice for %04u-%02u: the period is open; "
                        "`meterctl usage %s --period %04u-%02u` shows the draft",
                        tenant.name, period / 100, period % 100, tenant.name, period / 100,
                        period % 100);
    }
    if (rc != HM_OK)
        return fail("cannot read the invoice: %s", hm_status_str(rc));
    if (has_flag(argc, argv, "--json"))
        printf("%s\n", json);
    else
        billing_invoice_print(json, stdout);
    free(json);
    return 0;
}

struct invoice_filter {
    int has_tenant;
    char tenant_id[UUID_TEXT_SIZE];
    char period[16];
    size_t count;
};

static int invoice_list_row(void *context, const char *number, const char *text)
{
    struct invoice_filter *filter = context;
    json_error_t error;
    json_t *document = json_loads(text, 0, &error);
    if (document == NULL)
        return HM_OK;
    const char *tenant = json_string_value(json_object_get(document, "tenant_id"));
    const char *period = json_string_value(json_object_get(document, "period"));
    if ((filter->has_tenant && (tenant == NULL || strcmp(tenant, filter->tenant_id) != 0)) ||
        (filter->period[0] && (period == NULL || strcmp(period, filter->period) != 0))) {
        json_decref(document);
        return HM_OK;
    }
    const char *type = json_string_value(json_object_get(document, "document_type"));
    int note = type != NULL && strcmp(type, "credit_note") == 0;
    json_t *amount = json_object_get(document, note ? "amount" : "total");
    const char *shown_number = number ? number
                                      : json_string_value(json_object_get(document,
                                                                          "invoice_number"));
    const char *status = json_string_value(json_object_get(document, "status"));
    json_int_t revision = json_integer_value(json_object_get(document, "revision"));
    const char *issuer = json_string_value(json_object_get(document, "issuer"));
    printf("%-20s %-12s %-20s %-8s %-10s %4lld %-12s %14s %s%s%s\n",
           shown_number ? shown_number : "-", note ? "credit_note" : "invoice",
           json_string_value(json_object_get(document, "tenant_name")),
           period ? period : "-", status ? status : "-", (long long)(revision ? revision : 1),
           issuer ? issuer : ISSUER_DEFAULT,
           json_string_value(json_object_get(amount, "amount")),
           json_string_value(json_object_get(document, "currency")), note ? "  for " : "",
           note ? json_string_value(json_object_get(document, "credited_invoice")) : "");
    filter->count++;
    json_decref(document);
    return HM_OK;
}

static int invoice_list(struct ledger *ledger, int argc, char **argv)
{
    static const char *const with_value[] = { "--tenant", "--period", NULL };
    if (check_options(argc, argv, 2, with_value, NULL))
        return 1;
    struct invoice_filter filter = { 0 };
    const char *tenant_name = option_value(argc, argv, "--tenant");
    if (tenant_name != NULL) {
        struct tenant tenant;
        if (find_tenant(ledger, tenant_name, &tenant))
            return 1;
        uuid_format(tenant.id, filter.tenant_id);
        filter.has_tenant = 1;
    }
    if (option_value(argc, argv, "--period") != NULL) {
        uint32_t period;
        if (period_option(argc, argv, &period))
            return 1;
        snprintf(filter.period, sizeof filter.period, "%04u-%02u", period / 100, period % 100);
    }
    printf("%-20s %-12s %-20s %-8s %-10s %4s %-12s %14s %s\n", "number", "type", "tenant",
           "period", "status", "rev", "issuer", "amount", "currency");
    int rc = ledger_document_each(ledger, invoice_list_row, &filter);
    if (rc != HM_OK)
        return fail("cannot list the documents: %s", hm_status_str(rc));
    if (filter.count == 0)
        printf("(none)\n");
    return 0;
}

/*
 * Writes the document files after a void or a credit note; the ledger stays
 * the record. Returns 1 after reporting a file that could not be written.
 */
static int document_files_update(struct ledger *ledger, const char *data_dir, const char *number)
{
    char invoices_dir[4096];
    snprintf(invoices_dir, sizeof invoices_dir, "%s/invoices", data_dir);
    /* A void changes the period's current invoice, so its period file is written again. */
    uint32_t period = 0;
    char *text = NULL;
    if (ledger_document_get(ledger, number, &text) == HM_OK) {
        json_t *document = json_loads(text, 0, NULL);
        const char *type = json_string_value(json_object_get(document, "document_type"));
        const char *period_text = json_string_value(json_object_get(document, "period"));
        if (period_text != NULL && (type == NULL || strcmp(type, "invoice") == 0) &&
            period_parse(period_text, &period) != HM_OK)
            period = 0;
        json_decref(document);
        free(text);
    }
    if (billing_files_write(ledger, period, invoices_dir) == HM_OK)
        return 0;
    return fail("%s is stored in the ledger, which stays the record, but its files under %s "
                "were not written (see above); fix the cause, and the next `meterctl close` "
                "writes them", number, invoices_dir);
}

static int invoice_void(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    static const char *const with_value[] = { "--reason", NULL };
    static const char *const flags[] = { "--with-credit-notes", NULL };
    if (argc < 3 || check_options(argc, argv, 3, with_value, flags))
        return argc < 3 ? fail("usage: meterctl invoice void NUMBER --reason TEXT "
                               "[--with-credit-notes]")
                        : 1;
    const char *reason = option_value(argc, argv, "--reason");
    if (reason == NULL || reason[0] == '\0')
        return fail("missing --reason TEXT: a void is recorded with its reason");
    char error[1024] = "", notes[512] = "";
    if (billing_text_check("--reason", reason, BILLING_TEXT_MAX, error, sizeof error) != HM_OK)
        return fail("%s", error);
    if (billing_void(ledger, argv[2], reason, has_flag(argc, argv, "--with-credit-notes"),
                     (int64_t)time(NULL), notes, sizeof notes, error, sizeof error) != HM_OK)
        return fail("%s", error);
    printf("invoice %s is void; its period is open again, and the next close issues the next "
           "revision\n", argv[2]);
    if (notes[0] != '\0')
        printf("credit notes voided with it: %s\n", notes);
    return document_files_update(ledger, data_dir, argv[2]);
}

static int invoice_credit_note(struct ledger *ledger, const char *data_dir, int argc,
                               char **argv)
{
    static const char *const with_value[] = { "--amount", "--reason", NULL };
    if (argc < 3 || check_options(argc, argv, 3, with_value, NULL))
        return argc < 3 ? fail("usage: meterctl invoice credit-note NUMBER --amount X "
                               "--reason TEXT")
                        : 1;
    const char *amount = option_value(argc, argv, "--amount");
    const char *reason = option_value(argc, argv, "--reason");
    if (amount == NULL)
        return fail("missing --amount X: the amount to credit, in the invoice's currency");
    if (reason == NULL || reason[0] == '\0')
        return fail("missing --reason TEXT: a credit note states its reason");
    char error[512] = "", number[DOCUMENT_NUMBER_MAX] = "";
    if (billing_text_check("--reason", reason, BILLING_TEXT_MAX, error, sizeof error) != HM_OK)
        return fail("%s", error);
    if (billing_credit_note(ledger, argv[2], amount, reason, (int64_t)time(NULL), number, error,
                            sizeof error) != HM_OK)
        return fail("%s", error);
    printf("credit note %s issued against %s\n", number, argv[2]);
    return document_files_update(ledger, data_dir, number);
}

static int invoice_command(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "show") == 0)
        return invoice_show(ledger, argc, argv);
    if (strcmp(sub, "list") == 0)
        return invoice_list(ledger, argc, argv);
    if (strcmp(sub, "void") == 0)
        return invoice_void(ledger, data_dir, argc, argv);
    if (strcmp(sub, "credit-note") == 0)
        return invoice_credit_note(ledger, data_dir, argc, argv);
    return fail("unknown invoice command \"%s\": use show, list, void, credit-note or explain",
                sub);
}

static int dispatch(struct ledger *ledger, const char *data_dir, int argc, char **argv)
{
    const char *command = argv[0];
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(command, "tenant") == 0 && strcmp(sub, "create") == 0)
        return tenant_create(ledger, argc, argv);
    if (strcmp(command, "tenant") == 0 && strcmp(sub, "list") == 0)
        return tenant_list(ledger);
    if (strcmp(command, "tenant") == 0 && strcmp(sub, "set") == 0)
        return tenant_set(ledger, argc, argv);
    if (strcmp(command, "issuer") == 0)
        return issuer_command(ledger, argc, argv);
    if (strcmp(command, "credit") == 0)
        return credit_command(ledger, argc, argv);
    if (strcmp(command, "settings") == 0)
        return settings_command(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "create") == 0)
        return key_create(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "revoke") == 0)
        return key_revoke(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "list") == 0)
        return key_list(ledger, argc, argv);
    if (strcmp(command, "key") == 0 && strcmp(sub, "rewrap") == 0)
        return key_rewrap(ledger, data_dir, argc, argv);
    if (strcmp(command, "pricebook") == 0)
        return pricebook_command(ledger, argc, argv);
    if (strcmp(command, "usage") == 0)
        return usage_command(ledger, argc, argv);
    if (strcmp(command, "verify") == 0)
        return verify_command(ledger, argc, argv);
    if (strcmp(command, "rollups") == 0)
        return rollups_command(ledger, argc, argv);
    if (strcmp(command, "close") == 0)
        return close_command(ledger, data_dir, argc, argv);
    if (strcmp(command, "invoice") == 0 && strcmp(sub, "explain") == 0)
        return explain_invoice_command(ledger, argc, argv, stdout);
    if (strcmp(command, "invoice") == 0)
        return invoice_command(ledger, data_dir, argc, argv);
    if (strcmp(command, "rerate") == 0)
        return explain_rerate_command(ledger, argc, argv, stdout);
    if (strcmp(command, "export") == 0 && strcmp(sub, "postgres") == 0)
        return postgres_export_command(ledger, argc, argv, stdout);
    if (strcmp(command, "export") == 0 && strcmp(sub, "stripe") == 0)
        return export_stripe_command(ledger, argc, argv, stdout);
    if (strcmp(command, "export") == 0)
        return fail("unknown export target \"%s\": use export postgres or export stripe", sub);
    if (strcmp(command, "tenant") == 0)
        return fail("unknown tenant command \"%s\": use tenant create, tenant set or tenant "
                    "list", sub);
    if (strcmp(command, "key") == 0)
        return fail("unknown key command \"%s\": use key create, key revoke, key list or key "
                    "rewrap", sub);
    return fail("unknown command \"%s\"; see meterctl --help", command);
}

/*
 * master-key create FILE: a new key in a new file. master-key id FILE: the
 * id that messages give for the key in FILE. Each prints the id, never the key.
 */
static int master_key_command(int argc, char **argv)
{
    int create = argc == 3 && strcmp(argv[1], "create") == 0;
    if (!create && !(argc == 3 && strcmp(argv[1], "id") == 0))
        return fail("usage: meterctl master-key create FILE, or meterctl master-key id FILE");
    char error[512], id[MASTER_KEY_ID_TEXT_SIZE];
    struct master_key master;
    int rc = create ? master_key_create(argv[2], &master, error, sizeof error)
                    : master_key_read(argv[2], &master, error, sizeof error);
    if (rc != HM_OK)
        return fail("%s", error);
    master_key_id_text(master.id, id);
    master_key_clear(&master);
    if (create)
        printf("master key %s written to %s (mode 0600)\n", id, argv[2]);
    else
        printf("master key %s in %s\n", id, argv[2]);
    return 0;
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
        } else if (strcmp(argv[first], "--master-key") == 0 && first + 1 < argc) {
            master_key_path = argv[first + 1];
            first += 2;
        } else {
            return fail("unknown option \"%s\"; see meterctl --help", argv[first]);
        }
    }
    if (first >= argc) {
        fputs(usage_text, stderr);
        return 2;
    }
    static char default_master_key[4096];
    if (master_key_path == NULL)
        master_key_path = getenv("METER_MASTER_KEY");
    if (master_key_path == NULL) {
        snprintf(default_master_key, sizeof default_master_key, "%s/" MASTER_KEY_FILE_NAME,
                 data_dir);
        master_key_path = default_master_key;
    }
    if (strcmp(argv[first], "master-key") == 0)
        return master_key_command(argc - first, argv + first);
    /* The replay is a client of meterd and does not open the ledger. */
    if (strcmp(argv[first], "replay") == 0)
        return replay_command(argc - first, argv + first);
    if (has_flag(argc - first, argv + first, "--help") || has_flag(argc - first, argv + first, "-h")) {
        fputs(usage_text, stdout);
        return 0;
    }
    /* db migrate works on PostgreSQL only. */
    if (strcmp(argv[first], "db") == 0)
        return postgres_db_command(argc - first, argv + first, stdout);
    if (argc - first >= 2 && strcmp(argv[first], "pricebook") == 0 &&
        strcmp(argv[first + 1], "check") == 0)
        return pricebook_check_command(argc - first, argv + first);

    /* Only `tenant create` starts a new ledger, so that a mistyped directory is an error. */
    char data_file[4096];
    snprintf(data_file, sizeof data_file, "%s/data.mdb", data_dir);
    int creates = argc - first >= 2 && strcmp(argv[first], "tenant") == 0 &&
                  strcmp(argv[first + 1], "create") == 0;
    if (!creates && access(data_file, F_OK) != 0)
        return fail("no ledger in %s; check --data or METER_DATA, or start one with "
                    "`meterctl tenant create NAME`", data_dir);
    /* rerate and invoice explain only read, so they open the ledger read-only. */
    int reads_only = strcmp(argv[first], "rerate") == 0 ||
                     (argc - first >= 2 && strcmp(argv[first], "invoice") == 0 &&
                      strcmp(argv[first + 1], "explain") == 0);
    struct ledger_options options = { .read_only = reads_only };
    struct ledger *ledger = NULL;
    int rc = ledger_open(&ledger, data_dir, &options);
    if (rc != HM_OK)
        return fail("cannot open the ledger: %s", ledger_open_error());
    int status = dispatch(ledger, data_dir, argc - first, argv + first);
    ledger_close(ledger);
    return status;
}
