/*
 * The id index on its own. Every id added is found with its locator after
 * many splits, and an abort removes exactly its own ids across splits.
 * Locators past 32 bits come back as their kept value. Ids that share their
 * leading bits fill the deepest segment and then get HM_ERR_FULL, with no
 * id lost. An index sized ahead ends about as dense as one that grew.
 *
 * With a bound on its memory (suite spill), the full table's ids go to
 * sorted runs on disk, and every id stays found with its locator while the
 * memory stays near the bound. Aborts after a spill remove only their own
 * ids, and a rebuild spills as it loads. A spill that cannot write keeps
 * its ids in memory, is reported once and is tried again. Writes of runs go
 * through __wrap_pwrite, which can fail them or shorten them.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

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

/*
 * Runs are written through __wrap_pwrite, because the binary is linked with
 * -Wl,--wrap=pwrite (tests/CMakeLists.txt). While pwrite_errno is not 0, a write to a file
 * larger than pwrite_fail_above bytes fails with it. While pwrite_max_bytes
 * is not 0, each write stores at most that many bytes, as a short write.
 * The spill thread writes, so these are atomic.
 */
static _Atomic int pwrite_errno;
static _Atomic long long pwrite_fail_above;
static _Atomic size_t pwrite_max_bytes;
static _Atomic unsigned long pwrite_calls;

ssize_t __real_pwrite(int fd, const void *buffer, size_t size, off_t offset);
ssize_t __wrap_pwrite(int fd, const void *buffer, size_t size, off_t offset);

ssize_t __wrap_pwrite(int fd, const void *buffer, size_t size, off_t offset)
{
    atomic_fetch_add(&pwrite_calls, 1);
    int error = atomic_load(&pwrite_errno);
    struct stat status;
    if (error != 0 && fstat(fd, &status) == 0 && status.st_size > atomic_load(&pwrite_fail_above)) {
        errno = error;
        return -1;
    }
    size_t max_bytes = atomic_load(&pwrite_max_bytes);
    if (max_bytes != 0 && size > max_bytes)
        size = max_bytes;
    return __real_pwrite(fd, buffer, size, offset);
}

/* Returns the number of open file descriptors of this process. */
static int open_fd_count(void)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir);
    int count = 0;
    while (readdir(dir) != NULL)
        count++;
    closedir(dir);
    return count;
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

/* ---- With a bound on the memory ---- */

/* A segment of 8,192 slots takes 96 KiB and a little more. */
#define MEMORY_MAX ((size_t)4 << 20)
#define SEGMENT_BYTES ((size_t)100 << 10)

static char spill_dir[256];

static void dir_make(void)
{
    snprintf(spill_dir, sizeof spill_dir, "/tmp/hm-test-spill-XXXXXX");
    cr_assert_not_null(mkdtemp(spill_dir));
}

static void dir_remove(void)
{
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", spill_dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(spill, .init = dir_make, .fini = dir_remove);

static struct dedup_index *spilling_index(size_t memory_max)
{
    struct dedup_index *index = NULL;
    cr_assert_eq(dedup_create(&index), HM_OK);
    cr_assert_eq(dedup_spill_to(index, spill_dir, memory_max), HM_OK);
    return index;
}

/*
 * Adds ids first..first+count-1 in committed transactions of `per_txn`,
 * checking after each that the tables stay near the bound. Returns the
 * largest memory seen.
 */
static size_t add_committed(struct dedup_index *index, uint64_t first, uint64_t count,
                            uint64_t per_txn, size_t memory_max)
{
    size_t peak = 0;
    for (uint64_t i = first; i < first + count; i += per_txn) {
        dedup_txn_begin(index);
        for (uint64_t k = i; k < i + per_txn && k < first + count; k++)
            cr_assert_eq(add(index, spread(k), k + 1, 1), HM_OK, "id %llu", (unsigned long long)k);
        dedup_txn_commit(index);
        size_t bytes = dedup_bytes(index);
        if (bytes > peak)
            peak = bytes;
        if (memory_max > 0)
            cr_assert_leq(bytes, memory_max + 8 * SEGMENT_BYTES, "%zu bytes in memory at id %llu",
                          bytes, (unsigned long long)i);
    }
    return peak;
}

/*
 * Checks that ids 0 to count - 1 (fingerprints[i], or spread(i) when
 * `fingerprints` is NULL) are found with locator i + 1, and that ids
 * spread(absent_first) onwards, never added, are not.
 */
static void expect_found(struct dedup_index *index, const uint64_t *fingerprints, uint64_t count,
                         uint64_t absent_first, uint64_t absent_count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t found = 0;
        uint64_t fingerprint = fingerprints != NULL ? fingerprints[i] : spread(i);
        cr_assert_eq(lookup(index, fingerprint, &found, NULL), 1, "id %llu",
                     (unsigned long long)i);
        cr_assert_eq(found, i + 1, "id %llu", (unsigned long long)i);
    }
    int matches = 0;
    for (uint64_t i = absent_first; i < absent_first + absent_count; i++) {
        uint64_t found;
        matches += lookup(index, spread(i), &found, NULL);
    }
    cr_assert_eq(matches, 0, "ids never added were found");
}

