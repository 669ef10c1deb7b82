/*
 * meterd over TCP (acknowledged once durable) and over UDP (no acks). Each
 * phase runs a fresh meterd on a copy of the template ledger, which holds the
 * tenants and keys and no events, so every phase starts from the same state.
 */
#include "bench.h"

#include "common/status.h"
#include "ingest/client.h"
#include "rollup/ledger.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct meterd_instance {
    pid_t pid;
    char dir[BENCH_PATH_MAX];
    char log[BENCH_PATH_MAX];
    uint16_t tcp_port, udp_port;
};

int meterd_prepare(struct bench *bench, uint32_t tenants)
{
    char meterctl[BENCH_PATH_MAX + 16], log[BENCH_PATH_MAX + 32];
    snprintf(meterctl, sizeof meterctl, "%s/meterctl", bench->program_dir);
    snprintf(bench->meterd_template, sizeof bench->meterd_template, "%s/meterd-template",
             bench->temp_dir);
    snprintf(bench->keys_path, sizeof bench->keys_path, "%s/keys", bench->temp_dir);
    snprintf(log, sizeof log, "%s/meterctl.log", bench->temp_dir);
    setenv("METER_DATA", bench->meterd_template, 1);
    for (uint32_t i = 0; i < tenants; i++) {
        char name[32];
        snprintf(name, sizeof name, "tenant-%02u", i);
        char *create[] = { meterctl, "tenant", "create", name, "--service-start", "2023-11-01",
                           NULL };
        char *key[] = { meterctl, "key", "create", name, "--keys-file", bench->keys_path, NULL };
        if (child_run(create, log, NULL) != 0 || child_run(key, log, NULL) != 0) {
            fprintf(stderr, "meterbench: meterctl could not create tenant %s; see %s\n", name,
                    log);
            return HM_ERR_IO;
        }
    }
    return HM_OK;
}

static int meterd_start(struct bench *bench, const char *name, struct meterd_instance *instance)
{
    memset(instance, 0, sizeof *instance);
    snprintf(instance->dir, sizeof instance->dir, "%s/%s", bench->temp_dir, name);
    snprintf(instance->log, sizeof instance->log, "%s/%s.log", bench->temp_dir, name);
    char *copy[] = { "cp", "-a", bench->meterd_template, instance->dir, NULL };
    if (child_run(copy, instance->log, NULL) != 0)
        return HM_ERR_IO;
    char meterd[BENCH_PATH_MAX + 16], port_file[BENCH_PATH_MAX + 16];
    snprintf(meterd, sizeof meterd, "%s/meterd", bench->program_dir);
    snprintf(port_file, sizeof port_file, "%s/ports", instance->dir);
    char index_memory[32];
    snprintf(index_memory, sizeof index_memory, "--index-memory=%u", bench->index_memory_mib);
    char *argv[] = { meterd, "--data", instance->dir, "--host", "127.0.0.1", "--tcp-port", "0",
                     "--udp-port", "0", "--port-file", port_file, "--log-level", "warn",
                     bench->index_memory_mib > 0 ? index_memory : NULL, NULL };
    instance->pid = child_start(argv, instance->log, NULL);
    for (int waited = 0; instance->pid > 0 && waited < 10000; waited += 10) {
        FILE *file = fopen(port_file, "r");
        unsigned tcp = 0, udp = 0;
        int parsed = file != NULL && fscanf(file, "tcp=%u udp=%u", &tcp, &udp) == 2;
        if (file != NULL)
            fclose(file);
        if (parsed) {
            instance->tcp_port = (uint16_t)tcp;
            instance->udp_port = (uint16_t)udp;
            return HM_OK;
        }
        usleep(10000);
    }
    fprintf(stderr, "meterbench: meterd did not start within 10 s; see %s\n", instance->log);
    child_stop(instance->pid, 2000);
    return HM_ERR_IO;
}

/* meterd's final counters, from its stats file. */
struct meterd_counters {
    uint64_t events_stored;
    uint64_t commits;
    uint64_t commit_us_max;
    uint64_t commit_us_total;
    uint64_t write_us_total;  /* the part of commit_us_total spent writing and syncing */
    uint64_t commits_le_10ms; /* commits that took at most 10 ms */
    uint64_t index_runs;      /* runs of the id index on disk */
    uint64_t spill_waits;     /* commits that waited for a run to be written */
    uint64_t spill_wait_us;
};

static uint64_t counter_after(const char *text, const char *key)
{
    const char *at = strstr(text, key);
    return at ? strtoull(at + strlen(key), NULL, 10) : 0;
}

