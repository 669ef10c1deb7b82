/*
 * Test harness: a real meterd process on loopback with its own data
 * directory, plus helpers to create tenants and keys and to send frames.
 * Header-only so that each test program stays one file.
 */
#ifndef HM_TEST_METERD_HARNESS_H
#define HM_TEST_METERD_HARNESS_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"
#include "ingest/apikey.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

struct harness {
    char dir[256];
    pid_t pid;
    uint16_t tcp_port;
    uint16_t udp_port;
    const char *extra_args[8]; /* more meterd options, NULL-terminated */
};

struct test_tenant {
    uint8_t id[UUID_SIZE];
    struct apikey key;
    uint8_t signing_key[32];
};

static inline void harness_sleep_ms(long ms)
{
    struct timespec pause = { ms / 1000, (ms % 1000) * 1000000 };
    nanosleep(&pause, NULL);
}

static inline void harness_make_dir(struct harness *harness)
{
    snprintf(harness->dir, sizeof harness->dir, "/tmp/hm-test-meterd-XXXXXX");
    cr_assert_not_null(mkdtemp(harness->dir));
}

/*
 * Forks meterd after `delay_ms`, on the harness's ports when they are known
 * (a restart) or on free ports, and returns without waiting.
 */
static inline void harness_spawn(struct harness *harness, long delay_ms)
{
    char port_file[300], tcp[16], udp[16];
    snprintf(port_file, sizeof port_file, "%s/ports", harness->dir);
    snprintf(tcp, sizeof tcp, "%u", harness->tcp_port);
    snprintf(udp, sizeof udp, "%u", harness->udp_port);
    unlink(port_file);
    harness->pid = fork();
    cr_assert_geq(harness->pid, 0);
    if (harness->pid == 0) {
        if (delay_ms > 0)
            harness_sleep_ms(delay_ms);
        const char *args[24] = { "meterd",    "--data",      harness->dir, "--tcp-port",
                                 tcp,         "--udp-port",  udp,          "--port-file",
                                 port_file,   "--log-level", "warn" };
        size_t count = 11;
        for (size_t i = 0; i < 8 && harness->extra_args[i] != NULL; i++)
            args[count++] = harness->extra_args[i];
        args[count] = NULL;
        execv(HM_BINARY_DIR "/meterd", (char *const *)args);
        _exit(127);
    }
}

/* Starts meterd (see harness_spawn) and waits until it listens. */
static inline void harness_start(struct harness *harness)
{
    char port_file[300];
    snprintf(port_file, sizeof port_file, "%s/ports", harness->dir);
    harness_spawn(harness, 0);
    for (int i = 0; i < 500; i++) {
        FILE *file = fopen(port_file, "r");
        unsigned tcp = 0, udp = 0;
        if (file != NULL) {
            int parsed = fscanf(file, "tcp=%u udp=%u", &tcp, &udp);
            fclose(file);
            if (parsed == 2) {
                harness->tcp_port = (uint16_t)tcp;
                harness->udp_port = (uint16_t)udp;
                return;
            }
        }
        harness_sleep_ms(10);
    }
    cr_assert_fail("meterd did not start within 5 s");
}

/* Kills meterd with SIGKILL, as a crash or power loss would stop it, and reaps it. */
static inline void harness_kill(struct harness *harness)
{
    kill(harness->pid, SIGKILL);
    int status = 0;
    waitpid(harness->pid, &status, 0);
    harness->pid = 0;
}

/* Stops meterd with SIGTERM and returns its exit status. */
static inline int harness_stop(struct harness *harness)
{
    if (harness->pid <= 0)
        return -1;
    kill(harness->pid, SIGTERM);
    int status = 0;
    waitpid(harness->pid, &status, 0);
    harness->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static inline void harness_remove(struct harness *harness)
{
    if (harness->pid > 0)
        harness_stop(harness);
    char command[300];
    snprintf(command, sizeof command, "rm -rf %s", harness->dir);
    if (system(command) != 0)
        fprintf(stderr, "could not remove %s\n", harness->dir);
}

/* Creates a tenant with one key directly in the ledger (as meterctl does). */
static inline void harness_tenant(struct harness *harness, const char *name, struct test_tenant *out)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, harness->dir, NULL), HM_OK);
    struct tenant tenant = { .active = 1 };
    cr_assert_eq(uuid_random(tenant.id), HM_OK);
    snprintf(tenant.name, sizeof tenant.name, "%s", name);
    cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
    cr_assert_eq(apikey_generate(&out->key), HM_OK);
    struct key_record record = { .key_id = out->key.key_id, .status = KEY_ACTIVE };
    memcpy(record.tenant_id, tenant.id, UUID_SIZE);
    apikey_signing_key(out->key.secret, record.signing_key);
    apikey_secret_hash(out->key.secret, record.secret_hash);
    cr_assert_eq(ledger_key_put(ledger, &record), HM_OK);
    ledger_close(ledger);
    memcpy(out->id, tenant.id, UUID_SIZE);
    memcpy(out->signing_key, record.signing_key, 32);
}

