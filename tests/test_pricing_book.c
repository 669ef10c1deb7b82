/* Price book parsing and validation of pricing/pricebook.h. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "pricing/pricebook.h"

#define PB1_PATH HM_SOURCE_DIR "/tests/data/pricebooks/pb1.json"

static struct pricebook *load_pb1(void)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    int status = pricebook_load_file(PB1_PATH, &book, error, sizeof(error));
    cr_assert(eq(int, status, HM_OK), "loading %s failed: %s", PB1_PATH, error);
    return book;
}

/* Parses text that must be rejected and returns the first message. */
static void parse_rejected(const char *text, char *error, size_t error_size)
{
    struct pricebook *book = (struct pricebook *)1;
    int status = pricebook_parse(text, strlen(text), &book, error, error_size);
    cr_assert(eq(int, status, HM_ERR_INVALID), "accepted: %s", text);
    cr_assert(eq(ptr, book, NULL));
}

static void assert_contains(const char *text, const char *part)
{
    cr_assert(not(eq(ptr, strstr(text, part), NULL)), "\"%s\" does not contain \"%s\"", text, part);
}

Test(pricebook, pb1_parses)
{
    struct pricebook *book = load_pb1();
    cr_assert(eq(str, book->name, "pb-1"));
    cr_assert(eq(str, (char *)book->currency->code, "USD"));
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_UP));
    cr_assert(book->has_base_fee);
    cr_assert(eq(i64, (int64_t)book->base_fee_per_month.pico, INT64_C(100000000000000)));
    cr_assert(eq(sz, book->gpu_count, 4));
    cr_assert(eq(sz, book->model_count, 9));
    cr_assert(book->has_api_calls);
    cr_assert(book->has_storage);
    cr_assert(not(book->has_transfer));
    cr_assert(eq(int, (int)book->discount_mode, (int)PRICEBOOK_DISCOUNT_VOLUME));
    cr_assert(eq(sz, book->tier_count, 2));
    cr_assert(eq(i64, (int64_t)(book->tiers[1].above_hours_pico / MONEY_DECIMAL_SCALE), 5000));
    cr_assert(eq(i64, (int64_t)(book->tiers[1].percent_pico / MONEY_DECIMAL_SCALE), 20));
    pricebook_free(book);
}

Test(pricebook, pb1_prices_found)
{
    struct pricebook *book = load_pb1();
    const struct pricebook_gpu_price *h100 = pricebook_find_gpu(book, "H100");
    const struct pricebook_model_price *mid = pricebook_find_model(book, "m-mid");
    cr_assert(not(eq(ptr, (void *)h100, NULL)));
    cr_assert(eq(i64, (int64_t)h100->per_hour.pico, INT64_C(2500000000000)));
    cr_assert(not(eq(ptr, (void *)mid, NULL)));
    cr_assert(mid->has_input);
    cr_assert(not(mid->has_output));
    cr_assert(eq(ptr, (void *)pricebook_find_gpu(book, "B200"), NULL));
    cr_assert(eq(ptr, (void *)pricebook_find_model(book, "m-unknown"), NULL));
    pricebook_free(book);
}

Test(pricebook, fallback_key_prices_unlisted)
{
    const char *text = "{\"name\": \"f\", \"currency\": \"USD\","
                       " \"gpu_hour\": {\"H100\": \"2.50\", \"*\": \"3.00\"},"
                       " \"tokens_per_million\": {\"*\": {\"input\": \"1.00\"}}}";
    struct pricebook *book = NULL;
    char error[256] = "";
    cr_assert(eq(int, pricebook_parse(text, strlen(text), &book, error, sizeof(error)), HM_OK),
              "%s", error);
    cr_assert(eq(str, (char *)pricebook_find_gpu(book, "H100")->gpu_type, "H100"));
    cr_assert(eq(str, (char *)pricebook_find_gpu(book, "B200")->gpu_type, "*"));
    cr_assert(eq(str, (char *)pricebook_find_model(book, "m-new")->model, "*"));
    pricebook_free(book);
}

Test(pricebook, minimal_book_has_defaults)
{
    const char *text = "{\"name\": \"min\", \"currency\": \"JPY\"}";
    struct pricebook *book = NULL;
    char error[256] = "";
    cr_assert(eq(int, pricebook_parse(text, strlen(text), &book, error, sizeof(error)), HM_OK),
              "%s", error);
    cr_assert(eq(int, book->currency->exponent, 0));
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_UP));
    cr_assert(not(book->has_base_fee));
    cr_assert(eq(int, (int)book->discount_mode, (int)PRICEBOOK_DISCOUNT_NONE));
    pricebook_free(book);
}

Test(pricebook, half_even_and_graduated_parse)
{
    const char *text = "{\"name\": \"g\", \"currency\": \"EUR\", \"rounding\": \"half_even\","
                       " \"gpu_volume_discount\": {\"mode\": \"graduated\", \"tiers\":"
                       " [{\"above_hours\": \"0.5\", \"percent\": \"12.5\"}]}}";
    struct pricebook *book = NULL;
    char error[256] = "";
    cr_assert(eq(int, pricebook_parse(text, strlen(text), &book, error, sizeof(error)), HM_OK),
              "%s", error);
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_EVEN));
    cr_assert(eq(int, (int)book->discount_mode, (int)PRICEBOOK_DISCOUNT_GRADUATED));
    cr_assert(eq(i64, (int64_t)book->tiers[0].percent_pico, INT64_C(12500000000000)));
    pricebook_free(book);
}

