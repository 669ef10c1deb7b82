#include "billing.h"
#include "usage_input.h"

#include "rollup/json_build.h"
#include "common/log.h"
#include "common/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert((int)ROLLUP_GPU_SECONDS == (int)METER_GPU_SECONDS, "meters share numbers");
_Static_assert((int)ROLLUP_INPUT_TOKENS == (int)METER_INPUT_TOKENS, "meters share numbers");
_Static_assert((int)ROLLUP_OUTPUT_TOKENS == (int)METER_OUTPUT_TOKENS, "meters share numbers");
_Static_assert((int)ROLLUP_CACHED_INPUT_TOKENS == (int)METER_CACHED_INPUT_TOKENS,
               "meters share numbers");
_Static_assert((int)ROLLUP_API_CALLS == (int)METER_API_CALLS, "meters share numbers");
_Static_assert((int)ROLLUP_STORAGE_BYTE_SECONDS == (int)METER_STORAGE_BYTE_SECONDS,
               "meters share numbers");
_Static_assert((int)ROLLUP_TRANSFER_BYTES == (int)METER_TRANSFER_BYTES, "meters share numbers");

int billing_usage_totals(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                         const struct pricebook *book, struct usage_totals *usage,
                         uint64_t *event_count_out, char *error, size_t error_size)
{
    struct tenant_settings settings;
    int rc = ledger_tenant_settings_get(ledger, tenant->id, &settings);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the settings of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    return billing_usage_totals_with(ledger, tenant, &settings, period, book, usage,
                                     event_count_out, error, error_size);
}

int billing_usage_totals_with(struct ledger *ledger, const struct tenant *tenant,
                              const struct tenant_settings *settings, uint32_t period,
                              const struct pricebook *book, struct usage_totals *usage,
                              uint64_t *event_count_out, char *error, size_t error_size)
{
    enum support_tier tier = SUPPORT_NONE;
    if (support_tier_parse(settings->support_tier, &tier) != HM_OK) {
        snprintf(error, error_size, "tenant %s has the unknown support tier \"%s\"; set one with "
                 "`meterctl tenant set %s --support-tier none|basic|pro|enterprise`",
                 tenant->name, settings->support_tier, tenant->name);
        return HM_ERR_STORAGE;
    }
    int64_t start_s = period_start_us(period) / 1000000;
    int64_t end_s = period_start_us(period_next(period)) / 1000000;
    int64_t starts[USAGE_INPUT_SLICES_MAX];
    size_t slice_count = 0;
    int rc = pricebook_slices(book, start_s, end_s, starts, USAGE_INPUT_SLICES_MAX, &slice_count);
    if (rc == HM_ERR_NOT_FOUND) {
        snprintf(error, error_size, "tenant %s: price book \"%s\" has no version in effect at "
                 "the start of %04u-%02u; give its first version an earlier effective_from",
                 tenant->name, book->name, period / 100, period % 100);
        return rc;
    }
    if (rc != HM_OK) {
        snprintf(error, error_size, "tenant %s: cannot cut %04u-%02u into the versions of price "
                 "book \"%s\": %s", tenant->name, period / 100, period % 100, book->name,
                 hm_status_str(rc));
        return rc;
    }
    rc = usage_input_build(ledger, tenant, period, starts, slice_count, usage, event_count_out,
                           error, error_size);
    if (rc != HM_OK)
        return rc;
    usage->service_end_s = settings->service_end_s;
    usage->support_tier = tier;
    return HM_OK;
}

/*
 * The price books that one close parsed, by the SHA-256 of their text, so
 * that the tenants on one book share a single parse. The shelf owns them
 * and the closings borrow them.
 */
struct shelf_book {
    char sha256[BOOK_SHA256_HEX_SIZE];
    struct pricebook *book;
};

struct book_shelf {
    struct shelf_book *books;
    size_t count;
};

static void book_shelf_free(struct book_shelf *shelf)
{
    for (size_t i = 0; i < shelf->count; i++)
        pricebook_free(shelf->books[i].book);
    free(shelf->books);
    memset(shelf, 0, sizeof *shelf);
}

/* Returns the parsed book with this SHA-256, or NULL when the shelf (or NULL) has none. */
static struct pricebook *book_shelf_find(const struct book_shelf *shelf, const char *sha256)
{
    for (size_t i = 0; shelf != NULL && i < shelf->count; i++) {
        if (strcmp(shelf->books[i].sha256, sha256) == 0)
            return shelf->books[i].book;
    }
    return NULL;
}

/* Puts a parsed book on the shelf, which then owns it. Frees the book when out of memory. */
static int book_shelf_add(struct book_shelf *shelf, const char *sha256, struct pricebook *book)
{
    struct shelf_book *books = realloc(shelf->books, (shelf->count + 1) * sizeof *books);
    if (books == NULL) {
        pricebook_free(book);
        return HM_ERR_NOMEM;
    }
    shelf->books = books;
    snprintf(books[shelf->count].sha256, sizeof books[shelf->count].sha256, "%s", sha256);
    books[shelf->count].book = book;
    shelf->count++;
    return HM_OK;
}

/*
 * Loads the book of a tenant (its own, else the default) with its text and
 * SHA-256. With a shelf the book comes from it, parsed only the first time,
 * and stays owned by the shelf; without one the caller frees it.
 */
static int pricebook_snapshot_for(struct ledger *ledger, const struct tenant *tenant,
                                  struct book_shelf *shelf, struct pricebook **book_out,
                                  char **text_out, char sha256_out[BOOK_SHA256_HEX_SIZE],
                                  char *error, size_t error_size)
{
    char scope[UUID_TEXT_SIZE];
    uuid_format(tenant->id, scope);
    char *json = NULL;
    int rc = ledger_pricebook_get_snapshot(ledger, scope, &json, sha256_out);
    if (rc == HM_ERR_NOT_FOUND)
        rc = ledger_pricebook_get_snapshot(ledger, "default", &json, sha256_out);
    if (rc == HM_ERR_NOT_FOUND) {
        snprintf(error, error_size,
                 "no price book for tenant %s and no default; load one with "
                 "`meterctl pricebook load FILE`", tenant->name);
        return rc;
    }
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the price book of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    *book_out = book_shelf_find(shelf, sha256_out);
    if (*book_out == NULL) {
        rc = pricebook_parse(json, strlen(json), book_out, error, error_size);
        if (rc == HM_OK && shelf != NULL && (rc = book_shelf_add(shelf, sha256_out,
                                                                   *book_out)) != HM_OK)
            *book_out = NULL;
    }
    if (rc == HM_OK && text_out != NULL)
        *text_out = json;
    else
        free(json);
    return rc;
}

int billing_pricebook_for(struct ledger *ledger, const struct tenant *tenant,
                          struct pricebook **book_out, char *error, size_t error_size)
{
    char sha256[BOOK_SHA256_HEX_SIZE];
    return pricebook_snapshot_for(ledger, tenant, NULL, book_out, NULL, sha256, error,
                                  error_size);
}

/* Everything a rating of a tenant's period reads, gathered from one state of the ledger. */
struct rating_input {
    struct pricebook *book;
    int book_on_shelf; /* 1: the book belongs to the close's book_shelf */
    char *book_text;
    char book_sha256[BOOK_SHA256_HEX_SIZE];
    struct tenant_settings settings;
    struct usage_totals usage;
    uint64_t events;
    char usage_sha256[BOOK_SHA256_HEX_SIZE]; /* see billing_usage_digest */
    struct usage_credit *credits;
    struct billing_late *late; /* every earlier period whose billed state changes */
    size_t late_count;
    struct usage_adjustment *adjustments;
    size_t adjustment_count;
};

static void rating_input_free(struct rating_input *input)
{
    if (!input->book_on_shelf)
        pricebook_free(input->book);
    free(input->book_text);
    usage_input_free(&input->usage);
    free(input->credits);
    free(input->late);
    free(input->adjustments);
    memset(input, 0, sizeof *input);
}

/* Burn order of rating: earliest expiry (never expiring last), earliest grant, lowest id. */
static int credit_burn_compare(const void *a, const void *b)
{
    const struct usage_credit *left = a, *right = b;
    if (left->expires_s != right->expires_s) {
        if (left->expires_s == 0 || right->expires_s == 0)
            return left->expires_s == 0 ? 1 : -1;
        return left->expires_s < right->expires_s ? -1 : 1;
    }
    if (left->granted_s != right->granted_s)
        return left->granted_s < right->granted_s ? -1 : 1;
    return left->id < right->id ? -1 : left->id > right->id;
}

/*
 * Passes the tenant's grants that apply to the period (a balance, the book's
 * currency, not expired at the period's start) to rating. Rating takes at
 * most USAGE_CREDITS_MAX grants, so a tenant with more passes the first ones
 * in burn order: they are the ones rating burns first, and the others wait
 * for a later close.
 */
static int credits_load(struct ledger *ledger, const struct tenant *tenant,
                        struct rating_input *input, char *error, size_t error_size)
{
    struct credit_grant *grants = NULL;
    size_t count = 0;
    int rc = ledger_credit_list(ledger, tenant->id, &grants, &count);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the credit grants of tenant %s: %s",
                 tenant->name, hm_status_str(rc));
        return rc;
    }
    input->credits = calloc(count + 1, sizeof *input->credits);
    if (input->credits == NULL) {
        ledger_credit_grants_free(grants, count);
        return HM_ERR_NOMEM;
    }
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (grants[i].balance_minor <= 0)
            continue;
        /* Rating leaves such a grant alone, so a warning keeps its balance from going unnoticed. */
        if (strcmp(grants[i].currency, input->book->currency->code) != 0) {
            fprintf(stderr, "meterctl: warning: tenant %s: credit grant %llu is in %s, but price "
                    "book \"%s\" bills in %s, so the grant is not used; revoke it with "
                    "`meterctl credit revoke %llu --reason TEXT` and grant the credit in %s\n",
                    tenant->name, (unsigned long long)grants[i].id, grants[i].currency,
                    input->book->name, input->book->currency->code,
                    (unsigned long long)grants[i].id, input->book->currency->code);
            continue;
        }
        if (grants[i].expires_s != 0 && grants[i].expires_s <= input->usage.period_start_s)
            continue;
        struct usage_credit *credit = &input->credits[used++];
        credit->id = grants[i].id;
        memcpy(credit->currency, grants[i].currency, sizeof credit->currency);
        credit->balance_minor = grants[i].balance_minor;
        credit->granted_s = grants[i].granted_s;
        credit->expires_s = grants[i].expires_s;
    }
    ledger_credit_grants_free(grants, count);
    if (used > USAGE_CREDITS_MAX) {
        qsort(input->credits, used, sizeof *input->credits, credit_burn_compare);
        used = USAGE_CREDITS_MAX;
    }
    input->usage.credits = input->credits;
    input->usage.credit_count = used;
    return HM_OK;
}

/*
 * Describes a late usage correction of an earlier period. A period can change
 * without late events of its own: a late storage sample of an earlier month
 * carries its level into the months after it.
 */
