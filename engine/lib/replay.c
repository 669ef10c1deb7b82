#include "replay.h"

#include "common/log.h"
#include "common/status.h"
#include "ingest/apikey.h"
#include "ingest/client.h"
#include "ingest/event.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

_Static_assert(REPLAY_TENANTS_MAX <= UINT32_MAX, "a tenant index must fit 32 bits");

#define MODULE "replay"
/* Traces given with --trace. */
#define REPLAY_TRACES_MAX 64
/* Maximum line length of a keys file in bytes. */
#define KEYS_LINE_MAX 1024
/* Longest HOST:PORT argument. */
#define ADDRESS_TEXT_MAX 256
#define DEFAULT_HOST "127.0.0.1"
#define DEFAULT_PORT "7600"
#define EVENTS_PER_FRAME_DEFAULT 256
#define MICROS_PER_MINUTE INT64_C(60000000)

static const char help_text[] =
    "usage: meterctl replay --keys FILE --trace FILE [--trace FILE ...] [options]\n"
    "\n"
    "Replays public LLM inference traces as signed usage events of the tenants\n"
    "in the keys file and sends them to meterd.\n"
    "\n"
    "options:\n"
    "  --keys FILE           keys file (required). One tenant per line:\n"
    "                        TENANT_UUID TENANT_NAME API_KEY, separated by spaces\n"
    "                        or tabs. Blank lines and lines whose first non-blank\n"
    "                        character is # are skipped. Keep the file mode 0600.\n"
    "  --trace FILE          trace to replay (required, repeatable), read in the\n"
    "                        order given. A .jsonl file is mooncake; a .csv file is\n"
    "                        azure-code when its name contains \"code\" and\n"
    "                        azure-conv when it contains \"conv\"; a name with both\n"
    "                        or neither is rejected.\n"
    "  --tcp HOST:PORT       send over TCP and wait for an acknowledgement of every\n"
    "                        frame (the default, 127.0.0.1:7600)\n"
    "  --udp HOST:PORT       send over UDP, one frame per datagram of at most 1,400\n"
    "                        bytes; nothing is acknowledged\n"
    "  --limit N             read at most the first N rows of each trace\n"
    "  --events-per-frame N  events per frame, 1 to 4096 (default 256)\n"
    "  --window N            TCP frames in flight, 1 to 4096 (default 64)\n"
    "  --ack-timeout-ms MS   reconnect and resend when no ack and no write progress\n"
    "                        came for MS milliseconds, 100 to 3600000 (default 30000)\n"
    "  --reconnect-attempts N\n"
    "                        connection attempts in a row without an ack before\n"
    "                        giving up, 1 to 1000 (default 8; waits of 0.1 s doubling\n"
    "                        up to 5 s between them)\n"
    "  --dry-run             build and sign the frames, send nothing\n"
    "  --quiet               no progress lines on stderr\n"
    "  --help                print this text\n"
    "\n"
    "rule (docs/REPLAY.md has a worked example):\n"
    "  source is azure-code, azure-conv or mooncake; row is the 1-based data row\n"
    "  number in the file (the CSV header is not counted), in decimal.\n"
    "  T = number of tenants; tenant index i = 0..T-1 in keys file order.\n"
    "  h = first 8 bytes of SHA-256(\"<source>:<row>\") read as a big-endian\n"
    "      unsigned 64-bit integer.\n"
    "  tenant index = h mod T.\n"
    "  model: azure-code coder-7b when (h / T) is even, else coder-34b (integer\n"
    "         division); azure-conv chat-8b when even, else chat-70b; mooncake\n"
    "         kimi-chat.\n"
    "  timestamps: Azure TIMESTAMP read as UTC, truncated to the microsecond;\n"
    "      mooncake 2023-11-16T18:00:00Z plus its timestamp in milliseconds.\n"
    "  per row, at the row's timestamp:\n"
    "    inference: input_tokens and output_tokens of the row;\n"
    "      cached_input_tokens = 512 x (leading hash_ids of the row seen in any\n"
    "      earlier row of the file, up to the first unseen one), capped at\n"
    "      input_tokens, for mooncake, and 0 for Azure;\n"
    "      latency_ms = 200 + 30 x output_tokens;\n"
    "      gpu_time_ms = input_tokens / 50 + 25 x output_tokens (integer division);\n"
    "      id name \"<source>:<row>:inference\".\n"
    "    api_call: endpoint /v1/completions for azure-code, else\n"
    "      /v1/chat/completions; response_code 200; response_time_ms = latency_ms;\n"
    "      id name \"<source>:<row>:api\".\n"
    "  per (tenant, source, UTC minute M that has rows of the tenant), with\n"
    "  M = unix seconds of the minute's start and tokens = sum of input_tokens +\n"
    "  output_tokens of those rows:\n"
    "    gpu_allocation at M: GPUs = ceil(tokens / 250000); duration_s = 60 x GPUs;\n"
    "      gpu_type A100 (azure-code), H100 (azure-conv), H800 (mooncake);\n"
    "      pool_id \"<source>-pool\"; allocation_id \"<source>-<i>-<M>\";\n"
    "      cost_per_hour_micro 0; id name \"<source>:<i>:<M>:gpu\".\n"
    "  per (tenant, 5-minute UTC window W that has Mooncake rows of the tenant),\n"
    "  with W = unix seconds of the window's start (a multiple of 300); Azure\n"
    "  files carry no storage events, since a tenant has one stored level:\n"
    "    storage at W: bytes_stored = 50000000000 x (i + 1) + 4 x (input + output\n"
    "      tokens of the tenant's Mooncake rows in W and earlier windows);\n"
    "      bytes_transferred = 4 x (input + output tokens in W);\n"
    "      id name \"<source>:<i>:<W>:storage\".\n"
    "  event id = uuid_from_name(e8054f95-64a2-4797-9857-f3e8bde3af9a, name): the\n"
    "    first 16 bytes of SHA-256(the 16 namespace bytes, then the name's bytes),\n"
    "    with byte 6 = (byte 6 & 0x0f) | 0x80 and byte 8 = (byte 8 & 0x3f) | 0x80.\n"
    "  With --limit, the last minute and window cover only the rows read, so their\n"
    "  events differ from a full replay's and conflict with them in one ledger.\n"
    "\n"
    "output: progress on stderr about once a second, then one line on stdout:\n"
    "  replay: rows= events= stored= duplicates= conflicts= rejected= seconds=\n"
    "  events_per_second= frames= undelivered= (counts of events except frames).\n"
    "  Over UDP and with --dry-run nothing is acknowledged, so stored,\n"
    "  duplicates, conflicts and rejected stay 0.\n"
    "exit status: 0 when every event was stored or already stored; 1 when a frame\n"
    "  was rejected, an event conflicted or an event was not delivered; 2 for bad\n"
    "  options, a bad keys file or a malformed trace.\n";

