/* Fixed-point decimals, rationals, rounding and formatting of pricing/money.h. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "pricing/money.h"

static __int128 parse_ok(const char *text)
{
    __int128 pico = 0;
    char error[128] = "";
    int status = money_decimal_parse(text, &pico, error, sizeof(error));
    cr_assert(eq(int, status, HM_OK), "parsing \"%s\" failed: %s", text, error);
    return pico;
}

/* Asserts that text is rejected with the given status and that the message quotes it. */
static void parse_rejected(const char *text, int expected_status)
{
    __int128 pico = 0;
    char error[256] = "";
    char quoted[128];
    snprintf(quoted, sizeof(quoted), "\"%s\"", text);

    int status = money_decimal_parse(text, &pico, error, sizeof(error));
    cr_assert(eq(int, status, expected_status), "status for \"%s\" (message: %s)", text, error);
    cr_assert(not(eq(ptr, strstr(error, quoted), NULL)), "message \"%s\" does not quote %s", error,
              quoted);
}

static struct money_ratio ratio(__int128 num, __int128 den)
{
    struct money_ratio value;
    cr_assert(eq(int, money_ratio_make(num, den, &value), HM_OK));
    return value;
}

static int64_t round_to_i64(__int128 num, __int128 den, enum money_rounding mode)
{
    return (int64_t)money_ratio_round(ratio(num, den), mode);
}

static void assert_amount_text(int64_t minor, const char *code, const char *expected)
{
    const struct money_currency *currency;
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_currency_find(code, &currency), HM_OK));
    cr_assert(eq(int,
                 money_amount_format((struct money_amount){minor}, currency, text, sizeof(text)),
                 HM_OK));
    cr_assert(eq(str, text, (char *)expected));
}

Test(money_parse, whole_number)
{
    cr_assert(eq(i64, (int64_t)parse_ok("15"), INT64_C(15000000000000)));
}

Test(money_parse, two_fraction_digits)
{
    cr_assert(eq(i64, (int64_t)parse_ok("2.50"), INT64_C(2500000000000)));
}

Test(money_parse, nano_price)
{
    cr_assert(eq(i64, (int64_t)parse_ok("0.000000150"), INT64_C(150000)));
}

Test(money_parse, twelve_fraction_digits)
{
    cr_assert(eq(i64, (int64_t)parse_ok("0.000000000001"), INT64_C(1)));
}

Test(money_parse, negative)
{
    cr_assert(eq(i64, (int64_t)parse_ok("-373.47"), INT64_C(-373470000000000)));
}

Test(money_parse, leading_zeros_counted)
{
    cr_assert(eq(i64, (int64_t)(parse_ok("000000000000000001") / MONEY_DECIMAL_SCALE), 1));
    parse_rejected("0000000000000000001", HM_ERR_OVERFLOW);
    parse_rejected("000000000000000000000001", HM_ERR_OVERFLOW);
}

Test(money_parse, eighteen_integer_digits)
{
    __int128 pico = parse_ok("999999999999999999.999999999999");
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_int128_format(pico, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "999999999999999999999999999999"));
}

Test(money_parse, rejects_exponent)
{
    parse_rejected("1e5", HM_ERR_INVALID);
}

Test(money_parse, rejects_bare_minus)
{
    parse_rejected("-", HM_ERR_INVALID);
}

Test(money_parse, rejects_two_points)
{
    parse_rejected("1.2.3", HM_ERR_INVALID);
}

Test(money_parse, rejects_thirteen_fraction_digits)
{
    parse_rejected("0.0000000000001", HM_ERR_INVALID);
}

Test(money_parse, rejects_other_forms)
{
    const char *texts[] = {"", "+1", " 1", "1 ", "1,5", ".5", "5.", "abc", "0x10", "1_000", "--1"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        parse_rejected(texts[i], HM_ERR_INVALID);
}

Test(money_parse, rejects_nineteen_integer_digits_as_overflow)
{
    parse_rejected("1000000000000000000", HM_ERR_OVERFLOW);
}

Test(money_parse, rejects_huge_value_as_overflow)
{
    parse_rejected("99999999999999999999999999999999999999999999", HM_ERR_OVERFLOW);
}

Test(money_format, decimal_keeps_currency_digits)
{
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_decimal_format(parse_ok("2.5"), 2, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "2.50"));
}

