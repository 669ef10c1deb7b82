#include "server.h"

#include "common/log.h"
#include "common/status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Submission queue entries; each connection has at most one receive and one send in flight. */
#define RING_ENTRIES 1024
/*
 * Receive buffers posted on the UDP socket at once: the datagrams that the
 * kernel can hand over while a commit blocks the loop (64 KiB each).
 */
#define UDP_BUFFERS 128
/*
 * Kernel receive buffer of the UDP socket: 32 MiB hold about 10,000
 * datagrams of 1,400 bytes (the kernel counts about twice each datagram's
 * size), a few milliseconds of a fast sender.
 */
#define UDP_RECEIVE_BUFFER (32 * 1024 * 1024)
/* Initial TCP receive buffer; it grows up to FRAME_SIZE_MAX for a large frame. */
#define RECV_BUFFER_INITIAL (64 * 1024)
/* Pending ack bytes above which the server stops reading from a connection until its acks drain. */
#define ACK_BACKLOG_MAX (64 * 1024)
/* Frames per batch and body bytes per batch: the group commit size limits. */
#define BATCH_FRAMES_MAX 8192
#define BATCH_ARENA_SIZE (32 * 1024 * 1024)
/* Timer tick for timeouts; stats are reported every STATS_TICKS ticks (2 s). */
#define TICK_MS 250
#define STATS_TICKS 8
/* While the stats file cannot be written, unchanged stats are logged every 15 reports (30 s). */
#define STATS_UNCHANGED_REPORTS 15
/* A connection idle this long may be closed to make room for a new one at connections_max. */
#define EVICT_IDLE_MS 1000
/*
 * A connection that has had no frame accepted may be closed to make room for
 * a new one once it is this old, whether or not it is idle. A sender with a
 * valid key has its first frame accepted well within a second, so only
 * senders without a valid key lose their slot this way.
 */
#define EVICT_UNAUTHENTICATED_MS 1000
/*
 * Slots beyond connections_max for connections that were evicted but whose
 * receive or send the kernel has not completed yet. They let the new
 * connection take its place at once, instead of being rejected until the
 * evicted connection's slot is free.
 */
#define EVICTED_SLOTS 16
/* Marks "no connection" where a connection index is expected. */
#define NO_CONNECTION UINT32_MAX
/*
 * While the ledger is full, the held batch is committed again after waits
 * that double from the first to the last. A freed disk is then used within
 * seconds, and a full map logs a few lines, not one per loop pass.
 */
#define FULL_RETRY_FIRST_MS 500
#define FULL_RETRY_MAX_MS 8000

_Static_assert(BATCH_ARENA_SIZE >= 4 * FRAME_BODY_MAX, "a batch must hold several large frames");

enum op {
    OP_ACCEPT = 1,
    OP_RECV = 2,
    OP_SEND = 3,
    OP_UDP_RECV = 4,
    OP_SIGNAL = 5,
    OP_TIMER = 6,
    OP_CANCEL = 7,
    OP_COMMITTED = 8,
};

/*
 * The commit thread: it runs the commit hook on one batch at a time, so that
 * the loop receives and verifies the next batch while the previous one is
 * written and synced. The loop hands a batch over under `lock`. When done,
 * the thread signals `finished` and writes to `event_fd`, whose read
 * completes in the ring and wakes the loop.
 */
struct committer {
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* the loop handed over a batch, or set `quit` */
    pthread_cond_t finished; /* the thread finished a batch */
    struct ingest_batch *batch; /* being committed; NULL when the thread is idle */
    int result;              /* of the last commit, valid while `done` is set */
    uint64_t duration_us;    /* of the last commit */
    int done;
    int quit;
    int event_fd;
    uint64_t event_count;    /* read buffer of the eventfd */
};

struct connection {
    int fd;
    uint32_t generation;
    int in_use;
    int closing;       /* no more frames; close once the acks are sent */
    int draining;      /* FIN sent after the last ack; reading until the peer closes */
    int aborted;       /* closed at once: no FIN, no draining */
    int ops_in_flight; /* the slot is reused only at zero */
    int64_t frame_started_ms; /* when the first byte of the frame now in `in` arrived */
    int64_t active_ms;        /* last byte received or ack queued */
    int64_t send_progress_ms; /* when the send in flight started or last moved bytes */
    int64_t drain_started_ms; /* start of draining, or of the last change of drain_unsent */
    int drain_unsent;         /* bytes the peer had not yet acknowledged at the last tick */
    int recv_armed;
    int send_armed;
    uint32_t frames_in_batch; /* frames waiting for the commit; their acks are still owed */
    int64_t opened_ms;        /* when the connection was accepted */
    int authenticated;        /* a frame passed the key checks (see rejects_in_row_count) */
    uint32_t rejects_in_row;  /* key or malformed rejects since the last such frame */
    uint8_t *in;
    size_t in_size;
    size_t in_capacity;
    /*
     * Acks go through two buffers that swap: new acks are appended to `out`,
     * while the kernel sends from `wire`, which is never resized or freed
     * while a send is in flight.
     */
    uint8_t *out;
    size_t out_size;
    size_t out_capacity;
    uint8_t *wire;
    size_t wire_size;
    size_t wire_capacity;
    size_t wire_sent; /* bytes of `wire` already sent */
    char peer[64];
};

struct udp_buffer {
    struct msghdr message;
    struct iovec iov;
    struct sockaddr_storage peer;
    /* SO_RXQ_OVFL: the socket's count of datagrams dropped for a full receive buffer. */
    uint8_t control[CMSG_SPACE(sizeof(uint32_t))];
    uint8_t data[FRAME_UDP_SIZE_MAX];
};

struct server {
    const struct server_options *options;
    const struct server_hooks *hooks;
    struct io_uring ring;
    int tcp_fd;
    int udp_fd;
    int signal_fd;
    struct signalfd_siginfo signal_info;
    struct __kernel_timespec timer;
    struct connection *connections;
    uint32_t connections_max;
    uint32_t slot_count; /* connections_max + EVICTED_SLOTS entries of `connections` */
    /*
     * The connection whose buffer connection_parse is reading, or
     * NO_CONNECTION. A commit during the parse (a full batch) must neither
     * post a receive into that buffer nor release it: on_recv does both once
     * the parse has consumed the frames.
     */
    uint32_t parsing;
    struct udp_buffer *udp_buffers;
    struct event *events; /* FRAME_EVENTS_MAX: the decoded events of the frame being verified */
    /*
     * Two batches. `filling` takes the frames that arrive. `committing` is
     * with the commit thread (in_flight), or held while the ledger is full,
     * or NULL. A batch goes to the thread as soon as the previous one is done.
     */
    struct ingest_batch batches[2];
    struct ingest_batch *filling;
    struct ingest_batch *committing;
    int in_flight;
    struct committer committer;
    struct server_stats stats;
    struct server_stats stats_reported;
    int stopping;
    int lookup_open;
    uint32_t ticks;
    int accept_paused; /* out of descriptors: accept again at the next tick */
    uint64_t ops_outstanding; /* submitted operations whose completion has not been seen */
    uint32_t frame_timeout_ms;
    uint32_t idle_timeout_ms;
    struct verify_policy policy; /* now_us is set for each frame */
    struct log_limit reject_log;
    struct log_limit commit_log;
    struct log_limit slow_commit_log;
    struct log_limit evict_log;
    int stats_file_failed; /* the last stats file write failed; it is tried again every report */
    uint32_t stats_reports_unchanged; /* reports without a log line since the last one */
    /*
     * Set when a commit found the ledger map or the disk full: the batch is
     * held unacknowledged, TCP reads pause, UDP frames are dropped and
     * counted, and the commit is tried again at full_retry_ms.
     */
    int full;
    int64_t full_since_ms;
    int64_t full_retry_ms;
    int64_t full_retry_wait_ms;
};

static int64_t monotonic_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static int64_t monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int64_t realtime_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static size_t acks_pending(const struct connection *connection)
{
    return connection->out_size + connection->wire_size - connection->wire_sent;
}

static void peer_format(const struct sockaddr_storage *peer, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        snprintf(out, size, "%s:%u", host, ntohs(v4->sin_port));
    } else if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        snprintf(out, size, "[%s]:%u", host, ntohs(v6->sin6_port));
    } else {
        snprintf(out, size, "?");
    }
}

static uint64_t user_data_of(enum op op, uint32_t index, uint32_t generation)
{
    return (uint64_t)op << 56 | (uint64_t)(index & 0xffffff) << 32 | generation;
}

static struct io_uring_sqe *sqe_get(struct server *server)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&server->ring);
    if (sqe == NULL) {
        io_uring_submit(&server->ring);
        sqe = io_uring_get_sqe(&server->ring);
    }
    /* A full ring after a submit means more operations than RING_ENTRIES: a sizing bug. */
    if (sqe == NULL)
        abort();
    server->ops_outstanding++;
    return sqe;
}

/* ---- Sockets ---- */