Test(pricebook, number_instead_of_string)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"base_fee\": 100.5}", error,
                   sizeof(error));
    assert_contains(error, "$.base_fee: ");
    assert_contains(error, "JSON number");
    assert_contains(error, "quote it");
}

Test(pricebook, integer_number_instead_of_string)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": 2}}", error,
                   sizeof(error));
    assert_contains(error, "$.gpu_hour.H100: ");
    assert_contains(error, "JSON number");
}

Test(pricebook, decimal_comma_message)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"tokens_per_million\":"
                   " {\"m-large\": {\"input\": \"3,00\"}}}",
                   error, sizeof(error));
    cr_assert(eq(str, error,
                 "$.tokens_per_million.m-large.input: invalid decimal \"3,00\": expected digits "
                 "with an optional '-' and '.'; write a decimal string such as \"3.00\""));
}

Test(pricebook, bad_decimal_in_fallback_key)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hour\": {\"*\": \"1e5\"}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_hour[\"*\"]: invalid decimal \"1e5\"");
}

Test(pricebook, negative_price)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"storage_gb_month\": \"-0.02\"}",
                   error, sizeof(error));
    assert_contains(error, "$.storage_gb_month: negative value \"-0.02\"");
}

Test(pricebook, unknown_top_level_key)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hours\": {}}", error,
                   sizeof(error));
    assert_contains(error, "$.gpu_hours: unknown key");
}

Test(pricebook, unknown_model_key)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"tokens_per_million\":"
                   " {\"m-large\": {\"inptu\": \"3.00\"}}}",
                   error, sizeof(error));
    assert_contains(error, "$.tokens_per_million.m-large.inptu: unknown key");
}

Test(pricebook, unknown_rounding)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"rounding\": \"bankers\"}", error,
                   sizeof(error));
    assert_contains(error, "$.rounding: unknown rounding \"bankers\"");
    assert_contains(error, "\"half_up\" or \"half_even\"");
}

Test(pricebook, unknown_discount_mode)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\":"
                   " {\"mode\": \"tiered\", \"tiers\": [{\"above_hours\": \"1\", \"percent\":"
                   " \"1\"}]}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.mode: unknown mode \"tiered\"");
}

Test(pricebook, descending_tiers)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\":"
                   " {\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"5000\", \"percent\":"
                   " \"20\"}, {\"above_hours\": \"1000\", \"percent\": \"10\"}]}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[1].above_hours: 1000 is not above the "
                           "previous tier's 5000");
}

Test(pricebook, equal_tiers)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\":"
                   " {\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"1000\", \"percent\":"
                   " \"10\"}, {\"above_hours\": \"1000.0\", \"percent\": \"20\"}]}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[1].above_hours: ");
}

Test(pricebook, percent_above_100)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\":"
                   " {\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"1000\", \"percent\":"
                   " \"100.000000000001\"}]}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[0].percent: percent \"100.000000000001\" "
                           "is above 100");
}

Test(pricebook, missing_tier_field)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\":"
                   " {\"mode\": \"volume\", \"tiers\": [{\"percent\": \"10\"}]}}",
                   error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[0]: missing \"above_hours\"");
}

Test(pricebook, too_many_tiers)
{
    char text[4096];
    size_t used = (size_t)snprintf(text, sizeof(text),
                                   "{\"name\": \"x\", \"currency\": \"USD\", "
                                   "\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [");
    for (int i = 0; i <= PRICEBOOK_TIERS_MAX; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used,
                                 "%s{\"above_hours\": \"%d\", \"percent\": \"1\"}", i ? ", " : "",
                                 i * 100);
    snprintf(text + used, sizeof(text) - used, "]}}");

    char error[512];
    parse_rejected(text, error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers: 17 tiers; at most 16");
}

Test(pricebook, too_many_gpu_types)
{
    size_t size = 64 * 1024;
    char *text = malloc(size);
    size_t used =
        (size_t)snprintf(text, size, "{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hour\": {");
    for (int i = 0; i <= PRICEBOOK_GPU_TYPES_MAX; i++)
        used +=
            (size_t)snprintf(text + used, size - used, "%s\"gpu-%d\": \"1.00\"", i ? ", " : "", i);
    snprintf(text + used, size - used, "}}");

    char error[512];
    parse_rejected(text, error, sizeof(error));
    assert_contains(error, "$.gpu_hour: 257 GPU types; at most 256");
    free(text);
}

Test(pricebook, model_name_too_long)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"tokens_per_million\": {"
                   "\"m-0123456789012345678901234567890123456789012345678901234567890123\":"
                   " {\"input\": \"1\"}}}",
                   error, sizeof(error));
    assert_contains(error, "model name is longer than 64 bytes");
}

