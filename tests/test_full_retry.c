/*
 * meterd while the ledger is full or slow: a retry of the held batch that
 * succeeds in the middle of parsing a connection's buffer, the counters and
 * log lines of the full state, and those of a commit that stalls.
 * METER_TEST_FULL_COMMITS makes the first commits find the map full, as a
 * full disk would; METER_TEST_SLOW_COMMITS makes them take long and succeed.
 */
#include "meterd_harness.h"

#include <errno.h>
#include <fcntl.h>

static struct harness server;
static struct test_tenant tenant;
static uint8_t frame[FRAME_SIZE_MAX];
static char log_path[300];
/* meterd's --frame-timeout-ms for the next start_with, or NULL for its default. */
static const char *frame_timeout_ms;

/* Starts meterd with its stderr in log_path and the test hook `variable` set to `value`. */
static void start_with(const char *variable, const char *value)
{
    harness_make_dir(&server);
    harness_tenant(&server, "tenant", &tenant);
    snprintf(log_path, sizeof log_path, "%s/meterd.log", server.dir);
    setenv(variable, value, 1);
    server.extra_args[0] = "--log-level";
    server.extra_args[1] = "info";
    server.extra_args[2] = NULL;
    if (frame_timeout_ms != NULL) {
        server.extra_args[2] = "--frame-timeout-ms";
        server.extra_args[3] = frame_timeout_ms;
        server.extra_args[4] = NULL;
    }
    int saved = dup(2);
    int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(log, 0);
    dup2(log, 2);
    harness_start(&server);
    dup2(saved, 2);
    close(saved);
    close(log);
    unsetenv(variable);
}

/* Starts meterd with its stderr in log_path and the given number of full commits. */
static void start_logged(const char *full_commits)
{
    start_with("METER_TEST_FULL_COMMITS", full_commits);
}

static void teardown(void) { harness_remove(&server); }

TestSuite(full_retry, .fini = teardown, .timeout = 120);

/* Counts the lines of meterd's log that contain `text`. */
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

static size_t small_frame(uint64_t frame_id, uint32_t id)
{
    struct event event = harness_inference(0, "m-large", 10, 1);
    memcpy(event.event_id, &id, sizeof id);
    memcpy(event.event_id + 8, &frame_id, sizeof frame_id);
    return harness_frame(frame, &tenant, frame_id, &event, 1);
}

/* A frame larger than meterd's initial 64 KiB receive buffer, so its arrival grows the buffer. */
static size_t large_frame(uint8_t *out, uint64_t frame_id)
{
    enum { EVENTS = 2000 };
    static struct event events[EVENTS];
    for (uint32_t i = 0; i < EVENTS; i++) {
        events[i] = harness_inference(0, "m-large-model-name-to-widen-the-record", 10, 1);
        memcpy(events[i].event_id, &i, sizeof i);
        memcpy(events[i].event_id + 8, &frame_id, sizeof frame_id);
    }
    size_t size = harness_frame(out, &tenant, frame_id, events, EVENTS);
    cr_assert_gt(size, 64 * 1024);
    return size;
}

static int64_t now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

enum { FILLERS = 40, TRIGGERS = 100, FRAMES_PER_FILLER = 440 };

/*
 * The batch holds 8,192 frames. While the first commit found the ledger full,
 * fillers fill the held batch, then triggers send one frame each, 3 ms apart,
 * around the retry 500 ms after the failure. The first trigger after the
 * retry is due makes the full batch commit from inside the parse of its
 * buffer. Its next frames must be read at the right place in the buffer,
 * including after a large frame grows the buffer.
 */
