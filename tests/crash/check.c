/*
 * crash_check: the invariants that must hold in a ledger after a crash.
 *
 *   crash_check events DATA_DIR LOAD_DIR
 *     Every event that a crash_load TCP sender logged as acknowledged is
 *     stored; every stored event is one that a sender built, under its
 *     sender's tenant, byte for byte; each tenant's event count equals its
 *     distinct event ids and the sum of its rollup event counts over the load's
 *     months; and ledger_verify passes for every tenant and month.
 *
 *   crash_check close DATA_DIR YYYY-MM none|all|any
 *     For every tenant, the close of the month happened whole or not at all:
 *     a closed month has its invoice, its billed state and exactly the
 *     credit uses that the invoice lists; an open one has none of them; and
 *     the invoice numbers are gapless from the issuer's first. `none` and
 *     `all` also require that no tenant, or every tenant, was closed.
 *
 * Opens the ledger read-only. Prints one line per failure (at most 20 of a
 * kind) and a summary; exits 0 when every check passes, 1 otherwise, 2 on
 * a usage error.
 */
#include "crash_events.h"

#include "common/status.h"
#include "rollup/ledger.h"
#include "ingest/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAILURES_SHOWN 20

static unsigned long failures;

static void failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void failure(const char *fmt, ...)
{
    if (++failures > FAILURES_SHOWN)
        return;
    va_list args;
    va_start(args, fmt);
    fputs("crash_check: FAIL ", stdout);
    vprintf(fmt, args);
    fputc('\n', stdout);
    va_end(args);
}

/* ---- events ---- */

struct sender_state {
    int known;
    uint8_t tenant[UUID_SIZE];
    uint8_t *stored; /* bitmap by sequence number */
    uint64_t stored_bits;
};

static void bitmap_set(struct sender_state *sender, uint64_t seq)
{
    if (seq >= sender->stored_bits) {
        uint64_t bits = sender->stored_bits ? sender->stored_bits : 1 << 16;
        while (bits <= seq)
            bits *= 2;
        uint8_t *grown = realloc(sender->stored, bits / 8);
        if (grown == NULL) {
            fprintf(stderr, "crash_check: out of memory\n");
            exit(2);
        }
        memset(grown + sender->stored_bits / 8, 0, (bits - sender->stored_bits) / 8);
        sender->stored = grown;
        sender->stored_bits = bits;
    }
    sender->stored[seq / 8] |= (uint8_t)(1 << (seq % 8));
}

static int bitmap_get(const struct sender_state *sender, uint64_t seq)
{
    return seq < sender->stored_bits && (sender->stored[seq / 8] >> (seq % 8) & 1);
}

struct tenant_count {
    uint8_t id[UUID_SIZE];
    uint64_t events;
};

static int manifest_read(const char *load_dir, struct sender_state *senders)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/senders.txt", load_dir);
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "crash_check: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    unsigned number;
    char kind[8], tenant[64];
    int count = 0;
    while (fscanf(file, "%u %7s %63s", &number, kind, tenant) == 3) {
        if (number >= CRASH_SENDERS_MAX || uuid_parse(tenant, senders[number].tenant) != HM_OK) {
            fprintf(stderr, "crash_check: invalid line in %s\n", path);
            fclose(file);
            return -1;
        }
        senders[number].known = 1;
        count++;
    }
    fclose(file);
    return count;
}

struct scan {
    struct sender_state *senders;
    struct tenant_count *tenants;
    size_t *tenant_count;
    uint64_t *total;
    int too_many_tenants;
};

