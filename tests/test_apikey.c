/*
 * Tests of API keys (ingest/apikey.c): the text form, the signing key and
 * secret digest checked against OpenSSL called directly, and the billing
 * period helpers of ingest/event.h.
 */
#include "common/status.h"
#include "ingest/apikey.h"
#include "ingest/event.h"

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>

/* Criterion's `str` tag takes `char *`, so const strings pass through this cast. */
#define CSTR(text) ((char *)(text))
/* Wraps a byte range for the `mem` tag, which prints both ranges in hex on a mismatch. */
#define BYTES(pointer, byte_count) ((struct cr_mem){ .data = (pointer), .size = (byte_count) })

/* The key of the test vectors in docs/PROTOCOL.md: id 0x0123456789abcdef, secret 00 01 .. 1f. */
static const char key_text[] =
    "hmk_0123456789abcdef_000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

static const char signing_label[] = "harpoon-meter frame signing v1";

/* Copies key_text into out and replaces the byte at `index` with `c`. */
static void key_text_with(char out[APIKEY_TEXT_SIZE], size_t index, char c)
{
    memcpy(out, key_text, APIKEY_TEXT_SIZE);
    out[index] = c;
}

static void assert_parse_rejected(const char *text)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(text, &key), HM_ERR_INVALID), "accepted \"%s\"", text);
}

/* ---- text form ---- */

Test(apikey_text, parse_fixed_key)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(key_text, &key), HM_OK));
    cr_assert(eq(u64, key.key_id, UINT64_C(0x0123456789abcdef)));
    for (int i = 0; i < APIKEY_SECRET_SIZE; i++)
        cr_assert(eq(u8, key.secret[i], (uint8_t)i), "secret byte %d", i);
}

Test(apikey_text, format_parse_round_trip)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(key_text, &key), HM_OK));
    char text[APIKEY_TEXT_SIZE];
    apikey_format(&key, text);
    cr_assert(eq(str, text, CSTR(key_text)));
    cr_assert(eq(sz, strlen(text), (size_t)APIKEY_TEXT_SIZE - 1));
}

Test(apikey_text, generated_key_round_trip)
{
    for (int round = 0; round < 16; round++) {
        struct apikey key;
        cr_assert(eq(int, apikey_generate(&key), HM_OK));
        cr_assert(ne(u64, key.key_id, 0));

        char text[APIKEY_TEXT_SIZE];
        apikey_format(&key, text);
        struct apikey parsed;
        cr_assert(eq(int, apikey_parse(text, &parsed), HM_OK), "round %d: %s", round, text);
        cr_assert(eq(u64, parsed.key_id, key.key_id));
        cr_assert(eq(mem, BYTES(parsed.secret, APIKEY_SECRET_SIZE),
                     BYTES(key.secret, APIKEY_SECRET_SIZE)));
    }
}

Test(apikey_text, generated_keys_differ)
{
    struct apikey first;
    struct apikey second;
    cr_assert(eq(int, apikey_generate(&first), HM_OK));
    cr_assert(eq(int, apikey_generate(&second), HM_OK));
    cr_assert(ne(u64, first.key_id, second.key_id));
    cr_assert(
        ne(mem, BYTES(first.secret, APIKEY_SECRET_SIZE), BYTES(second.secret, APIKEY_SECRET_SIZE)));
}

Test(apikey_text, extreme_key_ids)
{
    static const uint64_t ids[] = { 1, UINT64_MAX, UINT64_C(0x8000000000000000) };
    static const char *const texts[] = { "0000000000000001", "ffffffffffffffff",
                                         "8000000000000000" };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        struct apikey key = { .key_id = ids[i] };
        char text[APIKEY_TEXT_SIZE];
        apikey_format(&key, text);
        cr_assert(eq(int, strncmp(text + 4, texts[i], 16), 0), "formatted %s", text);

        struct apikey parsed;
        cr_assert(eq(int, apikey_parse(text, &parsed), HM_OK));
        cr_assert(eq(u64, parsed.key_id, ids[i]));
    }
}

Test(apikey_text, parse_accepts_uppercase_hex)
{
    char text[APIKEY_TEXT_SIZE];
    memcpy(text, key_text, APIKEY_TEXT_SIZE);
    for (size_t i = 4; i < APIKEY_TEXT_SIZE - 1; i++) {
        if (text[i] >= 'a' && text[i] <= 'f')
            text[i] = (char)(text[i] - 'a' + 'A');
    }
    struct apikey key;
    cr_assert(eq(int, apikey_parse(text, &key), HM_OK));
    cr_assert(eq(u64, key.key_id, UINT64_C(0x0123456789abcdef)));

    char formatted[APIKEY_TEXT_SIZE];
    apikey_format(&key, formatted);
    cr_assert(eq(str, formatted, CSTR(key_text)), "apikey_format must write lowercase hex");
}

/* ---- text form rejects ---- */

