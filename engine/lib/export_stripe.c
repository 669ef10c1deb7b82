#include "engine/lib/export_stripe.h"
#include "engine/lib/export_stripe_internal.h"

#include "common/log.h"
#include "common/status.h"
#include "common/uuid.h"
#include "pricing/money.h"
#include "rollup/json_build.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_VERSION 1

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("meterctl: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return 1;
}

/* ---- The API key ---- */

/* Stripe secret and restricted keys: "sk_" or "rk_", then letters, digits and '_'. */
static int key_valid(const char *key)
{
    size_t size = strlen(key);
    if (size < 4 || size > STRIPE_API_KEY_MAX ||
        (strncmp(key, "sk_", 3) != 0 && strncmp(key, "rk_", 3) != 0))
        return 0;
    return strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == size;
}

int export_stripe_key_load(const char *path, char *key_out, char *error, size_t error_size)
{
    char text[STRIPE_API_KEY_MAX + 2] = "";
    if (path == NULL) {
        const char *value = getenv("STRIPE_API_KEY");
        if (value == NULL || value[0] == '\0') {
            snprintf(error, error_size, "missing Stripe API key: set STRIPE_API_KEY or pass "
                     "--api-key-file FILE (a file of mode 0600 that contains the key)");
            return HM_ERR_NOT_FOUND;
        }
        if (strlen(value) > STRIPE_API_KEY_MAX || !key_valid(value)) {
            snprintf(error, error_size, "STRIPE_API_KEY is not a Stripe secret key: expected "
                     "sk_... or rk_... of letters, digits and '_'");
            return HM_ERR_INVALID;
        }
        snprintf(key_out, STRIPE_API_KEY_MAX + 1, "%s", value);
        return HM_OK;
    }
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked next. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(error, error_size, "cannot open API key file %s: %s", path, strerror(errno));
        return HM_ERR_IO;
    }
    struct stat info = { 0 };
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        snprintf(error, error_size, "API key file %s is not a regular file (it is %s); give a "
                 "file of mode 0600 that contains the key", path,
                 S_ISFIFO(info.st_mode)  ? "a FIFO"
                 : S_ISDIR(info.st_mode) ? "a directory"
                 : S_ISCHR(info.st_mode) ? "a character device"
                 : S_ISSOCK(info.st_mode) ? "a socket"
                                          : "not a file");
        return HM_ERR_INVALID;
    }
    if ((info.st_mode & 077) != 0) {
        close(fd);
        snprintf(error, error_size, "API key file %s can be read by other users; run chmod 600 "
                 "%s and try again", path, path);
        return HM_ERR_INVALID;
    }
    ssize_t size = read(fd, text, sizeof text - 1);
    close(fd);
    if (size < 0) {
        snprintf(error, error_size, "cannot read API key file %s: %s", path, strerror(errno));
        return HM_ERR_IO;
    }
    text[size] = '\0';
    /* Editors end the file with a newline. */
    while (size > 0 && (text[size - 1] == '\n' || text[size - 1] == '\r' || text[size - 1] == ' '))
        text[--size] = '\0';
    int valid = (size_t)size <= STRIPE_API_KEY_MAX && key_valid(text);
    if (valid)
        memcpy(key_out, text, (size_t)size + 1);
    explicit_bzero(text, sizeof text);
    if (!valid) {
        snprintf(error, error_size, "API key file %s does not contain one Stripe secret key: "
                 "expected one line sk_... or rk_... of letters, digits and '_'", path);
        return HM_ERR_INVALID;
    }
    return HM_OK;
}

/* ---- Test hook ---- */

/*
 * HM_STRIPE_KILL_AFTER=N makes the exporter kill itself with SIGKILL right
 * after the N-th successful Stripe reply and before it stores the reply's
 * content. At that moment only the idempotency keys prevent a second charge
 * on the next run. Only tests set it.
 */
static void kill_point(void)
{
    static long remaining = -1;
    if (remaining == -1) {
        const char *text = getenv("HM_STRIPE_KILL_AFTER");
        remaining = text ? strtol(text, NULL, 10) : 0;
        if (remaining <= 0)
            remaining = 0;
    }
    if (remaining > 0 && --remaining == 0)
        raise(SIGKILL);
}

/* ---- Planning: invoice JSON to invoice items ---- */

const char *string_of(json_t *object, const char *key)
{
    const char *text = json_string_value(json_object_get(object, key));
    return text ? text : "";
}

int64_t minor_of(json_t *object, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(json_object_get(object, key),
                                                       "amount_minor"));
}