/* Checks one stored event: rebuilt from its id, it has the same bytes, and it is stored once. */
static int event_check(void *context, const uint8_t tenant[UUID_SIZE], const uint8_t *record,
                       size_t record_size)
{
    struct scan *scan = context;
    const uint8_t *event_id = record + 4;
    char tenant_text[UUID_TEXT_SIZE], id_text[UUID_TEXT_SIZE];
    uuid_format(tenant, tenant_text);
    uuid_format(event_id, id_text);
    unsigned sender;
    uint64_t seq;
    if (crash_event_id_decode(event_id, &sender, &seq) != 0 || !scan->senders[sender].known) {
        failure("stored event %s of tenant %s was sent by no sender", id_text, tenant_text);
    } else if (memcmp(scan->senders[sender].tenant, tenant, UUID_SIZE) != 0) {
        failure("event %s of sender %u is stored under tenant %s", id_text, sender, tenant_text);
    } else {
        struct event event;
        uint8_t expected[RECORD_SIZE_MAX];
        crash_event(sender, seq, &event);
        int size = record_encode(&event, expected);
        if (size < 0 || (size_t)size != record_size || memcmp(expected, record, record_size) != 0)
            failure("event %s of tenant %s differs from what sender %u sent", id_text,
                    tenant_text, sender);
        if (bitmap_get(&scan->senders[sender], seq))
            failure("event %s of tenant %s is stored more than once", id_text, tenant_text);
        bitmap_set(&scan->senders[sender], seq);
    }
    size_t *count = scan->tenant_count;
    if (*count == 0 || memcmp(scan->tenants[*count - 1].id, tenant, UUID_SIZE) != 0) {
        if (*count == CRASH_SENDERS_MAX) {
            scan->too_many_tenants = 1;
            return 1;
        }
        memcpy(scan->tenants[*count].id, tenant, UUID_SIZE);
        scan->tenants[(*count)++].events = 0;
    }
    scan->tenants[*count - 1].events++;
    (*scan->total)++;
    return 0;
}

/* Walks every stored event with event_check. */
static int events_scan(struct ledger *ledger, struct sender_state *senders,
                       struct tenant_count *tenants, size_t *tenant_count, uint64_t *total)
{
    struct scan scan = { senders, tenants, tenant_count, total, 0 };
    int rc = ledger_records_each(ledger, event_check, &scan);
    if (scan.too_many_tenants) {
        fprintf(stderr, "crash_check: more than %d tenants\n", CRASH_SENDERS_MAX);
        return -1;
    }
    if (rc != HM_OK) {
        fprintf(stderr, "crash_check: cannot read the stored events: %s\n", hm_status_str(rc));
        return -1;
    }
    return 0;
}

/* Checks that every event of every accepted ack in OUT/acked-N.log is stored. */
static uint64_t acked_check(const char *load_dir, struct sender_state *senders)
{
    uint64_t acked = 0;
    for (unsigned number = 0; number < CRASH_SENDERS_MAX; number++) {
        if (!senders[number].known)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/acked-%u.log", load_dir, number);
        FILE *file = fopen(path, "r");
        if (file == NULL)
            continue; /* a UDP sender, or a TCP sender that has had no ack yet */
        char line[128];
        while (fgets(line, sizeof line, file) != NULL) {
            unsigned long long first;
            unsigned count;
            /* A line still being written has no newline yet: its ack is counted next time. */
            if (strchr(line, '\n') == NULL || sscanf(line, "%llu %u", &first, &count) != 2)
                continue;
            for (uint64_t seq = first; seq < first + count; seq++) {
                acked++;
                if (!bitmap_get(&senders[number], seq)) {
                    uint8_t id[UUID_SIZE];
                    char id_text[UUID_TEXT_SIZE];
                    crash_event_id(number, seq, id);
                    uuid_format(id, id_text);
                    failure("acknowledged event %s (sender %u, seq %" PRIu64 ") is not stored",
                            id_text, number, seq);
                }
            }
        }
        fclose(file);
    }
    return acked;
}

/* Checks counts and rollups of each tenant against the events that were walked. */
static void tenants_check(struct ledger *ledger, const struct tenant_count *tenants,
                          size_t tenant_count)
{
    for (size_t i = 0; i < tenant_count; i++) {
        char tenant_text[UUID_TEXT_SIZE];
        uuid_format(tenants[i].id, tenant_text);
        uint64_t counted = 0;
        if (ledger_event_count(ledger, tenants[i].id, &counted) != HM_OK ||
            counted != tenants[i].events)
            failure("tenant %s: ledger_event_count %" PRIu64 ", distinct ids %" PRIu64,
                    tenant_text, counted, tenants[i].events);
        uint64_t rolled_up = 0;
        for (unsigned p = 0; p < CRASH_PERIOD_COUNT; p++) {
            uint32_t period = crash_period(p);
            int rc = ledger_verify(ledger, tenants[i].id, period);
            if (rc != HM_OK)
                failure("tenant %s %u: rollups differ from the recount (%s)", tenant_text,
                        period, hm_status_str(rc));
            struct rollup_row *rows = NULL;
            size_t count = 0;
            if (ledger_rollups(ledger, tenants[i].id, period, &rows, &count) != HM_OK) {
                failure("tenant %s %u: cannot read rollups", tenant_text, period);
                continue;
            }
            for (size_t r = 0; r < count; r++) {
                if (rows[r].meter == ROLLUP_EVENTS)
                    rolled_up += (uint64_t)rows[r].quantity;
            }
            free(rows);
        }
        if (rolled_up != tenants[i].events)
            failure("tenant %s: rollups count %" PRIu64 " events, the ledger holds %" PRIu64
                    " distinct ids", tenant_text, rolled_up, tenants[i].events);
    }
}

