/*
 * Rating of usage against the pb-1 price book (tests/data/pricebooks/pb1.json),
 * its JPY variant and the rate-*.json books of charge models, price changes,
 * commitments and discounts, with expected amounts exact to the minor unit.
 * Every expected amount was computed separately with Python's fractions.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "pricing/invoice.h"

#define PB1_PATH HM_SOURCE_DIR "/tests/data/pricebooks/pb1.json"
#define PB1_JPY_PATH HM_SOURCE_DIR "/tests/data/pricebooks/pb1-jpy.json"
#define MODELS_PATH HM_SOURCE_DIR "/tests/data/pricebooks/rate-models.json"
#define CHANGE_PATH HM_SOURCE_DIR "/tests/data/pricebooks/rate-change.json"
#define COMMIT_PATH HM_SOURCE_DIR "/tests/data/pricebooks/rate-commit.json"
#define DISCOUNTS_PATH HM_SOURCE_DIR "/tests/data/pricebooks/rate-discounts.json"

/* Period bounds in Unix seconds (UTC midnight). */
#define JAN_2024_START INT64_C(1704067200)
#define JAN_26_2024 INT64_C(1706227200)
#define FEB_2024_START INT64_C(1706745600)
#define FEB_15_2024 INT64_C(1707955200)
#define MAR_2024_START INT64_C(1709251200)
#define JUN_2024_START INT64_C(1717200000)
#define JUN_11_2024 INT64_C(1718064000)
#define JUN_16_2024 INT64_C(1718496000) /* rate-change.json's second version */
#define JUN_21_2024 INT64_C(1718928000)
#define JUL_2024_START INT64_C(1719792000)
#define AUG_2024_START INT64_C(1722470400)
#define SEP_2024_START INT64_C(1725148800)

#define GB INT64_C(1000000000)
#define DAY_S INT64_C(86400)
#define HOUR_S INT64_C(3600)
#define FIXTURE_ITEMS_MAX 16
#define FIXTURE_CREDITS_MAX 8

struct fixture {
    struct usage_totals usage;
    struct usage_item items[FIXTURE_ITEMS_MAX];
    struct usage_credit credits[FIXTURE_CREDITS_MAX];
    struct usage_adjustment adjustments[2];
};

static void usage_begin(struct fixture *fixture, uint32_t period, int64_t start_s, int64_t end_s)
{
    memset(fixture, 0, sizeof(*fixture));
    for (int i = 0; i < 16; i++)
        fixture->usage.tenant_id[i] = (uint8_t)(0xa0 + i);
    snprintf(fixture->usage.tenant_name, sizeof(fixture->usage.tenant_name), "acme");
    fixture->usage.period = period;
    fixture->usage.period_start_s = start_s;
    fixture->usage.period_end_s = end_s;
    fixture->usage.service_start_s = start_s;
    fixture->usage.items = fixture->items;
    fixture->usage.credits = fixture->credits;
    fixture->usage.adjustments = fixture->adjustments;
}

static void usage_add(struct fixture *fixture, enum meter meter, const char *dimension,
                      unsigned __int128 quantity)
{
    cr_assert(lt(sz, fixture->usage.item_count, FIXTURE_ITEMS_MAX));
    struct usage_item *item = &fixture->items[fixture->usage.item_count++];
    item->meter = meter;
    snprintf(item->dimension, sizeof(item->dimension), "%s", dimension);
    item->quantity = quantity;
    item->event_count = 1;
}

/* Adds usage inside the slice that starts at start_s. */
static void usage_add_at(struct fixture *fixture, enum meter meter, const char *dimension,
                         unsigned __int128 quantity, int64_t start_s)
{
    usage_add(fixture, meter, dimension, quantity);
    fixture->items[fixture->usage.item_count - 1].start_s = start_s;
}

static void credit_add(struct fixture *fixture, uint64_t id, int64_t balance_minor,
                       int64_t granted_s, int64_t expires_s)
{
    cr_assert(lt(sz, fixture->usage.credit_count, FIXTURE_CREDITS_MAX));
    struct usage_credit *credit = &fixture->credits[fixture->usage.credit_count++];
    credit->id = id;
    snprintf(credit->currency, sizeof(credit->currency), "USD");
    credit->balance_minor = balance_minor;
    credit->granted_s = granted_s;
    credit->expires_s = expires_s;
}

static struct pricebook *load_book(const char *path)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    cr_assert(eq(int, pricebook_load_file(path, &book, error, sizeof(error)), HM_OK),
              "loading %s: %s", path, error);
    return book;
}

static void rate_ok(const struct fixture *fixture, const struct pricebook *book,
                    struct invoice *invoice)
{
    char error[512] = "";
    int status = pricing_rate(&fixture->usage, book, invoice, error, sizeof(error));
    cr_assert(eq(int, status, HM_OK), "rating failed: %s", error);
}

/* Returns the only line of a kind and dimension, failing the test when there is none. */
static const struct invoice_line *line_of(const struct invoice *invoice,
                                          enum invoice_line_kind kind, const char *dimension)
{
    const struct invoice_line *found = NULL;
    for (size_t i = 0; i < invoice->line_count && found == NULL; i++) {
        const struct invoice_line *line = &invoice->lines[i];
        if (line->kind == kind && strcmp(line->dimension, dimension) == 0)
            found = line;
    }
    cr_assert(not(eq(ptr, (void *)found, NULL)), "no %s line for \"%s\"",
              invoice_line_kind_name(kind), dimension);
    return found;
}

static bool has_line(const struct invoice *invoice, enum invoice_line_kind kind)
{
    for (size_t i = 0; i < invoice->line_count; i++)
        if (invoice->lines[i].kind == kind)
            return true;
    return false;
}

static void assert_contains(const char *text, const char *part)
{
    cr_assert(not(eq(ptr, strstr(text, part), NULL)), "\"%s\" does not contain \"%s\"", text, part);
}

/* GPU lines minus the discount, for one G-test usage of the given seconds in June 2024. */
static int64_t g_test_net_minor(int64_t seconds, enum pricebook_discount_mode mode)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    book->versions[0].discounts[0].mode = mode; /* the same tiers, read the other way */
    book->versions[0].has_base_fee = false;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "G-test", (unsigned __int128)seconds);
    rate_ok(&fixture, book, &invoice);

    int64_t net = invoice.total.minor;
    cr_assert(eq(i64, net, invoice.subtotal.minor - invoice.discount_total.minor));
    invoice_free(&invoice);
    pricebook_free(book);
    return net;
}

