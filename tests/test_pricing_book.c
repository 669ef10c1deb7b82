/* Price book parsing, validation and queries of pricing/pricebook.h. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "pricing/pricebook.h"

#define BOOKS_DIR HM_SOURCE_DIR "/tests/data/pricebooks/"
#define PB1_PATH BOOKS_DIR "pb1.json"
#define VERSIONS_PATH BOOKS_DIR "book-versions.json"

/* A decimal with whole units, in the 10^-12 units of money.h. */
#define PICO(units) ((int64_t)(units)*INT64_C(1000000000000))

/* Unix seconds of the effective times used below (Python's datetime agrees). */
#define T_2024_06_01 INT64_C(1717200000)
#define T_2024_06_16_NOON INT64_C(1718539200)
#define T_2024_07_01 INT64_C(1719792000)

static struct pricebook *load_book(const char *path)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    int status = pricebook_load_file(path, &book, error, sizeof(error));
    cr_assert(eq(int, status, HM_OK), "loading %s failed: %s", path, error);
    return book;
}

static struct pricebook *parse_accepted(const char *text)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    int status = pricebook_parse(text, strlen(text), &book, error, sizeof(error));
    cr_assert(eq(int, status, HM_OK), "rejected (%s): %s", error, text);
    cr_assert(not(eq(ptr, book, NULL)));
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

/* Rejects a USD book named "x" with the given fields after name and currency. */
static void fields_rejected(const char *fields, char *error, size_t error_size)
{
    char text[8192];
    int length = snprintf(text, sizeof(text), "{\"name\": \"x\", \"currency\": \"USD\", %s}",
                          fields);
    cr_assert(length > 0 && (size_t)length < sizeof(text), "book text of %d bytes", length);
    parse_rejected(text, error, error_size);
}

static struct pricebook *fields_accepted(const char *fields)
{
    char text[8192];
    int length = snprintf(text, sizeof(text), "{\"name\": \"x\", \"currency\": \"USD\", %s}",
                          fields);
    cr_assert(length > 0 && (size_t)length < sizeof(text), "book text of %d bytes", length);
    return parse_accepted(text);
}

/* Runs pricebook_check on text that must be invalid and returns the error count. */
static size_t check_rejected(const char *text, char *errors, size_t errors_size)
{
    size_t count = 0;
    int status = pricebook_check(text, strlen(text), errors, errors_size, &count);
    cr_assert(eq(int, status, HM_ERR_INVALID), "accepted: %s", text);
    return count;
}

static void assert_contains(const char *text, const char *part)
{
    cr_assert(not(eq(ptr, strstr(text, part), NULL)), "\"%s\" does not contain \"%s\"", text, part);
}

static size_t line_count(const char *text)
{
    size_t lines = text[0] != '\0';
    for (const char *p = text; *p != '\0'; p++)
        lines += *p == '\n';
    return lines;
}

/* ---- Books in the single-version format ---- */

Test(pricebook, pb1_parses)
{
    struct pricebook *book = load_book(PB1_PATH);
    cr_assert(eq(str, book->name, "pb-1"));
    cr_assert(eq(str, (char *)book->currency->code, "USD"));
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_UP));
    cr_assert(eq(sz, book->version_count, 1));

    const struct pricebook_version *version = &book->versions[0];
    cr_assert(not(version->has_effective_from));
    cr_assert(version->has_base_fee);
    cr_assert(eq(i64, (int64_t)version->base_fee_per_month.pico, PICO(100)));
    cr_assert(eq(sz, version->gpu_count, 4));
    cr_assert(eq(sz, version->model_count, 9));
    cr_assert(version->has_api_calls);
    cr_assert(version->has_storage);
    cr_assert(not(version->has_transfer));
    cr_assert(not(version->has_commitment));
    cr_assert(not(version->has_support_fee[SUPPORT_BASIC]));
    pricebook_free(book);
}

Test(pricebook, pb1_discount_is_shorthand)
{
    struct pricebook *book = load_book(PB1_PATH);
    const struct pricebook_version *version = &book->versions[0];
    cr_assert(eq(sz, version->discount_count, 1));

    const struct pricebook_discount *discount = &version->discounts[0];
    cr_assert(eq(str, (char *)discount->name, "GPU volume discount"));
    cr_assert(discount->applies_to[0]);
    for (int kind = 1; kind < PRICEBOOK_USAGE_KINDS; kind++)
        cr_assert(not(discount->applies_to[kind]), "kind %d", kind);
    cr_assert(eq(int, discount->driver, 0));
    cr_assert(eq(int, (int)discount->mode, (int)PRICEBOOK_DISCOUNT_VOLUME));
    cr_assert(eq(sz, discount->tier_count, 2));
    cr_assert(eq(i64, (int64_t)discount->tiers[0].above_pico, PICO(1000)));
    cr_assert(eq(i64, (int64_t)discount->tiers[0].percent_pico, PICO(10)));
    cr_assert(eq(i64, (int64_t)discount->tiers[1].above_pico, PICO(5000)));
    cr_assert(eq(i64, (int64_t)discount->tiers[1].percent_pico, PICO(20)));
    pricebook_free(book);
}

Test(pricebook, pb1_prices_found)
{
    struct pricebook *book = load_book(PB1_PATH);
    const struct pricebook_version *version = &book->versions[0];
    const struct pricebook_gpu_price *h100 = pricebook_find_gpu(version, "H100");
    const struct pricebook_model_price *mid = pricebook_find_model(version, "m-mid");
    cr_assert(not(eq(ptr, (void *)h100, NULL)));
    cr_assert(eq(int, (int)h100->per_hour.model, (int)PRICEBOOK_CHARGE_PER_UNIT));
    cr_assert(eq(i64, (int64_t)h100->per_hour.price.pico, INT64_C(2500000000000)));
    cr_assert(not(eq(ptr, (void *)mid, NULL)));
    cr_assert(mid->has_input);
    cr_assert(eq(i64, (int64_t)mid->input.price.pico, INT64_C(2500000000000)));
    cr_assert(not(mid->has_output));
    cr_assert(not(mid->has_cached_input));
    cr_assert(eq(ptr, (void *)pricebook_find_gpu(version, "B200"), NULL));
    cr_assert(eq(ptr, (void *)pricebook_find_model(version, "m-unknown"), NULL));
    pricebook_free(book);
}

/* Every book of the single-version format still parses, with one version in effect always. */
Test(pricebook, old_books_parse)
{
    static const char *const paths[] = {
        HM_SOURCE_DIR "/data/pricebooks/default.json",
        BOOKS_DIR "pb1.json",
        BOOKS_DIR "pb1-jpy.json",
        BOOKS_DIR "e2e-graduated.json",
        BOOKS_DIR "e2e-volume-jpy.json",
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct pricebook *book = load_book(paths[i]);
        cr_assert(eq(sz, book->version_count, 1), "%s", paths[i]);
        cr_assert(not(book->versions[0].has_effective_from), "%s", paths[i]);
        cr_assert(eq(ptr, (void *)pricebook_version_at(book, INT64_MIN), &book->versions[0]));
        pricebook_free(book);
    }
}

Test(pricebook, e2e_graduated_fractions)
{
    struct pricebook *book = load_book(BOOKS_DIR "e2e-graduated.json");
    const struct pricebook_version *version = &book->versions[0];
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_EVEN));
    cr_assert(eq(i64, (int64_t)version->base_fee_per_month.pico, INT64_C(100005000000000)));
    cr_assert(eq(i64, (int64_t)version->storage_per_gb_month.price.pico, INT64_C(23000000000)));
    cr_assert(eq(int, (int)version->discounts[0].mode, (int)PRICEBOOK_DISCOUNT_GRADUATED));
    cr_assert(eq(i64, (int64_t)version->discounts[0].tiers[1].above_pico, INT64_C(1250000000000)));
    const struct pricebook_model_price *other = pricebook_find_model(version, "m-other");
    cr_assert(eq(str, (char *)other->model, "*"));
    cr_assert(eq(i64, (int64_t)other->cached_input.price.pico, INT64_C(125000000000)));
    pricebook_free(book);
}

Test(pricebook, fallback_key_prices_unlisted)
{
    struct pricebook *book =
        fields_accepted("\"gpu_hour\": {\"H100\": \"2.50\", \"*\": \"3.00\"},"
                        " \"tokens_per_million\": {\"*\": {\"input\": \"1.00\"}}");
    const struct pricebook_version *version = &book->versions[0];
    cr_assert(eq(str, (char *)pricebook_find_gpu(version, "H100")->gpu_type, "H100"));
    cr_assert(eq(str, (char *)pricebook_find_gpu(version, "B200")->gpu_type, "*"));
    cr_assert(eq(str, (char *)pricebook_find_model(version, "m-new")->model, "*"));
    pricebook_free(book);
}