static int socket_bind(const char *host, uint16_t port, int type, uint16_t *bound_port)
{
    struct sockaddr_storage address = { 0 };
    socklen_t address_size;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        address_size = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        address_size = sizeof *v6;
    } else {
        log_error("server", "invalid listen address %s; give an IPv4 or IPv6 literal", host);
        return -1;
    }

    int fd = socket(address.ss_family, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (type == SOCK_DGRAM) {
        /*
         * The datagrams that arrive while the loop is busy wait here.
         * SO_RCVBUFFORCE (root, or CAP_NET_ADMIN) may pass net.core.rmem_max;
         * otherwise SO_RCVBUF asks for the same and gets at most rmem_max.
         */
        int buffer = UDP_RECEIVE_BUFFER;
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer) != 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on);
        int granted = 0;
        socklen_t granted_size = sizeof granted;
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &granted, &granted_size) == 0 &&
            granted < buffer)
            log_info("server", "udp receive buffer is %d bytes, below the %d asked for; raise "
                     "net.core.rmem_max or run meterd with CAP_NET_ADMIN", granted, buffer);
    }
    /*
     * A server killed a moment ago may still hold the port while the kernel
     * tears its io_uring down, so an address in use is retried for about 3 s.
     */
    int bind_rc = bind(fd, (struct sockaddr *)&address, address_size);
    for (int attempt = 0; bind_rc != 0 && errno == EADDRINUSE && port != 0 && attempt < 30;
         attempt++) {
        struct timespec pause = { 0, 100 * 1000 * 1000 };
        nanosleep(&pause, NULL);
        bind_rc = bind(fd, (struct sockaddr *)&address, address_size);
    }
    if (bind_rc != 0 || (type == SOCK_STREAM && listen(fd, 1024) != 0)) {
        log_error("server", "cannot listen on %s port %u: %s", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage bound = { 0 };
    socklen_t bound_size = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &bound_size);
    *bound_port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                   : ((struct sockaddr_in6 *)&bound)->sin6_port);
    return fd;
}

/* ---- Operations ---- */

static void arm_accept(struct server *server)
{
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_accept(sqe, server->tcp_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_ACCEPT, 0, 0));
}

static void arm_udp(struct server *server, uint32_t index)
{
    struct udp_buffer *buffer = &server->udp_buffers[index];
    memset(&buffer->message, 0, sizeof buffer->message);
    buffer->iov.iov_base = buffer->data;
    buffer->iov.iov_len = sizeof buffer->data;
    buffer->message.msg_iov = &buffer->iov;
    buffer->message.msg_iovlen = 1;
    buffer->message.msg_name = &buffer->peer;
    buffer->message.msg_namelen = sizeof buffer->peer;
    buffer->message.msg_control = buffer->control;
    buffer->message.msg_controllen = sizeof buffer->control;
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_recvmsg(sqe, server->udp_fd, &buffer->message, 0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_UDP_RECV, index, 0));
}

static void arm_signal(struct server *server)
{
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_read(sqe, server->signal_fd, &server->signal_info, sizeof server->signal_info,
                       0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_SIGNAL, 0, 0));
}

static void arm_timer(struct server *server)
{
    server->timer.tv_sec = 0;
    server->timer.tv_nsec = TICK_MS * 1000000L;
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_timeout(sqe, &server->timer, 0, 0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_TIMER, 0, 0));
}

static void arm_recv(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    /* The buffer of the connection being parsed is about to move: on_recv arms it afterwards. */
    if (index == server->parsing || connection->recv_armed || connection->closing ||
        server->stopping || server->full || acks_pending(connection) > ACK_BACKLOG_MAX)
        return;
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_recv(sqe, connection->fd, connection->in + connection->in_size,
                       connection->in_capacity - connection->in_size, 0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_RECV, index, connection->generation));
    connection->recv_armed = 1;
    connection->ops_in_flight++;
}

/* Reads and discards what the peer still sends after our FIN, until it closes. */
static void arm_drain(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    if (index == server->parsing || connection->recv_armed)
        return;
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_recv(sqe, connection->fd, connection->in, connection->in_capacity, 0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_RECV, index, connection->generation));
    connection->recv_armed = 1;
    connection->ops_in_flight++;
}

static void arm_send(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    if (connection->send_armed)
        return;
    if (connection->wire_sent == connection->wire_size) {
        if (connection->out_size == 0)
            return;
        uint8_t *buffer = connection->wire;
        size_t capacity = connection->wire_capacity;
        connection->wire = connection->out;
        connection->wire_capacity = connection->out_capacity;
        connection->wire_size = connection->out_size;
        connection->wire_sent = 0;
        connection->out = buffer;
        connection->out_capacity = capacity;
        connection->out_size = 0;
    }
    connection->send_progress_ms = monotonic_ms();
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_send(sqe, connection->fd, connection->wire + connection->wire_sent,
                       connection->wire_size - connection->wire_sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_SEND, index, connection->generation));
    connection->send_armed = 1;
    connection->ops_in_flight++;
}

/* ---- Connections ---- */

static void connection_release(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    /* connection_parse still reads `in`; on_recv finishes the close after the parse. */
    if (!connection->in_use || connection->ops_in_flight > 0 || index == server->parsing)
        return;
    if (connection->fd >= 0)
        close(connection->fd);
    free(connection->in);
    free(connection->out);
    free(connection->wire);
    uint32_t generation = connection->generation + 1;
    memset(connection, 0, sizeof *connection);
    connection->fd = -1;
    connection->generation = generation;
}

/*
 * Stops taking frames and closes gracefully: once every owed ack is sent,
 * sends a FIN and reads until the peer closes. Closing with unread input
 * would make the kernel send a reset, which discards acks not yet delivered.
 */
static void connection_shutdown(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    connection->closing = 1;
    /* During its parse, on_recv calls this again once the buffer is consumed. */
    if (index == server->parsing)
        return;
    if (connection->aborted) {
        connection_release(server, index);
        return;
    }
    if (connection->draining || acks_pending(connection) > 0 || connection->send_armed ||
        connection->frames_in_batch > 0)
        return;
    connection->draining = 1;
    connection->drain_started_ms = monotonic_ms();
    connection->drain_unsent = -1;
    connection->in_size = 0;
    shutdown(connection->fd, SHUT_WR);
    arm_drain(server, index);
}

/* Closes a connection at once, dropping what it has not sent or received. */
static void connection_abort(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    connection->closing = 1;
    connection->aborted = 1;
    connection->in_size = 0;
    shutdown(connection->fd, SHUT_RDWR);
    connection_release(server, index);
}

static int connection_idle(const struct connection *connection)
{
    return connection->in_use && !connection->closing && connection->in_size == 0 &&
           connection->frames_in_batch == 0 && acks_pending(connection) == 0 &&
           !connection->send_armed;
}

/*
 * Picks the connection to close at connections_max so that a new one can
 * take its slot. First choice: the oldest connection that has had no frame
 * accepted for EVICT_UNAUTHENTICATED_MS since it opened, so that peers
 * without a valid key cannot hold the slots by sending rejected frames.
 * Second: the connection idle the longest, when idle for EVICT_IDLE_MS.
 * Returns NO_CONNECTION when neither exists.
 */
static uint32_t eviction_pick(const struct server *server, int64_t now, const char **reason_out)
{
    uint32_t unauthenticated = NO_CONNECTION, idle = NO_CONNECTION;
    for (uint32_t i = 0; i < server->slot_count; i++) {
        const struct connection *connection = &server->connections[i];
        if (!connection->in_use || connection->closing)
            continue;
        if (!connection->authenticated && now - connection->opened_ms >= EVICT_UNAUTHENTICATED_MS &&
            (unauthenticated == NO_CONNECTION ||
             connection->opened_ms < server->connections[unauthenticated].opened_ms))
            unauthenticated = i;
        if (connection_idle(connection) && now - connection->active_ms >= EVICT_IDLE_MS &&
            (idle == NO_CONNECTION || connection->active_ms < server->connections[idle].active_ms))
            idle = i;
    }
    if (unauthenticated != NO_CONNECTION) {
        *reason_out = "no_frame_accepted";
        return unauthenticated;
    }
    *reason_out = "idle";
    return idle;
}

/*
 * At connections_max: closes the connection that eviction_pick chooses, so
 * that the new connection gets its slot. Returns 1 when one was closed.
 */
static int evict_one(struct server *server)
{
    int64_t now = monotonic_ms();
    const char *reason = NULL;
    uint32_t index = eviction_pick(server, now, &reason);
    if (index == NO_CONNECTION)
        return 0;
    struct connection *connection = &server->connections[index];
    server->stats.connections_evicted++;
    uint64_t suppressed = 0;
    if (log_limit_pass(&server->evict_log, &suppressed))
        log_info("server", "connection evicted peer=%s reason=%s age_ms=%lld idle_ms=%lld: "
                 "connections_max reached (suppressed=%llu)", connection->peer, reason,
                 (long long)(now - connection->opened_ms),
                 (long long)(now - connection->active_ms), (unsigned long long)suppressed);
    connection_abort(server, index);
    return 1;
}

