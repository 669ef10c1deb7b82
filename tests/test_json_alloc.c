/*
 * Records built as JSON when an allocation fails part way. jansson's
 * allocator is replaced by one that fails the Nth allocation, for every N
 * until the build needs no more. Each attempt must either fail with
 * HM_ERR_NOMEM and store nothing, or succeed with every member: a billed
 * period read back equal, a sealed document with the seal of its whole
 * text. jansson's json_dumps can leave a key out after a failed allocation
 * and still return text, which these tests caught.
 */
#include <jansson.h>

#include "engine/lib/billing.h"
#include "rollup/json_build.h"
#include "ledger_fixture.h"

static void setup(void) { ledger_fixture_open("json-alloc"); }

TestSuite(json_alloc, .init = setup, .fini = ledger_fixture_remove);

/* Allocations left before the one that fails; below 0, none fails. */
static long allocations_left = -1;

static void *failing_malloc(size_t size)
{
    if (allocations_left == 0) {
        allocations_left = -1;
        json_alloc_failure_note();
        return NULL;
    }
    if (allocations_left > 0)
        allocations_left--;
    return malloc(size);
}

/* Arms the failure of allocation number `after` (from 0) of jansson. */
static void failure_arm(long after)
{
    allocations_left = after;
    json_set_alloc_funcs(failing_malloc, free);
}

/* The allocator that rollup/json_build.c installs, for the time between two failures. */
static void *tracked_malloc(size_t size)
{
    void *memory = malloc(size);
    if (memory == NULL)
        json_alloc_failure_note();
    return memory;
}

/* Returns 1 when the armed failure did not happen, that is, the call needed fewer allocations. */
static int failure_disarm(void)
{
    int unused = allocations_left >= 0;
    allocations_left = -1;
    json_set_alloc_funcs(tracked_malloc, free);
    return unused;
}

static void billed_fill(struct billed_period *billed, struct billed_change *changes)
{
    memset(billed, 0, sizeof *billed);
    billed->period = 202406;
    snprintf(billed->number, sizeof billed->number, "INV-2024-06-0001");
    snprintf(billed->issuer, sizeof billed->issuer, "default");
    snprintf(billed->currency, sizeof billed->currency, "USD");
    snprintf(billed->book_sha256, sizeof billed->book_sha256, "%064d", 7);
    billed->events = 1234;
    billed->net_minor = 5000;
    billed->total_minor = 4500;
    billed->has_billed_with = 1;
    snprintf(billed->support_tier, sizeof billed->support_tier, "gold");
    billed->service_start_s = 1717200000;
    billed->has_meter_events = 1;
    for (size_t i = 0; i <= ROLLUP_EVENTS; i++)
        billed->meter_events[i] = 10 + i;
    snprintf(billed->usage_sha256, sizeof billed->usage_sha256, "%064d", 9);
    for (int i = 0; i < 3; i++) {
        snprintf(changes[i].number, sizeof changes[i].number, "CN-2024-06-000%d", i + 1);
        changes[i].amount_minor = -100 * (i + 1);
        changes[i].events_after = 1234 + (uint64_t)i;
    }
    billed->changes = changes;
    billed->change_count = 3;
}

/* Reads the billed period back and checks every member that billed_fill set. */
static void billed_check(const struct billed_period *billed, long after)
{
    struct billed_period stored;
    cr_assert_eq(ledger_billed_get(ledger, tenant_a, 202406, &stored), HM_OK);
    cr_expect_str_eq(stored.number, billed->number, "allocation %ld", after);
    cr_expect_str_eq(stored.usage_sha256, billed->usage_sha256, "allocation %ld", after);
    cr_expect_eq(stored.has_billed_with, 1, "allocation %ld", after);
    cr_expect_str_eq(stored.support_tier, "gold", "allocation %ld", after);
    cr_expect_eq(stored.has_meter_events, 1, "allocation %ld", after);
    cr_expect_eq(stored.meter_events[ROLLUP_EVENTS], 10 + ROLLUP_EVENTS, "allocation %ld", after);
    cr_assert_eq(stored.change_count, 3, "allocation %ld", after);
    cr_expect_str_eq(stored.changes[2].number, "CN-2024-06-0003", "allocation %ld", after);
    cr_expect_eq(stored.changes[2].amount_minor, -300, "allocation %ld", after);
    ledger_billed_free(&stored);
}

/*
 * jansson recovers from some failed allocations by itself, so a success
 * after a failed allocation is checked like any other, and the loop ends
 * once a put needed fewer allocations than the one set to fail.
 */
Test(json_alloc, billed_period_whole_or_not_stored)
{
    struct billed_change changes[3];
    struct billed_period billed;
    billed_fill(&billed, changes);
    int failures = 0, done = 0;
    for (long after = 0; after < 1000 && !done; after++) {
        struct ledger_txn *txn;
        cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
        failure_arm(after);
        int rc = ledger_billed_put(txn, tenant_a, &billed);
        done = failure_disarm();
        if (rc == HM_ERR_NOMEM) {
            ledger_abort(txn);
            struct billed_period stored;
            cr_assert_eq(ledger_billed_get(ledger, tenant_a, 202406, &stored), HM_ERR_NOT_FOUND,
                         "a failed build stored a billed period (allocation %ld)", after);
            failures++;
            continue;
        }
        cr_assert_eq(rc, HM_OK, "allocation %ld: %d", after, rc);
        cr_assert_eq(ledger_commit(txn), HM_OK);
        billed_check(&billed, after);
        cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
        cr_assert_eq(ledger_billed_delete(txn, tenant_a, 202406), HM_OK);
        cr_assert_eq(ledger_commit(txn), HM_OK);
    }
    cr_assert(done, "the put never succeeded");
    cr_assert_gt(failures, 5, "only %d allocations could fail", failures);
}

Test(json_alloc, document_sealed_or_error)
{
    json_t *reference = json_pack("{s:s, s:i, s:[i, i]}", "number", "INV-1", "revision", 2,
                                  "lines", 1, 2);
    cr_assert_eq(billing_document_seal(reference), HM_OK);
    const char *expected = json_string_value(json_object_get(reference, "sha256"));
    cr_assert_not_null(expected);
    int failures = 0, done = 0;
    for (long after = 0; after < 1000 && !done; after++) {
        json_t *document = json_pack("{s:s, s:i, s:[i, i]}", "number", "INV-1", "revision", 2,
                                     "lines", 1, 2);
        cr_assert_not_null(document);
        failure_arm(after);
        int rc = billing_document_seal(document);
        done = failure_disarm();
        if (rc == HM_ERR_NOMEM) {
            json_decref(document);
            failures++;
            continue;
        }
        cr_assert_eq(rc, HM_OK);
        const char *seal = json_string_value(json_object_get(document, "sha256"));
        cr_assert_not_null(seal, "a sealed document has no seal (allocation %ld)", after);
        cr_expect_str_eq(seal, expected, "allocation %ld", after);
        json_decref(document);
    }
    json_decref(reference);
    cr_assert(done, "the seal never succeeded");
    cr_assert_gt(failures, 0);
}

/*
 * The other tests replace jansson's allocator, so they pass without the one
 * that rollup/json_build.c installs before main. Without it, json_dumps_whole
 * would miss the failures of the real malloc.
 */
Test(json_alloc, tracked_allocator_installed)
{
    json_malloc_t malloc_function = NULL;
    json_free_t free_function = NULL;
    json_get_alloc_funcs(&malloc_function, &free_function);
    cr_assert_not_null(malloc_function);
    cr_assert(malloc_function != malloc, "jansson allocates with malloc, untracked");
    cr_assert(free_function == free);
}
