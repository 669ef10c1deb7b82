#include "pricing/money.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"

#define INT128_MAX_VALUE ((__int128)(((unsigned __int128)1 << 127) - 1))
#define INT128_MIN_VALUE (-INT128_MAX_VALUE - 1)

/* ISO 4217 codes and minor-unit exponents. */
static const struct money_currency currencies[] = {
    {"AUD", 2}, {"BHD", 3}, {"BRL", 2}, {"CAD", 2}, {"CHF", 2}, {"CNY", 2}, {"DKK", 2}, {"EUR", 2},
    {"GBP", 2}, {"HKD", 2}, {"INR", 2}, {"JOD", 3}, {"JPY", 0}, {"KRW", 0}, {"KWD", 3}, {"MXN", 2},
    {"NOK", 2}, {"NZD", 2}, {"OMR", 3}, {"PLN", 2}, {"SEK", 2}, {"SGD", 2}, {"USD", 2}, {"ZAR", 2},
};

int money_currency_find(const char *code, const struct money_currency **out)
{
    for (size_t i = 0; i < sizeof(currencies) / sizeof(currencies[0]); i++) {
        if (strcmp(currencies[i].code, code) == 0) {
            *out = &currencies[i];
            return HM_OK;
        }
    }
    return HM_ERR_NOT_FOUND;
}

static void set_error(char *error, size_t error_size, const char *fmt, const char *text)
{
    if (error != NULL && error_size > 0)
        snprintf(error, error_size, fmt, text);
}

int money_decimal_parse(const char *text, __int128 *pico_out, char *error, size_t error_size)
{
    const char *p = text;
    bool negative = false;

    if (*p == '-') {
        negative = true;
        p++;
    }

    /* Integer part: at least one digit. */
    __int128 integer = 0;
    int integer_digits = 0;
    while (*p >= '0' && *p <= '9') {
        /* Every digit counts, leading zeros too, so the limit of 18 integer digits is literal. */
        if (integer_digits == MONEY_DECIMAL_INTEGER_DIGITS_MAX) {
            set_error(error, error_size,
                      "decimal \"%s\" is too large: at most 18 digits before the point, "
                      "leading zeros included", text);
            return HM_ERR_OVERFLOW;
        }
        integer_digits++;
        integer = integer * 10 + (*p - '0');
        p++;
    }
    if (p == text + (negative ? 1 : 0)) {
        set_error(error, error_size,
                  "invalid decimal \"%s\": expected digits with an optional '-' and '.'", text);
        return HM_ERR_INVALID;
    }

    /* Fraction part: '.' then one to 12 digits. */
    __int128 fraction = 0;
    int fraction_digits = 0;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (fraction_digits == MONEY_DECIMAL_DIGITS) {
                set_error(error, error_size,
                          "decimal \"%s\" has more than 12 digits after the point", text);
                return HM_ERR_INVALID;
            }
            fraction = fraction * 10 + (*p - '0');
            fraction_digits++;
            p++;
        }
        if (fraction_digits == 0) {
            set_error(error, error_size, "invalid decimal \"%s\": expected a digit after the point",
                      text);
            return HM_ERR_INVALID;
        }
    }
    if (*p != '\0') {
        set_error(error, error_size,
                  "invalid decimal \"%s\": expected digits with an optional '-' and '.'", text);
        return HM_ERR_INVALID;
    }

    for (int i = fraction_digits; i < MONEY_DECIMAL_DIGITS; i++)
        fraction *= 10;
    __int128 pico = integer * MONEY_DECIMAL_SCALE + fraction;
    *pico_out = negative ? -pico : pico;
    return HM_OK;
}

int money_price_parse(const char *text, struct money_price *out, char *error, size_t error_size)
{
    return money_decimal_parse(text, &out->pico, error, error_size);
}

int money_int128_format(__int128 value, char *out, size_t out_size)
{
    char digits[48];
    size_t count = 0;
    unsigned __int128 magnitude =
        value < 0 ? (unsigned __int128)0 - (unsigned __int128)value : (unsigned __int128)value;

    do {
        digits[count++] = (char)('0' + (int)(magnitude % 10));
        magnitude /= 10;
    } while (magnitude != 0);

    size_t needed = count + (value < 0 ? 1 : 0) + 1;
    if (needed > out_size)
        return HM_ERR_INVALID;

    size_t at = 0;
    if (value < 0)
        out[at++] = '-';
    while (count > 0)
        out[at++] = digits[--count];
    out[at] = '\0';
    return HM_OK;
}