/* Stops meterd cleanly and reads its final counters into `counters`, when not NULL. */
static int meterd_stop(struct meterd_instance *instance, struct meterd_counters *counters)
{
    int status = child_stop(instance->pid, 30000);
    instance->pid = 0;
    char path[BENCH_PATH_MAX + 32], text[8192];
    snprintf(path, sizeof path, "%s/meterd-stats.json", instance->dir);
    FILE *file = fopen(path, "r");
    size_t size = file ? fread(text, 1, sizeof text - 1, file) : 0;
    if (file)
        fclose(file);
    text[size] = '\0';
    if (counters != NULL) {
        counters->events_stored = counter_after(text, "\"events_stored\": ");
        counters->commits = counter_after(text, "\"commits\": ");
        counters->commit_us_max = counter_after(text, "\"commit_us_max\": ");
        counters->commit_us_total = counter_after(text, "\"commit_us_total\": ");
        counters->write_us_total = counter_after(text, "\"write_us_total\": ");
        /* In the cumulative histogram "commit_ms_le": {"1": .., "2": .., "5": .., "10": ..}. */
        const char *histogram = strstr(text, "\"commit_ms_le\": ");
        counters->commits_le_10ms = histogram ? counter_after(histogram, "\"10\": ") : 0;
        const char *index = strstr(text, "\"index\": ");
        if (index != NULL) {
            counters->index_runs = counter_after(index, "\"runs\": ");
            counters->spill_waits = counter_after(index, "\"spill_waits\": ");
            counters->spill_wait_us = counter_after(index, "\"spill_wait_us\": ");
        }
    }
    return status == 0 ? HM_OK : HM_ERR_IO;
}

/* Reads back the stored events and rollups of a stopped meterd's ledger. */
static int meterd_read_back(struct bench *bench, const char *dir, uint64_t *events,
                            struct rollup_map *got)
{
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 1 };
    int rc = ledger_open(&ledger, dir, &options);
    if (rc != HM_OK)
        return rc;
    uint32_t periods[64];
    size_t period_count = rollup_map_periods(&bench->expected, periods, 64);
    *events = 0;
    for (uint32_t t = 0; rc == HM_OK && t < bench->pool.tenant_count; t++) {
        const struct bench_tenant *tenant = &bench->pool.tenants[t];
        uint64_t count = 0;
        rc = ledger_event_count(ledger, tenant->id, &count);
        *events += count;
        for (size_t p = 0; rc == HM_OK && p < period_count; p++) {
            struct rollup_row *rows = NULL;
            size_t row_count = 0;
            rc = ledger_rollups(ledger, tenant->id, periods[p], &rows, &row_count);
            for (size_t r = 0; rc == HM_OK && r < row_count; r++) {
                /* Time-weighted storage is computed at read time and is no stored rollup. */
                if (rows[r].meter == ROLLUP_STORAGE_BYTE_SECONDS)
                    continue;
                rc = rollup_map_add(got, tenant->id_text, periods[p], rows[r].meter,
                                    rows[r].dimension, rows[r].quantity, rows[r].event_count);
            }
            free(rows);
        }
    }
    ledger_close(ledger);
    return rc;
}

static void fail(struct peer_result *result, const char *why)
{
    result->failed = 1;
    snprintf(result->note, sizeof result->note, "%s", why);
}

/* Checks the read-back of a closed loop; `sent` events were acknowledged (TCP) or sent. */
static void check_ledger(struct bench *bench, struct peer_result *result, const char *dir,
                         uint64_t sent)
{
    struct rollup_map got;
    uint64_t events = 0;
    if (rollup_map_init(&got) != HM_OK || meterd_read_back(bench, dir, &events, &got) != HM_OK) {
        fail(result, "the ledger could not be read back");
        rollup_map_free(&got);
        return;
    }
    result->stored = events;
    result->count_ok = events == sent;
    bench_check_rollups(bench, result, &got);
    rollup_map_free(&got);
}

