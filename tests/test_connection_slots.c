/*
 * meterd's connection slots under peers without a valid key: eviction of
 * connections without an accepted frame, the close after rejects in a row,
 * the rate-limited eviction log and the details of key rejects.
 */
#include "meterd_harness.h"

#include <errno.h>
#include <fcntl.h>

static struct harness server;
static struct test_tenant tenant, other;
static uint8_t frame[FRAME_SIZE_MAX];
static char log_path[300];

/* Starts meterd with --max-connections `limit`, logging at info level to log_path. */
static void start_logged(const char *limit)
{
    harness_make_dir(&server);
    harness_tenant(&server, "tenant", &tenant);
    harness_tenant(&server, "other", &other);
    snprintf(log_path, sizeof log_path, "%s/meterd.log", server.dir);
    server.extra_args[0] = "--log-level";
    server.extra_args[1] = "info";
    server.extra_args[2] = "--max-connections";
    server.extra_args[3] = limit;
    server.extra_args[4] = NULL;
    int saved = dup(2);
    int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(log, 0);
    dup2(log, 2);
    harness_start(&server);
    dup2(saved, 2);
    close(saved);
    close(log);
}

static void teardown(void) { harness_remove(&server); }

TestSuite(slots, .fini = teardown, .timeout = 60);

static int log_count(const char *text)
{
    FILE *file = fopen(log_path, "r");
    cr_assert_not_null(file);
    char line[4096];
    int count = 0;
    while (fgets(line, sizeof line, file) != NULL)
        count += strstr(line, text) != NULL;
    fclose(file);
    return count;
}

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

/* A frame signed with a key id that no ledger has. */
static size_t keyless_frame(uint8_t *out, uint64_t frame_id)
{
    struct test_tenant stranger = tenant;
    stranger.key.key_id = 0xdeadbeefcafe0001ULL;
    memset(stranger.signing_key, 0x5a, sizeof stranger.signing_key);
    struct event event = harness_inference(7, "m-large", 10, 1);
    return harness_frame(out, &stranger, frame_id, &event, 1);
}