Test(money_format, decimal_trims_trailing_zeros)
{
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_decimal_format(parse_ok("0.000000150"), 2, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "0.00000015"));
}

Test(money_format, decimal_whole_without_point)
{
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_decimal_format(parse_ok("15"), 0, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "15"));
}

Test(money_format, decimal_negative)
{
    char text[MONEY_TEXT_SIZE];
    cr_assert(eq(int, money_decimal_format(parse_ok("-0.05"), 2, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "-0.05"));
}

Test(money_format, decimal_buffer_too_small)
{
    char text[4];
    cr_assert(
        eq(int, money_decimal_format(parse_ok("1234.5"), 2, text, sizeof(text)), HM_ERR_INVALID));
}

Test(money_format, usd_amount)
{
    assert_amount_text(123445, "USD", "1234.45");
}

Test(money_format, usd_negative_amount)
{
    assert_amount_text(-37347, "USD", "-373.47");
}

Test(money_format, usd_cents_only)
{
    assert_amount_text(5, "USD", "0.05");
    assert_amount_text(-5, "USD", "-0.05");
    assert_amount_text(0, "USD", "0.00");
}

Test(money_format, jpy_has_no_point)
{
    assert_amount_text(2491, "JPY", "2491");
}

Test(money_format, kwd_three_digits)
{
    assert_amount_text(1234, "KWD", "1.234");
}

Test(money_format, int64_extremes)
{
    assert_amount_text(INT64_MIN, "USD", "-92233720368547758.08");
    assert_amount_text(INT64_MAX, "USD", "92233720368547758.07");
}

Test(money_currency, exponents)
{
    const char *codes[] = {"USD", "EUR", "GBP", "JPY", "KWD"};
    int exponents[] = {2, 2, 2, 0, 3};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const struct money_currency *currency = NULL;
        cr_assert(eq(int, money_currency_find(codes[i], &currency), HM_OK), "%s", codes[i]);
        cr_assert(eq(int, currency->exponent, exponents[i]), "%s", codes[i]);
    }
}

Test(money_currency, unknown_and_lower_case_not_found)
{
    const struct money_currency *currency = NULL;
    cr_assert(eq(int, money_currency_find("XYZ", &currency), HM_ERR_NOT_FOUND));
    cr_assert(eq(int, money_currency_find("usd", &currency), HM_ERR_NOT_FOUND));
}

Test(money_round, half_up_at_half)
{
    cr_assert(eq(i64, round_to_i64(5, 2, MONEY_ROUND_HALF_UP), 3));
    cr_assert(eq(i64, round_to_i64(7, 2, MONEY_ROUND_HALF_UP), 4));
}

Test(money_round, half_even_at_half)
{
    cr_assert(eq(i64, round_to_i64(5, 2, MONEY_ROUND_HALF_EVEN), 2));
    cr_assert(eq(i64, round_to_i64(7, 2, MONEY_ROUND_HALF_EVEN), 4));
}

Test(money_round, negative_half_goes_away_from_zero)
{
    cr_assert(eq(i64, round_to_i64(-5, 2, MONEY_ROUND_HALF_UP), -3));
    cr_assert(eq(i64, round_to_i64(-5, 2, MONEY_ROUND_HALF_EVEN), -2));
    cr_assert(eq(i64, round_to_i64(-7, 2, MONEY_ROUND_HALF_EVEN), -4));
}

Test(money_round, half_cent_of_tokens)
{
    /* 39.495 and 39.485 dollars in cents. */
    cr_assert(eq(i64, round_to_i64(39495, 10, MONEY_ROUND_HALF_UP), 3950));
    cr_assert(eq(i64, round_to_i64(39485, 10, MONEY_ROUND_HALF_UP), 3949));
    cr_assert(eq(i64, round_to_i64(39485, 10, MONEY_ROUND_HALF_EVEN), 3948));
}

