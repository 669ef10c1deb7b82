/*
 * crash_load: a steady load of signed frames for the crash tests, sent the
 * way real senders do through the sender library. TCP senders resend every
 * unacknowledged frame after a reconnect and log the events of each accepted
 * ack; UDP senders send and forget.
 *
 * Each sender has a tenant from the keys file (round robin) and a number
 * (TCP senders first, then UDP). OUT/senders.txt lists "NUMBER tcp|udp
 * TENANT_ID"; OUT/acked-NUMBER.log gets one line "FIRST_SEQ COUNT" per
 * accepted ack, written with one write(2) after the ack was read, so a line
 * names only events that meterd had committed.
 */
#include "crash_events.h"

#include "common/status.h"
#include "ingest/client.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TCP_WINDOW 32
#define TENANTS_MAX 64

struct tenant_key {
    uint8_t id[UUID_SIZE];
    struct apikey key;
};

struct options {
    const char *host;
    const char *tcp_port;
    const char *udp_port;
    const char *out_dir;
    unsigned tcp_senders;
    unsigned udp_senders;
    unsigned events_per_frame;
    unsigned rate; /* events per second per sender */
    unsigned seconds;
};

struct sender {
    unsigned number;
    const struct options *options;
    const struct tenant_key *tenant;
    int log_fd;
    /* Frames in flight by frame id modulo the size: at most TCP_WINDOW are in flight. */
    struct {
        uint64_t frame_id;
        uint64_t first_seq;
        uint16_t count;
    } in_flight[2 * TCP_WINDOW];
    uint64_t acked_events;
    uint64_t rejected_frames;
    uint64_t conflicts;
    pthread_t thread;
};

static atomic_int stopping;

static void on_signal(int signal_number)
{
    (void)signal_number;
    atomic_store(&stopping, 1);
}

static int64_t monotonic_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* Sleeps until `deadline_us` on the monotonic clock, so that each sender keeps its rate. */
static void pace(int64_t deadline_us)
{
    int64_t wait = deadline_us - monotonic_us();
    if (wait <= 0)
        return;
    struct timespec pause = { wait / 1000000, (wait % 1000000) * 1000 };
    nanosleep(&pause, NULL);
}

static void on_ack(void *context, const struct frame_ack *ack, uint16_t event_count)
{
    struct sender *sender = context;
    size_t slot = ack->frame_id % (2 * TCP_WINDOW);
    if (sender->in_flight[slot].frame_id != ack->frame_id) {
        fprintf(stderr, "crash_load: sender %u: ack for unknown frame %llu\n", sender->number,
                (unsigned long long)ack->frame_id);
        return;
    }
    if (ack->status != FRAME_ACCEPTED) {
        sender->rejected_frames++;
        fprintf(stderr, "crash_load: sender %u: frame %llu rejected: %s\n", sender->number,
                (unsigned long long)ack->frame_id, frame_status_name(ack->status));
        return;
    }
    if (ack->conflicts > 0 || ack->stored + ack->duplicates != event_count) {
        sender->conflicts += ack->conflicts;
        fprintf(stderr, "crash_load: sender %u: frame %llu of %u events acknowledged with "
                "stored=%u duplicates=%u conflicts=%u\n", sender->number,
                (unsigned long long)ack->frame_id, event_count, ack->stored, ack->duplicates,
                ack->conflicts);
        return;
    }
    char line[64];
    int size = snprintf(line, sizeof line, "%llu %u\n",
                        (unsigned long long)sender->in_flight[slot].first_seq, event_count);
    if (write(sender->log_fd, line, (size_t)size) != size)
        fprintf(stderr, "crash_load: sender %u: cannot log an ack: %s\n", sender->number,
                strerror(errno));
    sender->acked_events += event_count;
}