/* A discount is rounded once, on the GPU subtotal: 373.465 -> 373.47, not 373.48 per line. */
Test(pricing_rate, discount_rounded_once_on_subtotal)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 1777608);
    usage_add(&fixture, METER_GPU_SECONDS, "A100", 5760144);
    usage_add(&fixture, METER_GPU_SECONDS, "L4", 5144400);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_GPU, "H100")->amount.minor, 123445));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_GPU, "A100")->amount.minor, 200005));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_GPU, "L4")->amount.minor, 50015));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_DISCOUNT, "")->amount.minor, -37347));
    cr_assert(eq(i64, invoice.discount_total.minor, 37347));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_BASE_FEE, "")->amount.minor, 10000));
    cr_assert(eq(i64, invoice.subtotal.minor, 10000 + 373465));
    /* GPU net 3361.18 plus the 100.00 base fee. */
    cr_assert(eq(i64, invoice.total.minor, 10000 + 336118));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, gpu_line_quantity_in_hours)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 1777608);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_GPU, "H100");
    cr_assert(eq(str, (char *)line->quantity, "493.78"));
    cr_assert(line->quantity_exact);
    cr_assert(eq(str, (char *)line->unit, "GPU-hour"));
    cr_assert(eq(str, (char *)line->unit_price, "2.50"));
    cr_assert(eq(str, (char *)line->price_unit, "per GPU-hour"));
    invoice_free(&invoice);
    pricebook_free(book);
}

/*
 * 15,798,000 tokens at 2.50 / M is 39.495 exactly, so half-up gives 39.50. In
 * double arithmetic 39.495 * 100 is 3949.4999999999995, which rounds to 39.49.
 */
Test(pricing_rate, half_cent_rounds_up)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-mid", 15798000);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-mid")->amount.minor, 3950));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, half_cent_half_up_vs_half_even)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    /* 15,794,000 tokens at 2.50 / M is 39.485 exactly. */
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-mid", 15794000);
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-mid")->amount.minor, 3949));
    invoice_free(&invoice);

    book->rounding = MONEY_ROUND_HALF_EVEN;
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-mid")->amount.minor, 3948));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Two items of the same model are summed before rounding: 2 x 19.7425 is 39.485, not 39.48. */
Test(pricing_rate, same_dimension_summed_before_rounding)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-mid", 7897000);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-mid", 7897000);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.line_count, 2)); /* base fee and one token line */
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-mid")->amount.minor, 3949));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Tier boundaries: 1000 h exactly is not above 1000 h, one more second is. */
Test(pricing_discount, volume_at_1000_hours_exactly)
{
    cr_assert(eq(i64, g_test_net_minor(3600000, PRICEBOOK_DISCOUNT_VOLUME), 200000));
}

Test(pricing_discount, volume_one_second_above_1000_hours)
{
    cr_assert(eq(i64, g_test_net_minor(3600001, PRICEBOOK_DISCOUNT_VOLUME), 180000));
}

Test(pricing_discount, volume_at_5000_hours_exactly)
{
    cr_assert(eq(i64, g_test_net_minor(18000000, PRICEBOOK_DISCOUNT_VOLUME), 900000));
}

Test(pricing_discount, volume_at_1000_5_hours)
{
    cr_assert(eq(i64, g_test_net_minor(3601800, PRICEBOOK_DISCOUNT_VOLUME), 180090));
}

Test(pricing_discount, volume_at_5000_25_hours)
{
    cr_assert(eq(i64, g_test_net_minor(18000900, PRICEBOOK_DISCOUNT_VOLUME), 800040));
}

Test(pricing_discount, graduated_at_1000_hours_exactly)
{
    cr_assert(eq(i64, g_test_net_minor(3600000, PRICEBOOK_DISCOUNT_GRADUATED), 200000));
}

Test(pricing_discount, graduated_one_second_above_1000_hours)
{
    cr_assert(eq(i64, g_test_net_minor(3600001, PRICEBOOK_DISCOUNT_GRADUATED), 200000));
}

Test(pricing_discount, graduated_at_5000_hours_exactly)
{
    cr_assert(eq(i64, g_test_net_minor(18000000, PRICEBOOK_DISCOUNT_GRADUATED), 920000));
}

Test(pricing_discount, graduated_at_1000_5_hours)
{
    cr_assert(eq(i64, g_test_net_minor(3601800, PRICEBOOK_DISCOUNT_GRADUATED), 200090));
}

Test(pricing_discount, graduated_at_5000_25_hours)
{
    cr_assert(eq(i64, g_test_net_minor(18000900, PRICEBOOK_DISCOUNT_GRADUATED), 920040));
}

Test(pricing_discount, hours_summed_over_gpu_types)
{
    /* 600 h of H100 and 600 h of A100: 1200 h in all, so 10 % off 1500.00 + 750.00. */
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    book->versions[0].has_base_fee = false;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 600 * 3600);
    usage_add(&fixture, METER_GPU_SECONDS, "A100", 600 * 3600);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, invoice.subtotal.minor, 225000));
    cr_assert(eq(i64, invoice.discount_total.minor, 22500));
    cr_assert(eq(i64, invoice.total.minor, 202500));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_discount, discount_line_shows_subtotal_and_percent)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "G-test", 3601800);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_DISCOUNT, "");
    cr_assert(eq(str, (char *)line->description, "GPU volume discount"));
    cr_assert(eq(str, (char *)line->quantity, "2001"));
    cr_assert(eq(str, (char *)line->unit, "USD"));
    cr_assert(eq(str, (char *)line->unit_price, "10"));
    cr_assert(eq(str, (char *)line->price_unit, "percent"));
    cr_assert(eq(i64, line->amount.minor, -20010));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Storage divides by the period's own length: February 2024 has 29 days. */
Test(pricing_rate, storage_full_leap_february)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202402, FEB_2024_START, MAR_2024_START);
    usage_add(&fixture, METER_STORAGE_BYTE_SECONDS, "",
              (unsigned __int128)(100 * GB) * (unsigned __int128)(29 * DAY_S));
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_STORAGE, "");
    cr_assert(eq(i64, line->amount.minor, 200));
    cr_assert(eq(str, (char *)line->quantity, "100"));
    cr_assert(eq(str, (char *)line->unit, "GB-month"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, storage_14_of_29_days)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202402, FEB_2024_START, MAR_2024_START);
    usage_add(&fixture, METER_STORAGE_BYTE_SECONDS, "",
              (unsigned __int128)(100 * GB) * (unsigned __int128)(FEB_15_2024 - FEB_2024_START));
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_STORAGE, "");
    cr_assert(eq(i64, line->amount.minor, 97));
    cr_assert(eq(str, (char *)line->quantity, "48.275862068966"));
    cr_assert(not(line->quantity_exact));
    invoice_free(&invoice);
    pricebook_free(book);
}

