/*
 * Rating of usage against the pb-1 price book (tests/data/pricebooks/pb1.json)
 * and its JPY variant, with expected amounts exact to the minor unit.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "pricing/invoice.h"

#define PB1_PATH HM_SOURCE_DIR "/tests/data/pricebooks/pb1.json"
#define PB1_JPY_PATH HM_SOURCE_DIR "/tests/data/pricebooks/pb1-jpy.json"

/* Period bounds in Unix seconds (UTC midnight). */
#define JAN_2024_START INT64_C(1704067200)
#define JAN_26_2024 INT64_C(1706227200)
#define FEB_2024_START INT64_C(1706745600)
#define FEB_15_2024 INT64_C(1707955200)
#define MAR_2024_START INT64_C(1709251200)
#define JUN_2024_START INT64_C(1717200000)
#define JUL_2024_START INT64_C(1719792000)

#define GB INT64_C(1000000000)
#define DAY_S INT64_C(86400)
#define FIXTURE_ITEMS_MAX 16

struct fixture {
    struct usage_totals usage;
    struct usage_item items[FIXTURE_ITEMS_MAX];
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

    book->discount_mode = mode; /* the same tiers, read the other way */
    book->has_base_fee = false;
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

    book->has_base_fee = false;
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
    assert_contains(error, "1000000000000000000000000 token at 15 USD per 1M tokens");
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
    assert_contains(error, "overflow adding line \"GPU usage, G-test\" to the subtotal");
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
                 "\"B200\" in price book \"pb-1\"; add \"B200\" (or a \"*\" fallback) to "
                 "gpu_hour"));
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
    assert_contains(error, "add transfer_gb to the price book");
    pricebook_free(book);
}

Test(pricing_rate, zero_quantity_makes_no_line)
{
    struct pricebook *book = load_book(PB1_PATH);
    struct fixture fixture;
    struct invoice invoice;

    book->has_base_fee = false;
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
    json_t *h100 = json_array_get(lines, 1);
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "kind")), "gpu"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "dimension")), "H100"));
    cr_assert(eq(str, (char *)json_string_value(json_object_get(h100, "amount")), "1234.45"));
    cr_assert(eq(i64, (int64_t)json_integer_value(json_object_get(h100, "amount_minor")), 123445));
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
