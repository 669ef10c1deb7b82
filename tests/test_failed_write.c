/*
 * A failed ledger write must not eat the retry, and a full ledger must hold
 * frames back rather than lose them. The faults are real: METER_TEST_FAIL_COMMITS
 * (rollup/ledger.c) fails the next commits of meterd, and a small --map-size
 * fills the LMDB map.
 */
#include "meterd_harness.h"

#include "ingest/client.h"

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

static struct harness server;
static struct test_tenant tenant;
static uint8_t frame[FRAME_SIZE_MAX];

static void setup(void)
{
    harness_make_dir(&server);
    harness_tenant(&server, "gpu-tenant", &tenant);
}

static void teardown(void)
{
    unsetenv("METER_TEST_FAIL_COMMITS");
    unsetenv("METER_TEST_COMMIT_DELAY_MS");
    harness_remove(&server);
}

TestSuite(failed_write, .init = setup, .fini = teardown, .timeout = 90);

/* U1: an H100 allocation of 3,600 GPU-seconds at 2024-06-10T12:00Z. */
static size_t frame_u1(uint64_t frame_id)
{
    struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = HARNESS_JUNE_US };
    memset(event.event_id, 0x71, UUID_SIZE);
    snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc-u1");
    snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool-a");
    snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "H100");
    event.u.gpu.duration_s = 3600;
    event.u.gpu.cost_per_hour_micro = 2490000;
    return harness_frame(frame, &tenant, frame_id, &event, 1);
}

/* Runs meterctl on the test's ledger; returns its exit status. */
static int meterctl(const char *arguments)
{
    char command[1024];
    snprintf(command, sizeof command, "%s/meterctl --data %s %s >%s/meterctl.out 2>&1",
             HM_BINARY_DIR, server.dir, arguments, server.dir);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Closes June 2024 under the default book (H100 at 2.50 per GPU-hour) and checks U1's line. */
static void june_closed_with_one_gpu_hour(void)
{
    cr_assert_eq(meterctl("pricebook load " HM_SOURCE_DIR "/data/pricebooks/default.json"), 0);
    cr_assert_eq(meterctl("close --period 2024-06"), 0, "meterctl close failed");
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    uint64_t events = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant.id, &events), HM_OK);
    cr_assert_eq(events, 1, "%llu events stored", (unsigned long long)events);
    cr_assert_eq(ledger_verify(ledger, tenant.id, 202406), HM_OK);
    char *text = NULL;
    cr_assert_eq(ledger_invoice_get(ledger, tenant.id, 202406, &text), HM_OK);
    ledger_close(ledger);

    json_error_t error;
    json_t *invoice = json_loads(text, 0, &error);
    free(text);
    cr_assert_not_null(invoice);
    int h100_lines = 0;
    size_t index;
    json_t *line;
    json_array_foreach(json_object_get(invoice, "lines"), index, line) {
        const char *dimension = json_string_value(json_object_get(line, "dimension"));
        if (dimension == NULL || strcmp(dimension, "H100") != 0)
            continue;
        h100_lines++;
        cr_assert_str_eq(json_string_value(json_object_get(line, "amount")), "2.50");
        cr_assert_eq(json_integer_value(json_object_get(line, "amount_minor")), 250);
        cr_assert_eq(json_integer_value(json_object_get(line, "events")), 1);
    }
    cr_assert_eq(h100_lines, 1, "%d H100 lines on the invoice", h100_lines);
    json_decref(invoice);
}