/*
 * 4.5 * 10^9 tokens do not fit 32 bits: 675.00. A wrapping 32-bit counter
 * gives 30.75 and one that saturates at INT32_MAX gives 322.12.
 */
Test(pricing_rate, tokens_beyond_32_bits)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-bulk", 1500000000);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-bulk", 1500000000);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-bulk", 1500000000);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-bulk");
    cr_assert(eq(i64, line->amount.minor, 67500));
    cr_assert(eq(str, (char *)line->quantity, "4500000000"));
    cr_assert(eq(str, (char *)line->unit, "token"));
    cr_assert(eq(str, (char *)line->price_unit, "per 1M tokens"));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* 7 * 10^11 output tokens at 15.00 / M: the product in micro-dollars exceeds int64, the result does
 * not. */
Test(pricing_rate, tokens_product_beyond_int64)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-large", UINT64_C(700000000000));
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_OUTPUT_TOKENS, "m-large")->amount.minor,
                 INT64_C(1050000000)));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, amount_beyond_int64_is_overflow)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    /* 10^24 tokens at 15.00 / M is 1.5 * 10^21 cents. */
    unsigned __int128 tokens = (unsigned __int128)UINT64_C(1000000000000) * UINT64_C(1000000000000);
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-large", tokens);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_OVERFLOW));
    assert_contains(error, "tenant acme (a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf)");
    assert_contains(error, "output_tokens line \"Output tokens, m-large\"");
    assert_contains(error, "1000000000000000000 1M tokens at 15 USD per 1M tokens");
    cr_assert(eq(sz, invoice.line_count, 0));
    cr_assert(eq(ptr, invoice.lines, NULL));
    pricebook_free(book);
}

Test(pricing_rate, subtotal_beyond_int64_is_overflow)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    /* H100 at 0.6 x INT64_MAX cents and G-test at 0.48 x: each line fits, their sum does not. */
    unsigned __int128 seconds = (unsigned __int128)INT64_MAX * 3600 / 250 * 6 / 10;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", seconds);
    usage_add(&fixture, METER_GPU_SECONDS, "G-test", seconds);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_OVERFLOW), "%s", error);
    assert_contains(error, "tenant acme");
    /* Lines come in byte order of the GPU type, so H100 is the one that no longer fits. */
    assert_contains(error, "overflow adding line \"GPU usage, H100\" to the subtotal");
    pricebook_free(book);
}

/* JPY has no minor unit; the base fee is prorated by seconds: 10,000 x 6 / 31 = 1935.48. */
Test(pricing_rate, jpy_prorated_fee_and_tokens)
{
    struct pricebook *book = load_book(PB1_JPY_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202401, JAN_2024_START, FEB_2024_START);
    fixture.usage.service_start_s = JAN_26_2024;
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1234567);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *fee = line_of(&invoice, INVOICE_LINE_BASE_FEE, "");
    cr_assert(eq(i64, fee->amount.minor, 1935));
    cr_assert(eq(str, (char *)fee->quantity, "0.193548387097"));
    cr_assert(not(fee->quantity_exact));
    cr_assert(eq(str, (char *)fee->unit_price, "10000"));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-large")->amount.minor, 556));
    cr_assert(eq(i64, invoice.total.minor, 2491));
    cr_assert(eq(str, (char *)invoice.currency->code, "JPY"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, usd_prorated_fee)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202401, JAN_2024_START, FEB_2024_START);
    fixture.usage.service_start_s = JAN_26_2024;
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_BASE_FEE, "")->amount.minor, 1935));
    cr_assert(eq(i64, invoice.total.minor, 1935));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, full_month_fee_not_prorated)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202401, JAN_2024_START, FEB_2024_START);
    fixture.usage.service_start_s = JAN_2024_START - 90 * DAY_S;
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *fee = line_of(&invoice, INVOICE_LINE_BASE_FEE, "");
    cr_assert(eq(i64, fee->amount.minor, 10000));
    cr_assert(eq(str, (char *)fee->quantity, "1"));
    cr_assert(eq(str, (char *)fee->description, "Base platform fee"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, service_after_period_has_no_fee)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202401, JAN_2024_START, FEB_2024_START);
    fixture.usage.service_start_s = FEB_2024_START;
    rate_ok(&fixture, book, &invoice);

    cr_assert(not(has_line(&invoice, INVOICE_LINE_BASE_FEE)));
    cr_assert(eq(i64, invoice.total.minor, 0));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, api_calls_per_million)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202407, JUL_2024_START, JUL_2024_START + 31 * DAY_S);
    usage_add(&fixture, METER_API_CALLS, "", 20000);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_API_CALLS, "")->amount.minor, 1));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, small_token_lines_round_to_zero)
{
    /* 40,000 tokens at 0.10 / M is 0.4 cents: the line shows 0. */
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202407, JUL_2024_START, JUL_2024_START + 31 * DAY_S);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-a", 40000);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-a")->amount.minor, 0));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, cached_input_uses_input_price_when_unset)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_CACHED_INPUT_TOKENS, "m-large", 1000000);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *line =
        line_of(&invoice, INVOICE_LINE_CACHED_INPUT_TOKENS, "m-large");
    cr_assert(eq(i64, line->amount.minor, 300));
    cr_assert(eq(str, (char *)line->unit_price, "3.00"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, cached_input_price_and_fallback_model)
{
    const char *text = "{\"name\": \"cached\", \"currency\": \"USD\", \"tokens_per_million\": {"
                       "\"m-large\": {\"input\": \"3.00\", \"cached_input\": \"1.50\"},"
                       " \"*\": {\"input\": \"0.000000150\"}}}";
    struct pricebook *book = NULL;
    char error[512] = "";
    cr_assert(eq(int, pricebook_parse(text, strlen(text), &book, error, sizeof(error)), HM_OK),
              "%s", error);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1000000);
    usage_add(&fixture, METER_CACHED_INPUT_TOKENS, "m-large", 1000000);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-new", UINT64_C(100000000000));
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-large")->amount.minor, 300));
    cr_assert(
        eq(i64, line_of(&invoice, INVOICE_LINE_CACHED_INPUT_TOKENS, "m-large")->amount.minor, 150));
    /* 10^11 tokens at 0.00000015 per million is 0.015: 2 cents under half-up. */
    const struct invoice_line *fallback = line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-new");
    cr_assert(eq(i64, fallback->amount.minor, 2));
    cr_assert(eq(str, (char *)fallback->unit_price, "0.00000015"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, unpriced_gpu_type_is_error)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "B200", 3600);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    cr_assert(eq(str, error,
                 "tenant acme (a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf): no price for GPU type "
                 "\"B200\" in price book \"pb-1\" version 1; add \"B200\" (or a \"*\" "
                 "fallback) to gpu_hour"));
    pricebook_free(book);
}

