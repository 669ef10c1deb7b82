/*
 * Rates cases read as JSON lines on stdin and writes one JSON line per case
 * on stdout, for the differential test against tests/oracle/rating_oracle.py.
 *
 * Input line:  {"book": {price book}, "usage": {usage JSON}}
 * Output line: {"invoice": {...}} with the output of invoice_to_json, or
 *              {"error": "not_found" | "invalid" | "overflow" | ..., "stage":
 *               "input" | "book" | "usage" | "rate", "message": "..."}
 *
 * The usage JSON is the one of docs/PRICING.md: period "YYYY-MM", items with
 * meter, dimension, quantity (decimal integer string) and start (null for the
 * period's start), credits, adjustments and a support tier.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "pricing/invoice.h"
#include "pricing/pricebook.h"
#include "pricing/usage.h"

#define DRIVER_MESSAGE_MAX 512

/* Returns the days since 1970-01-01 of a proleptic Gregorian date, counted in 400-year eras. */
static int64_t days_from_civil(int64_t year, int64_t month, int64_t day)
{
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* Parses exactly `width` decimal digits at text into *out. */
static bool parse_digits(const char *text, int width, int *out)
{
    int value = 0;
    for (int i = 0; i < width; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return false;
        }
        value = value * 10 + (text[i] - '0');
    }
    *out = value;
    return true;
}

/* Parses "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds) into Unix seconds. */
static int parse_time(const char *text, int64_t *out, char *message)
{
    int year, month, day, hour, minute, second;
    if (strlen(text) != 20 || !parse_digits(text, 4, &year) || text[4] != '-' ||
        !parse_digits(text + 5, 2, &month) || text[7] != '-' || !parse_digits(text + 8, 2, &day) ||
        text[10] != 'T' || !parse_digits(text + 11, 2, &hour) || text[13] != ':' ||
        !parse_digits(text + 14, 2, &minute) || text[16] != ':' ||
        !parse_digits(text + 17, 2, &second) || text[19] != 'Z' || month < 1 || month > 12 ||
        day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59) {
        snprintf(message, DRIVER_MESSAGE_MAX,
                 "timestamp \"%s\" is invalid; use YYYY-MM-DDTHH:MM:SSZ in UTC", text);
        return HM_ERR_INVALID;
    }
    *out = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    return HM_OK;
}

/* Parses "YYYY-MM" into yyyymm and, when start/end are not NULL, the month's [start, end). */
static int parse_period(const char *text, uint32_t *period, int64_t *start, int64_t *end,
                        char *message)
{
    int year, month;
    if (strlen(text) != 7 || !parse_digits(text, 4, &year) || text[4] != '-' ||
        !parse_digits(text + 5, 2, &month) || month < 1 || month > 12) {
        snprintf(message, DRIVER_MESSAGE_MAX, "period \"%s\" is invalid; use YYYY-MM", text);
        return HM_ERR_INVALID;
    }
    *period = (uint32_t)(year * 100 + month);
    if (start != NULL) {
        *start = days_from_civil(year, month, 1) * 86400;
        *end = month == 12 ? days_from_civil(year + 1, 1, 1) * 86400
                           : days_from_civil(year, month + 1, 1) * 86400;
    }
    return HM_OK;
}

/* Parses a decimal integer string into an unsigned __int128, rejecting overflow. */
static int parse_u128(const char *text, unsigned __int128 *out, char *message)
{
    const unsigned __int128 max = ~(unsigned __int128)0;
    unsigned __int128 value = 0;
    if (*text == '\0') {
        snprintf(message, DRIVER_MESSAGE_MAX, "quantity is empty; give a decimal integer");
        return HM_ERR_INVALID;
    }
    for (const char *p = text; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            snprintf(message, DRIVER_MESSAGE_MAX,
                     "quantity \"%s\" is not a decimal integer; give digits only", text);
            return HM_ERR_INVALID;
        }
        unsigned digit = (unsigned)(*p - '0');
        if (value > (max - digit) / 10) {
            snprintf(message, DRIVER_MESSAGE_MAX, "quantity \"%s\" does not fit 128 bits", text);
            return HM_ERR_OVERFLOW;
        }
        value = value * 10 + digit;
    }
    *out = value;
    return HM_OK;
}

/* Returns the string member `key` of object, or NULL when it is missing, null or not a string. */
static const char *member_string(const json_t *object, const char *key)
{
    return json_string_value(json_object_get(object, key));
}

/* Reads an optional time member: null or missing gives `none`. */
static int member_time(const json_t *object, const char *key, int64_t none, int64_t *out,
                       char *message)
{
    const json_t *value = json_object_get(object, key);
    if (value == NULL || json_is_null(value)) {
        *out = none;
        return HM_OK;
    }
    if (!json_is_string(value)) {
        snprintf(message, DRIVER_MESSAGE_MAX, "%s is not a string or null", key);
        return HM_ERR_INVALID;
    }
    return parse_time(json_string_value(value), out, message);
}