enum transport { TRANSPORT_TCP, TRANSPORT_UDP, TRANSPORT_NONE };

struct replay_options {
    const char *keys_path;
    const char *trace_paths[REPLAY_TRACES_MAX];
    uint32_t trace_count;
    enum transport transport;
    char host[ADDRESS_TEXT_MAX];
    char port[ADDRESS_TEXT_MAX];
    uint64_t row_limit; /* 0: no limit */
    uint32_t events_per_frame;
    uint32_t window;
    uint32_t ack_timeout_ms;
    uint32_t reconnect_attempts;
    int quiet;
};

/* A tenant of the keys file and its usage in the trace being read. */
struct tenant {
    uint8_t id[UUID_SIZE];
    struct client_frame frame;
    uint64_t minute_rows;       /* rows of the tenant in the current minute */
    uint64_t minute_tokens;     /* input + output tokens of those rows */
    uint64_t window_rows;       /* rows of the tenant in the current storage window */
    uint64_t window_tokens;     /* input + output tokens of those rows */
    uint64_t cumulative_tokens; /* through the last flushed window of this source */
};

struct replay {
    struct replay_options options;
    struct tenant *tenants;
    uint32_t tenant_count;
    uint8_t namespace_id[UUID_SIZE];
    size_t body_limit; /* frame body bytes */
    struct client_tcp *tcp;
    struct client_udp *udp;
    uint64_t frame_id_last; /* dry run and UDP */
    uint64_t rows;
    uint64_t events;
    uint64_t frames;
    uint64_t events_handed;      /* events in frames given to the transport */
    uint64_t events_undelivered; /* events in UDP datagrams that failed to send */
    int64_t started_ns;
    int64_t progress_ns;
    struct log_limit reject_limit;
    /* the trace being read */
    enum trace_source source;
    int have_minute;
    int64_t minute_s; /* unix seconds of the current minute's start */
    int64_t window_s; /* unix seconds of the current storage window's start */
};

/* ---- the rule ---- */

static const char *const gpu_types[TRACE_SOURCE_COUNT] = { "A100", "H100", "H800" };
static const char *const models_even[TRACE_SOURCE_COUNT] = { "coder-7b", "chat-8b",
                                                            "kimi-chat" };
static const char *const models_odd[TRACE_SOURCE_COUNT] = { "coder-34b", "chat-70b",
                                                           "kimi-chat" };

void replay_assign(enum trace_source source, uint64_t row, uint32_t tenant_count,
                   struct replay_assignment *out)
{
    char name[64];
    int size = snprintf(name, sizeof name, "%s:%llu", trace_source_name(source),
                        (unsigned long long)row);
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    /* One-shot SHA-256 fails only when OpenSSL cannot allocate, and this function has no error return. */
    if (EVP_Digest(name, (size_t)size, digest, &digest_size, EVP_sha256(), NULL) != 1)
        abort();
    uint64_t hash = 0;
    for (int i = 0; i < 8; i++)
        hash = hash << 8 | digest[i];
    out->hash = hash;
    out->tenant_index = (uint32_t)(hash % tenant_count);
    out->model = (hash / tenant_count) % 2 == 0 ? models_even[source] : models_odd[source];
}

static const char *endpoint_of(enum trace_source source)
{
    return source == TRACE_AZURE_CODE ? "/v1/completions" : "/v1/chat/completions";
}

static int64_t floor_div(int64_t value, int64_t divisor)
{
    int64_t quotient = value / divisor;
    return value % divisor < 0 ? quotient - 1 : quotient;
}

static int64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* ---- sending ---- */