static int connect_or_fail(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Keeps `count` connections busy with a keyless frame each every 400 ms, and
 * reconnects each one that the server closes. Runs in a child for at most
 * `seconds`.
 */
static void keyless_attack(uint16_t port, int count, int seconds)
{
    static uint8_t junk[1024];
    size_t size = keyless_frame(junk, 1);
    int fds[64];
    for (int i = 0; i < count; i++)
        fds[i] = connect_or_fail(port);
    uint8_t acks[4096];
    for (int round = 0; round < seconds * 1000 / 400; round++) {
        for (int i = 0; i < count; i++) {
            if (fds[i] >= 0 && send(fds[i], junk, size, MSG_NOSIGNAL) < 0) {
                close(fds[i]);
                fds[i] = -1;
            }
            while (fds[i] >= 0 && recv(fds[i], acks, sizeof acks, MSG_DONTWAIT) > 0)
                ;
            if (fds[i] < 0)
                fds[i] = connect_or_fail(port);
        }
        harness_sleep_ms(400);
    }
    _exit(0);
}

Test(slots, valid_sender_gets_in_during_keyless_attack)
{
    start_logged("16");
    pid_t attacker = fork();
    cr_assert_geq(attacker, 0);
    if (attacker == 0)
        keyless_attack(server.tcp_port, 16, 8);
    harness_sleep_ms(2000);

    /* Every slot is held by a keyless peer that is never idle; a valid sender still gets in. */
    for (int i = 0; i < 5; i++) {
        struct event event = harness_inference((uint8_t)(0x10 + i), "m-large", 10, 1);
        size_t size = harness_frame(frame, &tenant, 1 + (uint64_t)i, &event, 1);
        int fd = harness_connect(&server);
        harness_send_all(fd, frame, size);
        struct frame_ack ack;
        int got = harness_read_ack(fd, &ack);
        close(fd);
        cr_assert_eq(got, 0, "valid sender %d got no ack while keyless peers held the slots", i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        cr_assert_eq(ack.stored, 1);
        harness_sleep_ms(300);
    }
    kill(attacker, SIGKILL);
    waitpid(attacker, NULL, 0);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_gt(stats_counter("connections_evicted"), 0);
    cr_assert_gt(log_count("reason=no_frame_accepted"), 0);
}

Test(slots, rejects_in_row_close_connection)
{
    start_logged("16");
    static uint8_t block[64 * 1024];
    size_t size = keyless_frame(frame, 1);
    for (int i = 0; i < 20; i++)
        memcpy(block + (size_t)i * size, frame, size);
    int fd = harness_connect(&server);
    harness_send_all(fd, block, 20 * size);

    /* The first 16 frames get their reject acks, then the server closes the connection. */
    for (int i = 0; i < 16; i++) {
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "reject ack %d missing", i);
        cr_assert_eq(ack.status, FRAME_UNKNOWN_KEY);
    }
    struct frame_ack ack;
    cr_assert_neq(harness_read_ack(fd, &ack), 0, "a 17th frame was taken after 16 rejects");
    close(fd);

    /* A valid frame resets the count: 15 rejects, a valid frame, 15 rejects stay connected. */
    fd = harness_connect(&server);
    for (int round = 0; round < 2; round++) {
        harness_send_all(fd, block, 15 * size);
        struct event event = harness_inference((uint8_t)(0x20 + round), "m-large", 10, 1);
        size_t valid_size = harness_frame(frame, &tenant, 100, &event, 1);
        harness_send_all(fd, frame, valid_size);
        for (int i = 0; i < 16; i++)
            cr_assert_eq(harness_read_ack(fd, &ack), 0, "round %d ack %d missing", round, i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
    }
    close(fd);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_counter("connections_closed_rejects"), 1);
    cr_assert_eq(log_count("reason=rejects_in_row"), 1);
}

Test(slots, eviction_log_rate_limited)
{
    enum { LIMIT = 64 };
    start_logged("64");
    int first[LIMIT], second[LIMIT];
    for (int i = 0; i < LIMIT; i++)
        first[i] = harness_connect(&server);
    harness_sleep_ms(1200);
    /* Each new connection evicts one that has sent nothing for over a second. */
    for (int i = 0; i < LIMIT; i++)
        second[i] = harness_connect(&server);
    harness_sleep_ms(300);
    for (int i = 0; i < LIMIT; i++) {
        close(first[i]);
        close(second[i]);
    }
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_counter("connections_evicted"), LIMIT);
    int lines = log_count("connection evicted peer=");
    cr_assert_leq(lines, 20, "%d eviction lines in one burst", lines);
    cr_assert_eq(log_count("44 connection evicted lines suppressed"), 1,
                 "the suppressed evictions were not reported at the stop");
}

Test(slots, key_rejects_name_key_and_tenant)
{
    start_logged("16");
    char tenant_text[UUID_TEXT_SIZE], key_text[32];
    uuid_format(tenant.id, tenant_text);
    snprintf(key_text, sizeof key_text, "%016llx", (unsigned long long)tenant.key.key_id);
    struct event event = harness_inference(9, "m-large", 10, 1);

    /* bad_mac: the tenant's key id with another secret. */
    struct test_tenant forged = tenant;
    memset(forged.signing_key, 0x33, sizeof forged.signing_key);
    size_t size = harness_frame(frame, &forged, 1, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_BAD_MAC);

    /* wrong_tenant: the tenant's key, signed correctly, naming the other tenant. */
    struct test_tenant crossed = tenant;
    memcpy(crossed.id, other.id, UUID_SIZE);
    size = harness_frame(frame, &crossed, 2, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_WRONG_TENANT);

    size = keyless_frame(frame, 3);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_UNKNOWN_KEY);
    cr_assert_eq(harness_stop(&server), 0);

    char expected[256];
    snprintf(expected, sizeof expected, "does not match key %s of tenant %s", key_text,
             tenant_text);
    cr_assert_eq(log_count(expected), 1, "no bad_mac detail \"%s\"", expected);
    snprintf(expected, sizeof expected, "key %s belongs to tenant %s, not to", key_text,
             tenant_text);
    cr_assert_eq(log_count(expected), 1, "no wrong_tenant detail \"%s\"", expected);
    cr_assert_eq(log_count("detail=\"no key deadbeefcafe0001 in the ledger"), 1);
    cr_assert_eq(log_count("detail=\"\""), 0);
}