static void late_description(const struct billing_late *late, char *out, size_t size)
{
    uint64_t events = late->events_now - late->events_billed;
    if (events > 0)
        snprintf(out, size, "Late usage for %04u-%02u: %llu events", late->period / 100,
                 late->period % 100, (unsigned long long)events);
    else if (late->has_storage)
        snprintf(out, size, "Late usage for %04u-%02u: storage level from late earlier samples",
                 late->period / 100, late->period % 100);
    else
        snprintf(out, size, "Late usage for %04u-%02u: re-rated, no late events",
                 late->period / 100, late->period % 100);
}

/* Turns the late usage that raised an earlier period's amount into adjustments of this invoice. */
static int adjustments_build(const struct tenant *tenant, struct rating_input *input,
                             char *error, size_t error_size)
{
    input->adjustments = calloc(input->late_count + 1, sizeof *input->adjustments);
    if (input->adjustments == NULL)
        return HM_ERR_NOMEM;
    for (size_t i = 0; i < input->late_count; i++) {
        const struct billing_late *late = &input->late[i];
        if (late->difference_minor <= 0)
            continue;
        if (late->currency != input->book->currency) {
            snprintf(error, error_size, "tenant %s: late usage of %04u-%02u is priced in %s, but "
                     "this period's book is in %s; issue the difference by hand and void or "
                     "correct invoice %s", tenant->name, late->period / 100, late->period % 100,
                     late->currency->code, input->book->currency->code, late->number);
            return HM_ERR_INVALID;
        }
        if (input->adjustment_count == USAGE_ADJUSTMENTS_MAX) {
            snprintf(error, error_size, "tenant %s has late usage in more than %d earlier periods",
                     tenant->name, USAGE_ADJUSTMENTS_MAX);
            return HM_ERR_INVALID;
        }
        struct usage_adjustment *adjustment = &input->adjustments[input->adjustment_count++];
        adjustment->period = late->period;
        adjustment->amount_minor = late->difference_minor;
        adjustment->event_count = late->events_now - late->events_billed;
        late_description(late, adjustment->description, sizeof adjustment->description);
    }
    input->usage.adjustments = input->adjustments;
    input->usage.adjustment_count = input->adjustment_count;
    return HM_OK;
}

/*
 * Gathers the rating input of a tenant's period: settings, the book with its
 * snapshot hash (from `shelf` when not NULL), usage, credit grants (unless
 * with_credits is 0) and the late usage of earlier periods.
 */
static int rating_input_build(struct ledger *ledger, const struct tenant *tenant,
                              uint32_t period, int with_credits, struct book_shelf *shelf,
                              struct rating_input *input, char *error, size_t error_size)
{
    memset(input, 0, sizeof *input);
    input->book_on_shelf = shelf != NULL;
    int rc = pricebook_snapshot_for(ledger, tenant, shelf, &input->book, &input->book_text,
                                    input->book_sha256, error, error_size);
    if (rc == HM_OK)
        rc = ledger_tenant_settings_get(ledger, tenant->id, &input->settings);
    if (rc == HM_OK) {
        rc = billing_usage_totals_with(ledger, tenant, &input->settings, period, input->book,
                                       &input->usage, &input->events, error, error_size);
    }
    if (rc == HM_OK)
        rc = billing_usage_digest(&input->usage, input->usage_sha256);
    if (rc == HM_OK && with_credits)
        rc = credits_load(ledger, tenant, input, error, error_size);
    if (rc == HM_OK)
        rc = billing_late_usage(ledger, tenant, period, &input->late, &input->late_count, error,
                                error_size);
    if (rc == HM_OK)
        rc = adjustments_build(tenant, input, error, error_size);
    if (rc != HM_OK)
        rating_input_free(input);
    return rc;
}

/* Rates a draft, with or without the tenant's credit grants. */
static int draft_rate(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                      int with_credits, struct invoice *invoice, uint64_t *event_count_out,
                      char *error, size_t error_size)
{
    struct rating_input input;
    int rc = rating_input_build(ledger, tenant, period, with_credits, NULL, &input, error,
                                error_size);
    if (rc != HM_OK)
        return rc;
    rc = pricing_rate(&input.usage, input.book, invoice, error, error_size);
    if (event_count_out != NULL)
        *event_count_out = input.events;
    rating_input_free(&input);
    return rc;
}

int billing_draft(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                  struct invoice *invoice, uint64_t *event_count_out, char *error,
                  size_t error_size)
{
    return draft_rate(ledger, tenant, period, 1, invoice, event_count_out, error, error_size);
}

int billing_draft_without_credits(struct ledger *ledger, const struct tenant *tenant,
                                  uint32_t period, struct invoice *invoice, char *error,
                                  size_t error_size)
{
    return draft_rate(ledger, tenant, period, 0, invoice, NULL, error, error_size);
}

int64_t billing_usage_net_minor(const struct invoice *invoice)
{
    int64_t amount = invoice->subtotal.minor - invoice->discount_total.minor;
    for (size_t i = 0; i < invoice->line_count; i++) {
        if (invoice->lines[i].kind == INVOICE_LINE_ADJUSTMENT)
            amount -= invoice->lines[i].amount.minor;
    }
    return amount;
}

int billing_event_count(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                        uint64_t *count_out)
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = ledger_rollups_stored(ledger, tenant->id, period, &rows, &count);
    if (rc != HM_OK)
        return rc;
    uint64_t events = 0;
    for (size_t i = 0; i < count; i++) {
        if (rows[i].meter == ROLLUP_EVENTS)
            events += (uint64_t)rows[i].quantity;
    }
    free(rows);
    *count_out = events;
    return HM_OK;
}

/* ---- Late usage of earlier periods ---- */

int64_t billing_billed_usage_minor(const struct billed_period *billed)
{
    int64_t amount = billed->net_minor;
    for (size_t i = 0; i < billed->change_count; i++) {
        if (billed->changes[i].late_usage)
            amount += billed->changes[i].amount_minor;
    }
    return amount;
}

int billing_usage_digest(const struct usage_totals *usage, char hex_out[BOOK_SHA256_HEX_SIZE])
{
    /*
     * One line per item, in the item order of usage_input_build: meter,
     * dimension length and bytes, slice start and quantity, so that no two
     * inputs give the same text. Event counts stay out: they price nothing.
     */
    EVP_MD_CTX *context = EVP_MD_CTX_new();
    int ok = context != NULL && EVP_DigestInit_ex(context, EVP_sha256(), NULL);
    for (size_t i = 0; ok && i < usage->item_count; i++) {
        const struct usage_item *item = &usage->items[i];
        char quantity[MONEY_TEXT_SIZE];
        if (money_int128_format((__int128)item->quantity, quantity, sizeof quantity) != HM_OK)
            ok = 0;
        char line[256];
        int size = snprintf(line, sizeof line, "%d %zu:%s %lld %s\n", (int)item->meter,
                            strlen(item->dimension), item->dimension, (long long)item->start_s,
                            quantity);
        ok = ok && size > 0 && (size_t)size < sizeof line &&
             EVP_DigestUpdate(context, line, (size_t)size);
    }
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    ok = ok && EVP_DigestFinal_ex(context, digest, &digest_size) && digest_size == 32;
    EVP_MD_CTX_free(context);
    if (!ok)
        return HM_ERR_NOMEM;
    hex_encode(digest, 32, hex_out);
    return HM_OK;
}

/* The price book snapshots that billing_late_usage parsed, by SHA-256: months share a book. */
struct book_cache {
    char sha256[BOOK_SHA256_HEX_SIZE];
    struct pricebook *book;
};

/* Returns the parsed snapshot of a billed period from the cache, parsing it on first use. */
static int book_cache_get(struct ledger *ledger, const struct tenant *tenant,
                          const struct billed_period *billed, struct book_cache *cache,
                          const struct pricebook **book_out, char *error, size_t error_size)
{
    if (cache->book != NULL && strcmp(cache->sha256, billed->book_sha256) == 0) {
        *book_out = cache->book;
        return HM_OK;
    }
    char *text = NULL;
    int rc = ledger_book_snapshot_get(ledger, billed->book_sha256, &text);
    if (rc != HM_OK) {
        snprintf(error, error_size, "tenant %s: the price book %s that %04u-%02u was billed with "
                 "cannot be read (%s), so its late usage cannot be rated", tenant->name,
                 billed->book_sha256, billed->period / 100, billed->period % 100,
                 hm_status_str(rc));
        return rc;
    }
    struct pricebook *book = NULL;
    rc = pricebook_parse(text, strlen(text), &book, error, error_size);
    free(text);
    if (rc != HM_OK)
        return rc;
    pricebook_free(cache->book);
    cache->book = book;
    snprintf(cache->sha256, sizeof cache->sha256, "%s", billed->book_sha256);
    *book_out = book;
    return HM_OK;
}

/*
 * Reads a billed period's usage now, with the snapshot and the tenant
 * settings it was billed with, and compares it with what was billed: its
 * usage digest (records that keep one), its event count, or a recheck after
 * a void. A changed period is re-rated without credits into *late, and
 * *changed_out is set to 1.
 */
static int late_compare(struct ledger *ledger, const struct tenant *tenant,
                        const struct billed_period *billed, struct book_cache *cache,
                        struct billing_late *late, int *changed_out, char *error,
                        size_t error_size)
{
    *changed_out = 0;
    const struct pricebook *book = NULL;
    int rc = book_cache_get(ledger, tenant, billed, cache, &book, error, error_size);
    if (rc != HM_OK)
        return rc;
    /* The period is priced with the settings it was billed with, when its record keeps them. */
    struct tenant billed_tenant = *tenant;
    struct tenant_settings settings;
    rc = ledger_tenant_settings_get(ledger, tenant->id, &settings);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the settings of tenant %s: %s", tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    if (billed->has_billed_with) {
        billed_tenant.service_start_s = billed->service_start_s;
        snprintf(settings.support_tier, sizeof settings.support_tier, "%s", billed->support_tier);
        settings.service_end_s = billed->service_end_s;
    }
    struct usage_totals usage;
    rc = billing_usage_totals_with(ledger, &billed_tenant, &settings, billed->period, book,
                                   &usage, &late->events_now, error, error_size);
    if (rc != HM_OK)
        return rc;
    rc = billing_usage_digest(&usage, late->usage_sha256);
    int changed = billed->recheck || late->events_now != billed->events ||
                  (billed->usage_sha256[0] != '\0' &&
                   strcmp(billed->usage_sha256, late->usage_sha256) != 0);
    for (size_t i = 0; i < usage.item_count; i++)
        late->has_storage |= usage.items[i].meter == METER_STORAGE_BYTE_SECONDS;
    struct invoice invoice;
    if (rc == HM_OK && changed)
        rc = pricing_rate(&usage, book, &invoice, error, error_size);
    usage_input_free(&usage);
    if (rc != HM_OK || !changed)
        return rc;
    int64_t net = invoice.subtotal.minor - invoice.discount_total.minor;
    late->difference_minor = net - billing_billed_usage_minor(billed);
    late->currency = invoice.currency;
    invoice_free(&invoice);
    *changed_out = 1;
    return HM_OK;
}