Test(pricebook, minimal_book_has_defaults)
{
    struct pricebook *book = parse_accepted("{\"name\": \"min\", \"currency\": \"JPY\"}");
    cr_assert(eq(int, book->currency->exponent, 0));
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_UP));
    cr_assert(eq(sz, book->version_count, 1));
    cr_assert(not(book->versions[0].has_base_fee));
    cr_assert(eq(sz, book->versions[0].gpu_count, 0));
    cr_assert(eq(ptr, (void *)book->versions[0].gpu, NULL));
    cr_assert(eq(sz, book->versions[0].discount_count, 0));
    cr_assert(eq(ptr, (void *)pricebook_find_gpu(&book->versions[0], "H100"), NULL));
    pricebook_free(book);
}

Test(pricebook, half_even_and_graduated_parse)
{
    struct pricebook *book =
        parse_accepted("{\"name\": \"g\", \"currency\": \"EUR\", \"rounding\": \"half_even\","
                       " \"gpu_volume_discount\": {\"mode\": \"graduated\", \"tiers\":"
                       " [{\"above_hours\": \"0.5\", \"percent\": \"12.5\"}]}}");
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_EVEN));
    cr_assert(eq(int, (int)book->versions[0].discounts[0].mode, (int)PRICEBOOK_DISCOUNT_GRADUATED));
    cr_assert(eq(i64, (int64_t)book->versions[0].discounts[0].tiers[0].percent_pico,
                 INT64_C(12500000000000)));
    pricebook_free(book);
}

Test(pricebook, free_null_is_noop)
{
    pricebook_free(NULL);
}

/* ---- Amount and key errors ---- */

Test(pricebook, number_instead_of_string)
{
    char error[512];
    fields_rejected("\"base_fee\": 100.5", error, sizeof(error));
    assert_contains(error, "$.base_fee: ");
    assert_contains(error, "JSON number");
    assert_contains(error, "quote it");
}

Test(pricebook, integer_number_instead_of_string)
{
    char error[512];
    fields_rejected("\"gpu_hour\": {\"H100\": 2}", error, sizeof(error));
    assert_contains(error, "$.gpu_hour.H100: ");
    assert_contains(error, "JSON number");
}

Test(pricebook, decimal_comma_message)
{
    char error[512];
    fields_rejected("\"tokens_per_million\": {\"m-large\": {\"input\": \"3,00\"}}", error,
                    sizeof(error));
    cr_assert(eq(str, error,
                 "$.tokens_per_million.m-large.input: invalid decimal \"3,00\": expected digits "
                 "with an optional '-' and '.'; write a decimal string such as \"3.00\""));
}

Test(pricebook, bad_decimal_in_fallback_key)
{
    char error[512];
    fields_rejected("\"gpu_hour\": {\"*\": \"1e5\"}", error, sizeof(error));
    assert_contains(error, "$.gpu_hour[\"*\"]: invalid decimal \"1e5\"");
}

Test(pricebook, negative_price)
{
    char error[512];
    fields_rejected("\"storage_gb_month\": \"-0.02\"", error, sizeof(error));
    assert_contains(error, "$.storage_gb_month: negative value \"-0.02\"");
}

Test(pricebook, unknown_top_level_key)
{
    char error[512];
    fields_rejected("\"gpu_hours\": {}", error, sizeof(error));
    assert_contains(error, "$.gpu_hours: unknown key");
}

Test(pricebook, unknown_model_key)
{
    char error[512];
    fields_rejected("\"tokens_per_million\": {\"m-large\": {\"inptu\": \"3.00\"}}", error,
                    sizeof(error));
    assert_contains(error, "$.tokens_per_million.m-large.inptu: unknown key");
}

Test(pricebook, model_without_prices)
{
    char error[512];
    fields_rejected("\"tokens_per_million\": {\"m-large\": {}}", error, sizeof(error));
    assert_contains(error, "$.tokens_per_million.m-large: no prices; give at least one of");
}

Test(pricebook, unknown_rounding)
{
    char error[512];
    fields_rejected("\"rounding\": \"bankers\"", error, sizeof(error));
    assert_contains(error, "$.rounding: unknown rounding \"bankers\"");
    assert_contains(error, "\"half_up\" or \"half_even\"");
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

Test(pricebook, too_many_models)
{
    size_t size = 64 * 1024;
    char *text = malloc(size);
    size_t used = (size_t)snprintf(text, size,
                                   "{\"name\": \"x\", \"currency\": \"USD\", "
                                   "\"tokens_per_million\": {");
    for (int i = 0; i <= PRICEBOOK_MODELS_MAX; i++)
        used += (size_t)snprintf(text + used, size - used, "%s\"m-%d\": {\"input\": \"1\"}",
                                 i ? ", " : "", i);
    snprintf(text + used, size - used, "}}");

    char error[512];
    parse_rejected(text, error, sizeof(error));
    assert_contains(error, "$.tokens_per_million: 257 models; at most 256");
    free(text);
}

Test(pricebook, model_name_too_long)
{
    char error[512];
    fields_rejected("\"tokens_per_million\": {"
                    "\"m-0123456789012345678901234567890123456789012345678901234567890123\":"
                    " {\"input\": \"1\"}}",
                    error, sizeof(error));
    assert_contains(error, "model name is longer than 64 bytes");
}

Test(pricebook, empty_gpu_type)
{
    char error[512];
    fields_rejected("\"gpu_hour\": {\"\": \"1.00\"}", error, sizeof(error));
    assert_contains(error, "empty GPU type name");
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
    size_t count = check_rejected("{}", errors, sizeof(errors));
    cr_assert(eq(sz, count, 2));
    assert_contains(errors, "$: missing \"name\"");
    assert_contains(errors, "$: missing \"currency\"");
}

Test(pricebook, duplicate_key_rejected)
{
    char error[512];
    fields_rejected("\"gpu_hour\": {\"H100\": \"2.50\", \"H100\": \"0.25\"}", error, sizeof(error));
    assert_contains(error, "$: invalid JSON");
    assert_contains(error, "duplicate");
}

Test(pricebook, duplicate_key_inside_version)
{
    char error[512];
    fields_rejected("\"versions\": [{\"base_fee\": \"1\", \"base_fee\": \"2\"}]", error,
                    sizeof(error));
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

Test(pricebook, check_collects_every_error)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"usd\", \"base_fee\": 100,"
                       " \"gpu_hour\": {\"H100\": \"2,50\"}, \"extra\": true}";
    char errors[2048];
    size_t count = check_rejected(text, errors, sizeof(errors));
    cr_assert(eq(sz, count, 4));
    assert_contains(errors, "$.currency: unknown currency \"usd\"");
    assert_contains(errors, "$.base_fee: ");
    assert_contains(errors, "$.gpu_hour.H100: invalid decimal \"2,50\"");
    assert_contains(errors, "$.extra: unknown key");
    cr_assert(eq(sz, line_count(errors), 4));
}

Test(pricebook, check_truncates_at_line_boundary)
{
    const char *text = "{\"name\": \"x\", \"currency\": \"USD\", \"a\": 1, \"b\": 2}";
    char errors[260]; /* room for the first message (about 230 bytes) only */
    size_t count = check_rejected(text, errors, sizeof(errors));
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
    fields_rejected("\"a\": 1, \"b\": 2", error, sizeof(error));
    cr_assert(eq(str, error,
                 "$.a: unknown key; expected one of name, currency, rounding, versions, base_fee, "
                 "support_fee, gpu_hour, tokens_per_million, api_calls_per_million, "
                 "storage_gb_month, transfer_gb, gpu_volume_discount, discounts, commitment"));
}

Test(pricebook, missing_file_is_io_error)
{
    struct pricebook *book = NULL;
    char error[512] = "";
    const char *path = BOOKS_DIR "no-such-book.json";
    cr_assert(eq(int, pricebook_load_file(path, &book, error, sizeof(error)), HM_ERR_IO));
    cr_assert(eq(ptr, book, NULL));
    assert_contains(error, "no-such-book.json: cannot open");
}

Test(pricebook, file_too_large)
{
    char path[] = "/tmp/hm-pricebook-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *file = fdopen(fd, "w");
    cr_assert(not(eq(ptr, file, NULL)));
    for (size_t i = 0; i <= PRICEBOOK_FILE_SIZE_MAX; i++)
        fputc(' ', file);
    fclose(file);

    struct pricebook *book = NULL;
    char error[512] = "";
    int status = pricebook_load_file(path, &book, error, sizeof(error));
    unlink(path);
    cr_assert(eq(int, status, HM_ERR_INVALID));
    assert_contains(error, "file too large");
}

/* ---- The GPU volume discount shorthand ---- */

Test(pricebook, unknown_discount_mode)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"tiered\", \"tiers\":"
                    " [{\"above_hours\": \"1\", \"percent\": \"1\"}]}",
                    error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.mode: unknown mode \"tiered\"");
}