/* Closes connections whose frame is too slow to arrive or that were idle too long. */
static void sweep_timeouts(struct server *server)
{
    int64_t now = monotonic_ms();
    for (uint32_t i = 0; i < server->slot_count; i++) {
        struct connection *connection = &server->connections[i];
        if (!connection->in_use || connection->aborted)
            continue;
        if (connection->draining) {
            /* The clock restarts while the peer still takes acks from the send queue. */
            int unsent = 0;
            ioctl(connection->fd, SIOCOUTQ, &unsent);
            if (unsent != connection->drain_unsent) {
                connection->drain_unsent = unsent;
                connection->drain_started_ms = now;
            }
            /* Giving up: SHUT_RD ends the read without a reset, since nothing is left unread. */
            if (now - connection->drain_started_ms > (int64_t)server->frame_timeout_ms) {
                server->stats.connections_timed_out++;
                uint64_t suppressed = 0;
                if (log_limit_pass(&server->reject_log, &suppressed))
                    log_warn("server", "connection closed peer=%s reason=close_timeout: the peer "
                             "neither took its last acks nor closed within %u ms "
                             "(suppressed=%llu)", connection->peer, server->frame_timeout_ms,
                             (unsigned long long)suppressed);
                connection->aborted = 1;
                shutdown(connection->fd, SHUT_RD);
            }
            continue;
        }
        if (connection->send_armed &&
            now - connection->send_progress_ms > (int64_t)server->frame_timeout_ms) {
            server->stats.connections_timed_out++;
            uint64_t suppressed = 0;
            if (log_limit_pass(&server->reject_log, &suppressed))
                log_warn("server", "connection closed peer=%s reason=ack_timeout acks=%zu: the "
                         "peer read no ack for %u ms (suppressed=%llu)",
                         connection->peer, acks_pending(connection), server->frame_timeout_ms,
                         (unsigned long long)suppressed);
            connection_abort(server, i);
            continue;
        }
        if (connection->closing)
            continue;
        /*
         * Only while reading: a paused read (too many acks owed, or the ledger
         * full) is the server's own doing. The frame's clock restarts at every
         * tick of the pause, so the sender gets the whole timeout once reads resume.
         */
        if (connection->in_size > 0 && !connection->recv_armed)
            connection->frame_started_ms = now;
        if (connection->in_size > 0 && connection->recv_armed &&
            now - connection->frame_started_ms > (int64_t)server->frame_timeout_ms) {
            server->stats.connections_timed_out++;
            server->stats.frames_received++;
            server->stats.frames_by_status[FRAME_TRUNCATED]++;
            uint64_t suppressed = 0;
            if (log_limit_pass(&server->reject_log, &suppressed))
                log_warn("server", "connection closed peer=%s reason=frame_timeout bytes=%zu: "
                         "a frame did not arrive whole within %u ms (suppressed=%llu)",
                         connection->peer, connection->in_size, server->frame_timeout_ms,
                         (unsigned long long)suppressed);
            connection_abort(server, i);
        } else if (connection_idle(connection) &&
                   now - connection->active_ms > (int64_t)server->idle_timeout_ms) {
            server->stats.connections_timed_out++;
            log_debug("server", "connection closed peer=%s reason=idle", connection->peer);
            connection_abort(server, i);
        }
    }
}

static void on_accept(struct server *server, int fd)
{
    /* Out of descriptors or memory: accepting again at once would spin, so wait a tick. */
    int exhausted = fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM;
    if (exhausted)
        server->accept_paused = 1;
    else if (!server->stopping)
        arm_accept(server);
    if (fd < 0) {
        uint64_t suppressed = 0;
        if (log_limit_pass(&server->reject_log, &suppressed))
            log_warn("server", "accept failed: %s%s (suppressed=%llu)", strerror(-fd),
                     exhausted ? "; raise the open file limit (ulimit -n) or lower "
                                 "--max-connections" : "",
                     (unsigned long long)suppressed);
        return;
    }
    if (server->stopping) {
        close(fd);
        return;
    }
    /*
     * Evicted connections keep their slot until the kernel completes their
     * operations, so only the connections not yet aborted count against the
     * limit, and the new connection takes one of the EVICTED_SLOTS meanwhile.
     */
    uint32_t open_count = 0;
    for (uint32_t i = 0; i < server->slot_count; i++)
        open_count += server->connections[i].in_use && !server->connections[i].aborted;
    uint32_t index = NO_CONNECTION;
    if (open_count < server->connections_max || evict_one(server)) {
        index = 0;
        while (index < server->slot_count && server->connections[index].in_use)
            index++;
        if (index == server->slot_count)
            index = NO_CONNECTION;
    }
    if (index == NO_CONNECTION) {
        server->stats.connections_rejected++;
        uint64_t suppressed = 0;
        if (log_limit_pass(&server->reject_log, &suppressed))
            log_warn("server", "connection rejected: %u connections open; raise --max-connections "
                     "(suppressed=%llu)", server->connections_max, (unsigned long long)suppressed);
        close(fd);
        return;
    }

    struct connection *connection = &server->connections[index];
    connection->in = malloc(RECV_BUFFER_INITIAL);
    connection->out = malloc(4096);
    connection->wire = malloc(4096);
    if (connection->in == NULL || connection->out == NULL || connection->wire == NULL) {
        free(connection->in);
        free(connection->out);
        free(connection->wire);
        connection->in = connection->out = connection->wire = NULL;
        log_error("server", "out of memory for a new connection");
        close(fd);
        return;
    }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    struct sockaddr_storage peer;
    socklen_t peer_size = sizeof peer;
    connection->peer[0] = '\0';
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_size) == 0)
        peer_format(&peer, connection->peer, sizeof connection->peer);
    connection->fd = fd;
    connection->in_use = 1;
    connection->active_ms = monotonic_ms();
    connection->opened_ms = connection->active_ms;
    connection->in_capacity = RECV_BUFFER_INITIAL;
    connection->out_capacity = 4096;
    connection->wire_capacity = 4096;
    server->stats.connections_accepted++;
    log_debug("server", "connection opened peer=%s slot=%u", connection->peer, index);
    arm_recv(server, index);
}

/* ---- Batches ---- */

/*
 * Describes a reject for the frame's key, naming the key id and the tenant
 * that the ledger has for it (never the key's secret). Returns 0 for other
 * statuses.
 */
static int key_reject_describe(struct server *server, const struct frame_header *header,
                               enum frame_status status, char *out, size_t size)
{
    unsigned long long key_id = (unsigned long long)header->key_id;
    if (status == FRAME_UNKNOWN_KEY) {
        snprintf(out, size, "no key %016llx in the ledger: the sender's key was never created "
                 "in this data directory", key_id);
        return 1;
    }
    if (status != FRAME_BAD_MAC && status != FRAME_WRONG_TENANT &&
        status != FRAME_REVOKED_KEY && status != FRAME_EXPIRED_KEY)
        return 0;
    /* The lookup transaction of frame_verify is still open, so this reads the same state. */
    struct ingest_key key = { 0 };
    char key_tenant[UUID_TEXT_SIZE] = "unknown";
    if (server->lookup_open &&
        server->hooks->key_lookup(server->hooks->context, header->key_id, &key) == HM_OK)
        uuid_format(key.tenant_id, key_tenant);
    explicit_bzero(key.signing_key, sizeof key.signing_key);
    if (status == FRAME_BAD_MAC)
        snprintf(out, size, "the MAC does not match key %016llx of tenant %s: the sender signs "
                 "with another secret or altered the frame", key_id, key_tenant);
    else if (status == FRAME_WRONG_TENANT)
        snprintf(out, size, "key %016llx belongs to tenant %s, not to the frame's tenant",
                 key_id, key_tenant);
    else
        snprintf(out, size, "key %016llx of tenant %s is %s", key_id, key_tenant,
                 status == FRAME_REVOKED_KEY ? "revoked" : "expired");
    return 1;
}

static void log_reject(struct server *server, const char *transport, const char *peer,
                       const struct frame_header *header, enum frame_status status,
                       uint16_t detail, const char *reason)
{
    uint64_t suppressed = 0;
    if (!log_limit_pass(&server->reject_log, &suppressed))
        return;
    char tenant[UUID_TEXT_SIZE];
    uuid_format(header->tenant_id, tenant);
    char key_detail[256];
    if (reason == NULL && key_reject_describe(server, header, status, key_detail,
                                              sizeof key_detail))
        reason = key_detail;
    log_warn("server",
             "frame rejected reason=%s transport=%s peer=%s frame_id=%llu key_id=%016llx "
             "tenant=%s event_index=%u detail=\"%s\" suppressed=%llu",
             frame_status_name(status), transport, peer, (unsigned long long)header->frame_id,
             (unsigned long long)header->key_id, tenant, detail, reason ? reason : "",
             (unsigned long long)suppressed);
}

static void commit_batch_full(struct server *server);

/*
 * Tracks whether a connection's frames pass the key checks. The first frame
 * signed with a valid key (accepted, or rejected only for an event's time)
 * makes the connection keep its slot at connections_max (see eviction_pick).
 * After SERVER_REJECTS_IN_ROW_MAX other rejects in a row, the connection
 * stops taking frames and closes once their reject acks are sent, so that a
 * peer without a valid key cannot hold a slot by sending rejected frames.
 */
static void rejects_in_row_count(struct server *server, uint32_t index, enum frame_status status)
{
    struct connection *connection = &server->connections[index];
    /* A failed key lookup is the server's fault, not the sender's. */
    if (status == FRAME_STORE_FAILED)
        return;
    if (status == FRAME_ACCEPTED || status == FRAME_EVENT_TOO_OLD ||
        status == FRAME_EVENT_IN_FUTURE) {
        connection->authenticated = 1;
        connection->rejects_in_row = 0;
        return;
    }
    if (++connection->rejects_in_row < SERVER_REJECTS_IN_ROW_MAX)
        return;
    server->stats.connections_closed_rejects++;
    uint64_t suppressed = 0;
    if (log_limit_pass(&server->reject_log, &suppressed))
        log_warn("server", "connection closed peer=%s reason=rejects_in_row rejects=%u "
                 "authenticated=%d: every one of its last %u frames was rejected; the frame "
                 "rejected lines above name the cause (suppressed=%llu)", connection->peer,
                 connection->rejects_in_row, connection->authenticated,
                 SERVER_REJECTS_IN_ROW_MAX, (unsigned long long)suppressed);
    /* connection_parse stops at `closing`; on_recv closes once the acks are sent. */
    connection->closing = 1;
}

