/*
 * PostgreSQL: COPY into the platform's usage_events table, partitioned by
 * month with the primary key (id, timestamp) and the foreign key to tenants,
 * over several connections, one frame per COPY, each COPY its own durable
 * transaction (fsync=on, synchronous_commit=on). The rollups are one GROUP BY
 * query afterwards, timed apart. The cluster is created with initdb in the
 * run's temporary directory and listens on 127.0.0.1 only.
 */
#include "bench.h"

#include "common/status.h"
#include "rollup/ledger.h"

#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Months of the partitions: the months of the pool's timestamps. */
static const char *const partition_months[] = { "2023-11", "2023-12", "2024-01", "2024-02",
                                                "2024-03", "2024-04", "2024-05" };

struct postgres_peer {
    struct bench *bench;
    char bin_dir[256];
    char data_dir[BENCH_PATH_MAX + 16];
    char log[BENCH_PATH_MAX + 32];
    char conninfo[256];
    const char *run_as;
    pid_t postmaster;
    char *copy_text; /* COPY rows of every frame, back to back */
    size_t *copy_offsets;
    double cpu_before;
    double cpu_s;
    long rss_kib;
};

static void fail(struct peer_result *result, const char *why)
{
    result->failed = 1;
    snprintf(result->note, sizeof result->note, "%s", why);
}

/* Finds initdb: $METERBENCH_PG_BINDIR, or the newest /usr/lib/postgresql/N/bin. */
static int find_bin_dir(char *out, size_t size)
{
    const char *configured = getenv("METERBENCH_PG_BINDIR");
    char path[512];
    if (configured != NULL) {
        snprintf(path, sizeof path, "%s/initdb", configured);
        snprintf(out, size, "%s", configured);
        return access(path, X_OK) == 0 ? HM_OK : HM_ERR_NOT_FOUND;
    }
    for (int version = 17; version >= 13; version--) {
        snprintf(path, sizeof path, "/usr/lib/postgresql/%d/bin/initdb", version);
        if (access(path, X_OK) == 0) {
            snprintf(out, size, "/usr/lib/postgresql/%d/bin", version);
            return HM_OK;
        }
    }
    return HM_ERR_NOT_FOUND;
}

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof address;
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&address, sizeof address) == 0 &&
        getsockname(fd, (struct sockaddr *)&address, &size) == 0)
        port = ntohs(address.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int cluster_start(struct postgres_peer *peer)
{
    struct bench *bench = peer->bench;
    snprintf(peer->data_dir, sizeof peer->data_dir, "%s/postgres", bench->temp_dir);
    snprintf(peer->log, sizeof peer->log, "%s/postgres.log", bench->temp_dir);
    peer->run_as = geteuid() == 0 ? "postgres" : NULL;
    mkdir(peer->data_dir, 0700);
    if (peer->run_as != NULL) {
        struct passwd *user = getpwnam(peer->run_as);
        if (user == NULL || chown(peer->data_dir, user->pw_uid, user->pw_gid) != 0) {
            fprintf(stderr, "meterbench: postgres: running as root needs the postgres user "
                    "(created by the postgresql package)\n");
            return HM_ERR_IO;
        }
        FILE *log = fopen(peer->log, "a");
        if (log != NULL)
            fclose(log);
        if (chown(peer->log, user->pw_uid, user->pw_gid) != 0)
            return HM_ERR_IO;
    }
    char initdb[300], pg_ctl[300], options[BENCH_PATH_MAX + 512];
    snprintf(initdb, sizeof initdb, "%s/initdb", peer->bin_dir);
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", peer->bin_dir);
    char *init_argv[] = { initdb, "-D", peer->data_dir, "-U", "bench", "-A", "trust", "-E",
                          "UTF8", "--locale=C", "--no-sync", NULL };
    if (child_run(init_argv, peer->log, peer->run_as) != 0) {
        fprintf(stderr, "meterbench: postgres: initdb failed; see %s\n", peer->log);
        return HM_ERR_IO;
    }
    uint16_t port = free_port();
    /* Durable settings are the defaults and are set explicitly so that the log shows them. */
    snprintf(options, sizeof options,
             "-c port=%u -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s "
             "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
             "-c shared_buffers=256MB -c max_wal_size=4GB -c max_connections=40",
             port, peer->data_dir);
    char *start_argv[] = { pg_ctl, "-D", peer->data_dir, "-l", peer->log, "-o", options, "-w",
                           "-t", "60", "start", NULL };
    if (child_run(start_argv, peer->log, peer->run_as) != 0) {
        fprintf(stderr, "meterbench: postgres: pg_ctl start failed; see %s\n", peer->log);
        return HM_ERR_IO;
    }
    char pid_path[BENCH_PATH_MAX + 32];
    snprintf(pid_path, sizeof pid_path, "%s/postmaster.pid", peer->data_dir);
    FILE *file = fopen(pid_path, "r");
    int pid = 0;
    if (file == NULL || fscanf(file, "%d", &pid) != 1)
        pid = 0;
    if (file != NULL)
        fclose(file);
    peer->postmaster = (pid_t)pid;
    snprintf(peer->conninfo, sizeof peer->conninfo,
             "host=127.0.0.1 port=%u dbname=postgres user=bench", port);
    return pid > 0 ? HM_OK : HM_ERR_IO;
}

static void cluster_stop(struct postgres_peer *peer)
{
    char pg_ctl[300];
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", peer->bin_dir);
    char *argv[] = { pg_ctl, "-D", peer->data_dir, "-m", "fast", "-w", "stop", NULL };
    child_run(argv, peer->log, peer->run_as);
}

static int exec_ok(PGconn *connection, const char *sql)
{
    PGresult *result = PQexec(connection, sql);
    ExecStatusType status = PQresultStatus(result);
    int ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "meterbench: postgres: %.80s failed: %s", sql,
                PQerrorMessage(connection));
    PQclear(result);
    return ok ? HM_OK : HM_ERR_STORAGE;
}