int peer_meterd_tcp(struct bench *bench, struct peer_result *result)
{
    result->name = "meterd-tcp";
    result->durability = "durable: ack after the LMDB commit (fsync), group commit";
    struct meterd_instance instance;
    if (meterd_start(bench, "meterd-tcp-closed", &instance) != HM_OK) {
        fail(result, "meterd did not start");
        return HM_ERR_IO;
    }
    result->ran = 1;
    struct stream_options options = { .host = "127.0.0.1", .port = instance.tcp_port,
                                      .connections = bench->connections,
                                      .window = bench->window };
    struct phase phase;
    bench_closed_phase(bench, result->name, &phase);
    double cpu_before = proc_cpu_seconds(instance.pid);
    struct status_sampler anon;
    status_sampler_start(&anon, instance.pid, "RssAnon");
    int rc = drive_stream(&bench->pool, &phase, &options);
    result->cpu_s = proc_cpu_seconds(instance.pid) - cpu_before;
    result->rss_anon_peak_kib = status_sampler_stop(&anon);
    result->rss_kib = proc_status_kib(instance.pid, "VmHWM");
    result->rss_anon_kib = proc_status_kib(instance.pid, "RssAnon");
    result->rss_file_kib = proc_status_kib(instance.pid, "RssFile");
    double max_eps = bench_record_closed(result, &phase);
    struct meterd_counters counters = { 0 };
    meterd_stop(&instance, &counters);
    if (counters.commits > 0)
        result->events_per_commit = (double)counters.events_stored / (double)counters.commits;
    phase_free(&phase);
    if (rc != HM_OK || phase.stored != phase.events_done || phase.duplicates || phase.conflicts) {
        fail(result, "the closed loop failed or some frames were not acknowledged as stored");
        return HM_ERR_IO;
    }
    check_ledger(bench, result, instance.dir, phase.stored);

    for (size_t i = 0; i < bench->load_count && !bench_interrupted; i++) {
        char name[64];
        snprintf(name, sizeof name, "meterd-tcp-open-%zu", i);
        if (meterd_start(bench, name, &instance) != HM_OK ||
            bench_open_phase(bench, result->name, bench->loads[i], max_eps, &phase) != HM_OK) {
            fail(result, "meterd did not start for an open-loop phase");
            return HM_ERR_IO;
        }
        options.port = instance.tcp_port;
        drive_stream(&bench->pool, &phase, &options);
        long rss = proc_status_kib(instance.pid, "VmHWM");
        if (rss > result->rss_kib)
            result->rss_kib = rss;
        meterd_stop(&instance, &counters);
        bench_record_open(result, &phase);
        struct open_result *open = &result->open[result->open_count - 1];
        open->commits = (long long)counters.commits;
        open->commits_over_10ms = (long long)(counters.commits - counters.commits_le_10ms);
        open->commit_max_ms = (double)counters.commit_us_max / 1000.0;
        if (counters.commits > 0) {
            open->commit_mean_ms = (double)counters.commit_us_total / 1000.0 / counters.commits;
            open->write_mean_ms = (double)counters.write_us_total / 1000.0 / counters.commits;
        }
        fprintf(stderr, "meterbench:   %s open loop %.0f%%: %lld commits, %lld over 10 ms, the "
                "slowest %.2f ms; a commit took %.2f ms on average, %.2f ms of it writing and "
                "syncing; %llu runs of ids on disk, %llu commits waited %.2f ms for one\n",
                result->name, open->load_fraction * 100, open->commits,
                open->commits_over_10ms, open->commit_max_ms, open->commit_mean_ms,
                open->write_mean_ms, (unsigned long long)counters.index_runs,
                (unsigned long long)counters.spill_waits, (double)counters.spill_wait_us / 1000);
        phase_free(&phase);
    }
    return HM_OK;
}

/* ---- UDP ---- */

/* Re-frames the closed-loop events into datagrams of at most 1,400 bytes, one tenant each. */
static int build_datagrams(struct bench *bench, uint8_t **bytes_out, size_t **offsets_out,
                           size_t *count_out)
{
    struct pool *pool = &bench->pool;
    size_t body_limit = CLIENT_UDP_DATAGRAM_DEFAULT - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
    size_t capacity = bench->closed_frames * 64 + 16;
    uint8_t *bytes = malloc(pool_events_in(pool, bench->closed_frames) * RECORD_SIZE_MAX +
                            capacity * (FRAME_HEADER_SIZE + FRAME_MAC_SIZE));
    size_t *offsets = malloc((capacity + 1) * sizeof *offsets);
    struct client_frame frame;
    if (bytes == NULL || offsets == NULL) {
        free(bytes);
        free(offsets);
        return HM_ERR_NOMEM;
    }
    size_t count = 0, used = 0;
    uint64_t frame_id = 0;
    int rc = HM_OK;
    for (size_t f = 0; rc == HM_OK && f < bench->closed_frames; f++) {
        const struct pool_frame *source = &pool->frames[f];
        const struct bench_tenant *tenant = &pool->tenants[source->tenant_index];
        rc = client_frame_open(&frame, tenant->id, &tenant->key, FRAME_EVENTS_MAX, body_limit);
        const uint8_t *body = pool->frame_bytes + source->offset + FRAME_HEADER_SIZE;
        size_t body_size = source->size - FRAME_HEADER_SIZE - FRAME_MAC_SIZE, offset = 0;
        for (uint16_t i = 0; rc == HM_OK && i <= source->event_count; i++) {
            struct event event;
            const char *reason = NULL;
            int last = i == source->event_count;
            if (!last && (rc = record_decode(body, body_size, &offset, tenant->id, &event,
                                             &reason)) != HM_OK)
                break;
            if (last ? client_frame_event_count(&frame) == 0
                     : (rc = client_frame_add(&frame, &event)) != HM_ERR_FULL)
                continue;
            size_t size = 0;
            const uint8_t *sealed = client_frame_seal(&frame, ++frame_id, &size);
            if (count == capacity) {
                rc = HM_ERR_FULL;
                break;
            }
            memcpy(bytes + used, sealed, size);
            offsets[count++] = used;
            used += size;
            rc = last ? HM_OK : client_frame_add(&frame, &event);
        }
        client_frame_close(&frame);
    }
    offsets[count] = used;
    *bytes_out = bytes;
    *offsets_out = offsets;
    *count_out = count;
    return rc;
}

