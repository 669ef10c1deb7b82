/*
 * Redis: the rollups of each frame as pipelined HINCRBY commands, one round
 * trip per frame, over a few connections. Redis runs with a private config
 * (no RDB snapshots, no append-only file), so it is NOT durable, and it
 * does not deduplicate: a resent frame would be counted twice.
 *
 * Each rollup row of an event becomes two commands on the hash
 * r:<tenant>:<yyyymm>: HINCRBY "<meter>|<dimension>|q" by the quantity and
 * HINCRBY "<meter>|<dimension>|n" by 1.
 */
#include "bench.h"

#include "common/status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define REPLY_BUFFER_SIZE (256 * 1024)

struct redis_peer {
    struct bench *bench;
    uint16_t port;
    pid_t pid;
    char *commands; /* RESP commands of every frame, back to back */
    size_t *command_offsets;
    uint32_t *command_counts;
    size_t used, capacity;
    uint32_t frame_commands; /* commands rendered for the frame being rendered */
    double cpu_before;
    double cpu_s;
};

struct redis_connection {
    struct redis_peer *peer;
    int fd;
    char *buffer;
};

static void fail(struct peer_result *result, const char *why)
{
    result->failed = 1;
    snprintf(result->note, sizeof result->note, "%s", why);
}

/* Finds redis-server: $METERBENCH_REDIS_SERVER, or the Debian path. */
static const char *redis_server_path(void)
{
    const char *configured = getenv("METERBENCH_REDIS_SERVER");
    const char *path = configured ? configured : "/usr/bin/redis-server";
    return access(path, X_OK) == 0 ? path : NULL;
}

static int reserve(struct redis_peer *peer, size_t bytes)
{
    if (peer->used + bytes <= peer->capacity)
        return HM_OK;
    size_t capacity = peer->capacity ? 2 * peer->capacity : (size_t)64 << 20;
    while (capacity < peer->used + bytes)
        capacity *= 2;
    char *commands = realloc(peer->commands, capacity);
    if (commands == NULL)
        return HM_ERR_NOMEM;
    peer->commands = commands;
    peer->capacity = capacity;
    return HM_OK;
}

static int append_hincrby(struct redis_peer *peer, const char *key, const char *field,
                          uint64_t increment)
{
    char number[32];
    snprintf(number, sizeof number, "%" PRIu64, increment);
    if (reserve(peer, strlen(key) + strlen(field) + 96) != HM_OK)
        return HM_ERR_NOMEM;
    peer->used += (size_t)sprintf(peer->commands + peer->used,
                                  "*4\r\n$7\r\nHINCRBY\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n",
                                  strlen(key), key, strlen(field), field, strlen(number), number);
    peer->frame_commands++;
    return HM_OK;
}

static int render_row(void *context, const char *tenant_text, uint32_t period, int meter,
                      const char *dimension, uint64_t quantity)
{
    struct redis_peer *peer = context;
    char key[64], field[EVENT_ENDPOINT_MAX + 32];
    snprintf(key, sizeof key, "r:%s:%u", tenant_text, period);
    snprintf(field, sizeof field, "%d|%s|q", meter, dimension);
    int rc = append_hincrby(peer, key, field, quantity);
    field[strlen(field) - 1] = 'n';
    return rc == HM_OK ? append_hincrby(peer, key, field, 1) : rc;
}

static int render_commands(struct redis_peer *peer)
{
    struct pool *pool = &peer->bench->pool;
    peer->command_offsets = malloc((pool->frame_count + 1) * sizeof *peer->command_offsets);
    peer->command_counts = malloc(pool->frame_count * sizeof *peer->command_counts);
    if (peer->command_offsets == NULL || peer->command_counts == NULL)
        return HM_ERR_NOMEM;
    for (size_t f = 0; f < pool->frame_count; f++) {
        const struct pool_frame *frame = &pool->frames[f];
        peer->command_offsets[f] = peer->used;
        peer->frame_commands = 0;
        for (size_t e = frame->first_event; e < frame->first_event + frame->event_count; e++) {
            if (rollup_rows_of_event(&pool->events[e], render_row, peer) != HM_OK)
                return HM_ERR_NOMEM;
        }
        peer->command_counts[f] = peer->frame_commands;
    }
    peer->command_offsets[pool->frame_count] = peer->used;
    return HM_OK;
}

