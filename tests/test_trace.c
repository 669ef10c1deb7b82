/*
 * Tests of the trace readers in engine/lib/trace.c and of the replay rule.
 * The bundled files in data/traces must give the row counts, token sums and
 * cached-input total of data/traces/README.md. Malformed input must fail with
 * a message naming file, line and value. Tenant and model assignment is
 * checked against SHA-256 computed here, and replay_command runs dry.
 */
#include "common/status.h"
#include "engine/lib/replay.h"
#include "engine/lib/trace.h"

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <criterion/redirect.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TRACES_DIR HM_SOURCE_DIR "/data/traces/"
#define CODE_PATH TRACES_DIR "AzureLLMInferenceTrace_code.csv"
#define CONV_PATH TRACES_DIR "AzureLLMInferenceTrace_conv.csv"
#define MOONCAKE_PATH TRACES_DIR "conversation_trace.jsonl"

#define CSTR(text) ((char *)(text))

/* Unix seconds of 2023-11-16T18:00:00Z, as `date -u -d 2023-11-16T18:00:00Z +%s` prints. */
#define HOUR_START_S INT64_C(1700157600)

struct totals {
    uint64_t rows;
    uint64_t input_tokens;
    uint64_t output_tokens;
    uint64_t cached_input_tokens;
    int64_t first_timestamp_us;
    int64_t last_timestamp_us;
};

/* Reads a whole trace, asserting that every row reads and is numbered in order. */
static struct totals read_all(const char *path, enum trace_source source)
{
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    int rc = trace_open(path, source, &reader, error, sizeof error);
    cr_assert(eq(int, rc, HM_OK), "trace_open: %s", error);

    struct totals totals = { 0 };
    struct trace_row row;
    while ((rc = trace_next(reader, &row)) == 1) {
        totals.rows++;
        cr_assert(eq(u64, row.row, totals.rows));
        cr_assert(eq(int, (int)row.source, (int)source));
        cr_assert(le(u64, row.cached_input_tokens, row.input_tokens));
        if (totals.rows == 1)
            totals.first_timestamp_us = row.timestamp_us;
        totals.last_timestamp_us = row.timestamp_us;
        totals.input_tokens += row.input_tokens;
        totals.output_tokens += row.output_tokens;
        totals.cached_input_tokens += row.cached_input_tokens;
    }
    cr_assert(eq(int, rc, 0), "trace_next: %s", trace_error(reader));
    trace_close(reader);
    return totals;
}

/* Writes `text` to a new temporary file whose name ends in `suffix`; caller frees the path. */
static char *write_temp(const char *suffix, const char *text)
{
    char *path = NULL;
    cr_assert(asprintf(&path, "%s/test_trace_XXXXXX%s", HM_BINARY_DIR, suffix) > 0);
    int fd = mkstemps(path, (int)strlen(suffix));
    cr_assert(ge(int, fd, 0), "mkstemps %s", path);
    size_t size = strlen(text);
    cr_assert(eq(i64, (int64_t)write(fd, text, size), (int64_t)size));
    close(fd);
    return path;
}

/*
 * Reads `text` as a trace of `source` and expects the first failure on a
 * row; returns the error message (static buffer) after checking the status.
 */
static const char *first_error(enum trace_source source, const char *text, int status_expected)
{
    static char message[TRACE_ERROR_SIZE];
    char *path = write_temp(source == TRACE_MOONCAKE ? ".jsonl" : ".csv", text);
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    int rc = trace_open(path, source, &reader, error, sizeof error);
    if (rc == HM_OK) {
        struct trace_row row;
        while ((rc = trace_next(reader, &row)) == 1)
            continue;
        snprintf(error, sizeof error, "%s", trace_error(reader));
        cr_assert(eq(int, trace_next(reader, &row), rc), "errors must be sticky");
        trace_close(reader);
    }
    cr_assert(eq(int, rc, status_expected), "status for %s: %s", path, error);
    cr_assert(not(eq(ptr, strstr(error, path), NULL)), "message names the file: %s", error);
    snprintf(message, sizeof message, "%s", error);
    unlink(path);
    free(path);
    return message;
}

static void assert_contains(const char *text, const char *part)
{
    cr_assert(not(eq(ptr, strstr(text, part), NULL)), "\"%s\" does not contain \"%s\"", text,
              part);
}

/* ---- bundled traces ---- */