int billing_late_usage(struct ledger *ledger, const struct tenant *tenant, uint32_t before_period,
                       struct billing_late **late_out, size_t *count_out, char *error,
                       size_t error_size)
{
    struct billed_period *periods = NULL;
    size_t count = 0;
    int rc = ledger_billed_list(ledger, tenant->id, &periods, &count);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the billed periods of tenant %s: %s",
                 tenant->name, hm_status_str(rc));
        return rc;
    }
    struct billing_late *late = calloc(count + 1, sizeof *late);
    size_t late_count = 0;
    struct book_cache cache = { .book = NULL };
    rc = late ? HM_OK : HM_ERR_NOMEM;
    /*
     * NOTE: every close reads the usage of each finalized period of the
     * tenant again (its rollups and storage samples) to compare digests, so
     * its cost grows with the months of history. meterbench closes one month.
     */
    for (size_t i = 0; rc == HM_OK && i < count; i++) {
        const struct billed_period *billed = &periods[i];
        if (before_period != 0 && billed->period >= before_period)
            continue;
        /* NOTE: a period billed before book snapshots were kept has none and is never re-rated. */
        if (billed->book_sha256[0] == '\0')
            continue;
        struct billing_late *entry = &late[late_count];
        memset(entry, 0, sizeof *entry);
        entry->period = billed->period;
        snprintf(entry->number, sizeof entry->number, "%s", billed->number);
        snprintf(entry->issuer, sizeof entry->issuer, "%s", billed->issuer);
        entry->events_billed = billed->events;
        int changed = 0;
        rc = late_compare(ledger, tenant, billed, &cache, entry, &changed, error, error_size);
        /* A void can leave events_billed above the count it compares again. */
        if (entry->events_now < entry->events_billed)
            entry->events_billed = entry->events_now;
        if (rc == HM_OK && changed)
            late_count++;
    }
    pricebook_free(cache.book);
    for (size_t i = 0; i < count; i++)
        ledger_billed_free(&periods[i]);
    free(periods);
    if (rc != HM_OK) {
        free(late);
        return rc;
    }
    *late_out = late;
    *count_out = late_count;
    return HM_OK;
}

/* ---- Closing a period ---- */

struct closing {
    struct tenant tenant;
    struct rating_input input;
    struct invoice invoice;
    json_t *json;
    char number[DOCUMENT_NUMBER_MAX];
    uint64_t meter_events[ROLLUP_EVENTS + 1]; /* see meter_events_read */
};

static int meter_events_read(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                             uint64_t meter_events[ROLLUP_EVENTS + 1]);

static void timestamp_format(int64_t seconds, char *out, size_t size)
{
    time_t at = (time_t)seconds;
    struct tm tm;
    gmtime_r(&at, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int billing_document_seal(json_t *document)
{
    /* The seal covers the canonical form: sorted keys, no whitespace, without the seal itself. */
    json_object_del(document, "sha256");
    char *canonical = json_dumps_whole(document, JSON_SORT_KEYS | JSON_COMPACT);
    if (canonical == NULL)
        return HM_ERR_NOMEM;
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    int ok = EVP_Digest(canonical, strlen(canonical), digest, &digest_size, EVP_sha256(), NULL);
    free(canonical);
    if (!ok)
        return HM_ERR_NOMEM;
    char hex[2 * 32 + 1];
    hex_encode(digest, 32, hex);
    int failed = 0;
    json_add(document, "sha256", json_string(hex), &failed);
    return failed ? HM_ERR_NOMEM : HM_OK;
}

/* Adds the number, issuer, revision, status, close time and seal to a closing's invoice JSON. */
static int invoice_seal(struct closing *closing, int revision, const char *replaces,
                        int64_t closed_s)
{
    json_t *json = closing->json;
    char closed[32];
    timestamp_format(closed_s, closed, sizeof closed);
    const struct invoice *invoice = &closing->invoice;
    int64_t net = invoice->subtotal.minor - invoice->discount_total.minor;
    char net_text[MONEY_TEXT_SIZE];
    money_amount_format((struct money_amount){ net }, invoice->currency, net_text,
                        sizeof net_text);
    int failed = 0;
    json_add(json, "document_type", json_string("invoice"), &failed);
    json_add(json, "number", json_string(closing->number), &failed);
    /* Older readers and exports look for the number here. */
    json_add(json, "invoice_number", json_string(closing->number), &failed);
    json_add(json, "issuer", json_string(closing->input.settings.issuer), &failed);
    json_add(json, "revision", json_integer(revision), &failed);
    if (replaces != NULL)
        json_add(json, "replaces", json_string(replaces), &failed);
    json_add(json, "status", json_string("finalized"), &failed);
    json_add(json, "closed_at", json_string(closed), &failed);
    json_add(json, "price_book_sha256", json_string(closing->input.book_sha256), &failed);
    json_add(json, "event_count", json_integer((json_int_t)closing->input.events), &failed);
    json_add(json, "billed_net",
             json_pack("{s:s, s:I}", "amount", net_text, "amount_minor", (json_int_t)net),
             &failed);
    return failed ? HM_ERR_NOMEM : billing_document_seal(json);
}

/* Reports invoice files that a command could not write after its commit. */
static int files_failed_report(uint32_t period, const char *invoices_dir)
{
    fprintf(stderr, "meterctl: period %04u-%02u is closed and its documents are sealed in the "
            "ledger, which stays the record, but some files under %s were not written (see "
            "above); fix the cause and run `meterctl close --period %04u-%02u` again, which "
            "writes the missing files\n", period / 100, period % 100, invoices_dir,
            period / 100, period % 100);
    return HM_ERR_IO;
}

static void summary_print(FILE *out, uint32_t period, struct closing *closings, size_t count,
                          int failures)
{
    fprintf(out, "\nPeriod %04u-%02u closed: %zu invoice%s", period / 100, period % 100, count,
            count == 1 ? "" : "s");
    if (failures > 0)
        fprintf(out, "; %d tenant%s could not be rated and stay%s open", failures,
                failures == 1 ? "" : "s", failures == 1 ? "s" : "");
    fprintf(out, "\n\n");
    fprintf(out, "%-20s %-20s %-8s %6s %16s %14s %14s %16s\n", "invoice", "tenant", "currency",
            "lines", "subtotal", "discount", "credits", "total");
    for (size_t i = 0; i < count; i++) {
        const struct invoice *invoice = &closings[i].invoice;
        char subtotal[MONEY_TEXT_SIZE], discount[MONEY_TEXT_SIZE], credits[MONEY_TEXT_SIZE];
        char total[MONEY_TEXT_SIZE];
        money_amount_format(invoice->subtotal, invoice->currency, subtotal, sizeof subtotal);
        struct money_amount taken_off = { -invoice->discount_total.minor };
        money_amount_format(taken_off, invoice->currency, discount, sizeof discount);
        struct money_amount credited = { -invoice->credits_applied.minor };
        money_amount_format(credited, invoice->currency, credits, sizeof credits);
        money_amount_format(invoice->total, invoice->currency, total, sizeof total);
        fprintf(out, "%-20s %-20s %-8s %6zu %16s %14s %14s %16s\n", closings[i].number,
                closings[i].tenant.name, invoice->currency->code, invoice->line_count, subtotal,
                discount, credits, total);
    }
}

/* Frees the closings, then the books they borrowed from the shelf. */
static void closings_free(struct closing *closings, size_t count, struct book_shelf *shelf)
{
    for (size_t i = 0; i < count; i++) {
        invoice_free(&closings[i].invoice);
        json_decref(closings[i].json);
        rating_input_free(&closings[i].input);
    }
    free(closings);
    book_shelf_free(shelf);
}

/* Rates one tenant's open period into a closing. Returns 1 when it gets no invoice. */
static int close_rate_one(struct ledger *ledger, uint32_t period, struct book_shelf *shelf,
                          struct closing *closing, char *error, size_t error_size)
{
    int rc = rating_input_build(ledger, &closing->tenant, period, 1, shelf, &closing->input,
                                error, error_size);
    if (rc != HM_OK)
        return rc;
    rc = pricing_rate(&closing->input.usage, closing->input.book, &closing->invoice, error,
                      error_size);
    if (rc != HM_OK) {
        rating_input_free(&closing->input);
        return rc;
    }
    /* A tenant outside its service during the whole period, that used nothing in it, gets no invoice. */
    int64_t period_start_s = period_start_us(period) / 1000000;
    int64_t period_end_s = period_start_us(period_next(period)) / 1000000;
    int64_t service_end_s = closing->input.settings.service_end_s;
    if (closing->invoice.line_count == 0 &&
        (closing->tenant.service_start_s >= period_end_s ||
         (service_end_s != 0 && service_end_s <= period_start_s))) {
        invoice_free(&closing->invoice);
        rating_input_free(&closing->input);
        return 1;
    }
    rc = meter_events_read(ledger, &closing->tenant, period, closing->meter_events);
    if (rc == HM_OK)
        rc = invoice_to_json(&closing->invoice, &closing->json);
    if (rc != HM_OK) {
        invoice_free(&closing->invoice);
        rating_input_free(&closing->input);
    }
    return rc;
}

/*
 * Rates every tenant whose period is open. A tenant that cannot be rated
 * (its price book or usage is invalid) is reported on stderr, counted in
 * *failures_out and left out, so that it stays open while the others close.
 * A failed read of the ledger (HM_ERR_STORAGE, HM_ERR_IO, HM_ERR_NOMEM) is
 * reported on stderr and returned, and the close stops.
 */
static int close_rate_all(struct ledger *ledger, uint32_t period, struct book_shelf *shelf,
                          struct closing **out, size_t *count_out, int *failures_out,
                          size_t *sealed_out)
{
    struct tenant *tenants = NULL;
    size_t tenant_count = 0;
    int rc = ledger_tenant_list(ledger, &tenants, &tenant_count);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: period %04u-%02u not closed: cannot list the tenants: %s\n",
                period / 100, period % 100, hm_status_str(rc));
        return rc;
    }
    struct closing *closings = calloc(tenant_count ? tenant_count : 1, sizeof *closings);
    if (closings == NULL) {
        free(tenants);
        return HM_ERR_NOMEM;
    }
    size_t count = 0, sealed = 0;
    int failures = 0;
    for (size_t i = 0; i < tenant_count; i++) {
        int closed = ledger_period_closed(ledger, tenants[i].id, period);
        if (closed < 0) {
            fprintf(stderr, "meterctl: period %04u-%02u not closed: cannot read whether it is "
                    "closed for tenant %s: %s\n", period / 100, period % 100, tenants[i].name,
                    hm_status_str(closed));
            free(tenants);
            closings_free(closings, count, shelf);
            return closed;
        }
        if (closed > 0) {
            sealed++;
            fprintf(stderr, "meterctl: tenant %s: period %04u-%02u is already closed; "
                    "skipped\n", tenants[i].name, period / 100, period % 100);
            continue;
        }
        struct closing *closing = &closings[count];
        memset(closing, 0, sizeof *closing);
        closing->tenant = tenants[i];
        char error[512] = "";
        rc = close_rate_one(ledger, period, shelf, closing, error, sizeof error);
        if (rc == 1)
            continue;
        if (rc == HM_ERR_STORAGE || rc == HM_ERR_IO || rc == HM_ERR_NOMEM) {
            /* The ledger, not the tenant's data, failed: no tenant closes on a partial read. */
            fprintf(stderr, "meterctl: period %04u-%02u not closed: cannot read the usage of "
                    "tenant %s: %s\n", period / 100, period % 100, tenants[i].name,
                    error[0] ? error : hm_status_str(rc));
            free(tenants);
            closings_free(closings, count, shelf);
            return rc;
        }
        if (rc != HM_OK) {
            fprintf(stderr, "meterctl: cannot rate tenant %s for %04u-%02u: %s\n",
                    tenants[i].name, period / 100, period % 100,
                    error[0] ? error : hm_status_str(rc));
            failures++;
            continue;
        }
        count++;
    }
    free(tenants);
    *out = closings;
    *count_out = count;
    *failures_out = failures;
    *sealed_out = sealed;
    return HM_OK;
}

