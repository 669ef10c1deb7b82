#include "client.h"

#include "common/status.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

_Static_assert(CLIENT_UDP_DATAGRAM_DEFAULT >= CLIENT_UDP_DATAGRAM_MIN,
               "the default datagram must hold the largest record");
_Static_assert(CLIENT_UDP_DATAGRAM_DEFAULT <= FRAME_UDP_SIZE_MAX,
               "the default datagram must fit a UDP payload");

/* Acknowledgements read per recv call. */
#define ACK_READ_BATCH 64

/* ---- frames ---- */

int client_frame_open(struct client_frame *frame, const uint8_t tenant_id[UUID_SIZE],
                      const struct apikey *key, uint32_t events_max, size_t body_limit)
{
    memset(frame, 0, sizeof *frame);
    if (events_max == 0 || events_max > FRAME_EVENTS_MAX || body_limit < RECORD_SIZE_MAX ||
        body_limit > FRAME_BODY_MAX)
        return HM_ERR_INVALID;
    /* frame_builder writes at most the header, body_limit bytes of records and the MAC. */
    frame->buffer_size = FRAME_HEADER_SIZE + body_limit + FRAME_MAC_SIZE;
    frame->buffer = malloc(frame->buffer_size);
    if (frame->buffer == NULL)
        return HM_ERR_NOMEM;
    frame->events_max = events_max;
    frame->key_id = key->key_id;
    memcpy(frame->tenant_id, tenant_id, UUID_SIZE);
    apikey_signing_key(key->secret, frame->signing_key);
    frame_builder_start(&frame->builder, frame->buffer, body_limit);
    return HM_OK;
}

int client_frame_add(struct client_frame *frame, const struct event *event)
{
    if (frame->builder.event_count >= frame->events_max)
        return HM_ERR_FULL;
    return frame_builder_add(&frame->builder, event);
}

uint16_t client_frame_event_count(const struct client_frame *frame)
{
    return frame->builder.event_count;
}

const uint8_t *client_frame_seal(struct client_frame *frame, uint64_t frame_id, size_t *size_out)
{
    assert(frame->builder.event_count > 0);
    frame->sealed_size = frame_builder_seal(&frame->builder, frame_id, frame->key_id,
                                            frame->tenant_id, frame->signing_key);
    *size_out = frame->sealed_size;
    return frame->buffer;
}

void client_frame_close(struct client_frame *frame)
{
    OPENSSL_cleanse(frame->signing_key, sizeof frame->signing_key);
    free(frame->buffer);
    frame->buffer = NULL;
    frame->buffer_size = 0;
}

/* ---- shared socket helpers ---- */

static uint64_t frame_id_of(const uint8_t *frame)
{
    uint64_t id = 0;
    for (int i = 7; i >= 0; i--)
        id = id << 8 | frame[12 + i];
    return id;
}

static uint16_t event_count_of(const uint8_t *frame)
{
    return (uint16_t)(frame[6] | frame[7] << 8);
}

/* Checks that `frame` starts with a valid header that declares exactly `size` bytes. */
static int frame_shape_valid(const uint8_t *frame, size_t size)
{
    if (size < FRAME_HEADER_SIZE + FRAME_MAC_SIZE)
        return 0;
    struct frame_header header;
    return frame_header_decode(frame, &header) == FRAME_ACCEPTED &&
           frame_total_size(&header) == size && header.event_count > 0;
}

static int resolve(const char *host, const char *port, int socktype, struct addrinfo **out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = socktype };
    int rc = getaddrinfo(host, port, &hints, out);
    if (rc == 0)
        return HM_OK;
    return rc == EAI_MEMORY ? HM_ERR_NOMEM : HM_ERR_NOT_FOUND;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec wait = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    while (nanosleep(&wait, &wait) != 0 && errno == EINTR)
        continue;
}

/* ---- TCP ---- */

struct slot {
    size_t size;
    uint64_t frame_id;
    uint16_t event_count;
};

