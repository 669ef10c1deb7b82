/*
 * The close phase: a fresh ledger of many tenants, filled through the ledger
 * API with one month of events drawn from the bundled traces, then closed
 * the way `meterctl close --period 2023-11` closes it, and timed.
 */
#include "bench.h"

#include "common/status.h"
#include "engine/lib/billing.h"
#include "ingest/wire.h"
#include "pricing/pricebook.h"
#include "rollup/ledger.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#ifndef HM_SOURCE_DIR
#define HM_SOURCE_DIR "."
#endif

#define CLOSE_PERIOD 202311
#define CLOSE_START_US (INT64_C(1698796800) * 1000000) /* 2023-11-01T00:00:00Z */
#define CLOSE_END_US (INT64_C(1701388800) * 1000000)   /* 2023-12-01T00:00:00Z */

/* Events per fill transaction, and per run of one tenant's events (one frame of meterd). */
#define CLOSE_EVENTS_PER_TXN 250000
#define CLOSE_RUN_EVENTS 256
/* The fill stops after this many seconds, and the close runs on what was stored. */
#define CLOSE_FILL_CAP_S 3600
/*
 * Estimated ledger bytes per event: about twice the 72 that a fill of
 * 100,000,000 events of this mix used (6.7 GiB of records, blocks,
 * rollups and B-tree pages), as room for other page layouts.
 */
#define CLOSE_BYTES_PER_EVENT 150
/* Free space left aside for the invoices, the other phases and the system. */
#define CLOSE_DISK_RESERVE ((uint64_t)2 << 30)

/* One in this many tenants has the support tier pro, and one in CLOSE_ENTERPRISE_EVERY enterprise. */
#define CLOSE_PRO_EVERY 10
#define CLOSE_ENTERPRISE_EVERY 100
/* One in this many tenants has a prepaid grant of CLOSE_GRANT_MINOR, below the base fee. */
#define CLOSE_GRANT_EVERY 25
#define CLOSE_GRANT_MINOR 5000

static int close_fail(struct close_result *result, const char *reason)
{
    result->failed = 1;
    snprintf(result->note, sizeof result->note, "%.511s", reason);
    fprintf(stderr, "meterbench:   close FAILED: %s\n", reason);
    return HM_ERR_INVALID;
}

/*
 * Shrinks the requested events to what the free space of `dir` holds.
 * Returns the events to fill, or 0 when too little space is left for a
 * meaningful run.
 */
static uint64_t events_that_fit(const char *dir, uint64_t requested, uint32_t tenants)
{
    struct statvfs disk;
    if (statvfs(dir, &disk) != 0) {
        fprintf(stderr, "meterbench:   close: cannot read the free space of %s (%s); filling "
                "%" PRIu64 " events anyway\n", dir, strerror(errno), requested);
        return requested;
    }
    uint64_t free_bytes = (uint64_t)disk.f_bavail * disk.f_frsize;
    uint64_t needed = requested * CLOSE_BYTES_PER_EVENT + CLOSE_DISK_RESERVE;
    if (free_bytes >= needed)
        return requested;
    uint64_t fit = free_bytes > CLOSE_DISK_RESERVE
                       ? (free_bytes - CLOSE_DISK_RESERVE) / CLOSE_BYTES_PER_EVENT
                       : 0;
    fprintf(stderr, "meterbench:   close: %s has %.1f GiB free, but %" PRIu64 " events need "
            "about %.1f GiB; ", dir, (double)free_bytes / (1 << 30), requested,
            (double)needed / (1 << 30));
    if (fit < (uint64_t)tenants * 10) {
        fprintf(stderr, "skipping the close phase (set TMPDIR to a larger disk, or lower "
                "--close-events)\n");
        return 0;
    }
    fprintf(stderr, "filling %" PRIu64 " events instead\n", fit);
    return fit;
}

/* Loads the default price book as `meterctl pricebook load` does: checked, then stored. */
static int pricebook_load(struct ledger *ledger, struct close_result *result)
{
    const char *path = HM_SOURCE_DIR "/data/pricebooks/default.json";
    FILE *file = fopen(path, "rb");
    char *text = malloc(PRICEBOOK_FILE_SIZE_MAX + 1);
    size_t size = file && text ? fread(text, 1, PRICEBOOK_FILE_SIZE_MAX + 1, file) : 0;
    if (file != NULL)
        fclose(file);
    char errors[2048] = "";
    int rc = size == 0 || size > PRICEBOOK_FILE_SIZE_MAX ? HM_ERR_IO : HM_OK;
    if (rc == HM_OK) {
        text[size] = '\0';
        rc = pricebook_check(text, size, errors, sizeof errors, NULL);
    }
    if (rc == HM_OK)
        rc = ledger_pricebook_put(ledger, "default", text);
    free(text);
    if (rc != HM_OK) {
        char reason[2560];
        snprintf(reason, sizeof reason, "the price book %s could not be loaded: %s %s", path,
                 hm_status_str(rc), errors);
        return close_fail(result, reason);
    }
    return HM_OK;
}