static int send_frame(struct replay *replay, struct tenant *tenant)
{
    uint16_t event_count = client_frame_event_count(&tenant->frame);
    int rc = HM_OK;
    if (replay->options.transport == TRANSPORT_TCP) {
        rc = client_tcp_send_frame(replay->tcp, &tenant->frame);
    } else if (replay->options.transport == TRANSPORT_UDP) {
        if (client_udp_send_frame(replay->udp, &tenant->frame) != HM_OK)
            replay->events_undelivered += event_count;
    } else {
        size_t size = 0;
        client_frame_seal(&tenant->frame, ++replay->frame_id_last, &size);
    }
    replay->frames++;
    replay->events_handed += event_count;
    if (rc != HM_OK)
        log_error(MODULE, "send failed error=%s host=%s port=%s", hm_status_str(rc),
                  replay->options.host, replay->options.port);
    return rc;
}

static int emit(struct replay *replay, uint32_t tenant_index, struct event *event)
{
    struct tenant *tenant = &replay->tenants[tenant_index];
    memcpy(event->tenant_id, tenant->id, UUID_SIZE);
    int rc = client_frame_add(&tenant->frame, event);
    if (rc == HM_ERR_FULL) {
        rc = send_frame(replay, tenant);
        if (rc != HM_OK)
            return rc;
        rc = client_frame_add(&tenant->frame, event);
    }
    if (rc != HM_OK) {
        log_error(MODULE, "event encoding failed kind=%s error=%s", event_kind_name(event->kind),
                  hm_status_str(rc));
        return rc;
    }
    replay->events++;
    return HM_OK;
}

static void event_id_of(const struct replay *replay, struct event *event, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void event_id_of(const struct replay *replay, struct event *event, const char *format, ...)
{
    char name[128];
    va_list args;
    va_start(args, format);
    vsnprintf(name, sizeof name, format, args);
    va_end(args);
    uuid_from_name(replay->namespace_id, name, event->event_id);
}

/* ---- derived events ---- */

static int emit_gpu_minute(struct replay *replay, uint32_t tenant_index)
{
    struct tenant *tenant = &replay->tenants[tenant_index];
    const char *source = trace_source_name(replay->source);
    uint64_t gpus = (tenant->minute_tokens + REPLAY_GPU_TOKENS_PER_MINUTE - 1) /
                    REPLAY_GPU_TOKENS_PER_MINUTE;
    if (gpus > UINT32_MAX / 60) {
        log_error(MODULE, "gpu duration overflows source=%s tenant_index=%u minute=%lld", source,
                  tenant_index, (long long)replay->minute_s);
        return HM_ERR_OVERFLOW;
    }
    struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = replay->minute_s * 1000000 };
    event.u.gpu.duration_s = (uint32_t)(60 * gpus);
    event.u.gpu.cost_per_hour_micro = 0;
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "%s", gpu_types[replay->source]);
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "%s-pool", source);
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "%s-%u-%lld", source,
             tenant_index, (long long)replay->minute_s);
    event_id_of(replay, &event, "%s:%u:%lld:gpu", source, tenant_index,
                (long long)replay->minute_s);
    tenant->minute_rows = 0;
    tenant->minute_tokens = 0;
    return emit(replay, tenant_index, &event);
}

static int emit_storage_window(struct replay *replay, uint32_t tenant_index)
{
    struct tenant *tenant = &replay->tenants[tenant_index];
    const char *source = trace_source_name(replay->source);
    uint64_t base = REPLAY_STORAGE_BASE_BYTES * (tenant_index + 1);
    uint64_t cumulative = 0, stored = 0, transferred = 0;
    if (__builtin_add_overflow(tenant->cumulative_tokens, tenant->window_tokens, &cumulative) ||
        __builtin_mul_overflow(cumulative, REPLAY_BYTES_PER_TOKEN, &stored) ||
        __builtin_add_overflow(stored, base, &stored) ||
        __builtin_mul_overflow(tenant->window_tokens, REPLAY_BYTES_PER_TOKEN, &transferred)) {
        log_error(MODULE, "storage bytes overflow source=%s tenant_index=%u window=%lld", source,
                  tenant_index, (long long)replay->window_s);
        return HM_ERR_OVERFLOW;
    }
    struct event event = { .kind = EVENT_STORAGE, .timestamp_us = replay->window_s * 1000000 };
    event.u.storage.bytes_stored = stored;
    event.u.storage.bytes_transferred = transferred;
    event_id_of(replay, &event, "%s:%u:%lld:storage", source, tenant_index,
                (long long)replay->window_s);
    tenant->cumulative_tokens = cumulative;
    tenant->window_rows = 0;
    tenant->window_tokens = 0;
    return emit(replay, tenant_index, &event);
}

/* Emits the GPU events of the current minute, and the storage events when the window ends. */
static int close_minute(struct replay *replay, int window_ends)
{
    for (uint32_t i = 0; i < replay->tenant_count; i++) {
        if (replay->tenants[i].minute_rows == 0)
            continue;
        int rc = emit_gpu_minute(replay, i);
        if (rc != HM_OK)
            return rc;
    }
    /*
     * The ledger keeps one stored level per tenant, so storage comes from one
     * file only: samples of several files at the same instants would
     * overwrite each other.
     */
    if (replay->source != TRACE_MOONCAKE)
        return HM_OK;
    for (uint32_t i = 0; window_ends && i < replay->tenant_count; i++) {
        if (replay->tenants[i].window_rows == 0)
            continue;
        int rc = emit_storage_window(replay, i);
        if (rc != HM_OK)
            return rc;
    }
    return HM_OK;
}