struct client_tcp {
    struct addrinfo *addresses;
    int fd; /* -1 while disconnected */
    uint32_t window;
    size_t slot_size;
    uint8_t *slot_bytes; /* window * slot_size */
    struct slot *slots;
    uint32_t head;        /* oldest frame in flight */
    uint32_t count;       /* frames in flight */
    uint32_t transmitted; /* frames from head on fully written on this connection */
    size_t partial;       /* bytes written of the next frame */
    uint8_t ack_bytes[ACK_SIZE * ACK_READ_BATCH];
    size_t ack_used;
    uint32_t attempts_max;
    uint32_t attempts_used; /* connection attempts since the last final acknowledgement */
    uint32_t backoff_initial_ms;
    uint32_t backoff_max_ms;
    uint32_t ack_timeout_ms;
    client_ack_fn on_ack;
    void *on_ack_context;
    client_retry_fn on_retry;
    void *on_retry_context;
    enum client_retry_reason retry_reason; /* why the last RECONNECT_NEEDED was returned */
    uint64_t frame_id_last;
    int failed;
    struct client_stats stats;
};

/* Result of a pump round that needs a new connection (never returned to callers). */
#define RECONNECT_NEEDED 1

/* The errno of this thread's last failed connection attempt (client_connect_error). */
static _Thread_local int connect_error;

int client_connect_error(void)
{
    return connect_error;
}

/* Connects to the first address that accepts within the timeout; returns the fd or -1. */
static int connect_any(const struct addrinfo *addresses, uint32_t timeout_ms)
{
    for (const struct addrinfo *a = addresses; a != NULL; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        a->ai_protocol);
        if (fd < 0) {
            connect_error = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            connect_error = errno;
            close(fd);
            continue;
        }
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        int error = 0;
        socklen_t error_size = sizeof error;
        int ready = poll(&pfd, 1, (int)timeout_ms);
        if (ready != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_size) != 0 ||
            error != 0) {
            if (ready == 0)
                connect_error = ETIMEDOUT;
            else if (error != 0)
                connect_error = error;
            else
                connect_error = errno;
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return fd;
    }
    return -1;
}

static void disconnect(struct client_tcp *client)
{
    if (client->fd >= 0)
        close(client->fd);
    client->fd = -1;
    client->transmitted = 0;
    client->partial = 0;
    client->ack_used = 0;
}

/*
 * Drops the connection and connects again, waiting initial * 2^k ms (capped)
 * before attempt k. Frames in flight are then written again from the first.
 * Marks the client failed when the attempts run out.
 */
static void retry_report(struct client_tcp *client, uint32_t wait_ms)
{
    if (client->on_retry == NULL)
        return;
    struct client_retry retry = {
        .reason = client->retry_reason,
        .frames_in_flight = client->count,
        .attempt = client->attempts_used + 1,
        .attempts_max = client->attempts_max,
        .wait_ms = wait_ms,
        .ack_timeout_ms = client->ack_timeout_ms,
    };
    for (uint32_t i = 0; i < client->count; i++)
        retry.events_in_flight += client->slots[(client->head + i) % client->window].event_count;
    client->on_retry(client->on_retry_context, &retry);
}

static int reconnect(struct client_tcp *client)
{
    disconnect(client);
    while (client->attempts_used < client->attempts_max) {
        uint32_t shift = client->attempts_used < 31 ? client->attempts_used : 31;
        uint64_t wait_ms = (uint64_t)client->backoff_initial_ms << shift;
        if (wait_ms > client->backoff_max_ms)
            wait_ms = client->backoff_max_ms;
        retry_report(client, (uint32_t)wait_ms);
        client->retry_reason = CLIENT_RETRY_CONNECT;
        sleep_ms((uint32_t)wait_ms);
        client->attempts_used++;
        client->fd = connect_any(client->addresses, client->ack_timeout_ms);
        if (client->fd >= 0) {
            client->stats.reconnects++;
            client->stats.frames_resent += client->count;
            return HM_OK;
        }
    }
    client->failed = 1;
    return HM_ERR_IO;
}

static uint8_t *slot_frame(const struct client_tcp *client, uint32_t index)
{
    return client->slot_bytes + (size_t)(index % client->window) * client->slot_size;
}