/* Parses "YYYY-MM-DDTHH:MM:SSZ" as UTC; 0 when absent or malformed. */
static int64_t timestamp_parse(const char *text)
{
    struct tm tm = { 0 };
    const char *end = strptime(text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return end != NULL && *end == '\0' ? (int64_t)timegm(&tm) : 0;
}

/* Billing units per unit of a line's quantity, by its price unit; 0 when it has none. */
static int64_t quantity_per_price_unit(const char *price_unit)
{
    static const struct {
        const char *price_unit;
        int64_t quantity;
    } table[] = {
        { "per 1M tokens", 1000000 }, { "per 1M calls", 1000000 }, { "per GPU-hour", 1 },
        { "per GB-month", 1 },        { "per GB", 1 },             { "per month", 1 },
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
        if (strcmp(price_unit, table[i].price_unit) == 0)
            return table[i].quantity;
    }
    return 0;
}

/*
 * Sets the decimal form of a line when it is exact: quantity_decimal x
 * unit_amount_decimal (minor units, at most 12 fraction digits) equals the
 * amount. Otherwise the item carries only its amount, because Stripe would
 * round the product itself and could differ from the invoice by a minor unit.
 */
static void item_decimal(struct item_plan *item, json_t *line,
                         const struct money_currency *currency)
{
    int64_t per_unit = quantity_per_price_unit(string_of(line, "price_unit"));
    if (item->amount_minor <= 0 || per_unit == 0 ||
        !json_is_true(json_object_get(line, "quantity_exact")) ||
        !json_is_true(json_object_get(line, "unit_price_exact")))
        return;
    __int128 quantity_pico, price_pico;
    if (money_decimal_parse(string_of(line, "quantity"), &quantity_pico, NULL, 0) != HM_OK ||
        money_decimal_parse(string_of(line, "unit_price"), &price_pico, NULL, 0) != HM_OK ||
        quantity_pico <= 0 || price_pico < 0)
        return;
    __int128 minor_per_major = 1;
    for (int i = 0; i < currency->exponent; i++)
        minor_per_major *= 10;
    struct money_ratio quantity, price, scale, unit_amount, product;
    bool exact = false;
    if (money_ratio_from_decimal(quantity_pico, &quantity) != HM_OK ||
        money_ratio_from_decimal(price_pico, &price) != HM_OK ||
        money_ratio_make(minor_per_major, per_unit, &scale) != HM_OK ||
        money_ratio_mul(price, scale, &unit_amount) != HM_OK ||
        money_ratio_mul(quantity, unit_amount, &product) != HM_OK || product.den != 1 ||
        product.num != item->amount_minor ||
        money_ratio_format(unit_amount, 0, 12, item->unit_amount, sizeof item->unit_amount,
                           &exact) != HM_OK ||
        !exact)
        return;
    snprintf(item->quantity, sizeof item->quantity, "%s", string_of(line, "quantity"));
    item->has_decimal = 1;
}

static void plan_free(struct invoice_plan *plan)
{
    free(plan->items);
    plan->items = NULL;
}

/* Fills what invoices and credit notes have in common: number, status, tenant and currency. */
int plan_head(const char *number, json_t *document, struct invoice_plan *plan,
                     char *error, size_t error_size)
{
    memset(plan, 0, sizeof *plan);
    snprintf(plan->number, sizeof plan->number, "%s", number);
    json_int_t revision = json_integer_value(json_object_get(document, "revision"));
    plan->revision = revision > 0 ? revision : 1;
    plan->is_void = strcmp(string_of(document, "status"), "void") == 0;
    snprintf(plan->tenant_id, sizeof plan->tenant_id, "%s", string_of(document, "tenant_id"));
    snprintf(plan->tenant_name, sizeof plan->tenant_name, "%s",
             string_of(document, "tenant_name"));
    snprintf(plan->period, sizeof plan->period, "%s", string_of(document, "period"));
    const char *code = string_of(document, "currency");
    if (money_currency_find(code, &plan->currency) != HM_OK) {
        snprintf(error, error_size, "document %s has the unknown currency \"%s\"", number,
                 code);
        return HM_ERR_INVALID;
    }
    for (int i = 0; i < 3; i++)
        plan->currency_lower[i] = (char)(code[i] | 0x20);
    return HM_OK;
}

/*
 * Builds the plan of an invoice document. Checks that the items add up to
 * the total, so that a Stripe invoice of these items has the invoice's total.
 */
static int plan_build(const char *number, json_t *document, struct invoice_plan *plan,
                      char *error, size_t error_size)
{
    int rc = plan_head(number, document, plan, error, error_size);
    if (rc != HM_OK)
        return rc;
    plan->total_minor = minor_of(document, "total");
    plan->period_start_s = timestamp_parse(string_of(document, "period_start"));
    plan->period_end_s = timestamp_parse(string_of(document, "period_end"));

    json_t *lines = json_object_get(document, "lines");
    int64_t credits = minor_of(document, "credits_applied");
    size_t count = json_array_size(lines) + (credits > 0 ? 1 : 0);
    if (count > STRIPE_INVOICE_ITEMS_MAX) {
        snprintf(error, error_size, "invoice %s has %zu items (lines%s), and a Stripe invoice "
                 "takes at most %d invoice items; it is not exported, so bill it by hand in "
                 "Stripe or split the tenant's price book dimensions", number, count,
                 credits > 0 ? " and the credits applied" : "", STRIPE_INVOICE_ITEMS_MAX);
        return HM_ERR_INVALID;
    }
    plan->items = calloc(count + 1, sizeof *plan->items);
    if (plan->items == NULL)
        return HM_ERR_NOMEM;
    int64_t sum = 0;
    size_t index;
    json_t *line;
    json_array_foreach(lines, index, line) {
        struct item_plan *item = &plan->items[plan->item_count++];
        snprintf(item->kind, sizeof item->kind, "%s", string_of(line, "kind"));
        snprintf(item->description, sizeof item->description, "%s",
                 string_of(line, "description"));
        item->amount_minor = (int64_t)json_integer_value(json_object_get(line, "amount_minor"));
        item_decimal(item, line, plan->currency);
        if (__builtin_add_overflow(sum, item->amount_minor, &sum))
            return HM_ERR_OVERFLOW;
    }
    if (credits > 0) {
        struct item_plan *item = &plan->items[plan->item_count++];
        snprintf(item->kind, sizeof item->kind, "credits");
        snprintf(item->description, sizeof item->description, "Prepaid credits applied");
        item->amount_minor = -credits;
        sum -= credits;
    }
    if (sum != plan->total_minor) {
        snprintf(error, error_size, "invoice %s: its lines less its credits are %" PRId64
                 " minor units, but its total is %" PRId64 "; it is not exported",
                 number, sum, plan->total_minor);
        return HM_ERR_INVALID;
    }
    return HM_OK;
}

/* ---- Export state in the ledger ---- */

static void state_key(const char *number, char *key, size_t size)
{
    snprintf(key, size, "stripe/%s", number);
}

/* Reads the export state of an invoice, or a new empty state; NULL on a storage error. */
json_t *state_load(struct ledger *ledger, const char *number, int *rc_out)
{
    char key[DOCUMENT_NUMBER_MAX + 16];
    state_key(number, key, sizeof key);
    char *text = NULL;
    int rc = ledger_export_get(ledger, key, &text);
    *rc_out = HM_OK;
    if (rc == HM_ERR_NOT_FOUND)
        return json_pack("{s:i, s:[]}", "version", STATE_VERSION, "items");
    if (rc != HM_OK) {
        *rc_out = rc;
        return NULL;
    }
    json_error_t json_error;
    json_t *state = json_loads(text, 0, &json_error);
    free(text);
    if (state == NULL || json_integer_value(json_object_get(state, "version")) != STATE_VERSION ||
        !json_is_array(json_object_get(state, "items"))) {
        log_error("stripe", "export state of %s is unreadable or of another version", number);
        json_decref(state);
        *rc_out = HM_ERR_STORAGE;
        return NULL;
    }
    return state;
}

/*
 * Stores the state unless `failed` is set. A state after a failed json_add
 * lacks a member, and storing it would make a later export repeat or skip
 * a step.
 */
int state_save(struct ledger *ledger, const char *number, json_t *state, int failed)
{
    if (failed)
        return HM_ERR_NOMEM;
    char key[DOCUMENT_NUMBER_MAX + 16];
    state_key(number, key, sizeof key);
    char *text = json_dumps_whole(state, JSON_COMPACT | JSON_SORT_KEYS);
    if (text == NULL)
        return HM_ERR_NOMEM;
    int rc = ledger_export_put(ledger, key, text);
    free(text);
    return rc;
}

/* ---- Requests ---- */

static void idempotency_key(const struct invoice_plan *plan, const char *step, char *out,
                            size_t size)
{
    snprintf(out, size, "hm-%s-r%lld-%s", plan->number, (long long)plan->revision, step);
}

/* Sends one request and counts it; the reply's object id must start with id_prefix. */
int send_request(struct exporter *exporter, const char *method, const char *path,
                const struct stripe_form *form, const char *key, const char *id_prefix,
                struct stripe_response *response, char *error, size_t error_size)
{
    int rc = stripe_request(exporter->client, method, path, form, key, response, error,
                            error_size);
    exporter->requests += response->attempts;
    exporter->retries += response->attempts > 0 ? response->attempts - 1 : 0;
    if (rc != HM_OK)
        return rc;
    const char *id = string_of(response->body, "id");
    if (strncmp(id, id_prefix, strlen(id_prefix)) != 0) {
        snprintf(error, error_size, "%s %s: the reply's id \"%.40s\" does not start with %s",
                 method, path, id, id_prefix);
        return HM_ERR_IO;
    }
    kill_point();
    return HM_OK;
}

/*
 * Sends a POST of `form` unless building it failed (form_rc), and frees the
 * form either way.
 */
int post_form(struct exporter *exporter, const char *path, struct stripe_form *form,
                     int form_rc, const char *key, const char *id_prefix,
                     struct stripe_response *response, char *error, size_t error_size)
{
    int rc = form_rc;
    if (rc == HM_OK)
        rc = send_request(exporter, "POST", path, form, key, id_prefix, response, error,
                          error_size);
    else
        memset(response, 0, sizeof *response);
    stripe_form_free(form);
    return rc;
}

static int form_metadata(struct stripe_form *form, const struct invoice_plan *plan)
{
    char revision[24];
    snprintf(revision, sizeof revision, "%lld", (long long)plan->revision);
    int rc = stripe_form_add(form, "metadata[invoice_number]", plan->number);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[revision]", revision);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[tenant_id]", plan->tenant_id);
    return rc;
}