/*
 * Returns a new entry at the end of the batch, committing the batch first
 * when it has no room. Returns NULL when it still has no room because the
 * ledger is full and the batch is held.
 */
static int batch_has_room(const struct ingest_batch *batch, size_t body_size)
{
    return batch->entry_count < batch->entry_capacity &&
           batch->arena_size + body_size <= batch->arena_capacity;
}

static struct batch_entry *batch_entry_add(struct server *server, size_t body_size)
{
    if (!batch_has_room(server->filling, body_size))
        commit_batch_full(server);
    struct ingest_batch *batch = server->filling;
    if (!batch_has_room(batch, body_size))
        return NULL;
    struct batch_entry *entry = &batch->entries[batch->entry_count++];
    memset(entry, 0, sizeof *entry);
    entry->connection = -1;
    return entry;
}

static void lookup_begin(struct server *server)
{
    if (server->lookup_open)
        return;
    server->lookup_open = server->hooks->lookup_begin(server->hooks->context) == HM_OK;
}

/* Verifies one complete frame and queues it, accepted or rejected, in the batch. */
static void frame_receive(struct server *server, int32_t connection_index, const uint8_t *frame,
                          size_t frame_size, const char *peer)
{
    /* Nothing acknowledges a UDP frame, so while the ledger is full it is dropped and counted. */
    if (server->full && connection_index < 0) {
        server->stats.udp_dropped_full++;
        return;
    }
    server->stats.frames_received++;
    struct frame_header header = { 0 };
    uint16_t detail = 0;
    const char *reason = NULL;
    lookup_begin(server);
    server->policy.now_us = realtime_us();
    enum frame_status status = server->lookup_open
                                   ? frame_verify(frame, frame_size, server->hooks,
                                                  &server->policy, &header, server->events,
                                                  &detail, &reason)
                                   : FRAME_STORE_FAILED;
    size_t body_size = status == FRAME_ACCEPTED ? header.body_size : 0;

    struct batch_entry *entry = batch_entry_add(server, body_size);
    if (entry == NULL) {
        /*
         * The ledger is full and the held batch has no room. The frame gets
         * no ack: a UDP frame is counted as dropped, and a TCP connection is
         * closed, so that its sender resends every unacknowledged frame later.
         */
        if (connection_index < 0) {
            server->stats.udp_dropped_full++;
            return;
        }
        struct connection *connection = &server->connections[connection_index];
        server->stats.frames_by_status[FRAME_STORE_FAILED]++;
        uint64_t suppressed = 0;
        if (log_limit_pass(&server->reject_log, &suppressed))
            log_warn("server", "connection closed peer=%s reason=ledger_full: the held batch has "
                     "no room for its frame; the sender resends it (suppressed=%llu)",
                     connection->peer, (unsigned long long)suppressed);
        /* connection_parse still reads `in`: the slot is released after it returns. */
        connection->closing = 1;
        connection->aborted = 1;
        shutdown(connection->fd, SHUT_RDWR);
        return;
    }
    entry->connection = connection_index;
    if (connection_index >= 0) {
        entry->generation = server->connections[connection_index].generation;
        server->connections[connection_index].frames_in_batch++;
        rejects_in_row_count(server, (uint32_t)connection_index, status);
    }
    entry->frame_id = header.frame_id;
    memcpy(entry->tenant_id, header.tenant_id, UUID_SIZE);
    entry->status = status;
    entry->detail = detail;
    if (status == FRAME_ACCEPTED) {
        struct ingest_batch *batch = server->filling;
        entry->event_count = header.event_count;
        entry->body_offset = (uint32_t)batch->arena_size;
        entry->body_size = header.body_size;
        uint8_t *body = batch->arena + batch->arena_size;
        memcpy(body, frame + FRAME_HEADER_SIZE, header.body_size);
        batch->arena_size += header.body_size;
        const struct server_hooks *hooks = server->hooks;
        int rc = hooks->prepare ? hooks->prepare(hooks->context, batch, entry, body,
                                                 server->events)
                                : HM_OK;
        if (rc != HM_OK) {
            batch->arena_size -= header.body_size;
            entry->status = FRAME_STORE_FAILED;
            uint64_t suppressed = 0;
            if (log_limit_pass(&server->commit_log, &suppressed))
                log_error("server", "frame not prepared for its commit: %s; acknowledged as "
                          "store_failed, so the sender resends it (suppressed=%llu)",
                          hm_status_str(rc), (unsigned long long)suppressed);
        }
    } else {
        log_reject(server, connection_index >= 0 ? "tcp" : "udp", peer, &header, status, detail,
                   reason);
    }
}

static void ack_queue(struct server *server, const struct batch_entry *entry)
{
    if (entry->connection < 0)
        return;
    struct connection *connection = &server->connections[entry->connection];
    if (!connection->in_use || connection->generation != entry->generation)
        return;
    connection->frames_in_batch--;
    if (connection->out_size + ACK_SIZE > connection->out_capacity) {
        size_t capacity = 2 * connection->out_capacity;
        uint8_t *out = realloc(connection->out, capacity);
        if (out == NULL) {
            log_error("server", "out of memory for acks peer=%s; closing", connection->peer);
            connection->closing = 1;
            return;
        }
        connection->out = out;
        connection->out_capacity = capacity;
    }
    struct frame_ack ack = {
        .status = entry->status,
        .detail = entry->detail,
        .frame_id = entry->frame_id,
        .stored = entry->stored,
        .duplicates = entry->duplicates,
        .conflicts = entry->conflicts,
    };
    ack_encode(&ack, connection->out + connection->out_size);
    connection->out_size += ACK_SIZE;
    connection->active_ms = monotonic_ms();
    arm_send(server, (uint32_t)entry->connection);
}

/*
 * Enters the full state after a commit found the ledger map or the disk full:
 * the batch stays held without acks and TCP reads pause, so senders keep
 * their frames (backpressure) until a later commit of the batch succeeds.
 */
static void full_enter(struct server *server, int rc)
{
    int64_t now = monotonic_ms();
    if (!server->full) {
        server->full = 1;
        server->stats.store_full = 1;
        server->full_since_ms = now;
        server->full_retry_wait_ms = FULL_RETRY_FIRST_MS;
        log_error("server", "ledger full: a commit found the LMDB map or the disk full (%s). "
                  "%zu frames wait unacknowledged, TCP reads are paused and UDP frames are "
                  "dropped and counted; restart meterd with a larger --map-size, or free disk "
                  "space where the data directory is. The commit is tried again every few "
                  "seconds, and ingest resumes when it succeeds",
                  hm_status_str(rc), server->committing->entry_count);
    } else if (server->full_retry_wait_ms < FULL_RETRY_MAX_MS) {
        server->full_retry_wait_ms *= 2;
    }
    server->full_retry_ms = now + server->full_retry_wait_ms;
    /* The next attempt appends every event again, so the counts start from zero. */
    for (size_t i = 0; i < server->committing->entry_count; i++) {
        struct batch_entry *entry = &server->committing->entries[i];
        entry->stored = entry->duplicates = entry->conflicts = 0;
    }
}

/* Leaves the full state after the held batch was committed: reads resume. */
static void full_leave(struct server *server)
{
    server->full = 0;
    server->stats.store_full = 0;
    log_info("server", "ledger full state ended after %lld ms: the held frames are "
             "acknowledged and reads resume; UDP frames dropped while full so far: %llu",
             (long long)(monotonic_ms() - server->full_since_ms),
             (unsigned long long)server->stats.udp_dropped_full);
    for (uint32_t i = 0; i < server->slot_count; i++) {
        if (server->connections[i].in_use)
            arm_recv(server, i);
    }
}

/* ---- The commit thread ---- */

static void *committer_main(void *context)
{
    struct server *server = context;
    struct committer *committer = &server->committer;
    pthread_mutex_lock(&committer->lock);
    for (;;) {
        while (committer->batch == NULL && !committer->quit)
            pthread_cond_wait(&committer->wake, &committer->lock);
        if (committer->batch == NULL)
            break;
        struct ingest_batch *batch = committer->batch;
        pthread_mutex_unlock(&committer->lock);
        int64_t started_us = monotonic_us();
        int rc = server->hooks->commit(server->hooks->context, batch);
        uint64_t duration_us = (uint64_t)(monotonic_us() - started_us);
        pthread_mutex_lock(&committer->lock);
        committer->result = rc;
        committer->duration_us = duration_us;
        committer->done = 1;
        committer->batch = NULL;
        pthread_cond_signal(&committer->finished);
        uint64_t one = 1;
        /* The eventfd only wakes the loop, which also checks `done` itself. */
        if (write(committer->event_fd, &one, sizeof one) != sizeof one)
            log_debug("server", "commit wakeup write failed: %s", strerror(errno));
    }
    pthread_mutex_unlock(&committer->lock);
    return NULL;
}

static void arm_committed(struct server *server)
{
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_read(sqe, server->committer.event_fd, &server->committer.event_count,
                       sizeof server->committer.event_count, 0);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_COMMITTED, 0, 0));
}

const uint32_t commit_ms_bounds[SERVER_COMMIT_BUCKETS - 1] = { 1,  2,   5,   10,  20,
                                                               50, 100, 250, 1000 };