/* ---- rows ---- */

static int emit_row_events(struct replay *replay, const struct trace_row *row,
                           const struct replay_assignment *assignment)
{
    const char *source = trace_source_name(row->source);
    if (row->output_tokens > (UINT32_MAX - 200) / 30 ||
        row->output_tokens > (UINT64_MAX - row->input_tokens / 50) / 25) {
        log_error(MODULE, "output tokens too large for latency_ms source=%s row=%llu value=%llu",
                  source, (unsigned long long)row->row,
                  (unsigned long long)row->output_tokens);
        return HM_ERR_OVERFLOW;
    }
    uint32_t latency_ms = (uint32_t)(200 + 30 * row->output_tokens);

    struct event inference = { .kind = EVENT_INFERENCE, .timestamp_us = row->timestamp_us };
    snprintf(inference.u.inference.model, sizeof inference.u.inference.model, "%s",
             assignment->model);
    inference.u.inference.input_tokens = row->input_tokens;
    inference.u.inference.output_tokens = row->output_tokens;
    inference.u.inference.cached_input_tokens = row->cached_input_tokens;
    inference.u.inference.latency_ms = latency_ms;
    inference.u.inference.gpu_time_ms = row->input_tokens / 50 + 25 * row->output_tokens;
    event_id_of(replay, &inference, "%s:%llu:inference", source, (unsigned long long)row->row);
    int rc = emit(replay, assignment->tenant_index, &inference);
    if (rc != HM_OK)
        return rc;

    struct event api = { .kind = EVENT_API_CALL, .timestamp_us = row->timestamp_us };
    snprintf(api.u.api.endpoint, sizeof api.u.api.endpoint, "%s", endpoint_of(row->source));
    api.u.api.response_code = 200;
    api.u.api.response_time_ms = latency_ms;
    event_id_of(replay, &api, "%s:%llu:api", source, (unsigned long long)row->row);
    return emit(replay, assignment->tenant_index, &api);
}

static int replay_row(struct replay *replay, const struct trace_row *row)
{
    int64_t minute_s = floor_div(row->timestamp_us, MICROS_PER_MINUTE) * 60;
    int64_t window_s = floor_div(minute_s, REPLAY_STORAGE_WINDOW_S) * REPLAY_STORAGE_WINDOW_S;
    if (replay->have_minute && minute_s != replay->minute_s) {
        int rc = close_minute(replay, window_s != replay->window_s);
        if (rc != HM_OK)
            return rc;
    }
    replay->have_minute = 1;
    replay->minute_s = minute_s;
    replay->window_s = window_s;

    struct replay_assignment assignment;
    replay_assign(row->source, row->row, replay->tenant_count, &assignment);
    int rc = emit_row_events(replay, row, &assignment);
    if (rc != HM_OK)
        return rc;

    struct tenant *tenant = &replay->tenants[assignment.tenant_index];
    uint64_t tokens = 0;
    if (__builtin_add_overflow(row->input_tokens, row->output_tokens, &tokens) ||
        __builtin_add_overflow(tenant->minute_tokens, tokens, &tenant->minute_tokens) ||
        __builtin_add_overflow(tenant->window_tokens, tokens, &tenant->window_tokens)) {
        log_error(MODULE, "token sum overflows source=%s row=%llu",
                  trace_source_name(row->source), (unsigned long long)row->row);
        return HM_ERR_OVERFLOW;
    }
    tenant->minute_rows++;
    tenant->window_rows++;
    replay->rows++;
    return HM_OK;
}

static void print_progress(struct replay *replay, int64_t now)
{
    double seconds = (double)(now - replay->started_ns) / 1e9;
    fprintf(stderr, "replay: rows=%llu events=%llu events_per_second=%.0f\n",
            (unsigned long long)replay->rows, (unsigned long long)replay->events,
            seconds > 0 ? (double)replay->events / seconds : 0.0);
    replay->progress_ns = now;
}

/* Maps a failed step to an exit status: delivery failures are 1, bad input is 2. */
static int exit_status_of(int status)
{
    return status == HM_ERR_IO ? REPLAY_EXIT_REJECTED : REPLAY_EXIT_USAGE;
}

static void tenants_reset_usage(struct replay *replay)
{
    for (uint32_t i = 0; i < replay->tenant_count; i++) {
        struct tenant *tenant = &replay->tenants[i];
        tenant->minute_rows = tenant->minute_tokens = 0;
        tenant->window_rows = tenant->window_tokens = tenant->cumulative_tokens = 0;
    }
}

/* Reads rows up to the limit; returns HM_OK or a status after logging the cause. */
static int replay_rows(struct replay *replay, struct trace_reader *reader)
{
    struct trace_row row;
    for (uint64_t rows_read = 0;
         replay->options.row_limit == 0 || rows_read < replay->options.row_limit; rows_read++) {
        int got = trace_next(reader, &row);
        if (got == 0)
            return HM_OK;
        if (got < 0) {
            log_error(MODULE, "trace read failed: %s", trace_error(reader));
            return got == HM_ERR_IO ? HM_ERR_INVALID : got;
        }
        int rc = replay_row(replay, &row);
        if (rc != HM_OK)
            return rc;
        int64_t now = now_ns();
        if (!replay->options.quiet && now - replay->progress_ns >= 1000000000)
            print_progress(replay, now);
    }
    return HM_OK;
}

