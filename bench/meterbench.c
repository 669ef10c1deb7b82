/* meterbench: meterd side by side with its peers on the same events (bench/README.md). */
#include "bench.h"

#include "common/status.h"

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef HM_SOURCE_DIR
#define HM_SOURCE_DIR "."
#endif

#define PEER_COUNT 7

static const char usage_text[] =
    "usage: meterbench [--quick | --smoke] [options]\n"
    "\n"
    "Runs meterd and its peers on the same events in one run: meterd over TCP and UDP,\n"
    "PostgreSQL COPY, SQLite, Redis HINCRBY, raw LMDB appends and a loopback socket\n"
    "that only reads. Every server is started here on 127.0.0.1 with data under a\n"
    "temporary directory, and stopped at the end. Then the close phase fills a ledger\n"
    "with one month of events through the ledger API and times `meterctl close` on it.\n"
    "Writes RESULTS.md and throughput.png into the --out directory.\n"
    "\n"
    "  --quick               a short run (under a minute): 100,000 events, loads 0.5,0.9,\n"
    "                        a close of 1,000 tenants and 1,000,000 events\n"
    "  --smoke               a correctness check (a few thousand events per peer): every\n"
    "                        peer must store exactly the events sent and produce the\n"
    "                        expected rollups, and the close must finalize every invoice;\n"
    "                        writes no report; exit status 1 otherwise\n"
    "  --events N            events of the closed loop (default 3000000)\n"
    "  --loads LIST          open-loop loads as fractions of each peer's closed-loop\n"
    "                        maximum, comma-separated, each above 0 and at most 1\n"
    "                        (default 0.25,0.5,0.75,0.9)\n"
    "  --duration SECONDS    length of each open-loop phase (default 4)\n"
    "  --open-max EPS        events/s that --loads are fractions of, for every peer,\n"
    "                        instead of each peer's closed-loop maximum: compares\n"
    "                        builds or hosts at the same offered load\n"
    "  --peers LIST          peers to run, comma-separated, from meterd-tcp, lmdb,\n"
    "                        sqlite, postgres, redis, meterd-udp, socket, and close for\n"
    "                        the close phase (default all)\n"
    "  --close-events N      events of the close phase's month, 1000 to 1000000000\n"
    "                        (default 100000000; fewer when the disk of TMPDIR is short)\n"
    "  --close-tenants N     tenants of the close phase, 1 to 100000 (default 1000)\n"
    "  --events-per-frame N  events per frame and per batch, 1 to 4096 (default 256)\n"
    "  --tenants N           tenants, 1 to 64 (default 8)\n"
    "  --months N            calendar months from 2023-11 that the drawn events'\n"
    "                        timestamps spread over, 1 to 6 (default 6, so that every\n"
    "                        month partition of PostgreSQL is used; 1 is closer to a\n"
    "                        live stream, whose events fall in the current month)\n"
    "  --connections N       TCP connections to meterd and the socket, 1 to 16 (default 1)\n"
    "  --window N            closed-loop frames in flight per connection, 1 to 4096\n"
    "                        (default 512)\n"
    "  --pg-connections N    PostgreSQL sessions, 1 to 32 (default 4)\n"
    "  --redis-connections N Redis connections, 1 to 32 (default 2)\n"
    "  --index-memory MIB    meterd's --index-memory, the bound of its id index\n"
    "                        (default: meterd's own, 128)\n"
    "  --traces DIR          the bundled traces (default SOURCE/data/traces)\n"
    "  --out DIR             where RESULTS.md and throughput.png go (default\n"
    "                        ./meterbench-results; SOURCE/bench holds the published report)\n"
    "  --keep-temp           keep the temporary directory (data, server logs)\n"
    "  --help                show this text\n";

static const char *const peer_names[PEER_COUNT] = { "meterd-tcp", "lmdb",       "sqlite",
                                                    "postgres",   "redis",      "meterd-udp",
                                                    "socket" };
