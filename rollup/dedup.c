#include "dedup.h"
#include "hash_mix.h"

#include "common/status.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

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

static inline struct dedup_segment *segment_of(const struct dedup_index *index, uint64_t tag)
{
    return index->directory[index->depth == 0 ? 0 : tag >> (64 - index->depth)];
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
    struct dedup_index *index = context;
    /* Its own name, so that a profile separates its page zeroing from the commits. */
    pthread_setname_np(pthread_self(), "ledger-index");
    uint8_t *base = map_aligned(ARENA_BYTES, 1);
    if (base == NULL) {
        atomic_store(&index->spare_state, SPARE_FAILED);
        return NULL;
    }
    /*
     * Touching the arena here has the kernel zero its memory now: on the
     * writer, the fault of a huge page stalled a commit for milliseconds.
     */
    for (size_t offset = 0; offset < ARENA_BYTES; offset += 4096)
        ((volatile uint8_t *)base)[offset] = 0;
    index->spare = base;
    atomic_store(&index->spare_state, SPARE_READY);
    return NULL;
}

static void spare_request(struct dedup_index *index)
{
    index->spare = NULL;
    atomic_store(&index->spare_state, SPARE_MAKING);
    /*
     * The helper starts with every signal blocked. It may be created before
     * meterd blocks SIGTERM and SIGINT to read them from a signalfd. If the
     * helper did not block them, the kernel could deliver one to it, and
     * the default action would end the process instead of a clean stop.
     */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    if (pthread_create(&index->spare_thread, NULL, spare_make, index) != 0)
        atomic_store(&index->spare_state, SPARE_NONE);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
}

/*
 * Returns the helper's arena if it is ready, else NULL without waiting.
 * Asks for the next one unless a helper is still at work.
 */
static uint8_t *spare_take(struct dedup_index *index)
{
    int state = atomic_load(&index->spare_state);
    if (state == SPARE_MAKING)
        return NULL;
    uint8_t *base = NULL;
    if (state != SPARE_NONE) {
        pthread_join(index->spare_thread, NULL);
        base = state == SPARE_READY ? index->spare : NULL;
    }
    spare_request(index);
    return base;
}

/* Waits for the helper thread, if one runs, and unmaps its arena. */
static void spare_drop(struct dedup_index *index)
{
    if (atomic_load(&index->spare_state) == SPARE_NONE)
        return;
    pthread_join(index->spare_thread, NULL);
    if (atomic_load(&index->spare_state) == SPARE_READY)
        munmap(index->spare, ARENA_BYTES);
    index->spare = NULL;
    atomic_store(&index->spare_state, SPARE_NONE);
}

/* Carves a zeroed segment from the newest arena, taking another when it is used up. */
static struct dedup_segment *segment_new(struct dedup_index *index, unsigned depth)
{
    struct dedup_arena *arena = index->arenas;
    if (arena == NULL || arena->used == ARENA_SEGMENTS) {
        arena = malloc(sizeof *arena);
        if (arena == NULL)
            return NULL;
        arena->base = spare_take(index);
        if (arena->base == NULL)
            arena->base = map_aligned(ARENA_BYTES, 0);
        if (arena->base == NULL) {
            free(arena);
            return NULL;
        }
        arena->used = 0;
        arena->next = index->arenas;
        index->arenas = arena;
    }
    struct dedup_segment *segment =
        (struct dedup_segment *)(arena->base + arena->used++ * sizeof *segment);
    segment->depth = depth;
    /* A split point from the seeds and the segment's number (splitmix64). */
    uint64_t mixed = index->seed[0] + (index->segments + 1) * UINT64_C(0x9e3779b97f4a7c15);
    mixed = (mixed ^ mixed >> 30) * UINT64_C(0xbf58476d1ce4e5b9);
    mixed = (mixed ^ mixed >> 27) * UINT64_C(0x94d049bb133111eb);
    mixed ^= mixed >> 31;
    segment->full = SEGMENT_FULL_MIN + (uint32_t)(mixed % (SEGMENT_FULL_MAX - SEGMENT_FULL_MIN));
    index->segments++;
    return segment;
}

static void segments_free(struct dedup_index *index)
{
    while (index->arenas != NULL) {
        struct dedup_arena *arena = index->arenas;
        index->arenas = arena->next;
        munmap(arena->base, ARENA_BYTES);
        free(arena);
    }
    free(index->directory);
    index->directory = NULL;
    index->depth = 0;
    index->segments = 0;
    index->count = 0;
}

int dedup_clear(struct dedup_index *index, size_t expected)
{
    segments_free(index);
    index->undo_count = 0;
    unsigned depth = 0;
    /*
     * The fewest segments that could hold `expected` ids below their split
     * points. Those whose points are lower split while the ids are loaded,
     * so the index ends about as dense as one that grew by splits.
     */
    while (depth < DEPTH_MAX && ((size_t)SEGMENT_FULL_MAX << depth) < expected)
        depth++;
    size_t size = (size_t)1 << depth;
    index->directory = calloc(size, sizeof *index->directory);
    if (index->directory == NULL)
        return HM_ERR_NOMEM;
    index->depth = depth;
    for (size_t i = 0; i < size; i++) {
        if ((index->directory[i] = segment_new(index, depth)) == NULL) {
            segments_free(index);
            return HM_ERR_NOMEM;
        }
    }
    return HM_OK;
}

