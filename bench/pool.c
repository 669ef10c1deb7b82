/*
 * The event pool: the bundled traces replayed by the replay command, then
 * synthetic events drawn from them, sealed into frames once.
 */
#include "bench.h"

#include "common/status.h"
#include "engine/lib/replay.h"
#include "ingest/client.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * Synthetic timestamps are spread over calendar months from 2023-11 on, by
 * default six of them, so that every month partition of PostgreSQL is used.
 */
#define SYNTHETIC_START_US (INT64_C(1698796800) * 1000000) /* 2023-11-01T00:00:00Z */

/* The first instant of each month from 2023-11 to 2024-05, in seconds. */
static const int64_t month_starts_s[POOL_MONTHS_MAX + 1] = {
    1698796800, 1701388800, 1704067200, 1706745600, 1709251200, 1711929600, 1714521600,
};

/* ---- a small deterministic generator (splitmix64) ---- */

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* ---- keys file ---- */

static int keys_load(struct pool *pool, const char *path)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "meterbench: cannot open keys file %s: %s\n", path, strerror(errno));
        return HM_ERR_IO;
    }
    char line[512];
    int rc = HM_OK;
    while (rc == HM_OK && fgets(line, sizeof line, file) != NULL) {
        char id_text[64], name[64], key_text[128];
        if (line[0] == '#' || line[0] == '\n')
            continue;
        if (sscanf(line, "%63s %63s %127s", id_text, name, key_text) != 3 ||
            pool->tenant_count >= BENCH_TENANTS_MAX) {
            rc = HM_ERR_INVALID;
            break;
        }
        struct bench_tenant *tenant = &pool->tenants[pool->tenant_count];
        if (uuid_parse(id_text, tenant->id) != HM_OK ||
            apikey_parse(key_text, &tenant->key) != HM_OK) {
            rc = HM_ERR_INVALID;
            break;
        }
        uuid_format(tenant->id, tenant->id_text);
        snprintf(tenant->name, sizeof tenant->name, "%.31s", name);
        pool->tenant_count++;
    }
    fclose(file);
    if (rc == HM_OK && pool->tenant_count == 0)
        rc = HM_ERR_INVALID;
    if (rc != HM_OK)
        fprintf(stderr, "meterbench: invalid keys file %s: expected lines TENANT_UUID NAME "
                "API_KEY, at most %d\n", path, BENCH_TENANTS_MAX);
    return rc;
}

