/*
 * meterbench: meterd side by side with PostgreSQL, SQLite, Redis and the raw
 * ceilings (LMDB appends, loopback socket receive) on the same events.
 *
 * The parts:
 * - pool.c: the event pool. The bundled traces are replayed by the real
 *   replay code (engine/lib/replay.c) into an in-process collector, then
 *   synthetic events are drawn from the replayed ones. Every event is
 *   sealed into frames once; every peer gets the same frames in the same
 *   order. The pool also computes the rollups that a prefix must produce.
 * - driver.c: the load drivers (a TCP frame stream with acknowledgements, a
 *   worker pool, a group-commit writer), open-loop arrival schedules,
 *   latency percentiles, process CPU and memory from /proc, child processes.
 * - peer_*.c: one file per peer: start its server, store a batch durably,
 *   read back what it stored.
 * - meterbench.c: options, the run plan, progress, the results JSON, and the
 *   report (bench/report.py).
 */
#ifndef HM_BENCH_H
#define HM_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ingest/apikey.h"
#include "ingest/event.h"
#include "ingest/wire.h"

#define BENCH_TENANTS_MAX 64
/*
 * The most events the pool grows to for open-loop phases: about 100 bytes
 * each in memory, and 4 s at 0.9 of 5,000,000 events/s.
 */
#define BENCH_POOL_EVENTS_MAX ((size_t)18000000)

/* Events per commit of the embedded peers until meterd's own figure is measured. */
#define BENCH_GROUP_EVENTS_DEFAULT 4096

/* ---- tenants ---- */

struct bench_tenant {
    uint8_t id[UUID_SIZE];
    char id_text[UUID_TEXT_SIZE];
    char name[32];
    struct apikey key;
};

/* ---- the event pool ---- */

/* One sealed frame of the pool: a batch of events of one tenant. */
struct pool_frame {
    size_t offset; /* into pool.frame_bytes */
    uint32_t size; /* whole frame: header, records, MAC */
    uint16_t event_count;
    uint16_t tenant_index;
    size_t first_event; /* index of its first event in pool order */
};

/* An event as the SQL and Redis peers receive it: rendered once, outside any timing. */
struct rendered_event {
    const char *event_type; /* event_kind_name */
    size_t metadata_offset; /* into pool.text, a NUL-terminated JSON object */
    uint32_t record_offset;   /* into the frame bytes, from the frame's first byte */
    uint16_t record_size;
};

struct pool {
    uint32_t tenant_count;
    struct bench_tenant tenants[BENCH_TENANTS_MAX];
    uint32_t events_per_frame;
    uint8_t *frame_bytes;
    size_t frame_bytes_size;
    size_t frame_bytes_capacity;
    struct pool_frame *frames;
    size_t frame_count;
    size_t frames_capacity;
    size_t event_count;
    size_t trace_event_count; /* events from the trace replay, at the start of the pool order */
    struct event *trace_events; /* those events, decoded, in replay order */
    /* Rendered forms of the first rendered_count events (pool_render). */
    struct event *events;     /* decoded */
    struct rendered_event *rendered;
    size_t rendered_count;
    char *text;
    size_t text_size;
    size_t text_capacity;
    uint64_t draw_state; /* the random state after the last synthetic event drawn */
    int64_t synthetic_end_us; /* synthetic timestamps fall from 2023-11-01 up to this instant */
};

struct pool_options {
    const char *keys_path;   /* TENANT_UUID NAME API_KEY lines, as meterctl key create writes */
    const char *trace_dir;   /* data/traces */
    size_t event_target;     /* pool size in events: the traces, then synthetic events */
    uint32_t events_per_frame;
    uint64_t seed;
    uint32_t months; /* calendar months, from 2023-11, that synthetic timestamps spread over: 1 to 6 */
};

/* Maximum number of calendar months that synthetic timestamps spread over. */
#define POOL_MONTHS_MAX 6

/* Builds the pool. Returns HM_OK, or an error after printing its cause. */
int pool_build(struct pool *pool, const struct pool_options *options);

/*
 * Appends synthetic frames, drawn as pool_build draws them, until the pool
 * contains at least `event_target` events. HM_ERR_NOMEM leaves the frames that
 * were sealed.
 */
int pool_extend(struct pool *pool, size_t event_target);
void pool_free(struct pool *pool);

/* Decodes and renders the events of the first frame_count frames (once; later calls extend). */
int pool_render(struct pool *pool, size_t frame_count);

/*
 * Draws a synthetic event: a replayed event picked at random, with a new
 * random event id and a timestamp spread uniformly over [start_us, end_us).
 */