static int create_invoice(struct exporter *exporter, const struct invoice_plan *plan,
                          const char *customer, json_t *state, char *error, size_t error_size)
{
    char description[256], key[128];
    snprintf(description, sizeof description, "Invoice %s, %s, period %s", plan->number,
             plan->tenant_name, plan->period);
    struct stripe_form form = { 0 };
    int rc = stripe_form_add(&form, "customer", customer);
    if (rc == HM_OK)
        rc = stripe_form_add(&form, "currency", plan->currency_lower);
    /* A draft with auto_advance would be finalized by Stripe an hour later, perhaps unfinished. */
    if (rc == HM_OK)
        rc = stripe_form_add(&form, "auto_advance", "false");
    if (rc == HM_OK)
        rc = stripe_form_add(&form, "pending_invoice_items_behavior", "exclude");
    if (rc == HM_OK)
        rc = stripe_form_add(&form, "description", description);
    if (rc == HM_OK)
        rc = form_metadata(&form, plan);
    if (rc == HM_OK)
        rc = stripe_form_add(&form, "metadata[period]", plan->period);
    if (rc != HM_OK) {
        stripe_form_free(&form);
        return rc;
    }
    idempotency_key(plan, "invoice", key, sizeof key);
    struct stripe_response response;
    rc = send_request(exporter, "POST", "/v1/invoices", &form, key, "in_", &response, error,
              error_size);
    stripe_form_free(&form);
    if (rc == HM_OK) {
        int failed = 0;
        json_add(state, "invoice", json_incref(json_object_get(response.body, "id")), &failed);
        rc = state_save(exporter->ledger, plan->number, state, failed);
    }
    stripe_response_free(&response);
    return rc;
}

static int item_form(struct stripe_form *form, const struct invoice_plan *plan, size_t index,
                     const char *customer, const char *invoice_id)
{
    const struct item_plan *item = &plan->items[index];
    char number[32];
    int rc = stripe_form_add(form, "customer", customer);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "invoice", invoice_id);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "currency", plan->currency_lower);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "description", item->description);
    if (rc == HM_OK && item->has_decimal) {
        rc = stripe_form_add(form, "quantity_decimal", item->quantity);
        if (rc == HM_OK)
            rc = stripe_form_add(form, "unit_amount_decimal", item->unit_amount);
    } else if (rc == HM_OK) {
        snprintf(number, sizeof number, "%" PRId64, item->amount_minor);
        rc = stripe_form_add(form, "amount", number);
    }
    if (rc == HM_OK && plan->period_start_s > 0 && plan->period_end_s > plan->period_start_s) {
        snprintf(number, sizeof number, "%" PRId64, plan->period_start_s);
        rc = stripe_form_add(form, "period[start]", number);
        snprintf(number, sizeof number, "%" PRId64, plan->period_end_s);
        if (rc == HM_OK)
            rc = stripe_form_add(form, "period[end]", number);
    }
    if (rc == HM_OK)
        rc = form_metadata(form, plan);
    snprintf(number, sizeof number, "%zu", index);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[line_index]", number);
    if (rc == HM_OK)
        rc = stripe_form_add(form, "metadata[line_kind]", item->kind);
    return rc;
}

