#include "dedup.h"

#include "common/status.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <sys/random.h>

/* Slots of a new index: 1 MiB, grown by doubling as events are stored. */
#define DEDUP_SLOTS_INITIAL (64 * 1024)
enum { SPARE_NONE, SPARE_MAKING, SPARE_READY, SPARE_FAILED };

/* Slots of `old` moved per commit at least, and per slot that the commit added. */
#define DEDUP_MOVE_MIN 4096
#define DEDUP_MOVE_PER_INSERT 4

/*
 * Maps a zeroed table. The kernel supplies zero pages on first touch, so a
 * new table costs no time up front; huge pages halve the cost of a probe,
 * which is a random access that misses the TLB otherwise.
 */
static int table_make(struct dedup_table *table, size_t slot_count)
{
    size_t bytes = slot_count * sizeof(struct dedup_slot);
    void *slots = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED)
        return HM_ERR_NOMEM;
    madvise(slots, bytes, MADV_HUGEPAGE);
    table->slots = slots;
    table->mask = slot_count - 1;
    table->count = 0;
    return HM_OK;
}

static void table_free_slots(struct dedup_table *table)
{
    if (table->slots != NULL)
        munmap(table->slots, (table->mask + 1) * sizeof(struct dedup_slot));
    table->slots = NULL;
}

static void *spare_make(void *context)
{
    struct dedup_index *index = context;
    /*
     * The lowest priority: the table is needed only later, and the ingest
     * loop and the commit thread must not wait for the CPU meanwhile. On
     * Linux a thread's nice value is its own. A failure only makes it slower.
     */
    (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
    /* Its own name, so that a profile separates its page zeroing from the commits. */
    pthread_setname_np(pthread_self(), "ledger-index");
    size_t bytes = (index->spare.mask + 1) * sizeof(struct dedup_slot);
    void *slots = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) {
        atomic_store(&index->spare_state, SPARE_FAILED);
        return NULL;
    }
    madvise(slots, bytes, MADV_HUGEPAGE);
    /* Touch every page here, so that the writer never waits for a page to be zeroed. */
    for (size_t offset = 0; offset < bytes; offset += 4096)
        ((volatile uint8_t *)slots)[offset] = 0;
    index->spare.slots = slots;
    atomic_store(&index->spare_state, SPARE_READY);
    return NULL;
}

/* Asks a helper thread for a table of `slot_count` slots. */
static void spare_request(struct dedup_index *index, size_t slot_count)
{
    index->spare.slots = NULL;
    index->spare.mask = slot_count - 1;
    index->spare.count = 0;
    atomic_store(&index->spare_state, SPARE_MAKING);
    if (pthread_create(&index->spare_thread, NULL, spare_make, index) != 0) {
        atomic_store(&index->spare_state, SPARE_NONE);
        return;
    }
}

/* Waits for the helper thread, if one runs, and keeps or drops its table. */
static void spare_settle(struct dedup_index *index, int keep)
{
    int state = atomic_load(&index->spare_state);
    if (state == SPARE_NONE)
        return;
    pthread_join(index->spare_thread, NULL);
    if (!keep || atomic_load(&index->spare_state) != SPARE_READY)
        table_free_slots(&index->spare);
    if (!keep)
        atomic_store(&index->spare_state, SPARE_NONE);
}

static void table_free(struct dedup_table *table)
{
    if (table->slots != NULL)
        munmap(table->slots, (table->mask + 1) * sizeof(struct dedup_slot));
    table->slots = NULL;
    table->mask = 0;
    table->count = 0;
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
    if (table_make(&index->current, DEDUP_SLOTS_INITIAL) != HM_OK) {
        free(index);
        return HM_ERR_NOMEM;
    }
    *out = index;
    return HM_OK;
}

void dedup_free(struct dedup_index *index)
{
    if (index == NULL)
        return;
    spare_settle(index, 0);
    table_free(&index->current);
    table_free(&index->old);
    free(index->undo);
    free(index);
}

int dedup_clear(struct dedup_index *index, size_t expected)
{
    spare_settle(index, 0);
    /* Below 30 % load after `expected` ids, so that the first growth is still ahead. */
    size_t slot_count = DEDUP_SLOTS_INITIAL;
    while (slot_count / 10 * 3 < expected)
        slot_count *= 2;
    table_free(&index->current);
    table_free(&index->old);
    index->move_at = 0;
    index->undo_count = 0;
    index->resized = 0;
    return table_make(&index->current, slot_count);
}

size_t dedup_count(const struct dedup_index *index)
{
    return index->current.count + index->old.count;
}

