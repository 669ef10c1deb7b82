/*
 * Export of finalized invoices to Stripe, and reconciliation.
 *
 * Each finalized invoice becomes one Stripe invoice of the tenant's Stripe
 * customer: a draft invoice (auto_advance false, pending invoice items
 * excluded), one invoice item per line plus one negative item for the
 * prepaid credits applied, then finalization. A void invoice is voided in
 * Stripe. Every POST carries the idempotency key
 * "hm-<number>-r<revision>-<step>" (steps: invoice, item-<index>, finalize,
 * void), and the Stripe ids are stored in the ledger after every step under
 * "stripe/<number>", so that a rerun after a crash resumes where the last
 * stored step ended and a repeated request returns the object Stripe
 * created the first time.
 *
 * Each credit note of an exported invoice becomes one Stripe credit note of
 * that invoice (POST /v1/credit_notes, key "hm-<number>-credit-note"), sent
 * after the invoice is finalized in Stripe. A void credit note is voided in
 * Stripe (key "hm-<number>-void") before its invoice is. The credit note
 * steps are in export_stripe_notes.c.
 */
#ifndef HM_ENGINE_EXPORT_STRIPE_H
#define HM_ENGINE_EXPORT_STRIPE_H

#include <stdio.h>

#include "engine/lib/stripe_http.h"
#include "rollup/ledger.h"

/* Stripe takes at most 250 invoice items per invoice (API reference of POST /v1/invoiceitems). */
#define STRIPE_INVOICE_ITEMS_MAX 250

/*
 * Runs `meterctl export stripe [--api-base URL] [--ca-file FILE]
 * [--tenant TENANT] [--check] [--api-key-file FILE] [--rate N]
 * [--timeout SECONDS] [--max-retries N] [--debug]`; argv[0] is "export"
 * and argv[1] "stripe". The API key comes from --api-key-file (a file of
 * mode 0600 or stricter) or $STRIPE_API_KEY, never from the command line.
 * Without --check, exports every finalized invoice and credit note not yet
 * exported and voids in Stripe every exported one voided since. With
 * --check, reads every exported invoice and credit note back from Stripe and
 * prints each difference in customer, currency, total or amount, status or
 * number.
 * Prints one line per document and a summary to `out`, errors to stderr.
 * Returns the exit status: 0, or 1 after any error or difference.
 */
int export_stripe_command(struct ledger *ledger, int argc, char **argv, FILE *out);

/*
 * Reads a Stripe secret key (sk_...) or restricted key (rk_...) from
 * `path`, or from $STRIPE_API_KEY when path is NULL, into key_out
 * (STRIPE_API_KEY_MAX + 1 bytes). A file that group or others can access
 * is rejected before it is read. Returns HM_OK, HM_ERR_NOT_FOUND (no key
 * given), HM_ERR_IO or HM_ERR_INVALID with the reason and the fix in
 * `error`, which never contains the key.
 */
int export_stripe_key_load(const char *path, char *key_out, char *error, size_t error_size);

#endif
