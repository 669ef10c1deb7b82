/* meterd connection limits: slow frames, idle connections, eviction at the limit. */
#include "meterd_harness.h"

#include <errno.h>

static struct harness server;
static struct test_tenant tenant;
static uint8_t frame[FRAME_SIZE_MAX];

static void setup(void)
{
    harness_make_dir(&server);
    harness_tenant(&server, "tenant", &tenant);
    server.extra_args[0] = "--frame-timeout-ms";
    server.extra_args[1] = "400";
    server.extra_args[2] = "--idle-timeout-ms";
    server.extra_args[3] = "3000";
    server.extra_args[4] = "--max-connections";
    server.extra_args[5] = "2";
    server.extra_args[6] = NULL;
    harness_start(&server);
}

static void teardown(void) { harness_remove(&server); }

TestSuite(connections, .init = setup, .fini = teardown, .timeout = 60);

/* Returns 1 when the server closed the connection within about `ms` milliseconds. */
static int closed_by_server(int fd, long ms)
{
    struct timeval timeout = { ms / 1000, (ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    uint8_t byte;
    ssize_t got = recv(fd, &byte, 1, 0);
    return got == 0 || (got < 0 && errno == ECONNRESET);
}

/* Returns 1 when the server has reset or closed the connection, without waiting. */
static int closed_by_server_nowait(int fd)
{
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size);
    return error == ECONNRESET || error == EPIPE;
}

static size_t one_event_frame(uint8_t id_byte)
{
    struct event event = harness_inference(id_byte, "m-large", 10, 1);
    return harness_frame(frame, &tenant, id_byte, &event, 1);
}

Test(connections, slow_frame_closed_after_timeout)
{
    size_t size = one_event_frame(1);
    int fd = harness_connect(&server);
    harness_send_all(fd, frame, 10);
    cr_assert(closed_by_server(fd, 3000), "a frame stuck after 10 bytes kept its connection");
    close(fd);
    cr_assert_eq(harness_quantity(&server, tenant.id, ROLLUP_EVENTS, "inference"), 0);

    /* A frame sent whole on a new connection is stored. */
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
}

Test(connections, byte_at_a_time_sender_cut_off)
{
    size_t size = one_event_frame(2);
    int fd = harness_connect(&server);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    /* One byte every 100 ms would need about 14 s for this frame; the limit is 400 ms. */
    int cut_off = 0;
    for (size_t i = 0; i < size && !cut_off; i++) {
        if (send(fd, frame + i, 1, MSG_NOSIGNAL) != 1)
            cut_off = 1;
        harness_sleep_ms(100);
        if (i > 20)
            break;
    }
    cr_assert(cut_off || closed_by_server(fd, 1000), "a byte-at-a-time sender kept its slot");
    close(fd);
}

Test(connections, idle_connections_evicted_at_limit)
{
    /* Both send a frame first, so that only idleness (not a missing key) makes them evictable. */
    int idle[2];
    for (int i = 0; i < 2; i++) {
        idle[i] = harness_connect(&server);
        size_t size = one_event_frame((uint8_t)(0x30 + i));
        harness_send_all(idle[i], frame, size);
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(idle[i], &ack), 0);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        harness_sleep_ms(50);
    }
    harness_sleep_ms(1200);

    /* The limit is 2: this connection takes the slot of the longest idle one. */
    int newcomer = harness_connect(&server);
    cr_assert(closed_by_server(idle[0], 2000), "the longest idle connection was not evicted");
    size_t size = one_event_frame(3);
    harness_send_all(newcomer, frame, size);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(newcomer, &ack), 0, "the new connection got no slot");
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
    close(newcomer);
    close(idle[0]);
    close(idle[1]);
}

Test(connections, idle_connection_closed_after_timeout)
{
    int fd = harness_connect(&server);
    cr_assert(closed_by_server(fd, 5000), "an idle connection outlived the 3 s idle timeout");
    close(fd);
}

