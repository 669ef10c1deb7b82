/*
 * Credit notes in the Stripe export: each credit note of an exported
 * invoice becomes a Stripe credit note of that invoice, and a void credit
 * note is voided there. docs/EXPORTS.md, "What one credit note becomes",
 * describes the requests.
 */
#include "engine/lib/export_stripe_internal.h"

#include "common/log.h"
#include "common/status.h"
#include "rollup/json_build.h"

#include <inttypes.h>
#include <string.h>
#include <time.h>

/*
 * A credit note. `document` contains its number, tenant and currency, and
 * its amount as total_minor, with no items.
 */
struct note_plan {
    struct invoice_plan document;
    char invoice_number[DOCUMENT_NUMBER_MAX];
    char kind[16];    /* "manual" or "late_usage" */
    char reason[512]; /* the ledger's text, at most 500 bytes */
};

static int note_plan_build(const char *number, json_t *note, struct note_plan *plan, char *error,
                           size_t error_size)
{
    memset(plan, 0, sizeof *plan);
    int rc = plan_head(number, note, &plan->document, error, error_size);
    if (rc != HM_OK)
        return rc;
    plan->document.total_minor = minor_of(note, "amount");
    snprintf(plan->invoice_number, sizeof plan->invoice_number, "%s",
             string_of(note, "credited_invoice"));
    snprintf(plan->kind, sizeof plan->kind, "%s", string_of(note, "kind"));
    snprintf(plan->reason, sizeof plan->reason, "%s", string_of(note, "reason"));
    if (plan->document.total_minor <= 0 || plan->invoice_number[0] == '\0') {
        snprintf(error, error_size,
                 "credit note %s has %s; it is not exported, check it with "
                 "`meterctl invoice show %s --json`",
                 number,
                 plan->invoice_number[0] ? "an amount that is not positive" : "no credited invoice",
                 number);
        return HM_ERR_INVALID;
    }
    return HM_OK;
}

/*
 * Stripe's reason enum (duplicate, fraudulent, order_change,
 * product_unsatisfactory), or NULL when none fits. A late usage credit note
 * lowers a billed amount after a change of usage, which is an order change.
 * The ledger's free text goes into the memo either way.
 */
static const char *note_stripe_reason(const struct note_plan *plan)
{
    static const char *const reasons[] = {"duplicate", "fraudulent", "order_change",
                                          "product_unsatisfactory"};
    if (strcmp(plan->kind, "late_usage") == 0)
        return "order_change";
    for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++) {
        if (strcmp(plan->reason, reasons[i]) == 0)
            return reasons[i];
    }
    return NULL;
}

static void note_key(const struct note_plan *plan, const char *step, char *out, size_t size)
{
    snprintf(out, size, "hm-%s-%s", plan->document.number, step);
}

/*
 * Fixes the Stripe invoice and the split of the amount before the credit
 * note is sent, so that a retry sends the same parameters. Stripe takes a
 * credit note first from the invoice's amount_remaining. The rest (for a
 * paid invoice, all of it) must be given as refund_amount, credit_amount or
 * out_of_band_amount. It is sent as credit_amount, to the customer's credit
 * balance, which Stripe applies to the customer's next invoices.
 * Returns HM_ERR_NOT_FOUND, with an empty error, when the invoice is not in
 * Stripe yet.
 * NOTE: a payment between this read and the create makes Stripe reject the
 * stored split, and every rerun sends the same split again. Such a credit
 * note has to be issued in the Stripe Dashboard.
 */