Test(money_round, not_at_half)
{
    cr_assert(eq(i64, round_to_i64(1, 3, MONEY_ROUND_HALF_UP), 0));
    cr_assert(eq(i64, round_to_i64(2, 3, MONEY_ROUND_HALF_EVEN), 1));
    cr_assert(eq(i64, round_to_i64(-2, 3, MONEY_ROUND_HALF_UP), -1));
    cr_assert(eq(i64, round_to_i64(-1, 3, MONEY_ROUND_HALF_UP), 0));
}

Test(money_round, exact_integer_unchanged)
{
    cr_assert(eq(i64, round_to_i64(-6, 3, MONEY_ROUND_HALF_UP), -2));
    cr_assert(eq(i64, round_to_i64(0, 3, MONEY_ROUND_HALF_EVEN), 0));
}

Test(money_round, amount_beyond_int64_is_overflow)
{
    struct money_amount amount;
    __int128 beyond = (__int128)INT64_MAX + 1;
    cr_assert(eq(int, money_amount_from_ratio(ratio(beyond, 1), MONEY_ROUND_HALF_UP, &amount),
                 HM_ERR_OVERFLOW));
    cr_assert(eq(int, money_amount_from_ratio(ratio(-beyond - 1, 1), MONEY_ROUND_HALF_UP, &amount),
                 HM_ERR_OVERFLOW));
}

Test(money_round, int64_max_fits)
{
    struct money_amount amount;
    cr_assert(
        eq(int, money_amount_from_ratio(ratio(INT64_MAX, 1), MONEY_ROUND_HALF_UP, &amount), HM_OK));
    cr_assert(eq(i64, amount.minor, INT64_MAX));
}

Test(money_round, half_rounding_reaches_int64_limit_as_overflow)
{
    /* (2 * INT64_MAX + 1) / 2 = INT64_MAX + 0.5 rounds up beyond int64. */
    struct money_amount amount;
    __int128 num = 2 * (__int128)INT64_MAX + 1;
    cr_assert(eq(int, money_amount_from_ratio(ratio(num, 2), MONEY_ROUND_HALF_UP, &amount),
                 HM_ERR_OVERFLOW));
}

Test(money_ratio, make_reduces_and_normalizes_sign)
{
    struct money_ratio value = ratio(6, -4);
    cr_assert(eq(i64, (int64_t)value.num, -3));
    cr_assert(eq(i64, (int64_t)value.den, 2));
}

Test(money_ratio, zero_denominator_invalid)
{
    struct money_ratio value;
    cr_assert(eq(int, money_ratio_make(1, 0, &value), HM_ERR_INVALID));
}

Test(money_ratio, mul_reduces_across)
{
    /* (10^30 / 7) * (7 / 10^20) = 10^10, although 10^30 * 7 * 10^20 would not fit. */
    __int128 ten20 = (__int128)10000000000 * 10000000000;
    __int128 ten30 = ten20 * 10000000000;
    struct money_ratio product;
    cr_assert(eq(int, money_ratio_mul(ratio(ten30, 7), ratio(7, ten20), &product), HM_OK));
    cr_assert(eq(i64, (int64_t)product.num, INT64_C(10000000000)));
    cr_assert(eq(i64, (int64_t)product.den, 1));
}

Test(money_ratio, mul_overflow_detected)
{
    __int128 big = (__int128)1 << 100;
    struct money_ratio product;
    cr_assert(eq(int, money_ratio_mul(ratio(big, 1), ratio(big, 3), &product), HM_ERR_OVERFLOW));
}

Test(money_ratio, add_exact)
{
    struct money_ratio sum;
    cr_assert(eq(int, money_ratio_add(ratio(1, 6), ratio(1, 3), &sum), HM_OK));
    cr_assert(eq(i64, (int64_t)sum.num, 1));
    cr_assert(eq(i64, (int64_t)sum.den, 2));
}

Test(money_ratio, add_overflow_detected)
{
    __int128 max = (__int128)(((unsigned __int128)1 << 127) - 1);
    struct money_ratio sum;
    cr_assert(eq(int, money_ratio_add(ratio(max, 1), ratio(1, 1), &sum), HM_ERR_OVERFLOW));
}

