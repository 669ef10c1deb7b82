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
 * Builds the usage totals of a tenant's period for rating under `book`: one
 * slice per version of the book in effect during the period (a single slice
 * reads the maintained rollups; several recount the stored events of each
 * slice), plus the tenant's service dates and support tier. Counts the
 * period's events into *event_count_out when that is not NULL. Credits and
 * adjustments are left empty. The caller frees the items with
 * usage_input_free. On error `error` names the tenant and the fix.
 */
int billing_usage_totals(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                         const struct pricebook *book, struct usage_totals *usage,
                         uint64_t *event_count_out, char *error, size_t error_size);

/*
 * The same as billing_usage_totals with the tenant's settings given, for a
 * rating with the settings a period was billed with rather than the current
 * ones. The service start is tenant->service_start_s.
 */
int billing_usage_totals_with(struct ledger *ledger, const struct tenant *tenant,
                              const struct tenant_settings *settings, uint32_t period,
                              const struct pricebook *book, struct usage_totals *usage,
                              uint64_t *event_count_out, char *error, size_t error_size);

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
 * Rates a tenant's draft like billing_draft, without its credit grants, so
 * that a problem with a grant cannot stop a comparison of usage charges.
 */
int billing_draft_without_credits(struct ledger *ledger, const struct tenant *tenant,
                                  uint32_t period, struct invoice *invoice, char *error,
                                  size_t error_size);

/*
 * Returns what an invoice charges for its own period's usage: subtotal minus
 * discounts, without the adjustment lines of earlier periods, before credits.
 */
int64_t billing_usage_net_minor(const struct invoice *invoice);

/*
 * Returns what a finalized period has billed for its own usage: the net at
 * its close (without adjustments of earlier periods) plus every late usage
 * change billed since (adjustment lines on later invoices, late usage credit
 * notes). Manual credit notes are not usage changes and stay out.
 */
int64_t billing_billed_usage_minor(const struct billed_period *billed);

/*
 * Closes a period for every tenant that has not closed it: rates all of
 * them first, then stores the sealed invoices and closes the period for
 * every tenant that rated cleanly, in one transaction. Then, when
 * `invoices_dir` is not NULL, writes the files of billing_files_write and
 * prints a summary table to `out`. A period in which no tenant was in
 * service or used anything closes nothing, and the summary reports that.
 * A tenant that cannot be rated (a missing price, an overflow) stays open
 * and makes the result HM_ERR_INVALID, so that one tenant's usage never
 * holds back the others. Files that cannot be written after the commit make
 * it HM_ERR_IO (the ledger stays the record; a rerun writes them). A
 * failed read of whether a tenant's period is closed, or of the invoice a
 * reopened period replaces, stops the close with that error and stores
 * nothing. Errors are printed to stderr.
 */
int billing_close(struct ledger *ledger, uint32_t period, const char *invoices_dir, FILE *out);

/*
 * Writes the files of the documents from the ledger, which stays the record:
 * every invoice and credit note by number as
 * `invoices_dir`/documents/NUMBER.json (a void invoice keeps its number, so
 * the file of each revision stays), and when period is not 0 each tenant's
 * current invoice of the period as `invoices_dir`/YYYY-MM/<tenant name>.json.
 * Files are mode 0600 and replaced atomically (a temporary file of their own,
 * then a rename), only when they differ, so concurrent writers do not clash.
 * Failures are reported on stderr and return HM_ERR_IO.
 */
int billing_files_write(struct ledger *ledger, uint32_t period, const char *invoices_dir);

/*
 * Prints a stored document as a readable table: an invoice (draft,
 * finalized or void) or a credit note.
 */
int billing_invoice_print(const char *invoice_json, FILE *out);

/*
 * Checks that a period may be closed at now_s: it has ended, and the close
 * grace window (setting "close-grace-hours", default 0) after its end has
 * passed. Returns HM_OK, or HM_ERR_STATE with the time it can be closed and
 * the reason in `error`.
 */
int billing_close_allowed(struct ledger *ledger, uint32_t period, int64_t now_s, char *error,
                          size_t error_size);

/*
 * Checks that closing `period` keeps invoice numbers in time order: no
 * tenant has an open month before it in which the tenant was in service
 * (from its service start, when it has one) or has events. Returns HM_OK,
 * or HM_ERR_STATE with the fix in `error`: the count of such months, the
 * first ten by tenant, the oldest, and never a cut sentence (fewer months
 * are named when error_size is small). A failed read of the ledger returns
 * its error, and `error` names the tenant and month being read, if any.
 */
int billing_close_order_check(struct ledger *ledger, uint32_t period, char *error,
                              size_t error_size);

#define BILLING_GRACE_SETTING "close-grace-hours"
/* Upper bound of the grace window: a quarter of a year. */
#define BILLING_GRACE_HOURS_MAX 2208