/* Copies a string member of at most `size - 1` bytes; a missing or null one gives "". */
static int member_text(const json_t *object, const char *key, char *out, size_t size,
                       char *message)
{
    const char *text = member_string(object, key);
    if (text == NULL) {
        out[0] = '\0';
        return HM_OK;
    }
    if (strlen(text) >= size) {
        snprintf(message, DRIVER_MESSAGE_MAX, "%s \"%.80s\" is longer than %zu bytes", key, text,
                 size - 1);
        return HM_ERR_INVALID;
    }
    memcpy(out, text, strlen(text) + 1);
    return HM_OK;
}

static const struct {
    const char *name;
    enum meter meter;
} METERS[] = {
    {"gpu_seconds", METER_GPU_SECONDS},
    {"input_tokens", METER_INPUT_TOKENS},
    {"output_tokens", METER_OUTPUT_TOKENS},
    {"cached_input_tokens", METER_CACHED_INPUT_TOKENS},
    {"api_calls", METER_API_CALLS},
    {"storage_byte_seconds", METER_STORAGE_BYTE_SECONDS},
    {"transfer_bytes", METER_TRANSFER_BYTES},
};

static int parse_item(const json_t *object, struct usage_item *item, char *message)
{
    const char *meter = member_string(object, "meter");
    const char *quantity = member_string(object, "quantity");
    if (meter == NULL || quantity == NULL) {
        snprintf(message, DRIVER_MESSAGE_MAX, "item needs string members meter and quantity");
        return HM_ERR_INVALID;
    }
    item->meter = 0;
    for (size_t i = 0; i < sizeof METERS / sizeof METERS[0]; i++) {
        if (strcmp(meter, METERS[i].name) == 0) {
            item->meter = METERS[i].meter;
        }
    }
    if (item->meter == 0) {
        snprintf(message, DRIVER_MESSAGE_MAX, "meter \"%s\" is unknown", meter);
        return HM_ERR_INVALID;
    }
    int status = member_text(object, "dimension", item->dimension, sizeof item->dimension,
                             message);
    if (status == HM_OK) {
        status = parse_u128(quantity, &item->quantity, message);
    }
    if (status == HM_OK) {
        status = member_time(object, "start", 0, &item->start_s, message);
    }
    json_int_t events = json_integer_value(json_object_get(object, "events"));
    item->event_count = events > 0 ? (uint64_t)events : 0;
    return status;
}