Test(money_ratio, sub_exact_and_negative)
{
    struct money_ratio difference;
    cr_assert(eq(int, money_ratio_sub(ratio(1, 6), ratio(1, 3), &difference), HM_OK));
    cr_assert(eq(i64, (int64_t)difference.num, -1));
    cr_assert(eq(i64, (int64_t)difference.den, 6));
}

Test(money_ratio, sub_overflow_detected)
{
    __int128 max = (__int128)(((unsigned __int128)1 << 127) - 1);
    struct money_ratio difference;
    cr_assert(eq(int, money_ratio_sub(ratio(-max, 1), ratio(2, 1), &difference), HM_ERR_OVERFLOW));
}

Test(money_ratio, div_exact)
{
    /* 25 GPU-hours in packages of 10: 5/2. */
    struct money_ratio quotient;
    cr_assert(eq(int, money_ratio_div(ratio(90000, 3600), ratio(10, 1), &quotient), HM_OK));
    cr_assert(eq(i64, (int64_t)quotient.num, 5));
    cr_assert(eq(i64, (int64_t)quotient.den, 2));
    cr_assert(eq(int, money_ratio_div(ratio(1, 2), ratio(-1, 4), &quotient), HM_OK));
    cr_assert(eq(i64, (int64_t)quotient.num, -2));
    cr_assert(eq(i64, (int64_t)quotient.den, 1));
}

Test(money_ratio, div_by_zero_invalid)
{
    struct money_ratio quotient;
    cr_assert(eq(int, money_ratio_div(ratio(1, 2), ratio(0, 1), &quotient), HM_ERR_INVALID));
}

Test(money_ratio, ceil_rounds_up_only_fractions)
{
    cr_assert(eq(i64, (int64_t)money_ratio_ceil(ratio(5, 2)), 3));
    cr_assert(eq(i64, (int64_t)money_ratio_ceil(ratio(1, 3600)), 1));
    cr_assert(eq(i64, (int64_t)money_ratio_ceil(ratio(4, 2)), 2));
    cr_assert(eq(i64, (int64_t)money_ratio_ceil(ratio(0, 1)), 0));
    cr_assert(eq(i64, (int64_t)money_ratio_ceil(ratio(-5, 2)), -2));
}

Test(money_ratio, compare)
{
    int result = 0;
    cr_assert(eq(int, money_ratio_compare(ratio(3600001, 3600), ratio(1000, 1), &result), HM_OK));
    cr_assert(eq(int, result, 1));
    cr_assert(eq(int, money_ratio_compare(ratio(3600000, 3600), ratio(1000, 1), &result), HM_OK));
    cr_assert(eq(int, result, 0));
}

Test(money_ratio, format_terminating_is_exact)
{
    char text[MONEY_TEXT_SIZE];
    bool exact = false;
    cr_assert(eq(int, money_ratio_format(ratio(1777608, 3600), 0, 12, text, sizeof(text), &exact),
                 HM_OK));
    cr_assert(eq(str, text, "493.78"));
    cr_assert(exact);
}

Test(money_ratio, format_repeating_is_rounded)
{
    char text[MONEY_TEXT_SIZE];
    bool exact = true;
    cr_assert(eq(int, money_ratio_format(ratio(2, 3), 0, 12, text, sizeof(text), &exact), HM_OK));
    cr_assert(eq(str, text, "0.666666666667"));
    cr_assert(not(exact));
}

Test(money_ratio, format_overflow_detected)
{
    char text[MONEY_TEXT_SIZE];
    bool exact;
    __int128 big = (__int128)1 << 120;
    cr_assert(eq(int, money_ratio_format(ratio(big, 1), 0, 12, text, sizeof(text), &exact),
                 HM_ERR_OVERFLOW));
}

Test(money_int128, format_extremes)
{
    char text[MONEY_TEXT_SIZE];
    __int128 max = (__int128)(((unsigned __int128)1 << 127) - 1);
    cr_assert(eq(int, money_int128_format(max, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "170141183460469231731687303715884105727"));
    cr_assert(eq(int, money_int128_format(-max - 1, text, sizeof(text)), HM_OK));
    cr_assert(eq(str, text, "-170141183460469231731687303715884105728"));
}