static int close_failures_report(uint32_t period, int failures)
{
    fprintf(stderr, "meterctl: %d tenant%s could not be rated and stay%s open for %04u-%02u; "
            "fix the errors above and run close again, which closes only the open ones\n",
            failures, failures == 1 ? "" : "s", failures == 1 ? "s" : "", period / 100,
            period % 100);
    return HM_ERR_INVALID;
}

/* Returns 1 when the rated invoice carries the adjustment line of an earlier period. */
static int invoice_has_adjustment(const struct invoice *invoice, uint32_t period)
{
    for (size_t i = 0; i < invoice->line_count; i++) {
        if (invoice->lines[i].kind == INVOICE_LINE_ADJUSTMENT &&
            invoice->lines[i].adjusted_period == period)
            return 1;
    }
    return 0;
}

/*
 * Builds and stores a sealed credit note against invoice `billed->number`
 * and records it in the billed state (not yet stored). Shared by the close
 * (late usage that lowered an amount) and `invoice credit-note`.
 */
static int credit_note_issue(struct ledger_txn *txn, json_t *invoice, struct billed_period *billed,
                             int64_t amount_minor, const char *reason, int late_usage,
                             uint64_t events, int64_t now_s, char *number_out)
{
    const char *issuer = json_string_value(json_object_get(invoice, "issuer"));
    if (issuer == NULL)
        issuer = ISSUER_DEFAULT;
    int rc = ledger_number_next(txn, issuer, DOCUMENT_CREDIT_NOTE, number_out,
                                DOCUMENT_NUMBER_MAX);
    if (rc != HM_OK)
        return rc;
    const struct money_currency *currency = NULL;
    const char *code = json_string_value(json_object_get(invoice, "currency"));
    if (code == NULL || money_currency_find(code, &currency) != HM_OK)
        return HM_ERR_STORAGE;
    char amount[MONEY_TEXT_SIZE], issued[32];
    money_amount_format((struct money_amount){ amount_minor }, currency, amount, sizeof amount);
    timestamp_format(now_s, issued, sizeof issued);
    json_t *note = json_pack("{s:s, s:s, s:s, s:O, s:O, s:O, s:O, s:O, s:{s:s, s:I}, s:s, s:s, "
                             "s:s, s:i, s:s}",
                             "document_type", "credit_note", "number", number_out, "issuer",
                             issuer, "tenant_id", json_object_get(invoice, "tenant_id"),
                             "tenant_name", json_object_get(invoice, "tenant_name"), "period",
                             json_object_get(invoice, "period"), "currency",
                             json_object_get(invoice, "currency"), "currency_exponent",
                             json_object_get(invoice, "currency_exponent"), "amount", "amount",
                             amount, "amount_minor", (json_int_t)amount_minor, "reason", reason,
                             "kind", late_usage ? "late_usage" : "manual", "status", "finalized",
                             "revision", 1, "issued_at", issued);
    if (note == NULL)
        return HM_ERR_NOMEM;
    int failed = json_object_set(note, "credited_invoice",
                                 json_object_get(invoice, "number")
                                     ? json_object_get(invoice, "number")
                                     : json_object_get(invoice, "invoice_number")) != 0;
    json_t *book = json_object_get(invoice, "price_book_sha256");
    if (book != NULL && json_object_set(note, "price_book_sha256", book) != 0)
        failed = 1;
    if (late_usage)
        json_add(note, "events", json_integer((json_int_t)events), &failed);
    rc = failed ? HM_ERR_NOMEM : billing_document_seal(note);
    char *text = rc == HM_OK ? json_dumps_whole(note, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(note);
    if (text == NULL)
        return HM_ERR_NOMEM;
    rc = ledger_document_put(txn, number_out, text);
    free(text);
    if (rc != HM_OK)
        return rc;

    struct billed_change *grown = realloc(billed->changes,
                                          (billed->change_count + 1) * sizeof *grown);
    if (grown == NULL)
        return HM_ERR_NOMEM;
    billed->changes = grown;
    struct billed_change *change = &billed->changes[billed->change_count++];
    memset(change, 0, sizeof *change);
    snprintf(change->number, sizeof change->number, "%s", number_out);
    change->amount_minor = -amount_minor;
    change->events_after = events;
    change->late_usage = late_usage;
    return HM_OK;
}

/* Sum of the credit notes issued against a billed period's invoice, as a positive amount. */
static int64_t credited_minor(const struct billed_period *billed)
{
    int64_t credited = 0;
    for (size_t i = 0; i < billed->change_count; i++) {
        if (billed->changes[i].amount_minor < 0)
            credited -= billed->changes[i].amount_minor;
    }
    return credited;
}

/*
 * Stores the new billed state of one earlier period with late usage: an
 * adjustment on this invoice, a credit note against its invoice, or only the
 * new event count when the amount did not change.
 */
static int late_store(struct ledger_txn *txn, struct closing *closing,
                      const struct billing_late *late, int64_t now_s, FILE *out)
{
    const struct tenant *tenant = &closing->tenant;
    struct billed_period billed;
    int rc = ledger_billed_get_txn(txn, tenant->id, late->period, &billed);
    if (rc != HM_OK)
        return rc;
    int64_t difference = late->difference_minor;
    if (difference > 0 && !invoice_has_adjustment(&closing->invoice, late->period)) {
        /* The rater left the adjustment out, so the period stays pending for the next close. */
        fprintf(stderr, "meterctl: tenant %s: late usage of %04u-%02u is not on invoice %s; it "
                "stays pending for the next close\n", tenant->name, late->period / 100,
                late->period % 100, closing->number);
        ledger_billed_free(&billed);
        return HM_OK;
    }
    if (difference > 0) {
        struct billed_change *grown = realloc(billed.changes,
                                              (billed.change_count + 1) * sizeof *grown);
        if (grown == NULL) {
            ledger_billed_free(&billed);
            return HM_ERR_NOMEM;
        }
        billed.changes = grown;
        struct billed_change *change = &billed.changes[billed.change_count++];
        memset(change, 0, sizeof *change);
        snprintf(change->number, sizeof change->number, "%s", closing->number);
        change->amount_minor = difference;
        change->events_after = late->events_now;
        change->late_usage = 1;
    } else if (difference < 0) {
        char *text = NULL;
        json_t *invoice = NULL;
        rc = ledger_document_get_txn(txn, billed.number, &text);
        if (rc == HM_OK) {
            json_error_t json_error;
            invoice = json_loads(text, 0, &json_error);
            rc = invoice ? HM_OK : HM_ERR_STORAGE;
        }
        free(text);
        /* NOTE: credit notes never total more than the invoice; a larger decrease is cut there. */
        int64_t room = billed.total_minor - credited_minor(&billed);
        int64_t amount = -difference < room ? -difference : room;
        if (rc == HM_OK && amount < -difference)
            fprintf(stderr, "meterctl: tenant %s: late usage lowered %04u-%02u by %lld minor "
                    "units, but only %lld remain to credit on invoice %s\n", tenant->name,
                    late->period / 100, late->period % 100, (long long)-difference,
                    (long long)room, billed.number);
        char reason[USAGE_ADJUSTMENT_TEXT_MAX + 1];
        late_description(late, reason, sizeof reason);
        char number[DOCUMENT_NUMBER_MAX] = "";
        if (rc == HM_OK && amount > 0)
            rc = credit_note_issue(txn, invoice, &billed, amount, reason, 1, late->events_now,
                                   now_s, number);
        json_decref(invoice);
        if (rc == HM_OK && number[0] != '\0')
            fprintf(out, "credit note %s for %s against %s (%04u-%02u): %s\n", number,
                    tenant->name, billed.number, late->period / 100, late->period % 100, reason);
    }
    billed.events = late->events_now;
    snprintf(billed.usage_sha256, sizeof billed.usage_sha256, "%s", late->usage_sha256);
    billed.recheck = 0;
    if (rc == HM_OK)
        rc = ledger_billed_put(txn, tenant->id, &billed);
    ledger_billed_free(&billed);
    return rc;
}

/*
 * Counts the period's events per meter as `invoice explain` compares them
 * with the lines: the events of each meter's rollups, and for storage the
 * storage events. Kept at close, so that later events do not blur the check.
 */
static int meter_events_read(struct ledger *ledger, const struct tenant *tenant, uint32_t period,
                             uint64_t meter_events[ROLLUP_EVENTS + 1])
{
    struct rollup_row *rows = NULL;
    size_t count = 0;
    int rc = ledger_rollups_stored(ledger, tenant->id, period, &rows, &count);
    if (rc != HM_OK)
        return rc;
    memset(meter_events, 0, (ROLLUP_EVENTS + 1) * sizeof *meter_events);
    for (size_t i = 0; i < count; i++) {
        const struct rollup_row *row = &rows[i];
        if (row->meter == ROLLUP_EVENTS &&
            strcmp(row->dimension, event_kind_name(EVENT_STORAGE)) == 0)
            meter_events[ROLLUP_STORAGE_BYTE_SECONDS] += (uint64_t)row->quantity;
        else if (row->meter != ROLLUP_EVENTS && row->meter != ROLLUP_STORAGE_BYTE_SECONDS)
            meter_events[row->meter] += row->event_count;
    }
    free(rows);
    return HM_OK;
}

/*
 * Reads the revision of a tenant's new invoice for `period`: one more than
 * that of the void invoice a reopened period points at (its number goes to
 * `previous`), or 1 for a period never closed. An invoice of a ledger from
 * before revisions has no "revision" and counts as 1. A failed read or a
 * missing or damaged void invoice is returned, with the tenant, the invoice
 * and the fix in `error`.
 */
static int revision_next_read(struct ledger_txn *txn, const struct tenant *tenant,
                              uint32_t period, char previous[DOCUMENT_NUMBER_MAX],
                              int *revision_out, char *error, size_t error_size)
{
    *revision_out = 1;
    previous[0] = '\0';
    int rc = ledger_invoice_number_txn(txn, tenant->id, period, previous, DOCUMENT_NUMBER_MAX);
    if (rc == HM_ERR_NOT_FOUND)
        return HM_OK;
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read which invoice tenant %s's %04u-%02u points at: "
                 "%s", tenant->name, period / 100, period % 100, hm_status_str(rc));
        return rc;
    }

    char *text = NULL;
    rc = ledger_document_get_txn(txn, previous, &text);
    if (rc == HM_ERR_NOT_FOUND) {
        snprintf(error, error_size, "tenant %s's %04u-%02u was reopened from the void invoice "
                 "%s, which is not stored, so the revision of its new invoice is unknown; "
                 "restore the data directory from a backup", tenant->name, period / 100,
                 period % 100, previous);
        return HM_ERR_STORAGE;
    }
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the void invoice %s that tenant %s's "
                 "%04u-%02u was reopened from: %s", previous, tenant->name, period / 100,
                 period % 100, hm_status_str(rc));
        return rc;
    }
    json_error_t json_error;
    json_t *old = json_loads(text, 0, &json_error);
    free(text);
    json_t *revision = json_object_get(old, "revision");
    json_int_t old_revision = revision == NULL ? 1 : json_integer_value(revision);
    const char *damage = NULL;
    if (old == NULL)
        damage = json_error.text;
    else if (!json_is_object(old))
        damage = "it is not a JSON object";
    else if (old_revision < 1 || old_revision >= INT_MAX)
        damage = "its revision is not a positive integer";
    if (damage != NULL) {
        snprintf(error, error_size, "the void invoice %s that tenant %s's %04u-%02u was "
                 "reopened from is damaged (%s), so the revision of its new invoice is unknown; "
                 "restore the data directory from a backup", previous, tenant->name,
                 period / 100, period % 100, damage);
        json_decref(old);
        return HM_ERR_STORAGE;
    }
    json_decref(old);
    *revision_out = (int)old_revision + 1;
    return HM_OK;
}