static void expect_all_found(struct dedup_index *index, uint64_t count)
{
    expect_found(index, NULL, count, count, 100000);
}

/* Lets a running spill end, with empty transactions, so that its runs are taken. */
static void spills_settle(struct dedup_index *index)
{
    for (int i = 0; i < 20000 && atomic_load(&index->spill_state) != 0; i++) {
        usleep(1000);
        dedup_txn_begin(index);
        dedup_txn_commit(index);
    }
    cr_assert_eq(atomic_load(&index->spill_state), 0, "a spill did not end in 20 s");
}

Test(spill, ids_found_in_runs_memory_bounded)
{
    enum { IDS = 600000 };
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, IDS, 1000, MEMORY_MAX);
    spills_settle(index);
    cr_assert_eq(dedup_count(index), IDS);
    cr_assert_geq(index->spills, 4, "%llu spills", (unsigned long long)index->spills);
    /* Merged two by two, the runs stay about log2 of the spills. */
    cr_assert_leq(dedup_run_count(index), 6, "%zu runs after %llu spills",
                  dedup_run_count(index), (unsigned long long)index->spills);
    /* Slots of 12 bytes on disk, about 4/3 of a slot an id; most of the ids are there. */
    size_t on_disk = dedup_disk_bytes(index), slots = on_disk / 12;
    cr_assert_eq(on_disk % 12, 0);
    cr_assert_geq(slots, IDS / 2, "%zu slots on disk", slots);
    cr_assert_leq(slots, IDS * 14 / 10 + 4096 * dedup_run_count(index), "%zu slots", slots);
    expect_all_found(index, IDS);
    cr_assert_eq(dedup_spill_failure(index, &(int){ 0 }), HM_OK);
    dedup_free(index);
}

Test(spill, same_fingerprint_in_memory_and_run)
{
    /* Two ids may share a fingerprint; the ledger confirms each entry, so both must come back. */
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, 200000, 1000, MEMORY_MAX);
    spills_settle(index);
    cr_assert_gt(dedup_run_count(index), 0);
    uint64_t found = 0;
    cr_assert_eq(lookup(index, spread(5), &found, NULL), 1);
    struct dedup_probe probe;
    dedup_txn_begin(index);
    dedup_probe_start(index, spread(5), &probe);
    uint64_t locators[4];
    int matches = 0;
    while (matches < 4 && dedup_probe_next(index, &probe, &locators[matches]))
        matches++;
    cr_assert_eq(matches, 1);
    cr_assert_eq(dedup_insert(index, &probe, 777777, 1), HM_OK);
    dedup_txn_commit(index);
    dedup_probe_start(index, spread(5), &probe);
    matches = 0;
    while (matches < 4 && dedup_probe_next(index, &probe, &locators[matches]))
        matches++;
    cr_assert_eq(matches, 2);
    cr_assert_eq(locators[0], 777777, "the table in memory comes first");
    cr_assert_eq(locators[1], 6);
    dedup_free(index);
}

Test(spill, abort_after_spills_removes_own_ids)
{
    enum { KEPT = 300000, ABORTED = 50000 };
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, KEPT, 1000, MEMORY_MAX);
    cr_assert_gt(index->spills, 0);
    dedup_txn_begin(index);
    for (uint64_t i = KEPT; i < KEPT + ABORTED; i++)
        cr_assert_eq(add(index, spread(i), i + 1, 1), HM_OK);
    cr_assert_eq(dedup_txn_abort(index), 0);
    cr_assert_eq(dedup_count(index), KEPT);
    expect_all_found(index, KEPT);
    /* Stored again after the abort, each once. */
    add_committed(index, KEPT, ABORTED, 1000, MEMORY_MAX);
    spills_settle(index);
    expect_all_found(index, KEPT + ABORTED);
    dedup_free(index);
}