Test(apikey_parse, rejects_wrong_prefix)
{
    char text[APIKEY_TEXT_SIZE];
    key_text_with(text, 0, 'x');
    assert_parse_rejected(text);
    key_text_with(text, 0, 'H');
    assert_parse_rejected(text);
    key_text_with(text, 2, 'x');
    assert_parse_rejected(text);
}

Test(apikey_parse, rejects_short_key)
{
    char text[APIKEY_TEXT_SIZE];
    memcpy(text, key_text, APIKEY_TEXT_SIZE);
    text[APIKEY_TEXT_SIZE - 2] = '\0';
    assert_parse_rejected(text);
    assert_parse_rejected("hmk_0123456789abcdef_");
    assert_parse_rejected("hmk_");
    assert_parse_rejected("");
}

Test(apikey_parse, rejects_long_key)
{
    char text[APIKEY_TEXT_SIZE + 1];
    memcpy(text, key_text, APIKEY_TEXT_SIZE - 1);
    text[APIKEY_TEXT_SIZE - 1] = '0';
    text[APIKEY_TEXT_SIZE] = '\0';
    assert_parse_rejected(text);
}

Test(apikey_parse, rejects_bad_hex_in_id)
{
    char text[APIKEY_TEXT_SIZE];
    key_text_with(text, 4, 'g');
    assert_parse_rejected(text);
    key_text_with(text, 19, ' ');
    assert_parse_rejected(text);
    key_text_with(text, 4, '+');
    assert_parse_rejected(text);
}

Test(apikey_parse, rejects_bad_hex_in_secret)
{
    char text[APIKEY_TEXT_SIZE];
    key_text_with(text, 21, 'z');
    assert_parse_rejected(text);
    key_text_with(text, APIKEY_TEXT_SIZE - 2, 'G');
    assert_parse_rejected(text);
    key_text_with(text, 50, '_');
    assert_parse_rejected(text);
}

Test(apikey_parse, rejects_missing_underscore)
{
    char text[APIKEY_TEXT_SIZE];
    key_text_with(text, 20, '-');
    assert_parse_rejected(text);
    key_text_with(text, 20, '0');
    assert_parse_rejected(text);
    key_text_with(text, 3, '-');
    assert_parse_rejected(text);

    /* The separator dropped and the rest shifted left: one character short. */
    char joined[APIKEY_TEXT_SIZE];
    memcpy(joined, key_text, 20);
    memcpy(joined + 20, key_text + 21, APIKEY_TEXT_SIZE - 21);
    assert_parse_rejected(joined);
}

/* ---- signing key and secret digest ---- */

/* Computes the signing key with OpenSSL's HMAC directly, independent of apikey.c. */
static void signing_key_reference(const uint8_t secret[APIKEY_SECRET_SIZE], uint8_t out[32])
{
    unsigned int size = 0;
    uint8_t *result = HMAC(EVP_sha256(), secret, APIKEY_SECRET_SIZE,
                           (const unsigned char *)signing_label, strlen(signing_label), out, &size);
    cr_assert_not_null(result);
    cr_assert(eq(uint, size, 32));
}

Test(apikey_signing, matches_openssl_hmac)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(key_text, &key), HM_OK));
    uint8_t actual[32];
    uint8_t expected[32];
    apikey_signing_key(key.secret, actual);
    signing_key_reference(key.secret, expected);
    cr_assert(eq(mem, BYTES(actual, 32), BYTES(expected, 32)));
}

Test(apikey_signing, matches_openssl_for_random_keys)
{
    for (int round = 0; round < 32; round++) {
        struct apikey key;
        cr_assert(eq(int, apikey_generate(&key), HM_OK));
        uint8_t actual[32];
        uint8_t expected[32];
        apikey_signing_key(key.secret, actual);
        signing_key_reference(key.secret, expected);
        cr_assert(eq(mem, BYTES(actual, 32), BYTES(expected, 32)), "round %d", round);
    }
}

Test(apikey_signing, label_is_thirty_bytes)
{
    /* A NUL counted into the label, or a different label, changes every signing key. */
    cr_assert(eq(sz, strlen(signing_label), (size_t)30));
    uint8_t secret[APIKEY_SECRET_SIZE] = { 0 };
    uint8_t actual[32];
    apikey_signing_key(secret, actual);

    uint8_t with_nul[32];
    unsigned int size = 0;
    HMAC(EVP_sha256(), secret, APIKEY_SECRET_SIZE, (const unsigned char *)signing_label,
         sizeof signing_label, with_nul, &size);
    cr_assert(ne(mem, BYTES(actual, 32), BYTES(with_nul, 32)));
}

Test(apikey_signing, differs_from_secret_hash)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(key_text, &key), HM_OK));
    uint8_t signing_key[32];
    uint8_t digest[32];
    apikey_signing_key(key.secret, signing_key);
    apikey_secret_hash(key.secret, digest);
    cr_assert(ne(mem, BYTES(signing_key, 32), BYTES(digest, 32)));
    cr_assert(ne(mem, BYTES(signing_key, 32), BYTES(key.secret, 32)));
}

