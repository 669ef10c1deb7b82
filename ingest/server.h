/*
 * The ingest server: an io_uring event loop on one UDP and one TCP socket
 * that verifies frames, hands them to the store in batches (group commit)
 * and acknowledges TCP frames once their batch is durable.
 *
 * The server has no access to the store: the caller supplies the key lookup
 * and the batch commit as hooks. The loop and the key lookups run on the
 * calling thread; the commit hook runs on a thread of the server's own, one
 * batch at a time, while the loop fills the next batch.
 */
#ifndef HM_INGEST_SERVER_H
#define HM_INGEST_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* An API key as the server needs it to verify a frame. */
struct ingest_key {
    uint8_t tenant_id[UUID_SIZE];
    uint8_t signing_key[32];
    int revoked;
    int64_t expires_s; /* frames are rejected from this Unix time on; 0: never expires */
};

/* One frame of a batch. Rejected frames stay in the batch so acks keep their order. */
struct batch_entry {
    int32_t connection;  /* TCP connection slot, or -1 for UDP */
    uint32_t generation; /* of the connection slot, to drop acks of a closed connection */
    uint64_t frame_id;
    uint8_t tenant_id[UUID_SIZE];
    enum frame_status status;
    uint16_t detail;
    uint16_t event_count;
    uint32_t body_offset; /* into the batch arena, for accepted frames */
    uint32_t body_size;
    uint16_t stored, duplicates, conflicts; /* filled by the commit hook */
};

struct ingest_batch {
    struct batch_entry *entries;
    size_t entry_count;
    size_t entry_capacity;
    uint8_t *arena; /* bodies of accepted frames */
    size_t arena_size;
    size_t arena_capacity;
    void *hook_state; /* the hooks' own state of this batch (prepare, batch_reset); starts NULL */
    /*
     * Set by the commit hook: microseconds of the commit that the store
     * spent in its durable write (writing and syncing), 0 when unknown.
     */
    uint64_t write_us;
    /* Set by the commit hook: microseconds it waited for the store's write lock, 0 when unknown. */
    uint64_t lock_us;
    /* Set by the commit hook: the store's index of event ids after the commit, 0 when unknown. */
    struct batch_index {
        uint64_t ids;
        uint64_t memory_bytes;
        uint64_t disk_bytes; /* sorted runs of ids on disk */
        uint64_t runs;
        uint64_t spill_failures;
        uint64_t spill_waits; /* commits that waited for the store to write a run */
        uint64_t spill_wait_us;
    } index;
};

struct server_hooks {
    void *context;
    /* Called before a run of key lookups, and after it. */
    int (*lookup_begin)(void *context);
    void (*lookup_end)(void *context);
    /* Returns HM_OK, HM_ERR_NOT_FOUND, or another error (treated as a store failure). */
    int (*key_lookup)(void *context, uint64_t key_id, struct ingest_key *out);
    /*
     * Stores the accepted entries of a batch durably, filling their counts.
     * Returns HM_OK only once the batch is on disk. On any error nothing of
     * the batch may be stored, and the server acknowledges every accepted
     * entry with FRAME_STORE_FAILED.
     */
    int (*commit)(void *context, struct ingest_batch *batch);
    /*
     * Optional. Called on the loop's thread for each accepted frame once its
     * body is in the batch arena, with its events as frame_verify decoded
     * them (entry->event_count of them), before the batch goes to the commit
     * hook: work done here overlaps the commit of the previous batch. An
     * error acknowledges the frame with FRAME_STORE_FAILED.
     */
    int (*prepare)(void *context, struct ingest_batch *batch, const struct batch_entry *entry,
                   const uint8_t *body, const struct event *events);
    /*
     * Optional. Called on the loop's thread when a batch is emptied after
     * its acks were queued or its frames were dropped, so that the hooks can
     * forget what prepare gathered for it. A batch held because the ledger
     * is full is not emptied: its next commit gets the same batch.
     */
    void (*batch_reset)(void *context, struct ingest_batch *batch);
};

struct server_options {
    const char *host;     /* IPv4 or IPv6 literal; default 127.0.0.1 */
    uint16_t tcp_port;    /* 0 picks a free port */
    uint16_t udp_port;    /* 0 picks a free port */
    const char *port_file; /* when set, "tcp=PORT udp=PORT\n" is written here once listening */
    const char *stats_file; /* when set, counters are written here as JSON every 2 s and at stop */
    uint32_t connections_max; /* 0 selects SERVER_CONNECTIONS_DEFAULT */
    uint32_t frame_timeout_ms; /* a started frame must arrive whole within this; 0: default */
    uint32_t idle_timeout_ms;  /* a connection with nothing in flight closes after this; 0: default */
    int64_t max_event_age_s;   /* events older than this are rejected; 0: no limit */
    /* events ahead of the server's clock by more than this are rejected; 0: default, < 0: no limit */
    int64_t max_event_skew_s;
    /* The store's index of event ids at start, shown until the first commit reports it. */
    struct batch_index index;
};