static int note_start(struct exporter *exporter, const struct note_plan *plan, json_t *state,
                      char *error, size_t error_size)
{
    int rc = HM_OK;
    json_t *invoice_state = state_load(exporter->ledger, plan->invoice_number, &rc);
    if (invoice_state == NULL)
        return rc;
    const char *invoice_id = string_of(invoice_state, "invoice");
    if (!json_is_true(json_object_get(invoice_state, "finalized")) ||
        json_is_true(json_object_get(invoice_state, "deleted"))) {
        json_decref(invoice_state);
        return HM_ERR_NOT_FOUND;
    }
    if (json_object_get(invoice_state, "voided") != NULL) {
        snprintf(error, error_size,
                 "credit note %s is not exported: its invoice %s is void in "
                 "Stripe (%s), and Stripe issues credit notes for open or paid invoices only; "
                 "issue it by hand if it is still owed",
                 plan->document.number, plan->invoice_number, invoice_id);
        json_decref(invoice_state);
        return HM_ERR_CONFLICT;
    }
    if (currency_three_decimal(plan->document.currency) && plan->document.total_minor % 10 != 0) {
        char amount[MONEY_TEXT_SIZE];
        amount_text(&plan->document, plan->document.total_minor, amount, sizeof amount);
        snprintf(error, error_size,
                 "credit note %s is not exported: Stripe requires %s amounts "
                 "(a three-decimal currency) to be multiples of 10 minor units, with a last "
                 "digit of 0, and it is %s %s; issue it by hand in Stripe",
                 plan->document.number, plan->document.currency->code, amount,
                 plan->document.currency->code);
        json_decref(invoice_state);
        return HM_ERR_INVALID;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/invoices/%s", invoice_id);
    struct stripe_response response;
    rc = send_request(exporter, "GET", path, NULL, NULL, "in_", &response, error, error_size);
    const char *status = rc == HM_OK ? string_of(response.body, "status") : "";
    json_int_t remaining = json_integer_value(json_object_get(response.body, "amount_remaining"));
    if (rc == HM_OK && strcmp(status, "open") != 0 && strcmp(status, "paid") != 0) {
        snprintf(error, error_size,
                 "credit note %s is not exported: its Stripe invoice %s (%s) "
                 "is %s, and Stripe issues credit notes for open or paid invoices only; check "
                 "the invoice in the Stripe Dashboard",
                 plan->document.number, invoice_id, plan->invoice_number,
                 status[0] ? status : "of no status");
        rc = HM_ERR_CONFLICT;
    }
    if (rc == HM_OK) {
        int64_t amount = plan->document.total_minor;
        int64_t before_payment = remaining < amount ? remaining : amount;
        if (before_payment < 0)
            before_payment = 0;
        int failed = 0;
        json_add(state, "invoice", json_string(invoice_id), &failed);
        json_add(state, "credit_amount", json_integer(amount - before_payment), &failed);
        json_add(state, "started_at", json_integer((json_int_t)time(NULL)), &failed);
        rc = state_save(exporter->ledger, plan->document.number, state, failed);
    }
    stripe_response_free(&response);
    json_decref(invoice_state);
    return rc;
}

static int note_form(struct stripe_form *form, const struct note_plan *plan, json_t *state)
{
    char number[32], memo[700];
    snprintf(number, sizeof number, "%" PRId64, plan->document.total_minor);
    snprintf(memo, sizeof memo, "Credit note %s of invoice %s: %s", plan->document.number,
             plan->invoice_number, plan->reason);
    int rc = stripe_form_add(form, "invoice", string_of(state, "invoice"));
    if (rc == HM_OK)
        rc = stripe_form_add(form, "amount", number);
    json_int_t credit = json_integer_value(json_object_get(state, "credit_amount"));
    snprintf(number, sizeof number, "%lld", (long long)credit);
    if (rc == HM_OK && credit > 0)
        rc = stripe_form_add(form, "credit_amount", number);
    const char *reason = note_stripe_reason(plan);
    if (rc == HM_OK && reason != NULL)
        rc = stripe_form_add(form, "reason", reason);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "memo", memo);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[credit_note_number]", plan->document.number);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[invoice_number]", plan->invoice_number);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[tenant_id]", plan->document.tenant_id);
    return rc;
}

/*
 * Sends POST /v1/credit_notes (step "credit-note") or
 * POST /v1/credit_notes/{id}/void (step "void"), then stores the id and
 * Stripe's status in the credit note's state.
 */