static int tenant_index_of(const struct pool *pool, const uint8_t id[UUID_SIZE])
{
    for (uint32_t i = 0; i < pool->tenant_count; i++) {
        if (memcmp(pool->tenants[i].id, id, UUID_SIZE) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- the collector: a minimal frame receiver that keeps the replayed events ---- */

struct collector {
    int listen_fd;
    uint16_t port;
    struct event *events;
    size_t count;
    size_t capacity;
    int failed;
};

static int read_full(int fd, uint8_t *buffer, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t got = recv(fd, buffer + done, size - done, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return got == 0 && done == 0 ? 0 : -1;
        done += (size_t)got;
    }
    return 1;
}

static int write_full(int fd, const uint8_t *buffer, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t sent = send(fd, buffer + done, size - done, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return -1;
        done += (size_t)sent;
    }
    return 0;
}

/* Decodes one frame's records into the collector; returns HM_OK or HM_ERR_INVALID/NOMEM. */
static int collect_frame(struct collector *collector, const struct frame_header *header,
                         const uint8_t *body)
{
    size_t offset = 0;
    for (uint16_t i = 0; i < header->event_count; i++) {
        if (collector->count == collector->capacity) {
            size_t capacity = collector->capacity ? 2 * collector->capacity : 65536;
            struct event *events = realloc(collector->events, capacity * sizeof *events);
            if (events == NULL)
                return HM_ERR_NOMEM;
            collector->events = events;
            collector->capacity = capacity;
        }
        const char *reason = NULL;
        if (record_decode(body, header->body_size, &offset, header->tenant_id,
                          &collector->events[collector->count], &reason) != HM_OK)
            return HM_ERR_INVALID;
        collector->count++;
    }
    return offset == header->body_size ? HM_OK : HM_ERR_INVALID;
}

static void *collector_main(void *argument)
{
    struct collector *collector = argument;
    int fd = accept(collector->listen_fd, NULL, NULL);
    if (fd < 0) {
        collector->failed = 1;
        return NULL;
    }
    uint8_t *frame = malloc(FRAME_SIZE_MAX);
    while (frame != NULL) {
        int got = read_full(fd, frame, FRAME_HEADER_SIZE);
        if (got == 0)
            break;
        struct frame_header header;
        if (got < 0 || frame_header_decode(frame, &header) != FRAME_ACCEPTED ||
            read_full(fd, frame + FRAME_HEADER_SIZE, header.body_size + FRAME_MAC_SIZE) != 1) {
            collector->failed = 1;
            break;
        }
        struct frame_ack ack = { .status = FRAME_ACCEPTED, .frame_id = header.frame_id,
                                 .stored = header.event_count };
        if (collect_frame(collector, &header, frame + FRAME_HEADER_SIZE) != HM_OK) {
            collector->failed = 1;
            ack = (struct frame_ack){ .status = FRAME_MALFORMED, .frame_id = header.frame_id };
        }
        uint8_t ack_bytes[ACK_SIZE];
        ack_encode(&ack, ack_bytes);
        if (write_full(fd, ack_bytes, ACK_SIZE) != 0)
            break;
    }
    free(frame);
    close(fd);
    return NULL;
}

static int collector_listen(struct collector *collector)
{
    collector->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof address;
    if (collector->listen_fd < 0 ||
        bind(collector->listen_fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(collector->listen_fd, 1) != 0 ||
        getsockname(collector->listen_fd, (struct sockaddr *)&address, &size) != 0) {
        fprintf(stderr, "meterbench: cannot listen on 127.0.0.1 for the trace replay: %s\n",
                strerror(errno));
        return HM_ERR_IO;
    }
    collector->port = ntohs(address.sin_port);
    return HM_OK;
}

/* Replays the three bundled traces through the replay command into `collector`. */
static int replay_traces(struct collector *collector, const struct pool_options *options)
{
    if (collector_listen(collector) != HM_OK)
        return HM_ERR_IO;
    pthread_t thread;
    if (pthread_create(&thread, NULL, collector_main, collector) != 0) {
        close(collector->listen_fd);
        return HM_ERR_IO;
    }
    char traces[3][1024], address[64], events_per_frame[16];
    snprintf(traces[0], sizeof traces[0], "%s/AzureLLMInferenceTrace_code.csv", options->trace_dir);
    snprintf(traces[1], sizeof traces[1], "%s/AzureLLMInferenceTrace_conv.csv", options->trace_dir);
    snprintf(traces[2], sizeof traces[2], "%s/conversation_trace.jsonl", options->trace_dir);
    snprintf(address, sizeof address, "127.0.0.1:%u", collector->port);
    snprintf(events_per_frame, sizeof events_per_frame, "%u", options->events_per_frame);
    char *argv[] = { "replay", "--keys", (char *)options->keys_path, "--trace", traces[0],
                     "--trace", traces[1], "--trace", traces[2], "--tcp", address,
                     "--events-per-frame", events_per_frame, "--quiet", NULL };
    /* The summary line goes to stdout; a failure is logged to stderr by the replay command. */
    fflush(stdout);
    int status = replay_command((int)(sizeof argv / sizeof argv[0]) - 1, argv);
    fflush(stdout);
    pthread_join(thread, NULL);
    close(collector->listen_fd);
    if (status != REPLAY_EXIT_OK || collector->failed || collector->count == 0) {
        fprintf(stderr, "meterbench: the trace replay from %s failed (exit status %d); check "
                "that the traces are there (--traces DIR)\n", options->trace_dir, status);
        return HM_ERR_INVALID;
    }
    return HM_OK;
}

/* ---- framing ---- */

static int frames_reserve(struct pool *pool, size_t bytes)
{
    if (pool->frame_count == pool->frames_capacity) {
        size_t capacity = pool->frames_capacity ? 2 * pool->frames_capacity : 4096;
        struct pool_frame *frames = realloc(pool->frames, capacity * sizeof *frames);
        if (frames == NULL)
            return HM_ERR_NOMEM;
        pool->frames = frames;
        pool->frames_capacity = capacity;
    }
    if (pool->frame_bytes_size + bytes > pool->frame_bytes_capacity) {
        size_t capacity = pool->frame_bytes_capacity ? 2 * pool->frame_bytes_capacity
                                                     : (size_t)64 << 20;
        while (capacity < pool->frame_bytes_size + bytes)
            capacity *= 2;
        uint8_t *frame_bytes = realloc(pool->frame_bytes, capacity);
        if (frame_bytes == NULL)
            return HM_ERR_NOMEM;
        pool->frame_bytes = frame_bytes;
        pool->frame_bytes_capacity = capacity;
    }
    return HM_OK;
}

static int seal_frame(struct pool *pool, struct client_frame *frame, uint32_t tenant_index)
{
    uint16_t event_count = client_frame_event_count(frame);
    size_t size = 0;
    const uint8_t *bytes = client_frame_seal(frame, pool->frame_count + 1, &size);
    if (frames_reserve(pool, size) != HM_OK)
        return HM_ERR_NOMEM;
    memcpy(pool->frame_bytes + pool->frame_bytes_size, bytes, size);
    pool->frames[pool->frame_count] = (struct pool_frame){
        .offset = pool->frame_bytes_size, .size = (uint32_t)size, .event_count = event_count,
        .tenant_index = (uint16_t)tenant_index, .first_event = pool->event_count };
    pool->frame_bytes_size += size;
    pool->frame_count++;
    pool->event_count += event_count;
    return HM_OK;
}

static int frame_event(struct pool *pool, struct client_frame *frames, const struct event *event)
{
    int index = tenant_index_of(pool, event->tenant_id);
    if (index < 0)
        return HM_ERR_INVALID;
    int rc = client_frame_add(&frames[index], event);
    if (rc == HM_ERR_FULL) {
        if ((rc = seal_frame(pool, &frames[index], (uint32_t)index)) != HM_OK)
            return rc;
        rc = client_frame_add(&frames[index], event);
    }
    return rc;
}

void pool_draw_event(const struct pool *pool, uint64_t *state, int64_t start_us, int64_t end_us,
                     struct event *out)
{
    *out = pool->trace_events[next_random(state) % pool->trace_event_count];
    uint64_t high = next_random(state), low = next_random(state);
    for (int i = 0; i < 8; i++) {
        out->event_id[i] = (uint8_t)(high >> (56 - 8 * i));
        out->event_id[8 + i] = (uint8_t)(low >> (56 - 8 * i));
    }
    out->event_id[6] = (uint8_t)((out->event_id[6] & 0x0f) | 0x40); /* version 4 */
    out->event_id[8] = (uint8_t)((out->event_id[8] & 0x3f) | 0x80);
    uint64_t span = (uint64_t)(end_us - start_us);
    out->timestamp_us = start_us + (int64_t)(next_random(state) % span);
}

uint64_t pool_random(uint64_t *state)
{
    return next_random(state);
}

/* Opens one frame per tenant, to be filled by frame_event. NULL when out of memory. */
static struct client_frame *frames_open(const struct pool *pool)
{
    struct client_frame *frames = calloc(pool->tenant_count, sizeof *frames);
    if (frames == NULL)
        return NULL;
    size_t body_limit = (size_t)pool->events_per_frame * RECORD_SIZE_MAX;
    if (body_limit > FRAME_BODY_MAX)
        body_limit = FRAME_BODY_MAX;
    for (uint32_t i = 0; i < pool->tenant_count; i++) {
        if (client_frame_open(&frames[i], pool->tenants[i].id, &pool->tenants[i].key,
                              pool->events_per_frame, body_limit) != HM_OK) {
            for (uint32_t j = 0; j < i; j++)
                client_frame_close(&frames[j]);
            free(frames);
            return NULL;
        }
    }
    return frames;
}

static void frames_close(const struct pool *pool, struct client_frame *frames)
{
    for (uint32_t i = 0; frames != NULL && i < pool->tenant_count; i++)
        client_frame_close(&frames[i]);
    free(frames);
}

int pool_build(struct pool *pool, const struct pool_options *options)
{
    memset(pool, 0, sizeof *pool);
    pool->events_per_frame = options->events_per_frame;
    uint32_t months = options->months >= 1 && options->months <= POOL_MONTHS_MAX
                          ? options->months
                          : POOL_MONTHS_MAX;
    pool->synthetic_end_us = month_starts_s[months] * 1000000;
    int rc = keys_load(pool, options->keys_path);
    if (rc != HM_OK)
        return rc;

    struct collector collector = { .listen_fd = -1 };
    rc = replay_traces(&collector, options);
    pool->trace_events = collector.events;
    pool->trace_event_count = collector.count;
    struct client_frame *frames = frames_open(pool);
    if (rc == HM_OK && frames == NULL)
        rc = HM_ERR_NOMEM;

    /* The replayed events first, in replay order, then synthetic ones up to the target. */
    size_t total = options->event_target > collector.count ? options->event_target
                                                           : collector.count;
    uint64_t state = options->seed;
    for (size_t i = 0; rc == HM_OK && i < total; i++) {
        struct event drawn;
        const struct event *event = &drawn;
        if (i < collector.count)
            event = &collector.events[i];
        else
            pool_draw_event(pool, &state, SYNTHETIC_START_US, pool->synthetic_end_us, &drawn);
        rc = frame_event(pool, frames, event);
    }
    pool->draw_state = state;
    for (uint32_t i = 0; rc == HM_OK && i < pool->tenant_count; i++) {
        if (client_frame_event_count(&frames[i]) > 0)
            rc = seal_frame(pool, &frames[i], i);
    }
    frames_close(pool, frames);
    if (rc != HM_OK && rc != HM_ERR_INVALID)
        fprintf(stderr, "meterbench: building the event pool failed: %s\n", hm_status_str(rc));
    return rc;
}

int pool_extend(struct pool *pool, size_t event_target)
{
    if (pool->event_count >= event_target || pool->trace_event_count == 0)
        return HM_OK;
    struct client_frame *frames = frames_open(pool);
    if (frames == NULL)
        return HM_ERR_NOMEM;
    int rc = HM_OK;
    size_t pending = 0;
    while (rc == HM_OK && pool->event_count + pending < event_target) {
        struct event drawn;
        pool_draw_event(pool, &pool->draw_state, SYNTHETIC_START_US, pool->synthetic_end_us,
                        &drawn);
        size_t before = pool->event_count;
        rc = frame_event(pool, frames, &drawn);
        /* A sealed frame moved its events from pending to the pool. */
        pending = pending + 1 - (pool->event_count - before);
    }
    for (uint32_t i = 0; rc == HM_OK && i < pool->tenant_count; i++) {
        if (client_frame_event_count(&frames[i]) > 0)
            rc = seal_frame(pool, &frames[i], i);
    }
    frames_close(pool, frames);
    return rc;
}

void pool_free(struct pool *pool)
{
    free(pool->frame_bytes);
    free(pool->frames);
    free(pool->trace_events);
    free(pool->events);
    free(pool->rendered);
    free(pool->text);
    memset(pool, 0, sizeof *pool);
}

size_t pool_events_in(const struct pool *pool, size_t frame_count)
{
    if (frame_count == 0)
        return 0;
    const struct pool_frame *last = &pool->frames[frame_count - 1];
    return last->first_event + last->event_count;
}

size_t pool_frames_for(const struct pool *pool, size_t event_count)
{
    size_t low = 0, high = pool->frame_count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (pool_events_in(pool, middle) >= event_count)
            high = middle;
        else
            low = middle + 1;
    }
    return low;
}

/* ---- rendering for the SQL and Redis peers ---- */

static int text_reserve(struct pool *pool, size_t bytes)
{
    if (pool->text_size + bytes <= pool->text_capacity)
        return HM_OK;
    size_t capacity = pool->text_capacity ? 2 * pool->text_capacity : (size_t)16 << 20;
    while (capacity < pool->text_size + bytes)
        capacity *= 2;
    char *text = realloc(pool->text, capacity);
    if (text == NULL)
        return HM_ERR_NOMEM;
    pool->text = text;
    pool->text_capacity = capacity;
    return HM_OK;
}

/* Writes the event's kind-specific fields as the JSON object of usage_events.metadata. */
static int render_metadata(char *out, size_t size, const struct event *event)
{
    switch (event->kind) {
    case EVENT_GPU_ALLOCATION:
        return snprintf(out, size, "{\"allocation_id\":\"%s\",\"pool_id\":\"%s\",\"gpu_type\":"
                        "\"%s\",\"duration_s\":%" PRIu32 ",\"cost_per_hour_micro\":%" PRId64 "}",
                        event->u.gpu.allocation_id, event->u.gpu.pool_id, event->u.gpu.gpu_type,
                        event->u.gpu.duration_s, event->u.gpu.cost_per_hour_micro);
    case EVENT_INFERENCE:
        return snprintf(out, size, "{\"model\":\"%s\",\"input_tokens\":%" PRIu64
                        ",\"output_tokens\":%" PRIu64 ",\"cached_input_tokens\":%" PRIu64
                        ",\"latency_ms\":%" PRIu32 ",\"gpu_time_ms\":%" PRIu64 "}",
                        event->u.inference.model, event->u.inference.input_tokens,
                        event->u.inference.output_tokens, event->u.inference.cached_input_tokens,
                        event->u.inference.latency_ms, event->u.inference.gpu_time_ms);
    case EVENT_STORAGE:
        return snprintf(out, size, "{\"bytes_stored\":%" PRIu64 ",\"bytes_transferred\":%" PRIu64
                        "}", event->u.storage.bytes_stored, event->u.storage.bytes_transferred);
    case EVENT_API_CALL:
        return snprintf(out, size, "{\"endpoint\":\"%s\",\"response_code\":%u,"
                        "\"response_time_ms\":%" PRIu32 "}", event->u.api.endpoint,
                        (unsigned)event->u.api.response_code, event->u.api.response_time_ms);
    }
    return -1;
}

int pool_render(struct pool *pool, size_t frame_count)
{
    size_t event_count = pool_events_in(pool, frame_count);
    if (event_count <= pool->rendered_count)
        return HM_OK;
    struct event *events = realloc(pool->events, event_count * sizeof *events);
    if (events == NULL)
        return HM_ERR_NOMEM;
    pool->events = events;
    struct rendered_event *rendered = realloc(pool->rendered, event_count * sizeof *rendered);
    if (rendered == NULL)
        return HM_ERR_NOMEM;
    pool->rendered = rendered;

    size_t first_frame = pool_frames_for(pool, pool->rendered_count + 1) - 1;
    for (size_t f = first_frame; f < frame_count; f++) {
        const struct pool_frame *frame = &pool->frames[f];
        const uint8_t *bytes = pool->frame_bytes + frame->offset;
        const uint8_t *body = bytes + FRAME_HEADER_SIZE;
        size_t body_size = frame->size - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
        size_t offset = 0;
        for (uint16_t i = 0; i < frame->event_count; i++) {
            size_t index = frame->first_event + i;
            size_t start = offset;
            const char *reason = NULL;
            if (record_decode(body, body_size, &offset, pool->tenants[frame->tenant_index].id,
                              &events[index], &reason) != HM_OK)
                return HM_ERR_INVALID;
            if (index < pool->rendered_count)
                continue;
            char metadata[1024];
            int size = render_metadata(metadata, sizeof metadata, &events[index]);
            if (size < 0 || (size_t)size >= sizeof metadata ||
                text_reserve(pool, (size_t)size + 1) != HM_OK)
                return HM_ERR_NOMEM;
            memcpy(pool->text + pool->text_size, metadata, (size_t)size + 1);
            rendered[index] = (struct rendered_event){
                .event_type = event_kind_name(events[index].kind),
                .metadata_offset = pool->text_size,
                .record_offset = (uint32_t)(FRAME_HEADER_SIZE + start),
                .record_size = (uint16_t)(offset - start) };
            pool->text_size += (size_t)size + 1;
        }
    }
    pool->rendered_count = event_count;
    return HM_OK;
}