/* Creates the tables of the platform's schema that usage_events needs, with its partitions. */
static int create_schema(struct postgres_peer *peer, PGconn *connection)
{
    int rc = exec_ok(connection,
                     "CREATE TABLE tenants (id UUID PRIMARY KEY, organization_name VARCHAR(255) "
                     "NOT NULL, deployment_mode VARCHAR(50) NOT NULL, created_at TIMESTAMPTZ NOT "
                     "NULL, updated_at TIMESTAMPTZ NOT NULL, status VARCHAR(50) NOT NULL, "
                     "metadata JSONB)");
    if (rc == HM_OK)
        rc = exec_ok(connection,
                     "CREATE TABLE usage_events (id UUID, tenant_id UUID REFERENCES tenants(id), "
                     "timestamp TIMESTAMPTZ NOT NULL, event_type VARCHAR(100) NOT NULL, "
                     "metadata JSONB, cost_usd DECIMAL(10, 6), PRIMARY KEY (id, timestamp)) "
                     "PARTITION BY RANGE (timestamp)");
    size_t months = sizeof partition_months / sizeof partition_months[0];
    for (size_t i = 0; rc == HM_OK && i + 1 < months; i++) {
        char sql[256];
        snprintf(sql, sizeof sql, "CREATE TABLE usage_events_%.4s_%.2s PARTITION OF "
                 "usage_events FOR VALUES FROM ('%s-01 00:00:00+00') TO ('%s-01 00:00:00+00')",
                 partition_months[i], partition_months[i] + 5, partition_months[i],
                 partition_months[i + 1]);
        rc = exec_ok(connection, sql);
    }
    if (rc == HM_OK)
        rc = exec_ok(connection, "CREATE TABLE usage_events_default PARTITION OF usage_events "
                     "DEFAULT");
    for (uint32_t t = 0; rc == HM_OK && t < peer->bench->pool.tenant_count; t++) {
        char sql[512];
        snprintf(sql, sizeof sql, "INSERT INTO tenants VALUES ('%s', '%s', 'shared', now(), "
                 "now(), 'active', NULL)", peer->bench->pool.tenants[t].id_text,
                 peer->bench->pool.tenants[t].name);
        rc = exec_ok(connection, sql);
    }
    return rc;
}

/* Renders the COPY text rows of every frame, outside any timing. */
static int render_copy(struct postgres_peer *peer)
{
    struct pool *pool = &peer->bench->pool;
    size_t capacity = pool->text_size + pool->event_count * 128 + 1;
    peer->copy_text = malloc(capacity);
    peer->copy_offsets = malloc((pool->frame_count + 1) * sizeof *peer->copy_offsets);
    if (peer->copy_text == NULL || peer->copy_offsets == NULL)
        return HM_ERR_NOMEM;
    size_t used = 0;
    for (size_t f = 0; f < pool->frame_count; f++) {
        peer->copy_offsets[f] = used;
        const struct pool_frame *frame = &pool->frames[f];
        for (size_t e = frame->first_event; e < frame->first_event + frame->event_count; e++) {
            const struct event *event = &pool->events[e];
            char id[UUID_TEXT_SIZE], stamp[64];
            uuid_format(event->event_id, id);
            time_t seconds = (time_t)(event->timestamp_us / 1000000);
            struct tm utc;
            gmtime_r(&seconds, &utc);
            size_t stamp_size = strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &utc);
            snprintf(stamp + stamp_size, sizeof stamp - stamp_size, ".%06lld+00",
                     (long long)(event->timestamp_us % 1000000));
            int size = snprintf(peer->copy_text + used, capacity - used, "%s\t%s\t%s\t%s\t%s\n",
                                id, pool->tenants[frame->tenant_index].id_text, stamp,
                                pool->rendered[e].event_type,
                                pool->text + pool->rendered[e].metadata_offset);
            if (size < 0 || (size_t)size >= capacity - used)
                return HM_ERR_NOMEM;
            used += (size_t)size;
        }
    }
    peer->copy_offsets[pool->frame_count] = used;
    return HM_OK;
}

