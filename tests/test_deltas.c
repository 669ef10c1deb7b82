/*
 * Summed rollup changes: the per-run path with its cache of slots gives the
 * same table as adding each event alone, a run of two tenants is rejected
 * whole, and a table grows past its first size.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "rollup/deltas.h"
#include "rollup/deltas_private.h"

static const uint8_t tenant_a[UUID_SIZE] = { 0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };
static const uint8_t tenant_b[UUID_SIZE] = { 0xb0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

/* 2023-11-01T00:00:00Z; the events spread over about 200 days from there. */
#define NOVEMBER_1_US (INT64_C(1698796800) * 1000000)

/*
 * A varied event from a number: every kind, four models, several months and
 * days, a third of them in the last microsecond before a midnight, so that
 * some fall on either side of a month's and a year's first instant.
 */
static struct event varied(const uint8_t tenant[UUID_SIZE], uint32_t number)
{
    struct event event = { .timestamp_us = NOVEMBER_1_US +
                                           (int64_t)(number * 7919u % 200) * 86400 * 1000000 -
                                           (number % 3 == 0) };
    memcpy(event.tenant_id, tenant, UUID_SIZE);
    memcpy(event.event_id, &number, sizeof number);
    switch (number % 5) {
    case 0:
    case 1:
        event.kind = EVENT_INFERENCE;
        snprintf(event.u.inference.model, sizeof event.u.inference.model, "model-%u",
                 number % 4);
        event.u.inference.input_tokens = 1000 + number % 97;
        event.u.inference.cached_input_tokens = number % 3 == 0 ? 0 : number % 500;
        event.u.inference.output_tokens = number % 7 == 0 ? 0 : 50 + number % 13;
        break;
    case 2:
        event.kind = EVENT_GPU_ALLOCATION;
        snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "%s",
                 number % 2 ? "H100" : "A100");
        event.u.gpu.duration_s = 60 + number % 600;
        break;
    case 3:
        event.kind = EVENT_STORAGE;
        event.u.storage.bytes_stored = number;
        event.u.storage.bytes_transferred = number % 2 ? 4096 : 0;
        break;
    default:
        event.kind = EVENT_API_CALL;
        snprintf(event.u.api.endpoint, sizeof event.u.api.endpoint, "/v1/chat");
        event.u.api.response_code = 200;
        break;
    }
    return event;
}

/* Finds the delta of a key in a table, or NULL. */
static const struct rollup_delta *delta_find(const struct rollup_deltas *deltas,
                                             const struct rollup_delta *wanted)
{
    for (size_t i = 0; i < deltas->count; i++) {
        const struct rollup_delta *delta = &deltas->slots[deltas->used[i]];
        if (delta->key_size == wanted->key_size &&
            memcmp(delta->key, wanted->key, delta->key_size) == 0)
            return delta;
    }
    return NULL;
}

Test(deltas, runs_equal_single_events)
{
    enum { EVENT_COUNT = 5000, RUN = 256 };
    struct event *events = calloc(EVENT_COUNT, sizeof *events);
    cr_assert_not_null(events);
    for (uint32_t i = 0; i < EVENT_COUNT; i++)
        events[i] = varied(tenant_a, i);

    struct rollup_deltas *single, *runs;
    cr_assert_eq(rollup_deltas_create(&single, 16), HM_OK);
    cr_assert_eq(rollup_deltas_create(&runs, 16), HM_OK);
    for (uint32_t i = 0; i < EVENT_COUNT; i++)
        cr_assert_eq(rollup_deltas_add_event(single, &events[i]), HM_OK);
    for (uint32_t i = 0; i < EVENT_COUNT; i += RUN) {
        size_t count = EVENT_COUNT - i < RUN ? EVENT_COUNT - i : RUN;
        cr_assert_eq(rollup_deltas_add_events(runs, events + i, count), HM_OK);
    }

    cr_assert_gt(rollup_deltas_count(single), 100, "the events should touch many keys");
    cr_assert_eq(rollup_deltas_count(runs), rollup_deltas_count(single));
    for (size_t i = 0; i < single->count; i++) {
        const struct rollup_delta *want = &single->slots[single->used[i]];
        const struct rollup_delta *have = delta_find(runs, want);
        cr_assert_not_null(have, "key %zu of the single-event table is missing", i);
        cr_expect(have->quantity == want->quantity, "key %zu: quantity differs", i);
        cr_expect_eq(have->count, want->count, "key %zu: count differs", i);
    }
    rollup_deltas_free(single);
    rollup_deltas_free(runs);
    free(events);
}

Test(deltas, run_of_two_tenants_rejected_whole)
{
    struct event events[3] = { varied(tenant_a, 0), varied(tenant_a, 1), varied(tenant_b, 2) };
    struct rollup_deltas *deltas;
    cr_assert_eq(rollup_deltas_create(&deltas, 16), HM_OK);
    cr_expect_eq(rollup_deltas_add_events(deltas, events, 3), HM_ERR_INVALID);
    cr_expect_eq(rollup_deltas_count(deltas), 0);
    rollup_deltas_free(deltas);
}