/* Creates the items from the first one without a stored id on, storing each id as it comes. */
static int create_items(struct exporter *exporter, const struct invoice_plan *plan,
                        const char *customer, json_t *state, char *error, size_t error_size)
{
    json_t *items = json_object_get(state, "items");
    const char *invoice_id = string_of(state, "invoice");
    for (size_t index = json_array_size(items); index < plan->item_count; index++) {
        struct stripe_form form = { 0 };
        int rc = item_form(&form, plan, index, customer, invoice_id);
        if (rc != HM_OK) {
            stripe_form_free(&form);
            return rc;
        }
        char step[32], key[128];
        snprintf(step, sizeof step, "item-%zu", index);
        idempotency_key(plan, step, key, sizeof key);
        struct stripe_response response;
        rc = send_request(exporter, "POST", "/v1/invoiceitems", &form, key, "ii_", &response, error,
                  error_size);
        stripe_form_free(&form);
        json_int_t amount = json_integer_value(json_object_get(response.body, "amount"));
        if (rc == HM_OK && amount != plan->items[index].amount_minor) {
            snprintf(error, error_size, "invoice %s item %zu: Stripe computed %lld minor units, "
                     "the invoice line is %" PRId64 "; the Stripe invoice %s stays a draft",
                     plan->number, index, (long long)amount, plan->items[index].amount_minor,
                     invoice_id);
            rc = HM_ERR_CONFLICT;
        }
        if (rc == HM_OK) {
            int failed = 0;
            json_add(items, NULL, json_incref(json_object_get(response.body, "id")), &failed);
            rc = state_save(exporter->ledger, plan->number, state, failed);
        }
        stripe_response_free(&response);
        if (rc != HM_OK)
            return rc;
    }
    return HM_OK;
}

/* Finalizes (step "finalize") or voids (step "void") the Stripe invoice and stores its status. */
static int invoice_action(struct exporter *exporter, const struct invoice_plan *plan,
                          const char *step, json_t *state, char *error, size_t error_size)
{
    char path[256], key[128];
    snprintf(path, sizeof path, "/v1/invoices/%s/%s", string_of(state, "invoice"), step);
    struct stripe_form form = { 0 };
    /* Once finalized, Stripe may collect the invoice under the customer's payment settings. */
    int rc = strcmp(step, "finalize") == 0 ? stripe_form_add(&form, "auto_advance", "true")
                                           : HM_OK;
    idempotency_key(plan, step, key, sizeof key);
    struct stripe_response response;
    rc = post_form(exporter, path, &form, rc, key, "in_", &response, error, error_size);
    if (rc == HM_OK) {
        json_int_t total = json_integer_value(json_object_get(response.body, "total"));
        int failed = 0;
        json_add(state, strcmp(step, "void") == 0 ? "voided" : "finalized", json_true(),
                 &failed);
        json_t *status = json_object_get(response.body, "status");
        if (status != NULL)
            json_add(state, "stripe_status", json_incref(status), &failed);
        json_add(state, "stripe_total", json_integer(total), &failed);
        rc = state_save(exporter->ledger, plan->number, state, failed);
        if (rc == HM_OK && total != plan->total_minor)
            log_warn("stripe", "invoice %s: Stripe total %lld differs from %" PRId64
                     "; run meterctl export stripe --check", plan->number, (long long)total,
                     plan->total_minor);
    }
    stripe_response_free(&response);
    return rc;
}

/* ---- Export ---- */

static int tenant_customer(struct exporter *exporter, const struct invoice_plan *plan,
                           char *customer, size_t size, char *error, size_t error_size)
{
    uint8_t id[UUID_SIZE];
    struct tenant_settings settings;
    if (uuid_parse(plan->tenant_id, id) != HM_OK ||
        ledger_tenant_settings_get(exporter->ledger, id, &settings) != HM_OK) {
        snprintf(error, error_size, "invoice %s: cannot read the settings of tenant %s",
                 plan->number, plan->tenant_id);
        return HM_ERR_STORAGE;
    }
    if (settings.stripe_customer[0] == '\0') {
        snprintf(error, error_size, "invoice %s: tenant %s has no Stripe customer id; set it with "
                 "`meterctl tenant set %s --stripe-customer cus_...`", plan->number,
                 plan->tenant_name, plan->tenant_name);
        return HM_ERR_NOT_FOUND;
    }
    snprintf(customer, size, "%s", settings.stripe_customer);
    return HM_OK;
}

void amount_text(const struct invoice_plan *plan, int64_t minor, char *out, size_t size)
{
    money_amount_format((struct money_amount){ minor }, plan->currency, out, size);
}

/*
 * Stripe's currency rules: payments in the three-decimal currencies need an
 * amount whose last digit is 0. Rounding would make the Stripe invoice differ
 * from the sealed one, so such an invoice is refused, with the rule named.
 */
int currency_three_decimal(const struct money_currency *currency)
{
    static const char *const codes[] = { "BHD", "JOD", "KWD", "OMR", "TND" };
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
        if (strcmp(currency->code, codes[i]) == 0)
            return 1;
    }
    return 0;
}

static int three_decimal_check(const struct invoice_plan *plan, char *error, size_t error_size)
{
    if (!currency_three_decimal(plan->currency))
        return HM_OK;
    for (size_t i = 0; i < plan->item_count; i++) {
        if (plan->items[i].amount_minor % 10 == 0)
            continue;
        char amount[MONEY_TEXT_SIZE];
        amount_text(plan, plan->items[i].amount_minor, amount, sizeof amount);
        snprintf(error, error_size, "invoice %s is not exported: Stripe requires %s amounts "
                 "(a three-decimal currency) to be multiples of 10 minor units, with a last "
                 "digit of 0, and its item %zu \"%s\" is %s %s. Rounding would make the "
                 "Stripe invoice differ from this one, so bill it by hand in Stripe, or give "
                 "the tenant prices whose line amounts end in 0", plan->number,
                 plan->currency->code, i, plan->items[i].description, amount,
                 plan->currency->code);
        return HM_ERR_INVALID;
    }
    return HM_OK;
}

/* Reads the document again: a void since the plan was read must stop its finalization. */
static int document_voided(struct exporter *exporter, const struct invoice_plan *plan,
                           int *voided, char *error, size_t error_size)
{
    char *text = NULL;
    int rc = ledger_document_get(exporter->ledger, plan->number, &text);
    if (rc != HM_OK) {
        snprintf(error, error_size, "invoice %s: cannot read it again before finalizing: %s",
                 plan->number, hm_status_str(rc));
        return rc;
    }
    json_error_t json_error;
    json_t *document = json_loads(text, 0, &json_error);
    free(text);
    if (document == NULL) {
        snprintf(error, error_size, "invoice %s in the ledger is not JSON", plan->number);
        return HM_ERR_STORAGE;
    }
    *voided = strcmp(string_of(document, "status"), "void") == 0;
    json_decref(document);
    return HM_OK;
}