static int copy_open(void *context, uint32_t worker, void **state_out)
{
    struct postgres_peer *peer = context;
    (void)worker;
    PGconn *connection = PQconnectdb(peer->conninfo);
    if (PQstatus(connection) != CONNECTION_OK) {
        fprintf(stderr, "meterbench: postgres: cannot connect: %s", PQerrorMessage(connection));
        PQfinish(connection);
        return HM_ERR_IO;
    }
    *state_out = connection;
    return HM_OK;
}

/* The COPY workers' peer; copy_store gets only its connection. One PostgreSQL run at a time. */
static struct postgres_peer *current_peer;

static int copy_store(void *context, size_t first, size_t count)
{
    PGconn *connection = context;
    struct postgres_peer *peer = current_peer;
    PGresult *result = PQexec(connection, "COPY usage_events (id, tenant_id, timestamp, "
                              "event_type, metadata) FROM STDIN");
    int ok = PQresultStatus(result) == PGRES_COPY_IN;
    PQclear(result);
    size_t start = peer->copy_offsets[first], end = peer->copy_offsets[first + count];
    if (ok)
        ok = PQputCopyData(connection, peer->copy_text + start, (int)(end - start)) == 1 &&
             PQputCopyEnd(connection, NULL) == 1;
    while ((result = PQgetResult(connection)) != NULL) {
        if (PQresultStatus(result) != PGRES_COMMAND_OK)
            ok = 0;
        PQclear(result);
    }
    if (!ok)
        fprintf(stderr, "meterbench: postgres: COPY failed: %s", PQerrorMessage(connection));
    return ok ? HM_OK : HM_ERR_STORAGE;
}

static void copy_close(void *context)
{
    PQfinish(context);
}

static void copy_finish(void *context)
{
    struct postgres_peer *peer = context;
    peer->cpu_s = proc_tree_cpu_seconds(peer->postmaster) - peer->cpu_before;
    long rss = proc_tree_hwm_kib(peer->postmaster);
    if (rss > peer->rss_kib)
        peer->rss_kib = rss;
}

static int rollup_query(PGconn *connection, struct rollup_map *got)
{
    char sql[4096];
    snprintf(sql, sizeof sql,
             "WITH e AS (SELECT tenant_id::text AS t, to_char(timestamp AT TIME ZONE 'UTC', "
             "'YYYYMM')::int AS p, event_type, metadata AS m FROM usage_events) "
             "SELECT t, p, %d, event_type, count(*)::numeric, count(*) FROM e GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, m->>'gpu_type', sum((m->>'duration_s')::numeric), "
             "count(*) FROM e WHERE event_type = 'gpu_allocation' GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, m->>'model', sum((m->>'input_tokens')::numeric - "
             "(m->>'cached_input_tokens')::numeric), count(*) FROM e WHERE event_type = "
             "'inference' AND (m->>'input_tokens')::numeric > (m->>'cached_input_tokens')::"
             "numeric GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, m->>'model', sum((m->>'output_tokens')::numeric), "
             "count(*) FROM e WHERE event_type = 'inference' AND (m->>'output_tokens')::numeric "
             "> 0 GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, m->>'model', sum((m->>'cached_input_tokens')::numeric), "
             "count(*) FROM e WHERE event_type = 'inference' AND (m->>'cached_input_tokens')::"
             "numeric > 0 GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, '', sum((m->>'bytes_transferred')::numeric), count(*) "
             "FROM e WHERE event_type = 'storage' AND (m->>'bytes_transferred')::numeric > 0 "
             "GROUP BY 1, 2 "
             "UNION ALL SELECT t, p, %d, '', count(*)::numeric, count(*) FROM e "
             "WHERE event_type = 'api_call' GROUP BY 1, 2",
             ROLLUP_EVENTS, ROLLUP_GPU_SECONDS, ROLLUP_INPUT_TOKENS, ROLLUP_OUTPUT_TOKENS,
             ROLLUP_CACHED_INPUT_TOKENS, ROLLUP_TRANSFER_BYTES, ROLLUP_API_CALLS);
    PGresult *result = PQexec(connection, sql);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        fprintf(stderr, "meterbench: postgres: rollup query failed: %s",
                PQerrorMessage(connection));
        PQclear(result);
        return HM_ERR_STORAGE;
    }
    int rc = HM_OK;
    for (int row = 0; rc == HM_OK && row < PQntuples(result); row++) {
        unsigned __int128 quantity = 0;
        for (const char *digit = PQgetvalue(result, row, 4); *digit >= '0' && *digit <= '9';
             digit++)
            quantity = quantity * 10 + (unsigned)(*digit - '0');
        rc = rollup_map_add(got, PQgetvalue(result, row, 0),
                            (uint32_t)strtoul(PQgetvalue(result, row, 1), NULL, 10),
                            atoi(PQgetvalue(result, row, 2)), PQgetvalue(result, row, 3),
                            quantity, strtoull(PQgetvalue(result, row, 5), NULL, 10));
    }
    PQclear(result);
    return rc;
}

