#include "dedup.h"
#include "hash_mix.h"

#include "common/status.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SEGMENT_BITS 13
#define SEGMENT_SLOTS (UINT32_C(1) << SEGMENT_BITS)
#define SEGMENT_MASK (SEGMENT_SLOTS - 1)
/*
 * Each segment splits once its slots in use, live or removed, pass a point
 * drawn between these two (invariant 2 needs them below SEGMENT_SLOTS).
 * Segments that fill at the same pace, as uniform fingerprints make them,
 * then split over a stretch of inserts instead of all in one burst that
 * would stall commits and outrun the helper thread's arenas.
 */
#define SEGMENT_FULL_MIN (SEGMENT_SLOTS / 2)
#define SEGMENT_FULL_MAX (SEGMENT_SLOTS / 5 * 4)
/*
 * A slot's home within its segment comes from the low SEGMENT_BITS of the
 * fingerprint, the directory from its top bits. A directory of 2^24
 * entries leads to room for up to about 10^11 ids.
 */
#define DEPTH_MAX 24

#define TAG_EMPTY 0
#define TAG_REMOVED 1

/* Each arena is one huge page, so that a probe's random access misses the TLB less often. */
#define ARENA_BYTES ((size_t)2 << 20)

struct dedup_segment {
    /* Fingerprints, 8 to a cache line: most probes read one or two lines. */
    _Alignas(64) uint64_t tags[SEGMENT_SLOTS];
    uint32_t locators[SEGMENT_SLOTS]; /* see DEDUP_SPAN */
    uint32_t used; /* live and removed slots */
    uint32_t live;
    unsigned depth; /* leading fingerprint bits that all its ids share */
    uint32_t full;  /* slots in use past which it splits */
};

#define ARENA_SEGMENTS (ARENA_BYTES / sizeof(struct dedup_segment))

enum { SPARE_NONE, SPARE_MAKING, SPARE_READY, SPARE_FAILED };
enum { SPILL_NONE, SPILL_RUNNING, SPILL_DONE };

/* Transactions after a failed spill before the next try. */
#define SPILL_RETRY_WAIT 1000

/* Mapped memory that segments are carved from, kept until the table is emptied. */
struct dedup_arena {
    struct dedup_arena *next;
    uint8_t *base;
    size_t used; /* segments carved */
};

/* A hash table of ids in memory: the one that takes the inserts, or a frozen one. */
struct dedup_table {
    struct dedup_segment **directory; /* 1 << depth entries */
    unsigned depth;                   /* bits of the fingerprint that index the directory */
    size_t count;                     /* live ids */
    size_t segments;
    struct dedup_arena *arenas;
    /* The next arena, mapped and faulted in by a helper thread; see spare_state. */
    uint8_t *spare;
    pthread_t spare_thread;
    _Atomic int spare_state;
    uint64_t split_seed;
};

struct dedup_undo {
    uint64_t tag;
    uint32_t locator;
};

static inline uint64_t tag_of(uint64_t fingerprint)
{
    return fingerprint > TAG_REMOVED ? fingerprint : fingerprint + 2;
}

static inline uint32_t locator_kept(uint64_t locator)
{
    return locator == DEDUP_LEGACY ? (uint32_t)DEDUP_SPAN : (uint32_t)(locator % DEDUP_SPAN);
}

static inline uint32_t home_of(uint64_t tag)
{
    return (uint32_t)tag & SEGMENT_MASK;
}

static inline struct dedup_segment *segment_of(const struct dedup_table *table, uint64_t tag)
{
    return table->directory[table->depth == 0 ? 0 : tag >> (64 - table->depth)];
}

static uint32_t empty_slot(const struct dedup_segment *segment, uint64_t tag)
{
    uint32_t at = home_of(tag);
    while (segment->tags[at] != TAG_EMPTY)
        at = (at + 1) & SEGMENT_MASK;
    return at;
}

static inline void slot_put(struct dedup_segment *segment, uint32_t at, uint64_t tag,
                            uint32_t locator)
{
    segment->tags[at] = tag;
    segment->locators[at] = locator;
    segment->used++;
    segment->live++;
}

/*
 * Maps `bytes` (a power of two) aligned to their size. With `huge` set, the
 * mapping requests huge pages, whose first touch may wait while the kernel
 * compacts memory, so only the helper thread sets it.
 */
static uint8_t *map_aligned(size_t bytes, int huge)
{
    size_t span = 2 * bytes;
    uint8_t *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)raw + bytes - 1) & ~(uintptr_t)(bytes - 1);
    size_t head = start - (uintptr_t)raw;
    if (head > 0)
        munmap(raw, head);
    if (span - head - bytes > 0)
        munmap((uint8_t *)start + bytes, span - head - bytes);
    if (huge)
        madvise((void *)start, bytes, MADV_HUGEPAGE);
    return (uint8_t *)start;
}

static void *spare_make(void *context)
{
    struct dedup_table *table = context;
    /* Its own name, so that a profile separates its page zeroing from the commits. */
    pthread_setname_np(pthread_self(), "ledger-index");
    uint8_t *base = map_aligned(ARENA_BYTES, 1);
    if (base == NULL) {
        atomic_store(&table->spare_state, SPARE_FAILED);
        return NULL;
    }
    /*
     * Touching the arena here has the kernel zero its memory now: on the
     * writer, the fault of a huge page stalled a commit for milliseconds.
     */
    for (size_t offset = 0; offset < ARENA_BYTES; offset += 4096)
        ((volatile uint8_t *)base)[offset] = 0;
    table->spare = base;
    atomic_store(&table->spare_state, SPARE_READY);
    return NULL;
}

/*
 * Starts `thread` with every signal blocked. It may be created before
 * meterd blocks SIGTERM and SIGINT to read them from a signalfd. If the
 * thread did not block them, the kernel could deliver one to it, and the
 * default action would end the process instead of a clean stop.
 */