/*
 * Creates the tenants as `meterctl tenant create NAME --service-start
 * 2023-11-01` does, with a few support tiers and prepaid grants, so that the
 * close rates support fees and burns credits too.
 */
static int tenants_create(struct ledger *ledger, uint32_t count, uint8_t (*ids)[UUID_SIZE],
                          struct close_result *result)
{
    int64_t now_s = (int64_t)time(NULL);
    int rc = HM_OK;
    for (uint32_t i = 0; rc == HM_OK && i < count; i++) {
        struct tenant tenant = { .created_s = now_s, .service_start_s = CLOSE_START_US / 1000000,
                                 .active = 1 };
        snprintf(tenant.name, sizeof tenant.name, "close-%05u", i);
        struct tenant_settings settings;
        ledger_tenant_settings_default(&settings);
        if (i % CLOSE_ENTERPRISE_EVERY == CLOSE_ENTERPRISE_EVERY - 1)
            snprintf(settings.support_tier, sizeof settings.support_tier, "enterprise");
        else if (i % CLOSE_PRO_EVERY == CLOSE_PRO_EVERY - 1)
            snprintf(settings.support_tier, sizeof settings.support_tier, "pro");
        rc = uuid_random(tenant.id);
        if (rc == HM_OK)
            rc = ledger_tenant_create_with(ledger, &tenant, &settings);
        memcpy(ids[i], tenant.id, UUID_SIZE);
        if (rc != HM_OK || i % CLOSE_GRANT_EVERY != 0)
            continue;
        struct credit_grant grant = { .amount_minor = CLOSE_GRANT_MINOR, .granted_s = now_s };
        memcpy(grant.tenant_id, tenant.id, UUID_SIZE);
        snprintf(grant.currency, sizeof grant.currency, "USD");
        snprintf(grant.note, sizeof grant.note, "meterbench close phase");
        rc = ledger_credit_grant(ledger, &grant);
    }
    if (rc != HM_OK) {
        char reason[256];
        snprintf(reason, sizeof reason, "creating the tenants failed: %s", hm_status_str(rc));
        return close_fail(result, reason);
    }
    return HM_OK;
}

static uint64_t file_bytes(const char *path)
{
    struct stat status;
    return stat(path, &status) == 0 ? (uint64_t)status.st_blocks * 512 : 0;
}

/*
 * Appends `target` events in transactions of CLOSE_EVENTS_PER_TXN, in runs
 * of CLOSE_RUN_EVENTS events of one tenant picked at random, as meterd
 * stores frames. Each event is a replayed event with a new id and a
 * timestamp in November 2023. Stops early at CLOSE_FILL_CAP_S or an
 * interrupt; result->events counts the committed events.
 */
