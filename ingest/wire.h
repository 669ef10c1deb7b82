/*
 * The binary wire format of usage frames and acknowledgements, described
 * byte by byte in docs/PROTOCOL.md. All integers are little-endian.
 *
 * A frame carries 1 to FRAME_EVENTS_MAX events of one tenant and is signed
 * with HMAC-SHA256 under the signing key of one of that tenant's API keys.
 */
#ifndef HM_WIRE_H
#define HM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"

#define FRAME_MAGIC "HMTR"
#define FRAME_VERSION 1
#define FRAME_HEADER_SIZE 44
#define FRAME_MAC_SIZE 32
/* Events in one frame; bounds the work of one frame and the size of an ack batch. */
#define FRAME_EVENTS_MAX 4096
/*
 * Largest body in bytes. 256 KiB holds FRAME_EVENTS_MAX events of the largest
 * common record (about 60 bytes) with room to spare, and keeps the per
 * connection receive buffer small.
 */
#define FRAME_BODY_MAX (256 * 1024)
#define FRAME_SIZE_MAX (FRAME_HEADER_SIZE + FRAME_BODY_MAX + FRAME_MAC_SIZE)
/* Largest UDP payload (65,535 minus the IPv4 and UDP headers). */
#define FRAME_UDP_SIZE_MAX 65507
/* Fixed part of an event record: kind, reserved, length, event id, timestamp. */
#define RECORD_HEADER_SIZE 28
/* Offsets in a record: its event id and its timestamp (little-endian microseconds). */
#define RECORD_ID_AT 4
#define RECORD_TIMESTAMP_AT 20
/* Largest encoded event record (a GPU allocation with three names of 64 bytes). */
#define RECORD_SIZE_MAX (RECORD_HEADER_SIZE + 12 + 3 * (1 + EVENT_NAME_MAX))

#define ACK_MAGIC "HMAK"
#define ACK_SIZE 24

/* Frame-level result, sent as the status byte of an acknowledgement. */
enum frame_status {
    FRAME_ACCEPTED = 0,      /* every event stored, or already stored (see the counts) */
    FRAME_BAD_MAGIC = 1,     /* the first four bytes are not "HMTR" */
    FRAME_BAD_VERSION = 2,   /* unsupported version or nonzero flags */
    FRAME_TOO_LARGE = 3,     /* body length or event count above the limits */
    FRAME_TRUNCATED = 4,     /* fewer bytes than the header declares */
    FRAME_UNKNOWN_KEY = 5,   /* no API key with this key id */
    FRAME_REVOKED_KEY = 6,   /* the key was revoked */
    FRAME_BAD_MAC = 7,       /* HMAC-SHA256 does not match */
    FRAME_MALFORMED = 8,     /* an event record is invalid; the ack detail is its index */
    FRAME_WRONG_TENANT = 9,  /* the key belongs to another tenant */
    FRAME_STORE_FAILED = 10, /* the ledger write failed; nothing of the frame was stored, resend */
    FRAME_EXPIRED_KEY = 11,  /* the key's expiry time has passed */
    FRAME_EVENT_TOO_OLD = 12,  /* an event is older than the server's window; detail is its index */
    FRAME_EVENT_IN_FUTURE = 13, /* an event is ahead of the server's clock by more than the skew */
    FRAME_STATUS_COUNT = 14,
};

/* Returns the status's name as used in logs and metrics ("bad_mac", ...). */
const char *frame_status_name(enum frame_status status);

/* The decoded fixed header of a frame. */
struct frame_header {
    uint8_t version;
    uint8_t flags;
    uint16_t event_count;
    uint32_t body_size;
    uint64_t frame_id; /* chosen by the sender, echoed in the ack */
    uint64_t key_id;
    uint8_t tenant_id[UUID_SIZE];
};

/* An acknowledgement, sent on TCP for every frame. */
struct frame_ack {
    enum frame_status status;
    uint16_t detail; /* for FRAME_MALFORMED and the event window statuses, the event's index */
    uint64_t frame_id;
    uint16_t stored;     /* events newly stored */
    uint16_t duplicates; /* events already stored with the same content */
    uint16_t conflicts;  /* events whose id was stored with other content; rejected */
};

/*
 * Parses the 44-byte header at `bytes` (size at least FRAME_HEADER_SIZE).
 * Returns FRAME_ACCEPTED, FRAME_BAD_MAGIC, FRAME_BAD_VERSION or
 * FRAME_TOO_LARGE. On FRAME_TOO_LARGE the header is filled in.
 */
enum frame_status frame_header_decode(const uint8_t *bytes, struct frame_header *header);

/* Returns the total frame size that a valid header declares. */
static inline size_t frame_total_size(const struct frame_header *header)
{
    return FRAME_HEADER_SIZE + (size_t)header->body_size + FRAME_MAC_SIZE;
}

/*
 * Checks the frame's HMAC-SHA256 under `signing_key` in constant time.
 * `frame` is frame_total_size(header) bytes long. Returns 1 when it matches.
 */
int frame_mac_verify(const uint8_t *frame, size_t frame_size, const uint8_t signing_key[32]);

/*
 * Decodes the next event record at body[*offset]. Fills `event` (with
 * `tenant_id` copied in) and advances *offset. Returns HM_OK or
 * HM_ERR_INVALID for a malformed record; `reason_out` then names the fault.
 * The record's bytes are body[start .. *offset) and are canonical: two
 * records that decode to the same event have the same bytes.
 */
int record_decode(const uint8_t *body, size_t body_size, size_t *offset,
                  const uint8_t tenant_id[UUID_SIZE], struct event *event,
                  const char **reason_out);

/*
 * Encodes one event as a record into out (capacity RECORD_SIZE_MAX).
 * Returns the record size, or HM_ERR_INVALID when a field is out of range
 * (empty or overlong name, a byte outside printable ASCII, cached tokens
 * above input tokens, a timestamp outside 1970..9999, unknown kind).
 */
int record_encode(const struct event *event, uint8_t *out);

/*
 * Frame builder for senders: append records, then seal. The buffer is the
 * caller's and must hold FRAME_SIZE_MAX bytes.
 */
struct frame_builder {
    uint8_t *buffer;
    size_t size; /* bytes written so far, header included */
    uint16_t event_count;
    size_t body_limit; /* FRAME_BODY_MAX, or less for UDP */
};

void frame_builder_start(struct frame_builder *builder, uint8_t *buffer, size_t body_limit);

/* Appends an event; returns HM_ERR_FULL when it does not fit, HM_ERR_INVALID as record_encode. */
int frame_builder_add(struct frame_builder *builder, const struct event *event);

/*
 * Writes the header and the MAC. Returns the frame size. The builder may be
 * started again afterwards.
 */
size_t frame_builder_seal(struct frame_builder *builder, uint64_t frame_id, uint64_t key_id,
                          const uint8_t tenant_id[UUID_SIZE], const uint8_t signing_key[32]);

void ack_encode(const struct frame_ack *ack, uint8_t out[ACK_SIZE]);

/* Returns HM_OK or HM_ERR_INVALID when the bytes are not an acknowledgement. */
int ack_decode(const uint8_t bytes[ACK_SIZE], struct frame_ack *ack);

#endif