/* Applies one acknowledgement to the oldest frame in flight. */
static int ack_apply(struct client_tcp *client, const uint8_t bytes[ACK_SIZE])
{
    struct frame_ack ack;
    client->retry_reason = CLIENT_RETRY_BAD_ACK;
    if (ack_decode(bytes, &ack) != HM_OK || client->transmitted == 0)
        return RECONNECT_NEEDED;
    struct slot *slot = &client->slots[client->head];
    if (ack.frame_id != slot->frame_id)
        return RECONNECT_NEEDED;
    if (ack.status == FRAME_STORE_FAILED) {
        client->stats.store_failures++;
        client->retry_reason = CLIENT_RETRY_STORE_FAILED;
        return RECONNECT_NEEDED;
    }

    struct client_stats *stats = &client->stats;
    stats->frames_acked++;
    if (ack.status == FRAME_ACCEPTED) {
        stats->events_stored += ack.stored;
        stats->events_duplicate += ack.duplicates;
        stats->events_conflict += ack.conflicts;
    } else {
        stats->frames_rejected++;
        stats->frames_rejected_by_status[ack.status]++;
        stats->events_rejected += slot->event_count;
    }
    if (client->on_ack != NULL)
        client->on_ack(client->on_ack_context, &ack, slot->event_count);

    client->head = (client->head + 1) % client->window;
    client->count--;
    client->transmitted--;
    client->attempts_used = 0;
    return HM_OK;
}

static int read_acks(struct client_tcp *client)
{
    for (;;) {
        ssize_t got = recv(client->fd, client->ack_bytes + client->ack_used,
                           sizeof client->ack_bytes - client->ack_used, MSG_DONTWAIT);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return HM_OK;
        if (got <= 0) {
            /* an error, or the server closed the connection */
            client->retry_reason = CLIENT_RETRY_CLOSED;
            return RECONNECT_NEEDED;
        }
        client->ack_used += (size_t)got;

        size_t whole = client->ack_used / ACK_SIZE * ACK_SIZE;
        for (size_t at = 0; at < whole; at += ACK_SIZE) {
            int rc = ack_apply(client, client->ack_bytes + at);
            if (rc != HM_OK)
                return rc;
        }
        memmove(client->ack_bytes, client->ack_bytes + whole, client->ack_used - whole);
        client->ack_used -= whole;
    }
}

static int write_frames(struct client_tcp *client)
{
    while (client->transmitted < client->count) {
        uint32_t index = (client->head + client->transmitted) % client->window;
        const struct slot *slot = &client->slots[index];
        ssize_t put = send(client->fd, slot_frame(client, index) + client->partial,
                           slot->size - client->partial, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return HM_OK;
        if (put < 0) {
            client->retry_reason = CLIENT_RETRY_CLOSED;
            return RECONNECT_NEEDED;
        }
        client->partial += (size_t)put;
        if (client->partial == slot->size) {
            client->transmitted++;
            client->partial = 0;
        }
    }
    return HM_OK;
}

/*
 * Makes what progress the socket allows within timeout_ms: writes pending
 * frames and reads acknowledgements. With a positive timeout, a round with
 * no readiness at all is a timeout and requests a reconnect.
 */
static int pump(struct client_tcp *client, int timeout_ms)
{
    client->retry_reason = CLIENT_RETRY_CLOSED;
    if (client->fd < 0)
        return RECONNECT_NEEDED;
    struct pollfd pfd = { .fd = client->fd, .events = POLLIN };
    if (client->transmitted < client->count)
        pfd.events |= POLLOUT;
    int ready = poll(&pfd, 1, timeout_ms);
    if (ready < 0)
        return errno == EINTR ? HM_OK : RECONNECT_NEEDED;
    client->retry_reason = CLIENT_RETRY_ACK_TIMEOUT;
    if (ready == 0)
        return timeout_ms > 0 ? RECONNECT_NEEDED : HM_OK;
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
        int rc = read_acks(client);
        if (rc != HM_OK)
            return rc;
    }
    if (pfd.revents & POLLOUT)
        return write_frames(client);
    return HM_OK;
}

