/*
 * Types and helpers that the Stripe export shares between its invoice steps
 * (export_stripe.c) and its credit note steps (export_stripe_notes.c).
 * Only these two files include it.
 */
#ifndef HM_ENGINE_EXPORT_STRIPE_INTERNAL_H
#define HM_ENGINE_EXPORT_STRIPE_INTERNAL_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "common/uuid.h"
#include "engine/lib/stripe_http.h"
#include "pricing/money.h"
#include "rollup/ledger.h"

#define DESCRIPTION_MAX 200

/* One Stripe invoice item planned from an invoice line, or from the credits applied. */
struct item_plan {
    char kind[32];
    char description[DESCRIPTION_MAX];
    int64_t amount_minor;
    /* Set when quantity x unit price is exactly the amount, so Stripe computes no rounding. */
    int has_decimal;
    char quantity[MONEY_TEXT_SIZE];
    char unit_amount[MONEY_TEXT_SIZE]; /* minor units per unit of quantity */
};

/* A finalized or void invoice with what exporting it takes. */
struct invoice_plan {
    char number[DOCUMENT_NUMBER_MAX];
    json_int_t revision;
    int is_void;
    char tenant_id[UUID_TEXT_SIZE];
    char tenant_name[TENANT_NAME_MAX + 1];
    char period[16];
    char currency_lower[4];
    const struct money_currency *currency;
    int64_t total_minor;
    int64_t period_start_s;
    int64_t period_end_s;
    size_t item_count;
    struct item_plan *items;
};

struct exporter {
    struct ledger *ledger;
    struct stripe_client *client;
    FILE *out;
    const char *tenant_id; /* text; NULL for every tenant */
    size_t invoices, exported, unchanged, voided, failed, different, matching;
    size_t notes, notes_exported, notes_voided, notes_unchanged, notes_waiting;
    size_t void_not_exported; /* --check: void before export, so Stripe has no copy */
    unsigned requests, retries;
};

/* Copies the number of a document for the walk; only invoices and credit notes count. */
struct document_list {
    const char *tenant_id;
    size_t count;
    size_t capacity;
    char (*numbers)[DOCUMENT_NUMBER_MAX];
    json_t **documents;
};

const char *string_of(json_t *object, const char *key);
int64_t minor_of(json_t *object, const char *key);
int is_credit_note(json_t *document);

/* Fills what invoices and credit notes have in common: number, status, tenant and currency. */
int plan_head(const char *number, json_t *document, struct invoice_plan *plan, char *error,
              size_t error_size);
void amount_text(const struct invoice_plan *plan, int64_t minor, char *out, size_t size);

/* Reads the export state of a document, or a new empty state; NULL on a storage error. */
json_t *state_load(struct ledger *ledger, const char *number, int *rc_out);
/* Stores the state in its own synced transaction, unless `failed` is set. */
int state_save(struct ledger *ledger, const char *number, json_t *state, int failed);

/* Sends one request and counts it; the reply's object id must start with id_prefix. */
int send_request(struct exporter *exporter, const char *method, const char *path,
                 const struct stripe_form *form, const char *key, const char *id_prefix,
                 struct stripe_response *response, char *error, size_t error_size);
/* Sends a POST of `form` unless building it failed (form_rc), and frees the form. */
int post_form(struct exporter *exporter, const char *path, struct stripe_form *form, int form_rc,
              const char *key, const char *id_prefix, struct stripe_response *response, char *error,
              size_t error_size);

/*
 * Returns 1 for the currencies in which Stripe takes only amounts that are
 * multiples of 10 minor units (BHD, JOD, KWD, OMR, TND).
 */
int currency_three_decimal(const struct money_currency *currency);

/* Counts and reports a document whose export failed; `type` is "invoice" or "credit_note". */
void export_failed(struct exporter *exporter, const char *type, const char *number, int rc,
                   const char *error);

/* --check: prints and counts one difference of a document. */
void difference(struct exporter *exporter, const char *number, const char *invoice_id,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* --check: reads one object; a failure is reported and counted. */
int check_fetch(struct exporter *exporter, const char *type, const char *number, const char *path,
                struct stripe_response *response);

/* The credit note steps, in export_stripe_notes.c. */
void export_credit_note(struct exporter *exporter, const char *number, json_t *note);
int invoice_void_blocked(struct exporter *exporter, const struct document_list *list,
                         const char *number);
void check_credit_note(struct exporter *exporter, const char *number, json_t *note);

#endif