Test(pricing_rate, unpriced_model_is_error)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-new", 1000);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "tenant acme");
    assert_contains(error, "model \"m-new\"");
    assert_contains(error, "add \"m-new\" (or a \"*\" fallback) to tokens_per_million");
    pricebook_free(book);
}

Test(pricing_rate, unpriced_direction_is_error)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-mid", 1000);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "no price for output tokens of model \"m-mid\"");
    assert_contains(error, "add \"output\" to tokens_per_million entry \"m-mid\"");
    pricebook_free(book);
}

Test(pricing_rate, unpriced_transfer_is_error)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_TRANSFER_BYTES, "", GB);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "no price for data transfer in price book \"pb-1\" version 1");
    assert_contains(error, "add transfer_gb");
    pricebook_free(book);
}

Test(pricing_rate, zero_quantity_makes_no_line)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    book->versions[0].has_base_fee = false;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "B200", 0);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.line_count, 0));
    cr_assert(eq(i64, invoice.total.minor, 0));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_rate, empty_period_is_invalid)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUN_2024_START);
    cr_assert(eq(int, pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error)),
                 HM_ERR_INVALID));
    assert_contains(error, "invalid period");
    pricebook_free(book);
}

Test(pricing_rate, dimension_on_api_calls_is_invalid)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_API_CALLS, "H100", 10);
    cr_assert(eq(int, pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error)),
                 HM_ERR_INVALID));
    assert_contains(error, "API calls take no dimension");
    pricebook_free(book);
}

Test(pricing_rate, lines_in_fixed_order)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_STORAGE_BYTE_SECONDS, "", (unsigned __int128)GB * 30 * DAY_S);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-large", 1000);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 4000 * 3600);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1000);
    usage_add(&fixture, METER_API_CALLS, "", 1000);
    rate_ok(&fixture, book, &invoice);

    enum invoice_line_kind expected[] = {
        INVOICE_LINE_BASE_FEE,      INVOICE_LINE_GPU,       INVOICE_LINE_INPUT_TOKENS,
        INVOICE_LINE_OUTPUT_TOKENS, INVOICE_LINE_API_CALLS, INVOICE_LINE_STORAGE,
        INVOICE_LINE_DISCOUNT,
    };
    cr_assert(eq(sz, invoice.line_count, sizeof(expected) / sizeof(expected[0])));
    for (size_t i = 0; i < invoice.line_count; i++)
        cr_assert(eq(str, (char *)invoice_line_kind_name(invoice.lines[i].kind),
                     (char *)invoice_line_kind_name(expected[i])),
                  "line %zu", i);
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(invoice_json, amounts_as_strings_and_minor_units)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    json_t *json = NULL;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 1777608);
    usage_add(&fixture, METER_GPU_SECONDS, "A100", 5760144);
    usage_add(&fixture, METER_GPU_SECONDS, "L4", 5144400);
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(int, invoice_to_json(&invoice, &json), HM_OK));

    cr_assert(eq(str, (char *)json_string_value(json_object_get(json, "period")), "2024-06"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(json, "tenant_id")),
                 "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(json, "tenant_name")), "acme"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(json, "currency")), "USD"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(json, "period_start")),
                 "2024-06-01T00:00:00Z"));

    json_t *discount = json_object_get(json, "discount");
    cr_assert(eq(str, (char *)json_string_value(json_object_get(discount, "amount")), "373.47"));
    cr_assert(
        eq(i64, (int64_t)json_integer_value(json_object_get(discount, "amount_minor")), 37347));
    json_t *total = json_object_get(json, "total");
    cr_assert(eq(str, (char *)json_string_value(json_object_get(total, "amount")), "3461.18"));

    json_t *lines = json_object_get(json, "lines");
    cr_assert(eq(sz, json_array_size(lines), 5));
    /* GPU lines in byte order of the type: A100, H100, L4. */
    json_t *h100 = json_array_get(lines, 2);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "kind")), "gpu"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "dimension")), "H100"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "amount")), "1234.45"));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(h100, "amount_minor")), 123445));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(h100, "events")), 1));
    cr_assert(eq(ptr, json_object_get(h100, "slice_start"), NULL));
    json_t *discount_line = json_array_get(lines, 4);
    cr_assert(
        eq(str, (char *)json_string_value(json_object_get(discount_line, "amount")), "-373.47"));

    json_decref(json);
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(invoice_json, jpy_amount_has_no_point)
{
    struct pricebook *book = load_book(PB1_JPY_PATH);
    struct fixture fixture;
    struct invoice invoice;
    json_t *json = NULL;

    usage_begin(&fixture, 202401, JAN_2024_START, FEB_2024_START);
    fixture.usage.service_start_s = JAN_26_2024;
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1234567);
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(int, invoice_to_json(&invoice, &json), HM_OK));

    json_t *total = json_object_get(json, "total");
    cr_assert(eq(str, (char *)json_string_value(json_object_get(total, "amount")), "2491"));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(total, "amount_minor")), 2491));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(json, "currency_exponent")), 0));

    json_decref(json);
    invoice_free(&invoice);
    pricebook_free(book);
}

/* C3: credits larger than the invoice. Six 0.4-cent token lines, 1 cent of calls and of storage. */
Test(pricing_credits, credits_larger_than_invoice)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    const char *models[] = {"m-a", "m-b", "m-c", "m-d", "m-e", "m-f"};
    const int64_t july_s = 31 * DAY_S;

    book->versions[0].has_base_fee = false;
    usage_begin(&fixture, 202407, JUL_2024_START, AUG_2024_START);
    for (size_t i = 0; i < 6; i++)
        usage_add(&fixture, METER_INPUT_TOKENS, models[i], 40000);
    usage_add(&fixture, METER_API_CALLS, "", 20000);
    /* 0.5 GB held all month: 0.5 GB-month. */
    usage_add(&fixture, METER_STORAGE_BYTE_SECONDS, "", (unsigned __int128)(GB / 2) * july_s);
    credit_add(&fixture, 7, 500, JAN_2024_START, 0);
    rate_ok(&fixture, book, &invoice);

    for (size_t i = 0; i < 6; i++)
        cr_assert(
            eq(i64, line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, models[i])->amount.minor, 0));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_API_CALLS, "")->amount.minor, 1));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_STORAGE, "")->amount.minor, 1));
    cr_assert(eq(i64, invoice.subtotal.minor, 2));
    cr_assert(eq(i64, invoice.credits_applied.minor, 2));
    cr_assert(eq(i64, invoice.total.minor, 0));
    cr_assert(eq(sz, invoice.credit_count, 1));
    cr_assert(eq(u64, invoice.credits[0].id, 7));
    cr_assert(eq(i64, invoice.credits[0].applied_minor, 2));
    cr_assert(eq(i64, invoice.credits[0].balance_after_minor, 498));

    /* The three invariants of the case. */
    cr_assert(le(i64, invoice.credits_applied.minor, invoice.subtotal.minor));
    cr_assert(ge(i64, invoice.total.minor, 0));
    cr_assert(eq(i64, 500 - invoice.credits[0].balance_after_minor, invoice.credits_applied.minor));
    invoice_free(&invoice);
    pricebook_free(book);
}

