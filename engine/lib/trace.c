#include "trace.h"

#include "common/status.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(TRACE_CACHE_BLOCKS_MAX <= UINT32_MAX / 2, "the cache table size must fit 32 bits");

static const char *const csv_header = "TIMESTAMP,ContextTokens,GeneratedTokens";

/* Open-addressing set of hash ids. A slot stores id + 1, so 0 marks an empty slot. */
struct block_set {
    uint64_t *slots;
    uint32_t capacity; /* a power of two */
    uint32_t count;
};

struct trace_reader {
    FILE *file;
    char *path;
    enum trace_source source;
    char *line; /* getline buffer, reused for every line */
    size_t line_capacity;
    uint64_t line_number; /* 1-based, header included */
    uint64_t row_number;
    int64_t timestamp_us_last;
    int status; /* sticky error status, HM_OK while reading works */
    char error[TRACE_ERROR_SIZE];
    struct block_set cache;
    uint64_t *hash_ids; /* TRACE_HASH_IDS_MAX ids of the current row */
};

const char *trace_source_name(enum trace_source source)
{
    switch (source) {
    case TRACE_AZURE_CODE: return "azure-code";
    case TRACE_AZURE_CONV: return "azure-conv";
    case TRACE_MOONCAKE: return "mooncake";
    case TRACE_SOURCE_COUNT: break;
    }
    return "unknown";
}

static int ends_with(const char *text, const char *suffix)
{
    size_t text_size = strlen(text);
    size_t suffix_size = strlen(suffix);
    return text_size >= suffix_size && strcmp(text + text_size - suffix_size, suffix) == 0;
}

int trace_source_detect(const char *path, enum trace_source *source_out)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash == NULL ? path : slash + 1;
    if (ends_with(base, ".jsonl")) {
        *source_out = TRACE_MOONCAKE;
        return HM_OK;
    }
    if (!ends_with(base, ".csv"))
        return HM_ERR_INVALID;
    int is_code = strstr(base, "code") != NULL;
    int is_conv = strstr(base, "conv") != NULL;
    if (is_code == is_conv)
        return HM_ERR_INVALID;
    *source_out = is_code ? TRACE_AZURE_CODE : TRACE_AZURE_CONV;
    return HM_OK;
}

/* Records a sticky error: "<path>:<line>: <message>". */
__attribute__((format(printf, 3, 4))) static int reader_fail(struct trace_reader *reader,
                                                             int status, const char *fmt, ...)
{
    int used = snprintf(reader->error, sizeof reader->error, "%s:%llu: ", reader->path,
                        (unsigned long long)reader->line_number);
    if (used < 0 || (size_t)used >= sizeof reader->error)
        used = 0;
    va_list args;
    va_start(args, fmt);
    vsnprintf(reader->error + used, sizeof reader->error - (size_t)used, fmt, args);
    va_end(args);
    reader->status = status;
    return status;
}

