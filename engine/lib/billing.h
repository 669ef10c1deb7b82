/*
 * Billing: turns a tenant's rollups into usage totals, rates them with the
 * tenant's price book and closes periods into sealed invoices.
 */
#ifndef HM_ENGINE_BILLING_H
#define HM_ENGINE_BILLING_H

#include <stdio.h>

#include "pricing/invoice.h"
#include "rollup/ledger.h"

/*
 * Builds the usage totals of a tenant's period from its rollups, and counts
 * its events into *event_count_out when that is not NULL. The items are
 * allocated; the caller frees usage->items with free().
 */
int billing_usage_totals(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                         struct usage_totals *usage, uint64_t *event_count_out);

/* Counts the events stored for a tenant's period, of every kind. */
int billing_event_count(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                        uint64_t *count_out);

/*
 * Loads the price book that applies to a tenant: its own, else the default.
 * Returns HM_ERR_NOT_FOUND (with the fix in `error`) when neither is loaded.
 */
int billing_pricebook_for(struct ledger *ledger, const struct tenant *tenant,
                          struct pricebook **book_out, char *error, size_t error_size);

/*
 * Rates a tenant's period as it is now (a draft) into *invoice. The
 * caller frees it with invoice_free.
 */
int billing_draft(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                  struct invoice *invoice, uint64_t *event_count_out, char *error,
                  size_t error_size);

/*
 * Closes a period for every tenant that has not closed it: rates all of
 * them first, then stores the sealed invoices and closes the period for
 * every tenant that rated cleanly, in one transaction. Then writes each
 * invoice as JSON to `invoices_dir`/YYYY-MM/<tenant name>.json (when not
 * NULL) and prints a summary table to `out`. A tenant that cannot be rated
 * (a missing price, an overflow) stays open and makes the result
 * HM_ERR_INVALID, so that one tenant's usage never holds back the others.
 * Errors are printed to stderr.
 */
int billing_close(struct ledger *ledger, uint32_t period, const char *invoices_dir, FILE *out);

/* Prints a stored invoice JSON as a readable table. */
int billing_invoice_print(const char *invoice_json, FILE *out);

#endif