Test(spill, rebuild_spills_while_loading)
{
    enum { IDS = 400000, BATCH = 64 };
    static uint64_t fingerprints[IDS], locators[IDS];
    for (uint64_t i = 0; i < IDS; i++) {
        fingerprints[i] = spread(i);
        locators[i] = i + 1;
    }
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    cr_assert_eq(dedup_clear(index, IDS), HM_OK);
    size_t peak = 0;
    for (size_t i = 0; i < IDS; i += BATCH) {
        cr_assert_eq(dedup_load(index, fingerprints + i, locators + i, BATCH), HM_OK);
        if (dedup_bytes(index) > peak)
            peak = dedup_bytes(index);
    }
    /* A rebuild spills on its own thread and waits, so only one table is in memory. */
    cr_assert_leq(peak, MEMORY_MAX / 2 + 4 * SEGMENT_BYTES, "%zu bytes", peak);
    cr_assert_eq(dedup_count(index), IDS);
    cr_assert_gt(dedup_run_count(index), 0);
    expect_all_found(index, IDS);
    /* Emptied, the runs are gone too. */
    cr_assert_eq(dedup_clear(index, 0), HM_OK);
    cr_assert_eq(dedup_count(index), 0);
    cr_assert_eq(dedup_run_count(index), 0);
    cr_assert_eq(dedup_disk_bytes(index), 0);
    uint64_t found;
    cr_assert_eq(lookup(index, spread(3), &found, NULL), 0);
    dedup_free(index);
}

/* Runs past a file size limit fail to be written, as on a full disk. */
Test(spill, failed_spill_keeps_ids_in_memory)
{
    enum { IDS = 300000 };
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = { 64 << 10, 64 << 10 };
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &limit), 0);
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    size_t peak = add_committed(index, 0, IDS, 1000, 0);
    spills_settle(index);
    cr_assert_gt(index->spill_failure.count, 0);
    cr_assert_eq(dedup_run_count(index), 0);
    cr_assert_gt(peak, MEMORY_MAX, "the ids stayed in memory past the bound");
    int sys = 0;
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_ERR_IO);
    cr_assert_eq(sys, EFBIG, "errno %d", sys);
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_OK, "the failure is reported once");
    cr_assert_eq(dedup_count(index), IDS);
    expect_all_found(index, IDS);
    dedup_free(index);
}

/* Sets a file size limit of `bytes` (SIGXFSZ ignored), which writes of larger runs pass. */
static void file_size_limit(rlim_t bytes)
{
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = { bytes, RLIM_INFINITY };
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &limit), 0);
}

/* Returns an index whose spills of `ids` ids all failed at a file size limit of 64 KiB. */
static struct dedup_index *index_after_failed_spills(uint64_t ids)
{
    file_size_limit(64 << 10);
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, ids, 1000, 0);
    spills_settle(index);
    cr_assert_gt(index->spill_failure.count, 0);
    cr_assert_eq(dedup_run_count(index), 0);
    return index;
}

Test(spill, failed_spill_tried_again)
{
    enum { IDS = 200000 };
    struct dedup_index *index = index_after_failed_spills(IDS);
    int sys = 0;
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_ERR_IO);

    /* A retry that fails again is counted and not reported again. */
    uint64_t failures = index->spill_failure.count;
    for (int i = 0; i < 3000 && index->spill_failure.count == failures; i++) {
        dedup_txn_begin(index);
        dedup_txn_commit(index);
        spills_settle(index);
    }
    cr_assert_gt(index->spill_failure.count, failures, "the spill was not tried again");
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_OK);

    /* Space again: a later transaction writes the frozen table out. */
    file_size_limit(RLIM_INFINITY);
    for (int i = 0; i < 3000 && dedup_run_count(index) == 0; i++) {
        dedup_txn_begin(index);
        dedup_txn_commit(index);
        if (atomic_load(&index->spill_state) != 0)
            usleep(1000);
    }
    spills_settle(index);
    cr_assert_gt(dedup_run_count(index), 0, "the spill was not tried again");
    cr_assert_null(index->frozen);
    expect_all_found(index, IDS);
    dedup_free(index);
}

