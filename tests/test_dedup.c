/*
 * The id index on its own. Every id added is found with its locator after
 * many splits, and an abort removes exactly its own ids across splits.
 * Locators past 32 bits come back as their kept value. Ids that share their
 * leading bits fill the deepest segment and then get HM_ERR_FULL, with no
 * id lost. An index sized ahead ends about as dense as one that grew.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "rollup/dedup.h"

/* A 64-bit mixing step (splitmix64), for fingerprints that look random but repeat per seed. */
static uint64_t spread(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ x >> 30) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ x >> 27) * UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x != 0 ? x : 1;
}

/* Looks a fingerprint up: returns the matching slots and sets *found to the last locator. */
static int lookup(struct dedup_index *index, uint64_t fingerprint, uint64_t *found,
                  struct dedup_probe *probe_out)
{
    struct dedup_probe probe;
    dedup_probe_start(index, fingerprint, &probe);
    int matches = 0;
    uint64_t locator;
    while (dedup_probe_next(index, &probe, &locator)) {
        *found = locator;
        matches++;
    }
    if (probe_out != NULL)
        *probe_out = probe;
    return matches;
}

static int add(struct dedup_index *index, uint64_t fingerprint, uint64_t locator, int in_txn)
{
    struct dedup_probe probe;
    uint64_t ignored;
    lookup(index, fingerprint, &ignored, &probe);
    return dedup_insert(index, &probe, locator, in_txn);
}

/* Returns a new index with ids 0 to count - 1 added in one committed transaction. */
static struct dedup_index *index_with(uint64_t count)
{
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    dedup_txn_begin(index);
    for (uint64_t i = 0; i < count; i++)
        cr_assert_eq(add(index, spread(i), i + 1, 1), HM_OK);
    dedup_txn_commit(index);
    return index;
}

Test(dedup, found_after_many_splits)
{
    enum { IDS = 300000 };
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    size_t first_bytes = dedup_bytes(index);
    for (uint64_t i = 0; i < IDS; i++) {
        if (i % 1000 == 0)
            dedup_txn_begin(index);
        int rc = add(index, spread(i), i + 1, 1);
        cr_assert_eq(rc, HM_OK, "id %llu: %d", (unsigned long long)i, rc);
        if (i % 1000 == 999)
            dedup_txn_commit(index);
    }
    dedup_txn_commit(index);
    cr_assert_eq(dedup_count(index), IDS);
    cr_assert_gt(dedup_bytes(index), 20 * first_bytes, "the index never split");
    for (uint64_t i = 0; i < IDS; i++) {
        uint64_t found = 0;
        cr_assert_eq(lookup(index, spread(i), &found, NULL), 1, "id %llu", (unsigned long long)i);
        cr_assert_eq(found, i + 1);
    }
    /* Ids never added: a match needs the same 64-bit fingerprint. */
    int matches = 0;
    for (uint64_t i = IDS; i < 2 * IDS; i++) {
        uint64_t found;
        matches += lookup(index, spread(i), &found, NULL);
    }
    cr_assert_eq(matches, 0);
    /*
     * Segments split between half and four fifths full, so none is below a
     * quarter: at most 48 bytes per id in any segment, about 25 to 29 on
     * average.
     */
    double bytes_per_id = (double)dedup_bytes(index) / IDS;
    cr_assert_leq(bytes_per_id, 32.0, "%.1f bytes per id", bytes_per_id);
    dedup_free(index);
}

Test(dedup, abort_across_splits)
{
    enum { KEPT = 20000, ABORTED = 50000 };
    struct dedup_index *index = index_with(KEPT);
    size_t bytes_before = dedup_bytes(index);

    dedup_txn_begin(index);
    for (uint64_t i = KEPT; i < KEPT + ABORTED; i++)
        cr_assert_eq(add(index, spread(i), i + 1, 1), HM_OK);
    cr_assert_gt(dedup_bytes(index), bytes_before, "the aborted transaction split no segment");
    cr_assert_eq(dedup_txn_abort(index), 0);
    cr_assert_eq(dedup_count(index), KEPT);
    for (uint64_t i = 0; i < KEPT + ABORTED; i++) {
        uint64_t found = 0;
        int matches = lookup(index, spread(i), &found, NULL);
        if (i < KEPT) {
            cr_assert_eq(matches, 1, "kept id %llu", (unsigned long long)i);
            cr_assert_eq(found, i + 1);
        } else {
            cr_assert_eq(matches, 0, "aborted id %llu", (unsigned long long)i);
        }
    }
    /* The same ids again after the abort are stored once each. */
    dedup_txn_begin(index);
    for (uint64_t i = KEPT; i < KEPT + ABORTED; i++)
        cr_assert_eq(add(index, spread(i), i + 7, 1), HM_OK);
    dedup_txn_commit(index);
    for (uint64_t i = KEPT; i < KEPT + ABORTED; i++) {
        uint64_t found = 0;
        cr_assert_eq(lookup(index, spread(i), &found, NULL), 1);
        cr_assert_eq(found, i + 7);
    }
    dedup_free(index);
}

/*
 * A commit that keeps failing appends the same batch and aborts it again and
 * again (a full ledger retries its held batch every few seconds). The
 * removed slots must be reused, so the index stays the size that one
 * attempt needs rather than growing with every retry.
 */