static int (*const peer_functions[PEER_COUNT])(struct bench *, struct peer_result *) = {
    peer_meterd_tcp, peer_lmdb, peer_sqlite, peer_postgres, peer_redis, peer_meterd_udp,
    peer_socket };

struct options {
    const char *mode;
    size_t events;
    double loads[BENCH_LOADS_MAX];
    size_t load_count;
    double duration_s;
    double open_max_eps; /* 0: each peer's closed-loop maximum */
    int peers[PEER_COUNT];
    int close;            /* run the close phase */
    uint64_t close_events;
    uint32_t close_tenants;
    uint32_t events_per_frame, tenants, connections, window, pg_connections, redis_connections;
    uint32_t index_memory_mib; /* meterd --index-memory; 0 leaves meterd's default */
    uint32_t months; /* that synthetic timestamps spread over */
    const char *traces;
    const char *out;
    int keep_temp;
    int smoke;
};

static void on_signal(int signal_number)
{
    (void)signal_number;
    bench_interrupted = 1;
}

/* ---- phase helpers shared by the peers ---- */

void bench_closed_phase(const struct bench *bench, const char *peer, struct phase *phase)
{
    *phase = (struct phase){ .peer = peer, .frame_count = bench->closed_frames,
                             .time_cap_s = bench->time_cap_s };
}

int bench_open_phase(struct bench *bench, const char *peer, double load, double max_eps,
                     struct phase *phase)
{
    struct pool *pool = &bench->pool;
    if (bench->open_max_eps > 0)
        max_eps = bench->open_max_eps;
    double events = load * max_eps * bench->duration_s;
    if (events > (double)pool->event_count && pool->event_count < BENCH_POOL_EVENTS_MAX) {
        size_t target = events < (double)BENCH_POOL_EVENTS_MAX ? (size_t)events
                                                                : BENCH_POOL_EVENTS_MAX;
        fprintf(stderr, "meterbench:   the pool grows to %zu events for %.0f s of %s at %.0f%%\n",
                target, bench->duration_s, peer, load * 100);
        /* Out of memory, the phase runs on the frames that the pool has. */
        (void)pool_extend(pool, target);
    }
    size_t frames = pool_frames_for(pool, events > 1 ? (size_t)events : 1);
    if (frames > pool->frame_count)
        frames = pool->frame_count;
    if (frames == 0)
        frames = 1;
    double mean_events = (double)pool->event_count / (double)pool->frame_count;
    *phase = (struct phase){ .peer = peer, .open_loop = 1, .load_fraction = load,
                             .offered_eps = load * max_eps,
                             .frames_per_second = load * max_eps / mean_events,
                             .frame_count = frames,
                             .time_cap_s = bench->duration_s * 3 + 10 };
    if (phase->frames_per_second <= 0)
        phase->frames_per_second = 1;
    return phase_schedule(phase, bench->seed + (uint64_t)(load * 1000));
}

double bench_record_closed(struct peer_result *result, const struct phase *phase)
{
    result->closed_events = phase->events_done;
    result->closed_seconds = phase->seconds;
    result->closed_eps = phase->seconds > 0 ? (double)phase->events_done / phase->seconds : 0;
    fprintf(stderr, "meterbench:   %s closed loop: %zu events in %.2f s, %.0f events/s\n",
            result->name, phase->events_done, phase->seconds, result->closed_eps);
    return result->closed_eps;
}