/*
 * Deletes the Stripe draft of an invoice that was voided before its export
 * finished. Only a draft can be deleted; it was never sent to the customer.
 * DELETE takes no idempotency key: a retry after a lost reply finds no
 * invoice (404 resource_missing), which is the result wanted. A draft that
 * Stripe finalized after all (the reply of a finalize was lost) is voided.
 */
static int draft_delete(struct exporter *exporter, const struct invoice_plan *plan,
                        json_t *state, char *error, size_t error_size)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/invoices/%s", string_of(state, "invoice"));
    struct stripe_response response;
    int rc = send_request(exporter, "DELETE", path, NULL, NULL, "in_", &response, error,
                          error_size);
    json_t *stripe_error = json_object_get(response.body, "error");
    int missing = rc != HM_OK && response.status == 404 &&
                  strcmp(string_of(stripe_error, "code"), "resource_missing") == 0;
    int deleted = rc == HM_OK && json_is_true(json_object_get(response.body, "deleted"));
    int not_draft = rc != HM_OK && response.status == 400;
    stripe_response_free(&response);
    if (rc == HM_OK && !deleted) {
        snprintf(error, error_size, "DELETE %s: the reply does not say \"deleted\": true", path);
        return HM_ERR_IO;
    }
    if (deleted || missing) {
        int failed = 0;
        json_add(state, "deleted", json_true(), &failed);
        json_add(state, "stripe_status", json_string("deleted"), &failed);
        return state_save(exporter->ledger, plan->number, state, failed);
    }
    if (!not_draft)
        return rc;
    rc = send_request(exporter, "GET", path, NULL, NULL, "in_", &response, error, error_size);
    const char *status = rc == HM_OK ? string_of(response.body, "status") : "";
    int open = strcmp(status, "open") == 0 || strcmp(status, "uncollectible") == 0;
    stripe_response_free(&response);
    if (rc != HM_OK)
        return rc;
    if (!open) {
        snprintf(error, error_size, "invoice %s is void, and its Stripe invoice %s is neither "
                 "a draft nor open (Stripe status %s); check it in the Stripe Dashboard",
                 plan->number, string_of(state, "invoice"), status[0] ? status : "none");
        return HM_ERR_CONFLICT;
    }
    int failed = 0;
    json_add(state, "finalized", json_true(), &failed);
    if (failed)
        return HM_ERR_NOMEM;
    return invoice_action(exporter, plan, "void", state, error, error_size);
}

/*
 * Runs the steps of one invoice that its state does not record as done:
 * invoice, items, finalize, then void for a void invoice. The draft of an
 * invoice that is void before its finalization is deleted instead.
 */
static int export_steps(struct exporter *exporter, const struct invoice_plan *plan,
                        json_t *state, char *error, size_t error_size)
{
    /*
     * The customer is fixed when the export starts: a retry must send the
     * same parameters, or Stripe rejects the idempotency key.
     */
    char customer[STRIPE_CUSTOMER_ID_MAX + 1];
    int rc = HM_OK;
    if (json_object_get(state, "customer") == NULL) {
        rc = three_decimal_check(plan, error, error_size);
        if (rc != HM_OK)
            return rc;
        rc = tenant_customer(exporter, plan, customer, sizeof customer, error, error_size);
        if (rc != HM_OK)
            return rc;
        int failed = 0;
        json_add(state, "customer", json_string(customer), &failed);
        json_add(state, "started_at", json_integer((json_int_t)time(NULL)), &failed);
        rc = state_save(exporter->ledger, plan->number, state, failed);
    }
    snprintf(customer, sizeof customer, "%s", string_of(state, "customer"));
    if (rc == HM_OK && json_object_get(state, "invoice") == NULL)
        rc = create_invoice(exporter, plan, customer, state, error, error_size);
    int finalized = json_is_true(json_object_get(state, "finalized"));
    if (rc == HM_OK && !finalized && !plan->is_void)
        rc = create_items(exporter, plan, customer, state, error, error_size);
    int voided = plan->is_void;
    if (rc == HM_OK && !finalized && !voided)
        rc = document_voided(exporter, plan, &voided, error, error_size);
    if (rc == HM_OK && !finalized && voided)
        return draft_delete(exporter, plan, state, error, error_size);
    if (rc == HM_OK && !finalized)
        rc = invoice_action(exporter, plan, "finalize", state, error, error_size);
    if (rc != HM_OK || !plan->is_void || json_object_get(state, "voided") != NULL)
        return rc;
    /* Stripe marks an invoice of 0 paid when it is finalized, and a paid invoice cannot be voided. */
    if (strcmp(string_of(state, "stripe_status"), "paid") == 0 && plan->total_minor == 0) {
        int failed = 0;
        json_add(state, "voided", json_string("paid_zero_total"), &failed);
        return state_save(exporter->ledger, plan->number, state, failed);
    }
    return invoice_action(exporter, plan, "void", state, error, error_size);
}

/* Counts and reports a document whose export failed; other documents go on. */
void export_failed(struct exporter *exporter, const char *type, const char *number,
                          int rc, const char *error)
{
    exporter->failed++;
    fprintf(stderr, "meterctl: %s\n", error[0] ? error : hm_status_str(rc));
    /* The error text is redacted and names the fix, so the log keeps it too. */
    log_error("stripe", "export failed %s=%s status=%s error=\"%s\"", type, number,
              hm_status_str(rc), error[0] ? error : hm_status_str(rc));
}