Test(pricebook, unknown_currency)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USX\"}", error, sizeof(error));
    assert_contains(error, "$.currency: unknown currency \"USX\"");
}

Test(pricebook, missing_name_and_currency)
{
    char errors[1024];
    size_t count = 0;
    const char *text = "{}";
    cr_assert(eq(int, pricebook_check(text, strlen(text), errors, sizeof(errors), &count),
                 HM_ERR_INVALID));
    cr_assert(eq(sz, count, 2));
    assert_contains(errors, "$: missing \"name\"");
    assert_contains(errors, "$: missing \"currency\"");
}

Test(pricebook, duplicate_key_rejected)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hour\": {\"H100\": \"2.50\","
                   " \"H100\": \"0.25\"}}",
                   error, sizeof(error));
    assert_contains(error, "$: invalid JSON");
    assert_contains(error, "duplicate");
}

Test(pricebook, syntax_error_has_position)
{
    char error[512];
    parse_rejected("{\"name\": \"x\",\n \"currency\": }", error, sizeof(error));
    assert_contains(error, "$: invalid JSON at line 2");
}

Test(pricebook, not_an_object)
{
    char error[512];
    parse_rejected("[1, 2]", error, sizeof(error));
    assert_contains(error, "$: expected an object");
}

Test(pricebook, check_collects_every_error)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"usd\", \"base_fee\": 100,"
                       " \"gpu_hour\": {\"H100\": \"2,50\"}, \"extra\": true}";
    char errors[2048];
    size_t count = 0;
    cr_assert(eq(int, pricebook_check(text, strlen(text), errors, sizeof(errors), &count),
                 HM_ERR_INVALID));
    cr_assert(eq(sz, count, 4));
    assert_contains(errors, "$.currency: unknown currency \"usd\"");
    assert_contains(errors, "$.base_fee: ");
    assert_contains(errors, "$.gpu_hour.H100: invalid decimal \"2,50\"");
    assert_contains(errors, "$.extra: unknown key");

    size_t lines = 1;
    for (const char *p = errors; *p != '\0'; p++)
        lines += *p == '\n';
    cr_assert(eq(sz, lines, 4));
}

Test(pricebook, check_truncates_at_line_boundary)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"USD\", \"a\": 1, \"b\": 2}";
    char errors[200]; /* room for the first message (about 170 bytes) only */
    size_t count = 0;
    cr_assert(eq(int, pricebook_check(text, strlen(text), errors, sizeof(errors), &count),
                 HM_ERR_INVALID));
    cr_assert(eq(sz, count, 2));
    cr_assert(eq(ptr, strchr(errors, '\n'), NULL), "kept a partial second line: %s", errors);
    cr_assert(eq(int, strncmp(errors, "$.a: unknown key", 16), 0), "%s", errors);
}

Test(pricebook, check_valid_book)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"KWD\", \"transfer_gb\": \"0.000\"}";
    char errors[256];
    size_t count = 99;
    cr_assert(eq(int, pricebook_check(text, strlen(text), errors, sizeof(errors), &count), HM_OK));
    cr_assert(eq(sz, count, 0));
    cr_assert(eq(str, errors, ""));
}

Test(pricebook, parse_reports_first_error_only)
{
    char error[512];
    parse_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"a\": 1, \"b\": 2}", error,
                   sizeof(error));
    cr_assert(eq(str, error,
                 "$.a: unknown key; expected one of name, currency, rounding, base_fee, "
                 "gpu_hour, tokens_per_million, api_calls_per_million, storage_gb_month, "
                 "transfer_gb, gpu_volume_discount"));
}

Test(pricebook, missing_file_is_io_error)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    const char *path = HM_SOURCE_DIR "/tests/data/pricebooks/no-such-book.json";
    cr_assert(eq(int, pricebook_load_file(path, &book, error, sizeof(error)), HM_ERR_IO));
    assert_contains(error, "no-such-book.json: cannot open");
}

Test(pricebook, name_with_control_character)
{
    char error[512];
    parse_rejected("{\"name\": \"std\\u001b[31m\", \"currency\": \"USD\"}", error, sizeof(error));
    assert_contains(error, "$.name: name contains the control character 0x1b");
}

Test(pricebook, name_with_newline)
{
    char error[512];
    parse_rejected("{\"name\": \"std\\nsealed\", \"currency\": \"USD\"}", error, sizeof(error));
    assert_contains(error, "control character 0x0a");
}

Test(pricebook, tier_order_checked_beside_other_errors)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\": "
                       "{\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"5000\", \"percent\": "
                       "\"120\"}, {\"above_hours\": \"1000\", \"percent\": \"10\"}]}}";
    char errors[2048];
    size_t count = 0;
    cr_assert_eq(pricebook_check(text, strlen(text), errors, sizeof errors, &count),
                 HM_ERR_INVALID);
    cr_assert_eq(count, 2, "errors: %s", errors);
    assert_contains(errors, "percent \"120\" is above 100");
    assert_contains(errors, "1000 is not above the previous tier's 5000");
}