Test(pricebook, descending_tiers)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"above_hours\":"
                    " \"5000\", \"percent\": \"20\"}, {\"above_hours\": \"1000\", \"percent\":"
                    " \"10\"}]}",
                    error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[1].above_hours: 1000 is not above the "
                           "previous tier's 5000");
}

Test(pricebook, equal_tiers)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"above_hours\":"
                    " \"1000\", \"percent\": \"10\"}, {\"above_hours\": \"1000.0\", \"percent\":"
                    " \"20\"}]}",
                    error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[1].above_hours: ");
}

Test(pricebook, percent_above_100)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"above_hours\":"
                    " \"1000\", \"percent\": \"100.000000000001\"}]}",
                    error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[0].percent: percent \"100.000000000001\" "
                           "is above 100");
}

Test(pricebook, missing_tier_field)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"percent\":"
                    " \"10\"}]}",
                    error, sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers[0]: missing \"above_hours\"");
}

Test(pricebook, shorthand_missing_mode_and_tiers)
{
    char errors[1024];
    size_t count = check_rejected("{\"name\": \"x\", \"currency\": \"USD\", "
                                  "\"gpu_volume_discount\": {\"tier\": []}}",
                                  errors, sizeof(errors));
    cr_assert(eq(sz, count, 3), "%s", errors);
    assert_contains(errors, "$.gpu_volume_discount.tier: unknown key; expected \"mode\" or "
                            "\"tiers\"");
    assert_contains(errors, "$.gpu_volume_discount: missing \"mode\"");
    assert_contains(errors, "$.gpu_volume_discount: missing \"tiers\"");
}

Test(pricebook, shorthand_without_tiers)
{
    char error[512];
    fields_rejected("\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": []}", error,
                    sizeof(error));
    assert_contains(error, "$.gpu_volume_discount.tiers: no tiers; add at least one or remove "
                           "gpu_volume_discount");
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

Test(pricebook, tier_order_checked_beside_other_errors)
{
    const char *text =
        "{\"name\": \"x\", \"currency\": \"USD\", \"gpu_volume_discount\": "
        "{\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"5000\", \"percent\": "
        "\"120\"}, {\"above_hours\": \"1000\", \"percent\": \"10\"}]}}";
    char errors[2048];
    size_t count = check_rejected(text, errors, sizeof(errors));
    cr_assert(eq(sz, count, 2), "errors: %s", errors);
    assert_contains(errors, "percent \"120\" is above 100");
    assert_contains(errors, "1000 is not above the previous tier's 5000");
}

/* ---- Versions and effective times ---- */

Test(pricebook, versions_book_parses)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    cr_assert(eq(str, book->name, "book-versions"));
    cr_assert(eq(int, (int)book->rounding, (int)MONEY_ROUND_HALF_EVEN));
    cr_assert(eq(sz, book->version_count, 3));
    cr_assert(not(book->versions[0].has_effective_from));
    cr_assert(book->versions[1].has_effective_from);
    cr_assert(eq(i64, book->versions[1].effective_from_s, T_2024_06_16_NOON));
    cr_assert(book->versions[2].has_effective_from);
    cr_assert(eq(i64, book->versions[2].effective_from_s, T_2024_07_01));
    cr_assert(eq(i64, (int64_t)book->versions[1].base_fee_per_month.pico, PICO(120)));
    cr_assert(not(book->versions[2].has_base_fee));
    cr_assert(eq(sz, book->versions[2].gpu_count, 1));
    cr_assert(eq(sz, book->versions[2].model_count, 0));
    pricebook_free(book);
}

Test(pricebook, support_fee_and_commitment)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    const struct pricebook_version *first = &book->versions[0];
    const struct pricebook_version *second = &book->versions[1];
    cr_assert(not(first->has_support_fee[SUPPORT_NONE]));
    cr_assert(first->has_support_fee[SUPPORT_BASIC]);
    cr_assert(first->has_support_fee[SUPPORT_PRO]);
    cr_assert(first->has_support_fee[SUPPORT_ENTERPRISE]);
    cr_assert(eq(i64, (int64_t)first->support_fee_per_month[SUPPORT_BASIC].pico, PICO(50)));
    cr_assert(eq(i64, (int64_t)first->support_fee_per_month[SUPPORT_PRO].pico, PICO(500)));
    cr_assert(eq(i64, (int64_t)first->support_fee_per_month[SUPPORT_ENTERPRISE].pico, PICO(2500)));
    cr_assert(not(second->has_support_fee[SUPPORT_BASIC]));
    cr_assert(second->has_support_fee[SUPPORT_PRO]);
    cr_assert(eq(i64, (int64_t)second->support_fee_per_month[SUPPORT_PRO].pico, PICO(600)));
    cr_assert(first->has_commitment);
    cr_assert(eq(i64, (int64_t)first->commitment_per_month.pico, PICO(1000)));
    cr_assert(eq(i64, (int64_t)second->commitment_per_month.pico, PICO(1500)));
    cr_assert(not(book->versions[2].has_commitment));
    pricebook_free(book);
}

Test(pricebook, find_prices_per_version)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    const struct pricebook_version *first = &book->versions[0];
    const struct pricebook_version *second = &book->versions[1];
    const struct pricebook_version *third = &book->versions[2];

    cr_assert(eq(str, (char *)pricebook_find_gpu(first, "L4")->gpu_type, "*"));
    cr_assert(eq(ptr, (void *)pricebook_find_gpu(second, "L4"), NULL));
    cr_assert(eq(str, (char *)pricebook_find_gpu(second, "A100")->gpu_type, "A100"));
    cr_assert(eq(str, (char *)pricebook_find_gpu(third, "H100")->gpu_type, "*"));
    cr_assert(eq(i64, (int64_t)pricebook_find_gpu(third, "H100")->per_hour.price.pico,
                 INT64_C(2200000000000)));

    cr_assert(eq(str, (char *)pricebook_find_model(first, "m-small")->model, "*"));
    cr_assert(eq(ptr, (void *)pricebook_find_model(second, "m-small"), NULL));
    cr_assert(eq(ptr, (void *)pricebook_find_model(third, "m-large"), NULL));
    const struct pricebook_model_price *large = pricebook_find_model(first, "m-large");
    cr_assert(large->has_input && large->has_output && large->has_cached_input);
    cr_assert(eq(i64, (int64_t)large->cached_input.price.pico, INT64_C(1500000000000)));
    pricebook_free(book);
}

Test(pricebook, version_at_boundaries)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, INT64_MIN), &book->versions[0]));
    cr_assert(
        eq(ptr, (void *)pricebook_version_at(book, T_2024_06_16_NOON - 1), &book->versions[0]));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, T_2024_06_16_NOON), &book->versions[1]));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, T_2024_07_01 - 1), &book->versions[1]));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, T_2024_07_01), &book->versions[2]));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, INT64_MAX), &book->versions[2]));
    pricebook_free(book);
}

Test(pricebook, version_at_before_first_is_null)
{
    struct pricebook *book =
        fields_accepted("\"versions\": [{\"effective_from\": \"2024-06-01T00:00:00Z\"}]");
    cr_assert(book->versions[0].has_effective_from);
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, T_2024_06_01 - 1), NULL));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, T_2024_06_01), &book->versions[0]));
    pricebook_free(book);
}

Test(pricebook, effective_from_arithmetic)
{
    /* Expected values from Python: datetime(...) - datetime(1970, 1, 1), in whole seconds. */
    static const struct {
        const char *text;
        int64_t seconds;
    } rows[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"1969-12-31T23:59:59Z", -1},
        {"0001-01-01T00:00:00Z", INT64_C(-62135596800)},
        {"2000-02-29T00:00:00Z", INT64_C(951782400)},
        {"2000-03-01T00:00:00Z", INT64_C(951868800)},
        {"2024-02-29T23:59:59Z", INT64_C(1709251199)},
        {"2100-03-01T00:00:00Z", INT64_C(4107542400)},
        {"9999-12-31T23:59:59Z", INT64_C(253402300799)},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char fields[256];
        snprintf(fields, sizeof(fields), "\"versions\": [{\"effective_from\": \"%s\"}]",
                 rows[i].text);
        struct pricebook *book = fields_accepted(fields);
        cr_assert(eq(i64, book->versions[0].effective_from_s, rows[i].seconds), "%s", rows[i].text);
        pricebook_free(book);
    }
}