/*
 * Burn order: earliest expiry first, then earliest grant, then lowest id;
 * grants without expiry last. Grant 6 expired at the period start and grant
 * 8 starts at the period end, so neither applies.
 */
Test(pricing_credits, burned_in_expiry_grant_id_order)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START); /* base fee 100.00 only */
    credit_add(&fixture, 1, 3000, JAN_2024_START, 0);
    credit_add(&fixture, 2, 3000, FEB_2024_START, SEP_2024_START);
    credit_add(&fixture, 3, 3000, MAR_2024_START, AUG_2024_START);
    credit_add(&fixture, 5, 3000, FEB_2024_START, AUG_2024_START);
    credit_add(&fixture, 4, 3000, FEB_2024_START, AUG_2024_START);
    credit_add(&fixture, 6, 3000, JAN_2024_START, JUN_2024_START);
    credit_add(&fixture, 8, 3000, JUL_2024_START, 0);
    credit_add(&fixture, 9, 0, JAN_2024_START, JUL_2024_START);
    rate_ok(&fixture, book, &invoice);

    const uint64_t ids[] = {4, 5, 3, 2};
    const int64_t applied[] = {3000, 3000, 3000, 1000};
    const int64_t after[] = {0, 0, 0, 2000};
    cr_assert(eq(sz, invoice.credit_count, 4));
    for (size_t i = 0; i < 4; i++) {
        cr_assert(eq(u64, invoice.credits[i].id, ids[i]), "credit %zu", i);
        cr_assert(eq(i64, invoice.credits[i].applied_minor, applied[i]), "credit %zu", i);
        cr_assert(eq(i64, invoice.credits[i].balance_after_minor, after[i]), "credit %zu", i);
    }
    cr_assert(eq(i64, invoice.subtotal.minor, 10000));
    cr_assert(eq(i64, invoice.credits_applied.minor, 10000));
    cr_assert(eq(i64, invoice.total.minor, 0));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_credits, grant_without_expiry_burns_last)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    credit_add(&fixture, 1, 8000, JAN_2024_START, 0);
    credit_add(&fixture, 2, 8000, MAR_2024_START, SEP_2024_START);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.credit_count, 2));
    cr_assert(eq(u64, invoice.credits[0].id, 2));
    cr_assert(eq(i64, invoice.credits[0].applied_minor, 8000));
    cr_assert(eq(u64, invoice.credits[1].id, 1));
    cr_assert(eq(i64, invoice.credits[1].applied_minor, 2000));
    cr_assert(eq(i64, invoice.credits[1].balance_after_minor, 6000));
    cr_assert(eq(i64, invoice.total.minor, 0));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* A grant that expired when the period began is kept; one granted after the period still pays. */
Test(pricing_credits, expired_grant_ignored_later_grant_used)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    credit_add(&fixture, 1, 5000, JAN_2024_START, JUN_2024_START);
    credit_add(&fixture, 2, 3000, JUL_2024_START, 0);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.credit_count, 1));
    cr_assert(eq(u64, invoice.credits[0].id, 2));
    cr_assert(eq(i64, invoice.credits[0].balance_after_minor, 0));
    cr_assert(eq(i64, invoice.credits_applied.minor, 3000));
    cr_assert(eq(i64, invoice.total.minor, 7000));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* A grant in another currency does not apply; a grant in the book's currency still pays. */
Test(pricing_credits, other_currency_does_not_apply)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 4 * HOUR_S);
    credit_add(&fixture, 12, 5000, JAN_2024_START, 0);
    snprintf(fixture.credits[0].currency, sizeof(fixture.credits[0].currency), "EUR");
    credit_add(&fixture, 13, 300, FEB_2024_START, 0);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, invoice.subtotal.minor, 11000));
    cr_assert(eq(sz, invoice.credit_count, 1));
    cr_assert(eq(u64, invoice.credits[0].id, 13));
    cr_assert(eq(i64, invoice.credits_applied.minor, 300));
    cr_assert(eq(i64, invoice.total.minor, 10700));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* An adjustment line counts in the subtotal, and credits pay it like any other line. */
Test(pricing_credits, adjustment_in_subtotal_and_credits)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    json_t *json = NULL;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.adjustments[0] = (struct usage_adjustment){202405, 125, 3, "Late usage of 2024-05"};
    fixture.usage.adjustment_count = 1;
    credit_add(&fixture, 1, 10100, JAN_2024_START, 0);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.line_count, 2));
    const struct invoice_line *line = &invoice.lines[1];
    cr_assert(eq(str, (char *)invoice_line_kind_name(line->kind), "adjustment"));
    cr_assert(eq(str, (char *)line->description, "Late usage of 2024-05"));
    cr_assert(eq(i64, line->amount.minor, 125));
    cr_assert(eq(u32, line->adjusted_period, 202405));
    cr_assert(eq(u64, line->event_count, 3));
    cr_assert(eq(i64, invoice.subtotal.minor, 10125));
    cr_assert(eq(i64, invoice.credits_applied.minor, 10100));
    cr_assert(eq(i64, invoice.total.minor, 25));

    cr_assert(eq(int, invoice_to_json(&invoice, &json), HM_OK));
    json_t *adjustment = json_array_get(json_object_get(json, "lines"), 1);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(adjustment, "period")), "2024-05"));
    json_t *applied = json_object_get(json, "credits_applied");
    cr_assert(eq(str, (char *)json_string_value(json_object_get(applied, "amount")), "101.00"));
    json_t *credit = json_array_get(json_object_get(json, "credits"), 0);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(credit, "id")), "1"));
    json_t *balance = json_object_get(credit, "balance_after");
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(balance, "amount_minor")), 0));
    json_t *total = json_object_get(json, "total");
    cr_assert(eq(str, (char *)json_string_value(json_object_get(total, "amount")), "0.25"));
    json_decref(json);
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_credits, adjustment_of_zero_is_invalid)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.adjustments[0] = (struct usage_adjustment){202405, 0, 1, "Late usage"};
    fixture.usage.adjustment_count = 1;
    cr_assert(eq(int, pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error)),
                 HM_ERR_INVALID));
    assert_contains(error, "adjustment 0 has amount 0 minor units");
    pricebook_free(book);
}