/*
 * Replays one trace file, then emits its last minute and window and sends
 * every partly filled frame. Returns REPLAY_EXIT_OK or the exit status of
 * the failure, after logging it.
 */
static int replay_trace(struct replay *replay, const char *path)
{
    enum trace_source source;
    if (trace_source_detect(path, &source) != HM_OK) {
        log_error(MODULE, "unknown trace kind path=%s; expected a .jsonl file, or a .csv file "
                          "whose name contains either code or conv, not both", path);
        return REPLAY_EXIT_USAGE;
    }
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    int rc = trace_open(path, source, &reader, error, sizeof error);
    if (rc != HM_OK) {
        log_error(MODULE, "trace open failed: %s", error);
        return REPLAY_EXIT_USAGE;
    }

    replay->source = source;
    replay->have_minute = 0;
    tenants_reset_usage(replay);
    rc = replay_rows(replay, reader);
    trace_close(reader);

    if (rc == HM_OK && replay->have_minute)
        rc = close_minute(replay, 1);
    for (uint32_t i = 0; rc == HM_OK && i < replay->tenant_count; i++) {
        if (client_frame_event_count(&replay->tenants[i].frame) > 0)
            rc = send_frame(replay, &replay->tenants[i]);
    }
    return rc == HM_OK ? REPLAY_EXIT_OK : exit_status_of(rc);
}

/* ---- keys file ---- */

static void warn_if_readable(const char *path, int fd)
{
    struct stat info;
    if (fstat(fd, &info) == 0 && (info.st_mode & (S_IRGRP | S_IROTH)) != 0)
        log_warn(MODULE, "keys file is readable by group or others path=%s mode=%04o; "
                         "run chmod 600 on it",
                 path, (unsigned)(info.st_mode & 07777));
}

/*
 * Parses one "TENANT_UUID TENANT_NAME API_KEY" line into the next tenant.
 * Messages name the file and line but never quote the key.
 */
static int keys_parse_line(struct replay *replay, const char *path, unsigned line_number,
                           char *line)
{
    char *save = NULL;
    char *tenant_text = strtok_r(line, " \t", &save);
    char *name = strtok_r(NULL, " \t", &save);
    char *key_text = strtok_r(NULL, " \t", &save);
    if (key_text == NULL || strtok_r(NULL, " \t", &save) != NULL) {
        log_error(MODULE, "invalid keys file line path=%s line=%u; expected TENANT_UUID "
                          "TENANT_NAME API_KEY", path, line_number);
        return HM_ERR_INVALID;
    }
    (void)name; /* the name documents the file; events carry the tenant UUID */
    if (replay->tenant_count >= REPLAY_TENANTS_MAX) {
        log_error(MODULE, "too many tenants path=%s line=%u max=%d", path, line_number,
                  REPLAY_TENANTS_MAX);
        return HM_ERR_INVALID;
    }
    struct tenant *tenant = &replay->tenants[replay->tenant_count];
    if (uuid_parse(tenant_text, tenant->id) != HM_OK) {
        log_error(MODULE, "invalid tenant UUID path=%s line=%u value=%.40s", path, line_number,
                  tenant_text);
        return HM_ERR_INVALID;
    }
    for (uint32_t i = 0; i < replay->tenant_count; i++) {
        if (memcmp(replay->tenants[i].id, tenant->id, UUID_SIZE) == 0) {
            log_error(MODULE, "duplicate tenant path=%s line=%u tenant=%s", path, line_number,
                      tenant_text);
            return HM_ERR_INVALID;
        }
    }
    struct apikey key;
    if (apikey_parse(key_text, &key) != HM_OK) {
        log_error(MODULE, "invalid API key path=%s line=%u; expected hmk_<16 hex>_<64 hex> "
                          "(the value is not shown)", path, line_number);
        return HM_ERR_INVALID;
    }

    int rc = client_frame_open(&tenant->frame, tenant->id, &key, replay->options.events_per_frame,
                               replay->body_limit);
    OPENSSL_cleanse(&key, sizeof key);
    if (rc != HM_OK) {
        log_error(MODULE, "frame buffer setup failed error=%s", hm_status_str(rc));
        return rc;
    }
    replay->tenant_count++;
    return HM_OK;
}

static int keys_load(struct replay *replay, const char *path)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        log_error(MODULE, "keys file open failed path=%s error=%s", path, strerror(errno));
        return HM_ERR_IO;
    }
    warn_if_readable(path, fileno(file));

    char line[KEYS_LINE_MAX];
    unsigned line_number = 0;
    int rc = HM_OK;
    while (rc == HM_OK && fgets(line, sizeof line, file) != NULL) {
        line_number++;
        size_t size = strlen(line);
        if (size == sizeof line - 1 && line[size - 1] != '\n' && !feof(file)) {
            log_error(MODULE, "keys file line too long path=%s line=%u max=%d", path,
                      line_number, KEYS_LINE_MAX - 2);
            rc = HM_ERR_INVALID;
            break;
        }
        line[strcspn(line, "\r\n")] = '\0';
        const char *first = line + strspn(line, " \t");
        if (*first == '\0' || *first == '#')
            continue;
        rc = keys_parse_line(replay, path, line_number, line);
    }
    OPENSSL_cleanse(line, sizeof line);
    fclose(file);
    if (rc == HM_OK && replay->tenant_count == 0) {
        log_error(MODULE, "keys file has no tenants path=%s", path);
        rc = HM_ERR_INVALID;
    }
    return rc;
}

