/*
 * Replays, key scope and the event time window, against a real meterd on
 * loopback: a captured frame resent later, revocation and expiry while
 * meterd runs, keys used for another tenant, events outside the window,
 * and the command-line options behind them. Clock jumps use libfaketime
 * (Debian package faketime) preloaded into meterd.
 */
#include "meterd_harness.h"

#include "engine/lib/date.h"
#include "ingest/server.h"

#include <inttypes.h>
#include <jansson.h>
#include <lmdb.h>
#include <sys/stat.h>

#define FAKETIME_LIBRARY "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

static struct harness server;
static struct test_tenant tenant_a, tenant_b;
static uint8_t frame[FRAME_SIZE_MAX];

static int64_t now_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static void setup(void)
{
    harness_make_dir(&server);
    harness_tenant(&server, "tenant-a", &tenant_a);
    harness_tenant(&server, "tenant-b", &tenant_b);
}

static void teardown(void) { harness_remove(&server); }

/* Starts meterd with its clock shifted by `offset` (libfaketime syntax, as "+1h"). */
static void start_shifted(const char *offset)
{
    struct stat info;
    cr_assert_eq(stat(FAKETIME_LIBRARY, &info), 0,
                 "%s is missing: install the Debian package faketime (engine/install-deps.sh "
                 "does), which this test needs to move meterd's clock", FAKETIME_LIBRARY);
    setenv("LD_PRELOAD", FAKETIME_LIBRARY, 1);
    setenv("FAKETIME", offset, 1);
    setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
    setenv("FAKETIME_NO_CACHE", "1", 1);
    /* A sanitizer build wants its runtime first; the preloaded library comes before it. */
    setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
    harness_start(&server);
    unsetenv("LD_PRELOAD");
    unsetenv("FAKETIME");
    unsetenv("ASAN_OPTIONS");
}

/* Runs meterctl on the harness's ledger; returns its exit status and its output in `out`. */
static int meterctl(char *out, size_t out_size, const char *arguments)
{
    char command[1024];
    snprintf(command, sizeof command, "METER_DATA=%s %s/meterctl %s 2>&1", server.dir,
             HM_BINARY_DIR, arguments);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = fread(out, 1, out_size - 1, pipe);
    out[used] = '\0';
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs meterd with the given options, which must fail before it listens; returns its status. */
static int meterd_fails(char *out, size_t out_size, const char *arguments)
{
    char command[1024];
    snprintf(command, sizeof command, "%s/meterd --data %s %s 2>&1", HM_BINARY_DIR, server.dir,
             arguments);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = fread(out, 1, out_size - 1, pipe);
    out[used] = '\0';
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Reads frames.<status> from the stats file that meterd writes at stop. */
static uint64_t stats_frames(const char *status)
{
    char path[300];
    snprintf(path, sizeof path, "%s/meterd-stats.json", server.dir);
    json_error_t error;
    json_t *stats = json_load_file(path, 0, &error);
    cr_assert_not_null(stats, "cannot read %s: %s", path, error.text);
    json_t *value = json_object_get(json_object_get(stats, "frames"), status);
    cr_assert(json_is_integer(value), "frames.%s missing from %s", status, path);
    uint64_t count = (uint64_t)json_integer_value(value);
    json_decref(stats);
    return count;
}

static struct event inference_at(uint8_t id_byte, int64_t timestamp_us)
{
    struct event event = harness_inference(id_byte, "m-large", 100, 10);
    event.timestamp_us = timestamp_us;
    return event;
}

/* Sends a frame over UDP, which gets no ack. */
static void send_udp(const uint8_t *bytes, size_t size)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(server.udp_port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    cr_assert_eq(sendto(fd, bytes, size, 0, (struct sockaddr *)&address, sizeof address),
                 (ssize_t)size);
    close(fd);
}

TestSuite(replay, .init = setup, .fini = teardown, .timeout = 90);

Test(replay, frame_resent_hour_later_is_duplicate)
{
    harness_start(&server);
    struct event events[2] = { harness_inference(1, "m-large", 1000, 100),
                               harness_inference(2, "m-large", 500, 50) };
    size_t size = harness_frame(frame, &tenant_a, 41, events, 2);
    static uint8_t captured[FRAME_SIZE_MAX];
    memcpy(captured, frame, size);
    struct frame_ack ack = harness_send_frame(&server, captured, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 2);
    cr_assert_eq(harness_stop(&server), 0);

    start_shifted("+1h");
    /* Proof that meterd's clock moved: 40 minutes ahead of this clock is inside its skew. */
    struct event ahead = inference_at(3, now_us() + INT64_C(40) * 60 * 1000000);
    size_t ahead_size = harness_frame(frame, &tenant_b, 1, &ahead, 1);
    cr_assert_eq(harness_send_frame(&server, frame, ahead_size).status, FRAME_ACCEPTED,
                 "meterd under libfaketime +1h rejected an event 40 minutes ahead");

    ack = harness_send_frame(&server, captured, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.frame_id, 41);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.duplicates, 2);
    cr_assert_eq(ack.conflicts, 0);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_INPUT_TOKENS, "m-large"), 1500);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 2);
}

