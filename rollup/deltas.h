/*
 * Rollup changes summed in memory: for each (tenant, period, meter,
 * dimension) the quantity and the event count that a group of events adds.
 * A write transaction applies them to the stored rollups with one read and
 * one write per key, instead of one of each per event and meter.
 *
 * meterd sums the changes of a batch on its ingest loop while the commit
 * thread writes the previous batch; the ledger sums those of ledger_append.
 * A table belongs to one thread at a time.
 */
#ifndef HM_ROLLUP_DELTAS_H
#define HM_ROLLUP_DELTAS_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/event.h"

struct rollup_deltas;

/*
 * Creates an empty table with room for `keys` keys before it grows (at
 * least 64). HM_ERR_NOMEM. Free it with rollup_deltas_free.
 */
int rollup_deltas_create(struct rollup_deltas **out, size_t keys);
void rollup_deltas_free(struct rollup_deltas *deltas);

/* Empties the table, keeping its memory. */
void rollup_deltas_clear(struct rollup_deltas *deltas);

/* Returns the number of keys in the table. */
size_t rollup_deltas_count(const struct rollup_deltas *deltas);

/*
 * Makes room for `keys` more keys, so that the next adds of that many keys
 * cannot fail. HM_ERR_NOMEM leaves the table as it was.
 */
int rollup_deltas_reserve(struct rollup_deltas *deltas, size_t keys);

/*
 * Adds the rollup changes of one event (ledger_event_rollups): at most
 * ROLLUP_CHANGES_MAX keys. HM_ERR_NOMEM when the table had to grow and
 * could not; use rollup_deltas_reserve first where that must not happen.
 */
int rollup_deltas_add_event(struct rollup_deltas *deltas, const struct event *event);

/*
 * Adds the rollup changes of `count` events of one tenant, such as a frame's,
 * with the same result as rollup_deltas_add_event for each, but faster: the
 * keys that the events share are looked up once. Makes room first, so that
 * either every change is added or, on HM_ERR_NOMEM, none. HM_ERR_INVALID
 * when the events belong to more than one tenant (and nothing is added).
 */
int rollup_deltas_add_events(struct rollup_deltas *deltas, const struct event *events,
                             size_t count);

/* Keys that one event changes at most: its event count and three token meters. */
#define ROLLUP_CHANGES_MAX 4

#endif