int dedup_create(struct dedup_index **out)
{
    struct dedup_index *index = calloc(1, sizeof *index);
    if (index == NULL)
        return HM_ERR_NOMEM;
    /* Random seeds keep a sender from choosing event ids that all land in one probe run. */
    if (getrandom(index->seed, sizeof index->seed, 0) != sizeof index->seed) {
        free(index);
        return HM_ERR_IO;
    }
    index->scratch = malloc(sizeof *index->scratch);
    if (index->scratch == NULL || dedup_clear(index, 0) != HM_OK) {
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
    spare_drop(index);
    segments_free(index);
    free(index->scratch);
    free(index->undo);
    free(index);
}

size_t dedup_count(const struct dedup_index *index)
{
    return index->count;
}

size_t dedup_bytes(const struct dedup_index *index)
{
    return index->segments * sizeof(struct dedup_segment) +
           ((size_t)1 << index->depth) * sizeof *index->directory;
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
    const struct dedup_segment *segment = segment_of(index, tag);
    /* A new id's locator is written next to its home too, so both lines are fetched. */
    __builtin_prefetch(&segment->tags[home_of(tag)], 1);
    __builtin_prefetch(&segment->locators[home_of(tag)], 1);
}

void dedup_probe_start(const struct dedup_index *index, uint64_t fingerprint,
                       struct dedup_probe *probe)
{
    probe->tag = tag_of(fingerprint);
    probe->segment = segment_of(index, probe->tag);
    probe->at = home_of(probe->tag);
    probe->slot = 0;
}

int dedup_probe_next(const struct dedup_index *index, struct dedup_probe *probe,
                     uint64_t *locator_out)
{
    (void)index;
    const struct dedup_segment *segment = probe->segment;
    for (;;) {
        uint32_t at = probe->at;
        uint64_t tag = segment->tags[at];
        if (tag == TAG_EMPTY) {
            probe->slot = at;
            return 0;
        }
        probe->at = (at + 1) & SEGMENT_MASK;
        if (tag == probe->tag) {
            uint32_t kept = segment->locators[at];
            *locator_out = kept == (uint32_t)DEDUP_SPAN ? DEDUP_LEGACY : kept;
            return 1;
        }
    }
}

static int directory_double(struct dedup_index *index)
{
    size_t size = (size_t)1 << index->depth;
    struct dedup_segment **bigger = malloc(2 * size * sizeof *bigger);
    if (bigger == NULL)
        return HM_ERR_NOMEM;
    /* Entry i covers the ids whose leading bits are i; the next bit picks 2i or 2i + 1. */
    for (size_t i = 0; i < size; i++)
        bigger[2 * i] = bigger[2 * i + 1] = index->directory[i];
    free(index->directory);
    index->directory = bigger;
    index->depth++;
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
 * Splits the segment of `tag` by one more leading bit, doubling the
 * directory when the segment uses all of its bits. A segment that cannot
 * split any further, or that has at most half its split point live, only
 * drops its removed slots. Without that second case, a commit that keeps
 * failing would add segments on every retry of its batch, since each abort
 * leaves removed slots behind and no segment is ever merged.
 */
static int segment_split(struct dedup_index *index, struct dedup_segment *segment, uint64_t tag)
{
    if (segment->depth == DEPTH_MAX || segment->live <= segment->full / 2) {
        if (segment->live == segment->used)
            return HM_ERR_FULL;
        segment_rehash(index, segment, NULL);
        return HM_OK;
    }
    int rc;
    if (segment->depth == index->depth && (rc = directory_double(index)) != HM_OK)
        return rc;
    struct dedup_segment *sibling = segment_new(index, segment->depth + 1);
    if (sibling == NULL)
        return HM_ERR_NOMEM;
    /* The segment fills 2^spread directory entries, and the sibling takes the upper half. */
    unsigned spread = index->depth - segment->depth;
    size_t prefix = segment->depth == 0 ? 0 : tag >> (64 - segment->depth);
    size_t first = prefix << spread, half = (size_t)1 << (spread - 1);
    for (size_t i = first + half; i < first + 2 * half; i++)
        index->directory[i] = sibling;
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
            segment = segment_of(index, probe->tag);
        } while (segment->used + 1 > segment->full);
        at = empty_slot(segment, probe->tag);
    }
    uint32_t kept = locator_kept(locator);
    slot_put(segment, at, probe->tag, kept);
    index->count++;
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
    return HM_OK;
}

void dedup_txn_begin(struct dedup_index *index)
{
    index->undo_count = 0;
}

void dedup_txn_commit(struct dedup_index *index)
{
    index->undo_count = 0;
}

int dedup_txn_abort(struct dedup_index *index)
{
    int damaged = 0;
    while (index->undo_count > 0) {
        const struct dedup_undo *undo = &index->undo[--index->undo_count];
        struct dedup_segment *segment = segment_of(index, undo->tag);
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
        index->count--;
    }
    return damaged;
}