/* Copies up to 48 bytes of a value for an error message, printable ASCII only. */
static void quote_value(const char *value, size_t size, char out[64])
{
    size_t used = 0;
    for (size_t i = 0; i < size && used < 48; i++) {
        unsigned char c = (unsigned char)value[i];
        out[used++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (size > 48) {
        memcpy(out + used, "...", 3);
        used += 3;
    }
    out[used] = '\0';
}

/* ---- prefix cache ---- */

static uint64_t mix64(uint64_t x)
{
    /* The splitmix64 finalizer: spreads dense ids over the table. */
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

static int block_set_contains(const struct block_set *set, uint64_t id)
{
    if (set->capacity == 0)
        return 0;
    uint32_t mask = set->capacity - 1;
    for (uint32_t at = (uint32_t)mix64(id) & mask;; at = (at + 1) & mask) {
        if (set->slots[at] == 0)
            return 0;
        if (set->slots[at] == id + 1)
            return 1;
    }
}

static void block_set_place(uint64_t *slots, uint32_t capacity, uint64_t stored)
{
    uint32_t mask = capacity - 1;
    uint32_t at = (uint32_t)mix64(stored - 1) & mask;
    while (slots[at] != 0)
        at = (at + 1) & mask;
    slots[at] = stored;
}

static int block_set_grow(struct block_set *set)
{
    uint32_t capacity = set->capacity == 0 ? 1024 : set->capacity * 2;
    uint64_t *slots = calloc(capacity, sizeof *slots);
    if (slots == NULL)
        return HM_ERR_NOMEM;
    for (uint32_t i = 0; i < set->capacity; i++) {
        if (set->slots[i] != 0)
            block_set_place(slots, capacity, set->slots[i]);
    }
    free(set->slots);
    set->slots = slots;
    set->capacity = capacity;
    return HM_OK;
}

/* Adds an id (below UINT64_MAX); keeps the load at or below one half. */
static int block_set_add(struct block_set *set, uint64_t id)
{
    if (block_set_contains(set, id))
        return HM_OK;
    if (set->count >= TRACE_CACHE_BLOCKS_MAX)
        return HM_ERR_FULL;
    if ((set->count + 1) * 2 > set->capacity) {
        int rc = block_set_grow(set);
        if (rc != HM_OK)
            return rc;
    }
    block_set_place(set->slots, set->capacity, id + 1);
    set->count++;
    return HM_OK;
}

/* ---- shared parsing ---- */

/* Parses a decimal count of 1 to 19 digits; returns 0 on any other text. */
static int parse_count(const char *text, size_t size, uint64_t *value_out)
{
    if (size == 0 || size > 19)
        return 0;
    uint64_t value = 0;
    for (size_t i = 0; i < size; i++) {
        if (text[i] < '0' || text[i] > '9')
            return 0;
        value = value * 10 + (uint64_t)(text[i] - '0');
    }
    *value_out = value;
    return 1;
}

/* Reads the next line without its LF or CRLF; returns 1, 0 at the end, or a status. */
static int read_line(struct trace_reader *reader, size_t *size_out)
{
    errno = 0;
    ssize_t size = getline(&reader->line, &reader->line_capacity, reader->file);
    if (size < 0) {
        if (ferror(reader->file))
            return reader_fail(reader, HM_ERR_IO, "read failed: %s", strerror(errno));
        return 0;
    }
    reader->line_number++;
    if ((size_t)size > TRACE_LINE_MAX)
        return reader_fail(reader, HM_ERR_INVALID, "line longer than %d bytes", TRACE_LINE_MAX);
    if (size > 0 && reader->line[size - 1] == '\n')
        size--;
    if (size > 0 && reader->line[size - 1] == '\r')
        size--;
    reader->line[size] = '\0';
    *size_out = (size_t)size;
    return 1;
}

/* ---- Azure CSV ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t year, unsigned month, unsigned day)
{
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    unsigned year_of_era = (unsigned)(year - era * 400);
    unsigned day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + (int64_t)day_of_era - 719468;
}

static unsigned days_in_month(unsigned year, unsigned month)
{
    static const unsigned days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

static int digits_at(const char *text, size_t at, size_t count, unsigned *value_out)
{
    unsigned value = 0;
    for (size_t i = 0; i < count; i++) {
        char c = text[at + i];
        if (c < '0' || c > '9')
            return 0;
        value = value * 10 + (unsigned)(c - '0');
    }
    *value_out = value;
    return 1;
}

/*
 * Parses `YYYY-MM-DD HH:MM:SS` followed by `.` and 1 to 7 fractional digits,
 * as UTC. Digits past the sixth are dropped (truncation to the microsecond).
 */
static int parse_azure_timestamp(const char *text, size_t size, int64_t *timestamp_us_out)
{
    unsigned year, month, day, hour, minute, second;
    if (size < 21 || size > 27 || text[4] != '-' || text[7] != '-' || text[10] != ' ' ||
        text[13] != ':' || text[16] != ':' || text[19] != '.')
        return 0;
    if (!digits_at(text, 0, 4, &year) || !digits_at(text, 5, 2, &month) ||
        !digits_at(text, 8, 2, &day) || !digits_at(text, 11, 2, &hour) ||
        !digits_at(text, 14, 2, &minute) || !digits_at(text, 17, 2, &second))
        return 0;
    if (year < 1970 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59)
        return 0;
    int64_t micros = 0;
    size_t fraction_size = size - 20;
    for (size_t i = 0; i < 6; i++) {
        unsigned digit = 0;
        if (i < fraction_size && !digits_at(text, 20 + i, 1, &digit))
            return 0;
        micros = micros * 10 + digit;
    }
    unsigned ignored;
    if (fraction_size == 7 && !digits_at(text, 26, 1, &ignored))
        return 0;
    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    *timestamp_us_out = seconds * 1000000 + micros;
    return 1;
}

static int csv_read_header(struct trace_reader *reader)
{
    size_t size = 0;
    int rc = read_line(reader, &size);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return reader_fail(reader, HM_ERR_INVALID, "empty file, expected header \"%s\"",
                           csv_header);
    if (strcmp(reader->line, csv_header) != 0) {
        char quoted[64];
        quote_value(reader->line, size, quoted);
        return reader_fail(reader, HM_ERR_INVALID, "invalid header \"%s\", expected \"%s\"",
                           quoted, csv_header);
    }
    return HM_OK;
}

static int csv_next(struct trace_reader *reader, struct trace_row *row)
{
    size_t size = 0;
    int rc = read_line(reader, &size);
    if (rc <= 0)
        return rc;
    const char *line = reader->line;
    char quoted[64];
    const char *comma1 = memchr(line, ',', size);
    const char *comma2 = comma1 == NULL ? NULL : memchr(comma1 + 1, ',', size - 1 - (size_t)(comma1 - line));
    if (comma2 == NULL || memchr(comma2 + 1, ',', size - 1 - (size_t)(comma2 - line)) != NULL) {
        quote_value(line, size, quoted);
        return reader_fail(reader, HM_ERR_INVALID, "expected 3 comma-separated fields, got \"%s\"",
                           quoted);
    }
    size_t timestamp_size = (size_t)(comma1 - line);
    size_t input_size = (size_t)(comma2 - comma1 - 1);
    size_t output_size = size - (size_t)(comma2 - line) - 1;

    if (!parse_azure_timestamp(line, timestamp_size, &row->timestamp_us)) {
        quote_value(line, timestamp_size, quoted);
        return reader_fail(reader, HM_ERR_INVALID,
                           "invalid TIMESTAMP \"%s\", expected YYYY-MM-DD HH:MM:SS.fffffff",
                           quoted);
    }
    if (!parse_count(comma1 + 1, input_size, &row->input_tokens)) {
        quote_value(comma1 + 1, input_size, quoted);
        return reader_fail(reader, HM_ERR_INVALID,
                           "invalid ContextTokens \"%s\", expected a non-negative integer", quoted);
    }
    if (!parse_count(comma2 + 1, output_size, &row->output_tokens)) {
        quote_value(comma2 + 1, output_size, quoted);
        return reader_fail(reader, HM_ERR_INVALID,
                           "invalid GeneratedTokens \"%s\", expected a non-negative integer",
                           quoted);
    }
    row->cached_input_tokens = 0;
    return 1;
}

/* ---- Mooncake JSONL ---- */

/* Reads a non-negative integer member; on failure records an error naming it and its value. */
static int json_member_count(struct trace_reader *reader, json_t *object, const char *name,
                             uint64_t *value_out)
{
    json_t *value = json_object_get(object, name);
    if (value == NULL)
        return reader_fail(reader, HM_ERR_INVALID, "missing member \"%s\"", name);
    if (!json_is_integer(value) || json_integer_value(value) < 0) {
        char *text = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
        char quoted[64];
        quote_value(text == NULL ? "?" : text, text == NULL ? 1 : strlen(text), quoted);
        free(text);
        return reader_fail(reader, HM_ERR_INVALID,
                           "invalid %s %s, expected a non-negative integer", name, quoted);
    }
    *value_out = (uint64_t)json_integer_value(value);
    return HM_OK;
}

/* Reads hash_ids into reader->hash_ids; returns the count or a negative status. */
static int json_hash_ids(struct trace_reader *reader, json_t *object)
{
    json_t *ids = json_object_get(object, "hash_ids");
    if (ids == NULL)
        return reader_fail(reader, HM_ERR_INVALID, "missing member \"hash_ids\"");
    if (!json_is_array(ids))
        return reader_fail(reader, HM_ERR_INVALID, "invalid hash_ids, expected an array");
    size_t count = json_array_size(ids);
    if (count > TRACE_HASH_IDS_MAX)
        return reader_fail(reader, HM_ERR_INVALID, "hash_ids has %zu ids, more than %d", count,
                           TRACE_HASH_IDS_MAX);
    for (size_t i = 0; i < count; i++) {
        json_t *id = json_array_get(ids, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0) {
            char *text = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
            char quoted[64];
            quote_value(text == NULL ? "?" : text, text == NULL ? 1 : strlen(text), quoted);
            free(text);
            return reader_fail(reader, HM_ERR_INVALID,
                               "invalid hash_ids[%zu] %s, expected a non-negative integer", i,
                               quoted);
        }
        reader->hash_ids[i] = (uint64_t)json_integer_value(id);
    }
    return (int)count;
}

/* Counts the cached tokens of a row, then adds all its ids to the cache. */
static int apply_prefix_cache(struct trace_reader *reader, int id_count, struct trace_row *row)
{
    uint64_t leading = 0;
    while (leading < (uint64_t)id_count && block_set_contains(&reader->cache, reader->hash_ids[leading]))
        leading++;
    uint64_t cached = leading * TRACE_MOONCAKE_BLOCK_TOKENS;
    row->cached_input_tokens = cached < row->input_tokens ? cached : row->input_tokens;

    for (int i = 0; i < id_count; i++) {
        int rc = block_set_add(&reader->cache, reader->hash_ids[i]);
        if (rc == HM_ERR_FULL)
            return reader_fail(reader, rc, "prefix cache holds %u hash ids, its limit",
                               TRACE_CACHE_BLOCKS_MAX);
        if (rc != HM_OK)
            return reader_fail(reader, rc, "out of memory for the prefix cache");
    }
    return HM_OK;
}

/* Largest relative timestamp accepted: about 100 years, so the sum cannot overflow. */
#define MOONCAKE_TIMESTAMP_MS_MAX (UINT64_C(100) * 366 * 86400 * 1000)

static int jsonl_parse_object(struct trace_reader *reader, json_t *object, struct trace_row *row)
{
    uint64_t timestamp_ms = 0;
    int rc = json_member_count(reader, object, "timestamp", &timestamp_ms);
    if (rc == HM_OK)
        rc = json_member_count(reader, object, "input_length", &row->input_tokens);
    if (rc == HM_OK)
        rc = json_member_count(reader, object, "output_length", &row->output_tokens);
    if (rc != HM_OK)
        return rc;
    if (timestamp_ms > MOONCAKE_TIMESTAMP_MS_MAX)
        return reader_fail(reader, HM_ERR_INVALID, "invalid timestamp %llu, above %llu ms",
                           (unsigned long long)timestamp_ms,
                           (unsigned long long)MOONCAKE_TIMESTAMP_MS_MAX);
    row->timestamp_us = TRACE_MOONCAKE_EPOCH_US + (int64_t)timestamp_ms * 1000;

    int id_count = json_hash_ids(reader, object);
    if (id_count < 0)
        return id_count;
    return apply_prefix_cache(reader, id_count, row);
}

static int jsonl_next(struct trace_reader *reader, struct trace_row *row)
{
    size_t size = 0;
    int rc = read_line(reader, &size);
    if (rc <= 0)
        return rc;
    json_error_t json_error;
    json_t *object = json_loadb(reader->line, size, JSON_REJECT_DUPLICATES, &json_error);
    if (object == NULL)
        return reader_fail(reader, HM_ERR_INVALID, "invalid JSON at column %d: %s",
                           json_error.column, json_error.text);
    if (!json_is_object(object)) {
        json_decref(object);
        return reader_fail(reader, HM_ERR_INVALID, "invalid line, expected a JSON object");
    }
    rc = jsonl_parse_object(reader, object, row);
    json_decref(object);
    return rc == HM_OK ? 1 : rc;
}

/* ---- reader ---- */

int trace_open(const char *path, enum trace_source source, struct trace_reader **reader_out,
               char *error, size_t error_size)
{
    if ((unsigned)source >= TRACE_SOURCE_COUNT) {
        snprintf(error, error_size, "%s: unknown trace source %d", path, (int)source);
        return HM_ERR_INVALID;
    }
    struct trace_reader *reader = calloc(1, sizeof *reader);
    if (reader == NULL)
        goto fail_nomem;
    reader->source = source;
    reader->path = strdup(path);
    if (reader->path == NULL)
        goto fail_free_reader;
    if (source == TRACE_MOONCAKE) {
        reader->hash_ids = calloc(TRACE_HASH_IDS_MAX, sizeof *reader->hash_ids);
        if (reader->hash_ids == NULL)
            goto fail_free_reader;
    }
    reader->file = fopen(path, "r");
    if (reader->file == NULL) {
        snprintf(error, error_size, "%s: cannot open: %s", path, strerror(errno));
        trace_close(reader);
        return HM_ERR_IO;
    }
    if (source != TRACE_MOONCAKE) {
        int rc = csv_read_header(reader);
        if (rc != HM_OK) {
            snprintf(error, error_size, "%s", reader->error);
            trace_close(reader);
            return rc;
        }
    }
    *reader_out = reader;
    return HM_OK;

fail_free_reader:
    trace_close(reader);
fail_nomem:
    snprintf(error, error_size, "%s: out of memory", path);
    return HM_ERR_NOMEM;
}

int trace_next(struct trace_reader *reader, struct trace_row *row)
{
    if (reader->status != HM_OK)
        return reader->status;
    int rc = reader->source == TRACE_MOONCAKE ? jsonl_next(reader, row) : csv_next(reader, row);
    if (rc <= 0)
        return rc;
    if (reader->row_number > 0 && row->timestamp_us < reader->timestamp_us_last)
        return reader_fail(reader, HM_ERR_INVALID,
                           "timestamp goes backwards (%lld us after %lld us); rows must be in "
                           "time order",
                           (long long)row->timestamp_us, (long long)reader->timestamp_us_last);
    reader->timestamp_us_last = row->timestamp_us;
    reader->row_number++;
    row->row = reader->row_number;
    row->source = reader->source;
    return 1;
}

const char *trace_error(const struct trace_reader *reader)
{
    return reader->error;
}

void trace_close(struct trace_reader *reader)
{
    if (reader == NULL)
        return;
    if (reader->file != NULL)
        fclose(reader->file);
    free(reader->line);
    free(reader->path);
    free(reader->hash_ids);
    free(reader->cache.slots);
    free(reader);
}