void pool_draw_event(const struct pool *pool, uint64_t *state, int64_t start_us, int64_t end_us,
                     struct event *out);
/* Returns the next number of the pool's deterministic generator (splitmix64). */
uint64_t pool_random(uint64_t *state);

/* Returns the number of events in the first frame_count frames. */
size_t pool_events_in(const struct pool *pool, size_t frame_count);

/* Returns the smallest frame count that contains at least event_count events. */
size_t pool_frames_for(const struct pool *pool, size_t event_count);

/* ---- rollups ---- */

/*
 * Rollups as the ledger keeps them (rollup/ledger.c): per tenant, month,
 * meter and dimension, a quantity and the number of events that added to it.
 */
struct rollup_entry {
    char key[UUID_TEXT_SIZE + 8 + 4 + EVENT_ENDPOINT_MAX + 1]; /* tenant|period|meter|dimension */
    unsigned __int128 quantity;
    uint64_t event_count;
    int used;
};

struct rollup_map {
    struct rollup_entry *entries;
    size_t capacity;
    size_t count;
};

int rollup_map_init(struct rollup_map *map);
void rollup_map_free(struct rollup_map *map);
int rollup_map_add(struct rollup_map *map, const char *tenant_text, uint32_t period, int meter,
                   const char *dimension, unsigned __int128 quantity, uint64_t event_count);
/* Receives one rollup row of an event: tenant UUID text, period yyyymm, rollup_meter. */
typedef int (*rollup_row_fn)(void *context, const char *tenant_text, uint32_t period, int meter,
                             const char *dimension, uint64_t quantity);
/* Calls `row` for each rollup row of one event, with the rules of ledger_append. */
int rollup_rows_of_event(const struct event *event, rollup_row_fn row, void *context);
/* Adds the rollup rows of one event, each counting the event once. */
int rollup_map_add_event(struct rollup_map *map, const struct event *event);
/* Computes the rollups of the first frame_count frames (rendered first). */
int rollup_map_expected(struct rollup_map *map, struct pool *pool, size_t frame_count);
/* Returns the number of differing keys; prints up to `print_max` of them with `label`. */
size_t rollup_map_diff(const struct rollup_map *want, const struct rollup_map *got,
                       const char *label, int print_max);
/* Lists the periods (yyyymm) present, sorted; returns the count (at most periods_max). */
size_t rollup_map_periods(const struct rollup_map *map, uint32_t *periods, size_t periods_max);

/* ---- measurement ---- */

struct latency_summary {
    size_t samples;
    double p50_ms, p99_ms, p999_ms, max_ms;
};

/* Sorts the samples in place and fills the summary. */
void latency_summarize(uint64_t *samples_ns, size_t count, struct latency_summary *out);

int64_t bench_now_ns(void);
void bench_sleep_until_ns(int64_t deadline_ns);

/* CPU seconds (user + system) of a process and its reaped children; -1 when unreadable. */
double proc_cpu_seconds(pid_t pid);
/* Same, summed over a process and its live direct children (PostgreSQL's backends). */
double proc_tree_cpu_seconds(pid_t pid);
/* A KiB field of /proc/PID/status (VmHWM, RssAnon, RssFile, ...); -1 when unreadable. */
long proc_status_kib(pid_t pid, const char *field);

/* Reads a field of /proc/PID/status every 20 ms on a thread of its own, keeping the most. */
struct status_sampler {
    pid_t pid;
    const char *field;
    _Atomic int stop;
    _Atomic long peak_kib;
    pthread_t thread;
    int running;
};

void status_sampler_start(struct status_sampler *sampler, pid_t pid, const char *field);
/* Stops the sampler and returns the most it saw, or -1 when it could not run. */
long status_sampler_stop(struct status_sampler *sampler);
/* Largest VmHWM over a process and its live direct children. */
long proc_tree_hwm_kib(pid_t pid);
/* Resets this process's VmHWM to its current RSS (clear_refs 5); returns HM_OK or HM_ERR_IO. */
int proc_reset_hwm(void);

/* ---- child processes ---- */

/*
 * Starts argv[0] (a path) with stdout and stderr appended to log_path (or
 * inherited when NULL). When run_as is not NULL and this process is root,
 * runs it through runuser as that user. Returns the pid, or -1.
 */
pid_t child_start(char *const argv[], const char *log_path, const char *run_as);
/* Waits for a child; returns its exit status, or -1 (killed, or wait failed). */
int child_wait(pid_t pid);
/* Runs a command to completion; returns its exit status, or -1. */
int child_run(char *const argv[], const char *log_path, const char *run_as);
/* Sends SIGTERM, waits up to timeout_ms, then SIGKILL. Returns the exit status or -1. */
int child_stop(pid_t pid, int timeout_ms);