Test(pricebook, effective_from_rejected_forms)
{
    static const struct {
        const char *text;
        const char *reason;
    } rows[] = {
        {"2024-07-01T00:00:00+00:00", "not of the form YYYY-MM-DDTHH:MM:SSZ"},
        {"2024-07-01T00:00:00.5Z", "not of the form"},
        {"2024-07-01 00:00:00Z", "not of the form"},
        {"2024-07-01t00:00:00z", "not of the form"},
        {"2024-07-01", "not of the form"},
        {"2024-7-01T00:00:00Z", "not of the form"},
        {"+024-07-01T00:00:00Z", "not of the form"},
        {"0000-07-01T00:00:00Z", "year 0000 is out of range"},
        {"2024-13-01T00:00:00Z", "month is not 01 to 12"},
        {"2024-00-01T00:00:00Z", "month is not 01 to 12"},
        {"2023-02-29T00:00:00Z", "day is not in the month"},
        {"2100-02-29T00:00:00Z", "day is not in the month"},
        {"2024-04-31T00:00:00Z", "day is not in the month"},
        {"2024-07-00T00:00:00Z", "day is not in the month"},
        {"2024-07-01T24:00:00Z", "hour or minute is out of range"},
        {"2024-07-01T00:60:00Z", "hour or minute is out of range"},
        {"2024-06-30T23:59:60Z", "second is not 00 to 59"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char fields[256];
        char error[512];
        char expected[256];
        snprintf(fields, sizeof(fields), "\"versions\": [{\"effective_from\": \"%s\"}]",
                 rows[i].text);
        fields_rejected(fields, error, sizeof(error));
        snprintf(expected, sizeof(expected),
                 "$.versions[0].effective_from: invalid time \"%s\": %s", rows[i].text,
                 rows[i].reason);
        assert_contains(error, expected);
        assert_contains(error, "such as \"2024-07-01T00:00:00Z\"");
    }
}

Test(pricebook, effective_from_not_a_string)
{
    char error[512];
    fields_rejected("\"versions\": [{\"effective_from\": 1719792000}]", error, sizeof(error));
    assert_contains(error, "$.versions[0].effective_from: expected an RFC 3339 UTC time such as "
                           "\"2024-07-01T00:00:00Z\", found a number");
}

Test(pricebook, versions_not_ascending)
{
    char error[512];
    fields_rejected("\"versions\": [{\"effective_from\": \"2024-07-01T00:00:00Z\"},"
                    " {\"effective_from\": \"2024-06-01T00:00:00Z\"}]",
                    error, sizeof(error));
    cr_assert(eq(str, error,
                 "$.versions[1].effective_from: \"2024-06-01T00:00:00Z\" is not after the "
                 "previous version's \"2024-07-01T00:00:00Z\"; list versions in strictly "
                 "ascending order of effective_from"));
}

Test(pricebook, versions_equal_times)
{
    char error[512];
    fields_rejected("\"versions\": [{}, {\"effective_from\": \"2024-07-01T00:00:00Z\"},"
                    " {\"effective_from\": \"2024-07-01T00:00:00Z\"}]",
                    error, sizeof(error));
    assert_contains(error, "$.versions[2].effective_from: \"2024-07-01T00:00:00Z\" is not after");
}

Test(pricebook, later_version_needs_effective_from)
{
    char error[512];
    fields_rejected("\"versions\": [{\"base_fee\": \"1\"}, {\"base_fee\": \"2\"}]", error,
                    sizeof(error));
    assert_contains(error, "$.versions[1]: missing \"effective_from\"; every version after the "
                           "first needs");
}

Test(pricebook, versions_empty)
{
    char error[512];
    fields_rejected("\"versions\": []", error, sizeof(error));
    assert_contains(error, "$.versions: no versions; add at least one version");
}

Test(pricebook, versions_not_array)
{
    char error[512];
    fields_rejected("\"versions\": {\"base_fee\": \"1\"}", error, sizeof(error));
    assert_contains(error, "$.versions: expected an array of versions, found an object");
}

Test(pricebook, version_not_object)
{
    char error[512];
    fields_rejected("\"versions\": [\"2024-07-01T00:00:00Z\"]", error, sizeof(error));
    assert_contains(error, "$.versions[0]: expected an object such as");
}

Test(pricebook, version_unknown_key)
{
    char error[512];
    fields_rejected("\"versions\": [{\"name\": \"v1\"}]", error, sizeof(error));
    assert_contains(error, "$.versions[0].name: unknown key; expected effective_from or one of "
                           "base_fee, support_fee");
}

Test(pricebook, too_many_versions)
{
    size_t size = 16 * 1024;
    char *text = malloc(size);
    size_t used = (size_t)snprintf(text, size,
                                   "{\"name\": \"x\", \"currency\": \"USD\", "
                                   "\"versions\": [");
    for (int i = 0; i <= PRICEBOOK_VERSIONS_MAX; i++)
        used += (size_t)snprintf(text + used, size - used,
                                 "%s{\"effective_from\": \"%04d-01-01T00:00:00Z\"}", i ? ", " : "",
                                 1950 + i);
    snprintf(text + used, size - used, "]}");

    char error[512];
    parse_rejected(text, error, sizeof(error));
    assert_contains(error, "$.versions: 65 versions; at most 64 are allowed");
    free(text);
}

Test(pricebook, most_versions_accepted)
{
    size_t size = 16 * 1024;
    char *text = malloc(size);
    size_t used = (size_t)snprintf(text, size,
                                   "{\"name\": \"x\", \"currency\": \"USD\", "
                                   "\"versions\": [");
    for (int i = 0; i < PRICEBOOK_VERSIONS_MAX; i++)
        used += (size_t)snprintf(text + used, size - used,
                                 "%s{\"effective_from\": \"%04d-01-01T00:00:00Z\", "
                                 "\"gpu_hour\": {\"H100\": \"%d\"}}",
                                 i ? ", " : "", 1950 + i, i + 1);
    snprintf(text + used, size - used, "]}");

    struct pricebook *book = parse_accepted(text);
    cr_assert(eq(sz, book->version_count, PRICEBOOK_VERSIONS_MAX));
    const struct pricebook_version *last = &book->versions[PRICEBOOK_VERSIONS_MAX - 1];
    cr_assert(eq(i64, (int64_t)pricebook_find_gpu(last, "H100")->per_hour.price.pico,
                 PICO(PRICEBOOK_VERSIONS_MAX)));
    pricebook_free(book);
    free(text);
}

Test(pricebook, versions_mixed_with_top_level_fields)
{
    char errors[2048];
    size_t count = check_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"base_fee\": \"1\","
                                  " \"versions\": [{}], \"gpu_hour\": {\"H100\": \"2\"}}",
                                  errors, sizeof(errors));
    cr_assert(eq(sz, count, 2), "%s", errors);
    assert_contains(errors, "$.base_fee: version field beside \"versions\"; move it into a "
                            "version in \"versions\", or remove \"versions\"");
    assert_contains(errors, "$.gpu_hour: version field beside \"versions\"");
}

Test(pricebook, top_level_effective_from)
{
    char error[512];
    fields_rejected("\"effective_from\": \"2024-07-01T00:00:00Z\", \"base_fee\": \"1\"", error,
                    sizeof(error));
    assert_contains(error, "$.effective_from: effective_from belongs to a version; put the "
                           "prices and effective_from in an element of \"versions\"");
}

Test(pricebook, single_version_equals_top_level)
{
    struct pricebook *top = load_book(PB1_PATH);
    struct pricebook *wrapped = fields_accepted(
        "\"versions\": [{\"base_fee\": \"100.00\", \"gpu_hour\": {\"H100\": \"2.50\"},"
        " \"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"above_hours\": \"1000\","
        " \"percent\": \"10\"}, {\"above_hours\": \"5000\", \"percent\": \"20\"}]}}]");
    const struct pricebook_version *a = &top->versions[0];
    const struct pricebook_version *b = &wrapped->versions[0];
    cr_assert(not(b->has_effective_from));
    cr_assert(eq(i64, (int64_t)a->base_fee_per_month.pico, (int64_t)b->base_fee_per_month.pico));
    cr_assert(eq(int, memcmp(&a->discounts[0], &b->discounts[0], sizeof(a->discounts[0])), 0));
    cr_assert(eq(int,
                 memcmp(pricebook_find_gpu(a, "H100"), pricebook_find_gpu(b, "H100"),
                        sizeof(struct pricebook_gpu_price)),
                 0));
    pricebook_free(top);
    pricebook_free(wrapped);
}

/* ---- Slices ---- */

/* A book of two versions: from 2024-06-01 and from 2024-06-16T12:00:00Z. */
static struct pricebook *two_version_book(void)
{
    return fields_accepted("\"versions\": [{\"effective_from\": \"2024-06-01T00:00:00Z\"},"
                           " {\"effective_from\": \"2024-06-16T12:00:00Z\"}]");
}

Test(pricebook, slices_version_inside_period)
{
    struct pricebook *book = two_version_book();
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 0;
    cr_assert(eq(
        int,
        pricebook_slices(book, T_2024_06_01, T_2024_07_01, starts, PRICEBOOK_VERSIONS_MAX, &count),
        HM_OK));
    cr_assert(eq(sz, count, 2));
    cr_assert(eq(i64, starts[0], T_2024_06_01));
    cr_assert(eq(i64, starts[1], T_2024_06_16_NOON));
    pricebook_free(book);
}