/* Rates one GPU type of rate-models.json for June 2024 and returns its line's amount. */
static int64_t models_gpu_minor(const char *gpu_type, int64_t seconds)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, gpu_type, (unsigned __int128)seconds);
    rate_ok(&fixture, book, &invoice);
    int64_t amount = line_of(&invoice, INVOICE_LINE_GPU, gpu_type)->amount.minor;
    cr_assert(eq(i64, invoice.subtotal.minor, 10000 + amount));
    invoice_free(&invoice);
    pricebook_free(book);
    return amount;
}

/* Packages of 10 GPU-hours at 20.00: a started package is charged in full. */
Test(pricing_charge, package_partial_charged_in_full)
{
    cr_assert(eq(i64, models_gpu_minor("P-pack", 25 * HOUR_S), 6000));
    cr_assert(eq(i64, models_gpu_minor("P-pack", 1), 2000));
}

Test(pricing_charge, package_exact_multiple)
{
    cr_assert(eq(i64, models_gpu_minor("P-pack", 20 * HOUR_S), 4000));
}

/* Graduated: 1000 h at 2.50, then 2.00. */
Test(pricing_charge, graduated_at_and_past_boundary)
{
    cr_assert(eq(i64, models_gpu_minor("G-grad", 1000 * HOUR_S), 250000));
    cr_assert(eq(i64, models_gpu_minor("G-grad", 1000 * HOUR_S + 1), 250000));
    cr_assert(eq(i64, models_gpu_minor("G-grad", 1000 * HOUR_S + 1800), 250100));
}

/* Volume: up to 1000 h at 2.50, above it every hour at 2.00. */
Test(pricing_charge, volume_at_and_past_boundary)
{
    cr_assert(eq(i64, models_gpu_minor("V-vol", 1000 * HOUR_S), 250000));
    cr_assert(eq(i64, models_gpu_minor("V-vol", 1000 * HOUR_S + 1), 200000));
    cr_assert(eq(i64, models_gpu_minor("V-vol", 1000 * HOUR_S + 1800), 200100));
}

/* Token charges: graduated input (1M at 3.00, then 1.00), packages of 1M output tokens at 15.00. */
Test(pricing_charge, token_graduated_and_package)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-tier", 2500000);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-tier", 2500000);
    rate_ok(&fixture, book, &invoice);

    const struct invoice_line *input = line_of(&invoice, INVOICE_LINE_INPUT_TOKENS, "m-tier");
    cr_assert(eq(i64, input->amount.minor, 450));
    cr_assert(eq(str, (char *)input->quantity, "2500000"));
    /* The shown price of a graduated line is its average: 4.50 / 2.5M tokens. */
    cr_assert(eq(str, (char *)input->unit_price, "1.80"));
    cr_assert(eq(str, (char *)input->price_unit, "average per 1M tokens"));
    /* A package line shows the packages charged at the package price: 3 x 15.00. */
    const struct invoice_line *output = line_of(&invoice, INVOICE_LINE_OUTPUT_TOKENS, "m-tier");
    cr_assert(eq(i64, output->amount.minor, 4500));
    cr_assert(eq(str, (char *)output->quantity, "3"));
    cr_assert(eq(int, output->quantity_exact, true));
    cr_assert(eq(str, (char *)output->unit, "package of 1M tokens"));
    cr_assert(eq(str, (char *)output->unit_price, "15.00"));
    cr_assert(eq(str, (char *)output->price_unit, "per package"));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_charge, package_overflow_is_error)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    /* 10^21 GPU-seconds: 2.8 * 10^16 packages at 20.00 exceed 2^63 - 1 cents. */
    unsigned __int128 seconds = (unsigned __int128)UINT64_C(1000000000000) * 1000000000;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "P-pack", seconds);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_OVERFLOW), "%s", error);
    assert_contains(error, "tenant acme (a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf)");
    assert_contains(error, "gpu line \"GPU usage, P-pack\"");
    assert_contains(error, "package charge (package of 10 at 20 USD)");
    cr_assert(eq(ptr, invoice.lines, NULL));
    pricebook_free(book);
}

Test(pricing_charge, graduated_overflow_is_error)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    unsigned __int128 seconds = (unsigned __int128)UINT64_C(1000000000000) * 1000000000;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "G-grad", seconds);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_OVERFLOW), "%s", error);
    assert_contains(error, "tenant acme");
    assert_contains(error, "gpu line \"GPU usage, G-grad\"");
    assert_contains(error, "graduated charge (last tier at 2 USD)");
    pricebook_free(book);
}

Test(pricing_fees, support_fee_per_tier)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.usage.support_tier = SUPPORT_PRO;
    rate_ok(&fixture, book, &invoice);
    const struct invoice_line *support = line_of(&invoice, INVOICE_LINE_SUPPORT_FEE, "");
    cr_assert(eq(i64, support->amount.minor, 20000));
    cr_assert(eq(str, (char *)support->description, "Support plan, pro"));
    cr_assert(eq(sz, invoice.line_count, 2));
    cr_assert(eq(i64, invoice.subtotal.minor, 30000));
    invoice_free(&invoice);

    /* Basic from June 11: 50.00 x 20 / 30 days = 33.333... */
    fixture.usage.support_tier = SUPPORT_BASIC;
    fixture.usage.service_start_s = JUN_11_2024;
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_SUPPORT_FEE, "")->amount.minor, 3333));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_BASE_FEE, "")->amount.minor, 6667));
    invoice_free(&invoice);

    fixture.usage.support_tier = SUPPORT_NONE;
    rate_ok(&fixture, book, &invoice);
    cr_assert(not(has_line(&invoice, INVOICE_LINE_SUPPORT_FEE)));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_fees, support_tier_without_price_is_error)
{
    struct pricebook *book = load_book(MODELS_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.usage.support_tier = SUPPORT_ENTERPRISE;
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "no price for support tier \"enterprise\" in price book "
                           "\"rate-models\" version 1");
    assert_contains(error, "add \"enterprise\" to support_fee");
    pricebook_free(book);
}

/* A service end inside the period prorates the fee: 20 of 30 days, then 10 of 30. */
Test(pricing_fees, service_end_prorates_fee)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.usage.service_end_s = JUN_21_2024;
    rate_ok(&fixture, book, &invoice);
    const struct invoice_line *fee = line_of(&invoice, INVOICE_LINE_BASE_FEE, "");
    cr_assert(eq(i64, fee->amount.minor, 6667));
    assert_contains(fee->description, "Base platform fee, prorated");
    invoice_free(&invoice);

    fixture.usage.service_start_s = JUN_11_2024;
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_BASE_FEE, "")->amount.minor, 3333));
    invoice_free(&invoice);

    /* An end at or before the period start leaves no fee. */
    fixture.usage.service_start_s = JUN_2024_START;
    fixture.usage.service_end_s = JUN_2024_START;
    rate_ok(&fixture, book, &invoice);
    cr_assert(not(has_line(&invoice, INVOICE_LINE_BASE_FEE)));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* rate-change.json: a new version from June 16 cuts June into two slices of 15 days. */