static int parse_credit(const json_t *object, struct usage_credit *credit, char *message)
{
    const char *id = member_string(object, "id");
    const json_t *balance = json_object_get(object, "balance_minor");
    if (id == NULL || !json_is_integer(balance)) {
        snprintf(message, DRIVER_MESSAGE_MAX, "credit needs a string id and integer balance_minor");
        return HM_ERR_INVALID;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(id, &end, 10);
    if (errno != 0 || end == id || *end != '\0') {
        snprintf(message, DRIVER_MESSAGE_MAX, "credit id \"%s\" is not a decimal integer", id);
        return HM_ERR_INVALID;
    }
    credit->id = value;
    credit->balance_minor = json_integer_value(balance);
    int status = member_text(object, "currency", credit->currency, sizeof credit->currency,
                             message);
    if (status == HM_OK) {
        status = member_time(object, "granted", 0, &credit->granted_s, message);
    }
    if (status == HM_OK) {
        status = member_time(object, "expires", 0, &credit->expires_s, message);
    }
    return status;
}

static int parse_adjustment(const json_t *object, struct usage_adjustment *adjustment,
                            char *message)
{
    const char *period = member_string(object, "period");
    const json_t *amount = json_object_get(object, "amount_minor");
    if (period == NULL || !json_is_integer(amount)) {
        snprintf(message, DRIVER_MESSAGE_MAX,
                 "adjustment needs a string period and integer amount_minor");
        return HM_ERR_INVALID;
    }
    int status = parse_period(period, &adjustment->period, NULL, NULL, message);
    if (status != HM_OK) {
        return status;
    }
    adjustment->amount_minor = json_integer_value(amount);
    json_int_t events = json_integer_value(json_object_get(object, "events"));
    adjustment->event_count = events > 0 ? (uint64_t)events : 0;
    return member_text(object, "description", adjustment->description,
                       sizeof adjustment->description, message);
}

/* Arrays that the usage_totals borrows; freed together after rating. */
struct usage_storage {
    struct usage_item *items;
    struct usage_credit *credits;
    struct usage_adjustment *adjustments;
};

static void usage_storage_free(struct usage_storage *storage)
{
    free(storage->items);
    free(storage->credits);
    free(storage->adjustments);
}

/* Allocates `count` zeroed elements, at least one so that NULL means failure. */
static void *allocate(size_t count, size_t size)
{
    return calloc(count > 0 ? count : 1, size);
}

static int parse_usage(const json_t *object, struct usage_totals *usage,
                       struct usage_storage *storage, char *message)
{
    memset(usage, 0, sizeof *usage);
    const char *period = member_string(object, "period");
    if (period == NULL) {
        snprintf(message, DRIVER_MESSAGE_MAX, "usage needs a string period \"YYYY-MM\"");
        return HM_ERR_INVALID;
    }
    int status = parse_period(period, &usage->period, &usage->period_start_s,
                              &usage->period_end_s, message);
    if (status == HM_OK) {
        status = member_text(object, "tenant_name", usage->tenant_name,
                             sizeof usage->tenant_name, message);
    }
    if (status == HM_OK) {
        status = member_time(object, "service_start", usage->period_start_s,
                             &usage->service_start_s, message);
    }
    if (status == HM_OK) {
        status = member_time(object, "service_end", 0, &usage->service_end_s, message);
    }
    const char *tier = member_string(object, "support_tier");
    usage->support_tier = SUPPORT_NONE;
    if (status == HM_OK && tier != NULL) {
        status = support_tier_parse(tier, &usage->support_tier);
        if (status != HM_OK) {
            snprintf(message, DRIVER_MESSAGE_MAX, "support tier \"%s\" is unknown", tier);
        }
    }
    if (status != HM_OK) {
        return status;
    }

    const json_t *items = json_object_get(object, "items");
    const json_t *credits = json_object_get(object, "credits");
    const json_t *adjustments = json_object_get(object, "adjustments");
    storage->items = allocate(json_array_size(items), sizeof *storage->items);
    storage->credits = allocate(json_array_size(credits), sizeof *storage->credits);
    storage->adjustments = allocate(json_array_size(adjustments), sizeof *storage->adjustments);
    if (storage->items == NULL || storage->credits == NULL || storage->adjustments == NULL) {
        snprintf(message, DRIVER_MESSAGE_MAX, "out of memory");
        return HM_ERR_NOMEM;
    }
    for (size_t i = 0; status == HM_OK && i < json_array_size(items); i++) {
        status = parse_item(json_array_get(items, i), &storage->items[i], message);
    }
    for (size_t i = 0; status == HM_OK && i < json_array_size(credits); i++) {
        status = parse_credit(json_array_get(credits, i), &storage->credits[i], message);
    }
    for (size_t i = 0; status == HM_OK && i < json_array_size(adjustments); i++) {
        status = parse_adjustment(json_array_get(adjustments, i), &storage->adjustments[i],
                                  message);
    }
    usage->item_count = json_array_size(items);
    usage->items = storage->items;
    usage->credit_count = json_array_size(credits);
    usage->credits = storage->credits;
    usage->adjustment_count = json_array_size(adjustments);
    usage->adjustments = storage->adjustments;
    return status;
}

static const char *error_class(int status)
{
    switch (status) {
    case HM_ERR_NOT_FOUND:
        return "not_found";
    case HM_ERR_INVALID:
        return "invalid";
    case HM_ERR_OVERFLOW:
        return "overflow";
    case HM_ERR_NOMEM:
        return "nomem";
    default:
        return hm_status_str(status);
    }
}

static json_t *error_result(int status, const char *stage, const char *message)
{
    return json_pack("{s:s, s:s, s:s}", "error", error_class(status), "stage", stage, "message",
                     message);
}

/* Rates one input line and returns its output object. */
static json_t *rate_case(const char *line)
{
    char message[DRIVER_MESSAGE_MAX] = "";
    json_error_t json_error;
    json_t *input = json_loads(line, 0, &json_error);
    if (input == NULL) {
        snprintf(message, sizeof message, "input line is not JSON: %s", json_error.text);
        return error_result(HM_ERR_INVALID, "input", message);
    }
    json_t *result = NULL;
    struct pricebook *book = NULL;
    struct usage_totals usage;
    struct usage_storage storage = {0};
    char *book_text = json_dumps(json_object_get(input, "book"), JSON_COMPACT);
    const json_t *usage_json = json_object_get(input, "usage");
    int status = book_text == NULL ? HM_ERR_INVALID
                                   : pricebook_parse(book_text, strlen(book_text), &book,
                                                     message, sizeof message);
    if (status != HM_OK) {
        result = error_result(status, "book", message);
    } else if ((status = parse_usage(usage_json, &usage, &storage, message)) != HM_OK) {
        result = error_result(status, "usage", message);
    } else {
        struct invoice invoice;
        status = pricing_rate(&usage, book, &invoice, message, sizeof message);
        if (status != HM_OK) {
            result = error_result(status, "rate", message);
        } else {
            json_t *invoice_json = NULL;
            status = invoice_to_json(&invoice, &invoice_json);
            invoice_free(&invoice);
            result = status == HM_OK ? json_pack("{s:o}", "invoice", invoice_json)
                                     : error_result(status, "json", "invoice_to_json failed");
        }
    }
    usage_storage_free(&storage);
    pricebook_free(book);
    free(book_text);
    json_decref(input);
    return result;
}

int main(void)
{
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    while ((length = getline(&line, &capacity, stdin)) > 0) {
        if (length == 1 && line[0] == '\n') {
            continue;
        }
        json_t *result = rate_case(line);
        char *text = result == NULL ? NULL : json_dumps(result, JSON_COMPACT);
        if (text == NULL) {
            fprintf(stderr, "pricing_rate_driver: out of memory\n");
            return 1;
        }
        puts(text);
        free(text);
        json_decref(result);
    }
    free(line);
    return fflush(stdout) == 0 ? 0 : 1;
}