static inline uint64_t load64(const uint8_t *bytes)
{
    uint64_t value;
    memcpy(&value, bytes, sizeof value);
    return value;
}

/* A 64x64 -> 128 bit multiply folded to 64 bits, as in the wyhash family of hashes. */
static inline uint64_t mix(uint64_t a, uint64_t b)
{
    unsigned __int128 product = (unsigned __int128)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
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
    uint64_t tenant = mix(load64(tenant_id) ^ index->seed[0],
                          load64(tenant_id + 8) ^ index->seed[1] ^ k1);
    uint64_t id = mix(load64(event_id) ^ index->seed[1] ^ tenant,
                      load64(event_id + 8) ^ index->seed[0] ^ k2);
    uint64_t fingerprint = mix(id ^ k1, tenant ^ k2 ^ index->seed[0]);
    return fingerprint != 0 ? fingerprint : 1;
}

static inline size_t first_slot(const struct dedup_table *table, uint64_t fingerprint)
{
    return (size_t)(fingerprint * UINT64_C(0x9e3779b97f4a7c15) >> 20) & table->mask;
}

/* Finds the empty slot where a fingerprint goes in `table`. */
static size_t empty_slot(const struct dedup_table *table, uint64_t fingerprint)
{
    size_t at = first_slot(table, fingerprint);
    while (table->slots[at].fingerprint != 0)
        at = (at + 1) & table->mask;
    return at;
}

void dedup_prefetch(const struct dedup_index *index, uint64_t fingerprint)
{
    __builtin_prefetch(&index->current.slots[first_slot(&index->current, fingerprint)]);
    if (index->old.count > 0)
        __builtin_prefetch(&index->old.slots[first_slot(&index->old, fingerprint)]);
}

void dedup_probe_start(const struct dedup_index *index, uint64_t fingerprint,
                       struct dedup_probe *probe)
{
    probe->fingerprint = fingerprint;
    probe->in_old = 0;
    probe->at = first_slot(&index->current, fingerprint);
    probe->slot = 0;
}

int dedup_probe_next(const struct dedup_index *index, struct dedup_probe *probe,
                     uint64_t *locator_out)
{
    for (;;) {
        const struct dedup_table *table = probe->in_old ? &index->old : &index->current;
        const struct dedup_slot *slot = &table->slots[probe->at];
        if (slot->fingerprint == 0) {
            if (probe->in_old)
                return 0;
            /* The end of the run in the current table is where a new id goes. */
            probe->slot = probe->at;
            if (index->old.count == 0)
                return 0;
            probe->in_old = 1;
            probe->at = first_slot(&index->old, probe->fingerprint);
            continue;
        }
        probe->at = (probe->at + 1) & table->mask;
        if (slot->fingerprint == probe->fingerprint) {
            *locator_out = slot->locator;
            return 1;
        }
    }
}

/*
 * Moves every slot of a table into one of twice its size, at once. Used
 * where no pause matters (a rebuild) or where nothing else is possible (a
 * single transaction that filled the table).
 */
static int grow_now(struct dedup_index *index)
{
    size_t slot_count = 2 * (index->current.mask + 1);
    struct dedup_table bigger = { .slots = NULL };
    if (atomic_load(&index->spare_state) != SPARE_NONE && index->spare.mask + 1 == slot_count) {
        /*
         * The helper's table has that size: wait for it rather than zero
         * another one here, since part of its pages are done already.
         */
        spare_settle(index, 1);
        if (atomic_load(&index->spare_state) == SPARE_READY) {
            bigger = index->spare;
            bigger.count = 0;
            index->spare.slots = NULL;
        }
        atomic_store(&index->spare_state, SPARE_NONE);
    } else {
        spare_settle(index, 0);
    }
    if (bigger.slots == NULL && table_make(&bigger, slot_count) != HM_OK)
        return HM_ERR_NOMEM;
    const struct dedup_table *tables[2] = { &index->current, &index->old };
    for (int t = 0; t < 2; t++) {
        const struct dedup_table *table = tables[t];
        /* Slots of `old` before move_at are in `current` already. */
        size_t from = t == 1 ? index->move_at : 0;
        for (size_t i = from; table->slots != NULL && i <= table->mask; i++) {
            if (table->slots[i].fingerprint == 0)
                continue;
            bigger.slots[empty_slot(&bigger, table->slots[i].fingerprint)] = table->slots[i];
            bigger.count++;
        }
    }
    table_free(&index->current);
    table_free(&index->old);
    index->move_at = 0;
    index->current = bigger;
    index->resized = 1;
    return HM_OK;
}