Test(full_retry, retry_inside_parse_keeps_stream)
{
    start_logged("1");
    int primary = harness_connect(&server);
    int fillers[FILLERS], triggers[TRIGGERS];
    for (int i = 0; i < FILLERS; i++)
        fillers[i] = harness_connect(&server);
    for (int i = 0; i < TRIGGERS; i++)
        triggers[i] = harness_connect(&server);
    harness_sleep_ms(300);

    /* The first commit finds the map full: the retry is due 500 ms later. */
    size_t size = small_frame(1, 1);
    harness_send_all(primary, frame, size);
    int64_t failed_ms = now_ms();
    harness_sleep_ms(50);

    static uint8_t block[FRAMES_PER_FILLER * 200];
    size_t block_size = 0;
    for (uint32_t i = 0; i < FRAMES_PER_FILLER; i++) {
        size = small_frame(100 + i, 100 + i);
        memcpy(block + block_size, frame, size);
        block_size += size;
    }
    cr_assert_leq(block_size, 64 * 1024, "a filler block must fit one receive");
    for (int i = 0; i < FILLERS; i++)
        send(fillers[i], block, block_size, MSG_NOSIGNAL);

    static uint8_t large[FRAME_SIZE_MAX];
    static uint8_t first[FRAME_SIZE_MAX];
    while (now_ms() < failed_ms + 440)
        harness_sleep_ms(1);
    for (int i = 0; i < TRIGGERS; i++) {
        /* A small frame, then the start of a large one that will not fit the 64 KiB buffer. */
        size_t small_size = small_frame(1000 + (uint64_t)i, 1000 + (uint32_t)i);
        memcpy(first, frame, small_size);
        size_t large_size = large_frame(large, 9000 + (uint64_t)i);
        memcpy(first + small_size, large, 2000);
        send(triggers[i], first, small_size + 2000, MSG_NOSIGNAL);
        (void)large_size;
        harness_sleep_ms(3);
    }
    harness_sleep_ms(500);

    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(primary, &ack), 0, "the held frame got no ack");
    cr_assert_eq(ack.status, FRAME_ACCEPTED);

    int served = 0;
    for (int i = 0; i < TRIGGERS; i++) {
        struct timeval timeout = { 1, 0 };
        setsockopt(triggers[i], SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        /* Triggers sent before the retry was due were closed: the held batch had no room. */
        if (harness_read_ack(triggers[i], &ack) != 0)
            continue;
        served++;
        cr_assert_eq(ack.frame_id, 1000 + (uint64_t)i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);

        size_t large_size = large_frame(large, 9000 + (uint64_t)i);
        harness_send_all(triggers[i], large + 2000, large_size - 2000);
        cr_assert_eq(harness_read_ack(triggers[i], &ack), 0, "trigger %d: no ack for the large "
                     "frame", i);
        cr_assert_eq(ack.frame_id, 9000 + (uint64_t)i, "trigger %d: ack for frame %llu after the "
                     "large frame", i, (unsigned long long)ack.frame_id);
        cr_assert_eq(ack.status, FRAME_ACCEPTED, "trigger %d: large frame status %d", i,
                     ack.status);

        size = small_frame(5000 + (uint64_t)i, 5000 + (uint32_t)i);
        harness_send_all(triggers[i], frame, size);
        cr_assert_eq(harness_read_ack(triggers[i], &ack), 0);
        cr_assert_eq(ack.frame_id, 5000 + (uint64_t)i, "trigger %d: ack for frame %llu, "
                     "expected %d", i, (unsigned long long)ack.frame_id, 5000 + i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        cr_assert_eq(ack.stored, 1);
    }
    cr_assert_gt(served, 0, "no trigger frame was served after the retry");
    cr_assert_eq(log_count("ledger full state ended"), 1);
    for (int i = 0; i < FILLERS; i++)
        close(fillers[i]);
    for (int i = 0; i < TRIGGERS; i++)
        close(triggers[i]);
    close(primary);
    cr_assert_eq(harness_stop(&server), 0);
}

/* Returns a counter from the stats file of the meterd under test. */
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

Test(full_retry, full_state_counts_and_logs)
{
    /* Four failed commits: retries at 0.5, 1 and 2 s fail, the one 4 s later succeeds. */
    start_logged("4");
    int fd = harness_connect(&server);
    size_t size = small_frame(1, 1);
    harness_send_all(fd, frame, size);
    harness_sleep_ms(2500);

    /* Held frames are neither accepted nor rejected yet, and no commit has succeeded. */
    cr_assert_eq(stats_counter("frames_received"), 1);
    cr_assert_eq(stats_counter("commits"), 0);
    cr_assert_geq(stats_counter("commit_failures"), 2);
    cr_assert_eq(stats_counter("store_full"), 1);
    cr_assert_gt(log_count("rejected=0 store_failed=0 held=1"), 0,
                 "the stats line counts the held frame as rejected");

    struct timeval timeout = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack after the ledger had room again");
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
    close(fd);
    cr_assert_eq(harness_stop(&server), 0);

    cr_assert_eq(stats_counter("commits"), 1);
    cr_assert_eq(stats_counter("commit_failures"), 4);
    /* One ledger error for the whole full state, however many retries failed. */
    cr_assert_eq(log_count("error ledger:"), 1, "ledger errors: %d", log_count("error ledger:"));
    cr_assert_eq(log_count("ledger full:"), 1);
}

/*
 * A commit that takes over a second, as when the disk stalls a sync. The
 * frame is still stored and acknowledged, the stats file counts the commit
 * in its bucket, and one warning names what to check.
 */
Test(full_retry, slow_commit_counted_and_logged)
{
    setenv("METER_TEST_COMMIT_DELAY_MS", "1100", 1);
    start_with("METER_TEST_SLOW_COMMITS", "1");
    unsetenv("METER_TEST_COMMIT_DELAY_MS");
    int fd = harness_connect(&server);
    struct timeval timeout = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    for (uint64_t i = 1; i <= 2; i++) {
        size_t size = small_frame(i, (uint32_t)i);
        harness_send_all(fd, frame, size);
        struct frame_ack ack;
        cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack for frame %llu",
                     (unsigned long long)i);
        cr_assert_eq(ack.status, FRAME_ACCEPTED);
        cr_assert_eq(ack.stored, 1);
    }
    close(fd);
    cr_assert_eq(harness_stop(&server), 0);

    cr_assert_eq(stats_counter("commits"), 2);
    cr_assert_geq(stats_counter("commit_us_max"), 1100000);
    /* Cumulative buckets: the fast commit is at or under 250 ms, the slow one only under +Inf. */
    cr_assert_eq(stats_counter("250"), 1);
    cr_assert_eq(stats_counter("1000"), 1);
    cr_assert_eq(stats_counter("+Inf"), 2);
    cr_assert_eq(log_count("slow commit: storing a batch took 11"), 1,
                 "slow commit lines: %d", log_count("slow commit:"));
}

