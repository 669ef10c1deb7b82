/* The sender library against a real meterd: windows, resends after a crash, UDP. */
#include "meterd_harness.h"

#include "ingest/client.h"

#include <errno.h>

static struct harness server;
static struct test_tenant tenant;

static void setup(void)
{
    harness_make_dir(&server);
    harness_tenant(&server, "client-tenant", &tenant);
    harness_start(&server);
}

static void teardown(void) { harness_remove(&server); }

TestSuite(client, .init = setup, .fini = teardown, .timeout = 120);

static struct event numbered_event(uint32_t number)
{
    struct event event = harness_inference(0, "m-large", 1000 + number % 7, 10);
    memcpy(event.event_id, &number, sizeof number);
    event.event_id[15] = 0x5a;
    return event;
}

static struct client_tcp *tcp_open(uint32_t window)
{
    char port[16];
    snprintf(port, sizeof port, "%u", server.tcp_port);
    struct client_tcp_options options = {
        .host = "127.0.0.1",
        .port = port,
        .window = window,
        .reconnect_attempts = 40,
        .backoff_initial_ms = 20,
        .backoff_max_ms = 200,
        .ack_timeout_ms = 5000,
    };
    struct client_tcp *client = NULL;
    cr_assert_eq(client_tcp_open(&options, &client), HM_OK);
    return client;
}

/* Sends events [first, first + count) in frames of `per_frame` events. */
static void send_events(struct client_tcp *client, struct client_frame *frame, uint32_t first,
                        uint32_t count, uint32_t per_frame, void (*after_frame)(uint32_t))
{
    uint32_t frames = 0;
    for (uint32_t i = first; i < first + count; i++) {
        struct event event = numbered_event(i);
        cr_assert_eq(client_frame_add(frame, &event), HM_OK);
        if (client_frame_event_count(frame) == per_frame || i + 1 == first + count) {
            cr_assert_eq(client_tcp_send_frame(client, frame), HM_OK);
            if (after_frame)
                after_frame(++frames);
        }
    }
}

static uint64_t stored_inference_events(void)
{
    return harness_quantity(&server, tenant.id, ROLLUP_EVENTS, "inference");
}

Test(client, window_of_frames_all_stored)
{
    struct client_tcp *client = tcp_open(16);
    struct client_frame frame;
    cr_assert_eq(client_frame_open(&frame, tenant.id, &tenant.key, 100, FRAME_BODY_MAX), HM_OK);
    send_events(client, &frame, 0, 5000, 100, NULL);
    cr_assert_eq(client_tcp_flush(client), HM_OK);
    const struct client_stats *stats = client_tcp_stats(client);
    cr_assert_eq(stats->frames_acked, 50);
    cr_assert_eq(stats->events_stored, 5000);
    cr_assert_eq(stats->frames_rejected, 0);
    client_frame_close(&frame);
    client_tcp_close(client);
    cr_assert_eq(stored_inference_events(), 5000);
}

/* Kills meterd after the 20th frame and starts it again 300 ms later on the same ports. */
static void crash_after_twenty(uint32_t frames)
{
    if (frames != 20)
        return;
    harness_kill(&server);
    harness_spawn(&server, 300);
}

Test(client, resends_after_crash_without_loss_or_double)
{
    struct client_tcp *client = tcp_open(8);
    struct client_frame frame;
    cr_assert_eq(client_frame_open(&frame, tenant.id, &tenant.key, 50, FRAME_BODY_MAX), HM_OK);
    send_events(client, &frame, 0, 3000, 50, crash_after_twenty);
    cr_assert_eq(client_tcp_flush(client), HM_OK);
    const struct client_stats *stats = client_tcp_stats(client);
    cr_assert_geq(stats->reconnects, 1);
    cr_assert_eq(stats->frames_acked, 60);
    cr_assert_eq(stats->frames_rejected, 0);
    cr_assert_eq(stats->events_conflict, 0);
    /* Frames resent after the crash come back as duplicates when their first copy was stored. */
    cr_assert_geq(stats->events_stored + stats->events_duplicate, 3000);
    client_frame_close(&frame);
    client_tcp_close(client);

    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stored_inference_events(), 3000);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    cr_assert_eq(ledger_verify(ledger, tenant.id, 202406), HM_OK);
    ledger_close(ledger);
}