/*
 * Formats scaled / 10^scale_digits with at least min_fraction_digits, trimming
 * trailing zeros beyond them. Requires min_fraction_digits <= scale_digits <= 30.
 */
static int format_scaled(__int128 scaled, int scale_digits, int min_fraction_digits, char *out,
                         size_t out_size)
{
    assert(min_fraction_digits >= 0);
    assert(min_fraction_digits <= scale_digits);
    assert(scale_digits <= 30);

    char digits[48];
    unsigned __int128 magnitude =
        scaled < 0 ? (unsigned __int128)0 - (unsigned __int128)scaled : (unsigned __int128)scaled;
    int count = 0;

    /* Digits, least significant first, with at least one integer digit. */
    do {
        digits[count++] = (char)('0' + (int)(magnitude % 10));
        magnitude /= 10;
    } while (magnitude != 0 || count <= scale_digits);

    /* Drop trailing fraction zeros down to the minimum. */
    int fraction_digits = scale_digits;
    int skip = 0;
    while (fraction_digits > min_fraction_digits && digits[skip] == '0') {
        skip++;
        fraction_digits--;
    }

    size_t needed =
        (size_t)(count - skip) + (scaled < 0 ? 1 : 0) + (fraction_digits > 0 ? 1 : 0) + 1;
    if (needed > out_size)
        return HM_ERR_INVALID;

    size_t at = 0;
    if (scaled < 0)
        out[at++] = '-';
    for (int i = count - 1; i >= skip; i--) {
        if (i == scale_digits - 1)
            out[at++] = '.';
        out[at++] = digits[i];
    }
    out[at] = '\0';
    return HM_OK;
}

int money_decimal_format(__int128 pico, int min_fraction_digits, char *out, size_t out_size)
{
    if (min_fraction_digits < 0 || min_fraction_digits > MONEY_DECIMAL_DIGITS)
        return HM_ERR_INVALID;
    return format_scaled(pico, MONEY_DECIMAL_DIGITS, min_fraction_digits, out, out_size);
}

int money_amount_format(struct money_amount amount, const struct money_currency *currency,
                        char *out, size_t out_size)
{
    return format_scaled(amount.minor, currency->exponent, currency->exponent, out, out_size);
}

static __int128 abs128(__int128 value)
{
    return value < 0 ? -value : value;
}

/* Greatest common divisor of two values that are not INT128_MIN; gcd(0, 0) is 0. */
static __int128 gcd128(__int128 a, __int128 b)
{
    a = abs128(a);
    b = abs128(b);
    while (b != 0) {
        __int128 r = a % b;
        a = b;
        b = r;
    }
    return a;
}

int money_ratio_make(__int128 num, __int128 den, struct money_ratio *out)
{
    if (den == 0)
        return HM_ERR_INVALID;
    if (num == INT128_MIN_VALUE || den == INT128_MIN_VALUE)
        return HM_ERR_OVERFLOW;
    if (den < 0) {
        num = -num;
        den = -den;
    }
    __int128 g = gcd128(num, den);
    if (g > 1) {
        num /= g;
        den /= g;
    }
    out->num = num;
    out->den = num == 0 ? 1 : den;
    return HM_OK;
}

int money_ratio_from_decimal(__int128 pico, struct money_ratio *out)
{
    return money_ratio_make(pico, MONEY_DECIMAL_SCALE, out);
}

int money_ratio_mul(struct money_ratio a, struct money_ratio b, struct money_ratio *out)
{
    /* Cross-reduce: a.num with b.den and b.num with a.den. */
    __int128 g1 = gcd128(a.num, b.den);
    __int128 g2 = gcd128(b.num, a.den);
    if (g1 > 1) {
        a.num /= g1;
        b.den /= g1;
    }
    if (g2 > 1) {
        b.num /= g2;
        a.den /= g2;
    }

    __int128 num;
    __int128 den;
    if (__builtin_mul_overflow(a.num, b.num, &num) || __builtin_mul_overflow(a.den, b.den, &den))
        return HM_ERR_OVERFLOW;
    return money_ratio_make(num, den, out);
}