/*
 * A frame that was half received when the ledger filled: reads pause for
 * about 1.5 s, longer than the frame timeout of 1 s. That pause is the
 * server's, so the sender still has the whole timeout to send the rest
 * once its first frame is acknowledged.
 */
Test(full_retry, frame_timeout_pauses_while_full)
{
    /* Two failed commits: the retry after 0.5 s fails, the one 1 s later succeeds. */
    frame_timeout_ms = "1000";
    start_logged("2");
    frame_timeout_ms = NULL;
    int fd = harness_connect(&server);
    struct timeval timeout = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    size_t size = small_frame(1, 1);
    harness_send_all(fd, frame, size);
    harness_sleep_ms(200);

    /* The first part of frame 2 arrives while the ledger is full. */
    enum { FIRST_PART = 60 };
    size = small_frame(2, 2);
    harness_send_all(fd, frame, FIRST_PART);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack after the ledger had room again");
    cr_assert_eq(ack.frame_id, 1);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);

    /* Over one timer tick of 250 ms, and well within the frame timeout. */
    harness_sleep_ms(400);
    harness_send_all(fd, frame + FIRST_PART, size - FIRST_PART);
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "frame 2 got no ack: the connection was "
                 "closed for its frame timeout");
    cr_assert_eq(ack.frame_id, 2);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
    close(fd);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_counter("connections_timed_out"), 0);
    cr_assert_eq(log_count("reason=frame_timeout"), 0);
}

/*
 * Another process holds the ledger's write lock for 1.2 s while a frame
 * arrives. The commit waits for it, and the slow commit's log line and the
 * counters name the wait for the lock, not the disk or the CPU.
 */
Test(full_retry, slow_commit_names_lock_wait)
{
    start_with("METER_TEST_FULL_COMMITS", "0");
    struct ledger *holder = NULL;
    cr_assert_eq(ledger_open(&holder, server.dir, NULL), HM_OK);
    struct ledger_txn *held = NULL;
    cr_assert_eq(ledger_begin(holder, &held), HM_OK);

    int fd = harness_connect(&server);
    struct timeval timeout = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    size_t size = small_frame(1, 1);
    harness_send_all(fd, frame, size);
    harness_sleep_ms(1200);
    ledger_abort(held);
    ledger_close(holder);

    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack once the lock was released");
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 1);
    close(fd);
    cr_assert_eq(harness_stop(&server), 0);

    cr_assert_geq(stats_counter("lock_us_max"), 1000000);
    cr_assert_leq(stats_counter("lock_us_max"), stats_counter("commit_us_max"));
    cr_assert_lt(stats_counter("write_us_max"), 1000000);
    cr_assert_eq(log_count("Another process held the ledger's write lock"), 1,
                 "slow commit lines: %d", log_count("slow commit:"));
}