Test(pricebook, slices_version_at_period_start)
{
    /* A version that starts exactly at the period's start opens no second slice. */
    struct pricebook *book = load_book(VERSIONS_PATH);
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 0;
    int64_t august = INT64_C(1722470400); /* 2024-08-01T00:00:00Z */
    cr_assert(eq(
        int, pricebook_slices(book, T_2024_07_01, august, starts, PRICEBOOK_VERSIONS_MAX, &count),
        HM_OK));
    cr_assert(eq(sz, count, 1));
    cr_assert(eq(i64, starts[0], T_2024_07_01));
    cr_assert(eq(ptr, (void *)pricebook_version_at(book, starts[0]), &book->versions[2]));
    pricebook_free(book);
}

Test(pricebook, slices_version_at_period_end)
{
    /* The version of 2024-07-01 starts at June's exclusive end, so June has two slices, not three.
     */
    struct pricebook *book = load_book(VERSIONS_PATH);
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 0;
    cr_assert(eq(
        int,
        pricebook_slices(book, T_2024_06_01, T_2024_07_01, starts, PRICEBOOK_VERSIONS_MAX, &count),
        HM_OK));
    cr_assert(eq(sz, count, 2));
    cr_assert(eq(i64, starts[0], T_2024_06_01));
    cr_assert(eq(i64, starts[1], T_2024_06_16_NOON));
    pricebook_free(book);
}

Test(pricebook, slices_span_several_versions)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 0;
    cr_assert(eq(int,
                 pricebook_slices(book, T_2024_06_01, T_2024_07_01 + 1, starts,
                                  PRICEBOOK_VERSIONS_MAX, &count),
                 HM_OK));
    cr_assert(eq(sz, count, 3));
    cr_assert(eq(i64, starts[2], T_2024_07_01));
    pricebook_free(book);
}

Test(pricebook, slices_one_second_after_start)
{
    struct pricebook *book = two_version_book();
    int64_t starts[4];
    size_t count = 0;
    cr_assert(
        eq(int,
           pricebook_slices(book, T_2024_06_16_NOON - 1, T_2024_06_16_NOON + 1, starts, 4, &count),
           HM_OK));
    cr_assert(eq(sz, count, 2));
    cr_assert(eq(i64, starts[1], T_2024_06_16_NOON));
    pricebook_free(book);
}

Test(pricebook, slices_before_first_version)
{
    struct pricebook *book = two_version_book();
    int64_t starts[PRICEBOOK_VERSIONS_MAX];
    size_t count = 99;
    int64_t may = INT64_C(1714521600); /* 2024-05-01T00:00:00Z */
    cr_assert(eq(int,
                 pricebook_slices(book, may, T_2024_06_01, starts, PRICEBOOK_VERSIONS_MAX, &count),
                 HM_ERR_NOT_FOUND));
    cr_assert(eq(sz, count, 0));
    /* A period that starts one second early is refused too, though the version covers the rest. */
    cr_assert(eq(int,
                 pricebook_slices(book, T_2024_06_01 - 1, T_2024_07_01, starts,
                                  PRICEBOOK_VERSIONS_MAX, &count),
                 HM_ERR_NOT_FOUND));
    pricebook_free(book);
}

Test(pricebook, slices_without_effective_time)
{
    struct pricebook *book = load_book(PB1_PATH);
    int64_t starts[1];
    size_t count = 0;
    cr_assert(
        eq(int, pricebook_slices(book, T_2024_06_01, T_2024_07_01, starts, 1, &count), HM_OK));
    cr_assert(eq(sz, count, 1));
    cr_assert(eq(i64, starts[0], T_2024_06_01));
    pricebook_free(book);
}

Test(pricebook, slices_empty_range)
{
    struct pricebook *book = load_book(PB1_PATH);
    int64_t starts[1];
    size_t count = 99;
    cr_assert(eq(int, pricebook_slices(book, T_2024_06_01, T_2024_06_01, starts, 1, &count),
                 HM_ERR_INVALID));
    cr_assert(eq(sz, count, 0));
    cr_assert(eq(int, pricebook_slices(book, T_2024_07_01, T_2024_06_01, starts, 1, &count),
                 HM_ERR_INVALID));
    pricebook_free(book);
}

Test(pricebook, slices_buffer_too_small)
{
    struct pricebook *book = two_version_book();
    int64_t starts[1];
    size_t count = 99;
    cr_assert(eq(int, pricebook_slices(book, T_2024_06_01, T_2024_07_01, starts, 1, &count),
                 HM_ERR_INVALID));
    cr_assert(eq(sz, count, 0));
    pricebook_free(book);
}

/* ---- Charges ---- */

Test(pricebook, charge_models_parse)
{
    struct pricebook *book = load_book(VERSIONS_PATH);
    const struct pricebook_version *version = &book->versions[1];

    const struct pricebook_charge *h100 = &pricebook_find_gpu(version, "H100")->per_hour;
    cr_assert(eq(int, (int)h100->model, (int)PRICEBOOK_CHARGE_GRADUATED));
    cr_assert(eq(sz, h100->tier_count, 2));
    cr_assert(h100->tiers[0].bounded);
    cr_assert(eq(i64, (int64_t)h100->tiers[0].up_to_pico, PICO(1000)));
    cr_assert(eq(i64, (int64_t)h100->tiers[0].price.pico, INT64_C(2500000000000)));
    cr_assert(not(h100->tiers[1].bounded));
    cr_assert(eq(i64, (int64_t)h100->tiers[1].price.pico, PICO(2)));

    const struct pricebook_charge *a100 = &pricebook_find_gpu(version, "A100")->per_hour;
    cr_assert(eq(int, (int)a100->model, (int)PRICEBOOK_CHARGE_VOLUME));
    cr_assert(eq(sz, a100->tier_count, 3));
    cr_assert(eq(i64, (int64_t)a100->tiers[1].up_to_pico, INT64_C(500500000000000)));
    cr_assert(not(a100->tiers[2].bounded));

    const struct pricebook_model_price *large = pricebook_find_model(version, "m-large");
    cr_assert(eq(int, (int)large->input.model, (int)PRICEBOOK_CHARGE_PER_UNIT));
    cr_assert(eq(i64, (int64_t)large->input.price.pico, INT64_C(2750000000000)));
    cr_assert(eq(int, (int)large->output.model, (int)PRICEBOOK_CHARGE_PACKAGE));
    cr_assert(eq(i64, (int64_t)large->output.package_size_pico, INT64_C(500000000000)));
    cr_assert(eq(i64, (int64_t)large->output.price.pico, PICO(7)));
    cr_assert(not(large->has_cached_input));

    cr_assert(eq(int, (int)version->api_calls_per_million.model, (int)PRICEBOOK_CHARGE_PACKAGE));
    cr_assert(eq(i64, (int64_t)version->api_calls_per_million.package_size_pico, PICO(1)));
    cr_assert(eq(int, (int)version->storage_per_gb_month.model, (int)PRICEBOOK_CHARGE_GRADUATED));
    cr_assert(
        eq(i64, (int64_t)version->storage_per_gb_month.tiers[1].price.pico, INT64_C(15000000000)));
    cr_assert(eq(int, (int)version->transfer_per_gb.model, (int)PRICEBOOK_CHARGE_VOLUME));
    cr_assert(eq(i64, (int64_t)version->transfer_per_gb.tiers[0].up_to_pico, PICO(10240)));
    pricebook_free(book);
}

Test(pricebook, charge_single_tier)
{
    struct pricebook *book = fields_accepted(
        "\"transfer_gb\": {\"model\": \"graduated\", \"tiers\": [{\"price\": \"0.05\"}]}");
    cr_assert(eq(sz, book->versions[0].transfer_per_gb.tier_count, 1));
    cr_assert(not(book->versions[0].transfer_per_gb.tiers[0].bounded));
    pricebook_free(book);
}

Test(pricebook, charge_most_tiers_accepted)
{
    char fields[4096];
    size_t used = (size_t)snprintf(fields, sizeof(fields),
                                   "\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [");
    for (int i = 1; i < PRICEBOOK_TIERS_MAX; i++)
        used += (size_t)snprintf(fields + used, sizeof(fields) - used,
                                 "{\"up_to\": \"%d\", \"price\": \"1\"}, ", i * 10);
    snprintf(fields + used, sizeof(fields) - used, "{\"price\": \"0.5\"}]}");

    struct pricebook *book = fields_accepted(fields);
    cr_assert(eq(sz, book->versions[0].storage_per_gb_month.tier_count, PRICEBOOK_TIERS_MAX));
    pricebook_free(book);
}