/*
 * Senders stamp events with their own clock. 15 minutes covers a clock that
 * NTP has not corrected yet, and rejects a sender whose clock is hours or
 * months ahead.
 */
#define SERVER_EVENT_SKEW_S_DEFAULT 900

/* Clock and limits that frame_verify checks key expiry and event times against. */
struct verify_policy {
    int64_t now_us;        /* the server's UTC clock, microseconds since the epoch */
    int64_t max_age_us;    /* 0: no limit on the age of an event */
    int64_t max_skew_us;   /* < 0: no limit on how far ahead of now_us an event may be */
};

/*
 * A frame of at most 256 KiB that takes longer than 10 s to arrive comes
 * from a sender that is stuck or hostile, for example one byte at a time.
 * Its connection is closed so that it cannot hold a slot.
 */
#define SERVER_FRAME_TIMEOUT_MS_DEFAULT 10000
/* An idle sender reconnects cheaply, so an idle minute frees its slot. */
#define SERVER_IDLE_TIMEOUT_MS_DEFAULT 60000

/* Open TCP connections; each costs a receive buffer that grows to FRAME_SIZE_MAX. */
#define SERVER_CONNECTIONS_DEFAULT 256
#define SERVER_CONNECTIONS_MAX 65536
/*
 * Frames rejected in a row, for their key or as malformed, after which a
 * connection is closed once their acks are sent. Events outside the time
 * window do not count: their frames carry a valid key. A peer without a
 * valid key thus cannot keep a slot by sending frames.
 */
#define SERVER_REJECTS_IN_ROW_MAX 16

/* Upper bounds in ms of the commit duration buckets; the last bucket has none. */
#define SERVER_COMMIT_BUCKETS 10
extern const uint32_t commit_ms_bounds[SERVER_COMMIT_BUCKETS - 1];

struct server_stats {
    uint64_t frames_received;
    uint64_t frames_by_status[FRAME_STATUS_COUNT];
    uint64_t events_stored;
    uint64_t events_duplicate;
    uint64_t events_conflict;
    uint64_t commits;
    uint64_t commit_failures;
    uint64_t commit_us_total; /* time the commit hook took, over all batches */
    uint64_t commit_us_max;   /* the longest commit */
    /*
     * Commits by duration: [i] counts those over commit_ms_bounds[i - 1] ms
     * and up to commit_ms_bounds[i] ms.
     */
    uint64_t commit_ms_counts[SERVER_COMMIT_BUCKETS];
    /*
     * The part of the commits that the store spent in its durable write
     * (ingest_batch.write_us); the rest is work of the CPU. Same buckets.
     */
    uint64_t write_us_total;
    uint64_t write_us_max;
    uint64_t write_ms_counts[SERVER_COMMIT_BUCKETS];
    /* The part of the commits spent waiting for the store's write lock (ingest_batch.lock_us). */
    uint64_t lock_us_total;
    uint64_t lock_us_max;
    struct batch_index index; /* as the last commit left it */
    uint64_t connections_accepted;
    uint64_t connections_rejected; /* above connections_max */
    uint64_t connections_timed_out; /* a frame too slow, or idle too long */
    uint64_t connections_evicted;   /* closed to make room at connections_max (see server.c) */
    uint64_t connections_closed_rejects; /* closed after SERVER_REJECTS_IN_ROW_MAX rejected frames */
    uint64_t udp_dropped;           /* datagrams the kernel dropped for a full receive buffer */
    uint64_t udp_dropped_full;      /* UDP frames dropped while the ledger was full */
    uint64_t store_full;            /* 1 while the ledger is full and frames wait unacknowledged */
};

/*
 * Runs the server until SIGTERM or SIGINT. Returns HM_OK after a clean stop
 * (the last batch committed and acknowledged), HM_ERR_IO when a socket or
 * io_uring cannot be set up (logged). `stats_out` receives the final
 * counters when not NULL.
 */
int server_run(const struct server_options *options, const struct server_hooks *hooks,
               struct server_stats *stats_out);

/*
 * Verifies one complete frame (header, key, MAC, key state, tenant, every
 * record, the event time window) and returns its status. On FRAME_MALFORMED,
 * FRAME_EVENT_TOO_OLD and FRAME_EVENT_IN_FUTURE, *detail_out is the index of
 * the first bad event and *reason_out describes it. When events_out is not
 * NULL (room for FRAME_EVENTS_MAX events), it receives the decoded events
 * of an accepted frame, in order.
 */
enum frame_status frame_verify(const uint8_t *frame, size_t frame_size,
                               const struct server_hooks *hooks,
                               const struct verify_policy *policy, struct frame_header *header,
                               struct event *events_out, uint16_t *detail_out,
                               const char **reason_out);

#endif