/*
 * Stores one closing in the close's transaction: takes the issuer's next
 * number, seals and stores the invoice, points the period at it, keeps the
 * book snapshot and the billed state, burns the credits and settles the
 * late usage of earlier periods. A void invoice that cannot be read or is
 * damaged is described in `error`, which the caller prints.
 */
static int close_store(struct ledger_txn *txn, uint32_t period, struct closing *closing,
                       int64_t now_s, FILE *out, char *error, size_t error_size)
{
    const struct tenant *tenant = &closing->tenant;
    int rc = ledger_number_next(txn, closing->input.settings.issuer, DOCUMENT_INVOICE,
                                closing->number, sizeof closing->number);
    if (rc == HM_ERR_NOT_FOUND)
        fprintf(stderr, "meterctl: tenant %s names the unknown issuer \"%s\"; set another with "
                "`meterctl tenant set %s --issuer NAME`\n", tenant->name,
                closing->input.settings.issuer, tenant->name);
    if (rc != HM_OK)
        return rc;

    char previous[DOCUMENT_NUMBER_MAX] = "";
    int revision = 1;
    rc = revision_next_read(txn, tenant, period, previous, &revision, error, error_size);
    if (rc != HM_OK)
        return rc;
    rc = invoice_seal(closing, revision, previous[0] ? previous : NULL, now_s);
    char *text =
        rc == HM_OK ? json_dumps_whole(closing->json, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    if (rc == HM_OK && text == NULL)
        rc = HM_ERR_NOMEM;
    if (rc == HM_OK)
        rc = ledger_document_put(txn, closing->number, text);
    free(text);
    if (rc == HM_OK)
        rc = ledger_period_close_with(txn, tenant->id, period, closing->number);
    if (rc == HM_OK)
        rc = ledger_book_snapshot_put(txn, closing->input.book_text);

    /*
     * The net kept is what the period's own usage costs: the adjustments of
     * earlier periods on this invoice are accounted for in their own records.
     */
    const struct invoice *invoice = &closing->invoice;
    struct billed_period billed = { .period = period,
                                    .events = closing->input.events,
                                    .net_minor = billing_usage_net_minor(invoice),
                                    .total_minor = invoice->total.minor };
    snprintf(billed.number, sizeof billed.number, "%s", closing->number);
    snprintf(billed.issuer, sizeof billed.issuer, "%s", closing->input.settings.issuer);
    snprintf(billed.currency, sizeof billed.currency, "%s", invoice->currency->code);
    snprintf(billed.book_sha256, sizeof billed.book_sha256, "%s", closing->input.book_sha256);
    billed.has_billed_with = 1;
    snprintf(billed.support_tier, sizeof billed.support_tier, "%s",
             closing->input.settings.support_tier);
    billed.service_start_s = tenant->service_start_s;
    billed.service_end_s = closing->input.settings.service_end_s;
    billed.has_meter_events = 1;
    memcpy(billed.meter_events, closing->meter_events, sizeof billed.meter_events);
    snprintf(billed.usage_sha256, sizeof billed.usage_sha256, "%s", closing->input.usage_sha256);
    if (rc == HM_OK)
        rc = ledger_billed_put(txn, tenant->id, &billed);
    for (size_t i = 0; rc == HM_OK && i < invoice->credit_count; i++)
        rc = ledger_credit_change(txn, tenant->id, invoice->credits[i].id,
                                  -invoice->credits[i].applied_minor, closing->number, now_s);
    for (size_t i = 0; rc == HM_OK && i < closing->input.late_count; i++)
        rc = late_store(txn, closing, &closing->input.late[i], now_s, out);
    return rc;
}

#ifndef HM_NO_TEST_HOOKS
/*
 * Test hook for crash recovery: when METER_TEST_CRASH_AT names this point
 * (close-after-rate, close-mid-store, close-before-commit, close-after-commit),
 * the process kills itself with SIGKILL there, as a crash would. Building
 * with -DHM_NO_TEST_HOOKS leaves the hook out.
 */
static void crash_point(const char *name)
{
    const char *at = getenv("METER_TEST_CRASH_AT");
    if (at != NULL && strcmp(at, name) == 0) {
        fflush(NULL);
        raise(SIGKILL);
    }
}
#else
static void crash_point(const char *name)
{
    (void)name;
}
#endif

int billing_close(struct ledger *ledger, uint32_t period, const char *invoices_dir, FILE *out)
{
    /*
     * The write transaction begins first. While it holds the writer lock no
     * commit of meterd or of another close can land, so every tenant is rated
     * from the same state of the ledger that the seal is written on. The
     * rating reads through read transactions beside it (MDB_NOTLS allows that).
     * The rollup log is folded before, so that each tenant's read finds its
     * rows, not hundreds of logged changes to add.
     */
    struct ledger_txn *txn = NULL;
    int rc = ledger_rollups_fold(ledger);
    if (rc == HM_OK)
        rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: period %04u-%02u not closed: %s\n", period / 100,
                period % 100, hm_status_str(rc));
        return rc;
    }
    struct closing *closings = NULL;
    struct book_shelf shelf = { .count = 0 };
    size_t count = 0, sealed = 0;
    int failures = 0;
    rc = close_rate_all(ledger, period, &shelf, &closings, &count, &failures, &sealed);
    if (rc != HM_OK) {
        ledger_abort(txn);
        book_shelf_free(&shelf);
        return rc;
    }
    if (count == 0) {
        ledger_abort(txn);
        closings_free(closings, count, &shelf);
        int files_rc = invoices_dir != NULL ? billing_files_write(ledger, period, invoices_dir)
                                            : HM_OK;
        if (failures == 0 && sealed == 0) {
            fprintf(out, "no tenant was in service in %04u-%02u; nothing to close\n",
                    period / 100, period % 100);
            return files_rc == HM_OK ? HM_OK : files_failed_report(period, invoices_dir);
        }
        if (failures == 0) {
            fprintf(out, "Period %04u-%02u: nothing to close; every tenant's invoice for it is "
                    "already sealed\n", period / 100, period % 100);
            return files_rc == HM_OK ? HM_OK : files_failed_report(period, invoices_dir);
        }
        return close_failures_report(period, failures);
    }

    /* Numbers are taken inside the transaction: a close that aborts takes none. */
    int64_t now_s = (int64_t)time(NULL);
    char error[1024] = "";
    crash_point("close-after-rate");
    for (size_t i = 0; rc == HM_OK && i < count; i++) {
        rc = close_store(txn, period, &closings[i], now_s, out, error, sizeof error);
        if (i == 0)
            crash_point("close-mid-store");
    }
    crash_point("close-before-commit");
    if (rc == HM_OK)
        rc = ledger_commit(txn);
    else
        ledger_abort(txn);
    if (rc != HM_OK) {
        fprintf(stderr, "meterctl: period %04u-%02u not closed: %s\n", period / 100,
                period % 100, error[0] ? error : hm_status_str(rc));
        closings_free(closings, count, &shelf);
        return rc;
    }

    crash_point("close-after-commit");
    int files_rc = invoices_dir != NULL ? billing_files_write(ledger, period, invoices_dir)
                                        : HM_OK;
    summary_print(out, period, closings, count, failures);
    closings_free(closings, count, &shelf);
    if (files_rc != HM_OK)
        files_failed_report(period, invoices_dir);
    if (failures)
        return close_failures_report(period, failures);
    return files_rc;
}

int billing_close_allowed(struct ledger *ledger, uint32_t period, int64_t now_s, char *error,
                          size_t error_size)
{
    int64_t grace_hours = 0;
    int rc = ledger_setting_get(ledger, BILLING_GRACE_SETTING, 0, &grace_hours);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the setting %s: %s", BILLING_GRACE_SETTING,
                 hm_status_str(rc));
        return rc;
    }
    int64_t end_s = period_start_us(period_next(period)) / 1000000;
    int64_t allowed_s = end_s + grace_hours * 3600;
    if (now_s >= allowed_s)
        return HM_OK;
    char end[32], allowed[32];
    timestamp_format(end_s, end, sizeof end);
    timestamp_format(allowed_s, allowed, sizeof allowed);
    if (now_s < end_s)
        snprintf(error, error_size, "period %04u-%02u has not ended yet (it ends %s); it can be "
                 "closed from %s, so that no usage of it goes unbilled", period / 100,
                 period % 100, end, allowed);
    else
        snprintf(error, error_size, "period %04u-%02u cannot be closed until %s: it ended %s, and "
                 "the close grace window of %lld hours waits for late events; wait, or change "
                 "it with `meterctl settings set %s N`", period / 100, period % 100, allowed,
                 end, (long long)grace_hours, BILLING_GRACE_SETTING);
    return HM_ERR_STATE;
}