Test(trace, azure_code_totals)
{
    struct totals totals = read_all(CODE_PATH, TRACE_AZURE_CODE);
    cr_expect(eq(u64, totals.rows, 8819));
    cr_expect(eq(u64, totals.input_tokens, 18059974));
    cr_expect(eq(u64, totals.output_tokens, 245896));
    cr_expect(eq(u64, totals.cached_input_tokens, 0));
    /* 2023-11-16 18:17:03.9799600 and 19:14:19.9280160, the last row having no line ending. */
    cr_expect(eq(i64, totals.first_timestamp_us, (HOUR_START_S + 17 * 60 + 3) * 1000000 + 979960));
    cr_expect(eq(i64, totals.last_timestamp_us,
                 (HOUR_START_S + 3600 + 14 * 60 + 19) * 1000000 + 928016));
}

Test(trace, azure_conv_totals)
{
    struct totals totals = read_all(CONV_PATH, TRACE_AZURE_CONV);
    cr_expect(eq(u64, totals.rows, 19366));
    cr_expect(eq(u64, totals.input_tokens, 22361870));
    cr_expect(eq(u64, totals.output_tokens, 4088665));
    /* 2023-11-16 18:15:46.6805900 and 19:14:08.4025270. */
    cr_expect(eq(i64, totals.first_timestamp_us, (HOUR_START_S + 15 * 60 + 46) * 1000000 + 680590));
    cr_expect(eq(i64, totals.last_timestamp_us,
                 (HOUR_START_S + 3600 + 14 * 60 + 8) * 1000000 + 402527));
}

Test(trace, mooncake_totals)
{
    struct totals totals = read_all(MOONCAKE_PATH, TRACE_MOONCAKE);
    cr_expect(eq(u64, totals.rows, 12031));
    cr_expect(eq(u64, totals.input_tokens, 144793823));
    cr_expect(eq(u64, totals.output_tokens, 4122048));
    cr_expect(eq(u64, totals.cached_input_tokens, 54098411));
    cr_expect(eq(i64, totals.first_timestamp_us, TRACE_MOONCAKE_EPOCH_US));
    cr_expect(eq(i64, totals.last_timestamp_us, TRACE_MOONCAKE_EPOCH_US + INT64_C(3536999) * 1000));
}

Test(trace, mooncake_epoch_constant)
{
    cr_assert(eq(i64, TRACE_MOONCAKE_EPOCH_US, HOUR_START_S * 1000000));
}

/* ---- source detection ---- */

Test(trace, source_detect)
{
    enum trace_source source;
    cr_assert(eq(int, trace_source_detect(CODE_PATH, &source), HM_OK));
    cr_expect(eq(int, (int)source, TRACE_AZURE_CODE));
    cr_assert(eq(int, trace_source_detect(CONV_PATH, &source), HM_OK));
    cr_expect(eq(int, (int)source, TRACE_AZURE_CONV));
    cr_assert(eq(int, trace_source_detect(MOONCAKE_PATH, &source), HM_OK));
    cr_expect(eq(int, (int)source, TRACE_MOONCAKE));
    cr_assert(eq(int, trace_source_detect("/tmp/slice_code.csv", &source), HM_OK));
    cr_expect(eq(int, (int)source, TRACE_AZURE_CODE));
    cr_expect(eq(int, trace_source_detect("/tmp/code_conv.csv", &source), HM_ERR_INVALID));
    cr_expect(eq(int, trace_source_detect("/tmp/trace.csv", &source), HM_ERR_INVALID));
    cr_expect(eq(int, trace_source_detect("/tmp/code.txt", &source), HM_ERR_INVALID));
    /* Only the base name counts: a "code" directory does not make a CSV azure-code. */
    cr_expect(eq(int, trace_source_detect("/tmp/code/trace.csv", &source), HM_ERR_INVALID));
}

Test(trace, source_names)
{
    cr_expect(eq(str, CSTR(trace_source_name(TRACE_AZURE_CODE)), "azure-code"));
    cr_expect(eq(str, CSTR(trace_source_name(TRACE_AZURE_CONV)), "azure-conv"));
    cr_expect(eq(str, CSTR(trace_source_name(TRACE_MOONCAKE)), "mooncake"));
}

/* ---- small inputs ---- */

