/*
 * The sender library: builds signed usage frames and sends them to meterd.
 *
 * Three parts:
 * - client_frame: one frame under construction for one tenant and API key.
 *   It keeps the frame signing key derived from the key's secret (never the
 *   secret itself) and wipes it on close.
 * - client_tcp: a TCP connection with a window of unacknowledged frames.
 *   Every frame gets a 24-byte acknowledgement, in send order. On a
 *   connection error, an acknowledgement timeout, a malformed or out of order
 *   acknowledgement, or a FRAME_STORE_FAILED acknowledgement, it reconnects
 *   with exponential backoff and resends every unacknowledged frame
 *   unchanged. The server deduplicates by (tenant, event id), so a resent
 *   frame is never counted twice: events stored before the failure come
 *   back as duplicates.
 * - client_udp: one frame per datagram and no acknowledgements, for the
 *   highest rates where a lost frame is acceptable.
 *
 * Every buffer is allocated when a handle is opened; sending allocates
 * nothing. A handle is used by one thread at a time. Nothing here logs, and
 * no secret or signing key is ever written out.
 */
#ifndef HM_CLIENT_H
#define HM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "apikey.h"
#include "event.h"
#include "wire.h"

/* Default unacknowledged frames in flight on TCP. */
#define CLIENT_WINDOW_DEFAULT 64
/* Largest TCP window: 4,096 frames of the largest size would take 1 GiB of buffers. */
#define CLIENT_WINDOW_MAX 4096
/* Default datagram size: fits a 1,500-byte Ethernet MTU with IPv6 and UDP headers. */
#define CLIENT_UDP_DATAGRAM_DEFAULT 1400
/* Smallest datagram accepted: a frame header, the MAC and the largest record. */
#define CLIENT_UDP_DATAGRAM_MIN (FRAME_HEADER_SIZE + RECORD_SIZE_MAX + FRAME_MAC_SIZE)
#define CLIENT_RECONNECT_ATTEMPTS_DEFAULT 8
#define CLIENT_BACKOFF_INITIAL_MS_DEFAULT 100
#define CLIENT_BACKOFF_MAX_MS_DEFAULT 5000
/* Time to wait for an acknowledgement (or a write to progress) before reconnecting. */
#define CLIENT_ACK_TIMEOUT_MS_DEFAULT 30000

/* ---- frames ---- */

/* A frame under construction. Fields are private to client.c. */
struct client_frame {
    struct frame_builder builder;
    uint8_t *buffer; /* FRAME_HEADER_SIZE + body_limit + FRAME_MAC_SIZE bytes */
    size_t buffer_size;
    uint32_t events_max;
    uint64_t key_id;
    uint8_t tenant_id[UUID_SIZE];
    uint8_t signing_key[32];
    size_t sealed_size; /* size of the last sealed frame, 0 before the first seal */
};

/*
 * Prepares a frame for `tenant_id`, signed with the signing key derived from
 * `key`'s secret. `events_max` (1..FRAME_EVENTS_MAX) caps the events of one
 * frame and `body_limit` (up to FRAME_BODY_MAX, at least RECORD_SIZE_MAX) its
 * body bytes; use client_udp_body_limit for UDP. `key` is only read during
 * the call, and the caller may wipe it afterwards. Returns HM_ERR_INVALID for
 * a limit out of range, HM_ERR_NOMEM. Release with client_frame_close.
 */
int client_frame_open(struct client_frame *frame, const uint8_t tenant_id[UUID_SIZE],
                      const struct apikey *key, uint32_t events_max, size_t body_limit);

/*
 * Appends an event; its tenant_id is ignored, the frame's tenant applies.
 * Returns HM_ERR_FULL when the frame has events_max events or the record does
 * not fit the body limit (seal and send, then add again), HM_ERR_INVALID for
 * an event that record_encode rejects.
 */
int client_frame_add(struct client_frame *frame, const struct event *event);

/* Returns the number of events appended since the last seal. */
uint16_t client_frame_event_count(const struct client_frame *frame);