static inline int harness_connect(struct harness *harness)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(harness->tcp_port) };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&address, sizeof address), 0);
    struct timeval timeout = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return fd;
}

static inline void harness_send_all(int fd, const uint8_t *bytes, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, bytes, size, MSG_NOSIGNAL);
        cr_assert_gt(sent, 0);
        bytes += sent;
        size -= (size_t)sent;
    }
}

/* Reads one ack; returns 0, or -1 when the connection closed or timed out first. */
static inline int harness_read_ack(int fd, struct frame_ack *ack)
{
    uint8_t bytes[ACK_SIZE];
    size_t have = 0;
    while (have < ACK_SIZE) {
        ssize_t got = recv(fd, bytes + have, ACK_SIZE - have, 0);
        if (got <= 0)
            return -1;
        have += (size_t)got;
    }
    cr_assert_eq(ack_decode(bytes, ack), HM_OK);
    return 0;
}

/* Builds and signs a frame of the given events for a tenant. Returns its size. */
static inline size_t harness_frame(uint8_t *buffer, const struct test_tenant *tenant, uint64_t frame_id,
                            const struct event *events, size_t count)
{
    struct frame_builder builder;
    frame_builder_start(&builder, buffer, FRAME_BODY_MAX);
    for (size_t i = 0; i < count; i++)
        cr_assert_eq(frame_builder_add(&builder, &events[i]), HM_OK);
    return frame_builder_seal(&builder, frame_id, tenant->key.key_id, tenant->id,
                              tenant->signing_key);
}

/* Sends one frame on a fresh connection and reads its ack. */
static inline struct frame_ack harness_send_frame(struct harness *harness, const uint8_t *frame,
                                           size_t size)
{
    int fd = harness_connect(harness);
    harness_send_all(fd, frame, size);
    struct frame_ack ack;
    cr_assert_eq(harness_read_ack(fd, &ack), 0, "no ack received");
    close(fd);
    return ack;
}

/*
 * Runs meterctl with arguments made from format and args on the ledger in
 * dir. Returns its exit status, and its stdout and stderr in out.
 */
static inline int harness_meterctl_v(const char *dir, char *out, size_t out_size,
                                     const char *format, va_list args)
{
    char arguments[2048], command[3072];
    vsnprintf(arguments, sizeof arguments, format, args);
    snprintf(command, sizeof command, "METER_DATA='%s' '%s/meterctl' %s 2>&1", dir,
             HM_BINARY_DIR, arguments);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = 0;
    size_t got;
    while (used + 1 < out_size && (got = fread(out + used, 1, out_size - used - 1, pipe)) > 0)
        used += got;
    out[used] = '\0';
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* 2024-06-10T12:00:00Z */
#define HARNESS_JUNE_US (INT64_C(1718020800) * 1000000)

static inline struct event harness_inference(uint8_t id_byte, const char *model, uint64_t input,
                                      uint64_t output)
{
    struct event event = { .kind = EVENT_INFERENCE, .timestamp_us = HARNESS_JUNE_US };
    memset(event.event_id, id_byte, UUID_SIZE);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "%s", model);
    event.u.inference.input_tokens = input;
    event.u.inference.output_tokens = output;
    return event;
}

/* Reads a rollup quantity of June 2024 from the ledger on disk. */
static inline uint64_t harness_quantity(struct harness *harness, const uint8_t tenant[UUID_SIZE],
                                 enum rollup_meter meter, const char *dimension)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, harness->dir, NULL), HM_OK);
    struct rollup_row *rows = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_rollups(ledger, tenant, 202406, &rows, &count), HM_OK);
    uint64_t quantity = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == meter && strcmp(rows[i].dimension, dimension) == 0)
            quantity = (uint64_t)rows[i].quantity;
    }
    free(rows);
    ledger_close(ledger);
    return quantity;
}

#endif