/* A commit that takes this long is logged: its acks waited that long. */
#define COMMIT_SLOW_MS 1000

/* Adds one duration to a total, a maximum and the bucket counts of commit_ms_bounds. */
static void duration_count(uint64_t duration_us, uint64_t *total, uint64_t *max,
                           uint64_t counts[SERVER_COMMIT_BUCKETS])
{
    *total += duration_us;
    if (duration_us > *max)
        *max = duration_us;
    size_t bucket = 0;
    while (bucket < SERVER_COMMIT_BUCKETS - 1 &&
           duration_us > (uint64_t)commit_ms_bounds[bucket] * 1000)
        bucket++;
    counts[bucket]++;
}

/*
 * Counts one run of the commit hook (failed ones too) by its duration and
 * by its parts: the store's durable write and its wait for the write lock.
 * Logs a slow one, with a hint for the part that took half of it or more.
 */
static void commit_duration_count(struct server *server, uint64_t duration_us, uint64_t write_us,
                                  uint64_t lock_us)
{
    struct server_stats *stats = &server->stats;
    duration_count(duration_us, &stats->commit_us_total, &stats->commit_us_max,
                   stats->commit_ms_counts);
    duration_count(write_us, &stats->write_us_total, &stats->write_us_max,
                   stats->write_ms_counts);
    stats->lock_us_total += lock_us;
    if (lock_us > stats->lock_us_max)
        stats->lock_us_max = lock_us;
    uint64_t suppressed = 0;
    if (duration_us < (uint64_t)COMMIT_SLOW_MS * 1000 ||
        !log_limit_pass(&server->slow_commit_log, &suppressed))
        return;
    const char *hint;
    if (2 * lock_us >= duration_us)
        hint = "Another process held the ledger's write lock: a meterctl command that writes "
               "(close, rollups rebuild, tenant or key changes) makes commits wait until it ends";
    else if (2 * write_us >= duration_us)
        hint = "Check the device of the data directory for other load or a failing disk";
    else
        hint = "The rest was work of the CPU: check whether meterd gets the CPU time it needs";
    log_warn("server", "slow commit: storing a batch took %llu ms, %llu ms of it waiting for the "
             "ledger's write lock and %llu ms writing and syncing, and its senders waited as "
             "long for their acks. %s (suppressed=%llu)",
             (unsigned long long)(duration_us / 1000), (unsigned long long)(lock_us / 1000),
             (unsigned long long)(write_us / 1000), hint, (unsigned long long)suppressed);
}

/* Hands `committing` to the commit thread. */
static void commit_start(struct server *server)
{
    struct ingest_batch *batch = server->committing;
    int accepted = 0;
    for (size_t i = 0; i < batch->entry_count; i++)
        accepted |= batch->entries[i].status == FRAME_ACCEPTED;
    struct committer *committer = &server->committer;
    pthread_mutex_lock(&committer->lock);
    server->in_flight = 1;
    if (accepted) {
        committer->batch = batch;
        pthread_cond_signal(&committer->wake);
    } else {
        /* Only rejects: nothing to store, so the acks can go at once. */
        committer->result = HM_OK;
        committer->duration_us = 0;
        committer->done = 1;
    }
    pthread_mutex_unlock(&committer->lock);
}

/*
 * Takes the result of the batch that the commit thread finished, when it
 * has, and queues every ack in frame order. Returns 0 when the thread is
 * still busy. With `wait` set, blocks until it is done.
 */
static int commit_collect(struct server *server, int wait)
{
    if (!server->in_flight)
        return 1;
    struct committer *committer = &server->committer;
    pthread_mutex_lock(&committer->lock);
    while (wait && !committer->done)
        pthread_cond_wait(&committer->finished, &committer->lock);
    int done = committer->done;
    int rc = committer->result;
    uint64_t duration_us = committer->duration_us;
    committer->done = 0;
    pthread_mutex_unlock(&committer->lock);
    if (!done)
        return 0;
    server->in_flight = 0;
    struct ingest_batch *batch = server->committing;
    int accepted = 0;
    for (size_t i = 0; i < batch->entry_count; i++)
        accepted |= batch->entries[i].status == FRAME_ACCEPTED;
    /* A batch of rejects only never reached the commit thread. */
    if (accepted) {
        commit_duration_count(server, duration_us, batch->write_us, batch->lock_us);
        if (batch->index.ids > 0 || batch->index.memory_bytes > 0)
            server->stats.index = batch->index;
    }
    if (rc == HM_ERR_FULL) {
        server->stats.commit_failures++;
        full_enter(server, rc);
        return 1;
    }
    if (accepted && rc == HM_OK)
        server->stats.commits++;
    if (rc != HM_OK) {
        server->stats.commit_failures++;
        uint64_t suppressed = 0;
        if (log_limit_pass(&server->commit_log, &suppressed))
            log_error("server", "batch commit failed: %s; %zu frames acknowledged as "
                      "store_failed, so senders resend (suppressed=%llu)",
                      hm_status_str(rc), batch->entry_count, (unsigned long long)suppressed);
        for (size_t i = 0; i < batch->entry_count; i++) {
            struct batch_entry *entry = &batch->entries[i];
            if (entry->status == FRAME_ACCEPTED) {
                entry->status = FRAME_STORE_FAILED;
                entry->stored = entry->duplicates = entry->conflicts = 0;
            }
        }
    }
    for (size_t i = 0; i < batch->entry_count; i++) {
        struct batch_entry *entry = &batch->entries[i];
        server->stats.frames_by_status[entry->status]++;
        server->stats.events_stored += entry->stored;
        server->stats.events_duplicate += entry->duplicates;
        server->stats.events_conflict += entry->conflicts;
        ack_queue(server, entry);
    }
    batch->entry_count = 0;
    batch->arena_size = 0;
    if (server->hooks->batch_reset)
        server->hooks->batch_reset(server->hooks->context, batch);
    server->committing = NULL;
    if (server->full)
        full_leave(server);

    /* A closing connection whose last ack could not be queued has nothing left to wait for. */
    for (uint32_t i = 0; i < server->slot_count; i++) {
        struct connection *connection = &server->connections[i];
        if (connection->in_use && connection->closing && !connection->send_armed &&
            acks_pending(connection) == 0)
            connection_shutdown(server, i);
    }
    return 1;
}

/*
 * Starts the next commit when the thread is free: the held batch again
 * once its retry is due (or at once with `force`, the last try at a stop),
 * else the filling batch when it has frames. One transaction (one sync)
 * stores every frame that arrived since the last commit began.
 */
static void commit_batch_now(struct server *server, int force)
{
    if (server->in_flight)
        return;
    if (server->lookup_open) {
        server->hooks->lookup_end(server->hooks->context);
        server->lookup_open = 0;
    }
    if (server->committing != NULL) {
        if (server->full && !force && monotonic_ms() < server->full_retry_ms)
            return;
        commit_start(server);
        return;
    }
    if (server->filling->entry_count == 0)
        return;
    server->committing = server->filling;
    server->filling = server->filling == &server->batches[0] ? &server->batches[1]
                                                             : &server->batches[0];
    commit_start(server);
}

static void commit_batch(struct server *server)
{
    commit_collect(server, 0);
    commit_batch_now(server, 0);
    /* A batch of rejects only is done at once, and its acks must not wait for the next wakeup. */
    commit_collect(server, 0);
}

/*
 * Called when the filling batch has no room for a frame: waits for the
 * commit in flight, then hands the full batch over. While the ledger is full
 * the held batch stays, and the filling batch keeps no more room.
 */
static void commit_batch_full(struct server *server)
{
    commit_collect(server, 1);
    commit_batch_now(server, 0);
}

/*
 * At a stop while the ledger is still full: drops the held frames and those
 * that arrived after them without acks, so that their connections can
 * close. Their senders resend them.
 */
static void batch_drop(struct server *server, struct ingest_batch *batch)
{
    for (size_t i = 0; i < batch->entry_count; i++) {
        const struct batch_entry *entry = &batch->entries[i];
        server->stats.frames_by_status[entry->status == FRAME_ACCEPTED ? FRAME_STORE_FAILED
                                                                       : entry->status]++;
        if (entry->connection < 0)
            continue;
        struct connection *connection = &server->connections[entry->connection];
        if (connection->in_use && connection->generation == entry->generation)
            connection->frames_in_batch--;
    }
    batch->entry_count = 0;
    batch->arena_size = 0;
    if (server->hooks->batch_reset)
        server->hooks->batch_reset(server->hooks->context, batch);
}

static void batch_drop_held(struct server *server)
{
    size_t frames = server->filling->entry_count +
                    (server->committing ? server->committing->entry_count : 0);
    log_warn("server", "stopping with the ledger full: %zu frames were not stored and get no "
             "ack, so their senders resend them", frames);
    if (server->committing != NULL)
        batch_drop(server, server->committing);
    batch_drop(server, server->filling);
    server->committing = NULL;
}

/* Commits everything that is left at a stop, waiting for each commit. */
static void commit_all_at_stop(struct server *server)
{
    commit_collect(server, 1);
    for (int round = 0; round < 3 && !(server->full && round > 0); round++) {
        commit_batch_now(server, 1);
        commit_collect(server, 1);
    }
    if (server->full)
        batch_drop_held(server);
}

/* ---- Completions ---- */