Test(pricing_slices, per_unit_and_fee_per_slice)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", 100 * HOUR_S, 0);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", 100 * HOUR_S, JUN_16_2024);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(sz, invoice.slice_count, 2));
    cr_assert(eq(sz, invoice.line_count, 4));
    const int64_t amounts[] = {5000, 6500, 25000, 20000};
    const int64_t starts[] = {JUN_2024_START, JUN_16_2024, JUN_2024_START, JUN_16_2024};
    for (size_t i = 0; i < 4; i++) {
        cr_assert(eq(i64, invoice.lines[i].amount.minor, amounts[i]), "line %zu", i);
        cr_assert(eq(i64, invoice.lines[i].slice_start_s, starts[i]), "line %zu", i);
    }
    cr_assert(eq(str, invoice.lines[0].description, "Base platform fee, from 2024-06-01 00:00"));
    cr_assert(eq(str, invoice.lines[1].description, "Base platform fee, from 2024-06-16 00:00"));
    cr_assert(eq(str, invoice.lines[2].description, "GPU usage, H100, from 2024-06-01 00:00"));
    cr_assert(eq(str, invoice.lines[3].description, "GPU usage, H100, from 2024-06-16 00:00"));
    cr_assert(eq(str, invoice.lines[3].unit_price, "2.00"));
    cr_assert(eq(i64, invoice.subtotal.minor, 56500));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Graduated: 80 h then 50 h; the second slice continues at 80 h on its own tiers. */
Test(pricing_slices, graduated_position_carried_across)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "G-grad", 50 * HOUR_S, JUN_16_2024);
    usage_add_at(&fixture, METER_GPU_SECONDS, "G-grad", 80 * HOUR_S, JUN_2024_START);
    rate_ok(&fixture, book, &invoice);

    /* 80 x 3.00 = 240.00; then (100 - 80) x 4.00 + 30 x 1.00 = 110.00. */
    cr_assert(eq(i64, invoice.lines[2].amount.minor, 24000));
    cr_assert(eq(i64, invoice.lines[2].slice_start_s, JUN_2024_START));
    cr_assert(eq(i64, invoice.lines[3].amount.minor, 11000));
    cr_assert(eq(i64, invoice.lines[3].slice_start_s, JUN_16_2024));
    cr_assert(eq(str, invoice.lines[3].quantity, "50"));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Volume: the whole period's 130 h pick the second tier in both slices, at each slice's price. */
Test(pricing_slices, volume_tier_of_whole_period)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "V-vol", 80 * HOUR_S, 0);
    usage_add_at(&fixture, METER_GPU_SECONDS, "V-vol", 50 * HOUR_S, JUN_16_2024);
    rate_ok(&fixture, book, &invoice);

    cr_assert(eq(i64, invoice.lines[2].amount.minor, 16000)); /* 80 x 2.00 */
    cr_assert(eq(i64, invoice.lines[3].amount.minor, 7500));  /* 50 x 1.50 */
    cr_assert(eq(str, invoice.lines[3].unit_price, "1.50"));
    /* 130 h in all is in the second tier of both versions. */
    cr_assert(eq(str, invoice.lines[2].price_unit, "per GPU-hour, tier 2"));
    cr_assert(eq(str, invoice.lines[3].price_unit, "per GPU-hour, tier 2"));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* The discount comes from the last slice's version; the first version has none. */
Test(pricing_slices, discount_from_last_version)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", 700 * HOUR_S, 0);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", 500 * HOUR_S, JUN_16_2024);
    rate_ok(&fixture, book, &invoice);

    /* 1200 h > 1000 h: 10 % of 1750.00 + 1000.00. */
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_DISCOUNT, "")->amount.minor, -27500));
    cr_assert(eq(i64, invoice.total.minor, 5000 + 6500 + 175000 + 100000 - 27500));
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_slices, json_slice_start)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;
    json_t *json = NULL;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", HOUR_S, JUN_16_2024);
    fixture.items[0].event_count = 4;
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(int, invoice_to_json(&invoice, &json), HM_OK));

    json_t *lines = json_object_get(json, "lines");
    cr_assert(eq(sz, json_array_size(lines), 3));
    json_t *gpu = json_array_get(lines, 2);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(gpu, "slice_start")),
                 "2024-06-16T00:00:00Z"));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(gpu, "events")), 4));
    json_t *fee = json_array_get(lines, 0);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(fee, "slice_start")),
                 "2024-06-01T00:00:00Z"));
    cr_assert(eq(ptr, json_object_get(fee, "events"), NULL));
    cr_assert(eq(sz, json_array_size(json_object_get(json, "credits")), 0));

    /* The same invoice always gives the same text. */
    char *first = json_dumps(json, JSON_COMPACT);
    json_t *again = NULL;
    cr_assert(eq(int, invoice_to_json(&invoice, &again), HM_OK));
    char *second = json_dumps(again, JSON_COMPACT);
    cr_assert(eq(str, first, second));
    free(first);
    free(second);
    json_decref(again);
    json_decref(json);
    invoice_free(&invoice);
    pricebook_free(book);
}

Test(pricing_slices, item_outside_slice_starts_is_invalid)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "H100", HOUR_S, JUN_16_2024 + 1);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_INVALID));
    assert_contains(error, "starts at 2024-06-16T00:00:01Z, which is not a slice start");
    pricebook_free(book);
}

/* rate-change.json prices A100 only in its first version. */
Test(pricing_slices, missing_price_names_version)
{
    struct pricebook *book = load_book(CHANGE_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add_at(&fixture, METER_GPU_SECONDS, "A100", HOUR_S, 0);
    usage_add_at(&fixture, METER_GPU_SECONDS, "A100", HOUR_S, JUN_16_2024);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "no price for GPU type \"A100\" in price book \"rate-change\" version 2 "
                           "(effective from 2024-06-16T00:00:00Z)");
    pricebook_free(book);
}