/*
 * Adds a SHA-256 seal to a document: the hash of its canonical JSON
 * (sorted keys, no whitespace) without the "sha256" member, which it
 * replaces. Returns HM_OK or HM_ERR_NOMEM.
 */
int billing_document_seal(json_t *document);

/*
 * Late usage of an earlier finalized period: its events changed after it
 * was billed, and re-rating it with the price book snapshot it was billed
 * with gives another net amount.
 */
struct billing_late {
    uint32_t period;
    char number[DOCUMENT_NUMBER_MAX]; /* the period's invoice */
    char issuer[ISSUER_NAME_MAX + 1];
    uint64_t events_billed;
    uint64_t events_now;
    int64_t difference_minor; /* > 0 billed on the next invoice, < 0 a credit note, or 0 */
    const struct money_currency *currency;
    char usage_sha256[BOOK_SHA256_HEX_SIZE]; /* the digest of the usage re-rated */
    int has_storage; /* 1 when the usage re-rated has storage */
};

/*
 * Computes the SHA-256 (64 hex digits) of a rating's usage input: the meter,
 * dimension, slice start and quantity of every item, in item order. Storage
 * is an item, so a storage level that an earlier month's late sample carries
 * into a period changes its digest. HM_ERR_NOMEM when hashing fails.
 */
int billing_usage_digest(const struct usage_totals *usage, char hex_out[BOOK_SHA256_HEX_SIZE]);

/*
 * Finds the finalized periods of a tenant before `before_period` (all when
 * 0) whose billed input changed: the digest of their usage (records that
 * keep one), their event count, or a void that marked them for a new
 * comparison. Each such period is re-rated with the book snapshot and
 * settings it was billed with. Periods billed before book snapshots existed
 * are skipped. *late_out is allocated (free()). Errors name the period and
 * the fix in `error`.
 */
int billing_late_usage(struct ledger *ledger, const struct tenant *tenant, uint32_t before_period,
                       struct billing_late **late_out, size_t *count_out, char *error,
                       size_t error_size);

/* Bytes of a free text on a document or record: a void or credit note reason, a grant note. */
#define BILLING_TEXT_MAX CREDIT_NOTE_MAX

/*
 * Checks a free text that goes into a sealed document or a record: at most
 * max_bytes, valid UTF-8, and no control character (U+0000 to U+001F, U+007F
 * to U+009F). Then any JSON writer reproduces the seal, with the escapes
 * \" and \\ only. Returns HM_OK, or HM_ERR_INVALID with `what` (such as
 * "--reason"), the offending byte and the fix in `error`.
 */
int billing_text_check(const char *what, const char *text, size_t max_bytes, char *error,
                       size_t error_size);

/*
 * Copies stored text for a terminal: control characters and bidirectional
 * controls become \uXXXX and bytes that are not UTF-8 \xNN, so that text
 * stored before billing_text_check existed cannot forge output. Cuts the
 * text where `out` is full.
 */
void billing_text_printable(const char *text, char *out, size_t size);

/*
 * Voids a finalized invoice: re-seals it with status "void", voided_at and
 * the reason, gives the credits it took back to their grants, drops what it
 * billed for earlier periods and reopens its period, all in one
 * transaction. Its credit notes are voided with it: a late usage credit
 * note always (the next revision rates the late usage again), a manual one
 * only when with_credit_notes is 1. Their numbers go to voided_notes
 * (comma separated, cut at notes_size). Returns HM_ERR_NOT_FOUND,
 * HM_ERR_INVALID (a credit note, or an invalid reason) or HM_ERR_STATE
 * (already void, late usage billed on a later invoice that must be voided
 * first, or manual credit notes without with_credit_notes) with the reason
 * and the fix in `error`.
 */
int billing_void(struct ledger *ledger, const char *number, const char *reason,
                 int with_credit_notes, int64_t now_s, char *voided_notes, size_t notes_size,
                 char *error, size_t error_size);

/*
 * Issues a credit note of `amount_text` (a decimal in the invoice currency,
 * exact to its minor unit, > 0) against a finalized invoice, numbered in the
 * invoice's issuer. The credit notes of an invoice never total more than
 * its total. The reason must pass billing_text_check. The new number goes
 * to number_out (DOCUMENT_NUMBER_MAX bytes).
 */
int billing_credit_note(struct ledger *ledger, const char *number, const char *amount_text,
                        const char *reason, int64_t now_s, char *number_out, char *error,
                        size_t error_size);

/*
 * Parses a decimal amount that must be exact in the currency's minor unit
 * and > 0 ("12.5" USD is 1250; "1,00" and "0.001" USD are errors).
 */
int billing_amount_parse(const char *text, const struct money_currency *currency,
                         int64_t *minor_out, char *error, size_t error_size);

#endif