/*
 * The open months that a refused close lists by name. The message names the
 * first ones, the count of the rest and the oldest month, so that it stays
 * complete however many months are open.
 */
#define OPEN_MONTHS_LISTED_MAX 10

struct open_month {
    char tenant[TENANT_NAME_MAX + 1];
    uint32_t period;
    const char *reason;
};

struct open_months {
    struct open_month listed[OPEN_MONTHS_LISTED_MAX];
    size_t found;
    uint32_t oldest;
};

static void open_month_add(struct open_months *months, const char *tenant, uint32_t period,
                           const char *reason)
{
    if (months->found < OPEN_MONTHS_LISTED_MAX) {
        struct open_month *month = &months->listed[months->found];
        snprintf(month->tenant, sizeof month->tenant, "%s", tenant);
        month->period = period;
        month->reason = reason;
    }
    if (months->found == 0 || period < months->oldest)
        months->oldest = period;
    months->found++;
}

/*
 * Checks one tenant for open months before `period` in which it was in
 * service or has events, and adds them to `months`. A failed read is
 * returned with the tenant named in `error`.
 */
static int tenant_open_months(struct ledger *ledger, const struct tenant *tenant,
                              uint32_t period, struct open_months *months, char *error,
                              size_t error_size)
{
    struct tenant_settings settings;
    uint32_t *event_periods = NULL;
    size_t event_count = 0;
    int rc = ledger_tenant_settings_get(ledger, tenant->id, &settings);
    if (rc == HM_OK)
        rc = ledger_event_periods(ledger, tenant->id, period, &event_periods, &event_count);
    if (rc != HM_OK) {
        snprintf(error, error_size, "period %04u-%02u not closed: cannot read the settings and "
                 "event periods of tenant %s: %s", period / 100, period % 100, tenant->name,
                 hm_status_str(rc));
        return rc;
    }
    /* A tenant without a service start (0) is checked by its events only. */
    uint32_t month = tenant->service_start_s > 0
                         ? event_period_of(tenant->service_start_s * 1000000)
                         : period;
    if (event_count > 0 && event_periods[0] < month)
        month = event_periods[0];
    for (; month < period; month = period_next(month)) {
        int64_t start_s = period_start_us(month) / 1000000;
        int64_t end_s = period_start_us(period_next(month)) / 1000000;
        int in_service = tenant->service_start_s > 0 && tenant->service_start_s < end_s &&
                         (settings.service_end_s == 0 || settings.service_end_s > start_s);
        int has_events = 0;
        for (size_t i = 0; i < event_count; i++)
            has_events |= event_periods[i] == month;
        if (!in_service && !has_events)
            continue;
        int closed = ledger_period_closed(ledger, tenant->id, month);
        if (closed < 0) {
            snprintf(error, error_size, "period %04u-%02u not closed: cannot read whether "
                     "period %04u-%02u of tenant %s is closed: %s", period / 100, period % 100,
                     month / 100, month % 100, tenant->name, hm_status_str(closed));
            rc = closed;
            break;
        }
        if (closed == 0)
            open_month_add(months, tenant->name, month, has_events ? "has events" : "in service");
    }
    free(event_periods);
    return rc;
}

/*
 * Writes the refusal with the first `listed` open months into `error`.
 * Returns the length that the whole message needs, as snprintf does.
 */
static size_t open_months_format(const struct open_months *months, size_t listed,
                                 uint32_t period, char *error, size_t error_size)
{
    char list[OPEN_MONTHS_LISTED_MAX * (TENANT_NAME_MAX + 48) + 64] = "";
    size_t used = 0;
    for (size_t i = 0; i < listed; i++) {
        const struct open_month *month = &months->listed[i];
        used += (size_t)snprintf(list + used, sizeof list - used, "%stenant %s: %04u-%02u (%s)",
                                 i ? ", " : "", month->tenant, month->period / 100,
                                 month->period % 100, month->reason);
    }
    if (months->found > listed)
        snprintf(list + used, sizeof list - used, "%sand %zu more", listed ? " " : "",
                 months->found - listed);
    int length = snprintf(error, error_size,
                          "period %04u-%02u not closed: %zu earlier month%s still open, so its "
                          "invoices would be numbered before theirs: %s; close those months "
                          "first, oldest first (`meterctl close --period %04u-%02u`), or pass "
                          "--allow-gaps to close %04u-%02u anyway",
                          period / 100, period % 100, months->found,
                          months->found == 1 ? " is" : "s are", list, months->oldest / 100,
                          months->oldest % 100, period / 100, period % 100);
    return length < 0 ? SIZE_MAX : (size_t)length;
}

int billing_close_order_check(struct ledger *ledger, uint32_t period, char *error,
                              size_t error_size)
{
    /*
     * The check reads the months of every tenant. Folded first, each read
     * finds the tenant's rows instead of walking the whole rollup log.
     */
    int rc = ledger_rollups_fold(ledger);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot fold the rollup log: %s", hm_status_str(rc));
        return rc;
    }
    struct tenant *tenants = NULL;
    size_t count = 0;
    rc = ledger_tenant_list(ledger, &tenants, &count);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot list the tenants: %s", hm_status_str(rc));
        return rc;
    }
    struct open_months months = { .found = 0 };
    for (size_t i = 0; i < count && rc == HM_OK; i++)
        rc = tenant_open_months(ledger, &tenants[i], period, &months, error, error_size);
    free(tenants);
    if (rc != HM_OK)
        return rc;
    if (months.found == 0)
        return HM_OK;
    /* List fewer months rather than cut the message when the caller's buffer is small. */
    size_t listed = months.found < OPEN_MONTHS_LISTED_MAX ? months.found : OPEN_MONTHS_LISTED_MAX;
    while (open_months_format(&months, listed, period, error, error_size) >= error_size &&
           listed > 0)
        listed--;
    return HM_ERR_STATE;
}

/* ---- Free text ---- */

/*
 * Decodes one UTF-8 character at text (strict: no overlong forms, no
 * surrogates, nothing above U+10FFFF) into *code_point. Returns its length
 * in bytes, or 0 when the bytes there are not valid UTF-8.
 */
static size_t utf8_decode(const unsigned char *text, uint32_t *code_point)
{
    unsigned char first = text[0];
    if (first < 0x80) {
        *code_point = first;
        return 1;
    }
    size_t length;
    uint32_t value, minimum;
    if (first >= 0xc2 && first <= 0xdf) {
        length = 2, value = first & 0x1fu, minimum = 0x80;
    } else if (first >= 0xe0 && first <= 0xef) {
        length = 3, value = first & 0x0fu, minimum = 0x800;
    } else if (first >= 0xf0 && first <= 0xf4) {
        length = 4, value = first & 0x07u, minimum = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < length; i++) {
        if ((text[i] & 0xc0) != 0x80)
            return 0;
        value = value << 6 | (text[i] & 0x3fu);
    }
    if (value < minimum || value > 0x10ffff || (value >= 0xd800 && value <= 0xdfff))
        return 0;
    *code_point = value;
    return length;
}

static int is_control(uint32_t code_point)
{
    return code_point < 0x20 || (code_point >= 0x7f && code_point <= 0x9f);
}

/* Bidirectional embeddings, overrides and isolates, which reorder the text around them. */
static int is_bidi_control(uint32_t code_point)
{
    return (code_point >= 0x202a && code_point <= 0x202e) ||
           (code_point >= 0x2066 && code_point <= 0x2069);
}

int billing_text_check(const char *what, const char *text, size_t max_bytes, char *error,
                       size_t error_size)
{
    size_t size = strlen(text);
    if (size > max_bytes) {
        snprintf(error, error_size, "%s is %zu bytes, more than the %zu allowed; shorten it",
                 what, size, max_bytes);
        return HM_ERR_INVALID;
    }
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t at = 0; at < size;) {
        uint32_t code_point = 0;
        size_t length = utf8_decode(bytes + at, &code_point);
        if (length == 0) {
            snprintf(error, error_size, "%s is not valid UTF-8 (byte 0x%02x at offset %zu); "
                     "write the text in UTF-8", what, bytes[at], at);
            return HM_ERR_INVALID;
        }
        if (is_control(code_point)) {
            snprintf(error, error_size, "%s contains the control character U+%04X at offset "
                     "%zu; write it on one line without control characters (tabs and line "
                     "breaks included)", what, (unsigned)code_point, at);
            return HM_ERR_INVALID;
        }
        at += length;
    }
    return HM_OK;
}

void billing_text_printable(const char *text, char *out, size_t size)
{
    const unsigned char *bytes = (const unsigned char *)text;
    size_t used = 0;
    for (size_t at = 0; bytes[at] != '\0' && used + 11 < size;) {
        uint32_t code_point = 0;
        size_t length = utf8_decode(bytes + at, &code_point);
        if (length == 0) {
            used += (size_t)snprintf(out + used, size - used, "\\x%02x", bytes[at]);
            at++;
        } else if (is_control(code_point) || is_bidi_control(code_point)) {
            used += (size_t)snprintf(out + used, size - used, "\\u%04x", (unsigned)code_point);
            at += length;
        } else {
            memcpy(out + used, bytes + at, length);
            used += length;
            at += length;
        }
    }
    out[used] = '\0';
}

/* ---- Void and credit notes ---- */

int billing_amount_parse(const char *text, const struct money_currency *currency,
                         int64_t *minor_out, char *error, size_t error_size)
{
    __int128 pico = 0;
    char reason[256] = "";
    int rc = money_decimal_parse(text, &pico, reason, sizeof reason);
    if (rc != HM_OK) {
        snprintf(error, error_size, "invalid amount \"%s\": %s; write a decimal such as 12.50, "
                 "with a point and no grouping", text, reason);
        return HM_ERR_INVALID;
    }
    __int128 per_minor = 1;
    for (int i = currency->exponent; i < MONEY_DECIMAL_DIGITS; i++)
        per_minor *= 10;
    if (pico <= 0 || pico % per_minor != 0 || pico / per_minor > INT64_MAX) {
        snprintf(error, error_size, "invalid amount \"%s\": it must be greater than 0 and exact "
                 "to the minor unit of %s (%d decimal places)", text, currency->code,
                 currency->exponent);
        return HM_ERR_INVALID;
    }
    *minor_out = (int64_t)(pico / per_minor);
    return HM_OK;
}

/* Reads a document by number within the transaction; errors name the number and the fix. */
static int document_load(struct ledger_txn *txn, const char *number, json_t **out, char *error,
                         size_t error_size)
{
    char *text = NULL;
    int rc = ledger_document_get_txn(txn, number, &text);
    if (rc == HM_ERR_NOT_FOUND) {
        snprintf(error, error_size, "document \"%s\" not found; `meterctl invoice list` shows "
                 "the invoices and credit notes", number);
        return rc;
    }
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read document %s: %s", number, hm_status_str(rc));
        return rc;
    }
    json_error_t json_error;
    *out = json_loads(text, 0, &json_error);
    free(text);
    if (*out == NULL) {
        snprintf(error, error_size, "document %s is not valid JSON", number);
        return HM_ERR_STORAGE;
    }
    return HM_OK;
}