Test(trace, csv_lf_endings_and_fraction)
{
    char *path = write_temp(".csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                    "1970-01-01 00:00:01.5,10,20\n"
                                    "2024-02-29 23:59:59.9999999,0,1\n");
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    cr_assert(eq(int, trace_open(path, TRACE_AZURE_CODE, &reader, error, sizeof error), HM_OK));
    struct trace_row row;
    cr_assert(eq(int, trace_next(reader, &row), 1));
    cr_expect(eq(i64, row.timestamp_us, 1500000));
    cr_expect(eq(u64, row.input_tokens, 10));
    cr_expect(eq(u64, row.output_tokens, 20));
    cr_assert(eq(int, trace_next(reader, &row), 1));
    /* 2024-02-29 is day 19,782 after the epoch; the seventh fractional digit is dropped. */
    cr_expect(eq(i64, row.timestamp_us, (INT64_C(19782) * 86400 + 86399) * 1000000 + 999999));
    cr_assert(eq(int, trace_next(reader, &row), 0));
    trace_close(reader);
    unlink(path);
    free(path);
}

Test(trace, prefix_cache_leading_blocks)
{
    char *path = write_temp(".jsonl",
                            "{\"timestamp\": 0, \"input_length\": 1500, \"output_length\": 1, "
                            "\"hash_ids\": [1, 2, 3]}\n"
                            /* ids 1 and 2 seen, 4 unseen: 1,024 tokens */
                            "{\"timestamp\": 0, \"input_length\": 1500, \"output_length\": 1, "
                            "\"hash_ids\": [1, 2, 4]}\n"
                            /* 5 unseen first, so nothing counts even though 1 and 2 follow */
                            "{\"timestamp\": 5, \"input_length\": 1500, \"output_length\": 1, "
                            "\"hash_ids\": [5, 1, 2]}\n"
                            /* all three seen, capped at input_length */
                            "{\"timestamp\": 5, \"input_length\": 1100, \"output_length\": 1, "
                            "\"hash_ids\": [1, 2, 4]}\n"
                            /* an id repeated inside one row is not a hit of an earlier row */
                            "{\"timestamp\": 9, \"input_length\": 1024, \"output_length\": 1, "
                            "\"hash_ids\": [7, 7]}\n");
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    cr_assert(eq(int, trace_open(path, TRACE_MOONCAKE, &reader, error, sizeof error), HM_OK));
    static const uint64_t cached_expected[] = { 0, 1024, 0, 1100, 0 };
    static const int64_t offset_ms_expected[] = { 0, 0, 5, 5, 9 };
    struct trace_row row;
    for (size_t i = 0; i < 5; i++) {
        cr_assert(eq(int, trace_next(reader, &row), 1), "row %zu: %s", i + 1, trace_error(reader));
        cr_expect(eq(u64, row.cached_input_tokens, cached_expected[i]), "row %zu", i + 1);
        cr_expect(eq(i64, row.timestamp_us,
                     TRACE_MOONCAKE_EPOCH_US + offset_ms_expected[i] * 1000),
                  "row %zu", i + 1);
    }
    cr_assert(eq(int, trace_next(reader, &row), 0));
    trace_close(reader);
    unlink(path);
    free(path);
}

/* ---- malformed input ---- */

#define CSV_HEADER "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
#define CSV_GOOD_ROW "2023-11-16 18:17:03.9799600,4808,10\r\n"

Test(trace, csv_bad_header)
{
    const char *message = first_error(TRACE_AZURE_CODE, "time,in,out\r\n", HM_ERR_INVALID);
    assert_contains(message, ":1: ");
    assert_contains(message, "\"time,in,out\"");
}

Test(trace, csv_bad_timestamp)
{
    const char *message = first_error(TRACE_AZURE_CODE,
                                      CSV_HEADER CSV_GOOD_ROW "2023-13-16 18:17:04.0000000,1,1",
                                      HM_ERR_INVALID);
    assert_contains(message, ":3: ");
    assert_contains(message, "\"2023-13-16 18:17:04.0000000\"");
}

Test(trace, csv_bad_day_of_month)
{
    const char *message = first_error(TRACE_AZURE_CODE,
                                      CSV_HEADER "2023-02-29 18:17:04.0000000,1,1",
                                      HM_ERR_INVALID);
    assert_contains(message, ":2: ");
    assert_contains(message, "\"2023-02-29 18:17:04.0000000\"");
}