Test(replay, revoke_seen_by_next_frame)
{
    harness_start(&server);
    int fd = harness_connect(&server);
    struct event first = harness_inference(4, "m-large", 10, 1);
    size_t size = harness_frame(frame, &tenant_a, 1, &first, 1);
    harness_send_all(fd, frame, size);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);

    char key_id[17], output[4096];
    snprintf(key_id, sizeof key_id, "%016" PRIx64, tenant_a.key.key_id);
    char arguments[64];
    snprintf(arguments, sizeof arguments, "key revoke %s", key_id);
    cr_assert_eq(meterctl(output, sizeof output, arguments), 0, "%s", output);

    /* The same connection, right after meterctl returned: no grace period. */
    int64_t revoked_us = now_us();
    struct event second = harness_inference(5, "m-large", 10, 1);
    size = harness_frame(frame, &tenant_a, 2, &second, 1);
    harness_send_all(fd, frame, size);
    cr_assert_eq(harness_read_ack(fd, &ack), 0);
    int64_t rejected_us = now_us();
    cr_assert_eq(ack.status, FRAME_REVOKED_KEY);
    cr_assert_eq(ack.frame_id, 2);
    cr_assert_eq(ack.stored, 0);
    close(fd);
    cr_log_info("revoke to reject ack: %lld us", (long long)(rejected_us - revoked_us));
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 1);
}

Test(replay, key_added_expired_rejected_while_running)
{
    harness_start(&server);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    struct test_tenant late = tenant_a;
    cr_assert_eq(apikey_generate(&late.key), HM_OK);
    struct key_record record = { .key_id = late.key.key_id, .status = KEY_ACTIVE,
                                 .expires_s = now_us() / 1000000 - 1 };
    memcpy(record.tenant_id, tenant_a.id, UUID_SIZE);
    apikey_signing_key(late.key.secret, record.signing_key);
    apikey_secret_hash(late.key.secret, record.secret_hash);
    cr_assert_eq(ledger_key_put(ledger, &record), HM_OK);
    ledger_close(ledger);
    memcpy(late.signing_key, record.signing_key, 32);

    struct event event = harness_inference(6, "m-large", 10, 1);
    size_t size = harness_frame(frame, &late, 1, &event, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_EXPIRED_KEY);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 0);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_frames("expired_key"), 1);
}

Test(replay, key_expiry_reached_rejects)
{
    /* A key from meterctl that expires at the second midnight from now. */
    char expires[DATE_TEXT_SIZE], output[4096], arguments[512], keys_path[300];
    date_format((now_us() / 1000000 / 86400 + 2) * 86400, expires, sizeof expires);
    snprintf(keys_path, sizeof keys_path, "%s/keys.txt", server.dir);
    snprintf(arguments, sizeof arguments, "key create tenant-a --expires %s --keys-file %s",
             expires, keys_path);
    cr_assert_eq(meterctl(output, sizeof output, arguments), 0, "%s", output);
    FILE *file = fopen(keys_path, "r");
    cr_assert_not_null(file);
    char tenant_text[64], name[80], key_text[128];
    cr_assert_eq(fscanf(file, "%63s %79s %127s", tenant_text, name, key_text), 3);
    fclose(file);
    struct test_tenant expiring = tenant_a;
    cr_assert_eq(apikey_parse(key_text, &expiring.key), HM_OK);
    apikey_signing_key(expiring.key.secret, expiring.signing_key);

    cr_assert_eq(meterctl(output, sizeof output, "key list tenant-a"), 0, "%s", output);
    cr_assert_not_null(strstr(output, expires), "key list does not show the expiry: %s", output);

    harness_start(&server);
    struct event event = harness_inference(7, "m-large", 10, 1);
    size_t size = harness_frame(frame, &expiring, 1, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_ACCEPTED);
    cr_assert_eq(harness_stop(&server), 0);

    start_shifted("+3d");
    struct event later = harness_inference(8, "m-large", 10, 1);
    size = harness_frame(frame, &expiring, 2, &later, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_EXPIRED_KEY);
    cr_assert_eq(ack.stored, 0);
    /* The tenant's key without expiry still works at the same moment. */
    size = harness_frame(frame, &tenant_a, 3, &later, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_ACCEPTED);
}