Test(apikey_hash, matches_openssl_sha256)
{
    struct apikey key;
    cr_assert(eq(int, apikey_parse(key_text, &key), HM_OK));
    uint8_t actual[32];
    uint8_t expected[SHA256_DIGEST_LENGTH];
    apikey_secret_hash(key.secret, actual);
    cr_assert_not_null(SHA256(key.secret, APIKEY_SECRET_SIZE, expected));
    cr_assert(eq(mem, BYTES(actual, 32), BYTES(expected, 32)));
}

/* ---- billing period helpers ---- */

#define US_PER_S INT64_C(1000000)

Test(period_of, leap_day_last_microsecond)
{
    /* 2024-02-29T23:59:59.999999Z */
    cr_assert(eq(u32, event_period_of(1709251199 * US_PER_S + 999999), 202402));
}

Test(period_of, first_microsecond_of_march)
{
    /* 2024-03-01T00:00:00Z */
    cr_assert(eq(u32, event_period_of(1709251200 * US_PER_S), 202403));
}

Test(period_of, epoch) { cr_assert(eq(u32, event_period_of(0), 197001)); }

Test(period_of, negative_timestamps)
{
    /* One microsecond and one second before 1970-01-01T00:00:00Z. */
    cr_assert(eq(u32, event_period_of(-1), 196912));
    cr_assert(eq(u32, event_period_of(-US_PER_S), 196912));
    /* 1969-12-01T00:00:00Z and the microsecond before it. */
    cr_assert(eq(u32, event_period_of(-2678400 * US_PER_S), 196912));
    cr_assert(eq(u32, event_period_of(-2678400 * US_PER_S - 1), 196911));
    /* 1900-01-01T00:00:00Z, in a year that is not a leap year though divisible by 4. */
    cr_assert(eq(u32, event_period_of(-2208988800 * US_PER_S), 190001));
    cr_assert(eq(u32, event_period_of(-2208988800 * US_PER_S - 1), 189912));
}

Test(period_start, february_2024)
{
    /* 2024-02-01T00:00:00Z */
    cr_assert(eq(i64, period_start_us(202402), 1706745600 * US_PER_S));
}

Test(period_start, epoch_and_before)
{
    cr_assert(eq(i64, period_start_us(197001), 0));
    cr_assert(eq(i64, period_start_us(196912), -2678400 * US_PER_S));
}

Test(period_start, inverse_of_period_of)
{
    /* Every month from 1900-01 to 2199-12: its first microsecond and the one before. */
    uint32_t previous = 189912;
    for (uint32_t period = 190001; period < 220001; period = period_next(period)) {
        int64_t start_us = period_start_us(period);
        cr_assert(eq(u32, event_period_of(start_us), period));
        cr_assert(eq(u32, event_period_of(start_us - 1), previous));
        previous = period;
    }
}

Test(period_next, year_boundary) { cr_assert(eq(u32, period_next(202312), 202401)); }

Test(period_next, within_year)
{
    cr_assert(eq(u32, period_next(202401), 202402));
    cr_assert(eq(u32, period_next(202411), 202412));
    cr_assert(eq(u32, period_next(196912), 197001));
}

Test(period_parse, accepts_valid_months)
{
    static const struct {
        const char *text;
        uint32_t period;
    } cases[] = {
        { "2024-02", 202402 },
        { "1970-01", 197001 },
        { "9999-12", 999912 },
        { "2023-12", 202312 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t period = 0;
        cr_assert(eq(int, period_parse(cases[i].text, &period), HM_OK), "%s", cases[i].text);
        cr_assert(eq(u32, period, cases[i].period));
    }
}

static void assert_period_rejected(const char *text)
{
    uint32_t period = 7;
    cr_assert(eq(int, period_parse(text, &period), HM_ERR_INVALID), "accepted \"%s\"", text);
    cr_assert(eq(u32, period, 7), "output written for \"%s\"", text);
}

Test(period_parse, rejects_month_13) { assert_period_rejected("2024-13"); }

Test(period_parse, rejects_month_zero) { assert_period_rejected("2024-00"); }

Test(period_parse, rejects_one_digit_month) { assert_period_rejected("2024-1"); }

Test(period_parse, rejects_two_digit_year) { assert_period_rejected("24-01"); }

Test(period_parse, rejects_year_before_1970)
{
    assert_period_rejected("1969-12");
    assert_period_rejected("0000-01");
}

Test(period_parse, rejects_other_shapes)
{
    assert_period_rejected("");
    assert_period_rejected("2024/01");
    assert_period_rejected("2024-011");
    assert_period_rejected(" 2024-01");
    assert_period_rejected("2024-01 ");
    assert_period_rejected("202401");
    assert_period_rejected("2024-01-01");
}

Test(period_parse, rejects_space_or_sign_in_digits)
{
    assert_period_rejected("2024- 1");
    assert_period_rejected("2024-+1");
    assert_period_rejected("2024--1");
    assert_period_rejected(" 024-01");
    assert_period_rejected("+024-01");
}