/*
 * Writes the header with `frame_id` and the MAC, and starts a new empty frame
 * in the same buffer. Returns the sealed frame, valid until the next
 * client_frame_add or client_frame_close; *size_out receives its size.
 * Sealing an empty frame is a programmer error (a frame carries 1 or more events).
 */
const uint8_t *client_frame_seal(struct client_frame *frame, uint64_t frame_id,
                                 size_t *size_out);

/* Wipes the signing key and frees the buffer; accepts a zeroed struct. */
void client_frame_close(struct client_frame *frame);

/* ---- TCP ---- */

/* Totals of one TCP client since it was opened. */
struct client_stats {
    uint64_t frames_sent;    /* frames handed to client_tcp_send */
    uint64_t frames_resent;  /* transmissions after a reconnect */
    uint64_t frames_acked;   /* frames with a final acknowledgement, accepted or rejected */
    uint64_t events_stored;  /* events newly stored */
    uint64_t events_duplicate; /* events already stored with the same content */
    uint64_t events_conflict;  /* events rejected: their id was stored with other content */
    uint64_t frames_rejected;  /* final acknowledgements with a status other than accepted */
    uint64_t events_rejected;  /* events in rejected frames */
    uint64_t frames_rejected_by_status[FRAME_STATUS_COUNT];
    uint64_t store_failures;   /* FRAME_STORE_FAILED acknowledgements, each followed by a resend */
    uint64_t reconnects;       /* successful connections after the first */
};

/*
 * Called once for each frame's final acknowledgement (FRAME_STORE_FAILED is
 * not final: the frame is resent). `event_count` is the frame's event count.
 * Runs on the thread that called the client function which read the
 * acknowledgement; it must not call back into the client.
 */
typedef void (*client_ack_fn)(void *context, const struct frame_ack *ack, uint16_t event_count);

/* Why the client drops its connection, connects again and resends its frames in flight. */
enum client_retry_reason {
    CLIENT_RETRY_ACK_TIMEOUT = 0, /* no ack and no write progress for ack_timeout_ms */
    CLIENT_RETRY_CLOSED,          /* the server closed or reset the connection, or a socket error */
    CLIENT_RETRY_STORE_FAILED,    /* a FRAME_STORE_FAILED acknowledgement */
    CLIENT_RETRY_BAD_ACK,         /* a malformed or out of order acknowledgement */
    CLIENT_RETRY_CONNECT,         /* the previous connection attempt failed */
};

/* One connection attempt about to start, for client_retry_fn. */
struct client_retry {
    enum client_retry_reason reason;
    uint32_t frames_in_flight; /* sent frames without a final acknowledgement */
    uint64_t events_in_flight;
    uint32_t attempt;          /* 1-based; the client gives up after attempts_max */
    uint32_t attempts_max;
    uint32_t wait_ms;          /* backoff before this attempt */
    uint32_t ack_timeout_ms;
};

/*
 * Called before each connection attempt after a failure, so that the caller
 * can report why frames are pending. Same thread rules as client_ack_fn.
 */
typedef void (*client_retry_fn)(void *context, const struct client_retry *retry);

struct client_tcp_options {
    const char *host; /* name or address, resolved with getaddrinfo */
    const char *port; /* service name or number */
    uint32_t window;  /* frames in flight, 1..CLIENT_WINDOW_MAX; 0 means the default */
    size_t frame_size_max; /* largest frame to send; 0 means FRAME_SIZE_MAX */
    uint32_t reconnect_attempts; /* connection attempts in a row before giving up; 0: default */
    uint32_t backoff_initial_ms; /* first wait between attempts, doubled each time; 0: default */
    uint32_t backoff_max_ms;     /* cap on the wait; 0: default */
    uint32_t ack_timeout_ms;     /* 0: default */
    client_ack_fn on_ack;        /* optional */
    void *on_ack_context;
    client_retry_fn on_retry;    /* optional */
    void *on_retry_context;
};

struct client_tcp;