Test(connections, map_grown_by_other_process_adopted)
{
    harness_stop(&server);
    server.extra_args[0] = "--map-size";
    server.extra_args[1] = "4";
    server.extra_args[2] = NULL;
    harness_start(&server);
    size_t size = one_event_frame(4);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);

    /* Another process opens the ledger with a larger map and writes: the map grows. */
    struct ledger *ledger = NULL;
    struct ledger_options options = { .map_size = (size_t)64 << 20 };
    cr_assert_eq(ledger_open(&ledger, server.dir, &options), HM_OK);
    /* 6 MiB of records, past the 4 MiB that meterd mapped. */
    static char filler[1 << 20];
    memset(filler, 'x', sizeof filler - 1);
    for (int i = 0; i < 6; i++) {
        char scope[16];
        snprintf(scope, sizeof scope, "filler-%d", i);
        cr_assert_eq(ledger_pricebook_put(ledger, scope, filler), HM_OK);
    }
    ledger_close(ledger);

    size = one_event_frame(5);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED, "status %d after the map grew", ack.status);
    cr_assert_eq(ack.stored, 1);
}

/* Connects with a small receive buffer, so that unread acks stay queued on the server side. */
static int connect_small_window(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(server.tcp_port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&address, sizeof address), 0);
    return fd;
}

Test(connections, reject_ack_after_owed_acks)
{
    /* 2,000 good frames, bad magic, then 64 KiB that the server never reads. */
    enum { FRAMES = 2000 };
    static uint8_t stream[FRAMES * 160 + FRAME_HEADER_SIZE + 65536];
    size_t stream_size = 0;
    for (uint32_t i = 0; i < FRAMES; i++) {
        struct event event = harness_inference(0, "m-large", 10, 1);
        memcpy(event.event_id, &i, sizeof i);
        size_t size = harness_frame(frame, &tenant, 1 + i, &event, 1);
        memcpy(stream + stream_size, frame, size);
        stream_size += size;
    }
    memset(stream + stream_size, 'x', FRAME_HEADER_SIZE + 65536);
    stream_size += FRAME_HEADER_SIZE + 65536;
    int fd = connect_small_window();
    struct timeval timeout = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    /* The server may stop reading before the junk, so a short write is fine here. */
    struct timeval send_timeout = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    size_t sent_total = 0;
    while (sent_total < stream_size) {
        ssize_t sent = send(fd, stream + sent_total, stream_size - sent_total, MSG_NOSIGNAL);
        if (sent <= 0)
            break;
        sent_total += (size_t)sent;
    }
    cr_assert_gt(sent_total, stream_size - 65536, "the frames themselves were not all sent");
    harness_sleep_ms(300);
    for (uint32_t i = 0; i < FRAMES; i++) {
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "ack %u of %u lost", i, FRAMES);
        cr_assert_eq(ack.frame_id, 1 + i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
    }
    struct frame_ack reject;
    cr_assert_eq(harness_read_ack(fd, &reject), 0, "the reject ack was lost");
    cr_assert_eq(reject.status, FRAME_BAD_MAGIC);
    close(fd);
}

Test(connections, peer_that_never_reads_acks_cut_off)
{
    int fd = connect_small_window();
    struct timeval timeout = { 0, 200000 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);

    /*
     * Duplicates of one valid frame still earn acks: 100 of them per write.
     * Valid frames keep the connection from being closed for rejects in a row.
     */
    struct event event = harness_inference(9, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant, 1, &event, 1);
    static uint8_t block[100 * 200];
    for (int i = 0; i < 100; i++)
        memcpy(block + (size_t)i * size, frame, size);

    /* Bounded: at most 5,000 writes (64 MiB), then up to 3 s for the server to cut off. */
    int cut_off = 0, blocked = 0;
    for (int i = 0; i < 5000 && !cut_off && blocked < 20; i++) {
        ssize_t sent = send(fd, block, 100 * size, MSG_NOSIGNAL);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            blocked++;
        else if (sent < 0)
            cut_off = 1;
    }
    for (int i = 0; i < 30 && !cut_off; i++) {
        harness_sleep_ms(100);
        ssize_t sent = send(fd, block, size, MSG_NOSIGNAL | MSG_DONTWAIT);
        cut_off = closed_by_server_nowait(fd) || (sent < 0 && errno != EAGAIN);
    }
    close(fd);
    cr_assert(cut_off, "a peer that never reads its acks kept its connection");
}