static int note_action(struct exporter *exporter, const struct note_plan *plan, const char *step,
                       json_t *state, char *error, size_t error_size)
{
    int create = strcmp(step, "credit-note") == 0;
    char path[256], key[128];
    if (create)
        snprintf(path, sizeof path, "/v1/credit_notes");
    else
        snprintf(path, sizeof path, "/v1/credit_notes/%s/void", string_of(state, "credit_note"));
    struct stripe_form form = {0};
    int rc = create ? note_form(&form, plan, state) : HM_OK;
    note_key(plan, step, key, sizeof key);
    struct stripe_response response;
    rc = post_form(exporter, path, &form, rc, key, "cn_", &response, error, error_size);
    json_int_t amount = json_integer_value(json_object_get(response.body, "amount"));
    if (rc == HM_OK && amount != plan->document.total_minor) {
        snprintf(error, error_size,
                 "credit note %s: Stripe's credit note %s has %lld minor "
                 "units, the ledger's %" PRId64 "; run meterctl export stripe --check and "
                 "correct it in the Stripe Dashboard",
                 plan->document.number, string_of(response.body, "id"), (long long)amount,
                 plan->document.total_minor);
        rc = HM_ERR_CONFLICT;
    }
    if (rc == HM_OK) {
        int failed = 0;
        if (create)
            json_add(state, "credit_note", json_incref(json_object_get(response.body, "id")),
                     &failed);
        else
            json_add(state, "voided", json_true(), &failed);
        json_t *status = json_object_get(response.body, "status");
        if (status != NULL)
            json_add(state, "stripe_status", json_incref(status), &failed);
        rc = state_save(exporter->ledger, plan->document.number, state, failed);
    }
    stripe_response_free(&response);
    return rc;
}

/*
 * Runs the steps of one credit note that its state does not record as done:
 * fix the invoice and split, create, then void for a void credit note. A
 * void credit note whose create may have reached Stripe is created again
 * with the same key, which returns the first result, and then voided.
 */
static int note_steps(struct exporter *exporter, const struct note_plan *plan, json_t *state,
                      char *error, size_t error_size)
{
    int rc = HM_OK;
    if (json_object_get(state, "invoice") == NULL)
        rc = note_start(exporter, plan, state, error, error_size);
    if (rc == HM_OK && json_object_get(state, "credit_note") == NULL)
        rc = note_action(exporter, plan, "credit-note", state, error, error_size);
    if (rc == HM_OK && plan->document.is_void && json_object_get(state, "voided") == NULL)
        rc = note_action(exporter, plan, "void", state, error, error_size);
    return rc;
}

/* Builds the plan of a credit note and reads its export state; NULL after an error. */
static json_t *note_load(struct exporter *exporter, const char *number, json_t *note,
                         struct note_plan *plan, int *rc, char *error, size_t error_size)
{
    exporter->notes++;
    *rc = note_plan_build(number, note, plan, error, error_size);
    return *rc == HM_OK ? state_load(exporter->ledger, number, rc) : NULL;
}