static int events_command(const char *data_dir, const char *load_dir)
{
    static struct sender_state senders[CRASH_SENDERS_MAX];
    if (manifest_read(load_dir, senders) <= 0)
        return 2;
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 1 };
    if (ledger_open(&ledger, data_dir, &options) != HM_OK)
        return 2;
    static struct tenant_count tenants[CRASH_SENDERS_MAX];
    size_t tenant_count = 0;
    uint64_t stored = 0;
    if (events_scan(ledger, senders, tenants, &tenant_count, &stored) != 0)
        failure("the events table could not be read to its end");
    uint64_t acked = acked_check(load_dir, senders);
    tenants_check(ledger, tenants, tenant_count);
    ledger_close(ledger);
    for (unsigned i = 0; i < CRASH_SENDERS_MAX; i++)
        free(senders[i].stored);
    printf("crash_check events: %s tenants=%zu stored=%" PRIu64 " acked=%" PRIu64
           " periods=%d failures=%lu\n", failures ? "FAILED" : "ok", tenant_count, stored, acked,
           CRASH_PERIOD_COUNT, failures);
    return failures ? 1 : 0;
}

/* ---- close ---- */

struct documents {
    char **numbers;
    size_t count;
};

static int document_collect(void *context, const char *number, const char *json)
{
    (void)json;
    struct documents *documents = context;
    if (number == NULL)
        return 0;
    char **grown = realloc(documents->numbers, (documents->count + 1) * sizeof *grown);
    if (grown == NULL)
        return HM_ERR_NOMEM;
    documents->numbers = grown;
    documents->numbers[documents->count++] = strdup(number);
    return 0;
}

static json_int_t json_minor(json_t *object, const char *name)
{
    return json_integer_value(json_object_get(json_object_get(object, name), "amount_minor"));
}

/* Checks one tenant; returns 1 when its month is closed, 0 when open. */
static int tenant_close_check(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                              char closed_number[DOCUMENT_NUMBER_MAX])
{
    int closed = ledger_period_closed(ledger, tenant->id, period);
    char *text = NULL;
    int invoice_rc = ledger_invoice_get(ledger, tenant->id, period, &text);
    struct billed_period billed = { 0 };
    int billed_rc = ledger_billed_get(ledger, tenant->id, period, &billed);
    struct credit_grant *grants = NULL;
    size_t grant_count = 0;
    if (ledger_credit_list(ledger, tenant->id, &grants, &grant_count) != HM_OK)
        failure("tenant %s: cannot list credit grants", tenant->name);

    json_t *invoice = NULL;
    if (invoice_rc == HM_OK) {
        json_error_t error;
        invoice = json_loads(text, 0, &error);
    }
    const char *number = invoice ? json_string_value(json_object_get(invoice, "number")) : NULL;
    int64_t taken = 0, uses_other = 0;
    for (size_t g = 0; g < grant_count; g++) {
        int64_t changes = 0;
        for (size_t u = 0; u < grants[g].use_count; u++) {
            changes += grants[g].uses[u].change_minor;
            if (number != NULL && strcmp(grants[g].uses[u].number, number) == 0)
                taken -= grants[g].uses[u].change_minor;
            else
                uses_other++;
        }
        if (grants[g].balance_minor != grants[g].amount_minor + changes)
            failure("tenant %s: grant %" PRIu64 " has balance %" PRId64 " but amount %" PRId64
                    " and recorded changes %" PRId64, tenant->name, grants[g].id,
                    grants[g].balance_minor, grants[g].amount_minor, changes);
    }

    if (closed == 1) {
        if (invoice == NULL || number == NULL)
            failure("tenant %s: month closed without an invoice", tenant->name);
        if (billed_rc != HM_OK)
            failure("tenant %s: month closed without a billed state", tenant->name);
        else if (number != NULL && strcmp(billed.number, number) != 0)
            failure("tenant %s: billed state names %s, the invoice is %s", tenant->name,
                    billed.number, number);
        if (invoice != NULL && taken != json_minor(invoice, "credits_applied"))
            failure("tenant %s: invoice %s applies %lld of credit, the grants gave %" PRId64,
                    tenant->name, number ? number : "?",
                    (long long)json_minor(invoice, "credits_applied"), taken);
        if (uses_other > 0)
            failure("tenant %s: %" PRId64 " credit uses by no invoice of this close",
                    tenant->name, uses_other);
        snprintf(closed_number, DOCUMENT_NUMBER_MAX, "%s", number ? number : "");
    } else if (closed == 0) {
        if (invoice_rc != HM_ERR_NOT_FOUND)
            failure("tenant %s: month open but an invoice is stored", tenant->name);
        if (billed_rc != HM_ERR_NOT_FOUND)
            failure("tenant %s: month open but a billed state is stored", tenant->name);
        if (uses_other > 0 || taken > 0)
            failure("tenant %s: month open but %" PRId64 " credit uses are recorded",
                    tenant->name, uses_other);
    } else {
        failure("tenant %s: cannot read the month's state (%s)", tenant->name,
                hm_status_str(closed));
    }
    json_decref(invoice);
    free(text);
    if (billed_rc == HM_OK)
        ledger_billed_free(&billed);
    ledger_credit_grants_free(grants, grant_count);
    return closed == 1;
}