/* Parses every complete frame in a connection's buffer. */
static void connection_parse(struct server *server, uint32_t index)
{
    struct connection *connection = &server->connections[index];
    /* Nothing may write into `in` while it is parsed, moved or grown. */
    if (connection->recv_armed)
        abort();
    server->parsing = index;
    size_t consumed = 0;
    while (!connection->closing && connection->in_size - consumed >= FRAME_HEADER_SIZE) {
        const uint8_t *frame = connection->in + consumed;
        struct frame_header header = { 0 };
        enum frame_status status = frame_header_decode(frame, &header);
        if (status != FRAME_ACCEPTED) {
            /* The stream cannot be resynchronized, so send one reject ack and close. */
            struct batch_entry *entry = batch_entry_add(server, 0);
            if (entry == NULL) {
                /* The ledger is full and the held batch has no room, even for the reject ack. */
                connection->closing = 1;
                connection->aborted = 1;
                shutdown(connection->fd, SHUT_RDWR);
                break;
            }
            entry->connection = (int32_t)index;
            entry->generation = connection->generation;
            connection->frames_in_batch++;
            entry->frame_id = status == FRAME_BAD_MAGIC ? 0 : header.frame_id;
            entry->status = status;
            server->stats.frames_received++;
            log_reject(server, "tcp", connection->peer, &header, status, 0,
                       "unreadable header; closing the connection");
            connection->closing = 1;
            break;
        }
        size_t total = frame_total_size(&header);
        if (connection->in_size - consumed < total) {
            if (total > connection->in_capacity) {
                uint8_t *in = realloc(connection->in, FRAME_SIZE_MAX);
                if (in == NULL) {
                    log_error("server", "out of memory for a frame of %zu bytes peer=%s", total,
                              connection->peer);
                    connection->closing = 1;
                    break;
                }
                connection->in = in;
                connection->in_capacity = FRAME_SIZE_MAX;
                frame = connection->in + consumed;
            }
            break;
        }
        frame_receive(server, (int32_t)index, frame, total, connection->peer);
        consumed += total;
    }
    memmove(connection->in, connection->in + consumed, connection->in_size - consumed);
    connection->in_size -= consumed;
    server->parsing = NO_CONNECTION;
}

static void on_recv(struct server *server, uint32_t index, int result)
{
    struct connection *connection = &server->connections[index];
    connection->recv_armed = 0;
    connection->ops_in_flight--;
    if (connection->draining || connection->aborted) {
        if (result > 0 && !connection->aborted)
            arm_drain(server, index);
        else
            connection_release(server, index);
        return;
    }
    uint64_t suppressed = 0;
    if (result <= 0) {
        if (connection->in_size > 0) {
            server->stats.frames_received++;
            server->stats.frames_by_status[FRAME_TRUNCATED]++;
            if (log_limit_pass(&server->reject_log, &suppressed))
                log_warn("server", "connection closed inside a frame peer=%s bytes=%zu "
                         "reason=truncated (suppressed=%llu)", connection->peer,
                         connection->in_size, (unsigned long long)suppressed);
        }
        if (result < 0 && result != -ECONNRESET && log_limit_pass(&server->reject_log, &suppressed))
            log_warn("server", "receive failed peer=%s: %s (suppressed=%llu)", connection->peer,
                     strerror(-result), (unsigned long long)suppressed);
        connection->in_size = 0;
        connection_shutdown(server, index);
        return;
    }
    if (server->stopping) {
        /* Frames that arrive during the stop are not taken: their senders resend them. */
        connection->in_size = 0;
        connection_shutdown(server, index);
        return;
    }
    int64_t now = monotonic_ms();
    if (connection->in_size == 0)
        connection->frame_started_ms = now;
    connection->active_ms = now;
    connection->in_size += (size_t)result;
    size_t received = connection->in_size;
    connection_parse(server, index);
    /* When frames were consumed, the bytes left over start the next frame, whose clock starts now. */
    if (connection->in_size > 0 && connection->in_size < received)
        connection->frame_started_ms = now;
    if (connection->closing)
        connection_shutdown(server, index);
    else
        arm_recv(server, index);
}

static void on_send(struct server *server, uint32_t index, int result)
{
    struct connection *connection = &server->connections[index];
    connection->send_armed = 0;
    connection->ops_in_flight--;
    if (result < 0) {
        uint64_t suppressed = 0;
        if (result != -EPIPE && result != -ECONNRESET && !connection->aborted &&
            log_limit_pass(&server->reject_log, &suppressed))
            log_warn("server", "send failed peer=%s: %s (suppressed=%llu)", connection->peer,
                     strerror(-result), (unsigned long long)suppressed);
        connection->out_size = 0;
        connection->wire_size = connection->wire_sent = 0;
        connection->aborted = 1;
        connection_shutdown(server, index);
        return;
    }
    connection->send_progress_ms = monotonic_ms();
    connection->wire_sent += (size_t)result;
    arm_send(server, index);
    if (connection->closing)
        connection_shutdown(server, index);
    else
        arm_recv(server, index);
}

static void on_udp(struct server *server, uint32_t index, int result)
{
    struct udp_buffer *buffer = &server->udp_buffers[index];
    if (result >= 0) {
        for (struct cmsghdr *header = CMSG_FIRSTHDR(&buffer->message); header != NULL;
             header = CMSG_NXTHDR(&buffer->message, header)) {
            if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SO_RXQ_OVFL) {
                uint32_t dropped;
                memcpy(&dropped, CMSG_DATA(header), sizeof dropped);
                if (dropped > server->stats.udp_dropped)
                    server->stats.udp_dropped = dropped;
            }
        }
        char peer[64];
        peer_format(&buffer->peer, peer, sizeof peer);
        frame_receive(server, -1, buffer->data, (size_t)result, peer);
    } else if (result != -ECANCELED) {
        log_warn("server", "udp receive failed: %s", strerror(-result));
    }
    if (!server->stopping)
        arm_udp(server, index);
}

/*
 * Prints bucket counts of commit_ms_bounds as a JSON object, cumulative as
 * in a Prometheus histogram: commits that took at most that many ms.
 */
static void histogram_print(FILE *file, const uint64_t counts[SERVER_COMMIT_BUCKETS])
{
    fputc('{', file);
    uint64_t cumulative = 0;
    for (int i = 0; i < SERVER_COMMIT_BUCKETS; i++) {
        cumulative += counts[i];
        if (i < SERVER_COMMIT_BUCKETS - 1)
            fprintf(file, "%s\"%u\": %llu", i ? ", " : "", commit_ms_bounds[i],
                    (unsigned long long)cumulative);
        else
            fprintf(file, ", \"+Inf\": %llu", (unsigned long long)cumulative);
    }
    fputc('}', file);
}

/* Writes the counters as JSON to `file`; returns 0, or -1 when a write failed. */
static int stats_print(FILE *file, const struct server_stats *stats)
{
    fprintf(file, "{\"frames_received\": %llu, \"events_stored\": %llu, "
            "\"events_duplicate\": %llu, \"events_conflict\": %llu, \"commits\": %llu, "
            "\"commit_failures\": %llu, \"commit_us_total\": %llu, \"commit_us_max\": %llu, "
            "\"write_us_total\": %llu, \"write_us_max\": %llu, "
            "\"lock_us_total\": %llu, \"lock_us_max\": %llu, "
            "\"connections_accepted\": %llu, "
            "\"connections_rejected\": %llu, \"connections_timed_out\": %llu, "
            "\"connections_evicted\": %llu, \"connections_closed_rejects\": %llu, "
            "\"udp_dropped\": %llu, \"udp_dropped_full\": %llu, \"store_full\": %llu, "
            "\"frames\": {",
            (unsigned long long)stats->frames_received, (unsigned long long)stats->events_stored,
            (unsigned long long)stats->events_duplicate,
            (unsigned long long)stats->events_conflict, (unsigned long long)stats->commits,
            (unsigned long long)stats->commit_failures,
            (unsigned long long)stats->commit_us_total, (unsigned long long)stats->commit_us_max,
            (unsigned long long)stats->write_us_total, (unsigned long long)stats->write_us_max,
            (unsigned long long)stats->lock_us_total, (unsigned long long)stats->lock_us_max,
            (unsigned long long)stats->connections_accepted,
            (unsigned long long)stats->connections_rejected,
            (unsigned long long)stats->connections_timed_out,
            (unsigned long long)stats->connections_evicted,
            (unsigned long long)stats->connections_closed_rejects,
            (unsigned long long)stats->udp_dropped,
            (unsigned long long)stats->udp_dropped_full, (unsigned long long)stats->store_full);
    for (int i = 0; i < FRAME_STATUS_COUNT; i++)
        fprintf(file, "%s\"%s\": %llu", i ? ", " : "", frame_status_name((enum frame_status)i),
                (unsigned long long)stats->frames_by_status[i]);
    fprintf(file, "}, \"commit_ms_le\": ");
    histogram_print(file, stats->commit_ms_counts);
    fprintf(file, ", \"write_ms_le\": ");
    histogram_print(file, stats->write_ms_counts);
    fprintf(file, ", \"index\": {\"ids\": %llu, \"memory_bytes\": %llu, \"disk_bytes\": %llu, "
            "\"runs\": %llu, \"spill_failures\": %llu, \"spill_waits\": %llu, "
            "\"spill_wait_us\": %llu}}\n",
            (unsigned long long)stats->index.ids, (unsigned long long)stats->index.memory_bytes,
            (unsigned long long)stats->index.disk_bytes, (unsigned long long)stats->index.runs,
            (unsigned long long)stats->index.spill_failures,
            (unsigned long long)stats->index.spill_waits,
            (unsigned long long)stats->index.spill_wait_us);
    return fflush(file) == 0 && !ferror(file) ? 0 : -1;
}

