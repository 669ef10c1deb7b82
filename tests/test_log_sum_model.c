/*
 * A randomized check of the rollup log's folds against the stored events.
 * From a fixed seed, a fixed number of steps commit, abort or fail
 * transactions of new, resent and conflicting events. Events go through
 * ledger_append, or through ledger_append_record and ledger_rollups_apply as
 * meterd stores them. Some transactions log more than one record. Other
 * steps fold or rebuild in this process, write or fold in another process,
 * or reopen the ledger. After each fold of this process, each step of the
 * other process and every 64 steps, ledger_verify must find every tenant's
 * rollups equal to its stored events.
 *
 * A failed commit is made by this file's mdb_txn_commit, which replaces
 * LMDB's and fails the call that commit_fail_countdown names, as a failed
 * disk write would: the transaction is aborted and EIO returned. It can be
 * the nested transaction of a fold or the commit itself.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "ingest/wire.h"
#include "rollup/deltas.h"
#include "rollup/ledger.h"

#include "ledger_fixture.h"

static void setup(void) { ledger_fixture_open("logsum"); }

TestSuite(log_sum_model, .init = setup, .fini = ledger_fixture_remove);

/* The call to mdb_txn_commit, counted from 1, that fails, or 0 for none. */
static int commit_fail_countdown;

int mdb_txn_commit(MDB_txn *txn)
{
    static int (*real_commit)(MDB_txn *);
    if (real_commit == NULL)
        real_commit = (int (*)(MDB_txn *))dlsym(RTLD_NEXT, "mdb_txn_commit");
    if (commit_fail_countdown > 0 && --commit_fail_countdown == 0) {
        mdb_txn_abort(txn);
        return EIO;
    }
    return real_commit(txn);
}

#define TENANTS 3
#define MODELS 3
#define STORED_MAX 200000

static uint64_t rng_state;

