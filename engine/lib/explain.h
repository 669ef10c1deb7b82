/*
 * Re-rating and invoice explanation for billing staff: what a period would
 * cost under another price book, and which rollups, prices and seconds of
 * service are behind each line of an invoice. Both only read the ledger.
 */
#ifndef HM_ENGINE_EXPLAIN_H
#define HM_ENGINE_EXPLAIN_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "rollup/ledger.h"

/*
 * Runs `meterctl rerate --period YYYY-MM --book FILE [--tenant TENANT]`;
 * argv[0] is "rerate". Prices the period of every tenant (or of one) under
 * the book FILE and prints per tenant the current total, the re-rated total
 * and their difference, then a total row. The current total of a finalized
 * period is what it billed for its own usage: the sealed net without
 * adjustment lines plus the late usage billed since, as in
 * billing_billed_usage_minor. The current total of an open period is the
 * draft's, rated without credits. A tenant that
 * would get no invoice at close (service after the period, no usage) is
 * left out. Errors go to stderr: every error of an invalid book with its
 * JSON path, and per tenant a currency other than the book's or a failed
 * rating. Writes nothing to the ledger.
 * Returns the exit status: 0, or 1 after any error.
 */
int explain_rerate_command(struct ledger *ledger, int argc, char **argv, FILE *out);

/*
 * Runs `meterctl invoice explain TENANT --period YYYY-MM [--line N] [--json]`;
 * argv[0] is "invoice" and argv[1] "explain". Explains each line (or line
 * N, 1-based) of the tenant's finalized invoice, else of its draft; see
 * explain_invoice_build for what a line's explanation holds. Prints a table,
 * or with --json the explanation as one JSON object.
 * Returns the exit status: 0, or 1 after an error printed to stderr.
 */
int explain_invoice_command(struct ledger *ledger, int argc, char **argv, FILE *out);

/*
 * Builds the explanation of an invoice (JSON text as stored at close, or as
 * invoice_to_json makes a draft) of a tenant's period from the ledger as it
 * is now. The slices and discounts come from the invoice's price book: the
 * snapshot its price_book_sha256 names, else (a draft, or an invoice sealed
 * before snapshots) the tenant's book now. Per line:
 * - usage lines: the rollup key (tenant id, period, meter, dimension), the
 *   slice range (pricebook_slices) when the period has several slices, and
 *   the quantity and event count of the stored events behind it now,
 *   recounted per slice when sliced. A sealed invoice also gets the quantity
 *   and events at close (the sealed line) and, when more events came, the
 *   late events and the documents that billed them, or that they are pending;
 * - base and support fees: the price and the seconds of service in the
 *   period (or slice) out of the period's seconds;
 * - discounts: the discount of that name in the version of the last slice,
 *   its mode and tiers, the lines of its applies_to kinds, their sum, and its
 *   driver's quantity over the whole period;
 * - adjustments: the earlier period and its events that arrived after its
 *   close;
 * - commitment true-up: the usage after discounts and the minimum.
 * Then, per metered quantity, the events of its lines against the period's
 * events of that meter (events_check): for a draft the rollups now, for a
 * sealed invoice the counts kept at its close (null when an invoice closed
 * before they were kept has later events). line_number 0 explains every
 * line, N only line N and skips events_check.
 *
 * On success *out is a new JSON object (json_decref). Returns HM_OK, or
 * HM_ERR_INVALID for unparsable invoice JSON, a line_number beyond the
 * lines (error names the count), or a slice_start or discount line that the
 * book does not have. Returns HM_ERR_NOT_FOUND when the tenant has no book,
 * HM_ERR_STORAGE when the snapshot cannot be read, and HM_ERR_NOMEM.
 */
int explain_invoice_build(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                          const char *invoice_json, size_t line_number, json_t **out, char *error,
                          size_t error_size);

#endif