void export_credit_note(struct exporter *exporter, const char *number, json_t *note)
{
    struct note_plan plan;
    char error[1024] = "";
    int rc;
    json_t *state = note_load(exporter, number, note, &plan, &rc, error, sizeof error);
    if (rc != HM_OK) {
        export_failed(exporter, "credit_note", number, rc, error);
        return;
    }
    char amount[MONEY_TEXT_SIZE], head[256];
    amount_text(&plan.document, plan.document.total_minor, amount, sizeof amount);
    snprintf(head, sizeof head, "%s %s %s %s %s", number, plan.document.tenant_name,
             plan.document.period, amount, plan.document.currency->code);
    int done = json_object_get(state, "credit_note") != NULL &&
               (!plan.document.is_void || json_object_get(state, "voided") != NULL);
    if (done) {
        exporter->notes_unchanged++;
        fprintf(exporter->out, "%s: unchanged, Stripe credit note %s of %s (%s)\n", head,
                string_of(state, "credit_note"), string_of(state, "invoice"),
                string_of(state, "stripe_status"));
    } else if (plan.document.is_void && (json_object_get(state, "invoice") == NULL ||
                                         json_object_get(state, "not_created") != NULL)) {
        exporter->notes_unchanged++;
        fprintf(exporter->out, "%s: void before export, nothing sent to Stripe\n", head);
    } else {
        int creating = json_object_get(state, "invoice") != NULL;
        rc = note_steps(exporter, &plan, state, error, sizeof error);
        /*
         * A 4xx reply to the create of a credit note that is void here means
         * that Stripe evaluated the request, so no earlier attempt with the
         * same key created it: Stripe would return that result instead.
         * Nothing is left to void, and a resend would fail the same way.
         */
        if (rc == HM_ERR_INVALID && creating && plan.document.is_void &&
            json_object_get(state, "credit_note") == NULL) {
            int failed = 0;
            json_add(state, "not_created", json_true(), &failed);
            rc = state_save(exporter->ledger, number, state, failed);
            if (rc == HM_OK) {
                exporter->notes_voided++;
                fprintf(exporter->out,
                        "%s: void before it reached Stripe, which rejected its "
                        "create (%s); nothing to void\n",
                        head, error);
                json_decref(state);
                return;
            }
        }
        if (rc == HM_ERR_NOT_FOUND && error[0] == '\0') {
            exporter->notes_waiting++;
            fprintf(exporter->out,
                    "%s: waits for invoice %s, which is not finalized in Stripe "
                    "yet; a later run sends it after the invoice\n",
                    head, plan.invoice_number);
        } else if (rc == HM_OK) {
            int voided = plan.document.is_void;
            exporter->notes_exported += !voided;
            exporter->notes_voided += voided;
            json_int_t credit = json_integer_value(json_object_get(state, "credit_amount"));
            char credited[MONEY_TEXT_SIZE + 64] = "";
            if (credit > 0) {
                char text[MONEY_TEXT_SIZE];
                amount_text(&plan.document, (int64_t)credit, text, sizeof text);
                snprintf(credited, sizeof credited, ", %s %s to the customer's credit balance",
                         text, plan.document.currency->code);
            }
            fprintf(exporter->out, "%s: %s Stripe credit note %s of %s (%s)%s\n", head,
                    voided ? "voided" : "exported as", string_of(state, "credit_note"),
                    string_of(state, "invoice"), string_of(state, "stripe_status"), credited);
        } else {
            /* Errors of the HTTP client name the request only, so the credit note is added. */
            char message[1400];
            if (strncmp(error, "credit note ", 12) == 0 || error[0] == '\0')
                snprintf(message, sizeof message, "%s", error);
            else
                snprintf(message, sizeof message, "credit note %s of invoice %s: %s", number,
                         plan.invoice_number, error);
            export_failed(exporter, "credit_note", number, rc, message);
        }
    }
    json_decref(state);
}

/*
 * Stripe voids a credit note only while its invoice is open, so a void
 * invoice waits for its exported credit notes to be voided in Stripe first.
 * Returns 1, after reporting the failure, when one of them is not voided yet.
 */
int invoice_void_blocked(struct exporter *exporter, const struct document_list *list,
                         const char *number)
{
    for (size_t i = 0; i < list->count; i++) {
        json_t *note = list->documents[i];
        if (!is_credit_note(note) || strcmp(string_of(note, "credited_invoice"), number) != 0)
            continue;
        int rc = HM_OK;
        json_t *state = state_load(exporter->ledger, list->numbers[i], &rc);
        int blocking = state != NULL && json_object_get(state, "credit_note") != NULL &&
                       json_object_get(state, "voided") == NULL;
        char error[512];
        snprintf(error, sizeof error,
                 "invoice %s is not voided in Stripe: its credit note %s "
                 "(Stripe %s) is not voided there yet, and Stripe voids a credit note only "
                 "while its invoice is open; correct the credit note's error and run the "
                 "export again",
                 number, list->numbers[i], string_of(state, "credit_note"));
        json_decref(state);
        if (rc != HM_OK || blocking) {
            exporter->invoices++;
            export_failed(exporter, "invoice", number, rc, rc != HM_OK ? "" : error);
            return 1;
        }
    }
    return 0;
}