Test(trace, csv_bad_token_count)
{
    const char *message = first_error(TRACE_AZURE_CONV, CSV_HEADER CSV_GOOD_ROW
                                      "2023-11-16 18:17:04.0000000,12x,5\r\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":3: ");
    assert_contains(message, "ContextTokens \"12x\"");
}

Test(trace, csv_negative_output)
{
    const char *message = first_error(TRACE_AZURE_CONV, CSV_HEADER
                                      "2023-11-16 18:17:04.0000000,12,-5\r\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":2: ");
    assert_contains(message, "GeneratedTokens \"-5\"");
}

Test(trace, csv_field_count)
{
    const char *message = first_error(TRACE_AZURE_CODE, CSV_HEADER "2023-11-16 18:17:04.0,1,2,3\r\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":2: ");
    assert_contains(message, "\"2023-11-16 18:17:04.0,1,2,3\"");
}

Test(trace, csv_empty_line)
{
    const char *message = first_error(TRACE_AZURE_CODE, CSV_HEADER CSV_GOOD_ROW "\r\n" CSV_GOOD_ROW,
                                      HM_ERR_INVALID);
    assert_contains(message, ":3: ");
}

Test(trace, csv_time_goes_backwards)
{
    const char *message = first_error(TRACE_AZURE_CODE, CSV_HEADER CSV_GOOD_ROW
                                      "2023-11-16 18:17:03.0000000,1,1\r\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":3: ");
    assert_contains(message, "backwards");
}

Test(trace, jsonl_invalid_json)
{
    const char *message = first_error(TRACE_MOONCAKE, "{\"timestamp\": 0,\n", HM_ERR_INVALID);
    assert_contains(message, ":1: ");
    assert_contains(message, "invalid JSON");
}

Test(trace, jsonl_negative_input)
{
    const char *message = first_error(TRACE_MOONCAKE,
                                      "{\"timestamp\": 0, \"input_length\": 10, "
                                      "\"output_length\": 1, \"hash_ids\": [1]}\n"
                                      "{\"timestamp\": 0, \"input_length\": -3, "
                                      "\"output_length\": 1, \"hash_ids\": [1]}\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":2: ");
    assert_contains(message, "input_length -3");
}

Test(trace, jsonl_fractional_timestamp)
{
    const char *message = first_error(TRACE_MOONCAKE,
                                      "{\"timestamp\": 1.5, \"input_length\": 10, "
                                      "\"output_length\": 1, \"hash_ids\": [1]}\n",
                                      HM_ERR_INVALID);
    assert_contains(message, ":1: ");
    assert_contains(message, "timestamp 1.5");
}

Test(trace, jsonl_missing_member)
{
    const char *message = first_error(TRACE_MOONCAKE,
                                      "{\"timestamp\": 1, \"input_length\": 10, "
                                      "\"hash_ids\": [1]}\n",
                                      HM_ERR_INVALID);
    assert_contains(message, "output_length");
}

Test(trace, jsonl_bad_hash_id)
{
    const char *message = first_error(TRACE_MOONCAKE,
                                      "{\"timestamp\": 1, \"input_length\": 10, "
                                      "\"output_length\": 1, \"hash_ids\": [1, \"x\"]}\n",
                                      HM_ERR_INVALID);
    assert_contains(message, "hash_ids[1] \"x\"");
}

Test(trace, missing_file)
{
    char error[TRACE_ERROR_SIZE];
    struct trace_reader *reader = NULL;
    int rc = trace_open(TRACES_DIR "no_such_code.csv", TRACE_AZURE_CODE, &reader, error,
                        sizeof error);
    cr_assert(eq(int, rc, HM_ERR_IO));
    assert_contains(error, "no_such_code.csv");
}

/* ---- replay rule: tenant and model ---- */

/* Computes the first 8 bytes of SHA-256(name), big-endian, with OpenSSL directly. */
static uint64_t name_hash(const char *name)
{
    uint8_t digest[32];
    unsigned int size = 0;
    cr_assert(eq(int, EVP_Digest(name, strlen(name), digest, &size, EVP_sha256(), NULL), 1));
    return (uint64_t)digest[0] << 56 | (uint64_t)digest[1] << 48 | (uint64_t)digest[2] << 40 |
           (uint64_t)digest[3] << 32 | (uint64_t)digest[4] << 24 | (uint64_t)digest[5] << 16 |
           (uint64_t)digest[6] << 8 | (uint64_t)digest[7];
}

struct assign_case {
    enum trace_source source;
    uint64_t row;
    uint32_t tenant_count;
    const char *name;
    const char *model_even;
    const char *model_odd;
};

static const struct assign_case assign_cases[] = {
    { TRACE_AZURE_CODE, 1, 3, "azure-code:1", "coder-7b", "coder-34b" },
    { TRACE_AZURE_CODE, 8819, 4, "azure-code:8819", "coder-7b", "coder-34b" },
    { TRACE_AZURE_CONV, 2, 3, "azure-conv:2", "chat-8b", "chat-70b" },
    { TRACE_AZURE_CONV, 19366, 7, "azure-conv:19366", "chat-8b", "chat-70b" },
    { TRACE_MOONCAKE, 10, 3, "mooncake:10", "kimi-chat", "kimi-chat" },
    { TRACE_AZURE_CODE, 42, 1, "azure-code:42", "coder-7b", "coder-34b" },
};

Test(replay_rule, tenant_and_model)
{
    for (size_t i = 0; i < sizeof assign_cases / sizeof assign_cases[0]; i++) {
        const struct assign_case *c = &assign_cases[i];
        uint64_t hash = name_hash(c->name);
        struct replay_assignment assignment;
        replay_assign(c->source, c->row, c->tenant_count, &assignment);
        cr_expect(eq(u64, assignment.hash, hash), "%s", c->name);
        cr_expect(eq(u32, assignment.tenant_index, (uint32_t)(hash % c->tenant_count)), "%s",
                  c->name);
        const char *model = (hash / c->tenant_count) % 2 == 0 ? c->model_even : c->model_odd;
        cr_expect(eq(str, CSTR(assignment.model), CSTR(model)), "%s", c->name);
    }
}

/*
 * Pinned values, computed with Python's hashlib: SHA-256("azure-code:1")
 * starts with b513bde579cb6c50, so with 3 tenants the row goes to tenant 2
 * and (h / 3) is even, giving coder-7b. docs/REPLAY.md shows the same example.
 */
Test(replay_rule, pinned_example)
{
    struct replay_assignment assignment;
    replay_assign(TRACE_AZURE_CODE, 1, 3, &assignment);
    cr_expect(eq(u64, assignment.hash, UINT64_C(0xb513bde579cb6c50)));
    cr_expect(eq(u32, assignment.tenant_index, 2));
    cr_expect(eq(str, CSTR(assignment.model), "coder-7b"));
}

/* ---- replay command, dry run ---- */

#define KEY_SECRET_HEX "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static char *write_keys(const char *text, mode_t mode)
{
    char *path = write_temp(".keys", text);
    cr_assert(eq(int, chmod(path, mode), 0));
    return path;
}

Test(replay_command, dry_run_counts, .init = cr_redirect_stdout)
{
    char *keys = write_keys("# tenant name key\n"
                            "0b6f7c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e acme hmk_00000000000000a1_" KEY_SECRET_HEX "\n"
                            "\n"
                            "1c7a8d2f-3e4b-4c6d-9e0f-1a2b3c4d5e6f globex hmk_00000000000000b2_" KEY_SECRET_HEX "\n",
                            0600);
    char *argv[] = { "replay", "--keys", keys, "--trace", CODE_PATH, "--trace", MOONCAKE_PATH,
                     "--limit", "100", "--dry-run", "--quiet", NULL };
    int status = replay_command(11, argv);
    cr_assert(eq(int, status, REPLAY_EXIT_OK));
    fflush(stdout);
    FILE *out = cr_get_redirected_stdout();
    char line[512] = "";
    cr_assert(not(eq(ptr, fgets(line, sizeof line, out), NULL)));
    assert_contains(line, "replay: rows=200 events=");
    assert_contains(line, " stored=0 ");
    assert_contains(line, " undelivered=0");
    unlink(keys);
    free(keys);
}

Test(replay_command, bad_key_not_printed, .init = cr_redirect_stderr)
{
    /* The key's secret has 63 hex digits and a stray letter: invalid, and never to be echoed. */
    char *keys = write_keys("0b6f7c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e acme "
                            "hmk_00000000000000a1_zz112233445566778899aabbccddeeff001122334455"
                            "66778899aabbccddeeff\n",
                            0644);
    char *argv[] = { "replay", "--keys", keys, "--trace", CODE_PATH, "--dry-run", NULL };
    cr_assert(eq(int, replay_command(6, argv), REPLAY_EXIT_USAGE));
    fflush(stderr);
    FILE *err = cr_get_redirected_stderr();
    char text[4096];
    size_t size = fread(text, 1, sizeof text - 1, err);
    text[size] = '\0';
    assert_contains(text, "invalid API key");
    assert_contains(text, "readable by group or others");
    cr_expect(eq(ptr, strstr(text, "zz1122"), NULL), "the key text reached stderr: %s", text);
    unlink(keys);
    free(keys);
}

Test(replay_command, missing_keys_option, .init = cr_redirect_stderr)
{
    char *argv[] = { "replay", "--trace", CODE_PATH, NULL };
    cr_expect(eq(int, replay_command(3, argv), REPLAY_EXIT_USAGE));
}