Test(replay, other_tenant_never_written)
{
    harness_start(&server);
    /* A's key with B's tenant id, over TCP and over UDP. */
    struct test_tenant forged = tenant_a;
    memcpy(forged.id, tenant_b.id, UUID_SIZE);
    struct event event = harness_inference(9, "m-large", 10, 1);
    size_t size = harness_frame(frame, &forged, 1, &event, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_WRONG_TENANT);
    cr_assert_eq(ack.stored, 0);
    send_udp(frame, size);

    /* B's key id, B's tenant id, signed with A's signing key. */
    struct test_tenant borrowed = tenant_b;
    memcpy(borrowed.signing_key, tenant_a.signing_key, 32);
    size = harness_frame(frame, &borrowed, 2, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_BAD_MAC);

    /* A valid frame of A afterwards lands in A only, with the same event id. */
    size = harness_frame(frame, &tenant_a, 3, &event, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(harness_quantity(&server, tenant_b.id, ROLLUP_EVENTS, "inference"), 0);
    cr_assert_eq(harness_quantity(&server, tenant_a.id, ROLLUP_EVENTS, "inference"), 1);
    cr_assert_eq(stats_frames("wrong_tenant"), 2);
    cr_assert_eq(stats_frames("bad_mac"), 1);
}

TestSuite(window, .init = setup, .fini = teardown, .timeout = 60);

Test(window, old_event_rejected_with_index)
{
    server.extra_args[0] = "--max-event-age-days";
    server.extra_args[1] = "30";
    harness_start(&server);
    int64_t now = now_us();
    struct event events[3] = { inference_at(10, now - INT64_C(29) * 86400 * 1000000),
                               inference_at(11, now - INT64_C(31) * 86400 * 1000000),
                               inference_at(12, now) };
    size_t size = harness_frame(frame, &tenant_a, 5, events, 3);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_EVENT_TOO_OLD);
    cr_assert_eq(ack.detail, 1);
    cr_assert_eq(ack.frame_id, 5);
    cr_assert_eq(ack.stored, 0);

    /* Without the old event, the other two are stored. */
    events[1] = events[2];
    size = harness_frame(frame, &tenant_a, 6, events, 2);
    ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.stored, 2);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_frames("event_too_old"), 1);
    cr_assert_eq(stats_frames("accepted"), 1);
}

