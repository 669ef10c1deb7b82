/* meterd on loopback: acks, every reject reason, exactly-once across restarts, UDP. */
#include "meterd_harness.h"

#include <sys/stat.h>

static struct harness server;
static struct test_tenant tenant_a, tenant_b;
static uint8_t frame[FRAME_SIZE_MAX];

static void setup(void)
{
    harness_make_dir(&server);
    harness_tenant(&server, "tenant-a", &tenant_a);
    harness_tenant(&server, "tenant-b", &tenant_b);
    harness_start(&server);
}

static void teardown(void) { harness_remove(&server); }

TestSuite(server, .init = setup, .fini = teardown, .timeout = 60);

Test(server, frame_stored_then_duplicate)
{
    struct event events[2] = { harness_inference(1, "m-large", 1200000, 300000),
                               harness_inference(2, "m-large", 100, 10) };
    size_t size = harness_frame(frame, &tenant_a, 7, events, 2);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.frame_id, 7);
    cr_assert_eq(ack.stored, 2);
    cr_assert_eq(ack.duplicates, 0);

    ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.duplicates, 2);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-large"), 1200100);
}

Test(server, duplicate_across_restart)
{
    struct event event = harness_inference(3, "m-large", 1000, 100);
    size_t size = harness_frame(frame, &tenant_a, 1, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    cr_assert_eq(harness_stop(&server), 0);
    harness_start(&server);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.duplicates, 1);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-large"), 1000);
}

Test(server, conflicting_content_rejected)
{
    struct event first = harness_inference(4, "m-large", 1200000, 300000);
    struct event changed = harness_inference(4, "m-large", 1200000, 300001);
    size_t size = harness_frame(frame, &tenant_a, 1, &first, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    size = harness_frame(frame, &tenant_a, 2, &changed, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.conflicts, 1);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_OUTPUT_TOKENS, "m-large"), 300000);
}

Test(server, same_uuid_two_tenants_counted)
{
    struct event a1 = harness_inference(5, "m-large", 10, 1);
    struct event a2 = harness_inference(6, "m-large", 10, 1);
    struct event b1 = harness_inference(5, "m-large", 10, 1);
    struct event pair[2] = { a1, a2 };
    size_t size = harness_frame(frame, &tenant_a, 1, pair, 2);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 2);
    size = harness_frame(frame, &tenant_b, 1, &b1, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 2);
    cr_assert_eq(harness_quantity(&server, tenant_b.id, ROLLUP_EVENTS, "inference"), 1);
}

Test(server, bad_mac_rejected_connection_survives)
{
    struct event event = harness_inference(8, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 11, &event, 1);
    int fd = harness_connect(&server);
    frame[FRAME_HEADER_SIZE + 5] ^= 0x01;
    harness_send_all(fd, frame, size);
    frame[FRAME_HEADER_SIZE + 5] ^= 0x01;
    size_t good_size = harness_frame(frame, &tenant_a, 12, &event, 1);
    harness_send_all(fd, frame, good_size);

    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_BAD_MAC);
    cr_assert_eq(ack.frame_id, 11);
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.frame_id, 12);
    cr_assert_eq(ack.stored, 1);
    close(fd);
}

Test(server, unknown_key_rejected)
{
    struct event event = harness_inference(9, "m-large", 10, 1);
    struct test_tenant stranger = tenant_a;
    stranger.key.key_id ^= 0x5555;
    size_t size = harness_frame(frame, &stranger, 1, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_UNKNOWN_KEY);
}

Test(server, key_of_other_tenant_rejected)
{
    struct event event = harness_inference(10, "m-large", 10, 1);
    struct test_tenant forged = tenant_a;
    memcpy(forged.id, tenant_b.id, UUID_SIZE);
    size_t size = harness_frame(frame, &forged, 1, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_WRONG_TENANT);
    cr_assert_eq(harness_quantity(&server, tenant_b.id, ROLLUP_EVENTS, "inference"), 0);
}