static void *tcp_sender(void *context)
{
    struct sender *sender = context;
    const struct options *options = sender->options;
    /*
     * A restarted meterd listens again within about a second, so the client
     * keeps trying every 20 to 200 ms for as long as the test runs.
     */
    struct client_tcp_options tcp = {
        .host = options->host,
        .port = options->tcp_port,
        .window = TCP_WINDOW,
        .reconnect_attempts = 1000000,
        .backoff_initial_ms = 20,
        .backoff_max_ms = 200,
        .ack_timeout_ms = 10000,
        .on_ack = on_ack,
        .on_ack_context = sender,
    };
    struct client_tcp *client = NULL;
    struct client_frame frame;
    if (client_frame_open(&frame, sender->tenant->id, &sender->tenant->key,
                          options->events_per_frame, FRAME_BODY_MAX) != HM_OK ||
        client_tcp_open(&tcp, &client) != HM_OK) {
        fprintf(stderr, "crash_load: sender %u cannot start\n", sender->number);
        client_frame_close(&frame);
        return NULL;
    }
    int64_t interval_us = (int64_t)options->events_per_frame * 1000000 / options->rate;
    int64_t next_us = monotonic_us();
    uint64_t seq = 0;
    while (!atomic_load(&stopping)) {
        uint64_t first = seq;
        for (unsigned i = 0; i < options->events_per_frame; i++) {
            struct event event;
            crash_event(sender->number, seq++, &event);
            if (client_frame_add(&frame, &event) != HM_OK) {
                fprintf(stderr, "crash_load: event %llu does not encode\n",
                        (unsigned long long)(seq - 1));
                abort();
            }
        }
        uint64_t frame_id = client_tcp_frame_id_next(client);
        size_t slot = frame_id % (2 * TCP_WINDOW);
        sender->in_flight[slot].frame_id = frame_id;
        sender->in_flight[slot].first_seq = first;
        sender->in_flight[slot].count = (uint16_t)options->events_per_frame;
        size_t size = 0;
        const uint8_t *bytes = client_frame_seal(&frame, frame_id, &size);
        if (client_tcp_send(client, bytes, size) != HM_OK) {
            fprintf(stderr, "crash_load: sender %u gave up: %u frames not delivered\n",
                    sender->number, client_tcp_unacked(client));
            break;
        }
        next_us += interval_us;
        pace(next_us);
    }
    client_tcp_close(client);
    client_frame_close(&frame);
    return NULL;
}

static void *udp_sender(void *context)
{
    struct sender *sender = context;
    const struct options *options = sender->options;
    struct client_udp_options udp = { .host = options->host, .port = options->udp_port };
    struct client_udp *client = NULL;
    struct client_frame frame = { 0 };
    if (client_udp_open(&udp, &client) != HM_OK ||
        client_frame_open(&frame, sender->tenant->id, &sender->tenant->key,
                          options->events_per_frame, client_udp_body_limit(client)) != HM_OK) {
        fprintf(stderr, "crash_load: sender %u cannot start\n", sender->number);
        client_udp_close(client);
        return NULL;
    }
    int64_t interval_us = (int64_t)options->events_per_frame * 1000000 / options->rate;
    int64_t next_us = monotonic_us();
    uint64_t seq = 0;
    while (!atomic_load(&stopping)) {
        unsigned added = 0;
        while (added < options->events_per_frame) {
            struct event event;
            crash_event(sender->number, seq, &event);
            if (client_frame_add(&frame, &event) != HM_OK)
                break; /* the datagram is full: send what it holds */
            seq++;
            added++;
        }
        /* A datagram that finds meterd down is lost, as UDP allows. */
        client_udp_send_frame(client, &frame);
        next_us += interval_us;
        pace(next_us);
    }
    client_udp_close(client);
    client_frame_close(&frame);
    return NULL;
}

/* Reads "TENANT_ID NAME KEY" lines; returns the number of tenants, or -1. */
static int keys_read(const char *path, struct tenant_key *tenants, int max)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "crash_load: cannot open keys file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char id[64], name[128], key[128];
    int count = 0;
    while (count < max && fscanf(file, "%63s %127s %127s", id, name, key) == 3) {
        if (uuid_parse(id, tenants[count].id) != HM_OK ||
            apikey_parse(key, &tenants[count].key) != HM_OK) {
            fprintf(stderr, "crash_load: invalid line %d of %s\n", count + 1, path);
            fclose(file);
            return -1;
        }
        count++;
    }
    fclose(file);
    return count;
}

static int parse_count(const char *option, const char *text, unsigned min, unsigned max,
                       unsigned *out)
{
    char *end = NULL;
    unsigned long value = strtoul(text, &end, 10);
    if (end == text || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "crash_load: invalid %s \"%s\": expected an integer from %u to %u\n",
                option, text, min, max);
        return -1;
    }
    *out = (unsigned)value;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: crash_load --keys FILE --out DIR --tcp-port PORT --udp-port PORT\n"
            "                  [--host ADDRESS] [--tcp-senders N] [--udp-senders N]\n"
            "                  [--events-per-frame N] [--rate EVENTS_PER_S] [--seconds S]\n"
            "Sends until SIGTERM or for S seconds (0: until SIGTERM). The rate is per sender.\n");
}