static int events_fill(struct bench *bench, struct ledger *ledger, const char *data_file,
                       const uint8_t (*ids)[UUID_SIZE], uint32_t tenants, uint64_t target,
                       struct close_result *result)
{
    uint64_t state = bench->seed ^ UINT64_C(0x636c6f7365);
    int64_t started = bench_now_ns(), last_progress = started;
    int64_t cap = started + (int64_t)CLOSE_FILL_CAP_S * 1000000000;
    uint64_t done = 0;
    int rc = HM_OK;
    while (rc == HM_OK && done < target && !bench_interrupted && bench_now_ns() < cap) {
        struct ledger_txn *txn = NULL;
        rc = ledger_begin(ledger, &txn);
        uint64_t txn_end = done + CLOSE_EVENTS_PER_TXN < target ? done + CLOSE_EVENTS_PER_TXN
                                                                : target;
        while (rc == HM_OK && done < txn_end) {
            const uint8_t *tenant_id = ids[pool_random(&state) % tenants];
            uint64_t run_end = done + CLOSE_RUN_EVENTS < txn_end ? done + CLOSE_RUN_EVENTS
                                                                 : txn_end;
            for (; rc == HM_OK && done < run_end; done++) {
                struct event event;
                uint8_t record[RECORD_SIZE_MAX];
                pool_draw_event(&bench->pool, &state, CLOSE_START_US, CLOSE_END_US, &event);
                memcpy(event.tenant_id, tenant_id, UUID_SIZE);
                int size = record_encode(&event, record);
                int outcome = size > 0 ? ledger_append(txn, &event, record, (size_t)size)
                                       : HM_ERR_INVALID;
                if (outcome != APPEND_STORED)
                    rc = outcome < 0 ? outcome : HM_ERR_CONFLICT;
            }
        }
        if (rc == HM_OK)
            rc = ledger_commit(txn);
        else if (txn != NULL)
            ledger_abort(txn);
        if (rc == HM_OK)
            result->events = done;
        int64_t now = bench_now_ns();
        if (now - last_progress >= 1000000000 || result->events == target) {
            last_progress = now;
            double seconds = (double)(now - started) / 1e9;
            fprintf(stderr, "meterbench:   close fill: %" PRIu64 "/%" PRIu64 " events, %.0f "
                    "events/s, ledger %.2f GiB\n", result->events, target,
                    seconds > 0 ? (double)result->events / seconds : 0.0,
                    (double)file_bytes(data_file) / (1 << 30));
        }
    }
    result->fill_seconds = (double)(bench_now_ns() - started) / 1e9;
    if (rc != HM_OK) {
        char reason[256];
        snprintf(reason, sizeof reason, "the fill failed after %" PRIu64 " events: %s",
                 result->events, hm_status_str(rc));
        return close_fail(result, reason);
    }
    if (result->events < target && !bench_interrupted)
        fprintf(stderr, "meterbench:   close fill: stopped at its time cap of %d s after %"
                PRIu64 " events; the close runs on those\n", CLOSE_FILL_CAP_S, result->events);
    return HM_OK;
}

/*
 * Runs one close of CLOSE_PERIOD as `meterctl close --period 2023-11` does:
 * opens the ledger, checks that the period may be closed and that no earlier
 * month is open, closes it with the invoice files under DIR/invoices, and
 * closes the ledger. The summary and the messages (stderr) go to log files.
 * *seconds_out is the wall time of all of it.
 */
static int close_once(const char *dir, const char *name, double *seconds_out, char *reason,
                      size_t why_size)
{
    char invoices[BENCH_PATH_MAX + 16], summary_path[BENCH_PATH_MAX + 64];
    char log_path[BENCH_PATH_MAX + 64];
    snprintf(invoices, sizeof invoices, "%s/invoices", dir);
    snprintf(summary_path, sizeof summary_path, "%s-%s.out", dir, name);
    snprintf(log_path, sizeof log_path, "%s-%s.log", dir, name);
    FILE *summary = fopen(summary_path, "w");
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    fflush(stderr);
    int saved_stderr = dup(STDERR_FILENO);
    if (summary == NULL || log_fd < 0 || saved_stderr < 0) {
        snprintf(reason, why_size, "cannot create %.600s or %.600s: %s", summary_path, log_path,
                 strerror(errno));
        if (summary != NULL)
            fclose(summary);
        if (log_fd >= 0)
            close(log_fd);
        if (saved_stderr >= 0)
            close(saved_stderr);
        return HM_ERR_IO;
    }
    dup2(log_fd, STDERR_FILENO);

    int64_t started = bench_now_ns();
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 0 };
    char error[1536] = "";
    int rc = ledger_open(&ledger, dir, &options);
    if (rc != HM_OK)
        snprintf(error, sizeof error, "cannot open the ledger: %s", ledger_open_error());
    if (rc == HM_OK)
        rc = billing_close_allowed(ledger, CLOSE_PERIOD, (int64_t)time(NULL), error,
                                   sizeof error);
    if (rc == HM_OK)
        rc = billing_close_order_check(ledger, CLOSE_PERIOD, error, sizeof error);
    int64_t checked = bench_now_ns();
    if (rc == HM_OK) {
        rc = billing_close(ledger, CLOSE_PERIOD, invoices, summary);
        if (rc != HM_OK)
            snprintf(error, sizeof error, "billing_close returned %s", hm_status_str(rc));
    }
    int64_t closed = bench_now_ns();
    if (ledger != NULL)
        ledger_close(ledger);
    int64_t finished = bench_now_ns();

    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(log_fd);
    fclose(summary);
    *seconds_out = (double)(finished - started) / 1e9;
    /* The monotonic times let `perf report --time` (perf record -k CLOCK_MONOTONIC) cut out the close. */
    fprintf(stderr, "meterbench:   close %s: %.3f s (open and checks %.3f, billing_close %.3f, "
            "ledger close %.3f; CLOCK_MONOTONIC %.6f to %.6f)\n", name, *seconds_out,
            (double)(checked - started) / 1e9, (double)(closed - checked) / 1e9,
            (double)(finished - closed) / 1e9, (double)started / 1e9, (double)finished / 1e9);
    if (rc != HM_OK)
        snprintf(reason, why_size, "%s close failed: %.900s; see %.600s", name, error, log_path);
    return rc;
}