Test(failed_write, retry_after_failed_commit_stored)
{
    setenv("METER_TEST_FAIL_COMMITS", "1", 1);
    harness_start(&server);
    unsetenv("METER_TEST_FAIL_COMMITS");
    size_t size = frame_u1(1);

    /* 1. The commit fails: an error ack, nothing stored. */
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_STORE_FAILED, "status %s", frame_status_name(ack.status));
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(harness_quantity(&server, tenant.id, ROLLUP_GPU_SECONDS, "H100"), 0);

    /* 2. The same frame again: stored and acknowledged. */
    ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED, "status %s", frame_status_name(ack.status));
    cr_assert_eq(ack.stored, 1);
    cr_assert_eq(ack.duplicates, 0);

    /* 3. A third time: a duplicate, nothing new. */
    ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.duplicates, 1);
    cr_assert_eq(harness_quantity(&server, tenant.id, ROLLUP_GPU_SECONDS, "H100"), 3600);

    cr_assert_eq(harness_stop(&server), 0);
    june_closed_with_one_gpu_hour();
}

/* Acks seen by a client_tcp, in order. */
struct acks_seen {
    struct frame_ack acks[8];
    int count;
};

static void on_ack_record(void *context, const struct frame_ack *ack, uint16_t event_count)
{
    (void)event_count;
    struct acks_seen *seen = context;
    if (seen->count < 8)
        seen->acks[seen->count++] = *ack;
}

Test(failed_write, client_resends_after_failed_commit)
{
    setenv("METER_TEST_FAIL_COMMITS", "1", 1);
    harness_start(&server);
    unsetenv("METER_TEST_FAIL_COMMITS");
    char port[16];
    snprintf(port, sizeof port, "%u", server.tcp_port);
    struct acks_seen seen = { 0 };
    struct client_tcp_options options = { .host = "127.0.0.1", .port = port,
                                          .backoff_initial_ms = 10, .on_ack = on_ack_record,
                                          .on_ack_context = &seen };
    struct client_tcp *client = NULL;
    cr_assert_eq(client_tcp_open(&options, &client), HM_OK);
    size_t size = frame_u1(1);
    cr_assert_eq(client_tcp_send(client, frame, size), HM_OK);
    cr_assert_eq(client_tcp_flush(client), HM_OK);

    /* The store_failed ack is not final: the client kept the frame and resent it. */
    const struct client_stats *stats = client_tcp_stats(client);
    cr_assert_eq(stats->store_failures, 1);
    cr_assert_eq(stats->frames_resent, 1);
    cr_assert_eq(seen.count, 1);
    cr_assert_eq(seen.acks[0].status, FRAME_ACCEPTED);
    cr_assert_eq(seen.acks[0].stored, 1);

    size = frame_u1(2);
    cr_assert_eq(client_tcp_send(client, frame, size), HM_OK);
    cr_assert_eq(client_tcp_flush(client), HM_OK);
    cr_assert_eq(seen.count, 2);
    cr_assert_eq(seen.acks[1].duplicates, 1);
    cr_assert_eq(stats->events_stored, 1);
    client_tcp_close(client);

    cr_assert_eq(harness_stop(&server), 0);
    june_closed_with_one_gpu_hour();
}

Test(failed_write, retry_in_flight_during_failed_commit)
{
    /* The failing commit takes 600 ms, so the retry arrives while it runs. */
    setenv("METER_TEST_FAIL_COMMITS", "1", 1);
    setenv("METER_TEST_COMMIT_DELAY_MS", "600", 1);
    harness_start(&server);
    unsetenv("METER_TEST_FAIL_COMMITS");
    unsetenv("METER_TEST_COMMIT_DELAY_MS");
    size_t size = frame_u1(1);
    int first = harness_connect(&server);
    int retry = harness_connect(&server);
    harness_send_all(first, frame, size);
    harness_sleep_ms(200);
    harness_send_all(retry, frame, size);

    struct frame_ack first_ack, retry_ack;
    cr_assert_eq(harness_read_ack(first, &first_ack), 0);
    cr_assert_eq(harness_read_ack(retry, &retry_ack), 0);
    cr_assert_eq(first_ack.status, FRAME_STORE_FAILED, "status %s",
                 frame_status_name(first_ack.status));
    cr_assert_eq(retry_ack.status, FRAME_ACCEPTED, "status %s",
                 frame_status_name(retry_ack.status));
    cr_assert_eq(retry_ack.stored, 1);

    /* The first sender now resends too: a duplicate. */
    harness_send_all(first, frame, size);
    cr_assert_eq(harness_read_ack(first, &first_ack), 0);
    cr_assert_eq(first_ack.status, FRAME_ACCEPTED);
    cr_assert_eq(first_ack.stored, 0);
    cr_assert_eq(first_ack.duplicates, 1);
    close(first);
    close(retry);

    cr_assert_eq(harness_stop(&server), 0);
    june_closed_with_one_gpu_hour();
}