static int number_compare(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int close_command(const char *data_dir, const char *period_text, const char *expect)
{
    uint32_t period;
    if (period_parse(period_text, &period) != HM_OK ||
        (strcmp(expect, "none") && strcmp(expect, "all") && strcmp(expect, "any"))) {
        fprintf(stderr, "crash_check: expected YYYY-MM and none|all|any\n");
        return 2;
    }
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 1 };
    if (ledger_open(&ledger, data_dir, &options) != HM_OK)
        return 2;
    struct tenant *tenants = NULL;
    size_t tenant_count = 0;
    if (ledger_tenant_list(ledger, &tenants, &tenant_count) != HM_OK) {
        ledger_close(ledger);
        return 2;
    }
    char (*closed_numbers)[DOCUMENT_NUMBER_MAX] = calloc(tenant_count + 1, DOCUMENT_NUMBER_MAX);
    size_t closed = 0;
    for (size_t i = 0; i < tenant_count; i++) {
        if (tenant_close_check(ledger, &tenants[i], period, closed_numbers[closed]))
            closed++;
    }

    /* Gapless: the documents are exactly HM-000001 .. HM-00000k for the k closed tenants. */
    struct documents documents = { 0 };
    ledger_document_each(ledger, document_collect, &documents);
    if (documents.count != closed)
        failure("%zu documents stored for %zu closed tenants", documents.count, closed);
    if (documents.count > 0)
        qsort(documents.numbers, documents.count, sizeof *documents.numbers, number_compare);
    for (size_t i = 0; i < documents.count; i++) {
        char expected[DOCUMENT_NUMBER_MAX];
        snprintf(expected, sizeof expected, "%s-%06zu", ISSUER_DEFAULT_PREFIX, i + 1);
        if (strcmp(documents.numbers[i], expected) != 0)
            failure("document %zu is %s, expected %s: a number was skipped", i + 1,
                    documents.numbers[i], expected);
        free(documents.numbers[i]);
    }
    free(documents.numbers);

    if (strcmp(expect, "none") == 0 && closed != 0)
        failure("%zu tenants closed, expected none", closed);
    if (strcmp(expect, "all") == 0 && closed != tenant_count)
        failure("%zu of %zu tenants closed, expected all", closed, tenant_count);
    printf("crash_check close: %s period=%s closed=%zu tenants=%zu failures=%lu\n",
           failures ? "FAILED" : "ok", period_text, closed, tenant_count, failures);
    free(closed_numbers);
    free(tenants);
    ledger_close(ledger);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "events") == 0)
        return events_command(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "close") == 0)
        return close_command(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: crash_check events DATA_DIR LOAD_DIR\n"
                    "       crash_check close DATA_DIR YYYY-MM none|all|any\n");
    return 2;
}