static void export_invoice(struct exporter *exporter, const char *number, json_t *document)
{
    struct invoice_plan plan;
    char error[1024] = "";
    int rc = plan_build(number, document, &plan, error, sizeof error);
    json_t *state = rc == HM_OK ? state_load(exporter->ledger, number, &rc) : NULL;
    exporter->invoices++;
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: %s\n", error[0] ? error : hm_status_str(rc));
        exporter->failed++;
        plan_free(&plan);
        return;
    }
    char total[MONEY_TEXT_SIZE];
    amount_text(&plan, plan.total_minor, total, sizeof total);
    int started = json_object_get(state, "customer") != NULL;
    int done = (json_is_true(json_object_get(state, "finalized")) &&
                (!plan.is_void || json_object_get(state, "voided") != NULL)) ||
               json_is_true(json_object_get(state, "deleted"));
    if (done) {
        exporter->unchanged++;
        fprintf(exporter->out, "%s %s %s %s %s: unchanged, Stripe invoice %s (%s)\n", number,
                plan.tenant_name, plan.period, total, plan.currency->code,
                string_of(state, "invoice"), string_of(state, "stripe_status"));
    } else if (plan.is_void && !started) {
        /* Nothing was ever sent for it, so Stripe has nothing to void. */
        exporter->unchanged++;
        fprintf(exporter->out, "%s %s %s %s %s: void before export, nothing sent to Stripe\n",
                number, plan.tenant_name, plan.period, total, plan.currency->code);
    } else {
        rc = export_steps(exporter, &plan, state, error, sizeof error);
        if (rc == HM_OK && json_is_true(json_object_get(state, "deleted"))) {
            exporter->voided++;
            fprintf(exporter->out, "%s %s %s %s %s: void before its export finished; deleted "
                    "the Stripe draft %s, which was never finalized\n", number, plan.tenant_name,
                    plan.period, total, plan.currency->code, string_of(state, "invoice"));
        } else if (rc == HM_OK) {
            int voided = plan.is_void;
            exporter->exported += !voided;
            exporter->voided += voided;
            fprintf(exporter->out, "%s %s %s %s %s: %s Stripe invoice %s with %zu items (%s)\n",
                    number, plan.tenant_name, plan.period, total, plan.currency->code,
                    voided ? "voided" : "exported as", string_of(state, "invoice"),
                    plan.item_count, string_of(state, "stripe_status"));
        } else
            export_failed(exporter, "invoice", number, rc, error);
    }
    json_decref(state);
    plan_free(&plan);
}

static int document_collect(void *context, const char *number, const char *text)
{
    struct document_list *list = context;
    json_error_t json_error;
    json_t *document = json_loads(text, 0, &json_error);
    if (document == NULL)
        return HM_OK;
    const char *status = string_of(document, "status");
    const char *type = string_of(document, "document_type");
    int wanted = (strcmp(status, "finalized") == 0 || strcmp(status, "void") == 0 ||
                  strcmp(type, "credit_note") == 0) &&
                 (list->tenant_id == NULL ||
                  strcmp(string_of(document, "tenant_id"), list->tenant_id) == 0);
    if (!wanted) {
        json_decref(document);
        return HM_OK;
    }
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? 2 * list->capacity : 64;
        void *numbers = realloc(list->numbers, capacity * sizeof *list->numbers);
        if (numbers != NULL)
            list->numbers = numbers;
        void *documents = realloc(list->documents, capacity * sizeof *list->documents);
        if (documents != NULL)
            list->documents = documents;
        if (numbers == NULL || documents == NULL) {
            json_decref(document);
            return HM_ERR_NOMEM;
        }
        list->capacity = capacity;
    }
    /* Invoices of older ledgers have no key of their own, only "invoice_number". */
    snprintf(list->numbers[list->count], DOCUMENT_NUMBER_MAX, "%s",
             number ? number : string_of(document, "invoice_number"));
    list->documents[list->count++] = document;
    return HM_OK;
}

static void document_list_free(struct document_list *list)
{
    for (size_t i = 0; i < list->count; i++)
        json_decref(list->documents[i]);
    free(list->documents);
    free(list->numbers);
}

int is_credit_note(json_t *document)
{
    return strcmp(string_of(document, "document_type"), "credit_note") == 0;
}

static int is_void(json_t *document)
{
    return strcmp(string_of(document, "status"), "void") == 0;
}

/*
 * Exports in the order that Stripe accepts. Void credit notes go first,
 * while their invoices are still open in Stripe. Invoices and their voids
 * follow, and then the other credit notes, after their invoices.
 */
static void export_all(struct exporter *exporter, struct document_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        if (is_credit_note(list->documents[i]) && is_void(list->documents[i]))
            export_credit_note(exporter, list->numbers[i], list->documents[i]);
    }
    for (size_t i = 0; i < list->count; i++) {
        json_t *document = list->documents[i];
        if (is_credit_note(document) ||
            (is_void(document) && invoice_void_blocked(exporter, list, list->numbers[i])))
            continue;
        export_invoice(exporter, list->numbers[i], document);
    }
    for (size_t i = 0; i < list->count; i++) {
        if (is_credit_note(list->documents[i]) && !is_void(list->documents[i]))
            export_credit_note(exporter, list->numbers[i], list->documents[i]);
    }
    fprintf(exporter->out, "stripe export: invoices=%zu exported=%zu voided=%zu unchanged=%zu "
            "failed=%zu credit_notes=%zu credit_notes_exported=%zu credit_notes_voided=%zu "
            "credit_notes_unchanged=%zu credit_notes_waiting=%zu requests=%u retries=%u\n",
            exporter->invoices, exporter->exported, exporter->voided, exporter->unchanged,
            exporter->failed, exporter->notes, exporter->notes_exported, exporter->notes_voided,
            exporter->notes_unchanged, exporter->notes_waiting, exporter->requests,
            exporter->retries);
}

/* ---- Check ---- */

void difference(struct exporter *exporter, const char *number, const char *invoice_id,
                       const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(exporter->out, "%s %s: DIFFERENT ", number, invoice_id);
    vfprintf(exporter->out, fmt, args);
    fputc('\n', exporter->out);
    va_end(args);
    exporter->different++;
}

