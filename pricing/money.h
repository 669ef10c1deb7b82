/*
 * Exact money: fixed-point decimals, exact rationals and rounding to a
 * currency's minor unit. No value here ever passes through a binary
 * floating-point type, and every multiplication and addition is checked:
 * an overflow returns HM_ERR_OVERFLOW, never a wrapped value.
 *
 * Three representations:
 * - a decimal (price, percent, hours) is an __int128 count of 10^-12 units
 *   ("pico"), parsed from text such as "2.50" or "0.000000150";
 * - an amount is an int64 count of the currency's minor unit (cents for USD,
 *   yen for JPY, fils for KWD);
 * - an intermediate result is an exact rational (struct money_ratio), which
 *   is rounded once to the minor unit at the end.
 */
#ifndef HM_PRICING_MONEY_H
#define HM_PRICING_MONEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Fraction digits of a decimal: values are held in units of 10^-12. */
#define MONEY_DECIMAL_DIGITS 12
#define MONEY_DECIMAL_SCALE ((__int128)1000000000000)

/*
 * Integer digits of a decimal. 18 digits keep the pico value below 10^30, so
 * that it fits an __int128 (about 1.7 * 10^38) with room to multiply by a
 * currency exponent or a percent before any reduction.
 */
#define MONEY_DECIMAL_INTEGER_DIGITS_MAX 18

/* Buffer size that fits any formatted decimal, amount or rational with its NUL. */
#define MONEY_TEXT_SIZE 64

/* A unit price in 10^-12 units of the currency ("2.50" USD is 2,500,000,000,000). */
struct money_price {
    __int128 pico;
};

/* An amount in the currency's minor unit (123445 is 1234.45 USD or 123,445 JPY). */
struct money_amount {
    int64_t minor;
};

/* An exact rational number. The denominator is positive and the fraction is reduced. */
struct money_ratio {
    __int128 num;
    __int128 den;
};

/* A currency with its ISO 4217 code and minor-unit exponent. */
struct money_currency {
    char code[4];
    int exponent; /* digits after the decimal point: USD 2, JPY 0, KWD 3 */
};

enum money_rounding {
    MONEY_ROUND_HALF_UP = 0,   /* a tie rounds away from zero: 0.5 -> 1, -0.5 -> -1 */
    MONEY_ROUND_HALF_EVEN = 1, /* a tie rounds to the even neighbour: 0.5 -> 0, 1.5 -> 2 */
};

/*
 * Finds a currency by its upper-case ISO 4217 code ("USD").
 * Returns 0 and a pointer to a static entry, or HM_ERR_NOT_FOUND for a code
 * that is not in the table.
 */
int money_currency_find(const char *code, const struct money_currency **out);

/*
 * Parses a decimal string into 10^-12 units: an optional '-', one or more
 * digits, then optionally '.' and one to 12 digits ("15", "2.50",
 * "-0.000000150"). Exponents, '+', spaces, commas and a bare point are
 * rejected.
 * Returns 0, HM_ERR_INVALID for malformed text or more than 12 fraction
 * digits, or HM_ERR_OVERFLOW for more than MONEY_DECIMAL_INTEGER_DIGITS_MAX
 * integer digits. On error, error (if not NULL) receives a message that
 * quotes the value.
 */
int money_decimal_parse(const char *text, __int128 *pico_out, char *error, size_t error_size);

/* Parses a unit price with money_decimal_parse; same errors. */
int money_price_parse(const char *text, struct money_price *out, char *error, size_t error_size);

/*
 * Formats a 10^-12 value as a decimal with at least min_fraction_digits and
 * no trailing zeros beyond them (2.5 with 2 gives "2.50", 0.00000015 gives
 * "0.00000015"). Returns 0 or HM_ERR_INVALID when out is too small.
 */
int money_decimal_format(__int128 pico, int min_fraction_digits, char *out, size_t out_size);

/*
 * Formats an amount in the currency's exponent: "1234.45" USD, "2491" JPY,
 * "1.234" KWD, "-373.47" USD. No grouping separators.
 * Returns 0 or HM_ERR_INVALID when out is too small.
 */
int money_amount_format(struct money_amount amount, const struct money_currency *currency,
                        char *out, size_t out_size);

/*
 * Builds the reduced rational num/den. Returns 0, HM_ERR_INVALID when den is
 * 0, or HM_ERR_OVERFLOW when a value is the most negative __int128 (its
 * negation does not fit).
 */
int money_ratio_make(__int128 num, __int128 den, struct money_ratio *out);

/* Builds the rational pico / 10^12 of a decimal; same errors as money_ratio_make. */
int money_ratio_from_decimal(__int128 pico, struct money_ratio *out);

/*
 * Multiplies two rationals exactly, reducing across before multiplying so
 * that the operands' common factors never reach the product.
 * Returns 0 or HM_ERR_OVERFLOW when the reduced product does not fit.
 */
int money_ratio_mul(struct money_ratio a, struct money_ratio b, struct money_ratio *out);

/* Adds two rationals exactly. Returns 0 or HM_ERR_OVERFLOW. */
int money_ratio_add(struct money_ratio a, struct money_ratio b, struct money_ratio *out);

/* Subtracts b from a exactly. Returns 0 or HM_ERR_OVERFLOW. */
int money_ratio_sub(struct money_ratio a, struct money_ratio b, struct money_ratio *out);

/*
 * Divides a by b exactly. Returns 0, HM_ERR_INVALID when b is 0, or
 * HM_ERR_OVERFLOW.
 */
int money_ratio_div(struct money_ratio a, struct money_ratio b, struct money_ratio *out);

/* Returns the smallest integer >= value (a started package counts in full). */
__int128 money_ratio_ceil(struct money_ratio value);

/* Compares two rationals: *result is -1, 0 or 1. Returns 0 or HM_ERR_OVERFLOW. */
int money_ratio_compare(struct money_ratio a, struct money_ratio b, int *result);

/*
 * Rounds a rational to the nearest integer under the given mode and returns
 * it. The result always fits because |num / den| <= |num| when den >= 1.
 */
__int128 money_ratio_round(struct money_ratio value, enum money_rounding mode);

/*
 * Rounds a rational quantity of minor units once to a whole minor unit.
 * Returns 0 or HM_ERR_OVERFLOW when the rounded value does not fit int64.
 */
int money_amount_from_ratio(struct money_ratio minor_units, enum money_rounding mode,
                            struct money_amount *out);

/*
 * Formats a rational as a decimal with at most max_fraction_digits (<= 30)
 * and at least min_fraction_digits, trimming trailing zeros in between. When
 * the value needs more digits it is rounded half-even at the last digit and
 * *exact is set to false; otherwise *exact is true.
 * Returns 0, HM_ERR_OVERFLOW when value * 10^max_fraction_digits does not
 * fit, or HM_ERR_INVALID when out is too small or a digit count is out of range.
 */
int money_ratio_format(struct money_ratio value, int min_fraction_digits, int max_fraction_digits,
                       char *out, size_t out_size, bool *exact);

/*
 * Formats an __int128 in base 10 (printf has no conversion for it).
 * Returns 0 or HM_ERR_INVALID when out is too small.
 */
int money_int128_format(__int128 value, char *out, size_t out_size);

#endif