Test(server, revoked_key_rejected_at_once)
{
    struct event event = harness_inference(11, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 1, &event, 1);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    cr_assert_eq(ledger_key_revoke(ledger, tenant_a.key.key_id, 1), HM_OK);
    ledger_close(ledger);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_REVOKED_KEY);
}

Test(server, malformed_event_names_index)
{
    struct event events[3] = { harness_inference(12, "m-large", 10, 1),
                               harness_inference(13, "m-large", 10, 1),
                               harness_inference(14, "m-large", 10, 1) };
    size_t size = harness_frame(frame, &tenant_a, 1, events, 3);
    /* Cached tokens above input tokens in the third record; then re-sign the frame. */
    size_t third = FRAME_HEADER_SIZE + 2 * (size_t)(RECORD_HEADER_SIZE + 36 + 1 + 7);
    frame[third + RECORD_HEADER_SIZE + 16] = 0xff;
    unsigned int mac_size = 0;
    HMAC(EVP_sha256(), tenant_a.signing_key, 32, frame, size - FRAME_MAC_SIZE,
         frame + size - FRAME_MAC_SIZE, &mac_size);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_MALFORMED);
    cr_assert_eq(ack.detail, 2);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 0);
}

Test(server, bad_magic_closes_connection)
{
    int fd = harness_connect(&server);
    uint8_t garbage[FRAME_HEADER_SIZE];
    memset(garbage, 'x', sizeof garbage);
    harness_send_all(fd, garbage, sizeof garbage);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_BAD_MAGIC);
    cr_assert_eq(ack.frame_id, 0);
    cr_assert_eq(harness_read_ack(fd, &ack), -1, "the connection stays open after bad magic");
    close(fd);

    struct event event = harness_inference(15, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 2, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
}

Test(server, bad_version_rejected)
{
    struct event event = harness_inference(16, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 3, &event, 1);
    frame[4] = 2;
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_BAD_VERSION);
    cr_assert_eq(ack.frame_id, 3);
}

Test(server, oversized_body_rejected)
{
    struct event event = harness_inference(17, "m-large", 10, 1);
    harness_frame(frame, &tenant_a, 4, &event, 1);
    uint32_t huge = FRAME_BODY_MAX + 1;
    memcpy(frame + 8, &huge, 4);
    int fd = harness_connect(&server);
    harness_send_all(fd, frame, FRAME_HEADER_SIZE);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_TOO_LARGE);
    close(fd);
}

/* Reads the stats file of the stopped server into `out`. */
static void stats_read(char *out, size_t size)
{
    char path[300];
    snprintf(path, sizeof path, "%s/meterd-stats.json", server.dir);
    FILE *file = fopen(path, "r");
    cr_assert_not_null(file, "no stats file %s", path);
    size_t read = fread(out, 1, size - 1, file);
    fclose(file);
    out[read] = '\0';
}

Test(server, truncated_frame_counted)
{
    struct event event = harness_inference(18, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 5, &event, 1);
    int fd = harness_connect(&server);
    harness_send_all(fd, frame, size - 10);
    close(fd);
    harness_sleep_ms(200);
    cr_assert_eq(harness_stop(&server), 0);

    char stats[4096];
    stats_read(stats, sizeof stats);
    cr_assert_not_null(strstr(stats, "\"truncated\": 1"), "stats: %s", stats);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 0);
}

/* Reads the number after "name": in meterd's stats file, or fails the test. */
static unsigned long long stats_number(const char *stats, const char *name)
{
    char pattern[80];
    snprintf(pattern, sizeof pattern, "\"%s\": ", name);
    const char *at = strstr(stats, pattern);
    cr_assert_not_null(at, "no %s in stats: %s", name, stats);
    return strtoull(at + strlen(pattern), NULL, 10);
}