int main(int argc, char **argv)
{
    struct options options = { .host = "127.0.0.1", .tcp_senders = 4, .udp_senders = 2,
                               .events_per_frame = 8, .rate = 1000 };
    const char *keys_path = NULL;
    static const struct option long_options[] = {
        { "keys", required_argument, NULL, 'k' },
        { "out", required_argument, NULL, 'o' },
        { "host", required_argument, NULL, 'H' },
        { "tcp-port", required_argument, NULL, 't' },
        { "udp-port", required_argument, NULL, 'u' },
        { "tcp-senders", required_argument, NULL, 'T' },
        { "udp-senders", required_argument, NULL, 'U' },
        { "events-per-frame", required_argument, NULL, 'e' },
        { "rate", required_argument, NULL, 'r' },
        { "seconds", required_argument, NULL, 's' },
        { NULL, 0, NULL, 0 },
    };
    int option;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        int rc = 0;
        switch (option) {
        case 'k': keys_path = optarg; break;
        case 'o': options.out_dir = optarg; break;
        case 'H': options.host = optarg; break;
        case 't': options.tcp_port = optarg; break;
        case 'u': options.udp_port = optarg; break;
        case 'T': rc = parse_count("--tcp-senders", optarg, 0, 128, &options.tcp_senders); break;
        case 'U': rc = parse_count("--udp-senders", optarg, 0, 128, &options.udp_senders); break;
        case 'e':
            rc = parse_count("--events-per-frame", optarg, 1, 1024, &options.events_per_frame);
            break;
        case 'r': rc = parse_count("--rate", optarg, 1, 10000000, &options.rate); break;
        case 's': rc = parse_count("--seconds", optarg, 0, 86400, &options.seconds); break;
        default: usage(); return 2;
        }
        if (rc != 0)
            return 2;
    }
    if (keys_path == NULL || options.out_dir == NULL || options.tcp_port == NULL ||
        options.udp_port == NULL) {
        usage();
        return 2;
    }
    static struct tenant_key tenants[TENANTS_MAX];
    int tenant_count = keys_read(keys_path, tenants, TENANTS_MAX);
    if (tenant_count <= 0)
        return 2;
    unsigned sender_count = options.tcp_senders + options.udp_senders;
    if (sender_count == 0 || sender_count > CRASH_SENDERS_MAX) {
        fprintf(stderr, "crash_load: 1 to %d senders expected, got %u\n", CRASH_SENDERS_MAX,
                sender_count);
        return 2;
    }

    struct sender *senders = calloc(sender_count, sizeof *senders);
    char path[4096];
    snprintf(path, sizeof path, "%s/senders.txt", options.out_dir);
    FILE *manifest = fopen(path, "w");
    if (senders == NULL || manifest == NULL) {
        fprintf(stderr, "crash_load: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    for (unsigned i = 0; i < sender_count; i++) {
        struct sender *sender = &senders[i];
        sender->number = i;
        sender->options = &options;
        sender->tenant = &tenants[i % (unsigned)tenant_count];
        sender->log_fd = -1;
        char tenant_text[UUID_TEXT_SIZE];
        uuid_format(sender->tenant->id, tenant_text);
        fprintf(manifest, "%u %s %s\n", i, i < options.tcp_senders ? "tcp" : "udp", tenant_text);
        if (i < options.tcp_senders) {
            snprintf(path, sizeof path, "%s/acked-%u.log", options.out_dir, i);
            sender->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (sender->log_fd < 0) {
                fprintf(stderr, "crash_load: cannot open %s: %s\n", path, strerror(errno));
                return 1;
            }
        }
    }
    if (fclose(manifest) != 0)
        return 1;

    struct sigaction action = { .sa_handler = on_signal };
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    for (unsigned i = 0; i < sender_count; i++)
        pthread_create(&senders[i].thread, NULL,
                       i < options.tcp_senders ? tcp_sender : udp_sender, &senders[i]);

    int64_t end_us = options.seconds ? monotonic_us() + (int64_t)options.seconds * 1000000 : 0;
    while (!atomic_load(&stopping) && (end_us == 0 || monotonic_us() < end_us))
        pace(monotonic_us() + 50000);
    atomic_store(&stopping, 1);

    /* A sender inside a reconnect wait finishes it first; wait a few seconds at most. */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    uint64_t acked = 0, rejected = 0, conflicts = 0;
    int stuck = 0;
    for (unsigned i = 0; i < sender_count; i++) {
        if (pthread_timedjoin_np(senders[i].thread, NULL, &deadline) != 0) {
            stuck++;
            continue;
        }
        acked += senders[i].acked_events;
        rejected += senders[i].rejected_frames;
        conflicts += senders[i].conflicts;
    }
    printf("crash_load: acked_events=%llu rejected_frames=%llu conflicts=%llu senders_stuck=%d\n",
           (unsigned long long)acked, (unsigned long long)rejected,
           (unsigned long long)conflicts, stuck);
    fflush(stdout);
    _exit(rejected || conflicts ? 1 : 0);
}