Test(deltas, clear_then_reuse)
{
    struct rollup_deltas *deltas;
    cr_assert_eq(rollup_deltas_create(&deltas, 16), HM_OK);
    struct event event = varied(tenant_a, 0);
    cr_assert_eq(rollup_deltas_add_events(deltas, &event, 1), HM_OK);
    size_t keys = rollup_deltas_count(deltas);
    cr_assert_gt(keys, 0);
    rollup_deltas_clear(deltas);
    cr_expect_eq(rollup_deltas_count(deltas), 0);
    cr_assert_eq(rollup_deltas_add_events(deltas, &event, 1), HM_OK);
    cr_expect_eq(rollup_deltas_count(deltas), keys);
    rollup_deltas_free(deltas);
}

/*
 * Adding a table's counted changes keeps its hashes: the keys land where
 * adding each key whole puts them, so a later change of the same key adds
 * to the same row. Changes of no event are left out, and an overflow is
 * refused.
 */
Test(deltas, counted_changes_added_under_their_keys)
{
    struct rollup_deltas *events, *sum, *by_key;
    cr_assert_eq(rollup_deltas_create(&events, 16), HM_OK);
    cr_assert_eq(rollup_deltas_create(&sum, 16), HM_OK);
    cr_assert_eq(rollup_deltas_create(&by_key, 16), HM_OK);
    for (uint32_t i = 0; i < 300; i++) {
        struct event event = varied(tenant_a, i);
        cr_assert_eq(rollup_deltas_add_events(events, &event, 1), HM_OK);
    }
    /* A key taken away to zero stays in the table with no events. */
    struct rollup_deltas *taken;
    cr_assert_eq(rollup_deltas_create(&taken, 16), HM_OK);
    struct event gone = varied(tenant_b, 7);
    cr_assert_eq(rollup_deltas_add_events(taken, &gone, 1), HM_OK);
    cr_assert_eq(rollup_deltas_merge(events, taken, 0), HM_OK);
    cr_assert_eq(rollup_deltas_merge(events, taken, 1), HM_OK);

    for (int round = 0; round < 2; round++) {
        cr_assert_eq(rollup_deltas_add_counted(sum, events), HM_OK);
        for (size_t i = 0; i < events->count; i++) {
            const struct rollup_delta *delta = &events->slots[events->used[i]];
            if (delta->count > 0)
                cr_assert_eq(rollup_deltas_add_key(by_key, delta->key, delta->key_size,
                                                   delta->quantity, delta->count),
                             HM_OK);
        }
    }
    cr_assert_eq(rollup_deltas_count(sum), rollup_deltas_count(by_key));
    cr_assert_eq(rollup_deltas_count(sum) + rollup_deltas_count(taken),
                 rollup_deltas_count(events));
    for (size_t i = 0; i < by_key->count; i++) {
        const struct rollup_delta *want = &by_key->slots[by_key->used[i]];
        const struct rollup_delta *got = delta_find(sum, want);
        cr_assert_not_null(got);
        cr_assert_eq(got->hash, want->hash);
        cr_assert(got->quantity == want->quantity);
        cr_assert_eq(got->count, want->count);
    }
    for (size_t i = 0; i < taken->count; i++)
        cr_assert_null(delta_find(sum, &taken->slots[taken->used[i]]));

    /* A sum past 2^128 is refused. */
    struct rollup_deltas *huge;
    cr_assert_eq(rollup_deltas_create(&huge, 16), HM_OK);
    const struct rollup_delta *first = &sum->slots[sum->used[0]];
    cr_assert_eq(rollup_deltas_add_key(huge, first->key, first->key_size, ~(unsigned __int128)0,
                                       1),
                 HM_OK);
    cr_assert_eq(rollup_deltas_add_counted(huge, sum), HM_ERR_STORAGE);
    rollup_deltas_free(huge);
    rollup_deltas_free(taken);
    rollup_deltas_free(by_key);
    rollup_deltas_free(sum);
    rollup_deltas_free(events);
}

Test(deltas, hash_resists_chosen_names)
{
    /*
     * Pairs of keys that collide in a multiply-and-shift hash for every
     * seed: flipping the top bit of one word flips two known bits of the
     * state, and the next word flips them back. With both factors of each
     * multiply seeded, no pair may share a hash.
     */
    struct rollup_deltas *deltas = NULL;
    cr_assert_eq(rollup_deltas_create(&deltas, 64), HM_OK);
    uint64_t state = 12345;
    for (int pair = 0; pair < 256; pair++) {
        uint8_t key[48], partner[48];
        for (size_t i = 0; i < sizeof key; i++) {
            state = state * 6364136223846793005u + 1442695040888963407u;
            key[i] = (uint8_t)(state >> 56);
        }
        memcpy(partner, key, sizeof key);
        size_t word = 8 * (size_t)(pair % 4);
        partner[word + 7] ^= 0x80;
        partner[word + 15] ^= 0x80;
        partner[word + 12] ^= 0x04;
        cr_assert_neq(rollup_key_hash(key, sizeof key), rollup_key_hash(partner, sizeof partner),
                      "pair %d", pair);
    }
    rollup_deltas_free(deltas);
}