Test(server, commit_time_split_into_write_and_cpu)
{
    struct frame_ack ack;
    for (uint32_t i = 0; i < 5; i++) {
        struct event event = harness_inference(40 + i, "m-large", 10, 1);
        size_t size = harness_frame(frame, &tenant_a, 50 + i, &event, 1);
        ack = harness_send_frame(&server, frame, size);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
    }
    cr_assert_eq(harness_stop(&server), 0);

    char stats[4096];
    stats_read(stats, sizeof stats);
    unsigned long long commits = stats_number(stats, "commits");
    unsigned long long commit_us = stats_number(stats, "commit_us_total");
    unsigned long long write_us = stats_number(stats, "write_us_total");
    cr_assert_geq(commits, 5, "each frame waited for its own commit: %s", stats);
    /* Every commit syncs, so it writes for some microseconds, and the write is part of it. */
    cr_assert_gt(write_us, 0, "stats: %s", stats);
    cr_assert_leq(write_us, commit_us, "stats: %s", stats);
    cr_assert_leq(stats_number(stats, "write_us_max"), stats_number(stats, "commit_us_max"));
    const char *histogram = strstr(stats, "\"write_ms_le\": {");
    cr_assert_not_null(histogram, "stats: %s", stats);
    cr_assert_eq(stats_number(histogram, "+Inf"), commits, "stats: %s", stats);
}

Test(server, frames_split_across_writes)
{
    struct event events[3] = { harness_inference(19, "m-large", 10, 1),
                               harness_inference(20, "m-large", 10, 1),
                               harness_inference(21, "m-large", 10, 1) };
    size_t size = harness_frame(frame, &tenant_a, 6, events, 3);
    int fd = harness_connect(&server);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    for (size_t i = 0; i < size; i += 7) {
        harness_send_all(fd, frame + i, size - i < 7 ? size - i : 7);
        harness_sleep_ms(1);
    }
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 3);
    close(fd);
}

Test(server, udp_frame_stored)
{
    struct event event = harness_inference(22, "m-mid", 15798000, 0);
    size_t size = harness_frame(frame, &tenant_a, 1, &event, 1);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(server.udp_port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    cr_assert_eq(sendto(fd, frame, size, 0, (struct sockaddr *)&address, sizeof address),
                 (ssize_t)size);
    close(fd);
    uint64_t stored = 0;
    for (int i = 0; i < 200 && stored == 0; i++) {
        harness_sleep_ms(10);
        stored = harness_quantity(&server, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-mid");
    }
    cr_assert_eq(stored, 15798000);
}

Test(server, sigterm_stops_cleanly)
{
    cr_assert_eq(harness_stop(&server), 0);
}

/*
 * A SIGTERM sent as soon as the port file exists still stops meterd
 * cleanly. Threads started before meterd blocks the signal, such as the id
 * index's helper, must not take it, or the signal's default action ends the
 * process. The port file is polled without sleeping to hit that moment.
 */
Test(server, sigterm_at_listen_stops_cleanly)
{
    cr_assert_eq(harness_stop(&server), 0);
    char port_file[300];
    snprintf(port_file, sizeof port_file, "%s/ports", server.dir);
    for (int attempt = 0; attempt < 20; attempt++) {
        harness_spawn(&server, 0);
        struct stat status;
        struct timespec started, now;
        clock_gettime(CLOCK_MONOTONIC, &started);
        while (stat(port_file, &status) != 0 || status.st_size == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            cr_assert_lt(now.tv_sec - started.tv_sec, 5, "meterd did not start within 5 s");
        }
        cr_assert_eq(harness_stop(&server), 0, "attempt %d", attempt);
    }
}

Test(server, thousand_frames_acked_in_order)
{
    enum { FRAMES = 1000 };
    static uint8_t stream[FRAMES * 200];
    size_t stream_size = 0;
    for (uint32_t i = 0; i < FRAMES; i++) {
        struct event event = harness_inference(0, "m-large", 10, 1);
        memcpy(event.event_id, &i, sizeof i);
        event.event_id[15] = 0x77;
        size_t size = harness_frame(frame, &tenant_a, 1000 + i, &event, 1);
        cr_assert_leq(stream_size + size, sizeof stream);
        memcpy(stream + stream_size, frame, size);
        stream_size += size;
    }
    int fd = harness_connect(&server);
    harness_send_all(fd, stream, stream_size);
    for (uint32_t i = 0; i < FRAMES; i++) {
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "ack %u missing", i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED, "ack %u status %d", i, ack.status);
        cr_assert_eq(ack.frame_id, 1000 + i, "ack %u has frame id %llu", i,
                     (unsigned long long)ack.frame_id);
        cr_assert_eq(ack.stored, 1, "ack %u stored %u", i, ack.stored);
    }
    close(fd);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), FRAMES);
}