static int thread_start(pthread_t *thread, void *(*run)(void *), void *context)
{
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    int rc = pthread_create(thread, NULL, run, context);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    return rc;
}

static void spare_request(struct dedup_table *table)
{
    table->spare = NULL;
    atomic_store(&table->spare_state, SPARE_MAKING);
    if (thread_start(&table->spare_thread, spare_make, table) != 0)
        atomic_store(&table->spare_state, SPARE_NONE);
}

/*
 * Returns the helper's arena if it is ready, else NULL without waiting.
 * Asks for the next one unless a helper is still at work.
 */
static uint8_t *spare_take(struct dedup_table *table)
{
    int state = atomic_load(&table->spare_state);
    if (state == SPARE_MAKING)
        return NULL;
    uint8_t *base = NULL;
    if (state != SPARE_NONE) {
        pthread_join(table->spare_thread, NULL);
        base = state == SPARE_READY ? table->spare : NULL;
    }
    spare_request(table);
    return base;
}

/* Waits for the helper thread, if one runs, and unmaps its arena. */
static void spare_drop(struct dedup_table *table)
{
    if (atomic_load(&table->spare_state) == SPARE_NONE)
        return;
    pthread_join(table->spare_thread, NULL);
    if (atomic_load(&table->spare_state) == SPARE_READY)
        munmap(table->spare, ARENA_BYTES);
    table->spare = NULL;
    atomic_store(&table->spare_state, SPARE_NONE);
}

/* Carves a zeroed segment from the newest arena, taking another when it is used up. */
static struct dedup_segment *segment_new(struct dedup_table *table, unsigned depth)
{
    struct dedup_arena *arena = table->arenas;
    if (arena == NULL || arena->used == ARENA_SEGMENTS) {
        arena = malloc(sizeof *arena);
        if (arena == NULL)
            return NULL;
        arena->base = spare_take(table);
        if (arena->base == NULL)
            arena->base = map_aligned(ARENA_BYTES, 0);
        if (arena->base == NULL) {
            free(arena);
            return NULL;
        }
        arena->used = 0;
        arena->next = table->arenas;
        table->arenas = arena;
    }
    struct dedup_segment *segment =
        (struct dedup_segment *)(arena->base + arena->used++ * sizeof *segment);
    segment->depth = depth;
    /* A split point from the seeds and the segment's number (splitmix64). */
    uint64_t mixed = table->split_seed + (table->segments + 1) * UINT64_C(0x9e3779b97f4a7c15);
    mixed = (mixed ^ mixed >> 30) * UINT64_C(0xbf58476d1ce4e5b9);
    mixed = (mixed ^ mixed >> 27) * UINT64_C(0x94d049bb133111eb);
    mixed ^= mixed >> 31;
    segment->full = SEGMENT_FULL_MIN + (uint32_t)(mixed % (SEGMENT_FULL_MAX - SEGMENT_FULL_MIN));
    table->segments++;
    return segment;
}

static void segments_free(struct dedup_table *table)
{
    while (table->arenas != NULL) {
        struct dedup_arena *arena = table->arenas;
        table->arenas = arena->next;
        munmap(arena->base, ARENA_BYTES);
        free(arena);
    }
    free(table->directory);
    table->directory = NULL;
    table->depth = 0;
    table->segments = 0;
    table->count = 0;
}

static size_t table_bytes(const struct dedup_table *table)
{
    if (table == NULL)
        return 0;
    return table->segments * sizeof(struct dedup_segment) +
           ((size_t)1 << table->depth) * sizeof *table->directory;
}

/*
 * Empties a table with the fewest segments that could hold `expected` ids
 * below their split points, and no more than `memory_max` bytes of them
 * (0: no bound). Those whose points are lower split while the ids are
 * loaded, so the table ends about as dense as one that grew by splits.
 */
static int table_clear(struct dedup_table *table, size_t expected, size_t memory_max)
{
    segments_free(table);
    unsigned depth = 0;
    while (depth < DEPTH_MAX && ((size_t)SEGMENT_FULL_MAX << depth) < expected &&
           (memory_max == 0 || ((size_t)2 << depth) * sizeof(struct dedup_segment) <= memory_max))
        depth++;
    size_t size = (size_t)1 << depth;
    table->directory = calloc(size, sizeof *table->directory);
    if (table->directory == NULL)
        return HM_ERR_NOMEM;
    table->depth = depth;
    for (size_t i = 0; i < size; i++) {
        if ((table->directory[i] = segment_new(table, depth)) == NULL) {
            segments_free(table);
            return HM_ERR_NOMEM;
        }
    }
    return HM_OK;
}

static void table_free(struct dedup_table *table)
{
    if (table == NULL)
        return;
    spare_drop(table);
    segments_free(table);
    free(table);
}

static int table_new(const struct dedup_index *index, size_t expected,
                     struct dedup_table **out)
{
    struct dedup_table *table = calloc(1, sizeof *table);
    if (table == NULL)
        return HM_ERR_NOMEM;
    table->split_seed = index->seed[0];
    int rc = table_clear(table, expected, index->memory_max / 2);
    if (rc != HM_OK) {
        free(table);
        return rc;
    }
    *out = table;
    return HM_OK;
}

/* ---- Runs ---- */

/*
 * Ids on disk, in a file with no name that nothing changes once it is
 * written: an array of tags, then the locators at the same places. Each tag
 * has a home slot in proportion to its value, and the tags lie in
 * ascending order, each at its home or after the tag before it (ordered
 * linear probing). Homes cover 4/3 of the ids, so a tag lies a slot or
 * two past its home on average. A lookup reads one cache line at the home,
 * which the tag alone gives, so it can be prefetched. Empty slots are
 * TAG_EMPTY.
 */