static void check_closed(struct postgres_peer *peer, struct peer_result *result,
                         PGconn *connection)
{
    PGresult *count = PQexec(connection, "SELECT count(*) FROM usage_events");
    if (PQresultStatus(count) == PGRES_TUPLES_OK) {
        result->stored = strtoull(PQgetvalue(count, 0, 0), NULL, 10);
        result->count_ok =
            result->stored == pool_events_in(&peer->bench->pool, peer->bench->closed_frames);
    }
    PQclear(count);
    struct rollup_map got;
    if (rollup_map_init(&got) != HM_OK)
        return;
    int64_t started = bench_now_ns();
    if (rollup_query(connection, &got) == HM_OK) {
        result->rollup_query_s = (double)(bench_now_ns() - started) / 1e9;
        bench_check_rollups(peer->bench, result, &got);
    } else {
        fail(result, "the PostgreSQL rollup query failed");
    }
    rollup_map_free(&got);
}

static int run_phases(struct postgres_peer *peer, struct peer_result *result, PGconn *admin)
{
    struct bench *bench = peer->bench;
    struct batch_ops ops = { .peer = peer, .open = copy_open, .store = copy_store,
                             .close = copy_close, .finish = copy_finish };
    struct phase phase;
    bench_closed_phase(bench, result->name, &phase);
    peer->cpu_before = proc_tree_cpu_seconds(peer->postmaster);
    int rc = drive_batches(&bench->pool, &phase, &ops, bench->pg_connections, 0);
    result->cpu_s = peer->cpu_s;
    double max_eps = bench_record_closed(result, &phase);
    phase_free(&phase);
    if (rc != HM_OK) {
        fail(result, "the closed loop failed");
        return rc;
    }
    check_closed(peer, result, admin);
    for (size_t i = 0; i < bench->load_count && !bench_interrupted; i++) {
        if (exec_ok(admin, "TRUNCATE usage_events") != HM_OK ||
            exec_ok(admin, "CHECKPOINT") != HM_OK ||
            bench_open_phase(bench, result->name, bench->loads[i], max_eps, &phase) != HM_OK)
            return HM_ERR_STORAGE;
        drive_batches(&bench->pool, &phase, &ops, bench->pg_connections, 0);
        bench_record_open(result, &phase);
        phase_free(&phase);
    }
    result->rss_kib = peer->rss_kib;
    return HM_OK;
}

int peer_postgres(struct bench *bench, struct peer_result *result)
{
    result->name = "postgres-copy";
    result->durability = "durable: COPY per frame, fsync=on, synchronous_commit=on";
    struct postgres_peer peer = { .bench = bench };
    current_peer = &peer;
    if (find_bin_dir(peer.bin_dir, sizeof peer.bin_dir) != HM_OK) {
        snprintf(result->note, sizeof result->note, "not installed: no initdb under "
                 "/usr/lib/postgresql/*/bin or $METERBENCH_PG_BINDIR (apt-get install "
                 "postgresql)");
        return HM_ERR_NOT_FOUND;
    }
    if (pool_render(&bench->pool, bench->pool.frame_count) != HM_OK ||
        render_copy(&peer) != HM_OK) {
        free(peer.copy_text);
        free(peer.copy_offsets);
        fail(result, "the COPY rows could not be rendered");
        return HM_ERR_NOMEM;
    }
    int rc = cluster_start(&peer);
    if (rc != HM_OK) {
        fail(result, "the PostgreSQL cluster did not start (see postgres.log in the temp dir)");
    } else {
        result->ran = 1;
        PGconn *admin = PQconnectdb(peer.conninfo);
        rc = PQstatus(admin) == CONNECTION_OK ? create_schema(&peer, admin) : HM_ERR_IO;
        if (rc == HM_OK)
            rc = run_phases(&peer, result, admin);
        else
            fail(result, "the schema could not be created");
        PQfinish(admin);
        cluster_stop(&peer);
    }
    free(peer.copy_text);
    free(peer.copy_offsets);
    return rc;
}