/*
 * Pumps until `frames_in_flight_max` or fewer frames remain in flight,
 * reconnecting as needed. A wait without any socket progress for
 * ack_timeout_ms counts as a connection error.
 */
static int drain_to(struct client_tcp *client, uint32_t frames_in_flight_max)
{
    while (client->count > frames_in_flight_max) {
        int rc = pump(client, (int)client->ack_timeout_ms);
        if (rc != HM_OK && reconnect(client) != HM_OK)
            return HM_ERR_IO;
    }
    return HM_OK;
}

static int tcp_options_check(const struct client_tcp_options *options)
{
    if (options->host == NULL || options->port == NULL || options->window > CLIENT_WINDOW_MAX)
        return HM_ERR_INVALID;
    if (options->frame_size_max != 0 &&
        (options->frame_size_max < FRAME_HEADER_SIZE + RECORD_SIZE_MAX + FRAME_MAC_SIZE ||
         options->frame_size_max > FRAME_SIZE_MAX))
        return HM_ERR_INVALID;
    if (options->ack_timeout_ms > INT32_MAX)
        return HM_ERR_INVALID;
    return HM_OK;
}

static uint32_t or_default(uint32_t value, uint32_t fallback)
{
    return value != 0 ? value : fallback;
}

int client_tcp_open(const struct client_tcp_options *options, struct client_tcp **client_out)
{
    int rc = tcp_options_check(options);
    if (rc != HM_OK)
        return rc;
    struct client_tcp *client = calloc(1, sizeof *client);
    if (client == NULL)
        return HM_ERR_NOMEM;
    client->fd = -1;
    client->window = or_default(options->window, CLIENT_WINDOW_DEFAULT);
    client->slot_size = options->frame_size_max != 0 ? options->frame_size_max : FRAME_SIZE_MAX;
    client->attempts_max = or_default(options->reconnect_attempts,
                                      CLIENT_RECONNECT_ATTEMPTS_DEFAULT);
    client->backoff_initial_ms = or_default(options->backoff_initial_ms,
                                            CLIENT_BACKOFF_INITIAL_MS_DEFAULT);
    client->backoff_max_ms = or_default(options->backoff_max_ms, CLIENT_BACKOFF_MAX_MS_DEFAULT);
    client->ack_timeout_ms = or_default(options->ack_timeout_ms, CLIENT_ACK_TIMEOUT_MS_DEFAULT);
    client->on_ack = options->on_ack;
    client->on_ack_context = options->on_ack_context;
    client->on_retry = options->on_retry;
    client->on_retry_context = options->on_retry_context;

    rc = HM_ERR_NOMEM;
    client->slot_bytes = malloc((size_t)client->window * client->slot_size);
    client->slots = calloc(client->window, sizeof *client->slots);
    if (client->slot_bytes == NULL || client->slots == NULL)
        goto fail_free;
    rc = resolve(options->host, options->port, SOCK_STREAM, &client->addresses);
    if (rc != HM_OK)
        goto fail_free;

    /* The first attempt runs at once; the rest follow the reconnect backoff. */
    client->fd = connect_any(client->addresses, client->ack_timeout_ms);
    if (client->fd < 0) {
        client->attempts_used = 1;
        client->retry_reason = CLIENT_RETRY_CONNECT;
        if (reconnect(client) != HM_OK) {
            rc = HM_ERR_IO;
            goto fail_free;
        }
        client->stats.reconnects = 0;
    }
    client->attempts_used = 0;
    *client_out = client;
    return HM_OK;

fail_free:
    client_tcp_close(client);
    return rc;
}