struct dedup_run {
    int fd;
    uint8_t *map;
    size_t map_bytes;
    size_t count; /* ids */
    size_t homes; /* slots that homes fall in */
    size_t slots; /* homes and room past the last one */
    const uint64_t *tags;
    const uint32_t *locators;
};

static inline size_t run_home(const struct dedup_run *run, uint64_t tag)
{
    return (size_t)((unsigned __int128)tag * run->homes >> 64);
}

static void run_free(struct dedup_run *run)
{
    if (run == NULL)
        return;
    if (run->map != NULL)
        munmap(run->map, run->map_bytes);
    close(run->fd);
    free(run);
}

/*
 * Makes an empty run for `count` ids in a new file with no name in the
 * spill directory, mapped for reading; run_writer writes it. The file's
 * blocks are allocated first, so a full disk fails here and not part way.
 */
static int run_create(int dir, size_t count, struct dedup_run **out, int *errno_out)
{
    struct dedup_run *run = calloc(1, sizeof *run);
    if (run == NULL)
        return HM_ERR_NOMEM;
    run->count = count;
    run->homes = count / 3 * 4 + 4;
    /*
     * Tags past the last home need room. With uniform tags the pile-up at
     * the end is a few slots, so running out of this much room
     * (HM_ERR_FULL) means tags that are not uniform.
     */
    run->slots = run->homes + count / 64 + 4096;
    run->map_bytes = run->slots * (sizeof *run->tags + sizeof *run->locators);
    run->fd = openat(dir, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (run->fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        /* A file system without O_TMPFILE: a named file, removed at once. */
        static _Atomic unsigned made;
        char name[64];
        snprintf(name, sizeof name, ".ids-%ld-%u", (long)getpid(), atomic_fetch_add(&made, 1));
        run->fd = openat(dir, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (run->fd >= 0)
            unlinkat(dir, name, 0);
    }
    int rc = run->fd < 0 ? errno : posix_fallocate(run->fd, 0, (off_t)run->map_bytes);
    if (rc == 0) {
        run->map = mmap(NULL, run->map_bytes, PROT_READ, MAP_SHARED, run->fd, 0);
        if (run->map == MAP_FAILED) {
            rc = errno;
            run->map = NULL;
        }
    }
    if (rc != 0) {
        *errno_out = rc;
        if (run->fd < 0)
            free(run);
        else
            run_free(run);
        return rc == ENOSPC || rc == EDQUOT ? HM_ERR_FULL : HM_ERR_IO;
    }
    run->tags = (const uint64_t *)run->map;
    run->locators = (const uint32_t *)(run->map + run->slots * sizeof *run->tags);
    *out = run;
    return HM_OK;
}

/*
 * Places ids, given in ascending order of their tags, into a new run. The
 * slots go to the file through a buffer with pwrite, in order: written
 * through the mapping, each new page of the file was a fault and a page
 * that the kernel zeroed first. Slots past the last one written stay
 * empty, as the file's allocated blocks read as zeros.
 */
#define WRITER_SLOTS 32768

struct run_writer {
    struct dedup_run *run;
    size_t next;    /* the first slot after the last tag placed */
    size_t placed;
    size_t flushed; /* slots written to the file; the buffer starts at this slot */
    uint64_t *tags;
    uint32_t *locators;
    int errno_value; /* of a failed write */
};

/* Creates a run for `count` ids (run_create) and a writer for it. */
static int run_writer_start(struct run_writer *writer, int dir, size_t count, int *errno_out)
{
    struct dedup_run *run;
    int rc = run_create(dir, count, &run, errno_out);
    if (rc != HM_OK)
        return rc;
    *writer = (struct run_writer){ .run = run };
    writer->tags = calloc(WRITER_SLOTS, sizeof *writer->tags);
    writer->locators = calloc(WRITER_SLOTS, sizeof *writer->locators);
    if (writer->tags == NULL || writer->locators == NULL) {
        free(writer->tags);
        free(writer->locators);
        run_free(run);
        return HM_ERR_NOMEM;
    }
    return HM_OK;
}

static int write_all(int fd, const void *bytes, size_t size, off_t offset)
{
    const uint8_t *at = bytes;
    while (size > 0) {
        ssize_t written = pwrite(fd, at, size, offset);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0)
            return written < 0 ? errno : EIO;
        at += written;
        size -= (size_t)written;
        offset += written;
    }
    return 0;
}

/* Writes the buffer's first `count` slots to the file and empties it. */
static int run_writer_flush(struct run_writer *writer, size_t count)
{
    struct dedup_run *run = writer->run;
    int rc = write_all(run->fd, writer->tags, count * sizeof *writer->tags,
                       (off_t)(writer->flushed * sizeof *run->tags));
    if (rc == 0)
        rc = write_all(run->fd, writer->locators, count * sizeof *writer->locators,
                       (off_t)(run->slots * sizeof *run->tags +
                               writer->flushed * sizeof *run->locators));
    if (rc != 0) {
        writer->errno_value = rc;
        return rc == ENOSPC || rc == EDQUOT ? HM_ERR_FULL : HM_ERR_IO;
    }
    memset(writer->tags, 0, count * sizeof *writer->tags);
    memset(writer->locators, 0, count * sizeof *writer->locators);
    writer->flushed += count;
    return HM_OK;
}

static int run_put(struct run_writer *writer, uint64_t tag, uint32_t locator)
{
    struct dedup_run *run = writer->run;
    size_t at = run_home(run, tag);
    if (at < writer->next)
        at = writer->next;
    if (at >= run->slots || writer->placed == run->count)
        return HM_ERR_FULL;
    while (at >= writer->flushed + WRITER_SLOTS) {
        int rc = run_writer_flush(writer, WRITER_SLOTS);
        if (rc != HM_OK)
            return rc;
    }
    writer->tags[at - writer->flushed] = tag;
    writer->locators[at - writer->flushed] = locator;
    writer->next = at + 1;
    writer->placed++;
    return HM_OK;
}

/*
 * Writes the rest of the buffer and frees the writer. Sets *out to the run
 * when `rc` and the write succeeded and every id was placed, else frees
 * the run. A count of ids that differs from the run's is HM_ERR_STATE.
 */
static int run_writer_end(struct run_writer *writer, int rc, struct dedup_run **out,
                          int *errno_out)
{
    if (rc == HM_OK && writer->next > writer->flushed)
        rc = run_writer_flush(writer, writer->next - writer->flushed);
    if (rc == HM_OK && writer->placed != writer->run->count)
        rc = HM_ERR_STATE;
    if (writer->errno_value != 0)
        *errno_out = writer->errno_value;
    free(writer->tags);
    free(writer->locators);
    if (rc == HM_OK)
        *out = writer->run;
    else
        run_free(writer->run);
    return rc;
}

/* Returns the slot of the first tag not below `tag` from its home, or an empty slot. */
static size_t run_seek(const struct dedup_run *run, uint64_t tag)
{
    size_t at = run_home(run, tag);
    while (at < run->slots && run->tags[at] != TAG_EMPTY && run->tags[at] < tag)
        at++;
    return at;
}

static void run_prefetch(const struct dedup_run *run, uint64_t tag)
{
    __builtin_prefetch(&run->tags[run_home(run, tag)], 0);
}

/* Returns the next slot from `at` that is not empty, or the run's slots. */
static size_t run_next(const struct dedup_run *run, size_t at)
{
    while (at < run->slots && run->tags[at] == TAG_EMPTY)
        at++;
    return at;
}

/* An id of a frozen table on its way to a run. */
struct run_entry {
    uint64_t tag;
    uint32_t locator;
};

/* Buckets of a segment's bucket sort: about one id each in a segment at its split point. */
#define SORT_BITS 12

/*
 * Sorts the live ids of a segment into `sorted` by tag and returns their
 * number. The ids share their leading `depth` bits, and the next
 * SORT_BITS pick a bucket; the few ids of a bucket are then sorted by
 * insertion.
 */
static size_t segment_sort(const struct dedup_segment *segment, struct run_entry *sorted,
                           uint32_t starts[(1 << SORT_BITS) + 1])
{
    unsigned shift = 64 - SORT_BITS;
    memset(starts, 0, ((1 << SORT_BITS) + 1) * sizeof *starts);
    for (uint32_t at = 0; at < SEGMENT_SLOTS; at++) {
        uint64_t tag = segment->tags[at];
        if (tag > TAG_REMOVED)
            starts[(tag << segment->depth >> shift) + 1]++;
    }
    for (uint32_t bucket = 0; bucket < 1 << SORT_BITS; bucket++)
        starts[bucket + 1] += starts[bucket];
    size_t count = starts[1 << SORT_BITS];
    for (uint32_t at = 0; at < SEGMENT_SLOTS; at++) {
        uint64_t tag = segment->tags[at];
        if (tag > TAG_REMOVED)
            sorted[starts[tag << segment->depth >> shift]++] =
                (struct run_entry){ tag, segment->locators[at] };
    }
    /* Each start has moved to the end of its bucket, which is the start of the next. */
    for (size_t i = 1; i < count; i++) {
        struct run_entry entry = sorted[i];
        size_t k = i;
        for (; k > 0 && sorted[k - 1].tag > entry.tag; k--)
            sorted[k] = sorted[k - 1];
        sorted[k] = entry;
    }
    return count;
}

/*
 * Writes the live ids of a frozen table to a new run. The directory lists
 * the segments in the order of their leading bits, so sorting each
 * segment's ids sorts the run.
 */
static int run_from_table(int dir, const struct dedup_table *table, struct dedup_run **out,
                          int *errno_out)
{
    struct run_writer writer;
    int rc = run_writer_start(&writer, dir, table->count, errno_out);
    if (rc != HM_OK)
        return rc;
    struct run_entry *sorted = malloc(SEGMENT_SLOTS * sizeof *sorted);
    uint32_t *starts = malloc(((1 << SORT_BITS) + 1) * sizeof *starts);
    if (sorted == NULL || starts == NULL)
        rc = HM_ERR_NOMEM;
    size_t size = (size_t)1 << table->depth;
    for (size_t i = 0; i < size && rc == HM_OK;) {
        const struct dedup_segment *segment = table->directory[i];
        size_t n = segment_sort(segment, sorted, starts);
        for (size_t k = 0; k < n && rc == HM_OK; k++)
            rc = run_put(&writer, sorted[k].tag, sorted[k].locator);
        i += (size_t)1 << (table->depth - segment->depth);
    }
    free(sorted);
    free(starts);
    /* A count that differs from the table's slots means a damaged table (HM_ERR_STATE). */
    return run_writer_end(&writer, rc, out, errno_out);
}

/* Merges two runs into a new one. */
static int run_merge(int dir, const struct dedup_run *a, const struct dedup_run *b,
                     struct dedup_run **out, int *errno_out)
{
    struct run_writer writer;
    int rc = run_writer_start(&writer, dir, a->count + b->count, errno_out);
    if (rc != HM_OK)
        return rc;
    size_t i = run_next(a, 0), j = run_next(b, 0);
    while (rc == HM_OK && (i < a->slots || j < b->slots)) {
        if (j >= b->slots || (i < a->slots && a->tags[i] <= b->tags[j])) {
            rc = run_put(&writer, a->tags[i], a->locators[i]);
            i = run_next(a, i + 1);
        } else {
            rc = run_put(&writer, b->tags[j], b->locators[j]);
            j = run_next(b, j + 1);
        }
    }
    return run_writer_end(&writer, rc, out, errno_out);
}

static int run_listed(struct dedup_run *const *runs, size_t count, const struct dedup_run *run)
{
    for (size_t i = 0; i < count; i++) {
        if (runs[i] == run)
            return 1;
    }
    return 0;
}

/*
 * The spill: writes the frozen table to a run, then merges the newest two
 * runs while the older is at most twice the newer, which keeps about
 * log2 of the spills of them. Builds a new list of runs; runs of the old
 * list are only read. Sets spill_runs or spill_status, and
 * spill_merge_status.
 */
static void spill_work(struct dedup_index *index)
{
    size_t old_count = index->run_count;
    struct dedup_run **runs = malloc((old_count + 1) * sizeof *runs);
    int rc = runs == NULL ? HM_ERR_NOMEM : HM_OK;
    int sys = 0;
    size_t count = old_count;
    index->spill_merge_status = HM_OK;
    index->spill_merge_errno = 0;
    if (rc == HM_OK) {
        if (old_count > 0)
            memcpy(runs, index->runs, old_count * sizeof *runs);
        rc = run_from_table(index->spill_dir, index->frozen, &runs[count], &sys);
        if (rc == HM_OK)
            count++;
    }
    while (rc == HM_OK && count >= 2 && runs[count - 2]->count <= 2 * runs[count - 1]->count) {
        struct dedup_run *merged;
        int merge_errno = 0;
        int merge_rc =
            run_merge(index->spill_dir, runs[count - 2], runs[count - 1], &merged, &merge_errno);
        if (merge_rc != HM_OK) {
            /*
             * A merge needs room for both of its runs and the merged one.
             * The runs written so far hold every id, so they are kept
             * unmerged: failing the spill would keep the frozen table in
             * memory although its run is on disk.
             */
            index->spill_merge_status = merge_rc;
            index->spill_merge_errno = merge_errno;
            break;
        }
        /* Runs this spill wrote are its own to free; the old ones the writer frees. */
        for (size_t k = count - 2; k < count; k++) {
            if (!run_listed(index->runs, old_count, runs[k]))
                run_free(runs[k]);
        }
        runs[count - 2] = merged;
        count--;
    }
    if (rc != HM_OK && runs != NULL) {
        for (size_t k = 0; k < count; k++) {
            if (!run_listed(index->runs, old_count, runs[k]))
                run_free(runs[k]);
        }
        free(runs);
        runs = NULL;
    }
    index->spill_runs = runs;
    index->spill_run_count = count;
    index->spill_status = rc;
    index->spill_errno = sys;
}

static void *spill_thread_run(void *context)
{
    struct dedup_index *index = context;
    pthread_setname_np(pthread_self(), "ledger-spill");
    /* Below the loop and the commit thread: a spill has no deadline, their acks do. */
    setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
    spill_work(index);
    /* The thread is detached and touches the index no more after this store. */
    atomic_store(&index->spill_state, SPILL_DONE);
    return NULL;
}

/* Runs and a table that the writer no longer reads, for a reaper thread to free. */
struct reap {
    struct dedup_run **runs;
    size_t run_count;
    struct dedup_table *table;
};

/* Reapers still at work, for dedup_free to wait for. */
static _Atomic int reapers;

static void reap_work(struct reap *reap)
{
    for (size_t i = 0; i < reap->run_count; i++)
        run_free(reap->runs[i]);
    free(reap->runs);
    table_free(reap->table);
    free(reap);
}

static void *reap_thread_run(void *context)
{
    pthread_setname_np(pthread_self(), "ledger-reap");
    setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
    reap_work(context);
    atomic_fetch_sub(&reapers, 1);
    return NULL;
}

/*
 * Starts `run` on a detached thread with every signal blocked. It may be
 * created before meterd blocks SIGTERM and SIGINT to read them from a
 * signalfd, and a signal delivered to it would end the process.
 */
static int thread_start_detached(void *(*run)(void *), void *context)
{
    pthread_attr_t attributes;
    if (pthread_attr_init(&attributes) != 0)
        return -1;
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_t thread;
    int rc = pthread_create(&thread, &attributes, run, context);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attributes);
    return rc;
}