/* Compares one exported credit note with Stripe's copy; returns the number of differences. */
static size_t check_note_compare(struct exporter *exporter, const struct note_plan *plan,
                                 json_t *state, json_t *stripe)
{
    const char *number = plan->document.number, *id = string_of(state, "credit_note");
    size_t before = exporter->different;
    json_int_t amount = json_integer_value(json_object_get(stripe, "amount"));
    if (!json_is_integer(json_object_get(stripe, "amount")) ||
        amount != plan->document.total_minor ||
        strcmp(string_of(stripe, "currency"), plan->document.currency_lower) != 0) {
        char ours[MONEY_TEXT_SIZE], theirs[MONEY_TEXT_SIZE];
        amount_text(&plan->document, plan->document.total_minor, ours, sizeof ours);
        amount_text(&plan->document, (int64_t)amount, theirs, sizeof theirs);
        difference(exporter, number, id, "amount: ours %s %s, Stripe %s %s", ours,
                   plan->document.currency->code, theirs, string_of(stripe, "currency"));
    }
    if (strcmp(string_of(stripe, "invoice"), string_of(state, "invoice")) != 0)
        difference(exporter, number, id, "invoice: ours %s (%s), Stripe %s",
                   string_of(state, "invoice"), plan->invoice_number, string_of(stripe, "invoice"));
    const char *status = string_of(stripe, "status");
    if (strcmp(status, plan->document.is_void ? "void" : "issued") != 0)
        difference(exporter, number, id, "status: ours %s, Stripe %s",
                   plan->document.is_void ? "void" : "finalized", status[0] ? status : "(none)");
    const char *stripe_number =
        string_of(json_object_get(stripe, "metadata"), "credit_note_number");
    if (strcmp(stripe_number, number) != 0)
        difference(exporter, number, id, "metadata credit_note_number: Stripe \"%s\"",
                   stripe_number);
    return exporter->different - before;
}

void check_credit_note(struct exporter *exporter, const char *number, json_t *note)
{
    struct note_plan plan;
    char error[1024] = "";
    int rc;
    json_t *state = note_load(exporter, number, note, &plan, &rc, error, sizeof error);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: %s\n", error[0] ? error : hm_status_str(rc));
        exporter->failed++;
        return;
    }
    const char *id = string_of(state, "credit_note");
    if (id[0] == '\0') {
        if (plan.document.is_void && (json_object_get(state, "invoice") == NULL ||
                                      json_object_get(state, "not_created") != NULL)) {
            exporter->void_not_exported++;
            fprintf(exporter->out,
                    "%s -: not exported: void before export, so Stripe has no "
                    "credit note for it\n",
                    number);
        } else
            difference(exporter, number, "-",
                       "not exported to Stripe yet; run meterctl export "
                       "stripe");
        json_decref(state);
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/credit_notes/%s", id);
    struct stripe_response response;
    rc = check_fetch(exporter, "credit note", number, path, &response);
    if (rc == HM_OK && check_note_compare(exporter, &plan, state, response.body) == 0) {
        char amount[MONEY_TEXT_SIZE];
        amount_text(&plan.document, plan.document.total_minor, amount, sizeof amount);
        exporter->matching++;
        fprintf(exporter->out, "%s %s: matches (amount %s %s of %s, Stripe status %s)\n", number,
                id, amount, plan.document.currency->code, plan.invoice_number,
                string_of(response.body, "status"));
    }
    stripe_response_free(&response);
    json_decref(state);
}
