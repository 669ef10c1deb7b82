/*
 * Usage of a tenant over any time range, recounted from the stored events.
 * The maintained rollups cover whole calendar months; a range serves the
 * parts of a month that price book versions cut it into (slices).
 */
#ifndef HM_ROLLUP_RANGE_H
#define HM_ROLLUP_RANGE_H

#include <stddef.h>
#include <stdint.h>

#include "rollup/ledger.h"

/*
 * Recounts the rollup rows of a tenant from its stored events whose
 * timestamp lies in [start_us, end_us): the same meters, dimensions,
 * quantities and event counts as ledger_rollups gives for a whole month,
 * ROLLUP_EVENTS per event kind included. Adds one ROLLUP_STORAGE_BYTE_SECONDS
 * row when the time-weighted storage over the range is nonzero. Storage is
 * integrated over whole seconds, [floor(start_us), floor(end_us)) in
 * seconds, as ledger_storage_byte_seconds does.
 *
 * Events and storage samples are read in one read transaction, so the rows
 * are one consistent snapshot. The scan reads every stored event of the
 * tenant (the events table is keyed by tenant and event id, not by time),
 * so its cost grows with the tenant's whole history, not with the range.
 *
 * Rows are in no particular order. *rows_out is allocated (NULL when there
 * are none) and the caller frees it with free(). Returns HM_OK,
 * HM_ERR_INVALID when end_us < start_us, HM_ERR_STORAGE for an LMDB error or
 * a stored event that cannot be decoded (logged), or HM_ERR_NOMEM.
 * Any thread; it opens its own read transaction.
 */
int ledger_usage_range(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], int64_t start_us,
                       int64_t end_us, struct rollup_row **rows_out, size_t *count_out);

#endif