/*
 * Frees runs and a table off the writer's thread: unmapping a run's pages
 * and dropping the file's cache took the writer up to 9 ms.
 */
static void reap(struct dedup_run **runs, size_t run_count, struct dedup_table *table)
{
    struct reap *reap = malloc(sizeof *reap);
    if (reap == NULL) {
        for (size_t i = 0; i < run_count; i++)
            run_free(runs[i]);
        free(runs);
        table_free(table);
        return;
    }
    *reap = (struct reap){ runs, run_count, table };
    atomic_fetch_add(&reapers, 1);
    if (thread_start_detached(reap_thread_run, reap) != 0) {
        atomic_fetch_sub(&reapers, 1);
        reap_work(reap);
    }
}

static void state_wait_zero(_Atomic int *value)
{
    while (atomic_load(value) != 0)
        nanosleep(&(struct timespec){ 0, 100000 }, NULL);
}

/* Waits, polling, for an atomic state to leave `state`. */
static void state_wait(_Atomic int *value, int state)
{
    while (atomic_load(value) == state)
        nanosleep(&(struct timespec){ 0, 100000 }, NULL);
}

/*
 * Counts a failed try (status other than HM_OK), or ends a run of failures
 * after a try that succeeded, so that the next failure is reported again.
 */
static void failure_record(struct dedup_failure *failure, int status, int errno_value)
{
    if (status == HM_OK) {
        failure->failing = 0;
        failure->reported = 0;
        return;
    }
    failure->count++;
    failure->failing = 1;
    failure->status = status;
    failure->errno_value = errno_value;
}

