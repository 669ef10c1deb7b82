#include "dedup.h"

#include "common/status.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

/* Slots of a new index: 1 MiB, grown by doubling as events are stored. */
#define DEDUP_SLOTS_INITIAL (64 * 1024)

/* Tables from this size on ask for huge pages: a probe is a random access, and TLB misses double its cost. */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)

static struct dedup_slot *slots_alloc(size_t count)
{
    size_t bytes = count * sizeof(struct dedup_slot);
    if (bytes < HUGE_PAGE_BYTES)
        return calloc(count, sizeof(struct dedup_slot));
    void *slots = NULL;
    if (posix_memalign(&slots, HUGE_PAGE_BYTES, bytes) != 0)
        return NULL;
    madvise(slots, bytes, MADV_HUGEPAGE);
    memset(slots, 0, bytes);
    return slots;
}

int dedup_create(struct dedup_index **out)
{
    struct dedup_index *index = calloc(1, sizeof *index);
    if (index == NULL)
        return HM_ERR_NOMEM;
    index->slots = slots_alloc(DEDUP_SLOTS_INITIAL);
    if (index->slots == NULL) {
        free(index);
        return HM_ERR_NOMEM;
    }
    index->mask = DEDUP_SLOTS_INITIAL - 1;
    /* Random seeds keep a sender from choosing event ids that all land in one probe run. */
    if (getrandom(index->seed, sizeof index->seed, 0) != sizeof index->seed) {
        free(index->slots);
        free(index);
        return HM_ERR_IO;
    }
    *out = index;
    return HM_OK;
}

void dedup_free(struct dedup_index *index)
{
    if (index == NULL)
        return;
    free(index->slots);
    free(index->undo);
    free(index);
}

void dedup_clear(struct dedup_index *index)
{
    memset(index->slots, 0, (index->mask + 1) * sizeof *index->slots);
    index->count = 0;
    index->undo_count = 0;
    index->resized = 0;
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
    uint64_t tenant = mix(load64(tenant_id) ^ index->seed[0], load64(tenant_id + 8) ^ k1);
    uint64_t id = mix(load64(event_id) ^ index->seed[1] ^ tenant,
                      load64(event_id + 8) ^ k2);
    uint64_t fingerprint = mix(id ^ k1, tenant ^ k2 ^ index->seed[0]);
    return fingerprint != 0 ? fingerprint : 1;
}

/* Doubles the table and places every slot again. */
static int grow(struct dedup_index *index)
{
    size_t count = 2 * (index->mask + 1);
    struct dedup_slot *slots = slots_alloc(count);
    if (slots == NULL)
        return HM_ERR_NOMEM;
    struct dedup_index bigger = *index;
    bigger.slots = slots;
    bigger.mask = count - 1;
    for (size_t i = 0; i <= index->mask; i++) {
        const struct dedup_slot *old = &index->slots[i];
        if (old->fingerprint == 0)
            continue;
        size_t at = dedup_first(&bigger, old->fingerprint);
        while (slots[at].fingerprint != 0)
            at = dedup_next(&bigger, at);
        slots[at] = *old;
    }
    free(index->slots);
    index->slots = slots;
    index->mask = count - 1;
    index->resized = 1;
    return HM_OK;
}

int dedup_insert(struct dedup_index *index, size_t slot, uint64_t fingerprint, uint64_t locator,
                 int in_txn)
{
    if (in_txn && index->undo_count == index->undo_capacity) {
        size_t capacity = index->undo_capacity ? 2 * index->undo_capacity : 4096;
        size_t *undo = realloc(index->undo, capacity * sizeof *undo);
        if (undo == NULL)
            return HM_ERR_NOMEM;
        index->undo = undo;
        index->undo_capacity = capacity;
    }
    /* A probe ends at an empty slot, so one must always remain. */
    if (index->count + 1 >= index->mask)
        return HM_ERR_NOMEM;
    index->slots[slot] = (struct dedup_slot){ fingerprint, locator };
    index->count++;
    if (in_txn)
        index->undo[index->undo_count++] = slot;
    /*
     * Half full at most, so that a probe for a new id ends after about two
     * slots. When the table cannot grow, it stays as it is: fuller is slower,
     * not wrong, and the next insert tries again.
     */
    if (2 * index->count > index->mask + 1)
        (void)grow(index);
    return HM_OK;
}

void dedup_txn_begin(struct dedup_index *index)
{
    index->undo_count = 0;
    index->resized = 0;
}

void dedup_txn_commit(struct dedup_index *index)
{
    index->undo_count = 0;
    index->resized = 0;
}

int dedup_txn_abort(struct dedup_index *index)
{
    if (index->resized) {
        index->undo_count = 0;
        index->resized = 0;
        return 1;
    }
    /*
     * Insertions only fill empty slots, so emptying the slots of this
     * transaction in reverse order gives back the exact earlier table: no
     * slot placed before them probed past them.
     */
    while (index->undo_count > 0) {
        index->slots[index->undo[--index->undo_count]].fingerprint = 0;
        index->count--;
    }
    return 0;
}