/* ---- A full ledger map: backpressure, then resume after a restart with a larger map ---- */

#define FULL_FRAMES 200
#define FULL_EVENTS_PER_FRAME 64

struct full_sender {
    uint16_t port;
    atomic_uint_fast64_t acked_events;
    atomic_int done;
    int rc;
    struct client_stats stats;
};

static void on_ack_count(void *context, const struct frame_ack *ack, uint16_t event_count)
{
    struct full_sender *sender = context;
    if (ack->status == FRAME_ACCEPTED && ack->stored + ack->duplicates == event_count)
        atomic_fetch_add(&sender->acked_events, event_count);
}

static struct event full_event(uint32_t frame_index, uint16_t index)
{
    struct event event = harness_inference(0, "chat-8b", 1000 + index, 100);
    event.event_id[0] = 0xf1;
    for (int i = 0; i < 4; i++)
        event.event_id[1 + i] = (uint8_t)(frame_index >> (24 - 8 * i));
    event.event_id[5] = (uint8_t)(index >> 8);
    event.event_id[6] = (uint8_t)index;
    return event;
}

/* Sends FULL_FRAMES frames as a real sender does, waiting through the full map and a restart. */
static void *full_sender_run(void *context)
{
    struct full_sender *sender = context;
    char port[16];
    snprintf(port, sizeof port, "%u", sender->port);
    struct client_tcp_options options = {
        .host = "127.0.0.1", .port = port, .window = 16, .reconnect_attempts = 100000,
        .backoff_initial_ms = 20, .backoff_max_ms = 200, .ack_timeout_ms = 60000,
        .on_ack = on_ack_count, .on_ack_context = sender,
    };
    struct client_tcp *client = NULL;
    struct client_frame builder;
    sender->rc = client_frame_open(&builder, tenant.id, &tenant.key, FULL_EVENTS_PER_FRAME,
                                   FRAME_BODY_MAX);
    if (sender->rc == HM_OK)
        sender->rc = client_tcp_open(&options, &client);
    for (uint32_t f = 0; sender->rc == HM_OK && f < FULL_FRAMES; f++) {
        for (uint16_t i = 0; sender->rc == HM_OK && i < FULL_EVENTS_PER_FRAME; i++) {
            struct event event = full_event(f, i);
            sender->rc = client_frame_add(&builder, &event);
        }
        if (sender->rc == HM_OK)
            sender->rc = client_tcp_send_frame(client, &builder);
    }
    if (sender->rc == HM_OK)
        sender->rc = client_tcp_flush(client);
    if (client != NULL)
        sender->stats = *client_tcp_stats(client);
    client_tcp_close(client);
    client_frame_close(&builder);
    atomic_store(&sender->done, 1);
    return NULL;
}

