/*
 * The loopback socket ceiling: the same TCP stream of frames into a process
 * that only reads. It finds each frame's end from the header's body size and
 * responds with a 24-byte acknowledgement, which the sender needs to measure
 * latency; it verifies, decodes and stores nothing.
 */
#include "bench.h"

#include "common/status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SINK_BUFFER_SIZE (4 * 1024 * 1024)
#define SINK_ACKS_MAX 4096

static atomic_uint_fast64_t sink_frames, sink_events;
static volatile sig_atomic_t sink_stop;

static void on_stop(int signal_number)
{
    (void)signal_number;
    sink_stop = 1;
}

static int send_acks(int fd, const uint8_t *acks, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, acks, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return -1;
        acks += sent;
        size -= (size_t)sent;
    }
    return 0;
}

static void *sink_connection(void *argument)
{
    int fd = (int)(intptr_t)argument;
    uint8_t *buffer = malloc(SINK_BUFFER_SIZE);
    uint8_t *acks = malloc(SINK_ACKS_MAX * ACK_SIZE);
    size_t kept = 0;
    while (buffer != NULL && acks != NULL) {
        ssize_t got = recv(fd, buffer + kept, SINK_BUFFER_SIZE - kept, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        size_t size = kept + (size_t)got, start = 0, ack_count = 0;
        while (size - start >= FRAME_HEADER_SIZE && ack_count < SINK_ACKS_MAX) {
            const uint8_t *header = buffer + start;
            size_t body = (size_t)header[8] | (size_t)header[9] << 8 |
                          (size_t)header[10] << 16 | (size_t)header[11] << 24;
            size_t frame = FRAME_HEADER_SIZE + body + FRAME_MAC_SIZE;
            if (body > FRAME_BODY_MAX)
                goto done;
            if (size - start < frame)
                break;
            uint64_t frame_id = 0;
            for (int i = 7; i >= 0; i--)
                frame_id = frame_id << 8 | header[12 + i];
            uint16_t events = (uint16_t)(header[6] | header[7] << 8);
            struct frame_ack ack = { .status = FRAME_ACCEPTED, .frame_id = frame_id,
                                     .stored = events };
            ack_encode(&ack, acks + ack_count++ * ACK_SIZE);
            sink_frames++;
            sink_events += events;
            start += frame;
        }
        if (ack_count > 0 && send_acks(fd, acks, ack_count * ACK_SIZE) != 0)
            break;
        kept = size - start;
        memmove(buffer, buffer + start, kept);
    }
done:
    free(buffer);
    free(acks);
    close(fd);
    return NULL;
}

int sink_serve(const char *port_file, const char *count_file)
{
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof address;
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listen_fd, 64) != 0 ||
        getsockname(listen_fd, (struct sockaddr *)&address, &size) != 0) {
        fprintf(stderr, "meterbench: sink: cannot listen on 127.0.0.1: %s\n", strerror(errno));
        return 1;
    }
    FILE *file = fopen(port_file, "w");
    if (file == NULL || fprintf(file, "%u\n", ntohs(address.sin_port)) < 0 || fclose(file) != 0)
        return 1;
    while (!sink_stop) {
        struct pollfd poll_fd = { .fd = listen_fd, .events = POLLIN };
        if (poll(&poll_fd, 1, 100) <= 0)
            continue;
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_t thread;
        if (pthread_create(&thread, NULL, sink_connection, (void *)(intptr_t)fd) == 0)
            pthread_detach(thread);
        else
            close(fd);
    }
    close(listen_fd);
    file = fopen(count_file, "w");
    if (file == NULL)
        return 1;
    fprintf(file, "frames=%" PRIu64 " events=%" PRIu64 "\n", (uint64_t)sink_frames,
            (uint64_t)sink_events);
    return fclose(file) == 0 ? 0 : 1;
}

int peer_socket(struct bench *bench, struct peer_result *result)
{
    result->name = "socket-ceiling";
    result->durability = "not stored: the receiver only reads and acknowledges";
    char port_file[BENCH_PATH_MAX + 32], count_file[BENCH_PATH_MAX + 32];
    char log[BENCH_PATH_MAX + 32];
    snprintf(port_file, sizeof port_file, "%s/sink.port", bench->temp_dir);
    snprintf(count_file, sizeof count_file, "%s/sink.count", bench->temp_dir);
    snprintf(log, sizeof log, "%s/sink.log", bench->temp_dir);
    char *argv[] = { bench->self_path, "--sink-serve", port_file, count_file, NULL };
    pid_t pid = child_start(argv, log, NULL);
    unsigned port = 0;
    for (int waited = 0; pid > 0 && port == 0 && waited < 10000; waited += 10) {
        FILE *file = fopen(port_file, "r");
        if (file != NULL && fscanf(file, "%u", &port) != 1)
            port = 0;
        if (file != NULL)
            fclose(file);
        if (port == 0)
            usleep(10000);
    }
    if (port == 0) {
        child_stop(pid, 2000);
        result->failed = 1;
        snprintf(result->note, sizeof result->note, "the socket sink did not start");
        return HM_ERR_IO;
    }
    result->ran = 1;
    struct stream_options options = { .host = "127.0.0.1", .port = (uint16_t)port,
                                      .connections = bench->connections,
                                      .window = bench->window };
    struct phase phase;
    bench_closed_phase(bench, result->name, &phase);
    double cpu_before = proc_cpu_seconds(pid);
    int rc = drive_stream(&bench->pool, &phase, &options);
    result->cpu_s = proc_cpu_seconds(pid) - cpu_before;
    double max_eps = bench_record_closed(result, &phase);
    uint64_t sent = phase.events_done;
    phase_free(&phase);
    for (size_t i = 0; rc == HM_OK && i < bench->load_count && !bench_interrupted; i++) {
        if (bench_open_phase(bench, result->name, bench->loads[i], max_eps, &phase) != HM_OK)
            break;
        drive_stream(&bench->pool, &phase, &options);
        sent += phase.events_done;
        bench_record_open(result, &phase);
        phase_free(&phase);
    }
    result->rss_kib = proc_status_kib(pid, "VmHWM");
    child_stop(pid, 5000);
    FILE *file = fopen(count_file, "r");
    unsigned long long frames = 0, events = 0;
    if (file == NULL || fscanf(file, "frames=%llu events=%llu", &frames, &events) != 2)
        events = 0;
    if (file != NULL)
        fclose(file);
    result->stored = events;
    result->count_ok = rc == HM_OK && events == sent;
    snprintf(result->note, sizeof result->note, "received %llu events in %llu frames over all "
             "phases, %" PRIu64 " acknowledged; nothing stored, no rollups", events, frames, sent);
    if (rc != HM_OK) {
        result->failed = 1;
        snprintf(result->note, sizeof result->note, "the closed loop failed");
    }
    return rc;
}