/* Returns the status of a run of failures once, with its errno, else HM_OK. */
static int failure_take(struct dedup_failure *failure, int *errno_out)
{
    if (!failure->failing || failure->reported)
        return HM_OK;
    failure->reported = 1;
    *errno_out = failure->errno_value;
    return failure->status;
}

/*
 * Takes the result of a spill: the new list of runs and the end of the
 * frozen table. After a failure, the next try waits SPILL_RETRY_WAIT
 * transactions.
 */
static void spill_finish(struct dedup_index *index)
{
    atomic_store(&index->spill_state, SPILL_NONE);
    failure_record(&index->spill_failure, index->spill_status, index->spill_errno);
    if (index->spill_status != HM_OK) {
        index->spill_wait = SPILL_RETRY_WAIT;
        return;
    }
    failure_record(&index->merge_failure, index->spill_merge_status, index->spill_merge_errno);
    struct dedup_run **dropped = malloc((index->run_count + 1) * sizeof *dropped);
    size_t dropped_count = 0;
    for (size_t i = 0; i < index->run_count; i++) {
        if (run_listed(index->spill_runs, index->spill_run_count, index->runs[i])) {
            continue;
        } else if (dropped != NULL) {
            dropped[dropped_count++] = index->runs[i];
        } else {
            run_free(index->runs[i]);
        }
    }
    free(index->runs);
    index->runs = index->spill_runs;
    index->run_count = index->spill_run_count;
    index->spill_runs = NULL;
    index->spill_run_count = 0;
    reap(dropped, dropped_count, index->frozen);
    index->frozen = NULL;
    index->spills++;
}