static uint64_t acked_stored;

static void count_acked(void *context, const struct frame_ack *ack, uint16_t event_count)
{
    (void)context;
    (void)event_count;
    acked_stored += ack->stored;
}

Test(client, acknowledged_events_survive_kill)
{
    char port[16];
    snprintf(port, sizeof port, "%u", server.tcp_port);
    struct client_tcp_options options = { .host = "127.0.0.1", .port = port, .window = 32,
                                          .on_ack = count_acked };
    struct client_tcp *client = NULL;
    cr_assert_eq(client_tcp_open(&options, &client), HM_OK);
    struct client_frame frame;
    cr_assert_eq(client_frame_open(&frame, tenant.id, &tenant.key, 64, FRAME_BODY_MAX), HM_OK);
    acked_stored = 0;
    send_events(client, &frame, 0, 6400, 64, NULL);
    cr_assert_eq(client_tcp_flush(client), HM_OK);
    client_frame_close(&frame);
    client_tcp_close(client);

    harness_kill(&server);
    cr_assert_eq(acked_stored, 6400);
    cr_assert_eq(stored_inference_events(), 6400);
}

Test(client, udp_frames_stored)
{
    char port[16];
    snprintf(port, sizeof port, "%u", server.udp_port);
    struct client_udp_options options = { .host = "127.0.0.1", .port = port };
    struct client_udp *client = NULL;
    cr_assert_eq(client_udp_open(&options, &client), HM_OK);
    struct client_frame frame;
    cr_assert_eq(client_frame_open(&frame, tenant.id, &tenant.key, FRAME_EVENTS_MAX,
                                   client_udp_body_limit(client)), HM_OK);
    for (uint32_t i = 0; i < 200; i++) {
        struct event event = numbered_event(i);
        int rc = client_frame_add(&frame, &event);
        if (rc == HM_ERR_FULL) {
            cr_assert_eq(client_udp_send_frame(client, &frame), HM_OK);
            rc = client_frame_add(&frame, &event);
        }
        cr_assert_eq(rc, HM_OK);
        /* Pace the datagrams so that a 2-core machine never overruns the socket buffer. */
        if (i % 20 == 0)
            harness_sleep_ms(1);
    }
    cr_assert_eq(client_udp_send_frame(client, &frame), HM_OK);
    cr_assert_gt(client_udp_datagrams_sent(client), 1);
    client_frame_close(&frame);
    client_udp_close(client);

    uint64_t stored = 0;
    for (int i = 0; i < 300 && stored < 200; i++) {
        harness_sleep_ms(10);
        stored = stored_inference_events();
    }
    cr_assert_eq(stored, 200);
}

/* A port that nothing listens on: the open fails, and the reason is the system's, not only HM_ERR_IO. */
Test(client, refused_connect_names_reason)
{
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(listener, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(bind(listener, (struct sockaddr *)&address, sizeof address), 0);
    socklen_t size = sizeof address;
    cr_assert_eq(getsockname(listener, (struct sockaddr *)&address, &size), 0);
    /* Bound but not listening: a connection to it is refused. */
    char port[16];
    snprintf(port, sizeof port, "%u", ntohs(address.sin_port));
    struct client_tcp_options options = {
        .host = "127.0.0.1",
        .port = port,
        .reconnect_attempts = 1,
        .backoff_initial_ms = 1,
        .ack_timeout_ms = 1000,
    };
    struct client_tcp *client = NULL;
    cr_assert_eq(client_tcp_open(&options, &client), HM_ERR_IO);
    cr_assert_null(client);
    cr_assert_eq(client_connect_error(), ECONNREFUSED, "connect error %d",
                 client_connect_error());
    close(listener);
}