/*
 * Replaces the stats file through a temporary file and a rename, so that a
 * reader never sees half a file. Returns 0, or -1 after a failure (logged on
 * the first failure only; the caller tries again at the next report).
 */
static int stats_write(struct server *server)
{
    const char *path = server->options->stats_file;
    if (path == NULL)
        return 0;
    char temporary[4096];
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    FILE *file = fopen(temporary, "w");
    int failed = file == NULL;
    if (file != NULL) {
        failed = stats_print(file, &server->stats) != 0;
        failed |= fclose(file) != 0;
        failed = failed || rename(temporary, path) != 0;
    }
    int error = errno;
    if (failed && file != NULL)
        unlink(temporary);
    if (failed && !server->stats_file_failed)
        log_warn("server", "cannot write stats file %s: %s; the stats are logged every report "
                 "until a write succeeds (free space there, or give meterd --stats-file)",
                 path, strerror(error));
    else if (!failed && server->stats_file_failed)
        log_info("server", "stats file %s written again", path);
    server->stats_file_failed = failed;
    return failed ? -1 : 0;
}

/*
 * Logs the lines that a rate limit dropped since its last line, and resets
 * the count: at the stop, or once the limit's window has ended (a later line
 * that passes would report them too, but may never come).
 */
static void log_limit_report(struct log_limit *limit, const char *lines, int final)
{
    int64_t now_s = monotonic_ms() / 1000;
    if (limit->suppressed == 0 || (!final && now_s - limit->window_start_s < limit->window_s))
        return;
    log_warn("server", "%llu %s lines suppressed by the log rate limit",
             (unsigned long long)limit->suppressed, lines);
    limit->suppressed = 0;
}

/*
 * Reports the counters in a log line and in the stats file when they
 * changed, or when the last stats file write failed, so that a full disk
 * never hides them. Also reports lines that the rate limits dropped, so that
 * a burst at the end of a run is never silent. `final` is set at the stop.
 */
static void stats_report(struct server *server, int final)
{
    log_limit_report(&server->reject_log, "frame rejected or connection closed", final);
    log_limit_report(&server->evict_log, "connection evicted", final);
    log_limit_report(&server->commit_log, "batch commit failed", final);
    int changed = memcmp(&server->stats, &server->stats_reported, sizeof server->stats) != 0;
    if (!changed && !server->stats_file_failed)
        return;
    /* Unchanged counters are logged every STATS_UNCHANGED_REPORTS reports, and written each time. */
    if (!changed && !final && ++server->stats_reports_unchanged < STATS_UNCHANGED_REPORTS) {
        stats_write(server);
        return;
    }
    server->stats_reports_unchanged = 0;
    const struct server_stats *stats = &server->stats;
    /* Frames held in the batch while the ledger is full have no status yet. */
    uint64_t rejected = 0;
    for (int i = 0; i < FRAME_STATUS_COUNT; i++)
        rejected += i == FRAME_ACCEPTED || i == FRAME_STORE_FAILED ? 0 : stats->frames_by_status[i];
    uint64_t held = server->full && server->committing ? server->committing->entry_count : 0;
    log_info("server", "stats frames=%llu accepted=%llu rejected=%llu store_failed=%llu "
             "held=%llu stored=%llu duplicates=%llu conflicts=%llu commits=%llu "
             "commit_failures=%llu udp_dropped_full=%llu",
             (unsigned long long)stats->frames_received,
             (unsigned long long)stats->frames_by_status[FRAME_ACCEPTED],
             (unsigned long long)rejected,
             (unsigned long long)stats->frames_by_status[FRAME_STORE_FAILED],
             (unsigned long long)held, (unsigned long long)stats->events_stored,
             (unsigned long long)stats->events_duplicate,
             (unsigned long long)stats->events_conflict, (unsigned long long)stats->commits,
             (unsigned long long)stats->commit_failures,
             (unsigned long long)stats->udp_dropped_full);
    stats_write(server);
    server->stats_reported = server->stats;
}

static void on_completion(struct server *server, struct io_uring_cqe *cqe)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);
    enum op op = (enum op)(data >> 56);
    uint32_t index = (uint32_t)(data >> 32) & 0xffffff;
    switch (op) {
    case OP_ACCEPT:
        on_accept(server, cqe->res);
        break;
    case OP_RECV:
        on_recv(server, index, cqe->res);
        break;
    case OP_SEND:
        on_send(server, index, cqe->res);
        break;
    case OP_UDP_RECV:
        on_udp(server, index, cqe->res);
        break;
    case OP_SIGNAL:
        if (cqe->res == (int)sizeof server->signal_info) {
            log_info("server", "stopping on signal %u", server->signal_info.ssi_signo);
            server->stopping = 1;
        } else {
            arm_signal(server);
        }
        break;
    case OP_CANCEL:
        break;
    case OP_COMMITTED:
        /* The loop collects the finished commit after the completions. */
        if (!server->stopping)
            arm_committed(server);
        break;
    case OP_TIMER:
        if (server->accept_paused && !server->stopping) {
            server->accept_paused = 0;
            arm_accept(server);
        }
        sweep_timeouts(server);
        if (++server->ticks % STATS_TICKS == 0)
            stats_report(server, 0);
        if (!server->stopping)
            arm_timer(server);
        break;
    }
}

/* ---- Setup and the loop ---- */

/* Descriptors kept for the ledger, the sockets, the ring and the stats file. */
#define RESERVED_DESCRIPTORS 64

/*
 * Raises the open file limit to its hard maximum, and lowers connections_max
 * when even that cannot hold one descriptor per connection.
 */
static void connections_fit_file_limit(struct server *server)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0)
        return;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
        getrlimit(RLIMIT_NOFILE, &limit);
    }
    rlim_t needed = (rlim_t)server->connections_max + EVICTED_SLOTS + RESERVED_DESCRIPTORS;
    if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= needed)
        return;
    uint32_t fitting = limit.rlim_cur > 2 * RESERVED_DESCRIPTORS + EVICTED_SLOTS
                           ? (uint32_t)(limit.rlim_cur - RESERVED_DESCRIPTORS - EVICTED_SLOTS)
                           : (uint32_t)(limit.rlim_cur / 2);
    log_warn("server", "connections_max lowered from %u to %u: the open file limit is %llu; "
             "raise it (ulimit -n) to serve more connections", server->connections_max,
             fitting ? fitting : 1, (unsigned long long)limit.rlim_cur);
    server->connections_max = fitting ? fitting : 1;
}

/* Starts the commit thread and its wakeup eventfd. */
static int committer_start(struct server *server)
{
    struct committer *committer = &server->committer;
    committer->event_fd = eventfd(0, EFD_CLOEXEC);
    if (committer->event_fd < 0) {
        log_error("server", "eventfd failed: %s", strerror(errno));
        return HM_ERR_IO;
    }
    pthread_mutex_init(&committer->lock, NULL);
    pthread_cond_init(&committer->wake, NULL);
    pthread_cond_init(&committer->finished, NULL);
    int rc = pthread_create(&committer->thread, NULL, committer_main, server);
    if (rc != 0) {
        log_error("server", "cannot start the commit thread: %s", strerror(rc));
        return HM_ERR_IO;
    }
    committer->started = 1;
    /* A name of its own, so that top and perf show the commit thread apart from the loop. */
    pthread_setname_np(committer->thread, "meterd-commit");
    return HM_OK;
}

/* Stops the commit thread after its last batch. */
static void committer_stop(struct server *server)
{
    struct committer *committer = &server->committer;
    if (committer->started) {
        pthread_mutex_lock(&committer->lock);
        committer->quit = 1;
        pthread_cond_signal(&committer->wake);
        pthread_mutex_unlock(&committer->lock);
        pthread_join(committer->thread, NULL);
        committer->started = 0;
        pthread_mutex_destroy(&committer->lock);
        pthread_cond_destroy(&committer->wake);
        pthread_cond_destroy(&committer->finished);
    }
}