static int64_t amount_minor_of(json_t *document, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(json_object_get(document, key),
                                                       "amount_minor"));
}

/* Returns 1 when the invoice has a line other than the base and support fees. */
static int has_usage_line(json_t *document)
{
    size_t index;
    json_t *line;
    json_array_foreach(json_object_get(document, "lines"), index, line) {
        const char *kind = json_string_value(json_object_get(line, "kind"));
        if (kind != NULL && strcmp(kind, "base_fee") != 0 && strcmp(kind, "support_fee") != 0)
            return 1;
    }
    return 0;
}

static size_t json_files_in(const char *path)
{
    DIR *dir = opendir(path);
    size_t count = 0;
    for (struct dirent *entry; dir != NULL && (entry = readdir(dir)) != NULL;) {
        size_t size = strlen(entry->d_name);
        count += entry->d_name[0] != '.' && size > 5 && strcmp(entry->d_name + size - 5,
                                                               ".json") == 0;
    }
    if (dir != NULL)
        closedir(dir);
    return count;
}

/*
 * Checks the closed month. Every tenant must have a finalized invoice whose
 * total is above 0 and whose event count is the tenant's, with usage lines
 * when it has events. The invoice counts must add up to the stored events,
 * and every invoice must have its file.
 */
static int invoices_check(const char *dir, struct close_result *result)
{
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 1 };
    struct tenant *tenants = NULL;
    size_t count = 0;
    int rc = ledger_open(&ledger, dir, &options);
    if (rc == HM_OK)
        rc = ledger_tenant_list(ledger, &tenants, &count);
    char reason[512] = "";
    uint64_t invoiced_events = 0;
    result->total_minor_min = INT64_MAX;
    for (size_t i = 0; rc == HM_OK && i < count && reason[0] == '\0'; i++) {
        char *text = NULL;
        uint64_t events = 0;
        rc = ledger_event_count(ledger, tenants[i].id, &events);
        if (rc == HM_OK && ledger_invoice_get(ledger, tenants[i].id, CLOSE_PERIOD, &text) != HM_OK) {
            snprintf(reason, sizeof reason, "tenant %s has no invoice for 2023-11", tenants[i].name);
            break;
        }
        json_error_t json_error;
        json_t *document = rc == HM_OK ? json_loads(text, 0, &json_error) : NULL;
        free(text);
        const char *status = json_string_value(json_object_get(document, "status"));
        int64_t total = amount_minor_of(document, "total");
        uint64_t invoice_events = (uint64_t)json_integer_value(json_object_get(document,
                                                                               "event_count"));
        if (rc == HM_OK && (status == NULL || strcmp(status, "finalized") != 0))
            snprintf(reason, sizeof reason, "the invoice of tenant %s for 2023-11 is %s, not "
                     "finalized", tenants[i].name, status ? status : "unreadable");
        else if (rc == HM_OK && total <= 0)
            snprintf(reason, sizeof reason, "the invoice of tenant %s totals %" PRId64 " minor units",
                     tenants[i].name, total);
        else if (rc == HM_OK && (invoice_events != events || (events > 0 &&
                                                               !has_usage_line(document))))
            snprintf(reason, sizeof reason, "the invoice of tenant %s counts %" PRIu64 " events and "
                     "the ledger %" PRIu64 ", or it has no usage line", tenants[i].name,
                     invoice_events, events);
        if (rc == HM_OK && reason[0] == '\0') {
            result->invoices++;
            invoiced_events += invoice_events;
            result->total_minor_sum += total;
            if (total < result->total_minor_min)
                result->total_minor_min = total;
            if (total > result->total_minor_max)
                result->total_minor_max = total;
        }
        json_decref(document);
    }
    free(tenants);
    if (ledger != NULL)
        ledger_close(ledger);
    char period_dir[BENCH_PATH_MAX + 32];
    snprintf(period_dir, sizeof period_dir, "%s/invoices/2023-11", dir);
    result->invoice_files = json_files_in(period_dir);
    if (rc != HM_OK)
        snprintf(reason, sizeof reason, "the closed ledger could not be read: %s", hm_status_str(rc));
    else if (reason[0] == '\0' && invoiced_events != result->events)
        snprintf(reason, sizeof reason, "the invoices count %" PRIu64 " events, but %" PRIu64
                 " were stored", invoiced_events, result->events);
    else if (reason[0] == '\0' && result->invoice_files != result->invoices)
        snprintf(reason, sizeof reason, "%zu invoice files in %.400s for %zu invoices",
                 result->invoice_files, period_dir, result->invoices);
    if (reason[0] != '\0')
        return close_fail(result, reason);
    return HM_OK;
}