/* Checks that a document is a finalized invoice and reads its tenant and period. */
static int invoice_check_finalized(json_t *document, const char *number, const char *action,
                                   uint8_t tenant_id[UUID_SIZE], uint32_t *period, char *error,
                                   size_t error_size)
{
    const char *type = json_string_value(json_object_get(document, "document_type"));
    if (type != NULL && strcmp(type, "credit_note") == 0) {
        snprintf(error, error_size, "%s is a credit note, and only an invoice can be %s; a "
                 "credit note stays as issued", number, action);
        return HM_ERR_INVALID;
    }
    const char *status = json_string_value(json_object_get(document, "status"));
    if (status == NULL || strcmp(status, "finalized") != 0) {
        snprintf(error, error_size, "invoice %s is %s, not finalized, so it cannot be %s; "
                 "`meterctl invoice list` shows its current revision", number,
                 status ? status : "without status", action);
        return HM_ERR_STATE;
    }
    const char *tenant = json_string_value(json_object_get(document, "tenant_id"));
    const char *period_text = json_string_value(json_object_get(document, "period"));
    if (tenant == NULL || uuid_parse(tenant, tenant_id) != HM_OK || period_text == NULL ||
        period_parse(period_text, period) != HM_OK) {
        snprintf(error, error_size, "invoice %s has no valid tenant_id or period", number);
        return HM_ERR_STORAGE;
    }
    return HM_OK;
}

/* Reads the billed state of an invoice's period, or builds it from an invoice of an older ledger. */
static int billed_for_invoice(struct ledger_txn *txn, json_t *invoice, const char *number,
                              const uint8_t tenant_id[UUID_SIZE], uint32_t period,
                              struct billed_period *billed)
{
    int rc = ledger_billed_get_txn(txn, tenant_id, period, billed);
    if (rc != HM_ERR_NOT_FOUND)
        return rc;
    memset(billed, 0, sizeof *billed);
    billed->period = period;
    snprintf(billed->number, sizeof billed->number, "%s", number);
    snprintf(billed->issuer, sizeof billed->issuer, "%s", ISSUER_DEFAULT);
    snprintf(billed->currency, sizeof billed->currency, "%s",
             json_string_value(json_object_get(invoice, "currency")));
    billed->events = (uint64_t)json_integer_value(json_object_get(invoice, "event_count"));
    json_int_t total = json_integer_value(
        json_object_get(json_object_get(invoice, "total"), "amount_minor"));
    billed->net_minor = total;
    billed->total_minor = total;
    return HM_OK;
}

/* Gives back the credits that a voided invoice took, from its "credits" list. */
static int credits_restore(struct ledger_txn *txn, json_t *invoice,
                           const uint8_t tenant_id[UUID_SIZE], const char *number, int64_t now_s)
{
    size_t index;
    json_t *credit;
    json_array_foreach(json_object_get(invoice, "credits"), index, credit) {
        const char *id_text = json_string_value(json_object_get(credit, "id"));
        json_int_t applied = json_integer_value(
            json_object_get(json_object_get(credit, "applied"), "amount_minor"));
        char *end = NULL;
        unsigned long long id = id_text ? strtoull(id_text, &end, 10) : 0;
        if (id_text == NULL || *end != '\0' || applied <= 0)
            return HM_ERR_STORAGE;
        int rc = ledger_credit_change(txn, tenant_id, id, applied, number, now_s);
        if (rc != HM_OK)
            return rc;
    }
    return HM_OK;
}

/*
 * Returns the events that a billed period's amounts account for after some
 * of its changes were dropped: those of its last remaining late usage
 * change, else those sealed on its invoice.
 */
static uint64_t billed_events_kept(struct ledger_txn *txn, const struct billed_period *billed)
{
    uint64_t events = 0;
    int has_change = 0;
    for (size_t i = 0; i < billed->change_count; i++) {
        if (billed->changes[i].late_usage && billed->changes[i].events_after >= events) {
            events = billed->changes[i].events_after;
            has_change = 1;
        }
    }
    if (has_change)
        return events;
    char *text = NULL;
    if (ledger_document_get_txn(txn, billed->number, &text) != HM_OK)
        return 0;
    json_t *invoice = json_loads(text, 0, NULL);
    free(text);
    json_t *sealed = json_object_get(invoice, "event_count");
    events = json_is_integer(sealed) ? (uint64_t)json_integer_value(sealed) : 0;
    json_decref(invoice);
    return events;
}

/* Drops the late usage that a voided invoice billed for earlier periods, which compare again. */
static int adjustments_revert(struct ledger *ledger, struct ledger_txn *txn,
                              const uint8_t tenant_id[UUID_SIZE], const char *number)
{
    struct billed_period *periods = NULL;
    size_t count = 0;
    int rc = ledger_billed_list(ledger, tenant_id, &periods, &count);
    for (size_t i = 0; rc == HM_OK && i < count; i++) {
        struct billed_period *billed = &periods[i];
        size_t kept = 0;
        for (size_t j = 0; j < billed->change_count; j++) {
            if (strcmp(billed->changes[j].number, number) != 0)
                billed->changes[kept++] = billed->changes[j];
        }
        if (kept == billed->change_count)
            continue;
        billed->change_count = kept;
        /* The dropped changes leave their late events unbilled, so the next close counts them. */
        uint64_t events = billed_events_kept(txn, billed);
        if (events < billed->events)
            billed->events = events;
        billed->recheck = 1;
        rc = ledger_billed_put(txn, tenant_id, billed);
    }
    for (size_t i = 0; i < count; i++)
        ledger_billed_free(&periods[i]);
    free(periods);
    return rc;
}

/* Appends ", text" (or "text" first) to a list, cut at its size. */
static void list_append(char *list, size_t size, const char *text)
{
    size_t used = strlen(list);
    if (used < size)
        snprintf(list + used, size - used, "%s%s", used ? ", " : "", text);
}

/*
 * Checks that the corrections of an invoice let it be voided. Late usage of
 * its period billed on a later invoice would be billed twice by the next
 * revision, so that invoice must be voided first. Manual credit notes are
 * voided with it only on request, because they may have to be issued
 * again against the next revision.
 */
static int void_corrections_check(const struct billed_period *billed, const char *number,
                                  int with_credit_notes, char *error, size_t error_size)
{
    char later[256] = "", manual[256] = "";
    for (size_t i = 0; i < billed->change_count; i++) {
        const struct billed_change *change = &billed->changes[i];
        if (change->amount_minor > 0)
            list_append(later, sizeof later, change->number);
        else if (!change->late_usage)
            list_append(manual, sizeof manual, change->number);
    }
    if (later[0] != '\0') {
        snprintf(error, error_size, "invoice %s cannot be voided yet: late usage of its period is "
                 "billed on invoice %s, which the next revision would bill again; void that "
                 "invoice first (`meterctl invoice void NUMBER --reason TEXT`), then %s", number,
                 later, number);
        return HM_ERR_STATE;
    }
    if (manual[0] != '\0' && !with_credit_notes) {
        snprintf(error, error_size, "invoice %s has the manual credit note%s %s; add "
                 "--with-credit-notes to void the invoice with %s, then issue what still "
                 "applies against the next revision with `meterctl invoice credit-note`", number,
                 strchr(manual, ',') ? "s" : "", manual, strchr(manual, ',') ? "them" : "it");
        return HM_ERR_STATE;
    }
    return HM_OK;
}

/* Re-seals a credit note of a voided invoice with status "void". */
static int credit_note_void(struct ledger_txn *txn, const char *note_number,
                            const char *invoice_number, const char *voided, const char *reason)
{
    char *text = NULL;
    int rc = ledger_document_get_txn(txn, note_number, &text);
    if (rc != HM_OK)
        return rc;
    json_t *note = json_loads(text, 0, NULL);
    free(text);
    if (note == NULL)
        return HM_ERR_STORAGE;
    int failed = 0;
    json_add(note, "status", json_string("void"), &failed);
    json_add(note, "voided_at", json_string(voided), &failed);
    json_add(note, "void_reason", json_string(reason), &failed);
    json_add(note, "voided_with", json_string(invoice_number), &failed);
    rc = failed ? HM_ERR_NOMEM : billing_document_seal(note);
    text = rc == HM_OK ? json_dumps_whole(note, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(note);
    if (text == NULL)
        return HM_ERR_NOMEM;
    rc = ledger_document_replace(txn, note_number, text);
    free(text);
    return rc;
}

struct void_request {
    const char *number;
    const char *reason;
    int with_credit_notes;
    int64_t now_s;
    char *voided_notes;
    size_t notes_size;
};

static int void_store(struct ledger *ledger, struct ledger_txn *txn, json_t *invoice,
                      const struct void_request *request, char *error, size_t error_size)
{
    const char *number = request->number;
    uint8_t tenant_id[UUID_SIZE];
    uint32_t period = 0;
    int rc = invoice_check_finalized(invoice, number, "voided", tenant_id, &period, error,
                                     error_size);
    if (rc != HM_OK)
        return rc;
    char current[DOCUMENT_NUMBER_MAX] = "";
    rc = ledger_invoice_number_txn(txn, tenant_id, period, current, sizeof current);
    if (rc != HM_OK || strcmp(current, number) != 0) {
        snprintf(error, error_size, "invoice %s is not the current invoice of its period (%s "
                 "is), so it cannot be voided", number, current[0] ? current : "none");
        return HM_ERR_STATE;
    }

    struct billed_period billed;
    rc = billed_for_invoice(txn, invoice, number, tenant_id, period, &billed);
    if (rc != HM_OK)
        return rc;
    rc = void_corrections_check(&billed, number, request->with_credit_notes, error, error_size);
    if (rc != HM_OK) {
        ledger_billed_free(&billed);
        return rc;
    }

    char voided[32];
    timestamp_format(request->now_s, voided, sizeof voided);
    /* The period's credit notes go with it: the next revision is rated from scratch. */
    for (size_t i = 0; rc == HM_OK && i < billed.change_count; i++) {
        rc = credit_note_void(txn, billed.changes[i].number, number, voided, request->reason);
        if (rc == HM_OK)
            list_append(request->voided_notes, request->notes_size, billed.changes[i].number);
    }
    ledger_billed_free(&billed);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot void the credit notes of invoice %s: %s", number,
                 hm_status_str(rc));
        return rc;
    }

    int failed = 0;
    json_add(invoice, "status", json_string("void"), &failed);
    json_add(invoice, "voided_at", json_string(voided), &failed);
    json_add(invoice, "void_reason", json_string(request->reason), &failed);
    rc = failed ? HM_ERR_NOMEM : billing_document_seal(invoice);
    char *text = rc == HM_OK ? json_dumps_whole(invoice, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    if (text == NULL)
        return HM_ERR_NOMEM;
    rc = ledger_document_replace(txn, number, text);
    /* An invoice of an older ledger was stored under its period only: it moves to its number. */
    if (rc == HM_ERR_NOT_FOUND) {
        rc = ledger_document_put(txn, number, text);
        if (rc == HM_OK)
            rc = ledger_invoice_point(txn, tenant_id, period, number);
    }
    free(text);
    if (rc == HM_OK)
        rc = credits_restore(txn, invoice, tenant_id, number, request->now_s);
    if (rc == HM_OK)
        rc = ledger_period_reopen(txn, tenant_id, period);
    if (rc == HM_OK)
        rc = ledger_billed_delete(txn, tenant_id, period);
    if (rc == HM_OK)
        rc = adjustments_revert(ledger, txn, tenant_id, number);
    if (rc != HM_OK && error[0] == '\0')
        snprintf(error, error_size, "cannot void invoice %s: %s", number, hm_status_str(rc));
    return rc;
}