/* Takes the result of a spill thread that ended; with `wait` set, waits for one that runs. */
static void spill_collect(struct dedup_index *index, int wait)
{
    int state = atomic_load(&index->spill_state);
    if (state == SPILL_NONE || (state == SPILL_RUNNING && !wait))
        return;
    state_wait(&index->spill_state, SPILL_RUNNING);
    spill_finish(index);
}

/*
 * Freezes a full table in memory and starts its spill, between
 * transactions. `inline_work` runs the spill on this thread (a rebuild,
 * which waits anyway), as does a failure to start the thread.
 */
static void spill_maybe_start(struct dedup_index *index, int inline_work)
{
    if (index->spill_dir < 0 || atomic_load(&index->spill_state) != SPILL_NONE)
        return;
    if (index->frozen == NULL) {
        if (table_bytes(index->hot) < index->memory_max / 2 || index->hot->count == 0)
            return;
        struct dedup_table *fresh;
        if (table_new(index, 0, &fresh) != HM_OK)
            return;
        index->frozen = index->hot;
        index->hot = fresh;
    } else if (index->spill_wait > 0) {
        /* An earlier spill failed: its table stays searched in memory until a try succeeds. */
        index->spill_wait--;
        return;
    }
    atomic_store(&index->spill_state, SPILL_RUNNING);
    if (inline_work || thread_start_detached(spill_thread_run, index) != 0) {
        spill_work(index);
        spill_finish(index);
    }
}

/* ---- The index ---- */

static void runs_free(struct dedup_index *index)
{
    for (size_t i = 0; i < index->run_count; i++)
        run_free(index->runs[i]);
    free(index->runs);
    index->runs = NULL;
    index->run_count = 0;
}

int dedup_clear(struct dedup_index *index, size_t expected)
{
    spill_collect(index, 1);
    table_free(index->frozen);
    index->frozen = NULL;
    runs_free(index);
    index->spill_wait = 0;
    index->undo_count = 0;
    return table_clear(index->hot, expected, index->memory_max / 2);
}

int dedup_create(struct dedup_index **out)
{
    struct dedup_index *index = calloc(1, sizeof *index);
    if (index == NULL)
        return HM_ERR_NOMEM;
    index->spill_dir = -1;
    /* Random seeds keep a sender from choosing event ids that all land in one probe run. */
    if (getrandom(index->seed, sizeof index->seed, 0) != sizeof index->seed) {
        free(index);
        return HM_ERR_IO;
    }
    index->scratch = malloc(sizeof *index->scratch);
    if (index->scratch == NULL || table_new(index, 0, &index->hot) != HM_OK) {
        dedup_free(index);
        return HM_ERR_NOMEM;
    }
    *out = index;
    return HM_OK;
}

void dedup_free(struct dedup_index *index)
{
    if (index == NULL)
        return;
    spill_collect(index, 1);
    table_free(index->hot);
    table_free(index->frozen);
    runs_free(index);
    if (index->spill_dir >= 0)
        close(index->spill_dir);
    /* Reapers of any index: their files are gone once they end. */
    state_wait_zero(&reapers);
    free(index->scratch);
    free(index->undo);
    free(index);
}

int dedup_spill_to(struct dedup_index *index, const char *dir, size_t memory_max)
{
    spill_collect(index, 1);
    if (index->spill_dir >= 0) {
        close(index->spill_dir);
        index->spill_dir = -1;
    }
    index->memory_max = memory_max;
    if (memory_max == 0)
        return HM_OK;
    index->spill_dir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return index->spill_dir >= 0 ? HM_OK : HM_ERR_IO;
}

int dedup_spill_failure(struct dedup_index *index, int *errno_out)
{
    return failure_take(&index->spill_failure, errno_out);
}

int dedup_merge_failure(struct dedup_index *index, int *errno_out)
{
    return failure_take(&index->merge_failure, errno_out);
}

size_t dedup_count(const struct dedup_index *index)
{
    size_t count = index->hot->count + (index->frozen ? index->frozen->count : 0);
    for (size_t i = 0; i < index->run_count; i++)
        count += index->runs[i]->count;
    return count;
}