/* Compares one exported invoice with Stripe's copy; returns the number of differences. */
static size_t check_compare(struct exporter *exporter, const struct invoice_plan *plan,
                            json_t *state, json_t *stripe)
{
    const char *id = string_of(state, "invoice");
    size_t before = exporter->different;
    json_t *customer = json_object_get(stripe, "customer");
    const char *customer_id = json_is_object(customer) ? string_of(customer, "id")
                                                       : json_string_value(customer);
    if (customer_id == NULL || strcmp(customer_id, string_of(state, "customer")) != 0)
        difference(exporter, plan->number, id, "customer: ours %s, Stripe %s",
                   string_of(state, "customer"), customer_id ? customer_id : "(none)");
    if (strcmp(string_of(stripe, "currency"), plan->currency_lower) != 0)
        difference(exporter, plan->number, id, "currency: ours %s, Stripe %s",
                   plan->currency_lower, string_of(stripe, "currency"));
    json_int_t total = json_integer_value(json_object_get(stripe, "total"));
    if (!json_is_integer(json_object_get(stripe, "total")) || total != plan->total_minor) {
        char ours[MONEY_TEXT_SIZE], theirs[MONEY_TEXT_SIZE];
        amount_text(plan, plan->total_minor, ours, sizeof ours);
        amount_text(plan, (int64_t)total, theirs, sizeof theirs);
        difference(exporter, plan->number, id, "total: ours %s %s, Stripe %s %s", ours,
                   plan->currency->code, theirs, plan->currency->code);
    }
    const char *status = string_of(stripe, "status");
    int status_ok = plan->is_void ? strcmp(status, "void") == 0 ||
                                        json_is_string(json_object_get(state, "voided"))
                                  : strcmp(status, "open") == 0 || strcmp(status, "paid") == 0 ||
                                        strcmp(status, "uncollectible") == 0;
    if (!status_ok)
        difference(exporter, plan->number, id, "status: ours %s, Stripe %s",
                   plan->is_void ? "void" : "finalized", status[0] ? status : "(none)");
    const char *stripe_number = string_of(json_object_get(stripe, "metadata"), "invoice_number");
    if (strcmp(stripe_number, plan->number) != 0)
        difference(exporter, plan->number, id, "metadata invoice_number: Stripe \"%s\"",
                   stripe_number);
    return exporter->different - before;
}

/* Reads one object for --check; a failure is reported and counted. */
int check_fetch(struct exporter *exporter, const char *type, const char *number,
                       const char *path, struct stripe_response *response)
{
    char error[1024] = "";
    int rc = stripe_request(exporter->client, "GET", path, NULL, NULL, response, error,
                            sizeof error);
    exporter->requests += response->attempts;
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: %s %s: %s\n", type, number, error);
        exporter->failed++;
    }
    return rc;
}

/*
 * Sums the credit notes of invoice `number` that Stripe should count: those
 * exported and not voided there. Sets *rc when an export state cannot be read.
 */
static int64_t credited_in_stripe(struct exporter *exporter, const struct document_list *list,
                                  const char *number, int *rc)
{
    int64_t sum = 0;
    for (size_t i = 0; i < list->count && *rc == HM_OK; i++) {
        json_t *note = list->documents[i];
        if (!is_credit_note(note) || strcmp(string_of(note, "credited_invoice"), number) != 0)
            continue;
        json_t *state = state_load(exporter->ledger, list->numbers[i], rc);
        if (state != NULL && json_object_get(state, "credit_note") != NULL &&
            json_object_get(state, "voided") == NULL)
            sum += minor_of(note, "amount");
        json_decref(state);
    }
    return sum;
}

/*
 * Compares the credit notes that Stripe counts on an invoice with the
 * exported ones: a credit note made twice (a rerun after Stripe forgot the
 * idempotency key) or by hand shows here.
 */
static void check_credited(struct exporter *exporter, const struct invoice_plan *plan,
                           const char *id, json_t *stripe, int64_t ours)
{
    json_t *before = json_object_get(stripe, "pre_payment_credit_notes_amount");
    json_t *after = json_object_get(stripe, "post_payment_credit_notes_amount");
    if (!json_is_integer(before) && !json_is_integer(after))
        return; /* an invoice object without the fields gives no credit note amounts */
    int64_t theirs = (int64_t)(json_integer_value(before) + json_integer_value(after));
    if (theirs == ours)
        return;
    char ours_text[MONEY_TEXT_SIZE], theirs_text[MONEY_TEXT_SIZE];
    amount_text(plan, ours, ours_text, sizeof ours_text);
    amount_text(plan, theirs, theirs_text, sizeof theirs_text);
    difference(exporter, plan->number, id, "credit notes: ours %s %s exported, Stripe counts %s "
               "%s; compare the invoice's credit notes in the Stripe Dashboard", ours_text,
               plan->currency->code, theirs_text, plan->currency->code);
}

static void check_invoice(struct exporter *exporter, const struct document_list *list,
                          const char *number, json_t *document)
{
    struct invoice_plan plan;
    char error[1024] = "";
    int rc = plan_build(number, document, &plan, error, sizeof error);
    json_t *state = rc == HM_OK ? state_load(exporter->ledger, number, &rc) : NULL;
    exporter->invoices++;
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: %s\n", error[0] ? error : hm_status_str(rc));
        exporter->failed++;
        plan_free(&plan);
        return;
    }
    const char *id = string_of(state, "invoice");
    if (!json_is_true(json_object_get(state, "finalized"))) {
        if (plan.is_void && (json_object_get(state, "customer") == NULL ||
                             json_is_true(json_object_get(state, "deleted")))) {
            /* Void before its export finished: Stripe keeps no invoice for it, as it should. */
            exporter->void_not_exported++;
            fprintf(exporter->out, "%s -: not exported: void before its export finished, so "
                    "Stripe has no invoice for it\n", number);
        } else
            difference(exporter, number, id[0] ? id : "-", "not exported to Stripe yet; run "
                       "meterctl export stripe");
        json_decref(state);
        plan_free(&plan);
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/invoices/%s", id);
    struct stripe_response response;
    rc = check_fetch(exporter, "invoice", number, path, &response);
    size_t differences = rc == HM_OK ? check_compare(exporter, &plan, state, response.body) : 0;
    if (rc == HM_OK) {
        size_t before = exporter->different;
        int64_t ours = credited_in_stripe(exporter, list, number, &rc);
        if (rc == HM_OK)
            check_credited(exporter, &plan, id, response.body, ours);
        else
            exporter->failed++;
        differences += exporter->different - before;
    }
    if (rc == HM_OK && differences == 0) {
        char total[MONEY_TEXT_SIZE];
        amount_text(&plan, plan.total_minor, total, sizeof total);
        exporter->matching++;
        fprintf(exporter->out, "%s %s: matches (total %s %s, Stripe status %s)\n", number, id,
                total, plan.currency->code, string_of(response.body, "status"));
    }
    stripe_response_free(&response);
    json_decref(state);
    plan_free(&plan);
}

static void check_all(struct exporter *exporter, struct document_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        if (is_credit_note(list->documents[i]))
            check_credit_note(exporter, list->numbers[i], list->documents[i]);
        else
            check_invoice(exporter, list, list->numbers[i], list->documents[i]);
    }
    fprintf(exporter->out, "stripe check: invoices=%zu matching=%zu different=%zu "
            "not_exported_void=%zu failed=%zu credit_notes=%zu\n", exporter->invoices,
            exporter->matching, exporter->different, exporter->void_not_exported,
            exporter->failed, exporter->notes);
}