Test(pricing_slices, period_before_first_version_is_error)
{
    const char *text = "{\"name\": \"late\", \"currency\": \"USD\", \"versions\": ["
                       "{\"effective_from\": \"2024-06-10T00:00:00Z\", \"base_fee\": \"1.00\"}]}";
    struct pricebook *book = NULL;
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";
    cr_assert(eq(int, pricebook_parse(text, strlen(text), &book, error, sizeof(error)), HM_OK),
              "%s", error);

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_NOT_FOUND));
    assert_contains(error, "price book \"late\" has no version in effect at the period start "
                           "2024-06-01T00:00:00Z");
    assert_contains(error, "version 1 takes effect at 2024-06-10T00:00:00Z");
    pricebook_free(book);
}

/* Rates H100 hours against rate-commit.json (minimum 500.00, 10 % above 100 h). */
static void rate_commit(int64_t hours, int64_t service_start_s, struct invoice *invoice)
{
    struct pricebook *book = load_book(COMMIT_PATH);
    struct fixture fixture;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    fixture.usage.service_start_s = service_start_s;
    usage_add(&fixture, METER_GPU_SECONDS, "H100", (unsigned __int128)(hours * HOUR_S));
    rate_ok(&fixture, book, invoice);
    pricebook_free(book);
}

Test(pricing_commitment, below_minimum_adds_true_up)
{
    struct invoice invoice;

    rate_commit(100, JUN_2024_START, &invoice);
    const struct invoice_line *line = line_of(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP, "");
    cr_assert(eq(i64, line->amount.minor, 25000));
    cr_assert(eq(i64, invoice.subtotal.minor, 10000 + 25000 + 25000));
    cr_assert(eq(str, (char *)invoice_line_kind_name(invoice.lines[invoice.line_count - 1].kind),
                 "commitment_true_up"));
    invoice_free(&invoice);
}

Test(pricing_commitment, above_minimum_no_line)
{
    struct invoice invoice;

    rate_commit(300, JUN_2024_START, &invoice); /* 750.00 less 75.00 */
    cr_assert(not(has_line(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP)));
    invoice_free(&invoice);
}

Test(pricing_commitment, equal_minimum_no_line)
{
    struct pricebook *book = load_book(COMMIT_PATH);
    struct fixture fixture;
    struct invoice invoice;

    book->versions[0].discount_count = 0;
    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 200 * HOUR_S);
    rate_ok(&fixture, book, &invoice);
    cr_assert(not(has_line(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP)));
    cr_assert(eq(i64, invoice.subtotal.minor, 10000 + 50000));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Usage net of discounts counts: 150 h is 375.00 less 37.50, so the true-up is 162.50. */
Test(pricing_commitment, discounts_count_against_minimum)
{
    struct invoice invoice;

    rate_commit(150, JUN_2024_START, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_DISCOUNT, "")->amount.minor, -3750));
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP, "")->amount.minor, 16250));
    cr_assert(eq(i64, invoice.total.minor, 10000 + 37500 - 3750 + 16250));
    invoice_free(&invoice);

    /* 200 h: 500.00 less 10 % is 450.00, 50.00 short of the minimum. */
    rate_commit(200, JUN_2024_START, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP, "")->amount.minor, 5000));
    invoice_free(&invoice);
}

/* From June 11 the minimum is 500.00 x 20 / 30 = 333.33. */
Test(pricing_commitment, minimum_prorated)
{
    struct invoice invoice;

    rate_commit(100, JUN_11_2024, &invoice);
    cr_assert(eq(i64, line_of(&invoice, INVOICE_LINE_COMMITMENT_TRUE_UP, "")->amount.minor, 8333));
    invoice_free(&invoice);
}

/*
 * rate-discounts.json: tokens get a graduated discount driven by GPU-hours
 * (5 % above 0 h, 10 % above 100 h), API calls a volume discount driven by
 * input tokens (20 % above 0.5M).
 */
Test(pricing_discount, token_kinds_driven_by_gpu)
{
    struct pricebook *book = load_book(DISCOUNTS_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", 200 * HOUR_S);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1000000);
    usage_add(&fixture, METER_OUTPUT_TOKENS, "m-large", 2000000);
    usage_add(&fixture, METER_API_CALLS, "", 10000000);
    rate_ok(&fixture, book, &invoice);

    /* The GPU discount (first) takes nothing below 1000 h; then the two discounts in book order. */
    cr_assert(eq(sz, invoice.line_count, 6));
    const struct invoice_line *tokens = &invoice.lines[4];
    cr_assert(eq(str, (char *)tokens->description, "Token discount for GPU customers"));
    /* 33.00 x (5 % x 100 h + 10 % x 100 h) / 200 h = 2.475. */
    cr_assert(eq(i64, tokens->amount.minor, -248));
    cr_assert(eq(str, (char *)tokens->quantity, "33"));
    cr_assert(eq(str, (char *)tokens->unit_price, "7.5"));
    const struct invoice_line *calls = &invoice.lines[5];
    cr_assert(eq(str, (char *)calls->description, "API call discount for token customers"));
    cr_assert(eq(i64, calls->amount.minor, -100));
    cr_assert(eq(i64, invoice.discount_total.minor, 348));
    cr_assert(eq(i64, invoice.subtotal.minor, 50000 + 300 + 3000 + 500));
    cr_assert(eq(i64, invoice.total.minor, 53800 - 348));
    invoice_free(&invoice);

    /* 50 h stay in the first tier: 5 % of 33.00. */
    fixture.items[0].quantity = 50 * HOUR_S;
    rate_ok(&fixture, book, &invoice);
    cr_assert(eq(i64, invoice.lines[4].amount.minor, -165));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Without GPU usage the token discount has no driver and makes no line. */
Test(pricing_discount, zero_driver_makes_no_line)
{
    struct pricebook *book = load_book(DISCOUNTS_PATH);
    struct fixture fixture;
    struct invoice invoice;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_INPUT_TOKENS, "m-large", 1000000);
    rate_ok(&fixture, book, &invoice);
    cr_assert(not(has_line(&invoice, INVOICE_LINE_DISCOUNT)));
    cr_assert(eq(i64, invoice.total.minor, 300));
    invoice_free(&invoice);
    pricebook_free(book);
}

/* Two items that each fit 127 bits but not together: an error, never a wrapped sum. */
Test(pricing_rate, quantity_sum_beyond_int128_is_overflow)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;
    char error[512] = "";
    unsigned __int128 half = (unsigned __int128)1 << 126;

    usage_begin(&fixture, 202406, JUN_2024_START, JUL_2024_START);
    usage_add(&fixture, METER_GPU_SECONDS, "H100", half);
    usage_add(&fixture, METER_GPU_SECONDS, "A100", half);
    int status = pricing_rate(&fixture.usage, book, &invoice, error, sizeof(error));

    cr_assert(eq(int, status, HM_ERR_OVERFLOW));
    assert_contains(error, "tenant acme");
    assert_contains(error, "overflow summing GPU-seconds of \"A100\"");
    pricebook_free(book);
}