/* ---- options ---- */

/* Splits HOST:PORT or [HOST]:PORT. */
static int parse_address(const char *text, struct replay_options *options)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon[1] == '\0' || strlen(text) >= ADDRESS_TEXT_MAX)
        return HM_ERR_INVALID;
    const char *host = text;
    size_t host_size = (size_t)(colon - text);
    if (host_size >= 2 && host[0] == '[' && host[host_size - 1] == ']') {
        host++;
        host_size -= 2;
    }
    if (host_size == 0)
        return HM_ERR_INVALID;
    memcpy(options->host, host, host_size);
    options->host[host_size] = '\0';
    snprintf(options->port, sizeof options->port, "%s", colon + 1);
    return HM_OK;
}

static int parse_count_option(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (text == NULL || *text < '0' || *text > '9')
        return HM_ERR_INVALID;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < min || value > max)
        return HM_ERR_INVALID;
    *out = value;
    return HM_OK;
}

static int usage_error(const char *message, const char *value)
{
    fprintf(stderr, "replay: %s%s%s\nrun 'meterctl replay --help' for the options\n", message,
            value == NULL ? "" : ": ", value == NULL ? "" : value);
    return REPLAY_EXIT_USAGE;
}

/* Parses argv; returns -1 to go on, or an exit status (after --help or an error). */
static int parse_options(int argc, char **argv, struct replay_options *options)
{
    *options = (struct replay_options){ .transport = TRANSPORT_TCP,
                                        .events_per_frame = EVENTS_PER_FRAME_DEFAULT,
                                        .window = CLIENT_WINDOW_DEFAULT,
                                        .ack_timeout_ms = CLIENT_ACK_TIMEOUT_MS_DEFAULT,
                                        .reconnect_attempts = CLIENT_RECONNECT_ATTEMPTS_DEFAULT };
    snprintf(options->host, sizeof options->host, "%s", DEFAULT_HOST);
    snprintf(options->port, sizeof options->port, "%s", DEFAULT_PORT);
    int dry_run = 0;
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t number = 0;
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            fputs(help_text, stdout);
            return REPLAY_EXIT_OK;
        } else if (strcmp(option, "--dry-run") == 0) {
            dry_run = 1;
            continue;
        } else if (strcmp(option, "--quiet") == 0) {
            options->quiet = 1;
            continue;
        } else if (value == NULL) {
            return usage_error("missing value or unknown option", option);
        } else if (strcmp(option, "--keys") == 0) {
            options->keys_path = value;
        } else if (strcmp(option, "--trace") == 0) {
            if (options->trace_count >= REPLAY_TRACES_MAX)
                return usage_error("too many --trace options, max 64", NULL);
            options->trace_paths[options->trace_count++] = value;
        } else if (strcmp(option, "--tcp") == 0 || strcmp(option, "--udp") == 0) {
            if (parse_address(value, options) != HM_OK)
                return usage_error("invalid address, expected HOST:PORT", value);
            options->transport = option[2] == 't' ? TRANSPORT_TCP : TRANSPORT_UDP;
        } else if (strcmp(option, "--limit") == 0) {
            if (parse_count_option(value, 1, UINT64_MAX, &number) != HM_OK)
                return usage_error("invalid --limit, expected a positive integer", value);
            options->row_limit = number;
        } else if (strcmp(option, "--events-per-frame") == 0) {
            if (parse_count_option(value, 1, FRAME_EVENTS_MAX, &number) != HM_OK)
                return usage_error("invalid --events-per-frame, expected 1 to 4096", value);
            options->events_per_frame = (uint32_t)number;
        } else if (strcmp(option, "--ack-timeout-ms") == 0) {
            if (parse_count_option(value, 100, 3600000, &number) != HM_OK)
                return usage_error("invalid --ack-timeout-ms, expected 100 to 3600000", value);
            options->ack_timeout_ms = (uint32_t)number;
        } else if (strcmp(option, "--reconnect-attempts") == 0) {
            if (parse_count_option(value, 1, 1000, &number) != HM_OK)
                return usage_error("invalid --reconnect-attempts, expected 1 to 1000", value);
            options->reconnect_attempts = (uint32_t)number;
        } else if (strcmp(option, "--window") == 0) {
            if (parse_count_option(value, 1, CLIENT_WINDOW_MAX, &number) != HM_OK)
                return usage_error("invalid --window, expected 1 to 4096", value);
            options->window = (uint32_t)number;
        } else {
            return usage_error("unknown option", option);
        }
        i++;
    }
    if (options->keys_path == NULL)
        return usage_error("missing --keys FILE", NULL);
    if (options->trace_count == 0)
        return usage_error("missing --trace FILE", NULL);
    if (dry_run)
        options->transport = TRANSPORT_NONE;
    return -1;
}

/* ---- command ---- */