Test(dedup, repeated_aborts_bounded_memory)
{
    enum { KEPT = 100000, BATCH = 10000, RETRIES = 100 };
    struct dedup_index *index = index_with(KEPT);

    size_t bytes_after_first = 0;
    for (int retry = 0; retry < RETRIES; retry++) {
        dedup_txn_begin(index);
        for (uint64_t i = KEPT; i < KEPT + BATCH; i++)
            cr_assert_eq(add(index, spread(i), i + 1, 1), HM_OK);
        cr_assert_eq(dedup_txn_abort(index), 0, "retry %d", retry);
        cr_assert_eq(dedup_count(index), KEPT);
        if (retry == 0)
            bytes_after_first = dedup_bytes(index);
    }
    size_t bytes = dedup_bytes(index);
    cr_expect_leq(bytes, 2 * bytes_after_first, "%zu bytes after %d aborts, %zu after the first",
                  bytes, RETRIES, bytes_after_first);

    /* The batch committed at last: every id once, with its locator. */
    dedup_txn_begin(index);
    for (uint64_t i = KEPT; i < KEPT + BATCH; i++)
        cr_assert_eq(add(index, spread(i), i + 1, 1), HM_OK);
    dedup_txn_commit(index);
    cr_assert_eq(dedup_count(index), KEPT + BATCH);
    for (uint64_t i = 0; i < KEPT + BATCH; i++) {
        uint64_t found = 0;
        cr_assert_eq(lookup(index, spread(i), &found, NULL), 1, "id %llu", (unsigned long long)i);
        cr_assert_eq(found, i + 1);
    }
    dedup_free(index);
}

Test(dedup, locators_modulo_span)
{
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    const uint64_t locators[] = { 1, DEDUP_SPAN - 1, DEDUP_SPAN + 5, 3 * DEDUP_SPAN + 9,
                                  DEDUP_LEGACY };
    const uint64_t kept[] = { 1, DEDUP_SPAN - 1, 5, 9, DEDUP_LEGACY };
    for (size_t i = 0; i < sizeof locators / sizeof locators[0]; i++)
        cr_assert_eq(add(index, spread(100 + i), locators[i], 0), HM_OK);
    for (size_t i = 0; i < sizeof locators / sizeof locators[0]; i++) {
        uint64_t found = 0;
        cr_assert_eq(lookup(index, spread(100 + i), &found, NULL), 1);
        cr_assert_eq(found, kept[i], "locator %zu: %llx", i, (unsigned long long)found);
    }
    dedup_free(index);
}

Test(dedup, shared_leading_bits_end_full)
{
    /*
     * Fingerprints whose top 24 bits are equal all belong to one segment at
     * every depth. Seeded hashing keeps real ids from doing this, but the
     * index must still reject them cleanly rather than loop or lose ids.
     */
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    const uint64_t prefix = UINT64_C(0x5a5a5a) << 40;
    uint64_t stored = 0;
    int rc = HM_OK;
    for (uint64_t i = 0; i < 20000 && rc == HM_OK; i++) {
        uint64_t fingerprint = prefix | (spread(i) >> 24);
        rc = add(index, fingerprint, i + 1, 0);
        if (rc == HM_OK)
            stored++;
    }
    cr_assert_eq(rc, HM_ERR_FULL);
    /* The deepest segment took ids up to its split point, between half and four fifths full. */
    cr_assert_geq(stored, 8192 / 2, "stored %llu", (unsigned long long)stored);
    cr_assert_lt(stored, 8192 / 5 * 4, "stored %llu", (unsigned long long)stored);
    cr_assert_eq(dedup_count(index), stored);
    for (uint64_t i = 0; i < stored; i++) {
        uint64_t found = 0;
        cr_assert_geq(lookup(index, prefix | (spread(i) >> 24), &found, NULL), 1);
    }
    dedup_free(index);
}

Test(dedup, sized_load_dense)
{
    enum { IDS = 100000 };
    static uint64_t fingerprints[IDS], locators[IDS];
    for (uint64_t i = 0; i < IDS; i++) {
        fingerprints[i] = spread(i);
        locators[i] = i == 7 ? DEDUP_LEGACY : i + 1;
    }
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    cr_assert_eq(dedup_clear(index, IDS), HM_OK);
    cr_assert_eq(dedup_load(index, fingerprints, locators, IDS), HM_OK);
    /* Sized for them, the index is as dense as one that grew by splits. */
    double bytes_per_id = (double)dedup_bytes(index) / IDS;
    cr_assert_leq(bytes_per_id, 48.0, "%.1f bytes per id", bytes_per_id);
    cr_assert_geq(bytes_per_id, 15.0, "%.1f bytes per id", bytes_per_id);
    cr_assert_eq(dedup_count(index), IDS);
    uint64_t found = 0;
    cr_assert_eq(lookup(index, spread(7), &found, NULL), 1);
    cr_assert_eq(found, DEDUP_LEGACY);
    cr_assert_eq(lookup(index, spread(IDS - 1), &found, NULL), 1);
    cr_assert_eq(found, IDS);
    /* Emptied, it finds nothing and takes ids again. */
    cr_assert_eq(dedup_clear(index, 0), HM_OK);
    cr_assert_eq(dedup_count(index), 0);
    cr_assert_eq(lookup(index, spread(7), &found, NULL), 0);
    cr_assert_eq(add(index, spread(7), 3, 0), HM_OK);
    dedup_free(index);
}