void bench_record_open(struct peer_result *result, struct phase *phase)
{
    if (result->open_count >= BENCH_LOADS_MAX)
        return;
    struct open_result *open = &result->open[result->open_count++];
    open->load_fraction = phase->load_fraction;
    open->offered_eps = phase->offered_eps;
    open->events = phase->events_done;
    open->seconds = phase->seconds;
    open->achieved_eps = phase->seconds > 0 ? (double)phase->events_done / phase->seconds : 0;
    open->stopped_by_cap = phase->stopped_by_cap;
    open->commits = open->commits_over_10ms = -1;
    open->commit_max_ms = open->commit_mean_ms = open->write_mean_ms = -1;
    open->failed = phase->failed || phase->frames_done < phase->frame_count;
    latency_summarize(phase->latency_ns, phase->latency_count, &open->latency);
    latency_summarize(phase->send_lag_ns, phase->send_lag_count, &open->send_lag);
    fprintf(stderr, "meterbench:   %s open loop %.0f%%: %zu events, %.0f events/s, p50 %.2f ms "
            "p99 %.2f ms p99.9 %.2f ms (%zu frames)%s\n", result->name,
            phase->load_fraction * 100, open->events, open->achieved_eps, open->latency.p50_ms,
            open->latency.p99_ms, open->latency.p999_ms, open->latency.samples,
            open->failed ? " INCOMPLETE" : "");
    if (open->send_lag.samples > 0)
        fprintf(stderr, "meterbench:   %s open loop %.0f%%: the sender wrote frames late by "
                "p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms (included in the latency)\n",
                result->name, phase->load_fraction * 100, open->send_lag.p50_ms,
                open->send_lag.p99_ms, open->send_lag.p999_ms);
}

void bench_check_rollups(struct bench *bench, struct peer_result *result,
                         const struct rollup_map *got)
{
    result->rollups_checked = 1;
    result->rollup_differences = rollup_map_diff(&bench->expected, got, result->name, 5);
}

/* ---- options ---- */

static int option_error(const char *option, const char *value, const char *expected)
{
    fprintf(stderr, "meterbench: invalid %s \"%s\": expected %s; see meterbench --help\n",
            option, value, expected);
    return 2;
}

static int parse_unsigned(const char *option, const char *text, unsigned long long min,
                          unsigned long long max, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long value = text[0] >= '0' && text[0] <= '9' ? strtoull(text, &end, 10) : 0;
    if (end == NULL || end == text || *end != '\0' || errno != 0 || value < min || value > max) {
        char expected[96];
        snprintf(expected, sizeof expected, "an integer from %llu to %llu", min, max);
        return option_error(option, text, expected);
    }
    *out = value;
    return 0;
}

static int parse_loads(const char *text, struct options *options)
{
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text);
    options->load_count = 0;
    char *save = NULL;
    for (char *part = strtok_r(copy, ",", &save); part != NULL; part = strtok_r(NULL, ",", &save)) {
        char *end = NULL;
        double load = strtod(part, &end);
        if (end == part || *end != '\0' || !(load > 0 && load <= 1) ||
            options->load_count == BENCH_LOADS_MAX)
            return option_error("--loads", text, "up to 8 comma-separated fractions above 0 "
                                "and at most 1, for example 0.25,0.5,0.75,0.9");
        options->loads[options->load_count++] = load;
    }
    return options->load_count > 0 ? 0 : option_error("--loads", text, "at least one fraction");
}

static int parse_peers(const char *text, struct options *options)
{
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text);
    memset(options->peers, 0, sizeof options->peers);
    options->close = 0;
    char *save = NULL;
    int any = 0;
    for (char *part = strtok_r(copy, ",", &save); part != NULL; part = strtok_r(NULL, ",", &save)) {
        int found = strcmp(part, "close") == 0;
        if (found)
            options->close = any = 1;
        for (int i = 0; i < PEER_COUNT; i++) {
            if (strcmp(part, peer_names[i]) == 0)
                options->peers[i] = found = any = 1;
        }
        if (!found)
            return option_error("--peers", part, "meterd-tcp, lmdb, sqlite, postgres, redis, "
                                "meterd-udp, socket or close");
    }
    return any ? 0 : option_error("--peers", text, "at least one peer");
}

static void set_mode(struct options *options, const char *mode)
{
    options->mode = mode;
    if (strcmp(mode, "quick") == 0) {
        options->events = 100000;
        options->loads[0] = 0.5;
        options->loads[1] = 0.9;
        options->load_count = 2;
        options->duration_s = 1;
        options->close_events = 1000000;
    } else if (strcmp(mode, "smoke") == 0) {
        options->events = 3000;
        options->close_events = 5000;
        options->close_tenants = 20;
        options->loads[0] = 0.5;
        options->load_count = 1;
        options->duration_s = 0.3;
        options->smoke = 1;
    }
}