static int server_setup(struct server *server, sigset_t *signals)
{
    const struct server_options *options = server->options;
    const char *host = options->host ? options->host : "127.0.0.1";
    uint16_t tcp_port = 0, udp_port = 0;
    server->tcp_fd = socket_bind(host, options->tcp_port, SOCK_STREAM, &tcp_port);
    server->udp_fd = socket_bind(host, options->udp_port, SOCK_DGRAM, &udp_port);
    if (server->tcp_fd < 0 || server->udp_fd < 0)
        return HM_ERR_IO;

    sigemptyset(signals);
    sigaddset(signals, SIGTERM);
    sigaddset(signals, SIGINT);
    sigprocmask(SIG_BLOCK, signals, NULL);
    server->signal_fd = signalfd(-1, signals, SFD_CLOEXEC);
    if (server->signal_fd < 0) {
        log_error("server", "signalfd failed: %s", strerror(errno));
        return HM_ERR_IO;
    }

    int rc = io_uring_queue_init(RING_ENTRIES, &server->ring, 0);
    if (rc < 0) {
        log_error("server", "io_uring setup failed: %s; is io_uring disabled "
                  "(/proc/sys/kernel/io_uring_disabled)?", strerror(-rc));
        return HM_ERR_IO;
    }

    server->connections_max = options->connections_max ? options->connections_max
                                                       : SERVER_CONNECTIONS_DEFAULT;
    if (server->connections_max > SERVER_CONNECTIONS_MAX)
        server->connections_max = SERVER_CONNECTIONS_MAX;
    connections_fit_file_limit(server);
    server->slot_count = server->connections_max + EVICTED_SLOTS;
    server->connections = calloc(server->slot_count, sizeof *server->connections);
    server->udp_buffers = calloc(UDP_BUFFERS, sizeof *server->udp_buffers);
    server->events = calloc(FRAME_EVENTS_MAX, sizeof *server->events);
    int batches_allocated = 1;
    for (int i = 0; i < 2; i++) {
        struct ingest_batch *batch = &server->batches[i];
        batch->entries = calloc(BATCH_FRAMES_MAX, sizeof *batch->entries);
        batch->entry_capacity = BATCH_FRAMES_MAX;
        batch->arena = malloc(BATCH_ARENA_SIZE);
        batch->arena_capacity = BATCH_ARENA_SIZE;
        batches_allocated &= batch->entries != NULL && batch->arena != NULL;
    }
    server->filling = &server->batches[0];
    if (!server->connections || !server->udp_buffers || !server->events || !batches_allocated) {
        log_error("server", "out of memory at startup");
        return HM_ERR_NOMEM;
    }
    if ((rc = committer_start(server)) != HM_OK)
        return rc;
    for (uint32_t i = 0; i < server->slot_count; i++)
        server->connections[i].fd = -1;
    server->frame_timeout_ms = options->frame_timeout_ms ? options->frame_timeout_ms
                                                         : SERVER_FRAME_TIMEOUT_MS_DEFAULT;
    server->idle_timeout_ms = options->idle_timeout_ms ? options->idle_timeout_ms
                                                       : SERVER_IDLE_TIMEOUT_MS_DEFAULT;

    server->policy.max_age_us = options->max_event_age_s > 0
                                    ? options->max_event_age_s * 1000000
                                    : 0;
    int64_t skew_s = options->max_event_skew_s ? options->max_event_skew_s
                                               : SERVER_EVENT_SKEW_S_DEFAULT;
    server->policy.max_skew_us = skew_s > 0 ? skew_s * 1000000 : -1;

    log_info("server", "listening host=%s tcp=%u udp=%u connections_max=%u "
             "max_event_age_s=%lld max_event_skew_s=%lld", host, tcp_port, udp_port,
             server->connections_max, (long long)options->max_event_age_s,
             (long long)(skew_s > 0 ? skew_s : -1));
    if (options->port_file) {
        FILE *file = fopen(options->port_file, "w");
        if (file == NULL || fprintf(file, "tcp=%u udp=%u\n", tcp_port, udp_port) < 0 ||
            fclose(file) != 0) {
            log_error("server", "cannot write port file %s: %s", options->port_file,
                      strerror(errno));
            return HM_ERR_IO;
        }
    }
    return HM_OK;
}

/* Says whether the commit thread has finished the batch in flight. */
static int commit_finished(struct server *server)
{
    struct committer *committer = &server->committer;
    pthread_mutex_lock(&committer->lock);
    int done = committer->done;
    pthread_mutex_unlock(&committer->lock);
    return done;
}

/*
 * Handles every completion that is ready. A run of completions can take as
 * long as a commit. So when the commit thread finishes its batch during
 * the run, it gets the next batch between two completions, and the acks of
 * the finished batch are sent at once.
 */
static void drain_completions(struct server *server)
{
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(&server->ring, &cqe) == 0) {
        server->ops_outstanding--;
        on_completion(server, cqe);
        io_uring_cqe_seen(&server->ring, cqe);
        if (server->in_flight && !server->stopping && commit_finished(server)) {
            commit_batch(server);
            io_uring_submit(&server->ring);
        }
    }
}

/*
 * Cancels every operation still in flight and waits, at most about two
 * seconds, until the kernel has completed them all. Only then may the
 * buffers that those operations read or write be freed. Returns 1 when
 * nothing is in flight any more.
 */
static int cancel_all(struct server *server)
{
    for (uint32_t i = 0; server->connections != NULL && i < server->slot_count; i++) {
        if (server->connections[i].in_use)
            shutdown(server->connections[i].fd, SHUT_RDWR);
    }
    struct io_uring_sqe *sqe = sqe_get(server);
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    io_uring_sqe_set_data64(sqe, user_data_of(OP_CANCEL, 0, 0));
    io_uring_submit(&server->ring);

    int64_t deadline = monotonic_ms() + 2000;
    while (server->ops_outstanding > 0 && monotonic_ms() < deadline) {
        struct __kernel_timespec wait = { 0, 50 * 1000 * 1000 };
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe_timeout(&server->ring, &cqe, &wait) != 0)
            continue;
        /* Completions are only counted here: nothing may be armed again. */
        while (io_uring_peek_cqe(&server->ring, &cqe) == 0) {
            server->ops_outstanding--;
            io_uring_cqe_seen(&server->ring, cqe);
        }
    }
    if (server->ops_outstanding > 0)
        log_warn("server", "%llu operations still in flight at exit; their buffers are left "
                 "allocated", (unsigned long long)server->ops_outstanding);
    return server->ops_outstanding == 0;
}

static void server_teardown(struct server *server)
{
    committer_stop(server);
    /* The kernel may still write into buffers of operations in flight: never free those. */
    if (server->ring.ring_fd > 0 && !cancel_all(server))
        return;
    if (server->connections) {
        for (uint32_t i = 0; i < server->slot_count; i++) {
            struct connection *connection = &server->connections[i];
            if (connection->fd >= 0)
                close(connection->fd);
            free(connection->in);
            free(connection->out);
            free(connection->wire);
        }
    }
    if (server->ring.ring_fd > 0)
        io_uring_queue_exit(&server->ring);
    if (server->tcp_fd >= 0)
        close(server->tcp_fd);
    if (server->udp_fd >= 0)
        close(server->udp_fd);
    if (server->signal_fd >= 0)
        close(server->signal_fd);
    free(server->connections);
    free(server->udp_buffers);
    free(server->events);
    for (int i = 0; i < 2; i++) {
        free(server->batches[i].entries);
        free(server->batches[i].arena);
    }
    if (server->committer.event_fd >= 0)
        close(server->committer.event_fd);
}

/*
 * After a stop: sends the last acks and closes every connection gracefully,
 * waiting at most about one second for slow readers.
 */
static void flush_acks(struct server *server)
{
    int64_t deadline = monotonic_ms() + 1000;
    for (;;) {
        int open_connections = 0;
        for (uint32_t i = 0; i < server->slot_count; i++) {
            struct connection *connection = &server->connections[i];
            if (!connection->in_use)
                continue;
            connection_shutdown(server, i);
            open_connections += connection->in_use;
        }
        if (open_connections == 0 || monotonic_ms() >= deadline)
            return;
        struct __kernel_timespec wait = { 0, 20 * 1000 * 1000 };
        struct io_uring_cqe *cqe;
        io_uring_submit(&server->ring);
        if (io_uring_wait_cqe_timeout(&server->ring, &cqe, &wait) == 0)
            drain_completions(server);
    }
}

int server_run(const struct server_options *options, const struct server_hooks *hooks,
               struct server_stats *stats_out)
{
    struct server server = { 0 };
    server.options = options;
    server.hooks = hooks;
    server.tcp_fd = server.udp_fd = server.signal_fd = server.committer.event_fd = -1;
    server.ring.ring_fd = -1;
    server.reject_log = (struct log_limit)LOG_LIMIT_INIT(20, 10);
    server.commit_log = (struct log_limit)LOG_LIMIT_INIT(5, 10);
    server.slow_commit_log = (struct log_limit)LOG_LIMIT_INIT(5, 60);
    server.evict_log = (struct log_limit)LOG_LIMIT_INIT(20, 10);
    server.parsing = NO_CONNECTION;
    sigset_t signals;
    int rc = server_setup(&server, &signals);
    if (rc != HM_OK) {
        server_teardown(&server);
        return rc;
    }

    /* The stats file starts at zero, so it never shows a previous run's counters. */
    server.stats.index = options->index;
    stats_write(&server);
    arm_accept(&server);
    for (uint32_t i = 0; i < UDP_BUFFERS; i++)
        arm_udp(&server, i);
    arm_signal(&server);
    arm_timer(&server);
    arm_committed(&server);

    while (!server.stopping) {
        struct io_uring_cqe *cqe;
        int wait_rc = io_uring_submit_and_wait(&server.ring, 1);
        if (wait_rc < 0 && wait_rc != -EINTR) {
            log_error("server", "io_uring wait failed: %s", strerror(-wait_rc));
            rc = HM_ERR_IO;
            break;
        }
        (void)cqe;
        drain_completions(&server);
        /* Post the re-armed receives first, so the kernel fills them while the commit syncs. */
        io_uring_submit(&server.ring);
        /* Group commit: every frame that arrived since the last commit shares one sync. */
        commit_batch(&server);
    }

    commit_all_at_stop(&server);
    flush_acks(&server);
    stats_report(&server, 1);
    log_info("server", "stopped frames=%llu stored=%llu",
             (unsigned long long)server.stats.frames_received,
             (unsigned long long)server.stats.events_stored);
    if (stats_out)
        *stats_out = server.stats;
    server_teardown(&server);
    sigprocmask(SIG_UNBLOCK, &signals, NULL);
    return rc;
}