Test(window, future_event_rejected_beyond_skew)
{
    server.extra_args[0] = "--max-event-skew-seconds";
    server.extra_args[1] = "60";
    harness_start(&server);
    int64_t now = now_us();
    struct event ahead = inference_at(13, now + INT64_C(600) * 1000000);
    size_t size = harness_frame(frame, &tenant_a, 7, &ahead, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_EVENT_IN_FUTURE);
    cr_assert_eq(ack.detail, 0);
    cr_assert_eq(ack.stored, 0);

    struct event near = inference_at(14, now + INT64_C(20) * 1000000);
    size = harness_frame(frame, &tenant_a, 8, &near, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(stats_frames("event_in_future"), 1);
}

Test(window, defaults_take_2023_not_next_hour)
{
    harness_start(&server);
    /* 2023-11-16T18:15:46Z, in the bundled Azure traces. */
    struct event old = inference_at(15, INT64_C(1700158546) * 1000000);
    size_t size = harness_frame(frame, &tenant_a, 9, &old, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_ACCEPTED);

    struct event next_hour = inference_at(16, now_us() + INT64_C(3600) * 1000000);
    size = harness_frame(frame, &tenant_a, 10, &next_hour, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_EVENT_IN_FUTURE);

    cr_assert_eq(harness_stop(&server), 0);
    server.extra_args[0] = "--max-event-skew-seconds";
    server.extra_args[1] = "none";
    harness_start(&server);
    cr_assert_eq(harness_send_frame(&server, frame, size).status, FRAME_ACCEPTED,
                 "--max-event-skew-seconds none still rejected an event an hour ahead");
}

Test(window, malformed_outranks_window)
{
    server.extra_args[0] = "--max-event-age-days";
    server.extra_args[1] = "1";
    harness_start(&server);
    struct event events[2] = { inference_at(17, INT64_C(1700158546) * 1000000),
                               inference_at(18, now_us()) };
    size_t size = harness_frame(frame, &tenant_a, 11, events, 2);
    /* Make the second record's cached tokens exceed its input tokens, then sign again. */
    size_t second = FRAME_HEADER_SIZE + (size_t)(RECORD_HEADER_SIZE + 36 + 1 + 7);
    frame[second + RECORD_HEADER_SIZE + 16] = 0xff;
    unsigned int mac_size = 0;
    HMAC(EVP_sha256(), tenant_a.signing_key, 32, frame, size - FRAME_MAC_SIZE,
         frame + size - FRAME_MAC_SIZE, &mac_size);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_MALFORMED);
    cr_assert_eq(ack.detail, 1);
}

TestSuite(options, .init = setup, .fini = teardown, .timeout = 60);