/* Creates the ledger with its tenants, price book and events, and closes it. */
static int ledger_build(struct bench *bench, const char *dir, uint32_t tenants, uint64_t events,
                        struct close_result *result)
{
    char data_file[BENCH_PATH_MAX + 16];
    snprintf(data_file, sizeof data_file, "%s/data.mdb", dir);
    uint8_t(*ids)[UUID_SIZE] = calloc(tenants, UUID_SIZE);
    if (ids == NULL)
        return close_fail(result, "out of memory for the tenant ids");
    /* LMDB only reserves address space for the map, so room to spare costs no disk. */
    size_t map_size = (size_t)(events * CLOSE_BYTES_PER_EVENT * 2) + ((size_t)1 << 30);
    struct ledger_options options = { .map_size = map_size > LEDGER_MAP_SIZE_DEFAULT
                                                      ? map_size
                                                      : LEDGER_MAP_SIZE_DEFAULT };
    struct ledger *ledger = NULL;
    int rc = ledger_open(&ledger, dir, &options);
    if (rc != HM_OK) {
        free(ids);
        return close_fail(result, ledger_open_error());
    }
    fprintf(stderr, "meterbench:   close: creating %u tenants and loading the default price "
            "book\n", tenants);
    rc = tenants_create(ledger, tenants, ids, result);
    if (rc == HM_OK)
        rc = pricebook_load(ledger, result);
    if (rc == HM_OK)
        rc = events_fill(bench, ledger, data_file, (const uint8_t(*)[UUID_SIZE])ids, tenants,
                         events, result);
    ledger_close(ledger);
    free(ids);
    result->ledger_bytes = file_bytes(data_file);
    return rc;
}

int close_phase(struct bench *bench, uint32_t tenants, uint64_t events,
                struct close_result *result)
{
    memset(result, 0, sizeof *result);
    result->tenants = tenants;
    result->events_requested = events;
    uint64_t fill = events_that_fit(bench->temp_dir, events, tenants);
    if (fill == 0) {
        snprintf(result->note, sizeof result->note, "too little free disk in %.400s for "
                 "%" PRIu64 " events", bench->temp_dir, events);
        return HM_OK;
    }
    result->ran = 1;
    char dir[BENCH_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/close-ledger", bench->temp_dir);
    if (mkdir(dir, 0700) != 0)
        return close_fail(result, "cannot create the ledger directory");
    int rc = ledger_build(bench, dir, tenants, fill, result);
    if (rc != HM_OK || bench_interrupted)
        return rc;
    fprintf(stderr, "meterbench:   close fill: %" PRIu64 " events for %u tenants in %.1f s, "
            "%.0f events/s, ledger %.2f GiB\n", result->events, tenants, result->fill_seconds,
            result->fill_seconds > 0 ? (double)result->events / result->fill_seconds : 0.0,
            (double)result->ledger_bytes / (1 << 30));

    char reason[2048] = "";
    rc = close_once(dir, "first", &result->close_seconds, reason, sizeof reason);
    if (rc == HM_OK)
        rc = invoices_check(dir, result);
    else
        return close_fail(result, reason);
    if (rc == HM_OK && close_once(dir, "rerun", &result->rerun_seconds, reason, sizeof reason) != HM_OK)
        rc = close_fail(result, reason);
    if (rc == HM_OK)
        snprintf(result->note, sizeof result->note, "%zu finalized invoices, totals %" PRId64
                 ".%02" PRId64 " to %" PRId64 ".%02" PRId64 " USD", result->invoices,
                 result->total_minor_min / 100, result->total_minor_min % 100,
                 result->total_minor_max / 100, result->total_minor_max % 100);
    return rc;
}