/* A table of bad charges: the fields of a book, and the first message they must produce. */
static const struct {
    const char *fields;
    const char *message;
} charge_errors[] = {
    {"\"gpu_hour\": {\"H100\": {\"price\": \"2.50\"}}",
     "$.gpu_hour.H100: missing \"model\"; add \"per_unit\", \"package\", \"graduated\" or "
     "\"volume\""},
    {"\"gpu_hour\": {\"H100\": {\"model\": \"tiered\", \"price\": \"2.50\"}}",
     "$.gpu_hour.H100.model: unknown charge model \"tiered\"; use \"per_unit\", \"package\", "
     "\"graduated\" or \"volume\""},
    {"\"gpu_hour\": {\"H100\": {\"model\": 1, \"price\": \"2.50\"}}",
     "$.gpu_hour.H100.model: expected \"per_unit\", \"package\", \"graduated\" or \"volume\", "
     "found a number"},
    {"\"gpu_hour\": {\"H100\": {\"model\": \"per_unit\"}}",
     "$.gpu_hour.H100: missing \"price\" of a per_unit charge; add the price per GPU-hour"},
    {"\"gpu_hour\": {\"H100\": {\"model\": \"per_unit\", \"price\": 2.5}}",
     "$.gpu_hour.H100.price: amount is a JSON number"},
    {"\"gpu_hour\": {\"H100\": {\"model\": \"per_unit\", \"price\": \"2\", \"size\": \"1\"}}",
     "$.gpu_hour.H100.size: a per_unit charge has no \"size\"; remove it or change the model"},
    {"\"transfer_gb\": {\"model\": \"package\", \"price\": \"5\"}",
     "$.transfer_gb: missing \"size\" of a package charge; add the package size in GBs, above 0"},
    {"\"transfer_gb\": {\"model\": \"package\", \"size\": \"0\", \"price\": \"5\"}",
     "$.transfer_gb.size: package size is 0; give the GBs that one package holds, above 0"},
    {"\"transfer_gb\": {\"model\": \"package\", \"size\": \"-1\", \"price\": \"5\"}",
     "$.transfer_gb.size: negative value \"-1\""},
    {"\"transfer_gb\": {\"model\": \"package\", \"size\": \"10\"}",
     "$.transfer_gb: missing \"price\" of a package charge; add the price per GB"},
    {"\"transfer_gb\": {\"model\": \"package\", \"size\": \"10\", \"price\": \"5\", \"tiers\": []}",
     "$.transfer_gb.tiers: no tiers"},
    {"\"storage_gb_month\": {\"model\": \"graduated\"}",
     "$.storage_gb_month: missing \"tiers\" of a graduated charge; add an array of tiers priced "
     "per GB-month"},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"price\": \"1\", \"tiers\": [{\"price\": "
     "\"1\"}]}",
     "$.storage_gb_month.price: a volume charge has no \"price\"; remove it or change the model"},
    {"\"storage_gb_month\": {\"model\": \"graduated\", \"tiers\": []}",
     "$.storage_gb_month.tiers: no tiers; add at least one, the last without \"up_to\""},
    {"\"storage_gb_month\": {\"model\": \"graduated\", \"tiers\": {}}",
     "$.storage_gb_month.tiers: expected an array of tiers such as [{\"up_to\": \"1000\", "
     "\"price\": \"0.02\"}, {\"price\": \"0.02\"}], found an object"},
    {"\"storage_gb_month\": {\"model\": \"graduated\", \"tiers\": [{\"up_to\": \"10\", \"price\": "
     "\"1\"}]}",
     "$.storage_gb_month.tiers[0].up_to: the last tier has an upper bound; remove \"up_to\" so "
     "that the last tier covers every larger quantity"},
    {"\"storage_gb_month\": {\"model\": \"graduated\", \"tiers\": [{\"price\": \"1\"}, "
     "{\"price\": \"2\"}]}",
     "$.storage_gb_month.tiers[0]: missing \"up_to\"; every tier but the last needs the upper "
     "bound of its interval, in GB-months"},
    {"\"storage_gb_month\": {\"model\": \"graduated\", \"tiers\": [{\"up_to\": \"0\", \"price\": "
     "\"1\"}, {\"price\": \"2\"}]}",
     "$.storage_gb_month.tiers[0].up_to: up_to is 0; the first tier starts at 0, so give a bound "
     "above 0"},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [{\"up_to\": \"10\", \"price\": "
     "\"1\"}, {\"up_to\": \"10.000\", \"price\": \"1\"}, {\"price\": \"2\"}]}",
     "$.storage_gb_month.tiers[1].up_to: 10 is not above the previous tier's 10; list tiers in "
     "strictly ascending order of up_to"},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [{\"up_to\": \"10\", \"price\": "
     "\"1\"}, {\"up_to\": \"5\", \"price\": \"1\"}, {\"price\": \"2\"}]}",
     "$.storage_gb_month.tiers[1].up_to: 5 is not above the previous tier's 10"},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [{\"up_to\": \"10\"}, {\"price\": "
     "\"2\"}]}",
     "$.storage_gb_month.tiers[0]: missing \"price\"; add the price per GB-month inside this "
     "tier"},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [{\"price\": \"2\", \"from\": "
     "\"0\"}]}",
     "$.storage_gb_month.tiers[0].from: unknown key; expected \"up_to\" or \"price\""},
    {"\"storage_gb_month\": {\"model\": \"volume\", \"tiers\": [\"2\"]}",
     "$.storage_gb_month.tiers[0]: expected an object such as {\"up_to\": \"1000\", \"price\": "
     "\"2.50\"}, found a string"},
    {"\"api_calls_per_million\": {\"model\": \"per_unit\", \"price\": \"1\", \"currency\": "
     "\"USD\"}",
     "$.api_calls_per_million.currency: unknown key; expected \"model\", \"price\", \"size\" or "
     "\"tiers\""},
    {"\"api_calls_per_million\": true",
     "$.api_calls_per_million: expected a decimal string such as \"0.50\" or a charge object "
     "such as {\"model\": \"graduated\", \"tiers\": [...]}, found true"},
    {"\"tokens_per_million\": {\"m\": {\"output\": {\"model\": \"package\", \"size\": \"1\"}}}",
     "$.tokens_per_million.m.output: missing \"price\" of a package charge; add the price per 1M "
     "token"},
};

Test(pricebook, charge_errors_table)
{
    for (size_t i = 0; i < sizeof(charge_errors) / sizeof(charge_errors[0]); i++) {
        char error[512];
        fields_rejected(charge_errors[i].fields, error, sizeof(error));
        assert_contains(error, charge_errors[i].message);
    }
}

Test(pricebook, charge_too_many_tiers)
{
    char fields[4096];
    size_t used = (size_t)snprintf(fields, sizeof(fields),
                                   "\"gpu_hour\": {\"H100\": {\"model\": \"graduated\", "
                                   "\"tiers\": [");
    for (int i = 1; i <= PRICEBOOK_TIERS_MAX; i++)
        used += (size_t)snprintf(fields + used, sizeof(fields) - used,
                                 "{\"up_to\": \"%d\", \"price\": \"1\"}, ", i * 10);
    snprintf(fields + used, sizeof(fields) - used, "{\"price\": \"0.5\"}]}}");

    char error[512];
    fields_rejected(fields, error, sizeof(error));
    assert_contains(error, "$.gpu_hour.H100.tiers: 17 tiers; at most 16 are allowed");
}

Test(pricebook, charge_errors_collected)
{
    /* Missing size, unknown key and a bad tier price, all reported by one check. */
    const char *text = "{\"name\": \"x\", \"currency\": \"USD\", \"gpu_hour\": {"
                       "\"H100\": {\"model\": \"package\", \"price\": \"1\", \"sise\": \"1\"},"
                       " \"A100\": {\"model\": \"volume\", \"tiers\": [{\"price\": \"x\"}]}}}";
    char errors[2048];
    size_t count = check_rejected(text, errors, sizeof(errors));
    cr_assert(eq(sz, count, 3), "%s", errors);
    assert_contains(errors, "$.gpu_hour.H100.sise: unknown key");
    assert_contains(errors, "$.gpu_hour.H100: missing \"size\"");
    assert_contains(errors, "$.gpu_hour.A100.tiers[0].price: invalid decimal \"x\"");
}

/* ---- Support fee and commitment ---- */

Test(pricebook, support_fee_errors)
{
    char errors[2048];
    size_t count = check_rejected("{\"name\": \"x\", \"currency\": \"USD\", \"support_fee\": "
                                  "{\"gold\": \"1\", \"none\": \"0\", \"pro\": 500}}",
                                  errors, sizeof(errors));
    cr_assert(eq(sz, count, 3), "%s", errors);
    assert_contains(errors, "$.support_fee.gold: unknown support tier; expected \"basic\", "
                            "\"pro\" or \"enterprise\"");
    assert_contains(errors, "$.support_fee.none: unknown support tier");
    assert_contains(errors, "$.support_fee.pro: amount is a JSON number");
}

Test(pricebook, support_fee_not_object)
{
    char error[512];
    fields_rejected("\"support_fee\": \"500.00\"", error, sizeof(error));
    assert_contains(error, "$.support_fee: expected an object such as {\"basic\": \"50.00\"");
}

Test(pricebook, commitment_errors)
{
    char error[512];
    fields_rejected("\"commitment\": {}", error, sizeof(error));
    assert_contains(error, "$.commitment: missing \"minimum\"; add the minimum usage spend per "
                           "month");
    fields_rejected("\"commitment\": {\"minimum\": \"1000\", \"maximum\": \"2000\"}", error,
                    sizeof(error));
    assert_contains(error, "$.commitment.maximum: unknown key; expected \"minimum\"");
    fields_rejected("\"commitment\": {\"minimum\": \"-1\"}", error, sizeof(error));
    assert_contains(error, "$.commitment.minimum: negative value \"-1\"");
    fields_rejected("\"commitment\": \"1000\"", error, sizeof(error));
    assert_contains(error, "$.commitment: expected an object such as {\"minimum\": \"1000.00\"}");
}

/* ---- Discounts ---- */

Test(pricebook, discounts_parse_with_shorthand_first)
{
    /* In the file, "discounts" comes before "gpu_volume_discount"; the shorthand is still first. */
    struct pricebook *book = load_book(VERSIONS_PATH);
    const struct pricebook_version *version = &book->versions[1];
    cr_assert(eq(sz, version->discount_count, 2));
    cr_assert(eq(str, (char *)version->discounts[0].name, "GPU volume discount"));
    cr_assert(eq(int, (int)version->discounts[0].mode, (int)PRICEBOOK_DISCOUNT_GRADUATED));

    const struct pricebook_discount *tokens = &version->discounts[1];
    cr_assert(eq(str, (char *)tokens->name, "Token volume discount"));
    cr_assert(not(tokens->applies_to[0]));
    cr_assert(tokens->applies_to[1] && tokens->applies_to[2] && tokens->applies_to[3]);
    cr_assert(not(tokens->applies_to[4] || tokens->applies_to[5] || tokens->applies_to[6]));
    cr_assert(eq(int, tokens->driver, 1));
    cr_assert(eq(int, (int)tokens->mode, (int)PRICEBOOK_DISCOUNT_GRADUATED));
    cr_assert(eq(sz, tokens->tier_count, 3));
    cr_assert(eq(i64, (int64_t)tokens->tiers[0].above_pico, 0));
    cr_assert(eq(i64, (int64_t)tokens->tiers[2].above_pico, PICO(10000)));
    cr_assert(eq(i64, (int64_t)tokens->tiers[2].percent_pico, INT64_C(12500000000000)));
    cr_assert(eq(sz, book->versions[2].discount_count, 0));
    pricebook_free(book);
}

Test(pricebook, discount_driver_outside_applies_to)
{
    struct pricebook *book = fields_accepted(
        "\"discounts\": [{\"name\": \"Storage for GPU users\", \"applies_to\": [\"storage\","
        " \"transfer\"], \"driver\": \"gpu\", \"mode\": \"volume\", \"tiers\": [{\"above\":"
        " \"100\", \"percent\": \"100\"}]}]");
    const struct pricebook_discount *discount = &book->versions[0].discounts[0];
    cr_assert(eq(sz, book->versions[0].discount_count, 1));
    cr_assert(eq(int, discount->driver, 0));
    cr_assert(discount->applies_to[5] && discount->applies_to[6]);
    cr_assert(eq(i64, (int64_t)discount->tiers[0].percent_pico, PICO(100)));
    pricebook_free(book);
}

/* The fields of a discount entry with one part replaced, for the error table below. */
#define DISCOUNT(name, applies_to, driver, mode, tiers)                                            \
    "\"discounts\": [{\"name\": " name ", \"applies_to\": " applies_to ", \"driver\": " driver     \
    ", \"mode\": " mode ", \"tiers\": " tiers "}]"
#define GOOD_TIERS "[{\"above\": \"0\", \"percent\": \"5\"}]"

static const struct {
    const char *fields;
    const char *message;
} discount_errors[] = {
    {DISCOUNT("\"\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].name: name must be 1 to 64 bytes long"},
    {DISCOUNT("\"d-0123456789012345678901234567890123456789012345678901234567890123\"", "[\"gpu\"]",
              "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].name: name must be 1 to 64 bytes long"},
    {DISCOUNT("\"a\\tb\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].name: name contains the control character 0x09"},
    {DISCOUNT("5", "[\"gpu\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].name: expected a string such as \"Token discount\", found a number"},
    {DISCOUNT("\"d\"", "[]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].applies_to: no usage line kinds; list at least one of gpu, input_tokens"},
    {DISCOUNT("\"d\"", "\"gpu\"", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].applies_to: expected an array of usage line kinds such as [\"gpu\"], found "
     "a string"},
    {DISCOUNT("\"d\"", "[\"gpu\", \"tokens\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].applies_to[1]: unknown usage line kind \"tokens\"; use one of gpu, "
     "input_tokens, output_tokens, cached_input_tokens, api_calls, storage, transfer"},
    {DISCOUNT("\"d\"", "[\"gpu\", \"base_fee\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].applies_to[1]: unknown usage line kind \"base_fee\""},
    {DISCOUNT("\"d\"", "[\"storage\", \"storage\"]", "\"gpu\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].applies_to[1]: \"storage\" is listed twice; list each kind once"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu_seconds\"", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].driver: unknown usage line kind \"gpu_seconds\""},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "[\"gpu\"]", "\"volume\"", GOOD_TIERS),
     "$.discounts[0].driver: expected a usage line kind such as \"gpu\", found an array"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"flat\"", GOOD_TIERS),
     "$.discounts[0].mode: unknown mode \"flat\"; use \"volume\" or \"graduated\""},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"", "[]"),
     "$.discounts[0].tiers: no tiers; add at least one or remove the discount"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"",
              "[{\"above_hours\": \"0\", \"percent\": \"5\"}]"),
     "$.discounts[0].tiers[0].above_hours: unknown key; expected \"above\" or \"percent\""},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"", "[{\"percent\": \"5\"}]"),
     "$.discounts[0].tiers[0]: missing \"above\"; add the driver's quantity, in billing units, "
     "that the tier starts above"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"", "[{\"above\": \"0\"}]"),
     "$.discounts[0].tiers[0]: missing \"percent\"; add the tier's discount from 0 to 100"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"",
              "[{\"above\": \"0\", \"percent\": \"101\"}]"),
     "$.discounts[0].tiers[0].percent: percent \"101\" is above 100"},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"",
              "[{\"above\": \"-1\", \"percent\": \"5\"}]"),
     "$.discounts[0].tiers[0].above: negative value \"-1\""},
    {DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"graduated\"",
              "[{\"above\": \"10\", \"percent\": \"5\"}, {\"above\": \"10\", \"percent\": \"6\"}]"),
     "$.discounts[0].tiers[1].above: 10 is not above the previous tier's 10; list tiers in "
     "strictly ascending order of above"},
    {"\"discounts\": [{\"name\": \"d\", \"applies_to\": [\"gpu\"], \"driver\": \"gpu\", "
     "\"mode\": \"volume\", \"tiers\": " GOOD_TIERS ", \"priority\": \"1\"}]",
     "$.discounts[0].priority: unknown key; expected one of name, applies_to, driver, mode, "
     "tiers"},
    {"\"discounts\": [{\"applies_to\": [\"gpu\"], \"driver\": \"gpu\", \"mode\": \"volume\", "
     "\"tiers\": " GOOD_TIERS "}]",
     "$.discounts[0]: missing \"name\"; a discount needs name, applies_to, driver, mode and "
     "tiers"},
    {"\"discounts\": [{\"name\": \"d\", \"driver\": \"gpu\", \"mode\": \"volume\", "
     "\"tiers\": " GOOD_TIERS "}]",
     "$.discounts[0]: missing \"applies_to\""},
    {"\"discounts\": [{\"name\": \"d\", \"applies_to\": [\"gpu\"], \"mode\": \"volume\", "
     "\"tiers\": " GOOD_TIERS "}]",
     "$.discounts[0]: missing \"driver\""},
    {"\"discounts\": [{\"name\": \"d\", \"applies_to\": [\"gpu\"], \"driver\": \"gpu\", "
     "\"tiers\": " GOOD_TIERS "}]",
     "$.discounts[0]: missing \"mode\""},
    {"\"discounts\": [{\"name\": \"d\", \"applies_to\": [\"gpu\"], \"driver\": \"gpu\", "
     "\"mode\": \"volume\"}]",
     "$.discounts[0]: missing \"tiers\""},
    {"\"discounts\": {\"name\": \"d\"}",
     "$.discounts: expected an array of discounts, found an object"},
    {"\"discounts\": [\"d\"]", "$.discounts[0]: expected an object such as {\"name\": "},
};