/* Moves up to `budget` slots of `old` into `current`; frees `old` at its end. */
static void move_some(struct dedup_index *index, size_t budget)
{
    struct dedup_table *old = &index->old;
    while (old->slots != NULL && budget-- > 0) {
        if (index->move_at > old->mask) {
            table_free(old);
            index->move_at = 0;
            return;
        }
        const struct dedup_slot *slot = &old->slots[index->move_at++];
        if (slot->fingerprint == 0)
            continue;
        /*
         * The slot stays in `old` too, so that the runs of the slots not yet
         * moved stay whole; a lookup finds the copy in `current` first.
         */
        index->current.slots[empty_slot(&index->current, slot->fingerprint)] = *slot;
        index->current.count++;
        old->count--;
    }
}

int dedup_insert(struct dedup_index *index, const struct dedup_probe *probe, uint64_t locator,
                 int in_txn)
{
    struct dedup_table *table = &index->current;
    size_t slot_count = table->mask + 1;
    /*
     * Between transactions the table grows gradually (dedup_txn_commit). A
     * transaction that fills three quarters of it alone, or a rebuild past
     * half, grows it at once.
     */
    size_t limit = in_txn ? slot_count / 4 * 3 : slot_count / 2;
    if (table->count + index->old.count + 1 > limit) {
        if (grow_now(index) != HM_OK)
            return HM_ERR_NOMEM;
        if (in_txn)
            index->undo_count = 0;
        table = &index->current;
        size_t at = empty_slot(table, probe->fingerprint);
        table->slots[at] = (struct dedup_slot){ probe->fingerprint, locator };
        table->count++;
        return HM_OK;
    }
    if (in_txn && index->undo_count == index->undo_capacity) {
        size_t capacity = index->undo_capacity ? 2 * index->undo_capacity : 4096;
        size_t *undo = realloc(index->undo, capacity * sizeof *undo);
        if (undo == NULL)
            return HM_ERR_NOMEM;
        index->undo = undo;
        index->undo_capacity = capacity;
    }
    table->slots[probe->slot] = (struct dedup_slot){ probe->fingerprint, locator };
    table->count++;
    if (in_txn)
        index->undo[index->undo_count++] = probe->slot;
    return HM_OK;
}

int dedup_load(struct dedup_index *index, const uint64_t *fingerprints, const uint64_t *locators,
               size_t count)
{
    for (size_t i = 0; i < count; i++)
        dedup_prefetch(index, fingerprints[i]);
    for (size_t i = 0; i < count; i++) {
        struct dedup_table *table = &index->current;
        if (2 * (table->count + index->old.count + 1) > table->mask + 1 &&
            grow_now(index) != HM_OK)
            return HM_ERR_NOMEM;
        table = &index->current;
        table->slots[empty_slot(table, fingerprints[i])] =
            (struct dedup_slot){ fingerprints[i], locators[i] };
        table->count++;
    }
    return HM_OK;
}

void dedup_txn_begin(struct dedup_index *index)
{
    index->undo_count = 0;
    index->resized = 0;
}

void dedup_txn_commit(struct dedup_index *index)
{
    size_t added = index->undo_count;
    index->undo_count = 0;
    index->resized = 0;
    /*
     * From 20 % load on, a helper thread makes a table of twice the size;
     * from 40 % on, once it is ready, that table takes the new slots.
     */
    struct dedup_table *table = &index->current;
    size_t slot_count = table->mask + 1;
    if (index->old.slots == NULL && atomic_load(&index->spare_state) == SPARE_NONE &&
        table->count * 5 >= slot_count)
        spare_request(index, 2 * slot_count);
    if (index->old.slots == NULL && table->count * 5 >= slot_count * 2 &&
        atomic_load(&index->spare_state) >= SPARE_READY) {
        int ready = atomic_load(&index->spare_state) == SPARE_READY;
        spare_settle(index, 1);
        atomic_store(&index->spare_state, SPARE_NONE);
        if (ready) {
            index->old = *table;
            index->current = index->spare;
            index->spare.slots = NULL;
            index->move_at = 0;
        }
    }
    if (index->old.slots != NULL)
        move_some(index, added * DEDUP_MOVE_PER_INSERT + DEDUP_MOVE_MIN);
}

int dedup_txn_abort(struct dedup_index *index)
{
    if (index->resized) {
        index->undo_count = 0;
        index->resized = 0;
        return 1;
    }
    /*
     * Inside a transaction slots are only added, each to an empty slot of
     * the current table, so emptying them in reverse order gives back the
     * exact earlier table: no slot placed before them probed past them.
     */
    while (index->undo_count > 0) {
        index->current.slots[index->undo[--index->undo_count]].fingerprint = 0;
        index->current.count--;
    }
    return 0;
}