/*
 * Returns an index of `ids` ids whose spills all wrote their runs and
 * whose merges all failed with `expected_errno`, reported once. The caller
 * sets up the failure first.
 */
static struct dedup_index *index_after_failed_merges(uint64_t ids, int expected_errno)
{
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, ids, 1000, MEMORY_MAX);
    spills_settle(index);
    cr_assert_eq(index->spill_failure.count, 0, "%llu spills failed",
                 (unsigned long long)index->spill_failure.count);
    cr_assert_geq(dedup_run_count(index), 4, "%zu runs", dedup_run_count(index));
    cr_assert_gt(index->merge_failure.count, 0);
    int sys = 0;
    cr_assert_eq(dedup_merge_failure(index, &sys), HM_ERR_IO);
    cr_assert_eq(sys, expected_errno, "errno %d", sys);
    return index;
}

/*
 * A merge needs room for a file as large as its two runs together. When
 * there is room for a new run but not for the merge, the new run is kept
 * unmerged: the table in memory is freed, and the memory stays near the
 * bound. A file size limit of 2 MiB lets each run of a 2 MiB table be
 * written and fails every merge.
 */
Test(spill, failed_merge_keeps_new_run)
{
    enum { IDS = 600000 };
    file_size_limit(2 << 20);
    struct dedup_index *index = index_after_failed_merges(IDS, EFBIG);
    int sys = 0;
    cr_assert_eq(dedup_merge_failure(index, &sys), HM_OK, "the failure is reported once");
    cr_assert_eq(dedup_count(index), IDS);
    expect_all_found(index, IDS);
    dedup_free(index);
}

/*
 * After failed spills the table in memory grows past the bound. Once a
 * spill succeeds it is frozen in turn, and the new table starts empty:
 * commits go on while the large frozen table is written, instead of
 * waiting for all of it.
 */
Test(spill, no_wait_for_large_frozen_table)
{
    enum { IDS = 300000 };
    struct dedup_index *index = index_after_failed_spills(IDS);
    cr_assert_gt(dedup_bytes(index), 2 * MEMORY_MAX);
    file_size_limit(RLIM_INFINITY);
    /*
     * Transactions until the retried spill ends. The transaction that takes
     * its run also freezes the large table and starts its spill.
     */
    for (int i = 0; i < 1200 && dedup_run_count(index) == 0; i++) {
        dedup_txn_begin(index);
        dedup_txn_commit(index);
        if (atomic_load(&index->spill_state) != 0)
            usleep(1000);
    }
    cr_assert_gt(dedup_run_count(index), 0, "the spill was not tried again");
    cr_assert_not_null(index->frozen);
    cr_assert_gt(dedup_bytes(index), MEMORY_MAX, "the large table was not frozen");
    cr_assert_neq(atomic_load(&index->spill_state), 0, "the large table's spill already ended");
    uint64_t waits = index->spill_waits;
    dedup_txn_begin(index);
    cr_assert_eq(add(index, spread(IDS), IDS + 1, 1), HM_OK);
    dedup_txn_commit(index);
    cr_assert_eq(index->spill_waits, waits, "a commit waited for the spill of the large table");
    spills_settle(index);
    cr_assert_null(index->frozen);
    expect_all_found(index, IDS + 1);
    dedup_free(index);
}

/* Returns an index whose spills of `ids` ids all failed because pwrite failed with `error`. */
static struct dedup_index *index_after_failed_writes(uint64_t ids, int error)
{
    atomic_store(&pwrite_fail_above, 0);
    atomic_store(&pwrite_errno, error);
    struct dedup_index *index = spilling_index(MEMORY_MAX);
    add_committed(index, 0, ids, 1000, 0);
    spills_settle(index);
    cr_assert_gt(atomic_load(&pwrite_calls), 0, "the runs were not written through pwrite");
    cr_assert_gt(index->spill_failure.count, 0);
    cr_assert_eq(dedup_run_count(index), 0);
    return index;
}

/*
 * The run's blocks are allocated before it is written, so a failed write
 * comes from pwrite: its errno is reported, the ids stay in memory, and
 * the run's file is closed.
 */