/* Returns -1 to go on, or an exit status. */
static int parse_options(int argc, char **argv, struct options *options)
{
    *options = (struct options){ .mode = "full", .events = 3000000,
                                 .loads = { 0.25, 0.5, 0.75, 0.9 }, .load_count = 4,
                                 .duration_s = 4, .events_per_frame = 256, .tenants = 8,
                                 .months = POOL_MONTHS_MAX,
                                 .connections = 1, .window = 512, .pg_connections = 4,
                                 .redis_connections = 2, .close = 1,
                                 .close_events = 100000000, .close_tenants = 1000,
                                 .traces = HM_SOURCE_DIR "/data/traces",
                                 .out = "meterbench-results" };
    for (int i = 0; i < PEER_COUNT; i++)
        options->peers[i] = 1;
    /* The mode sets defaults first, so that the other options override them in any order. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0 || strcmp(argv[i], "--smoke") == 0) {
            if (strcmp(options->mode, "full") != 0) {
                fprintf(stderr, "meterbench: --quick and --smoke cannot be combined; give one "
                        "of them\n");
                return 2;
            }
            set_mode(options, argv[i] + 2);
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long number = 0;
        int rc = 0;
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(option, "--quick") == 0 || strcmp(option, "--smoke") == 0) {
            continue;
        } else if (strcmp(option, "--keep-temp") == 0) {
            options->keep_temp = 1;
            continue;
        } else if (strncmp(option, "--", 2) != 0) {
            fprintf(stderr, "meterbench: unexpected argument \"%s\"; see meterbench --help\n",
                    option);
            return 2;
        } else if (value == NULL) {
            fprintf(stderr, "meterbench: missing value for %s, or unknown option; see "
                    "meterbench --help\n", option);
            return 2;
        } else if (strcmp(option, "--events") == 0) {
            rc = parse_unsigned(option, value, 1000, 20000000, &number);
            options->events = (size_t)number;
        } else if (strcmp(option, "--loads") == 0) {
            rc = parse_loads(value, options);
        } else if (strcmp(option, "--duration") == 0) {
            char *end = NULL;
            options->duration_s = strtod(value, &end);
            if (end == value || *end != '\0' || !(options->duration_s >= 0.1) ||
                options->duration_s > 120)
                rc = option_error(option, value, "seconds from 0.1 to 120");
        } else if (strcmp(option, "--months") == 0) {
            rc = parse_unsigned(option, value, 1, POOL_MONTHS_MAX, &number);
            options->months = (uint32_t)number;
        } else if (strcmp(option, "--open-max") == 0) {
            rc = parse_unsigned(option, value, 1000, 100000000, &number);
            options->open_max_eps = (double)number;
        } else if (strcmp(option, "--peers") == 0) {
            rc = parse_peers(value, options);
        } else if (strcmp(option, "--events-per-frame") == 0) {
            rc = parse_unsigned(option, value, 1, FRAME_EVENTS_MAX, &number);
            options->events_per_frame = (uint32_t)number;
        } else if (strcmp(option, "--close-events") == 0) {
            rc = parse_unsigned(option, value, 1000, 1000000000, &number);
            options->close_events = (uint64_t)number;
        } else if (strcmp(option, "--close-tenants") == 0) {
            rc = parse_unsigned(option, value, 1, 100000, &number);
            options->close_tenants = (uint32_t)number;
        } else if (strcmp(option, "--tenants") == 0) {
            rc = parse_unsigned(option, value, 1, BENCH_TENANTS_MAX, &number);
            options->tenants = (uint32_t)number;
        } else if (strcmp(option, "--connections") == 0) {
            rc = parse_unsigned(option, value, 1, 16, &number);
            options->connections = (uint32_t)number;
        } else if (strcmp(option, "--window") == 0) {
            rc = parse_unsigned(option, value, 1, 4096, &number);
            options->window = (uint32_t)number;
        } else if (strcmp(option, "--pg-connections") == 0) {
            rc = parse_unsigned(option, value, 1, 32, &number);
            options->pg_connections = (uint32_t)number;
        } else if (strcmp(option, "--index-memory") == 0) {
            rc = parse_unsigned(option, value, 1, 1 << 20, &number);
            options->index_memory_mib = (uint32_t)number;
        } else if (strcmp(option, "--redis-connections") == 0) {
            rc = parse_unsigned(option, value, 1, 32, &number);
            options->redis_connections = (uint32_t)number;
        } else if (strcmp(option, "--traces") == 0) {
            options->traces = value;
        } else if (strcmp(option, "--out") == 0) {
            options->out = value;
        } else {
            fprintf(stderr, "meterbench: unknown option %s; see meterbench --help\n", option);
            return 2;
        }
        if (rc != 0)
            return rc;
        i++;
    }
    return -1;
}

/* ---- results ---- */

static void json_string(FILE *file, const char *text)
{
    fputc('"', file);
    for (; text && *text; text++) {
        if (*text == '"' || *text == '\\')
            fputc('\\', file);
        if ((unsigned char)*text >= 0x20)
            fputc(*text, file);
    }
    fputc('"', file);
}

/* Writes the close phase as the "close" member of the results. */
static void write_close(FILE *file, const struct options *options,
                        const struct close_result *close)
{
    fprintf(file, "\n], \"close\": {\"ran\": %d, \"failed\": %d, \"note\": ",
            options->close && close->ran, close->failed);
    json_string(file, options->close ? close->note : "--peers did not name close");
    fprintf(file, ", \"tenants\": %u, \"events_requested\": %" PRIu64 ", \"events\": %" PRIu64
            ", \"fill_seconds\": %.3f, \"ledger_bytes\": %" PRIu64 ", \"close_seconds\": %.6f, "
            "\"rerun_seconds\": %.6f, \"invoices\": %zu, \"invoice_files\": %zu, "
            "\"total_minor_min\": %" PRId64 ", \"total_minor_max\": %" PRId64
            ", \"total_minor_sum\": %" PRId64 "}",
            close->tenants, close->events_requested, close->events, close->fill_seconds,
            close->ledger_bytes, close->close_seconds, close->rerun_seconds, close->invoices,
            close->invoice_files, close->invoices ? close->total_minor_min : 0,
            close->total_minor_max, close->total_minor_sum);
}

static int write_results(const char *path, const struct bench *bench,
                         const struct options *options, const struct peer_result *results,
                         const struct close_result *close, int argc, char **argv)
{
    FILE *file = fopen(path, "w");
    if (file == NULL)
        return HM_ERR_IO;
    char command[2048] = "meterbench";
    for (int i = 1; i < argc; i++) {
        strncat(command, " ", sizeof command - strlen(command) - 1);
        strncat(command, argv[i], sizeof command - strlen(command) - 1);
    }
    fprintf(file, "{\"command\": ");
    json_string(file, command);
    fprintf(file, ", \"mode\": \"%s\", \"closed_events\": %zu, \"pool_events\": %zu, "
            "\"trace_events\": %zu, \"events_per_frame\": %u, \"tenants\": %u, \"months\": %u, "
            "\"duration_s\": %.3f, \"connections\": %u, \"window\": %u, "
            "\"pg_connections\": %u, \"redis_connections\": %u, \"group_events\": %u, "
            "\"pool_events_max\": %zu, \"open_max_eps\": %.0f, \"index_memory_mib\": %u, "
            "\"peers\": [", options->mode,
            pool_events_in(&bench->pool, bench->closed_frames), bench->pool.event_count,
            bench->pool.trace_event_count, options->events_per_frame, options->tenants,
            options->months,
            options->duration_s, options->connections, options->window, options->pg_connections,
            options->redis_connections, bench->group_events, BENCH_POOL_EVENTS_MAX,
            options->open_max_eps, options->index_memory_mib);
    int first = 1;
    for (int i = 0; i < PEER_COUNT; i++) {
        const struct peer_result *r = &results[i];
        if (r->name == NULL)
            continue;
        fprintf(file, "%s\n  {\"name\": ", first ? "" : ",");
        first = 0;
        json_string(file, r->name);
        fprintf(file, ", \"durability\": ");
        json_string(file, r->durability);
        fprintf(file, ", \"ran\": %d, \"failed\": %d, \"note\": ", r->ran, r->failed);
        json_string(file, r->note);
        fprintf(file, ", \"closed_events\": %zu, \"closed_seconds\": %.6f, \"closed_eps\": %.1f, "
                "\"cpu_s\": %.3f, \"rss_kib\": %ld, \"rss_anon_kib\": %ld, \"rss_file_kib\": %ld, "
                "\"rss_anon_peak_kib\": %ld, "
                "\"count_ok\": %d, \"stored\": %" PRIu64
                ", \"sent\": %" PRIu64 ", \"rollups_checked\": %d, \"rollup_differences\": %zu, "
                "\"rollup_query_s\": %.3f, \"events_per_commit\": %.1f, \"open\": [",
                r->closed_events, r->closed_seconds, r->closed_eps, r->cpu_s, r->rss_kib,
                r->rss_anon_kib, r->rss_file_kib, r->rss_anon_peak_kib, r->count_ok, r->stored, r->sent, r->rollups_checked, r->rollup_differences,
                r->rollup_query_s, r->events_per_commit);
        for (size_t j = 0; j < r->open_count; j++) {
            const struct open_result *o = &r->open[j];
            fprintf(file, "%s{\"load\": %.3f, \"offered_eps\": %.1f, \"achieved_eps\": %.1f, "
                    "\"events\": %zu, \"seconds\": %.3f, \"samples\": %zu, \"p50_ms\": %.3f, "
                    "\"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f, \"incomplete\": %d, "
                    "\"commits\": %lld, \"commits_over_10ms\": %lld, \"commit_max_ms\": %.3f, "
                    "\"commit_mean_ms\": %.3f, \"write_mean_ms\": %.3f, "
                    "\"send_lag_p99_ms\": %.3f}",
                    j ? ", " : "", o->load_fraction, o->offered_eps, o->achieved_eps, o->events,
                    o->seconds, o->latency.samples, o->latency.p50_ms, o->latency.p99_ms,
                    o->latency.p999_ms, o->latency.max_ms, o->failed || o->stopped_by_cap,
                    o->commits, o->commits_over_10ms, o->commit_max_ms, o->commit_mean_ms,
                    o->write_mean_ms, o->send_lag.samples > 0 ? o->send_lag.p99_ms : -1.0);
        }
        fprintf(file, "]}");
    }
    write_close(file, options, close);
    fprintf(file, "}\n");
    return fclose(file) == 0 ? HM_OK : HM_ERR_IO;
}

/* Runs bench/report.py with Debian's python3 (where python3-matplotlib installs) when present. */
static int run_report(const char *results_path, const char *out_dir)
{
    char script[PATH_MAX];
    snprintf(script, sizeof script, "%s/bench/report.py", HM_SOURCE_DIR);
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char *argv[] = { (char *)python, script, "--results", (char *)results_path, "--out",
                     (char *)out_dir, NULL };
    return child_run(argv, NULL, NULL) == 0 ? HM_OK : HM_ERR_IO;
}

/* A peer passes when it ran and stored exactly what was sent, with the expected rollups. */
static int peer_passed(const struct peer_result *result)
{
    if (!result->ran || result->failed)
        return 0;
    if (result->rollups_checked && result->rollup_differences > 0)
        return 0;
    /* UDP may lose datagrams by design; then only the count up to what was sent is checked. */
    if (strcmp(result->name, "meterd-udp") == 0)
        return result->stored <= result->sent;
    return result->count_ok;
}

static int prepare(struct bench *bench, const struct options *options)
{
    char self[PATH_MAX];
    ssize_t size = readlink("/proc/self/exe", self, sizeof self - 1);
    if (size <= 0)
        return HM_ERR_IO;
    self[size] = '\0';
    snprintf(bench->self_path, sizeof bench->self_path, "%s", self);
    snprintf(bench->program_dir, sizeof bench->program_dir, "%.1000s", dirname(self));
    char meterd[BENCH_PATH_MAX + 16];
    snprintf(meterd, sizeof meterd, "%s/meterd", bench->program_dir);
    if (access(meterd, X_OK) != 0) {
        fprintf(stderr, "meterbench: %s is missing; build it beside meterbench (cmake --build)\n",
                meterd);
        return HM_ERR_NOT_FOUND;
    }
    const char *temp_root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    if (strlen(temp_root) > 400 || strlen(bench->program_dir) > 900) {
        fprintf(stderr, "meterbench: TMPDIR or the build directory path is too long (at most 400 "
                "and 900 bytes); use shorter paths\n");
        return HM_ERR_INVALID;
    }
    snprintf(bench->temp_dir, sizeof bench->temp_dir, "%.400s/meterbench.XXXXXX", temp_root);
    if (mkdtemp(bench->temp_dir) == NULL || chmod(bench->temp_dir, 0711) != 0) {
        fprintf(stderr, "meterbench: cannot create a temporary directory: %s\n", strerror(errno));
        return HM_ERR_IO;
    }
    bench->connections = options->connections;
    bench->window = options->window;
    bench->pg_connections = options->pg_connections;
    bench->index_memory_mib = options->index_memory_mib;
    bench->redis_connections = options->redis_connections;
    bench->duration_s = options->duration_s;
    bench->open_max_eps = options->open_max_eps;
    bench->time_cap_s = options->smoke ? 120 : 300;
    bench->load_count = options->load_count;
    memcpy(bench->loads, options->loads, sizeof bench->loads);
    bench->seed = UINT64_C(20231116);
    bench->smoke = options->smoke;
    return HM_OK;
}

static int build_pool(struct bench *bench, const struct options *options)
{
    fprintf(stderr, "meterbench: creating %u tenants and keys, replaying the traces, drawing "
            "events\n", options->tenants);
    int rc = meterd_prepare(bench, options->tenants);
    struct pool_options pool_options = { .keys_path = bench->keys_path,
                                         .trace_dir = options->traces,
                                         .event_target = options->events,
                                         .events_per_frame = options->events_per_frame,
                                         .seed = bench->seed, .months = options->months };
    if (rc == HM_OK)
        rc = pool_build(&bench->pool, &pool_options);
    if (rc != HM_OK)
        return rc;
    /* The smoke run uses a few thousand events; the pool always contains the whole traces. */
    bench->closed_frames = pool_frames_for(&bench->pool, options->events);
    if (bench->closed_frames > bench->pool.frame_count)
        bench->closed_frames = bench->pool.frame_count;
    rc = rollup_map_init(&bench->expected);
    if (rc == HM_OK)
        rc = rollup_map_expected(&bench->expected, &bench->pool, bench->closed_frames);
    fprintf(stderr, "meterbench: %zu events in %zu frames (%zu replayed from the traces); the "
            "closed loop sends the first %zu events\n", bench->pool.event_count,
            bench->pool.frame_count, bench->pool.trace_event_count,
            pool_events_in(&bench->pool, bench->closed_frames));
    return rc;
}

/* The close passes when it finalized and checked every invoice (or was skipped for disk space). */
static int close_passed(const struct close_result *close)
{
    return !close->failed && (!close->ran || close->invoices == close->tenants);
}

static void print_summary(const struct peer_result *results, const struct options *options,
                          const struct close_result *close)
{
    fprintf(stderr, "\nmeterbench: %-15s %12s %10s %10s %s\n", "peer", "events/s", "CPU s/M",
            "RSS MiB", "check");
    for (int i = 0; i < PEER_COUNT; i++) {
        const struct peer_result *r = &results[i];
        if (r->name == NULL)
            continue;
        if (!r->ran) {
            fprintf(stderr, "meterbench: %-15s skipped: %s\n", r->name, r->note);
            continue;
        }
        double cpu_per_million = r->closed_events ? r->cpu_s * 1e6 / (double)r->closed_events : 0;
        fprintf(stderr, "meterbench: %-15s %12.0f %10.2f %10.1f %s%s\n", r->name, r->closed_eps,
                cpu_per_million, (double)r->rss_kib / 1024,
                peer_passed(r) ? "ok" : "FAILED",
                r->rollups_checked ? (r->rollup_differences ? " (rollups differ)" : " (rollups "
                                      "equal)") : "");
    }
    if (!options->close)
        return;
    if (!close->ran) {
        fprintf(stderr, "meterbench: %-15s skipped: %s\n", "close", close->note);
        return;
    }
    fprintf(stderr, "meterbench: %-15s %.3f s for %u tenants and %" PRIu64 " events (rerun %.3f "
            "s) %s: %s\n", "close", close->close_seconds, close->tenants, close->events,
            close->rerun_seconds, close_passed(close) ? "ok" : "FAILED", close->note);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--sink-serve") == 0)
        return sink_serve(argv[2], argv[3]);
    struct options options;
    int status = parse_options(argc, argv, &options);
    if (status >= 0)
        return status;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    static struct bench bench;
    static struct peer_result results[PEER_COUNT];
    static struct close_result close;
    int rc = prepare(&bench, &options);
    if (rc != HM_OK)
        return 1;
    rc = build_pool(&bench, &options);
    int all_passed = rc == HM_OK;
    for (int i = 0; rc == HM_OK && i < PEER_COUNT && !bench_interrupted; i++) {
        if (!options.peers[i])
            continue;
        fprintf(stderr, "meterbench: == %s\n", peer_names[i]);
        struct peer_result *result = &results[i];
        result->rss_anon_kib = result->rss_file_kib = result->rss_anon_peak_kib = -1;
        int peer_rc = peer_functions[i](&bench, result);
        if (strcmp(peer_names[i], "meterd-tcp") == 0 && result->events_per_commit >= 1)
            bench.group_events = (uint32_t)(result->events_per_commit + 0.5);
        if (peer_rc == HM_ERR_NOT_FOUND && !result->ran) {
            /* A peer whose server is not installed is skipped, and the report names the package. */
            fprintf(stderr, "meterbench:   %s skipped: %s\n", result->name, result->note);
            continue;
        }
        if (!peer_passed(result)) {
            all_passed = 0;
            fprintf(stderr, "meterbench:   %s FAILED its check: %s\n", result->name,
                    result->note[0] ? result->note : "stored count or rollups differ");
        }
    }
    if (rc == HM_OK && options.close && !bench_interrupted) {
        fprintf(stderr, "meterbench: == close\n");
        close_phase(&bench, options.close_tenants, options.close_events, &close);
        if (!close_passed(&close))
            all_passed = 0;
    }
    if (rc == HM_OK)
        print_summary(results, &options, &close);
    if (rc == HM_OK && !options.smoke && !bench_interrupted) {
        char results_path[BENCH_PATH_MAX + 32];
        snprintf(results_path, sizeof results_path, "%s/results.json", bench.temp_dir);
        if (write_results(results_path, &bench, &options, results, &close, argc, argv) != HM_OK ||
            run_report(results_path, options.out) != HM_OK) {
            fprintf(stderr, "meterbench: writing the report failed; the results are in %s\n",
                    results_path);
            options.keep_temp = 1;
            all_passed = 0;
        }
    }
    if (options.keep_temp) {
        fprintf(stderr, "meterbench: kept %s\n", bench.temp_dir);
    } else {
        char *remove[] = { "rm", "-rf", bench.temp_dir, NULL };
        child_run(remove, NULL, NULL);
    }
    rollup_map_free(&bench.expected);
    pool_free(&bench.pool);
    if (bench_interrupted) {
        fprintf(stderr, "meterbench: interrupted; servers stopped\n");
        return 130;
    }
    return all_passed ? 0 : 1;
}