/* ---- One export at a time ---- */

/*
 * Takes an exclusive lock on stripe-export.lock in the ledger's directory, so
 * that two exports never send the same invoice at once. The kernel releases
 * it when the process ends, even when killed. Returns the lock's descriptor,
 * or -1 after printing why.
 */
static int export_lock(struct ledger *ledger)
{
    const char *dir = ledger_path(ledger);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/stripe-export.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        fail("cannot open the export lock %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int busy = errno == EWOULDBLOCK;
        close(fd);
        if (busy)
            fail("another `meterctl export stripe` is running on the ledger in %s (it holds "
                 "%s); wait for it to finish, then run this export again: it sends only what "
                 "is still missing", dir, path);
        else
            fail("cannot lock %s: %s", path, strerror(errno));
        return -1;
    }
    return fd;
}

/* ---- Command ---- */

static const char *option_value(int argc, char **argv, const char *name)
{
    for (int i = 2; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    }
    return NULL;
}

static int options_check(int argc, char **argv)
{
    static const char *const with_value[] = { "--api-base", "--ca-file", "--tenant",
                                              "--api-key-file", "--rate", "--timeout",
                                              "--max-retries", NULL };
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--api-key") == 0 || strncmp(argv[i], "--api-key=", 10) == 0)
            return fail("--api-key is not accepted: a command line is visible to every user of "
                        "the machine; set STRIPE_API_KEY or use --api-key-file FILE (mode 0600)");
        if (strcmp(argv[i], "--check") == 0 || strcmp(argv[i], "--debug") == 0)
            continue;
        int known = 0;
        for (const char *const *name = with_value; *name && !known; name++)
            known = strcmp(argv[i], *name) == 0;
        if (!known)
            return fail("unexpected argument \"%s\"; see meterctl --help", argv[i]);
        if (i + 1 >= argc)
            return fail("option %s needs a value", argv[i]);
        i++;
    }
    return 0;
}

/* Reads an integer option in [min, max] into *out; keeps *out when the option is absent. */
static int number_option(int argc, char **argv, const char *name, long min, long max,
                         const char *unit, long *out)
{
    const char *text = option_value(argc, argv, name);
    if (text == NULL)
        return 0;
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return fail("invalid %s \"%s\": give %s from %ld to %ld", name, text, unit, min, max);
    *out = value;
    return 0;
}

static int client_options(int argc, char **argv, struct stripe_client_options *options)
{
    stripe_client_options_default(options);
    const char *base = option_value(argc, argv, "--api-base");
    if (base != NULL)
        options->api_base = base;
    options->ca_file = option_value(argc, argv, "--ca-file");
    if (options->ca_file != NULL && access(options->ca_file, R_OK) != 0)
        return fail("cannot read --ca-file %s: %s", options->ca_file, strerror(errno));
    long rate = options->rate_per_second, timeout_s = STRIPE_TIMEOUT_S_DEFAULT;
    long retries = options->max_retries;
    if (number_option(argc, argv, "--rate", 1, STRIPE_RATE_MAX, "requests per second", &rate) ||
        number_option(argc, argv, "--timeout", 1, STRIPE_TIMEOUT_S_MAX, "seconds", &timeout_s) ||
        number_option(argc, argv, "--max-retries", 0, STRIPE_RETRIES_MAX, "retries", &retries))
        return 1;
    options->rate_per_second = (unsigned)rate;
    options->timeout_ms = timeout_s * 1000;
    options->max_retries = (unsigned)retries;
    return 0;
}

int export_stripe_command(struct ledger *ledger, int argc, char **argv, FILE *out)
{
    if (argc < 2 || strcmp(argv[1], "stripe") != 0)
        return fail("unknown export \"%s\": use meterctl export stripe",
                    argc < 2 ? "" : argv[1]);
    struct stripe_client_options options;
    if (options_check(argc, argv) || client_options(argc, argv, &options))
        return 1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--debug") == 0)
            log_set_level("debug");
    }
    int check = 0;
    for (int i = 2; i < argc; i++)
        check |= strcmp(argv[i], "--check") == 0;

    struct document_list list = { 0 };
    char tenant_id[UUID_TEXT_SIZE];
    const char *tenant_name = option_value(argc, argv, "--tenant");
    if (tenant_name != NULL) {
        struct tenant tenant;
        int rc = ledger_tenant_find(ledger, tenant_name, &tenant);
        if (rc == HM_ERR_NOT_FOUND)
            return fail("tenant \"%s\" not found; `meterctl tenant list` shows the tenants",
                        tenant_name);
        if (rc != HM_OK)
            return fail("cannot read tenant \"%s\": %s", tenant_name, hm_status_str(rc));
        uuid_format(tenant.id, tenant_id);
        list.tenant_id = tenant_id;
    }

    char key[STRIPE_API_KEY_MAX + 1], error[1024];
    if (export_stripe_key_load(option_value(argc, argv, "--api-key-file"), key, error,
                               sizeof error) != HM_OK)
        return fail("%s", error);
    options.api_key = key;
    struct exporter exporter = { .ledger = ledger, .out = out, .tenant_id = list.tenant_id };
    int rc = stripe_client_open(&exporter.client, &options, error, sizeof error);
    explicit_bzero(key, sizeof key);
    if (rc != HM_OK)
        return fail("%s", error);

    rc = ledger_document_each(ledger, document_collect, &list);
    if (rc != HM_OK) {
        stripe_client_close(exporter.client);
        document_list_free(&list);
        return fail("cannot read the invoices: %s", hm_status_str(rc));
    }
    /* --check sends nothing, so it needs no lock. */
    int lock = check ? -1 : export_lock(ledger);
    if (!check && lock < 0) {
        stripe_client_close(exporter.client);
        document_list_free(&list);
        return 1;
    }
    if (check)
        check_all(&exporter, &list);
    else
        export_all(&exporter, &list);
    if (lock >= 0)
        close(lock);
    stripe_client_close(exporter.client);
    document_list_free(&list);
    return exporter.failed > 0 || exporter.different > 0 ? 1 : 0;
}