/* Starts meterd with its log in DIR/meterd.log. */
static void start_logged(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/meterd.log", server.dir);
    int log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert_geq(log_fd, 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(log_fd, 2);
    harness_start(&server);
    dup2(saved, 2);
    close(saved);
    close(log_fd);
}

/* Returns the value of a counter in meterd's stats file, or -1 when absent. */
static long long stats_value(const char *name)
{
    char path[300], text[4096], key[64];
    snprintf(path, sizeof path, "%s/meterd-stats.json", server.dir);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    size_t size = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[size] = '\0';
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *at = strstr(text, key);
    return at ? strtoll(at + strlen(key), NULL, 10) : -1;
}

/* Waits up to `ms` for a stats counter to reach `value`; returns 1 when it did. */
static int stats_reach(const char *name, long long value, long ms)
{
    for (long waited = 0; waited < ms; waited += 50) {
        if (stats_value(name) >= value)
            return 1;
        harness_sleep_ms(50);
    }
    return 0;
}

static int log_lines_with(const char *needle)
{
    char path[300], line[2048];
    snprintf(path, sizeof path, "%s/meterd.log", server.dir);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return 0;
    int count = 0;
    while (fgets(line, sizeof line, file) != NULL)
        count += strstr(line, needle) != NULL;
    fclose(file);
    return count;
}

Test(failed_write, full_map_holds_frames_until_grown, .timeout = 120)
{
    /* A 1 MiB map fits a few thousand events, and the sender has 12,800. */
    server.extra_args[0] = "--map-size";
    server.extra_args[1] = "1";
    server.extra_args[2] = NULL;
    start_logged();
    static struct full_sender sender;
    memset(&sender, 0, sizeof sender);
    sender.port = server.tcp_port;
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, full_sender_run, &sender), 0);

    cr_assert(stats_reach("store_full", 1, 20000), "meterd never reported the map full");
    uint64_t acked_when_full = atomic_load(&sender.acked_events);
    cr_assert_gt(acked_when_full, 0, "nothing was acknowledged before the map filled");
    cr_assert_lt(acked_when_full, FULL_FRAMES * FULL_EVENTS_PER_FRAME);

    /* Backpressure: no acks while full, and the sender keeps its frames. */
    harness_sleep_ms(1500);
    cr_assert_eq(atomic_load(&sender.acked_events), acked_when_full, "acks while the map is full");
    cr_assert_eq(atomic_load(&sender.done), 0, "the sender finished while the map was full");

    /* UDP frames are dropped and counted. */
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(server.udp_port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    for (int i = 0; i < 3; i++) {
        struct event event = harness_inference((uint8_t)(0xa0 + i), "chat-8b", 10, 1);
        size_t size = harness_frame(frame, &tenant, 1, &event, 1);
        cr_assert_eq(sendto(udp, frame, size, 0, (struct sockaddr *)&address, sizeof address),
                     (ssize_t)size);
    }
    close(udp);
    cr_assert(stats_reach("udp_dropped_full", 3, 5000), "udp_dropped_full is %lld, expected 3",
              stats_value("udp_dropped_full"));

    /* Reads go on, and the error was logged once, with its fix. */
    cr_assert_eq(meterctl("usage gpu-tenant --period 2024-06"), 0, "meterctl usage failed");
    cr_assert_eq(log_lines_with("ledger full:"), 1, "expected one ledger full error");
    cr_assert_geq(log_lines_with("restart meterd with a larger --map-size"), 1);

    /* A restart with a larger map: the sender resends what was never acknowledged. */
    cr_assert_eq(harness_stop(&server), 0);
    server.extra_args[1] = "64";
    start_logged();
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(sender.rc, HM_OK, "the sender failed: %s", hm_status_str(sender.rc));
    cr_assert_eq(atomic_load(&sender.acked_events), FULL_FRAMES * FULL_EVENTS_PER_FRAME);
    cr_assert_gt(sender.stats.frames_resent, 0);
    cr_assert_eq(harness_stop(&server), 0);

    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    uint64_t events = 0;
    cr_assert_eq(ledger_event_count(ledger, tenant.id, &events), HM_OK);
    cr_assert_eq(events, FULL_FRAMES * FULL_EVENTS_PER_FRAME);
    cr_assert_eq(ledger_verify(ledger, tenant.id, 202406), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(harness_quantity(&server, tenant.id, ROLLUP_EVENTS, "inference"),
                 FULL_FRAMES * FULL_EVENTS_PER_FRAME);
}