Test(spill, failed_write_keeps_ids_in_memory)
{
    enum { IDS = 200000 };
    int fds_before = open_fd_count();
    struct dedup_index *index = index_after_failed_writes(IDS, EIO);
    int sys = 0;
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_ERR_IO);
    cr_assert_eq(sys, EIO, "errno %d", sys);
    cr_assert_eq(dedup_count(index), IDS);
    expect_all_found(index, IDS);

    /* Writes pass again: a later transaction writes the frozen table out. */
    atomic_store(&pwrite_errno, 0);
    for (int i = 0; i < 3000 && dedup_run_count(index) == 0; i++) {
        dedup_txn_begin(index);
        dedup_txn_commit(index);
        if (atomic_load(&index->spill_state) != 0)
            usleep(1000);
    }
    spills_settle(index);
    cr_assert_gt(dedup_run_count(index), 0, "the spill was not tried again");
    expect_all_found(index, IDS);
    dedup_free(index);
    cr_assert_eq(open_fd_count(), fds_before, "a run's file was left open");
}

Test(spill, write_without_space_reported_full)
{
    enum { IDS = 200000 };
    struct dedup_index *index = index_after_failed_writes(IDS, ENOSPC);
    int sys = 0;
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_ERR_FULL);
    cr_assert_eq(sys, ENOSPC, "errno %d", sys);
    expect_all_found(index, IDS);
    dedup_free(index);
}

/*
 * Writes fail only in files larger than 2 MiB, which each run of a 2 MiB
 * table is not: every merge fails part way, and the runs stay unmerged.
 */
Test(spill, failed_merge_write_keeps_runs)
{
    enum { IDS = 600000 };
    int fds_before = open_fd_count();
    atomic_store(&pwrite_fail_above, 2 << 20);
    atomic_store(&pwrite_errno, EIO);
    struct dedup_index *index = index_after_failed_merges(IDS, EIO);
    expect_all_found(index, IDS);
    dedup_free(index);
    cr_assert_eq(open_fd_count(), fds_before, "a run's file was left open");
}

/*
 * Ids whose fingerprints do not start with the bits 011. An eighth of the
 * tags is missing, so a run of more than about 200,000 of them has a gap
 * of empty slots longer than the writer's buffer of 32,768 slots. The other
 * tags are 8/7 as dense as uniform ones, which the room past a run's last
 * home still takes. Fills `fingerprints` and returns the number of ids of
 * spread() that it went through.
 */
static uint64_t gapped_fingerprints(uint64_t *fingerprints, size_t count)
{
    uint64_t i = 0;
    for (size_t filled = 0; filled < count; i++) {
        if (spread(i) >> 61 != 3)
            fingerprints[filled++] = spread(i);
    }
    return i;
}

/* Runs with a long gap, written 1,000 bytes at a time, which splits slots across writes. */
Test(spill, runs_with_gaps_short_writes)
{
    enum { IDS = 900000 };
    static uint64_t fingerprints[IDS];
    uint64_t spread_end = gapped_fingerprints(fingerprints, IDS);
    atomic_store(&pwrite_max_bytes, 1000);
    struct dedup_index *index = spilling_index(4 * MEMORY_MAX);
    for (uint64_t i = 0; i < IDS; i += 1000) {
        dedup_txn_begin(index);
        for (uint64_t k = i; k < i + 1000; k++)
            cr_assert_eq(add(index, fingerprints[k], k + 1, 1), HM_OK, "id %llu",
                         (unsigned long long)k);
        dedup_txn_commit(index);
    }
    spills_settle(index);
    cr_assert_gt(atomic_load(&pwrite_calls), 0, "the runs were not written through pwrite");
    int sys = 0;
    cr_assert_eq(dedup_spill_failure(index, &sys), HM_OK, "errno %d", sys);
    cr_assert_eq(dedup_merge_failure(index, &sys), HM_OK, "errno %d", sys);
    cr_assert_geq(index->spills, 2, "%llu spills", (unsigned long long)index->spills);
    /* Each spill writes more than 200,000 ids, so every run has a gap longer than the buffer. */
    size_t slots = dedup_disk_bytes(index) / 12;
    cr_assert_gt(slots / dedup_run_count(index), 8 * 32768, "%zu slots in %zu runs", slots,
                 dedup_run_count(index));
    cr_assert_eq(dedup_count(index), IDS);
    /* Of the ids never added, an eighth have their homes in the gap. */
    expect_found(index, fingerprints, IDS, spread_end, 200000);
    dedup_free(index);
}