size_t dedup_bytes(const struct dedup_index *index)
{
    return table_bytes(index->hot) + table_bytes(index->frozen);
}

size_t dedup_disk_bytes(const struct dedup_index *index)
{
    size_t bytes = 0;
    for (size_t i = 0; i < index->run_count; i++)
        bytes += index->runs[i]->map_bytes;
    return bytes;
}

size_t dedup_run_count(const struct dedup_index *index)
{
    return index->run_count;
}

static inline uint64_t load64(const uint8_t *bytes)
{
    uint64_t value;
    memcpy(&value, bytes, sizeof value);
    return value;
}

uint64_t dedup_fingerprint(const struct dedup_index *index, const uint8_t tenant_id[UUID_SIZE],
                           const uint8_t event_id[UUID_SIZE])
{
    const uint64_t k1 = UINT64_C(0xa0761d6478bd642f), k2 = UINT64_C(0xe7037ed1a0b428db);
    /*
     * Both factors of each multiply carry a seed. With a public constant
     * alone, a sender could pick the id bytes that make a factor zero, and
     * every id that shares those bytes would get one fingerprint.
     */
    uint64_t tenant = hash_mix(load64(tenant_id) ^ index->seed[0],
                          load64(tenant_id + 8) ^ index->seed[1] ^ k1);
    uint64_t id = hash_mix(load64(event_id) ^ index->seed[1] ^ tenant,
                      load64(event_id + 8) ^ index->seed[0] ^ k2);
    uint64_t fingerprint = hash_mix(id ^ k1, tenant ^ k2 ^ index->seed[0]);
    return fingerprint != 0 ? fingerprint : 1;
}

void dedup_prefetch(const struct dedup_index *index, uint64_t fingerprint)
{
    uint64_t tag = tag_of(fingerprint);
    const struct dedup_segment *segment = segment_of(index->hot, tag);
    /* A new id's locator is written next to its home too, so both lines are fetched. */
    __builtin_prefetch(&segment->tags[home_of(tag)], 1);
    __builtin_prefetch(&segment->locators[home_of(tag)], 1);
    if (index->frozen != NULL)
        __builtin_prefetch(&segment_of(index->frozen, tag)->tags[home_of(tag)], 0);
    /* A new id reads every run, where its first guess lands. */
    for (size_t i = 0; i < index->run_count; i++)
        run_prefetch(index->runs[i], tag);
}

void dedup_probe_start(const struct dedup_index *index, uint64_t fingerprint,
                       struct dedup_probe *probe)
{
    probe->tag = tag_of(fingerprint);
    probe->segment = segment_of(index->hot, probe->tag);
    probe->looking = probe->segment;
    probe->at = home_of(probe->tag);
    probe->slot = 0;
    probe->tier = 0;
    probe->run_at = SIZE_MAX;
}

int dedup_probe_next(const struct dedup_index *index, struct dedup_probe *probe,
                     uint64_t *locator_out)
{
    uint32_t kept;
    for (;;) {
        if (probe->tier <= 1) {
            const struct dedup_segment *segment = probe->looking;
            uint32_t at = probe->at;
            uint64_t tag = segment->tags[at];
            while (tag != TAG_EMPTY && tag != probe->tag) {
                at = (at + 1) & SEGMENT_MASK;
                tag = segment->tags[at];
            }
            if (tag != TAG_EMPTY) {
                probe->at = (at + 1) & SEGMENT_MASK;
                kept = segment->locators[at];
                break;
            }
            if (probe->tier == 0)
                probe->slot = at;
            probe->tier++;
            if (probe->tier == 1 && index->frozen != NULL) {
                probe->looking = segment_of(index->frozen, probe->tag);
                probe->at = home_of(probe->tag);
            } else {
                probe->tier = 2;
            }
            continue;
        }
        size_t k = probe->tier - 2;
        if (k >= index->run_count)
            return 0;
        const struct dedup_run *run = index->runs[k];
        if (probe->run_at == SIZE_MAX)
            probe->run_at = run_seek(run, probe->tag);
        if (probe->run_at < run->slots && run->tags[probe->run_at] == probe->tag) {
            kept = run->locators[probe->run_at++];
            break;
        }
        probe->tier++;
        probe->run_at = SIZE_MAX;
    }
    *locator_out = kept == (uint32_t)DEDUP_SPAN ? DEDUP_LEGACY : kept;
    return 1;
}

static int directory_double(struct dedup_table *table)
{
    size_t size = (size_t)1 << table->depth;
    struct dedup_segment **bigger = malloc(2 * size * sizeof *bigger);
    if (bigger == NULL)
        return HM_ERR_NOMEM;
    /* Entry i covers the ids whose leading bits are i; the next bit picks 2i or 2i + 1. */
    for (size_t i = 0; i < size; i++)
        bigger[2 * i] = bigger[2 * i + 1] = table->directory[i];
    free(table->directory);
    table->directory = bigger;
    table->depth++;
    return HM_OK;
}

/*
 * Empties a segment and puts its live slots back. A slot goes into
 * `sibling` instead when its fingerprint has the bit set that the new
 * depth adds. Removed slots are dropped.
 */
static void segment_rehash(struct dedup_index *index, struct dedup_segment *segment,
                           struct dedup_segment *sibling)
{
    struct dedup_segment *copy = index->scratch;
    memcpy(copy->tags, segment->tags, sizeof copy->tags);
    memcpy(copy->locators, segment->locators, sizeof copy->locators);
    memset(segment->tags, 0, sizeof segment->tags);
    segment->used = segment->live = 0;
    unsigned bit = 64 - segment->depth;
    for (uint32_t i = 0; i < SEGMENT_SLOTS; i++) {
        uint64_t tag = copy->tags[i];
        if (tag <= TAG_REMOVED)
            continue;
        struct dedup_segment *to = sibling != NULL && (tag >> bit & 1) ? sibling : segment;
        slot_put(to, empty_slot(to, tag), tag, copy->locators[i]);
    }
}