Test(options, meterd_rejects_bad_window_values)
{
    static const char *const cases[][2] = {
        { "--max-event-age-days 0", "\"0\": expected an integer from 1 to 36500, or none" },
        { "--max-event-age-days 36501", "\"36501\"" },
        { "--max-event-age-days 7d", "\"7d\"" },
        { "--max-event-skew-seconds -5", "\"-5\": expected an integer from 1 to 31622400" },
        { "--max-event-skew-seconds ''", "\"\"" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char output[4096];
        cr_assert_eq(meterd_fails(output, sizeof output, cases[i][0]), 2, "%s", cases[i][0]);
        cr_assert_not_null(strstr(output, cases[i][1]), "%s printed: %s", cases[i][0], output);
    }
}

Test(options, key_create_rejects_bad_expiry)
{
    static const char *const cases[][2] = {
        { "--expires 2020-01-01", "the date has passed; give a later date" },
        { "--expires 2031-02-30", "expected a date that exists, as YYYY-MM-DD" },
        { "--expires ' 2031-1-5'", "\" 2031-1-5\"" },
        { "--expires 1970-01-01", "expected a date that exists" },
        { "--expires", "option --expires needs a value" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char output[4096], arguments[256];
        snprintf(arguments, sizeof arguments, "key create tenant-a %s", cases[i][0]);
        cr_assert_eq(meterctl(output, sizeof output, arguments), 1, "%s", cases[i][0]);
        cr_assert_not_null(strstr(output, cases[i][1]), "%s printed: %s", cases[i][0], output);
    }
    char output[4096];
    cr_assert_eq(meterctl(output, sizeof output, "key list tenant-a"), 0);
    /* Only the harness's key: a rejected command created none. */
    size_t lines = 0;
    for (const char *c = output; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 2, "%s", output);
}

/* ---- frame_verify alone: the exact boundaries of the window and of expiry ---- */

TestSuite(verify);

static struct ingest_key verify_key;

static int verify_lookup(void *context, uint64_t key_id, struct ingest_key *out)
{
    (void)context;
    (void)key_id;
    *out = verify_key;
    return HM_OK;
}

static enum frame_status verify_at(int64_t now, int64_t max_age_us, int64_t max_skew_us,
                                   int64_t timestamp_us, uint16_t *detail)
{
    struct test_tenant sender = { .key.key_id = 1 };
    memset(sender.id, 0x42, UUID_SIZE);
    memset(sender.signing_key, 0x24, 32);
    memcpy(verify_key.tenant_id, sender.id, UUID_SIZE);
    memcpy(verify_key.signing_key, sender.signing_key, 32);
    struct event event = inference_at(19, timestamp_us);
    size_t size = harness_frame(frame, &sender, 1, &event, 1);
    struct server_hooks hooks = { .key_lookup = verify_lookup };
    struct verify_policy policy = { now, max_age_us, max_skew_us };
    struct frame_header header;
    const char *reason = NULL;
    return frame_verify(frame, size, &hooks, &policy, &header, NULL, detail, &reason);
}

Test(verify, window_boundaries_exact)
{
    int64_t now = INT64_C(1719792000) * 1000000, age = INT64_C(86400) * 1000000;
    int64_t skew = INT64_C(900) * 1000000;
    uint16_t detail = 9;
    memset(&verify_key, 0, sizeof verify_key);
    cr_assert_eq(verify_at(now, age, skew, now - age, &detail), FRAME_ACCEPTED);
    cr_assert_eq(verify_at(now, age, skew, now - age - 1, &detail), FRAME_EVENT_TOO_OLD);
    cr_assert_eq(detail, 0);
    cr_assert_eq(verify_at(now, age, skew, now + skew, &detail), FRAME_ACCEPTED);
    cr_assert_eq(verify_at(now, age, skew, now + skew + 1, &detail), FRAME_EVENT_IN_FUTURE);
    cr_assert_eq(verify_at(now, 0, -1, 0, &detail), FRAME_ACCEPTED);
    cr_assert_eq(verify_at(now, 0, -1, EVENT_TIMESTAMP_END_US - 1, &detail), FRAME_ACCEPTED);
}

Test(verify, expiry_boundary_exact)
{
    int64_t expires_s = 1719792000;
    memset(&verify_key, 0, sizeof verify_key);
    verify_key.expires_s = expires_s;
    uint16_t detail = 0;
    int64_t at = expires_s * 1000000;
    cr_assert_eq(verify_at(at - 1, 0, -1, at - 1, &detail), FRAME_ACCEPTED);
    cr_assert_eq(verify_at(at, 0, -1, at - 1, &detail), FRAME_EXPIRED_KEY);
    verify_key.revoked = 1;
    cr_assert_eq(verify_at(at, 0, -1, at - 1, &detail), FRAME_REVOKED_KEY,
                 "a revoked key that also expired must report revoked_key");
}

/* ---- key records: the layout without expiry stays readable, and older builds can read it ---- */

TestSuite(key_record, .init = setup, .fini = teardown);

static size_t stored_key_size(uint64_t key_id)
{
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 64);
    cr_assert_eq(mdb_env_open(env, server.dir, MDB_RDONLY, 0600), 0);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, "keys", 0, &dbi), 0);
    uint8_t id[8];
    for (int i = 0; i < 8; i++)
        id[i] = (uint8_t)(key_id >> (56 - 8 * i));
    MDB_val key = { sizeof id, id }, value;
    cr_assert_eq(mdb_get(txn, dbi, &key, &value), 0);
    size_t size = value.mv_size;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return size;
}

Test(key_record, both_layouts_read)
{
    /* The harness key has no expiry: stored in the layout of older ledgers. */
    cr_assert_eq(stored_key_size(tenant_a.key.key_id), 112);
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    struct key_record record = { .key_id = 77, .status = KEY_ACTIVE, .created_s = 5,
                                 .expires_s = 1893456000 };
    memcpy(record.tenant_id, tenant_b.id, UUID_SIZE);
    cr_assert_eq(ledger_key_put(ledger, &record), HM_OK);
    struct key_record read;
    cr_assert_eq(ledger_key_get(ledger, 77, &read), HM_OK);
    cr_assert_eq(read.expires_s, 1893456000);
    cr_assert_eq(ledger_key_get(ledger, tenant_a.key.key_id, &read), HM_OK);
    cr_assert_eq(read.expires_s, 0);
    cr_assert_eq(read.status, KEY_ACTIVE);
    cr_assert_eq(ledger_key_revoke(ledger, 77, 9), HM_OK);
    cr_assert_eq(ledger_key_get(ledger, 77, &read), HM_OK);
    cr_assert_eq(read.expires_s, 1893456000, "revoking lost the expiry");
    struct key_record *keys = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_key_list(ledger, tenant_b.id, &keys, &count), HM_OK);
    cr_assert_eq(count, 2, "the list skipped a key of one layout");
    free(keys);
    ledger_close(ledger);
    cr_assert_eq(stored_key_size(77), 120);
}