/*
 * Sends frames on one connection until a send fails, reading the acks; runs
 * in a child process.
 */
static void flood_until_closed(uint16_t port, const uint8_t *block, size_t block_size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
        _exit(0);
    uint8_t acks[65536];
    /* Bounded: at most 20,000 writes. */
    for (int i = 0; i < 20000; i++) {
        if (send(fd, block, block_size, MSG_NOSIGNAL) < 0)
            break;
        /* Acks are read, and the server's FIN is ignored: the sender keeps sending. */
        while (recv(fd, acks, sizeof acks, MSG_DONTWAIT) > 0)
            ;
    }
    _exit(0);
}

Test(connections, sigterm_under_load_exits_cleanly)
{
    static uint8_t block[64 * 200];
    size_t block_size = 0;
    for (uint32_t i = 0; i < 64; i++) {
        struct event event = harness_inference(0, "m-large", 10, 1);
        memcpy(event.event_id, &i, sizeof i);
        size_t size = harness_frame(frame, &tenant, 1 + i, &event, 1);
        memcpy(block + block_size, frame, size);
        block_size += size;
    }
    /* Eight senders at once: restart without the suite's limit of two connections. */
    harness_stop(&server);
    server.extra_args[0] = NULL;
    for (int round = 0; round < 2; round++) {
        harness_start(&server);
        pid_t senders[8];
        for (int i = 0; i < 8; i++) {
            senders[i] = fork();
            cr_assert_geq(senders[i], 0);
            if (senders[i] == 0)
                flood_until_closed(server.tcp_port, block, block_size);
        }
        harness_sleep_ms(300);
        int status = harness_stop(&server);
        for (int i = 0; i < 8; i++) {
            kill(senders[i], SIGKILL);
            waitpid(senders[i], NULL, 0);
        }
        cr_assert_eq(status, 0, "meterd exited with %d after SIGTERM under load (round %d)",
                     status, round);
    }
    harness_start(&server);
}

/* Returns a counter from meterd's stats file, written every 2 s while counters change. */
static long long stats_counter(const char *name)
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

Test(connections, flood_at_limit_keeps_busy_senders)
{
    /* Two senders active within the last second: neither may be evicted. */
    int busy[2];
    for (int i = 0; i < 2; i++) {
        busy[i] = harness_connect(&server);
        size_t size = one_event_frame((uint8_t)(0x40 + i));
        harness_send_all(busy[i], frame, size);
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(busy[i], &ack), 0);
        cr_assert_eq(ack.stored, 1);
    }

    /* 50 more connections at once: each is closed, none displaces a busy sender. */
    enum { FLOOD = 50 };
    int flood[FLOOD];
    for (int i = 0; i < FLOOD; i++)
        flood[i] = harness_connect(&server);
    for (int i = 0; i < FLOOD; i++) {
        cr_assert(closed_by_server(flood[i], 2000), "connection %d above the limit stayed open", i);
        close(flood[i]);
    }
    for (int i = 0; i < 2; i++) {
        size_t size = one_event_frame((uint8_t)(0x50 + i));
        harness_send_all(busy[i], frame, size);
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(busy[i], &ack), 0, "busy sender %d lost its connection", i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        cr_assert_eq(ack.stored, 1);
        close(busy[i]);
    }
    long long rejected = -1;
    for (int i = 0; i < 60 && rejected < FLOOD; i++) {
        harness_sleep_ms(100);
        rejected = stats_counter("connections_rejected");
    }
    cr_assert_eq(rejected, FLOOD, "connections_rejected is %lld", rejected);
    cr_assert_eq(stats_counter("connections_evicted"), 0);
}

Test(connections, trickled_frame_within_timeout_stored)
{
    /* Four bytes every 5 ms: the frame of 148 bytes takes about 190 ms of the 400 ms limit. */
    size_t size = one_event_frame(0x60);
    int fd = harness_connect(&server);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    for (size_t at = 0; at < size; at += 4) {
        harness_send_all(fd, frame + at, size - at < 4 ? size - at : 4);
        harness_sleep_ms(5);
    }
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack for a frame sent in %zu pieces", (size + 3) / 4);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
    close(fd);
}