/*
 * Allocates the window buffers and connects, retrying up to the configured
 * attempts with backoff. The strings of `options` are copied. Returns
 * HM_ERR_INVALID for an option out of range, HM_ERR_NOT_FOUND when the host
 * does not resolve, HM_ERR_IO when no attempt connected, HM_ERR_NOMEM. On
 * success *client_out is the caller's to release with client_tcp_close.
 */
int client_tcp_open(const struct client_tcp_options *options, struct client_tcp **client_out);

/*
 * Returns the errno of the calling thread's last failed connection
 * attempt (ECONNREFUSED, ETIMEDOUT, ...), or 0 when none failed, so that a
 * caller can name why HM_ERR_IO came back.
 */
int client_connect_error(void);

/*
 * Copies a sealed frame into a free window slot and sends it. When the
 * window is full it first waits for acknowledgements. The frame id is read
 * from the frame's header and must differ from every frame in flight (use
 * client_tcp_frame_id_next). The frame is borrowed for the call only.
 * Returns HM_OK once the frame is queued, HM_ERR_INVALID for a frame larger
 * than frame_size_max or without a valid header, HM_ERR_IO when the
 * connection failed and could not be restored within the configured
 * attempts. After HM_ERR_IO the client is failed: every later call returns
 * HM_ERR_IO, and client_tcp_unacked returns the number of frames not delivered.
 */
int client_tcp_send(struct client_tcp *client, const uint8_t *frame, size_t size);

/* Seals `frame` with client_tcp_frame_id_next and sends it as client_tcp_send does. */
int client_tcp_send_frame(struct client_tcp *client, struct client_frame *frame);

/* Returns a new frame id: 1, 2, 3, ... on this client. */
uint64_t client_tcp_frame_id_next(struct client_tcp *client);

/*
 * Waits until every frame in flight has its final acknowledgement.
 * Returns HM_OK, or HM_ERR_IO as client_tcp_send.
 */
int client_tcp_flush(struct client_tcp *client);

/* Returns the number of frames sent and not yet finally acknowledged. */
uint32_t client_tcp_unacked(const struct client_tcp *client);

/* Returns the client's totals, owned by the client. */
const struct client_stats *client_tcp_stats(const struct client_tcp *client);

/*
 * Closes the connection and frees the client without waiting; frames still
 * in flight are dropped (call client_tcp_flush first). Accepts NULL.
 */
void client_tcp_close(struct client_tcp *client);

/* ---- UDP ---- */

struct client_udp_options {
    const char *host;
    const char *port;
    /* Largest datagram, CLIENT_UDP_DATAGRAM_MIN..FRAME_UDP_SIZE_MAX; 0 means 1,400 bytes. */
    size_t datagram_size_max;
};

struct client_udp;

/*
 * Resolves the address and opens a connected UDP socket. Returns
 * HM_ERR_INVALID for an option out of range, HM_ERR_NOT_FOUND when the host
 * does not resolve, HM_ERR_IO, HM_ERR_NOMEM. Release with client_udp_close.
 */
int client_udp_open(const struct client_udp_options *options, struct client_udp **client_out);

/* Returns the body limit that keeps a frame within one datagram, for client_frame_open. */
size_t client_udp_body_limit(const struct client_udp *client);

/*
 * Sends one sealed frame as one datagram. Nothing confirms delivery.
 * Returns HM_ERR_INVALID for a frame above the datagram size, HM_ERR_IO when
 * the send fails (ECONNREFUSED reports that an earlier datagram found no
 * listener).
 */
int client_udp_send(struct client_udp *client, const uint8_t *frame, size_t size);

/* Seals `frame` with the next frame id of this client and sends it. */
int client_udp_send_frame(struct client_udp *client, struct client_frame *frame);

/* Returns the datagrams sent successfully. */
uint64_t client_udp_datagrams_sent(const struct client_udp *client);

/* Closes the socket and frees the client; accepts NULL. */
void client_udp_close(struct client_udp *client);

#endif