Test(server, mixed_frame_counts_new_events_only)
{
    struct event first[2] = { harness_inference(10, "m-mix", 1000, 100),
                              harness_inference(11, "m-mix", 2000, 200) };
    size_t size = harness_frame(frame, &tenant_a, 1, first, 2);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 2);

    /* A resend, a changed event under a stored id, a new event and that new event again. */
    struct event mixed[4] = { harness_inference(10, "m-mix", 1000, 100),
                              harness_inference(11, "m-mix", 2000, 999),
                              harness_inference(12, "m-mix", 4000, 400),
                              harness_inference(12, "m-mix", 4000, 400) };
    size = harness_frame(frame, &tenant_a, 2, mixed, 4);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_expect_eq(ack.stored, 1);
    cr_expect_eq(ack.duplicates, 2);
    cr_expect_eq(ack.conflicts, 1);
    cr_expect_eq(harness_quantity(&server, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-mix"), 7000);
    cr_expect_eq(harness_quantity(&server, tenant_a.id, ROLLUP_OUTPUT_TOKENS, "m-mix"), 700);
    cr_expect_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 3);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    cr_expect_eq(ledger_verify(ledger, tenant_a.id, 202406), HM_OK);
    ledger_close(ledger);
}

Test(server, resent_frames_in_one_batch_counted_once)
{
    /* 50 frames written back to back, each resent at once, so that copies share batches. */
    int fd = harness_connect(&server);
    for (uint8_t i = 0; i < 50; i++) {
        struct event event = harness_inference((uint8_t)(100 + i), "m-batch", 10, 1);
        size_t size = harness_frame(frame, &tenant_b, (uint64_t)i * 2 + 1, &event, 1);
        /* The same bytes twice, under the same frame id. */
        harness_send_all(fd, frame, size);
        harness_send_all(fd, frame, size);
    }
    uint32_t stored = 0, duplicates = 0;
    for (int i = 0; i < 100; i++) {
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "ack %d missing", i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        stored += ack.stored;
        duplicates += ack.duplicates;
    }
    close(fd);
    cr_expect_eq(stored, 50);
    cr_expect_eq(duplicates, 50);
    cr_expect_eq(harness_quantity(&server, tenant_b.id, ROLLUP_INPUT_TOKENS, "m-batch"), 500);
    cr_expect_eq(harness_quantity(&server, tenant_b.id, ROLLUP_EVENTS, "inference"), 50);
}

Test(server, reject_acks_not_held_for_tick)
{
    /*
     * A batch of rejected frames only has nothing to commit; its acks must
     * go out at once, not with the loop's next timer tick (250 ms). Ten
     * rejects in turn, each awaited: held for the tick they take about
     * 1.25 s together, sent at once a few milliseconds.
     */
    struct event event = harness_inference(9, "m-large", 10, 1);
    int fd = harness_connect(&server);
    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    for (uint64_t i = 0; i < 10; i++) {
        size_t size = harness_frame(frame, &tenant_a, 100 + i, &event, 1);
        frame[FRAME_HEADER_SIZE + 5] ^= 0x01;
        harness_send_all(fd, frame, size);
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack for reject %llu",
                     (unsigned long long)i);
        cr_assert_eq(ack.status, FRAME_BAD_MAC);
    }
    clock_gettime(CLOCK_MONOTONIC, &ended);
    close(fd);
    double seconds = (double)(ended.tv_sec - started.tv_sec) +
                     (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    cr_expect_lt(seconds, 0.6, "ten reject acks took %.3f s", seconds);
}