int money_ratio_add(struct money_ratio a, struct money_ratio b, struct money_ratio *out)
{
    /* a/b + c/d = (a * (d/g) + c * (b/g)) / (b/g * d), with g = gcd(b, d). */
    __int128 g = gcd128(a.den, b.den);
    __int128 a_scale = b.den / g;
    __int128 b_scale = a.den / g;
    __int128 a_num;
    __int128 b_num;
    __int128 num;
    __int128 den;

    if (__builtin_mul_overflow(a.num, a_scale, &a_num) ||
        __builtin_mul_overflow(b.num, b_scale, &b_num) ||
        __builtin_add_overflow(a_num, b_num, &num) || __builtin_mul_overflow(a.den, a_scale, &den))
        return HM_ERR_OVERFLOW;
    return money_ratio_make(num, den, out);
}

int money_ratio_sub(struct money_ratio a, struct money_ratio b, struct money_ratio *out)
{
    if (b.num == INT128_MIN_VALUE)
        return HM_ERR_OVERFLOW;
    return money_ratio_add(a, (struct money_ratio){-b.num, b.den}, out);
}

int money_ratio_div(struct money_ratio a, struct money_ratio b, struct money_ratio *out)
{
    struct money_ratio inverse;
    int status = money_ratio_make(b.den, b.num, &inverse);
    if (status != HM_OK)
        return status;
    return money_ratio_mul(a, inverse, out);
}

__int128 money_ratio_ceil(struct money_ratio value)
{
    __int128 quotient = value.num / value.den; /* truncated toward zero */
    if (value.num % value.den != 0 && value.num > 0)
        quotient++;
    return quotient;
}

int money_ratio_compare(struct money_ratio a, struct money_ratio b, int *result)
{
    __int128 left;
    __int128 right;

    if (__builtin_mul_overflow(a.num, b.den, &left) || __builtin_mul_overflow(b.num, a.den, &right))
        return HM_ERR_OVERFLOW;
    *result = left < right ? -1 : (left > right ? 1 : 0);
    return HM_OK;
}

__int128 money_ratio_round(struct money_ratio value, enum money_rounding mode)
{
    __int128 quotient = value.num / value.den; /* truncated toward zero */
    __int128 remainder = abs128(value.num % value.den);
    __int128 rest = value.den - remainder; /* distance to the next integer away from zero */
    bool away;

    if (remainder == 0)
        return quotient;
    if (remainder != rest)
        away = remainder > rest;
    else if (mode == MONEY_ROUND_HALF_EVEN)
        away = quotient % 2 != 0;
    else
        away = true;

    if (!away)
        return quotient;
    return value.num < 0 ? quotient - 1 : quotient + 1;
}

int money_amount_from_ratio(struct money_ratio minor_units, enum money_rounding mode,
                            struct money_amount *out)
{
    __int128 rounded = money_ratio_round(minor_units, mode);

    if (rounded > INT64_MAX || rounded < INT64_MIN)
        return HM_ERR_OVERFLOW;
    out->minor = (int64_t)rounded;
    return HM_OK;
}

int money_ratio_format(struct money_ratio value, int min_fraction_digits, int max_fraction_digits,
                       char *out, size_t out_size, bool *exact)
{
    if (min_fraction_digits < 0 || max_fraction_digits > 30 ||
        min_fraction_digits > max_fraction_digits)
        return HM_ERR_INVALID;

    __int128 power = 1;
    for (int i = 0; i < max_fraction_digits; i++)
        power *= 10;

    struct money_ratio scale = {power, 1};
    struct money_ratio scaled;
    int status = money_ratio_mul(value, scale, &scaled);
    if (status != HM_OK)
        return status;

    *exact = scaled.den == 1;
    __int128 digits = money_ratio_round(scaled, MONEY_ROUND_HALF_EVEN);
    return format_scaled(digits, max_fraction_digits, min_fraction_digits, out, out_size);
}