static uint64_t next_random(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint32_t below(uint32_t bound)
{
    return (uint32_t)(next_random() % bound);
}

static uint8_t tenants[TENANTS][UUID_SIZE];
static const uint32_t periods[2] = { 202406, 202407 };

/* The events this process tried to store, to be resent as duplicates or conflicts. */
static struct event *sent;
static size_t sent_count;
static uint32_t next_id = 1;

static struct event make_event(uint32_t tenant, uint32_t id, uint32_t period_index,
                               uint32_t model, uint64_t tokens)
{
    struct event event = { .kind = EVENT_INFERENCE };
    event.timestamp_us = JUNE_10_US + (int64_t)period_index * 30 * 86400 * INT64_C(1000000);
    memcpy(event.tenant_id, tenants[tenant], UUID_SIZE);
    memset(event.event_id, 0x3c, UUID_SIZE);
    memcpy(event.event_id, &id, sizeof id);
    snprintf(event.u.inference.model, sizeof event.u.inference.model, "m-%u", model);
    event.u.inference.input_tokens = tokens;
    event.u.inference.output_tokens = 1;
    return event;
}

/* A new event, a resent one or a conflicting one, with small tokens so that records repeat. */
static struct event pick_event(uint64_t token_base)
{
    uint32_t roll = below(100);
    if (sent_count > 0 && roll < 10)
        return sent[below((uint32_t)sent_count)];
    if (sent_count > 0 && roll < 13) {
        struct event event = sent[below((uint32_t)sent_count)];
        event.u.inference.input_tokens += 1;
        return event;
    }
    struct event event = make_event(below(TENANTS), next_id++, below(2), below(MODELS),
                                    token_base + below(3));
    if (sent_count < STORED_MAX)
        sent[sent_count++] = event;
    return event;
}

static int append_event(struct ledger_txn *txn, const struct event *event)
{
    uint8_t record[RECORD_SIZE_MAX];
    int size = record_encode(event, record);
    cr_assert_gt(size, 0);
    return ledger_append(txn, event, record, (size_t)size);
}

/* Appends `count` events through ledger_append. */
static void append_events(struct ledger_txn *txn, uint32_t count, uint64_t token_base)
{
    for (uint32_t i = 0; i < count; i++) {
        struct event event = pick_event(token_base);
        int outcome = append_event(txn, &event);
        cr_assert_geq(outcome, 0, "append failed: %d", outcome);
    }
}

/* Appends `count` events as meterd stores them: records, then the batch's changes. */
static void append_records(struct ledger_txn *txn, uint32_t count)
{
    struct rollup_deltas *batch, *not_stored;
    cr_assert_eq(rollup_deltas_create(&batch, 64), HM_OK);
    cr_assert_eq(rollup_deltas_create(&not_stored, 64), HM_OK);
    for (uint32_t i = 0; i < count; i++) {
        struct event event = pick_event(0);
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        cr_assert_eq(rollup_deltas_add_event(batch, &event), HM_OK);
        int outcome = ledger_append_record(txn, event.tenant_id, record, (size_t)size);
        cr_assert_geq(outcome, 0, "append failed: %d", outcome);
        if (outcome != APPEND_STORED)
            cr_assert_eq(rollup_deltas_add_event(not_stored, &event), HM_OK);
    }
    cr_assert_eq(ledger_rollups_apply(txn, batch, 0), HM_OK);
    cr_assert_eq(ledger_rollups_apply(txn, not_stored, 1), HM_OK);
    rollup_deltas_free(batch);
    rollup_deltas_free(not_stored);
}

/* Appends events of more distinct models than a transaction sums in memory. */
static void append_wide(struct ledger_txn *txn)
{
    uint32_t tenant = below(TENANTS), period = below(2);
    for (uint32_t i = 0; i < 2100 + below(300); i++) {
        struct event event = make_event(tenant, next_id++, period, 1000 + i, 1 + below(2));
        int outcome = append_event(txn, &event);
        cr_assert_geq(outcome, 0, "append failed: %d", outcome);
    }
}

static void verify_all(uint32_t step, const char *operation)
{
    for (uint32_t t = 0; t < TENANTS; t++)
        for (uint32_t p = 0; p < 2; p++)
            cr_assert_eq(ledger_verify(ledger, tenants[t], periods[p]), HM_OK,
                         "step %u (%s): tenant %u period %u differs from its events", step,
                         operation, t, periods[p]);
}

/*
 * The other process's work: a fold or a rebuild at times, then up to five
 * commits of one event each. It draws from its own seed, and its ids are
 * above those of this process.
 */
static uint64_t child_seed;
static int child_tokens_distinct;

static int other_process_work(struct ledger *other)
{
    commit_fail_countdown = 0;
    rng_state = child_seed;
    uint32_t roll = below(100);
    int rc = HM_OK;
    if (roll < 5)
        rc = ledger_rollups_fold(other);
    else if (roll < 6) {
        uint64_t events = 0;
        size_t rows = 0;
        rc = ledger_rollups_rebuild(other, &events, &rows);
    }
    uint32_t commits = below(6);
    for (uint32_t i = 0; rc == HM_OK && i < commits; i++) {
        uint32_t id = 0x80000000u + (uint32_t)(next_random() % 0x7fffffffu);
        struct event event = make_event(below(TENANTS), id, below(2), below(MODELS),
                                        child_tokens_distinct ? 1000 + below(3) : below(3));
        int outcome = store_one(other, &event);
        if (outcome < 0)
            return outcome;
    }
    return rc;
}

/* Runs other_process_work in another process, from a seed drawn here. */
static void other_process_run(void)
{
    child_seed = next_random() | 1;
    in_other_process(other_process_work);
}

static uint64_t folds_total(void)
{
    uint64_t summed = 0, read = 0;
    ledger_fold_counts(ledger, &summed, &read);
    return summed + read;
}

static void run_model(uint64_t seed, uint32_t steps, int tokens_distinct)
{
    /* MODEL_SEED and MODEL_STEPS replace the test's seed and number of steps. */
    const char *seed_text = getenv("MODEL_SEED"), *steps_text = getenv("MODEL_STEPS");
    char *end = NULL;
    if (seed_text != NULL) {
        seed = strtoull(seed_text, &end, 0) | 1;
        cr_assert(end != seed_text && *end == '\0',
                  "MODEL_SEED=%s is not a number; give one such as 12345 or 0x3039", seed_text);
    }
    if (steps_text != NULL) {
        unsigned long parsed = strtoul(steps_text, &end, 10);
        cr_assert(end != steps_text && *end == '\0' && parsed >= 1 && parsed <= 10000000,
                  "MODEL_STEPS=%s is invalid; give a number of steps from 1 to 10000000",
                  steps_text);
        steps = (uint32_t)parsed;
    }
    rng_state = seed;
    child_tokens_distinct = tokens_distinct;
    sent = calloc(STORED_MAX, sizeof *sent);
    cr_assert_not_null(sent);
    for (uint32_t t = 0; t < TENANTS; t++) {
        memset(tenants[t], 0x10 * (t + 1), UUID_SIZE);
        tenants[t][0] = (uint8_t)(0xc0 + t);
    }
    uint64_t folds_before = 0, folds_summed = 0, folds_read = 0;
    for (uint32_t step = 0; step < steps; step++) {
        uint32_t roll = below(10000);
        const char *operation;
        struct ledger_txn *txn;
        if (roll < 5600) {
            operation = "commit";
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            append_events(txn, 1 + below(below(4) == 0 ? 40 : 3), 0);
            cr_assert_eq(ledger_commit(txn), HM_OK);
        } else if (roll < 7600) {
            operation = "commit of records";
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            append_records(txn, 1 + below(20));
            cr_assert_eq(ledger_commit(txn), HM_OK);
        } else if (roll < 8200) {
            operation = "abort";
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            append_events(txn, 1 + below(10), 0);
            ledger_abort(txn);
        } else if (roll < 8800) {
            operation = "failed commit";
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            append_events(txn, 1 + below(10), 0);
            /* The first call is a fold's nested commit when the commit folds. */
            commit_fail_countdown = 1 + (int)below(2);
            int rc = ledger_commit(txn);
            if (commit_fail_countdown == 0)
                cr_assert_neq(rc, HM_OK, "step %u: a failed commit returned HM_OK", step);
            else
                cr_assert_eq(rc, HM_OK);
            commit_fail_countdown = 0;
        } else if (roll < 9970) {
            operation = "duplicates only";
            if (sent_count == 0)
                continue;
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            for (uint32_t i = 0; i < 1 + below(5); i++) {
                struct event event = sent[below((uint32_t)sent_count)];
                cr_assert_geq(append_event(txn, &event), 0);
            }
            cr_assert_eq(ledger_commit(txn), HM_OK);
        } else if (roll < 9976) {
            operation = "wide transaction";
            cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
            append_wide(txn);
            append_events(txn, 1 + below(5), 0);
            if (below(3) == 0)
                ledger_abort(txn);
            else
                cr_assert_eq(ledger_commit(txn), HM_OK);
        } else if (roll < 9978) {
            operation = "fold here";
            cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
        } else if (roll < 9979) {
            operation = "rebuild here";
            uint64_t events = 0;
            size_t rows = 0;
            cr_assert_eq(ledger_rollups_rebuild(ledger, &events, &rows), HM_OK);
        } else if (roll < 9995) {
            operation = "other process";
            other_process_run();
            verify_all(step, operation);
        } else {
            operation = "reopen";
            uint64_t summed = 0, read = 0;
            ledger_fold_counts(ledger, &summed, &read);
            folds_summed += summed;
            folds_read += read;
            ledger_close(ledger);
            cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
            folds_before = 0;
        }
        uint64_t folds = folds_total();
        if (folds != folds_before || step % 64 == 0)
            verify_all(step, operation);
        folds_before = folds;
    }
    verify_all(steps, "end");
    cr_assert_eq(ledger_rollups_fold(ledger), HM_OK);
    verify_all(steps, "final fold");
    uint64_t summed = 0, read = 0;
    ledger_fold_counts(ledger, &summed, &read);
    folds_summed += summed;
    folds_read += read;
    cr_log_info("seed %llu: %u steps, %llu folds from the sum, %llu read",
                (unsigned long long)seed, steps, (unsigned long long)folds_summed,
                (unsigned long long)folds_read);
    /* Both kinds of fold must have run, or the check proved less than it claims. */
    if (steps >= 6000) {
        cr_expect_gt(folds_summed, 0, "no fold from the writer's sum");
        cr_expect_gt(folds_read, 0, "no fold read the log");
    }
    free(sent);
    sent = NULL;
    sent_count = 0;
}

Test(log_sum_model, other_writer_distinct_tokens, .timeout = 300)
{
    run_model(0x9e3779b97f4a7c15u, 6000, 1);
}

Test(log_sum_model, other_writer_same_tokens, .timeout = 300)
{
    run_model(0x2545f4914f6cdd1du, 6000, 0);
}