static int connect_redis(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval wait = { .tv_sec = 30 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    return fd;
}

static int send_all(int fd, const char *bytes, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, bytes, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return HM_ERR_IO;
        bytes += sent;
        size -= (size_t)sent;
    }
    return HM_OK;
}

/* Reads `count` integer replies; returns HM_OK, or HM_ERR_STORAGE on an error reply. */
static int read_integer_replies(int fd, char *buffer, uint32_t count)
{
    size_t kept = 0;
    while (count > 0) {
        ssize_t got = recv(fd, buffer + kept, REPLY_BUFFER_SIZE - kept, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return HM_ERR_IO;
        size_t size = kept + (size_t)got, start = 0;
        for (size_t i = 0; i + 1 < size && count > 0; i++) {
            if (buffer[i] != '\r' || buffer[i + 1] != '\n')
                continue;
            if (buffer[start] != ':') {
                fprintf(stderr, "meterbench: redis: unexpected reply %.*s\n", (int)(i - start),
                        buffer + start);
                return HM_ERR_STORAGE;
            }
            count--;
            start = i + 2;
            i++;
        }
        kept = size - start;
        memmove(buffer, buffer + start, kept);
    }
    return HM_OK;
}

/* Sends one command given as words. */
static int send_command(int fd, const char *const *words, size_t word_count)
{
    char command[512];
    size_t used = (size_t)snprintf(command, sizeof command, "*%zu\r\n", word_count);
    for (size_t i = 0; i < word_count; i++)
        used += (size_t)snprintf(command + used, sizeof command - used, "$%zu\r\n%s\r\n",
                                 strlen(words[i]), words[i]);
    return send_all(fd, command, used);
}

/* Sends one command and reads a one-line reply (+OK, +PONG) into `reply`. */
static int simple_command(int fd, const char *const *words, size_t word_count, char *reply,
                          size_t reply_size)
{
    if (send_command(fd, words, word_count) != HM_OK)
        return HM_ERR_IO;
    size_t used = 0;
    while (used < 2 || reply[used - 1] != '\n') {
        ssize_t got = recv(fd, reply + used, reply_size - 1 - used, 0);
        if (got <= 0 || used + (size_t)got >= reply_size - 1)
            return HM_ERR_IO;
        used += (size_t)got;
    }
    reply[used] = '\0';
    return reply[0] == '-' ? HM_ERR_STORAGE : HM_OK;
}

/* Returns 1 when `buffer` contains a whole array reply of bulk strings, with its element count. */
static int array_complete(const char *buffer, size_t size, long *elements)
{
    const char *end = buffer + size;
    const char *line = memchr(buffer, '\n', size);
    if (buffer[0] != '*' || line == NULL)
        return 0;
    *elements = strtol(buffer + 1, NULL, 10);
    const char *cursor = line + 1;
    for (long i = 0; i < *elements; i++) {
        if (cursor >= end || *cursor != '$')
            return 0;
        const char *header_end = memchr(cursor, '\n', (size_t)(end - cursor));
        if (header_end == NULL)
            return 0;
        long length = strtol(cursor + 1, NULL, 10);
        cursor = header_end + 1 + length + 2;
        if (cursor > end)
            return 0;
    }
    return 1;
}

static int redis_open(void *context, uint32_t worker, void **state_out)
{
    struct redis_peer *peer = context;
    (void)worker;
    struct redis_connection *connection = calloc(1, sizeof *connection);
    if (connection == NULL)
        return HM_ERR_NOMEM;
    connection->peer = peer;
    connection->buffer = malloc(REPLY_BUFFER_SIZE);
    connection->fd = connect_redis(peer->port);
    if (connection->buffer == NULL || connection->fd < 0) {
        if (connection->fd >= 0)
            close(connection->fd);
        free(connection->buffer);
        free(connection);
        return HM_ERR_IO;
    }
    *state_out = connection;
    return HM_OK;
}

static int redis_store(void *context, size_t first, size_t count)
{
    struct redis_connection *connection = context;
    struct redis_peer *peer = connection->peer;
    size_t start = peer->command_offsets[first], end = peer->command_offsets[first + count];
    uint32_t replies = 0;
    for (size_t f = first; f < first + count; f++)
        replies += peer->command_counts[f];
    int rc = send_all(connection->fd, peer->commands + start, end - start);
    return rc == HM_OK ? read_integer_replies(connection->fd, connection->buffer, replies) : rc;
}

static void redis_close(void *context)
{
    struct redis_connection *connection = context;
    close(connection->fd);
    free(connection->buffer);
    free(connection);
}

static void redis_finish(void *context)
{
    struct redis_peer *peer = context;
    peer->cpu_s = proc_cpu_seconds(peer->pid) - peer->cpu_before;
}

/* Starts redis-server with a private config; returns HM_OK once it replies to PING. */
static int redis_start(struct redis_peer *peer, const char *server)
{
    char dir[BENCH_PATH_MAX + 16], config[BENCH_PATH_MAX + 32], log[BENCH_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/redis", peer->bench->temp_dir);
    snprintf(config, sizeof config, "%s/redis.conf", dir);
    snprintf(log, sizeof log, "%s/redis.log", peer->bench->temp_dir);
    mkdir(dir, 0700);
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof address;
    if (probe < 0 || bind(probe, (struct sockaddr *)&address, sizeof address) != 0 ||
        getsockname(probe, (struct sockaddr *)&address, &size) != 0) {
        if (probe >= 0)
            close(probe);
        return HM_ERR_IO;
    }
    peer->port = ntohs(address.sin_port);
    close(probe);
    FILE *file = fopen(config, "w");
    if (file == NULL)
        return HM_ERR_IO;
    fprintf(file, "port %u\nbind 127.0.0.1\nprotected-mode yes\nsave \"\"\nappendonly no\n"
            "dir %s\ndaemonize no\nlogfile \"\"\n", peer->port, dir);
    fclose(file);
    char *argv[] = { (char *)server, config, NULL };
    peer->pid = child_start(argv, log, NULL);
    for (int waited = 0; peer->pid > 0 && waited < 10000; waited += 20) {
        int fd = connect_redis(peer->port);
        char reply[64];
        const char *ping[] = { "PING" };
        int ok = fd >= 0 && simple_command(fd, ping, 1, reply, sizeof reply) == HM_OK;
        if (fd >= 0)
            close(fd);
        if (ok)
            return HM_OK;
        usleep(20000);
    }
    fprintf(stderr, "meterbench: redis-server did not reply to PING within 10 s; see %s\n", log);
    return HM_ERR_IO;
}

/* Reads every rollup hash back with KEYS and HGETALL (a few hundred keys at most). */
static int read_back(struct redis_peer *peer, struct rollup_map *got)
{
    int fd = connect_redis(peer->port);
    if (fd < 0)
        return HM_ERR_IO;
    struct bench *bench = peer->bench;
    uint32_t periods[64];
    size_t period_count = rollup_map_periods(&bench->expected, periods, 64);
    size_t reply_size = 1 << 20;
    char *reply = malloc(reply_size);
    int rc = reply ? HM_OK : HM_ERR_NOMEM;
    for (uint32_t t = 0; rc == HM_OK && t < bench->pool.tenant_count; t++) {
        for (size_t p = 0; rc == HM_OK && p < period_count; p++) {
            char key[64];
            snprintf(key, sizeof key, "r:%s:%u", bench->pool.tenants[t].id_text, periods[p]);
            const char *words[] = { "HGETALL", key };
            rc = send_command(fd, words, 2);
            size_t used = 0;
            long elements = 0;
            while (rc == HM_OK && (used == 0 || !array_complete(reply, used, &elements))) {
                ssize_t received = recv(fd, reply + used, reply_size - 1 - used, 0);
                if (received <= 0 || used + (size_t)received >= reply_size - 1)
                    rc = HM_ERR_IO;
                else
                    used += (size_t)received;
            }
            reply[used] = '\0';
            /* Fields and values alternate: "$len\r\nfield\r\n$len\r\nvalue\r\n". */
            char *cursor = strchr(reply, '\n');
            for (long pair = 0; rc == HM_OK && pair < elements / 2; pair++) {
                char field[EVENT_ENDPOINT_MAX + 32], value[32];
                if (sscanf(cursor + 1, "$%*d\r\n%159[^\r]\r\n$%*d\r\n%31[^\r]", field,
                           value) != 2) {
                    rc = HM_ERR_INVALID;
                    break;
                }
                for (int skip = 0; skip < 4 && cursor != NULL; skip++)
                    cursor = strchr(cursor + 1, '\n');
                char *bar = strchr(field, '|');
                char *last = strrchr(field, '|');
                if (bar == NULL || last == bar || cursor == NULL) {
                    rc = HM_ERR_INVALID;
                    break;
                }
                *last = '\0';
                uint64_t number = strtoull(value, NULL, 10);
                int is_count = last[1] == 'n';
                rc = rollup_map_add(got, bench->pool.tenants[t].id_text, periods[p],
                                    atoi(field), bar + 1, is_count ? 0 : number,
                                    is_count ? number : 0);
            }
        }
    }
    free(reply);
    close(fd);
    return rc;
}

static int flush_all(struct redis_peer *peer)
{
    int fd = connect_redis(peer->port);
    char reply[64];
    const char *words[] = { "FLUSHALL", "SYNC" };
    int rc = fd >= 0 ? simple_command(fd, words, 2, reply, sizeof reply) : HM_ERR_IO;
    if (fd >= 0)
        close(fd);
    return rc;
}

static int run_phases(struct redis_peer *peer, struct peer_result *result)
{
    struct bench *bench = peer->bench;
    struct batch_ops ops = { .peer = peer, .open = redis_open, .store = redis_store,
                             .close = redis_close, .finish = redis_finish };
    struct phase phase;
    bench_closed_phase(bench, result->name, &phase);
    peer->cpu_before = proc_cpu_seconds(peer->pid);
    int rc = drive_batches(&bench->pool, &phase, &ops, bench->redis_connections, 0);
    result->cpu_s = peer->cpu_s;
    double max_eps = bench_record_closed(result, &phase);
    phase_free(&phase);
    if (rc != HM_OK) {
        fail(result, "the closed loop failed");
        return rc;
    }
    struct rollup_map got;
    if (rollup_map_init(&got) != HM_OK || read_back(peer, &got) != HM_OK) {
        fail(result, "the Redis rollups could not be read back");
    } else {
        /* Redis keeps no events, only counts: the events rollups sum to the events stored. */
        size_t events = 0;
        for (size_t i = 0; i < got.capacity; i++) {
            const char *key = got.entries[i].key;
            const char *meter = got.entries[i].used ? strchr(strchr(key, '|') + 1, '|') : NULL;
            if (meter != NULL && atoi(meter + 1) == 8)
                events += got.entries[i].event_count;
        }
        result->stored = events;
        result->count_ok = events == pool_events_in(&bench->pool, bench->closed_frames);
        bench_check_rollups(bench, result, &got);
    }
    rollup_map_free(&got);
    for (size_t i = 0; i < bench->load_count && !bench_interrupted; i++) {
        if (flush_all(peer) != HM_OK ||
            bench_open_phase(bench, result->name, bench->loads[i], max_eps, &phase) != HM_OK)
            return HM_ERR_IO;
        drive_batches(&bench->pool, &phase, &ops, bench->redis_connections, 0);
        bench_record_open(result, &phase);
        phase_free(&phase);
    }
    result->rss_kib = proc_status_kib(peer->pid, "VmHWM");
    return HM_OK;
}

int peer_redis(struct bench *bench, struct peer_result *result)
{
    result->name = "redis-hincrby";
    result->durability = "NOT durable: no RDB, no AOF; no deduplication";
    const char *server = redis_server_path();
    if (server == NULL) {
        snprintf(result->note, sizeof result->note, "not installed: no /usr/bin/redis-server "
                 "or $METERBENCH_REDIS_SERVER (apt-get install redis-server)");
        return HM_ERR_NOT_FOUND;
    }
    struct redis_peer peer = { .bench = bench };
    int rc = pool_render(&bench->pool, bench->pool.frame_count);
    if (rc == HM_OK)
        rc = render_commands(&peer);
    if (rc != HM_OK) {
        fail(result, "the Redis commands could not be rendered");
    } else if ((rc = redis_start(&peer, server)) != HM_OK) {
        fail(result, "redis-server did not start (see redis.log in the temp dir)");
    } else {
        result->ran = 1;
        rc = run_phases(&peer, result);
    }
    if (peer.pid > 0)
        child_stop(peer.pid, 10000);
    free(peer.commands);
    free(peer.command_offsets);
    free(peer.command_counts);
    return rc;
}