static void on_ack(void *context, const struct frame_ack *ack, uint16_t event_count)
{
    struct replay *replay = context;
    uint64_t suppressed = 0;
    if (ack->status == FRAME_ACCEPTED && ack->conflicts == 0)
        return;
    if (!log_limit_pass(&replay->reject_limit, &suppressed))
        return;
    if (ack->status == FRAME_ACCEPTED)
        log_error(MODULE, "events conflict frame_id=%" PRIu64 " conflicts=%u events=%u "
                          "suppressed=%" PRIu64 ": the ledger holds events with the same ids "
                          "and other content, from an earlier replay of other rows or options "
                          "(a --limit replay conflicts with a full one, see replay --help); "
                          "replay into a fresh data directory to store these events",
                  ack->frame_id, ack->conflicts, event_count, suppressed);
    else
        log_error(MODULE, "frame rejected status=%s frame_id=%" PRIu64 " detail=%u events=%u "
                          "suppressed=%" PRIu64,
                  frame_status_name(ack->status), ack->frame_id, ack->detail, event_count,
                  suppressed);
}

/*
 * Reports, even with --quiet, why frames are still pending before each new
 * connection attempt: a silent wait on a full ledger looks like a hang.
 */
static void on_retry(void *context, const struct client_retry *retry)
{
    struct replay *replay = context;
    const char *why;
    switch (retry->reason) {
    case CLIENT_RETRY_ACK_TIMEOUT:
        why = "no ack within --ack-timeout-ms: meterd holds frames without acks while its "
              "ledger is full (its log says \"ledger full\"; free disk space or restart it with "
              "a larger --map-size), or it is overloaded";
        break;
    case CLIENT_RETRY_CLOSED:
        why = "meterd closed the connection (stopped, restarted, or at --max-connections)";
        break;
    case CLIENT_RETRY_STORE_FAILED:
        why = "meterd could not store a frame (store_failed; its log names the ledger error)";
        break;
    case CLIENT_RETRY_BAD_ACK:
        why = "an ack did not match the oldest frame in flight; use meterctl and meterd of the "
              "same version";
        break;
    default:
        why = "the connection attempt failed; check that meterd listens there";
        break;
    }
    log_warn(MODULE, "%u frames (%" PRIu64 " events) pending without an ack host=%s port=%s: "
             "%s; reconnecting and resending, attempt %u of %u (--reconnect-attempts) in %u ms",
             retry->frames_in_flight, retry->events_in_flight, replay->options.host,
             replay->options.port, why, retry->attempt, retry->attempts_max, retry->wait_ms);
}

static int transport_open(struct replay *replay)
{
    const struct replay_options *options = &replay->options;
    int rc = HM_OK;
    if (options->transport == TRANSPORT_TCP) {
        struct client_tcp_options tcp_options = {
            .host = options->host,
            .port = options->port,
            .window = options->window,
            .frame_size_max = FRAME_HEADER_SIZE + replay->body_limit + FRAME_MAC_SIZE,
            .reconnect_attempts = options->reconnect_attempts,
            .ack_timeout_ms = options->ack_timeout_ms,
            .on_ack = on_ack,
            .on_ack_context = replay,
            .on_retry = on_retry,
            .on_retry_context = replay,
        };
        rc = client_tcp_open(&tcp_options, &replay->tcp);
    } else if (options->transport == TRANSPORT_UDP) {
        struct client_udp_options udp_options = { .host = options->host, .port = options->port };
        rc = client_udp_open(&udp_options, &replay->udp);
    }
    if (rc != HM_OK) {
        /* The system's error of the last failed attempt names the cause better than HM_ERR_IO. */
        int connect_errno = rc == HM_ERR_IO ? client_connect_error() : 0;
        log_error(MODULE, "connect failed transport=%s host=%s port=%s error=%s after %u "
                          "attempts with backoff; check that meterd listens there (meterd "
                          "--tcp-port and --udp-port)",
                  options->transport == TRANSPORT_TCP ? "tcp" : "udp", options->host,
                  options->port, connect_errno ? strerror(connect_errno) : hm_status_str(rc),
                  options->reconnect_attempts);
    }
    return rc;
}

/* The fix for frames that meterd rejected with a status, for the summary. */
static const char *reject_fix(enum frame_status status)
{
    switch (status) {
    case FRAME_UNKNOWN_KEY:
        return "a key in --keys is not in meterd's ledger; check --keys and meterd --data";
    case FRAME_REVOKED_KEY:
        return "a key in --keys was revoked; create another with `meterctl key create TENANT "
               "--keys-file FILE` and replay with it";
    case FRAME_BAD_MAC:
        return "a key's secret in --keys does not match the ledger; copy the key line again";
    case FRAME_WRONG_TENANT:
        return "a key in --keys belongs to another tenant; check the TENANT_ID of its line";
    case FRAME_EXPIRED_KEY:
        return "a key in --keys has expired; create a new one with `meterctl key create TENANT "
               "--keys-file FILE` and replay with it";
    case FRAME_MALFORMED:
        return "an event failed meterd's validation; meterd's log names the event";
    case FRAME_EVENT_TOO_OLD:
        return "an event is older than meterd's --max-event-age-days allows; restart meterd "
               "with a larger value, or none, to accept late usage";
    case FRAME_EVENT_IN_FUTURE:
        return "an event is dated ahead of meterd's clock by more than "
               "--max-event-skew-seconds; check both clocks, or restart meterd with a larger "
               "value";
    case FRAME_TRUNCATED:
        return "meterd got only part of a frame before the connection broke; replay again "
               "(stored events come back as duplicates)";
    case FRAME_TOO_LARGE:
        return "a frame is above meterd's size limits; lower --events-per-frame, or use "
               "meterctl and meterd of the same version";
    default:
        return "the frame does not fit meterd's protocol; use meterctl and meterd of the "
               "same version";
    }
}