Test(pricebook, discount_errors_table)
{
    for (size_t i = 0; i < sizeof(discount_errors) / sizeof(discount_errors[0]); i++) {
        char error[512];
        fields_rejected(discount_errors[i].fields, error, sizeof(error));
        assert_contains(error, discount_errors[i].message);
    }
}

Test(pricebook, discount_kind_overlaps_shorthand)
{
    char error[512];
    fields_rejected(
        "\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": [{\"above_hours\":"
        " \"1000\", \"percent\": \"10\"}]}, " DISCOUNT("\"Everything\"", "[\"transfer\", \"gpu\"]",
                                                       "\"gpu\"", "\"volume\"", GOOD_TIERS),
        error, sizeof(error));
    cr_assert(eq(str, error,
                 "$.discounts[0].applies_to: \"gpu\" is already in applies_to of "
                 "$.gpu_volume_discount (\"GPU volume discount\"); a usage line kind may belong "
                 "to one discount of a version, so remove it from one of them"));
}

Test(pricebook, discount_kind_overlaps_in_version)
{
    char errors[2048];
    size_t count = check_rejected(
        "{\"name\": \"x\", \"currency\": \"USD\", \"versions\": [{}, {\"effective_from\":"
        " \"2024-07-01T00:00:00Z\", \"discounts\": ["
        "{\"name\": \"A\", \"applies_to\": [\"input_tokens\", \"output_tokens\"], \"driver\":"
        " \"input_tokens\", \"mode\": \"volume\", \"tiers\": " GOOD_TIERS "},"
        "{\"name\": \"B\", \"applies_to\": [\"output_tokens\", \"storage\"], \"driver\":"
        " \"storage\", \"mode\": \"volume\", \"tiers\": " GOOD_TIERS "},"
        "{\"name\": \"C\", \"applies_to\": [\"storage\", \"input_tokens\"], \"driver\":"
        " \"storage\", \"mode\": \"volume\", \"tiers\": " GOOD_TIERS "}]}]}",
        errors, sizeof(errors));
    cr_assert(eq(sz, count, 3), "%s", errors);
    assert_contains(errors, "$.versions[1].discounts[1].applies_to: \"output_tokens\" is already "
                            "in applies_to of $.versions[1].discounts[0] (\"A\")");
    assert_contains(errors, "$.versions[1].discounts[2].applies_to: \"input_tokens\" is already "
                            "in applies_to of $.versions[1].discounts[0] (\"A\")");
    assert_contains(errors, "$.versions[1].discounts[2].applies_to: \"storage\" is already in "
                            "applies_to of $.versions[1].discounts[1] (\"B\")");
}

Test(pricebook, same_kind_in_two_versions_accepted)
{
    struct pricebook *book = fields_accepted(
        "\"versions\": [{\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": "
        "[{\"above_hours\": \"1\", \"percent\": \"1\"}]}}, {\"effective_from\": "
        "\"2024-07-01T00:00:00Z\", " DISCOUNT("\"d\"", "[\"gpu\"]", "\"gpu\"", "\"volume\"",
                                              GOOD_TIERS) "}]");
    cr_assert(eq(sz, book->versions[0].discount_count, 1));
    cr_assert(eq(sz, book->versions[1].discount_count, 1));
    cr_assert(eq(str, (char *)book->versions[1].discounts[0].name, "d"));
    pricebook_free(book);
}

/* Writes `count` discounts into fields, the first on transfer and the others on storage. */
static void build_discounts(char *fields, size_t size, int count, bool shorthand)
{
    size_t used = 0;
    if (shorthand)
        used += (size_t)snprintf(fields + used, size - used,
                                 "\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": "
                                 "[{\"above_hours\": \"1\", \"percent\": \"1\"}]}, ");
    used += (size_t)snprintf(fields + used, size - used, "\"discounts\": [");
    for (int i = 0; i < count; i++)
        used += (size_t)snprintf(fields + used, size - used,
                                 "%s{\"name\": \"d%d\", \"applies_to\": [\"%s\"], \"driver\": "
                                 "\"gpu\", \"mode\": \"volume\", \"tiers\": " GOOD_TIERS "}",
                                 i ? ", " : "", i, i == 0 ? "transfer" : "storage");
    snprintf(fields + used, size - used, "]");
}

Test(pricebook, too_many_discounts)
{
    char fields[8192];
    char error[512];
    build_discounts(fields, sizeof(fields), PRICEBOOK_DISCOUNTS_MAX + 1, false);
    fields_rejected(fields, error, sizeof(error));
    cr_assert(eq(str, error, "$.discounts: 17 discounts; at most 16 are allowed per version"));

    build_discounts(fields, sizeof(fields), PRICEBOOK_DISCOUNTS_MAX, true);
    fields_rejected(fields, error, sizeof(error));
    cr_assert(eq(str, error,
                 "$.discounts: 16 discounts and gpu_volume_discount; at most 16 are "
                 "allowed per version"));
}

Test(pricebook, discount_on_every_kind)
{
    /* The shorthand on gpu and one discount on each other kind: every kind, no overlap. */
    static const char *const kinds[PRICEBOOK_USAGE_KINDS] = {
        "gpu",       "input_tokens", "output_tokens", "cached_input_tokens",
        "api_calls", "storage",      "transfer",
    };
    char fields[8192];
    size_t used = (size_t)snprintf(fields, sizeof(fields),
                                   "\"gpu_volume_discount\": {\"mode\": \"volume\", \"tiers\": "
                                   "[{\"above_hours\": \"1\", \"percent\": \"1\"}]}, "
                                   "\"discounts\": [");
    for (int i = 1; i < PRICEBOOK_USAGE_KINDS; i++)
        used += (size_t)snprintf(fields + used, sizeof(fields) - used,
                                 "%s{\"name\": \"d%d\", \"applies_to\": [\"%s\"], \"driver\": "
                                 "\"%s\", \"mode\": \"volume\", \"tiers\": " GOOD_TIERS "}",
                                 i > 1 ? ", " : "", i, kinds[i], kinds[i]);
    snprintf(fields + used, sizeof(fields) - used, "]");

    struct pricebook *book = fields_accepted(fields);
    cr_assert(eq(sz, book->versions[0].discount_count, PRICEBOOK_USAGE_KINDS));
    for (int i = 0; i < PRICEBOOK_USAGE_KINDS; i++) {
        cr_assert(book->versions[0].discounts[i].applies_to[i], "discount %d", i);
        cr_assert(eq(int, book->versions[0].discounts[i].driver, i));
    }
    pricebook_free(book);
}

/* ---- A book with errors everywhere ---- */

Test(pricebook, invalid_book_reports_every_error)
{
    struct pricebook *book = (struct pricebook *)1;
    char error[512] = "";
    int status = pricebook_load_file(BOOKS_DIR "book-invalid.json", &book, error, sizeof(error));
    cr_assert(eq(int, status, HM_ERR_INVALID));
    cr_assert(eq(ptr, book, NULL));
    cr_assert(eq(ptr, strchr(error, '\n'), NULL), "more than the first error: %s", error);

    FILE *file = fopen(BOOKS_DIR "book-invalid.json", "rb");
    cr_assert(not(eq(ptr, file, NULL)));
    char text[8192];
    size_t length = fread(text, 1, sizeof(text) - 1, file);
    fclose(file);
    text[length] = '\0';

    char errors[8192];
    size_t count = check_rejected(text, errors, sizeof(errors));
    cr_assert(eq(sz, count, 11), "%s", errors);
    cr_assert(eq(sz, line_count(errors), 11), "%s", errors);
    cr_assert(not(eq(ptr, strstr(errors, error), NULL)), "first error %s not in %s", error, errors);
    assert_contains(errors, "$.base_fee: version field beside \"versions\"");
    assert_contains(errors, "$.versions[0].effective_from: invalid time "
                            "\"2024-07-01T00:00:00+02:00\"");
    assert_contains(errors, "$.versions[0].gpu_hour.H100: missing \"size\" of a package charge");
    assert_contains(errors, "$.versions[1]: missing \"effective_from\"");
    assert_contains(errors, "$.versions[1].gpu_hour.H100.tiers[1].up_to: the last tier has an "
                            "upper bound");
    assert_contains(errors, "$.versions[2].support_fee.gold: unknown support tier");
    assert_contains(errors, "$.versions[2].commitment.minimum: amount is a JSON number");
    assert_contains(errors, "$.versions[2].discounts[0].name: name must be 1 to 64 bytes long");
    assert_contains(errors, "$.versions[2].discounts[0].applies_to[1]: unknown usage line kind "
                            "\"gpus\"");
    assert_contains(errors, "$.versions[2].discounts[0].tiers[0].percent: percent \"101\" is "
                            "above 100");
    assert_contains(errors, "$.versions[2].discounts[0].applies_to: \"gpu\" is already in "
                            "applies_to of $.versions[2].gpu_volume_discount");
}