/* ---- phases ---- */

/* One measured run of a peer: a closed loop, or open-loop arrivals at a rate. */
struct phase {
    const char *peer;     /* for progress lines */
    int open_loop;
    double load_fraction; /* of the peer's closed-loop maximum, or of --open-max; 0 for the closed loop */
    double offered_eps;   /* open loop: load_fraction times that maximum */
    double frames_per_second; /* open loop: mean arrival rate (Poisson arrivals) */
    size_t frame_count;       /* frames of the pool, from the first */
    int64_t *schedule_ns;     /* open loop: arrival time of each frame, from the phase start */
    double time_cap_s;        /* the phase stops sending after this */
    /* results */
    size_t frames_done;
    size_t events_done;
    double seconds;
    uint64_t *latency_ns; /* per frame, open loop */
    size_t latency_count;
    /*
     * TCP streams, open loop: per frame, how long after its arrival time the
     * sender finished writing it. The part of the latency that the sender's
     * own wait for a CPU adds, counted in the latency all the same.
     */
    uint64_t *send_lag_ns;
    size_t send_lag_count;
    uint64_t stored, duplicates, conflicts, rejected;
    int failed; /* a transport or store error: the phase is not valid */
    int stopped_by_cap;
    double thread_cpu_s; /* embedded peers: CPU of the storage threads */
};

/* Fills the arrival schedule of an open-loop phase (Poisson, fixed seed). Returns HM_OK or NOMEM. */
int phase_schedule(struct phase *phase, uint64_t seed);
void phase_free(struct phase *phase);

/* Progress: one line to stderr about once a second while a phase runs. */
void progress_tick(const struct phase *phase, size_t frames_done, size_t events_done,
                   int64_t started_ns, int64_t *last_ns);

/* A TCP stream of frames with one 24-byte acknowledgement per frame (meterd, the sink). */
struct stream_options {
    const char *host;
    uint16_t port;
    uint32_t connections; /* frames go round robin over them */
    uint32_t window;      /* closed loop: frames in flight per connection */
};
int drive_stream(struct pool *pool, struct phase *phase, const struct stream_options *options);

/* A peer that stores batches of frames through connections of its own. */
struct batch_ops {
    void *peer;
    /* Opens worker number `worker`'s connection or transaction state. */
    int (*open)(void *peer, uint32_t worker, void **state);
    /* Stores frames [first, first + count) durably (or, for Redis, applied). */
    int (*store)(void *state, size_t first, size_t count);
    void (*close)(void *state);
    /* Optional: called once the workers stop, before the connections close (CPU, memory). */
    void (*finish)(void *peer);
};

/*
 * Worker pool: `workers` threads, each storing one frame at a time when
 * group_events is 0, or one thread storing every frame that has arrived,
 * up to group_events events, per call (group commit) when it is not.
 */
int drive_batches(struct pool *pool, struct phase *phase, const struct batch_ops *ops,
                  uint32_t workers, uint32_t group_events);

/* Set by SIGINT or SIGTERM: drivers stop sending and the run cleans up. */
extern volatile int bench_interrupted;

/* ---- the run and its results ---- */

#define BENCH_LOADS_MAX 8
#define BENCH_PATH_MAX 4096

struct open_result {
    double load_fraction;
    double offered_eps;  /* events per second offered */
    double achieved_eps; /* events acknowledged per second */
    size_t events;
    double seconds;
    struct latency_summary latency;
    struct latency_summary send_lag; /* samples 0 when the driver does not measure it */
    int stopped_by_cap;
    int failed;
    /* meterd: its commits in the phase, those that took over 10 ms, and the slowest; else -1 */
    long long commits, commits_over_10ms;
    double commit_max_ms;
    /* meterd: the mean commit, and the part of it spent writing and syncing; else -1 */
    double commit_mean_ms, write_mean_ms;
};

struct peer_result {
    const char *name;
    const char *durability; /* what an acknowledgement means */
    int ran;
    int failed;
    char note[512]; /* why it was skipped or failed, or what was checked */
    size_t closed_events;
    double closed_seconds;
    double closed_eps;
    double cpu_s;   /* of the server processes (or storage thread) during the closed loop */
    long rss_kib;   /* peak resident memory */
    /* meterd: RssAnon (heap) and RssFile (mapped ledger) at the end of its closed loop; else -1 */
    long rss_anon_kib, rss_file_kib;
    /* meterd: the most RssAnon that samples every 20 ms saw in the closed loop; else -1 */
    long rss_anon_peak_kib;
    int count_ok;   /* stored exactly the events sent */
    int rollups_checked;
    size_t rollup_differences;
    double rollup_query_s; /* the GROUP BY that computes the rollups, timed apart */
    double events_per_commit;
    uint64_t sent, stored; /* UDP: events sent and stored */
    struct open_result open[BENCH_LOADS_MAX];
    size_t open_count;
};