/* Returns the number of stored events (a counter of the ledger, read without a scan). */
static int64_t ledger_events_now(struct ledger *ledger)
{
    uint64_t count = 0;
    return ledger_events_total(ledger, &count) == HM_OK ? (int64_t)count : -1;
}

/* Sends every datagram as fast as the socket takes them; returns the events sent. */
static uint64_t send_datagrams(struct bench *bench, uint16_t port, const uint8_t *bytes,
                               const size_t *offsets, size_t count)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    uint64_t events = 0;
    for (size_t i = 0; i < count && !bench_interrupted; i++) {
        const uint8_t *frame = bytes + offsets[i];
        if (send(fd, frame, offsets[i + 1] - offsets[i], 0) >= 0)
            events += (uint64_t)(frame[6] | frame[7] << 8);
    }
    (void)bench;
    close(fd);
    return events;
}

int peer_meterd_udp(struct bench *bench, struct peer_result *result)
{
    result->name = "meterd-udp";
    result->durability = "no acks: durable once stored, but the kernel drops datagrams when full";
    uint8_t *bytes = NULL;
    size_t *offsets = NULL, count = 0;
    struct meterd_instance instance;
    if (build_datagrams(bench, &bytes, &offsets, &count) != HM_OK ||
        meterd_start(bench, "meterd-udp", &instance) != HM_OK) {
        free(bytes);
        free(offsets);
        fail(result, "datagrams could not be built or meterd did not start");
        return HM_ERR_IO;
    }
    result->ran = 1;
    struct ledger *ledger = NULL;
    struct ledger_options options = { .read_only = 1 };
    int rc = ledger_open(&ledger, instance.dir, &options);
    double cpu_before = proc_cpu_seconds(instance.pid);
    int64_t started = bench_now_ns();
    fprintf(stderr, "meterbench:   meterd-udp: sending %zu datagrams\n", count);
    result->sent = send_datagrams(bench, instance.udp_port, bytes, offsets, count);

    /* The last store time: the count stops changing for one second, or reaches what was sent. */
    int64_t last_change = bench_now_ns(), last_progress = started;
    int64_t stored = 0;
    while (rc == HM_OK && !bench_interrupted && (uint64_t)stored < result->sent &&
           bench_now_ns() - last_change < 1000000000) {
        usleep(5000);
        int64_t now_stored = ledger_events_now(ledger);
        if (now_stored > stored) {
            stored = now_stored;
            last_change = bench_now_ns();
        }
        struct phase progress = { .peer = result->name, .frame_count = count };
        progress_tick(&progress, 0, (size_t)stored, started, &last_progress);
    }
    result->cpu_s = proc_cpu_seconds(instance.pid) - cpu_before;
    result->rss_kib = proc_status_kib(instance.pid, "VmHWM");
    result->rss_anon_kib = proc_status_kib(instance.pid, "RssAnon");
    result->rss_file_kib = proc_status_kib(instance.pid, "RssFile");
    ledger_close(ledger);
    meterd_stop(&instance, NULL);
    free(bytes);
    free(offsets);

    result->closed_events = (size_t)(stored > 0 ? stored : 0);
    result->closed_seconds = (double)(last_change - started) / 1e9;
    result->closed_eps = result->closed_seconds > 0 ? (double)stored / result->closed_seconds : 0;
    result->stored = (uint64_t)stored;
    if (rc != HM_OK) {
        fail(result, "the ledger could not be opened to count stored events");
        return rc;
    }
    if (result->stored == result->sent) {
        check_ledger(bench, result, instance.dir, result->sent);
    } else {
        snprintf(result->note, sizeof result->note, "%" PRIu64 " of %" PRIu64 " events stored: "
                 "the rest were dropped by the kernel (UDP gives no delivery guarantee)",
                 result->stored, result->sent);
        result->count_ok = 0;
    }
    return HM_OK;
}