int client_tcp_send(struct client_tcp *client, const uint8_t *frame, size_t size)
{
    if (client->failed)
        return HM_ERR_IO;
    if (size > client->slot_size || !frame_shape_valid(frame, size))
        return HM_ERR_INVALID;
    if (drain_to(client, client->window - 1) != HM_OK)
        return HM_ERR_IO;

    uint32_t index = (client->head + client->count) % client->window;
    memcpy(slot_frame(client, index), frame, size);
    client->slots[index] = (struct slot){
        .size = size,
        .frame_id = frame_id_of(frame),
        .event_count = event_count_of(frame),
    };
    client->count++;
    client->stats.frames_sent++;

    /* Write what the socket takes now, so frames leave while the caller builds the next. */
    while (pump(client, 0) != HM_OK) {
        if (reconnect(client) != HM_OK)
            return HM_ERR_IO;
    }
    return HM_OK;
}

uint64_t client_tcp_frame_id_next(struct client_tcp *client)
{
    return ++client->frame_id_last;
}

int client_tcp_send_frame(struct client_tcp *client, struct client_frame *frame)
{
    size_t size = 0;
    const uint8_t *bytes = client_frame_seal(frame, client_tcp_frame_id_next(client), &size);
    return client_tcp_send(client, bytes, size);
}

int client_tcp_flush(struct client_tcp *client)
{
    if (client->failed)
        return HM_ERR_IO;
    return drain_to(client, 0);
}

uint32_t client_tcp_unacked(const struct client_tcp *client)
{
    return client->count;
}

const struct client_stats *client_tcp_stats(const struct client_tcp *client)
{
    return &client->stats;
}

void client_tcp_close(struct client_tcp *client)
{
    if (client == NULL)
        return;
    if (client->fd >= 0)
        close(client->fd);
    if (client->addresses != NULL)
        freeaddrinfo(client->addresses);
    free(client->slot_bytes);
    free(client->slots);
    free(client);
}

/* ---- UDP ---- */

struct client_udp {
    int fd;
    size_t datagram_size_max;
    uint64_t frame_id_last;
    uint64_t datagrams_sent;
};

int client_udp_open(const struct client_udp_options *options, struct client_udp **client_out)
{
    size_t datagram_size_max = options->datagram_size_max != 0 ? options->datagram_size_max
                                                               : CLIENT_UDP_DATAGRAM_DEFAULT;
    if (options->host == NULL || options->port == NULL ||
        datagram_size_max < CLIENT_UDP_DATAGRAM_MIN || datagram_size_max > FRAME_UDP_SIZE_MAX)
        return HM_ERR_INVALID;
    struct addrinfo *addresses = NULL;
    int rc = resolve(options->host, options->port, SOCK_DGRAM, &addresses);
    if (rc != HM_OK)
        return rc;

    int fd = -1;
    for (const struct addrinfo *a = addresses; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(addresses);
    if (fd < 0)
        return HM_ERR_IO;

    struct client_udp *client = calloc(1, sizeof *client);
    if (client == NULL) {
        close(fd);
        return HM_ERR_NOMEM;
    }
    client->fd = fd;
    client->datagram_size_max = datagram_size_max;
    *client_out = client;
    return HM_OK;
}

size_t client_udp_body_limit(const struct client_udp *client)
{
    return client->datagram_size_max - FRAME_HEADER_SIZE - FRAME_MAC_SIZE;
}

int client_udp_send(struct client_udp *client, const uint8_t *frame, size_t size)
{
    if (size > client->datagram_size_max || !frame_shape_valid(frame, size))
        return HM_ERR_INVALID;
    for (;;) {
        ssize_t put = send(client->fd, frame, size, MSG_NOSIGNAL);
        if (put < 0 && errno == EINTR)
            continue;
        if (put != (ssize_t)size)
            return HM_ERR_IO;
        client->datagrams_sent++;
        return HM_OK;
    }
}

int client_udp_send_frame(struct client_udp *client, struct client_frame *frame)
{
    size_t size = 0;
    const uint8_t *bytes = client_frame_seal(frame, ++client->frame_id_last, &size);
    return client_udp_send(client, bytes, size);
}

uint64_t client_udp_datagrams_sent(const struct client_udp *client)
{
    return client->datagrams_sent;
}

void client_udp_close(struct client_udp *client)
{
    if (client == NULL)
        return;
    close(client->fd);
    free(client);
}