/*
 * Splits the segment of `tag` in the table in memory by one more leading
 * bit, doubling the directory when the segment uses all of its bits. A
 * segment that cannot split any further, or that has at most half its
 * split point live, only drops its removed slots. Without that second
 * case, a commit that keeps failing would add segments on every retry of
 * its batch, since each abort leaves removed slots behind and no segment
 * is ever merged.
 */
static int segment_split(struct dedup_index *index, struct dedup_segment *segment, uint64_t tag)
{
    struct dedup_table *table = index->hot;
    if (segment->depth == DEPTH_MAX || segment->live <= segment->full / 2) {
        if (segment->live == segment->used)
            return HM_ERR_FULL;
        segment_rehash(index, segment, NULL);
        return HM_OK;
    }
    int rc;
    if (segment->depth == table->depth && (rc = directory_double(table)) != HM_OK)
        return rc;
    struct dedup_segment *sibling = segment_new(table, segment->depth + 1);
    if (sibling == NULL)
        return HM_ERR_NOMEM;
    /* The segment fills 2^spread directory entries, and the sibling takes the upper half. */
    unsigned spread = table->depth - segment->depth;
    size_t prefix = segment->depth == 0 ? 0 : tag >> (64 - segment->depth);
    size_t first = prefix << spread, half = (size_t)1 << (spread - 1);
    for (size_t i = first + half; i < first + 2 * half; i++)
        table->directory[i] = sibling;
    segment->depth++;
    segment_rehash(index, segment, sibling);
    return HM_OK;
}

int dedup_insert(struct dedup_index *index, const struct dedup_probe *probe, uint64_t locator,
                 int in_txn)
{
    if (in_txn && index->undo_count == index->undo_capacity) {
        size_t capacity = index->undo_capacity ? 2 * index->undo_capacity : 4096;
        struct dedup_undo *undo = realloc(index->undo, capacity * sizeof *undo);
        if (undo == NULL)
            return HM_ERR_NOMEM;
        index->undo = undo;
        index->undo_capacity = capacity;
    }
    struct dedup_segment *segment = probe->segment;
    uint32_t at = probe->slot;
    if (segment->used + 1 > segment->full) {
        /* A split moves slots but keeps every id. Skewed ids may need more than one split. */
        do {
            int rc = segment_split(index, segment, probe->tag);
            if (rc != HM_OK)
                return rc;
            segment = segment_of(index->hot, probe->tag);
        } while (segment->used + 1 > segment->full);
        at = empty_slot(segment, probe->tag);
    }
    uint32_t kept = locator_kept(locator);
    slot_put(segment, at, probe->tag, kept);
    index->hot->count++;
    if (in_txn)
        index->undo[index->undo_count++] = (struct dedup_undo){ probe->tag, kept };
    return HM_OK;
}

int dedup_load(struct dedup_index *index, const uint64_t *fingerprints, const uint64_t *locators,
               size_t count)
{
    for (size_t i = 0; i < count; i++)
        dedup_prefetch(index, fingerprints[i]);
    for (size_t i = 0; i < count; i++) {
        struct dedup_probe probe;
        dedup_probe_start(index, fingerprints[i], &probe);
        probe.slot = empty_slot(probe.segment, probe.tag);
        int rc = dedup_insert(index, &probe, locators[i], 0);
        if (rc != HM_OK)
            return rc;
    }
    /* A rebuild spills as the writer would, so that it needs no more memory than the bound. */
    spill_maybe_start(index, 1);
    return HM_OK;
}

void dedup_txn_begin(struct dedup_index *index)
{
    index->undo_count = 0;
    /*
     * The tables together stay within the bound: when the one in memory is
     * full (half the bound) before the frozen one's spill ends, the writer
     * waits for the spill. A frozen table that alone passes the bound, as
     * after failed spills, is no reason to wait while the new table has room.
     */
    int wait = index->frozen != NULL && index->spill_wait == 0 &&
               atomic_load(&index->spill_state) == SPILL_RUNNING &&
               table_bytes(index->hot) >= index->memory_max / 2;
    if (wait) {
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        spill_collect(index, 1);
        clock_gettime(CLOCK_MONOTONIC, &end);
        index->spill_waits++;
        index->spill_wait_us += (uint64_t)((end.tv_sec - start.tv_sec) * 1000000 +
                                           (end.tv_nsec - start.tv_nsec) / 1000);
    }
    spill_collect(index, 0);
    spill_maybe_start(index, 0);
}

void dedup_txn_commit(struct dedup_index *index)
{
    index->undo_count = 0;
}

int dedup_txn_abort(struct dedup_index *index)
{
    int damaged = 0;
    struct dedup_table *table = index->hot;
    while (index->undo_count > 0) {
        const struct dedup_undo *undo = &index->undo[--index->undo_count];
        struct dedup_segment *segment = segment_of(table, undo->tag);
        uint32_t at = home_of(undo->tag);
        /*
         * Splits since the insert may have moved the slot, but it stays in
         * the run from its home, like any other. Two slots with the same tag
         * and locator are interchangeable, so either may go.
         */
        while (segment->tags[at] != TAG_EMPTY &&
               (segment->tags[at] != undo->tag || segment->locators[at] != undo->locator))
            at = (at + 1) & SEGMENT_MASK;
        if (segment->tags[at] == TAG_EMPTY) {
            damaged = 1;
            continue;
        }
        segment->tags[at] = TAG_REMOVED;
        segment->live--;
        table->count--;
    }
    return damaged;
}