int billing_void(struct ledger *ledger, const char *number, const char *reason,
                 int with_credit_notes, int64_t now_s, char *voided_notes, size_t notes_size,
                 char *error, size_t error_size)
{
    error[0] = '\0';
    if (notes_size > 0)
        voided_notes[0] = '\0';
    int rc = billing_text_check("the void reason", reason, BILLING_TEXT_MAX, error, error_size);
    if (rc != HM_OK)
        return rc;
    struct ledger_txn *txn = NULL;
    rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot void invoice %s: %s", number, hm_status_str(rc));
        return rc;
    }
    struct void_request request = { number, reason, with_credit_notes, now_s, voided_notes,
                                    notes_size };
    json_t *invoice = NULL;
    rc = document_load(txn, number, &invoice, error, error_size);
    if (rc == HM_OK)
        rc = void_store(ledger, txn, invoice, &request, error, error_size);
    json_decref(invoice);
    if (rc != HM_OK) {
        ledger_abort(txn);
        if (notes_size > 0)
            voided_notes[0] = '\0';
        return rc;
    }
    rc = ledger_commit(txn);
    if (rc != HM_OK)
        snprintf(error, error_size, "cannot void invoice %s: %s", number, hm_status_str(rc));
    return rc;
}

static int credit_note_store(struct ledger_txn *txn, json_t *invoice, const char *number,
                             const char *amount_text, const char *reason, int64_t now_s,
                             char *number_out, char *error, size_t error_size)
{
    uint8_t tenant_id[UUID_SIZE];
    uint32_t period = 0;
    int rc = invoice_check_finalized(invoice, number, "credited", tenant_id, &period, error,
                                     error_size);
    if (rc != HM_OK)
        return rc;
    const struct money_currency *currency = NULL;
    const char *code = json_string_value(json_object_get(invoice, "currency"));
    if (code == NULL || money_currency_find(code, &currency) != HM_OK) {
        snprintf(error, error_size, "invoice %s has no known currency", number);
        return HM_ERR_STORAGE;
    }
    int64_t amount = 0;
    rc = billing_amount_parse(amount_text, currency, &amount, error, error_size);
    if (rc != HM_OK)
        return rc;

    struct billed_period billed;
    rc = billed_for_invoice(txn, invoice, number, tenant_id, period, &billed);
    if (rc != HM_OK)
        return rc;
    int64_t room = billed.total_minor - credited_minor(&billed);
    if (amount > room) {
        char total[MONEY_TEXT_SIZE], left[MONEY_TEXT_SIZE];
        money_amount_format((struct money_amount){ billed.total_minor }, currency, total,
                            sizeof total);
        money_amount_format((struct money_amount){ room > 0 ? room : 0 }, currency, left,
                            sizeof left);
        snprintf(error, error_size, "credit note of %s %s exceeds what invoice %s leaves to "
                 "credit: its total is %s %s and %s %s remain; issue at most that", amount_text,
                 code, number, total, code, left, code);
        ledger_billed_free(&billed);
        return HM_ERR_INVALID;
    }
    rc = credit_note_issue(txn, invoice, &billed, amount, reason, 0, billed.events, now_s,
                           number_out);
    if (rc == HM_OK)
        rc = ledger_billed_put(txn, tenant_id, &billed);
    ledger_billed_free(&billed);
    if (rc != HM_OK && error[0] == '\0')
        snprintf(error, error_size, "cannot issue a credit note against %s: %s", number,
                 hm_status_str(rc));
    return rc;
}

int billing_credit_note(struct ledger *ledger, const char *number, const char *amount_text,
                        const char *reason, int64_t now_s, char *number_out, char *error,
                        size_t error_size)
{
    error[0] = '\0';
    int rc = billing_text_check("the credit note reason", reason, BILLING_TEXT_MAX, error,
                                error_size);
    if (rc != HM_OK)
        return rc;
    struct ledger_txn *txn = NULL;
    rc = ledger_begin(ledger, &txn);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot issue a credit note: %s", hm_status_str(rc));
        return rc;
    }
    json_t *invoice = NULL;
    rc = document_load(txn, number, &invoice, error, error_size);
    if (rc == HM_OK)
        rc = credit_note_store(txn, invoice, number, amount_text, reason, now_s, number_out,
                               error, error_size);
    json_decref(invoice);
    if (rc != HM_OK) {
        ledger_abort(txn);
        return rc;
    }
    rc = ledger_commit(txn);
    if (rc != HM_OK)
        snprintf(error, error_size, "cannot issue a credit note: %s", hm_status_str(rc));
    return rc;
}

/* ---- Rendering ---- */

static const char *string_of(json_t *object, const char *key)
{
    const char *text = json_string_value(json_object_get(object, key));
    return text ? text : "";
}

/* Prints an amount that the invoice JSON stores as positive, with a minus sign. */
static void negated(const char *amount, char *out, size_t size)
{
    if (amount[0] == '\0' || strspn(amount, "0.") == strlen(amount))
        snprintf(out, size, "%s", amount);
    else
        snprintf(out, size, "-%s", amount);
}

/* Room for a stored text of BILLING_TEXT_MAX bytes with every byte escaped. */
#define SHOWN_TEXT_SIZE (6 * BILLING_TEXT_MAX + 16)

/*
 * Returns a member's text as billing_text_printable shows it, in `out`:
 * documents stored before free texts were checked may hold control characters.
 */
static const char *shown_of(json_t *object, const char *key, char *out, size_t size)
{
    billing_text_printable(string_of(object, key), out, size);
    return out;
}

static void credit_note_print(json_t *note, FILE *out)
{
    char shown[SHOWN_TEXT_SIZE];
    fprintf(out, "Credit note %s  issuer %s  against invoice %s\n", string_of(note, "number"),
            string_of(note, "issuer"), string_of(note, "credited_invoice"));
    fprintf(out, "tenant %s (%s)  period %s  status %s  issued %s\n",
            string_of(note, "tenant_name"), string_of(note, "tenant_id"),
            string_of(note, "period"), string_of(note, "status"), string_of(note, "issued_at"));
    if (strcmp(string_of(note, "status"), "void") == 0)
        fprintf(out, "voided %s with invoice %s: %s\n", string_of(note, "voided_at"),
                string_of(note, "voided_with"), shown_of(note, "void_reason", shown,
                                                         sizeof shown));
    fprintf(out, "reason: %s\n", shown_of(note, "reason", shown, sizeof shown));
    fprintf(out, "amount %s %s\n", string_of(json_object_get(note, "amount"), "amount"),
            string_of(note, "currency"));
    fprintf(out, "sealed sha256 %s\n", string_of(note, "sha256"));
}

int billing_invoice_print(const char *invoice_json, FILE *out)
{
    json_error_t error;
    json_t *invoice = json_loads(invoice_json, 0, &error);
    if (invoice == NULL)
        return HM_ERR_INVALID;
    if (strcmp(string_of(invoice, "document_type"), "credit_note") == 0) {
        credit_note_print(invoice, out);
        json_decref(invoice);
        return HM_OK;
    }
    const char *currency = string_of(invoice, "currency");
    const char *number = string_of(invoice, "invoice_number");
    const char *status = string_of(invoice, "status");
    fprintf(out, "Invoice %s  tenant %s (%s)  period %s  status %s\n", number[0] ? number : "(draft)",
            string_of(invoice, "tenant_name"), string_of(invoice, "tenant_id"),
            string_of(invoice, "period"), status[0] ? status : "draft");
    if (number[0] != '\0' && json_object_get(invoice, "revision") != NULL)
        fprintf(out, "issuer %s  revision %lld%s%s\n",
                string_of(invoice, "issuer"),
                (long long)json_integer_value(json_object_get(invoice, "revision")),
                json_object_get(invoice, "replaces") ? "  replaces " : "",
                string_of(invoice, "replaces"));
    char shown[SHOWN_TEXT_SIZE];
    if (strcmp(status, "void") == 0)
        fprintf(out, "voided %s: %s\n", string_of(invoice, "voided_at"),
                shown_of(invoice, "void_reason", shown, sizeof shown));
    fprintf(out, "Price book %s, currency %s\n\n",
            shown_of(invoice, "price_book", shown, sizeof shown), currency);

    /* The description column is as wide as the longest description. */
    json_t *lines = json_object_get(invoice, "lines");
    int width = 8;
    size_t index;
    json_t *line;
    json_array_foreach(lines, index, line) {
        int size = (int)strlen(shown_of(line, "description", shown, sizeof shown));
        width = size > width ? size : width;
    }
    fprintf(out, "%-*s %22s %-10s %18s %-18s %14s\n", width, "line", "quantity", "unit",
            "unit price", "", "amount");
    json_array_foreach(lines, index, line) {
        fprintf(out, "%-*s %22s %-10s %18s %-18s %14s\n", width,
                shown_of(line, "description", shown, sizeof shown),
                string_of(line, "quantity"), string_of(line, "unit"),
                string_of(line, "unit_price"), string_of(line, "price_unit"),
                string_of(line, "amount"));
    }
    int total_width = width + 22 + 10 + 18 + 18 + 14 + 5;
    char discount[MONEY_TEXT_SIZE + 1];
    negated(string_of(json_object_get(invoice, "discount"), "amount"), discount, sizeof discount);
    fprintf(out, "\n%-*s %*s\n", width, "subtotal", total_width - width - 1,
            string_of(json_object_get(invoice, "subtotal"), "amount"));
    fprintf(out, "%-*s %*s\n", width, "discount", total_width - width - 1, discount);
    json_t *credits = json_object_get(invoice, "credits_applied");
    if (credits != NULL) {
        char credited[MONEY_TEXT_SIZE + 1];
        negated(string_of(credits, "amount"), credited, sizeof credited);
        fprintf(out, "%-*s %*s\n", width, "credits", total_width - width - 1, credited);
    }
    fprintf(out, "%-*s %*s %s\n", width, "total", total_width - width - 1,
            string_of(json_object_get(invoice, "total"), "amount"), currency);
    if (string_of(invoice, "sha256")[0])
        fprintf(out, "sealed sha256 %s\n", string_of(invoice, "sha256"));
    json_decref(invoice);
    return HM_OK;
}
