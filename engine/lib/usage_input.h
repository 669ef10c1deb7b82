/*
 * Usage input of rating: a tenant's period as usage items, one per meter,
 * dimension and slice. A slice is the part of the period under one price
 * book version; the caller gets the slice starts from the price book.
 */
#ifndef HM_ENGINE_USAGE_INPUT_H
#define HM_ENGINE_USAGE_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include "pricing/usage.h"
#include "rollup/ledger.h"

/* Slices per period: a price book has at most 64 versions, so at most 64 start inside a period. */
#define USAGE_INPUT_SLICES_MAX 64

/*
 * Builds the usage totals of a tenant's period for rating.
 *
 * slice_starts lists the slice starts in Unix seconds, strictly ascending:
 * the first is the period's start and every other lies strictly inside the
 * period. With one slice the items come from the maintained rollups of the
 * month, with no event scan. With several, each slice is recounted from the
 * stored events with ledger_usage_range over [its start, the next start or
 * the period's end), and each item's start_s is its slice's start. Items are
 * sorted by meter, then dimension (byte order), then slice.
 *
 * *event_count_out (when not NULL) receives the period's events of every
 * kind, billed or not. The tenant fields of *usage (id, name, period
 * bounds, service start) are filled; credits and adjustments are left
 * empty. usage->items is allocated and freed with usage_input_free.
 *
 * Returns HM_OK, or HM_ERR_INVALID when the slice starts break the rules
 * above or a billed dimension exceeds USAGE_DIMENSION_MAX (error names the
 * value and the fix), HM_ERR_STORAGE, HM_ERR_NOMEM. On error *usage holds
 * nothing to free.
 */
int usage_input_build(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                      const int64_t *slice_starts, size_t slice_count, struct usage_totals *usage,
                      uint64_t *event_count_out, char *error, size_t error_size);

/* Frees the items of usage totals from usage_input_build and empties them. */
void usage_input_free(struct usage_totals *usage);

#endif