struct bench {
    struct pool pool;
    char temp_dir[512]; /* $TMPDIR/meterbench.XXXXXX; a longer $TMPDIR is rejected */
    char program_dir[1024]; /* meterd and meterctl are beside meterbench */
    char keys_path[BENCH_PATH_MAX];
    char meterd_template[BENCH_PATH_MAX];
    char self_path[BENCH_PATH_MAX];
    size_t closed_frames;
    double loads[BENCH_LOADS_MAX];
    size_t load_count;
    double duration_s;  /* of each open-loop phase */
    double open_max_eps; /* when above 0, the maximum that open-loop loads are fractions of */
    double time_cap_s;  /* of each phase */
    uint32_t group_events; /* events per commit of the embedded peers (meterd's own, measured) */
    struct rollup_map expected; /* rollups of the closed-loop frames */
    uint32_t connections;  /* TCP connections to meterd and the socket sink */
    uint32_t window;       /* frames in flight per connection in the closed loop */
    uint32_t pg_connections;
    uint32_t redis_connections;
    uint32_t index_memory_mib; /* passed to meterd as --index-memory; 0: meterd's default */
    uint64_t seed;
    int smoke;
};

/* Prepares a closed-loop phase over the first bench->closed_frames frames. */
void bench_closed_phase(const struct bench *bench, const char *peer, struct phase *phase);
/*
 * Prepares an open-loop phase at `load` times max_eps for bench->duration_s.
 * The pool grows first when it contains fewer events, up to
 * BENCH_POOL_EVENTS_MAX; a faster peer gets a shorter phase, which the
 * report shows. Returns HM_OK or HM_ERR_NOMEM.
 */
int bench_open_phase(struct bench *bench, const char *peer, double load, double max_eps,
                     struct phase *phase);
/* Records an open-loop phase into the next open result. */
void bench_record_open(struct peer_result *result, struct phase *phase);
/* Records a closed loop; returns its events per second. */
double bench_record_closed(struct peer_result *result, const struct phase *phase);
/* Compares a peer's rollups with the expected ones and records the outcome. */
void bench_check_rollups(struct bench *bench, struct peer_result *result,
                         const struct rollup_map *got);

/* ---- the close phase (close.c) ---- */

struct close_result {
    int ran; /* 0: skipped, and note gives the reason */
    int failed;
    char note[512];
    uint32_t tenants;
    uint64_t events_requested;
    uint64_t events;       /* committed by the fill */
    double fill_seconds;
    uint64_t ledger_bytes; /* data.mdb on disk after the fill */
    double close_seconds;  /* the first close: open, checks, billing_close, ledger close */
    double rerun_seconds;  /* the same again, with every tenant's month closed */
    size_t invoices;       /* finalized invoices of the month that passed the check */
    size_t invoice_files;  /* files in invoices/2023-11 */
    int64_t total_minor_min, total_minor_max, total_minor_sum; /* invoice totals, in cents */
};

/*
 * Fills a fresh ledger in the run's temporary directory with `tenants`
 * tenants and `events` events of November 2023 (fewer when the disk is
 * short), closes the month as `meterctl close` does, times it, checks the
 * invoices and times a second close. Returns HM_OK, also when skipped.
 */
int close_phase(struct bench *bench, uint32_t tenants, uint64_t events,
                struct close_result *result);

/* The peers; each fills its result and returns HM_OK, or an error after recording why. */
int peer_meterd_tcp(struct bench *bench, struct peer_result *result);
int peer_meterd_udp(struct bench *bench, struct peer_result *result);
int peer_postgres(struct bench *bench, struct peer_result *result);
int peer_sqlite(struct bench *bench, struct peer_result *result);
int peer_redis(struct bench *bench, struct peer_result *result);
int peer_lmdb(struct bench *bench, struct peer_result *result);
int peer_socket(struct bench *bench, struct peer_result *result);
/* The socket sink's server: `meterbench --sink-serve PORT_FILE COUNT_FILE`. */
int sink_serve(const char *port_file, const char *count_file);
/* Creates the meterd template ledger with `tenants` tenants and their keys file. */
int meterd_prepare(struct bench *bench, uint32_t tenants);

#endif
