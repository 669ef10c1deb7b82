/*
 * Price books from hostile JSON: pricebook_parse and pricebook_check must
 * agree on whether a book is valid, and a valid book must rate a fixed
 * usage without a crash or undefined behavior, including quantities near
 * the limits where exact arithmetic overflows.
 */
#include "fuzz_common.h"

#include "common/status.h"
#include "pricing/invoice.h"
#include "pricing/pricebook.h"

static void rate(const struct pricebook *book, unsigned __int128 scale)
{
    struct usage_item items[] = {
        { METER_GPU_SECONDS, "H100", 3600 * scale, 1, 0 },
        { METER_GPU_SECONDS, "A100", 7 * scale, 1, 0 },
        { METER_INPUT_TOKENS, "llama-3.1-70b-instruct", 1000000 * scale, 1, 0 },
        { METER_OUTPUT_TOKENS, "llama-3.1-70b-instruct", 350 * scale, 1, 0 },
        { METER_CACHED_INPUT_TOKENS, "llama-3.1-70b-instruct", 1024 * scale, 1, 0 },
        { METER_API_CALLS, "", 12 * scale, 12, 0 },
        { METER_STORAGE_BYTE_SECONDS, "", (unsigned __int128)1000000000 * 2592000 * scale, 1, 0 },
        { METER_TRANSFER_BYTES, "", 5368709120 * scale, 1, 0 },
    };
    struct usage_credit credit = { .id = 1, .balance_minor = 2500, .granted_s = 1717200000 };
    snprintf(credit.currency, sizeof credit.currency, "%s", book->currency->code);
    struct usage_totals usage = {
        .tenant_name = "fuzz",
        .period = 202406,
        .period_start_s = 1717200000, /* 2024-06-01 */
        .period_end_s = 1719792000,   /* 2024-07-01 */
        .service_start_s = 1717286400,
        .support_tier = SUPPORT_PRO,
        .item_count = sizeof items / sizeof items[0],
        .items = items,
        .credit_count = 1,
        .credits = &credit,
    };
    struct invoice invoice;
    char error[1024];
    if (pricing_rate(&usage, book, &invoice, error, sizeof error) == HM_OK) {
        FUZZ_CHECK(invoice.total.minor >= 0, "negative total %lld",
                   (long long)invoice.total.minor);
        invoice_free(&invoice);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > PRICEBOOK_FILE_SIZE_MAX)
        return 0;
    const char *text = (const char *)data;
    struct pricebook *book = NULL;
    char error[1024] = "";
    int parsed = pricebook_parse(text, size, &book, error, sizeof error);
    char errors[8192] = "";
    size_t error_count = 0;
    int checked = pricebook_check(text, size, errors, sizeof errors, &error_count);
    if (parsed == HM_ERR_NOMEM || checked == HM_ERR_NOMEM) {
        pricebook_free(book);
        return 0;
    }
    FUZZ_CHECK((parsed == HM_OK) == (checked == HM_OK),
               "pricebook_parse returned %d (%s) but pricebook_check %d (%s)", parsed, error,
               checked, errors);
    FUZZ_CHECK(parsed == HM_OK || error[0] != '\0', "a rejected book without an error message");
    FUZZ_CHECK(checked == HM_OK || error_count > 0, "a failed check that counts no problem");
    if (parsed != HM_OK)
        return 0;

    FUZZ_CHECK(book->version_count >= 1 && book->version_count <= PRICEBOOK_VERSIONS_MAX,
               "%zu versions", book->version_count);
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 0;
    pricebook_slices(book, 1717200000, 1719792000, starts, PRICEBOOK_VERSIONS_MAX, &count);
    pricebook_version_at(book, INT64_MIN);
    pricebook_version_at(book, INT64_MAX);
    rate(book, 1);
    rate(book, (unsigned __int128)1 << 40);
    rate(book, (unsigned __int128)1 << 90);
    pricebook_free(book);
    return 0;
}