/* Prints how many frames were rejected, by status, with the fix of each; nothing when none. */
static void rejects_report(const struct client_stats *stats)
{
    if (stats->frames_rejected == 0)
        return;
    fprintf(stderr, "replay: %" PRIu64 " frame%s rejected (%" PRIu64 " events), nothing of them "
            "stored:\n", stats->frames_rejected, stats->frames_rejected == 1 ? "" : "s",
            stats->events_rejected);
    for (int status = 1; status < FRAME_STATUS_COUNT; status++) {
        uint64_t count = stats->frames_rejected_by_status[status];
        if (count > 0)
            fprintf(stderr, "replay:   %s: %" PRIu64 " frame%s; %s\n",
                    frame_status_name((enum frame_status)status), count, count == 1 ? "" : "s",
                    reject_fix((enum frame_status)status));
    }
}

/* Prints the summary line and returns the exit status that the counts call for. */
static int report(struct replay *replay, int status)
{
    struct client_stats stats = { 0 };
    if (replay->tcp != NULL)
        stats = *client_tcp_stats(replay->tcp);
    uint64_t undelivered = replay->events - replay->events_handed;
    if (replay->options.transport == TRANSPORT_TCP) {
        uint64_t answered = stats.events_stored + stats.events_duplicate + stats.events_conflict +
                            stats.events_rejected;
        undelivered += replay->events_handed > answered ? replay->events_handed - answered : 0;
    } else {
        undelivered += replay->events_undelivered;
    }
    double seconds = (double)(now_ns() - replay->started_ns) / 1e9;
    printf("replay: rows=%" PRIu64 " events=%" PRIu64 " stored=%" PRIu64 " duplicates=%" PRIu64
           " conflicts=%" PRIu64 " rejected=%" PRIu64 " seconds=%.3f events_per_second=%.0f"
           " frames=%" PRIu64 " undelivered=%" PRIu64 "\n",
           replay->rows, replay->events, stats.events_stored, stats.events_duplicate,
           stats.events_conflict, stats.events_rejected, seconds,
           seconds > 0 ? (double)replay->events / seconds : 0.0, replay->frames, undelivered);
    fflush(stdout);
    rejects_report(&stats);
    if (status != REPLAY_EXIT_OK)
        return status;
    if (stats.events_rejected > 0 || stats.events_conflict > 0 || undelivered > 0)
        return REPLAY_EXIT_REJECTED;
    return REPLAY_EXIT_OK;
}

static int replay_run(struct replay *replay)
{
    if (keys_load(replay, replay->options.keys_path) != HM_OK)
        return REPLAY_EXIT_USAGE;
    replay->started_ns = now_ns();
    if (transport_open(replay) != HM_OK)
        return report(replay, REPLAY_EXIT_REJECTED);

    replay->started_ns = replay->progress_ns = now_ns();
    int status = REPLAY_EXIT_OK;
    for (uint32_t i = 0; i < replay->options.trace_count && status == REPLAY_EXIT_OK; i++)
        status = replay_trace(replay, replay->options.trace_paths[i]);
    if (replay->tcp != NULL && client_tcp_flush(replay->tcp) != HM_OK) {
        log_error(MODULE, "delivery failed host=%s port=%s unacknowledged_frames=%u: gave up "
                  "after %u connection attempts without an ack (--reconnect-attempts); the "
                  "lines above say why. Replay again once meterd acknowledges: stored events "
                  "come back as duplicates",
                  replay->options.host, replay->options.port, client_tcp_unacked(replay->tcp),
                  replay->options.reconnect_attempts);
        if (status == REPLAY_EXIT_OK)
            status = REPLAY_EXIT_REJECTED;
    }
    return report(replay, status);
}

int replay_command(int argc, char **argv)
{
    struct replay *replay = calloc(1, sizeof *replay);
    if (replay == NULL) {
        fprintf(stderr, "replay: out of memory\n");
        return REPLAY_EXIT_USAGE;
    }
    int status = parse_options(argc, argv, &replay->options);
    if (status >= 0) {
        free(replay);
        return status;
    }
    replay->reject_limit = (struct log_limit)LOG_LIMIT_INIT(10, 10);
    int rc = uuid_parse(REPLAY_NAMESPACE, replay->namespace_id);
    assert(rc == HM_OK);
    (void)rc;
    if (replay->options.transport == TRANSPORT_UDP) {
        replay->body_limit = CLIENT_UDP_DATAGRAM_DEFAULT - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
    } else {
        replay->body_limit = (size_t)replay->options.events_per_frame * RECORD_SIZE_MAX;
        if (replay->body_limit > FRAME_BODY_MAX)
            replay->body_limit = FRAME_BODY_MAX;
    }

    replay->tenants = calloc(REPLAY_TENANTS_MAX, sizeof *replay->tenants);
    status = replay->tenants == NULL ? REPLAY_EXIT_USAGE : replay_run(replay);

    client_tcp_close(replay->tcp);
    client_udp_close(replay->udp);
    for (uint32_t i = 0; replay->tenants != NULL && i < replay->tenant_count; i++)
        client_frame_close(&replay->tenants[i].frame);
    free(replay->tenants);
    free(replay);
    return status;
}
