#include "pricing/pricebook.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

/* Maximum length of a JSON path in a message. Longer paths are cut and end in "...". */
#define PATH_SIZE 256
#define PRICEBOOK_FILE_SIZE_TEXT "1048576"
_Static_assert(PRICEBOOK_FILE_SIZE_MAX == 1048576, "PRICEBOOK_FILE_SIZE_TEXT is out of date");
/* Maximum length of one message, path included. */
#define MESSAGE_SIZE 512

/*
 * Messages collected while parsing. Each message goes on its own line; once a
 * message does not fit, or max_count is reached, later ones are counted but
 * not written.
 */
struct error_list {
    char *buffer;
    size_t size;
    size_t used;
    size_t count;
    size_t max_count; /* 0: no limit */
    bool full;
};

__attribute__((format(printf, 3, 4))) static void add_error(struct error_list *errors,
                                                            const char *path, const char *fmt, ...)
{
    char message[MESSAGE_SIZE];
    va_list args;

    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);

    errors->count++;
    if (errors->full || errors->buffer == NULL || errors->size == 0)
        return;
    if (errors->max_count != 0 && errors->count > errors->max_count)
        return;

    const char *separator = errors->used > 0 ? "\n" : "";
    size_t room = errors->size - errors->used;
    int length =
        snprintf(errors->buffer + errors->used, room, "%s%s: %s", separator, path, message);
    if (length < 0 || (size_t)length >= room) {
        /* Keep only whole lines. */
        errors->buffer[errors->used] = '\0';
        errors->full = true;
        return;
    }
    errors->used += (size_t)length;
}

/* Marks a path that snprintf cut, so that the message does not show a wrong path as whole. */
static void mark_cut_path(char *out, int length)
{
    if (length >= PATH_SIZE)
        memcpy(out + PATH_SIZE - 4, "...", 4);
}

/* Appends a key to a JSON path: ".key" for plain keys, ["key"] for the others. */
static void path_child(char *out, const char *parent, const char *key)
{
    bool plain = key[0] != '\0';
    for (const char *p = key; *p != '\0'; p++) {
        bool allowed = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                       (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.';
        if (!allowed)
            plain = false;
    }
    if (plain) {
        mark_cut_path(out, snprintf(out, PATH_SIZE, "%s.%s", parent, key));
        return;
    }

    char quoted[PATH_SIZE];
    size_t at = 0;
    for (const char *p = key; *p != '\0' && at + 3 < sizeof(quoted); p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            quoted[at++] = '\\';
        quoted[at++] = c < 0x20 ? '?' : (char)c;
    }
    quoted[at] = '\0';
    mark_cut_path(out, snprintf(out, PATH_SIZE, "%s[\"%s\"]", parent, quoted));
}

static void path_index(char *out, const char *parent, size_t index)
{
    mark_cut_path(out, snprintf(out, PATH_SIZE, "%s[%zu]", parent, index));
}

static const char *json_type_name(const json_t *value)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "a number";
    case JSON_REAL: return "a number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "an unknown JSON type";
}

/*
 * Parses a non-negative decimal string at path into 10^-12 units. JSON
 * numbers are rejected because jansson reads a fraction as a double.
 * Returns true when *out was set.
 */
static bool parse_decimal(const json_t *value, const char *path, const char *example,
                          struct error_list *errors, __int128 *out)
{
    if (json_is_number(value)) {
        add_error(errors, path,
                  "amount is a JSON number, which would be read as binary floating point; "
                  "quote it as a decimal string such as \"%s\"",
                  example);
        return false;
    }
    if (!json_is_string(value)) {
        add_error(errors, path, "expected a decimal string such as \"%s\", found %s", example,
                  json_type_name(value));
        return false;
    }

    const char *text = json_string_value(value);
    char reason[MESSAGE_SIZE / 2];
    if (money_decimal_parse(text, out, reason, sizeof(reason)) != HM_OK) {
        /* For a decimal comma, suggest the same digits with a point. */
        char suggestion[64];
        __int128 ignored;
        const char *comma = strchr(text, ',');
        snprintf(suggestion, sizeof(suggestion), "%s", example);
        if (comma != NULL && strchr(comma + 1, ',') == NULL && strlen(text) < sizeof(suggestion)) {
            char candidate[64];
            snprintf(candidate, sizeof(candidate), "%s", text);
            candidate[comma - text] = '.';
            if (money_decimal_parse(candidate, &ignored, NULL, 0) == HM_OK)
                snprintf(suggestion, sizeof(suggestion), "%s", candidate);
        }
        add_error(errors, path, "%s; write a decimal string such as \"%s\"", reason, suggestion);
        return false;
    }
    if (*out < 0) {
        add_error(errors, path, "negative value \"%s\"; write 0 or a positive decimal", text);
        return false;
    }
    return true;
}

static bool parse_price(const json_t *value, const char *path, const char *example,
                        struct error_list *errors, struct money_price *out)
{
    return parse_decimal(value, path, example, errors, &out->pico);
}

/* Checks a GPU type or model name used as a key; returns true when it fits a usage dimension. */
static bool check_dimension_key(const char *key, const char *path, const char *what,
                                struct error_list *errors)
{
    if (key[0] == '\0') {
        add_error(errors, path, "empty %s name; write the name that usage reports", what);
        return false;
    }
    if (strlen(key) > USAGE_DIMENSION_MAX) {
        add_error(errors, path, "%s name is longer than %d bytes; usage cannot report it", what,
                  USAGE_DIMENSION_MAX);
        return false;
    }
    return true;
}

static bool expect_object(const json_t *value, const char *path, const char *example,
                          struct error_list *errors)
{
    if (json_is_object(value))
        return true;
    add_error(errors, path, "expected an object such as %s, found %s", example,
              json_type_name(value));
    return false;
}

static void parse_gpu_hour(const json_t *value, const char *path, struct pricebook *book,
                           struct error_list *errors)
{
    if (!expect_object(value, path, "{\"H100\": \"2.50\"}", errors))
        return;
    if (json_object_size(value) > PRICEBOOK_GPU_TYPES_MAX) {
        add_error(errors, path, "%zu GPU types; at most %d are allowed", json_object_size(value),
                  PRICEBOOK_GPU_TYPES_MAX);
        return;
    }

    const char *key;
    const json_t *price;
    json_object_foreach((json_t *)value, key, price)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (!check_dimension_key(key, child, "GPU type", errors))
            continue;

        struct pricebook_gpu_price *entry = &book->gpu[book->gpu_count];
        if (!parse_price(price, child, "2.50", errors, &entry->per_hour))
            continue;
        snprintf(entry->gpu_type, sizeof(entry->gpu_type), "%s", key);
        book->gpu_count++;
    }
}

static void parse_model(const json_t *value, const char *path, const char *model,
                        struct pricebook *book, struct error_list *errors)
{
    if (!expect_object(value, path, "{\"input\": \"3.00\", \"output\": \"15.00\"}", errors))
        return;
    if (json_object_size(value) == 0) {
        add_error(errors, path,
                  "no prices; give at least one of \"input\", \"output\", \"cached_input\"");
        return;
    }

    struct pricebook_model_price *entry = &book->models[book->model_count];
    bool valid = true;
    const char *key;
    const json_t *price;
    memset(entry, 0, sizeof(*entry));
    json_object_foreach((json_t *)value, key, price)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "input") == 0) {
            entry->has_input = parse_price(price, child, "3.00", errors, &entry->input_per_million);
            valid = valid && entry->has_input;
        } else if (strcmp(key, "output") == 0) {
            entry->has_output =
                parse_price(price, child, "15.00", errors, &entry->output_per_million);
            valid = valid && entry->has_output;
        } else if (strcmp(key, "cached_input") == 0) {
            entry->has_cached_input =
                parse_price(price, child, "1.50", errors, &entry->cached_input_per_million);
            valid = valid && entry->has_cached_input;
        } else {
            add_error(errors, child,
                      "unknown key; expected one of \"input\", \"output\", \"cached_input\"");
            valid = false;
        }
    }
    if (!valid)
        return;
    snprintf(entry->model, sizeof(entry->model), "%s", model);
    book->model_count++;
}

static void parse_tokens(const json_t *value, const char *path, struct pricebook *book,
                         struct error_list *errors)
{
    if (!expect_object(value, path, "{\"m-large\": {\"input\": \"3.00\"}}", errors))
        return;
    if (json_object_size(value) > PRICEBOOK_MODELS_MAX) {
        add_error(errors, path, "%zu models; at most %d are allowed", json_object_size(value),
                  PRICEBOOK_MODELS_MAX);
        return;
    }

    const char *key;
    const json_t *prices;
    json_object_foreach((json_t *)value, key, prices)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (check_dimension_key(key, child, "model", errors))
            parse_model(prices, child, key, book, errors);
    }
}

/* Parses one tier. *above_valid is set when its above_hours parsed, for the order check. */
static void parse_tier(const json_t *value, const char *path, struct pricebook_tier *tier,
                       struct error_list *errors, bool *valid, bool *above_valid)
{
    *above_valid = false;
    if (!expect_object(value, path, "{\"above_hours\": \"1000\", \"percent\": \"10\"}", errors)) {
        *valid = false;
        return;
    }

    bool has_above = false;
    bool has_percent = false;
    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "above_hours") == 0) {
            has_above = parse_decimal(field, child, "1000", errors, &tier->above_hours_pico);
            *valid = *valid && has_above;
        } else if (strcmp(key, "percent") == 0) {
            has_percent = parse_decimal(field, child, "10", errors, &tier->percent_pico);
            if (has_percent && tier->percent_pico > 100 * MONEY_DECIMAL_SCALE) {
                add_error(errors, child, "percent \"%s\" is above 100; write a value from 0 to 100",
                          json_string_value(field));
                has_percent = false;
            }
            *valid = *valid && has_percent;
        } else {
            add_error(errors, child, "unknown key; expected \"above_hours\" or \"percent\"");
            *valid = false;
        }
    }
    if (!has_above && json_object_get(value, "above_hours") == NULL) {
        add_error(errors, path, "missing \"above_hours\"; add the GPU-hours the tier starts above");
        *valid = false;
    }
    if (!has_percent && json_object_get(value, "percent") == NULL) {
        add_error(errors, path, "missing \"percent\"; add the tier's discount from 0 to 100");
        *valid = false;
    }
    *above_valid = has_above;
}

static void parse_tiers(const json_t *value, const char *path, struct pricebook *book,
                        struct error_list *errors)
{
    if (!json_is_array(value)) {
        add_error(errors, path, "expected an array of tiers, found %s", json_type_name(value));
        return;
    }
    size_t count = json_array_size(value);
    if (count == 0) {
        add_error(errors, path, "no tiers; add at least one or remove gpu_volume_discount");
        return;
    }
    if (count > PRICEBOOK_TIERS_MAX) {
        add_error(errors, path, "%zu tiers; at most %d are allowed", count, PRICEBOOK_TIERS_MAX);
        return;
    }

    bool valid = true;
    bool previous_above_valid = false;
    for (size_t i = 0; i < count; i++) {
        char child[PATH_SIZE];
        bool tier_valid = true;
        bool above_valid = false;
        path_index(child, path, i);
        parse_tier(json_array_get(value, i), child, &book->tiers[i], errors, &tier_valid,
                   &above_valid);
        valid = valid && tier_valid;
        /* The order is checked whenever both thresholds parsed, so one check reports both faults. */
        bool compare = i > 0 && above_valid && previous_above_valid;
        previous_above_valid = above_valid;
        if (!compare)
            continue;

        /* Thresholds must rise strictly, so that each tier is a non-empty interval. */
        const struct pricebook_tier *previous = &book->tiers[i - 1];
        if (book->tiers[i].above_hours_pico <= previous->above_hours_pico) {
            char above[MONEY_TEXT_SIZE];
            char previous_above[MONEY_TEXT_SIZE];
            char above_path[PATH_SIZE];
            money_decimal_format(book->tiers[i].above_hours_pico, 0, above, sizeof(above));
            money_decimal_format(previous->above_hours_pico, 0, previous_above,
                                 sizeof(previous_above));
            path_child(above_path, child, "above_hours");
            add_error(errors, above_path,
                      "%s is not above the previous tier's %s; list tiers in strictly ascending "
                      "order of above_hours",
                      above, previous_above);
            valid = false;
        }
    }
    if (valid)
        book->tier_count = count;
}

static void parse_discount(const json_t *value, const char *path, struct pricebook *book,
                           struct error_list *errors)
{
    if (!expect_object(value, path, "{\"mode\": \"volume\", \"tiers\": [...]}", errors))
        return;

    enum pricebook_discount_mode mode = PRICEBOOK_DISCOUNT_NONE;
    const json_t *tiers = NULL;
    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "mode") == 0) {
            const char *text = json_is_string(field) ? json_string_value(field) : NULL;
            if (text != NULL && strcmp(text, "volume") == 0)
                mode = PRICEBOOK_DISCOUNT_VOLUME;
            else if (text != NULL && strcmp(text, "graduated") == 0)
                mode = PRICEBOOK_DISCOUNT_GRADUATED;
            else if (text != NULL)
                add_error(errors, child, "unknown mode \"%s\"; use \"volume\" or \"graduated\"",
                          text);
            else
                add_error(errors, child, "expected \"volume\" or \"graduated\", found %s",
                          json_type_name(field));
        } else if (strcmp(key, "tiers") == 0) {
            tiers = field;
        } else {
            add_error(errors, child, "unknown key; expected \"mode\" or \"tiers\"");
        }
    }
    if (json_object_get(value, "mode") == NULL)
        add_error(errors, path, "missing \"mode\"; add \"volume\" or \"graduated\"");
    if (tiers == NULL) {
        add_error(errors, path, "missing \"tiers\"; add an array of tiers");
        return;
    }

    char tiers_path[PATH_SIZE];
    path_child(tiers_path, path, "tiers");
    parse_tiers(tiers, tiers_path, book, errors);
    if (book->tier_count > 0)
        book->discount_mode = mode;
}

static void parse_name(const json_t *value, const char *path, struct pricebook *book,
                       struct error_list *errors)
{
    if (!json_is_string(value)) {
        add_error(errors, path, "expected a string such as \"standard-2024\", found %s",
                  json_type_name(value));
        return;
    }
    const char *name = json_string_value(value);
    if (name[0] == '\0' || strlen(name) > PRICEBOOK_NAME_MAX) {
        add_error(errors, path, "name must be 1 to %d bytes long", PRICEBOOK_NAME_MAX);
        return;
    }
    /* The name is printed on invoices and in terminals, where control characters would forge text. */
    for (const unsigned char *c = (const unsigned char *)name; *c != '\0'; c++) {
        if (*c < 0x20 || *c == 0x7f) {
            add_error(errors, path, "name contains the control character 0x%02x; use printable "
                      "characters only", *c);
            return;
        }
    }
    snprintf(book->name, sizeof(book->name), "%s", name);
}

static void parse_currency(const json_t *value, const char *path, struct pricebook *book,
                           struct error_list *errors)
{
    if (!json_is_string(value)) {
        add_error(errors, path, "expected an ISO 4217 code such as \"USD\", found %s",
                  json_type_name(value));
        return;
    }
    const char *code = json_string_value(value);
    if (money_currency_find(code, &book->currency) != HM_OK) {
        add_error(errors, path,
                  "unknown currency \"%s\"; write an upper-case ISO 4217 code such as \"USD\", "
                  "\"EUR\", \"GBP\", \"JPY\" or \"KWD\"",
                  code);
    }
}

static void parse_rounding(const json_t *value, const char *path, struct pricebook *book,
                           struct error_list *errors)
{
    const char *text = json_is_string(value) ? json_string_value(value) : NULL;
    if (text != NULL && strcmp(text, "half_up") == 0)
        book->rounding = MONEY_ROUND_HALF_UP;
    else if (text != NULL && strcmp(text, "half_even") == 0)
        book->rounding = MONEY_ROUND_HALF_EVEN;
    else if (text != NULL)
        add_error(errors, path, "unknown rounding \"%s\"; use \"half_up\" or \"half_even\"", text);
    else
        add_error(errors, path, "expected \"half_up\" or \"half_even\", found %s",
                  json_type_name(value));
}

static void parse_book(const json_t *root, struct pricebook *book, struct error_list *errors)
{
    if (!expect_object(root, "$", "{\"name\": \"standard-2024\", \"currency\": \"USD\"}", errors))
        return;

    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)root, key, value)
    {
        char path[PATH_SIZE];
        path_child(path, "$", key);
        if (strcmp(key, "name") == 0)
            parse_name(value, path, book, errors);
        else if (strcmp(key, "currency") == 0)
            parse_currency(value, path, book, errors);
        else if (strcmp(key, "rounding") == 0)
            parse_rounding(value, path, book, errors);
        else if (strcmp(key, "base_fee") == 0)
            book->has_base_fee =
                parse_price(value, path, "100.00", errors, &book->base_fee_per_month);
        else if (strcmp(key, "gpu_hour") == 0)
            parse_gpu_hour(value, path, book, errors);
        else if (strcmp(key, "tokens_per_million") == 0)
            parse_tokens(value, path, book, errors);
        else if (strcmp(key, "api_calls_per_million") == 0)
            book->has_api_calls =
                parse_price(value, path, "0.50", errors, &book->api_calls_per_million);
        else if (strcmp(key, "storage_gb_month") == 0)
            book->has_storage =
                parse_price(value, path, "0.02", errors, &book->storage_per_gb_month);
        else if (strcmp(key, "transfer_gb") == 0)
            book->has_transfer = parse_price(value, path, "0.09", errors, &book->transfer_per_gb);
        else if (strcmp(key, "gpu_volume_discount") == 0)
            parse_discount(value, path, book, errors);
        else
            add_error(errors, path,
                      "unknown key; expected one of name, currency, rounding, base_fee, gpu_hour, "
                      "tokens_per_million, api_calls_per_million, storage_gb_month, transfer_gb, "
                      "gpu_volume_discount");
    }

    if (json_object_get(root, "name") == NULL)
        add_error(errors, "$", "missing \"name\"; add a name such as \"standard-2024\"");
    if (json_object_get(root, "currency") == NULL)
        add_error(errors, "$", "missing \"currency\"; add an ISO 4217 code such as \"USD\"");
}

/* Parses text into a new book, collecting messages; returns 0, HM_ERR_INVALID or HM_ERR_NOMEM. */
static int parse_text(const char *text, size_t length, struct error_list *errors,
                      struct pricebook **out)
{
    json_error_t json_error;
    json_t *root = json_loadb(text, length, JSON_REJECT_DUPLICATES, &json_error);

    *out = NULL;
    if (root == NULL) {
        add_error(errors, "$", "invalid JSON at line %d, column %d: %s; fix the syntax",
                  json_error.line, json_error.column, json_error.text);
        return HM_ERR_INVALID;
    }

    struct pricebook *book = calloc(1, sizeof(*book));
    if (book == NULL) {
        json_decref(root);
        return HM_ERR_NOMEM;
    }
    book->rounding = MONEY_ROUND_HALF_UP;

    size_t errors_before = errors->count;
    parse_book(root, book, errors);
    json_decref(root);
    if (errors->count != errors_before) {
        free(book);
        return HM_ERR_INVALID;
    }
    *out = book;
    return HM_OK;
}

int pricebook_parse(const char *text, size_t length, struct pricebook **out, char *error,
                    size_t error_size)
{
    struct error_list errors = {error, error_size, 0, 0, 1, false};

    if (error != NULL && error_size > 0)
        error[0] = '\0';
    return parse_text(text, length, &errors, out);
}

int pricebook_check(const char *text, size_t length, char *errors_out, size_t errors_size,
                    size_t *error_count)
{
    struct error_list errors = {errors_out, errors_size, 0, 0, 0, false};
    struct pricebook *book;

    if (errors_out != NULL && errors_size > 0)
        errors_out[0] = '\0';
    int status = parse_text(text, length, &errors, &book);
    pricebook_free(book);
    if (error_count != NULL)
        *error_count = errors.count;
    return status;
}

static void file_error(char *error, size_t error_size, const char *path, const char *what,
                       const char *detail)
{
    if (error != NULL && error_size > 0)
        snprintf(error, error_size, "%s: %s: %s", path, what, detail);
}

int pricebook_load_file(const char *path, struct pricebook **out, char *error, size_t error_size)
{
    *out = NULL;
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        file_error(error, error_size, path, "cannot open", strerror(errno));
        return HM_ERR_IO;
    }

    /* Read one byte past the limit to tell a full-size file from a larger one. */
    char *text = malloc(PRICEBOOK_FILE_SIZE_MAX + 1);
    if (text == NULL) {
        fclose(file);
        return HM_ERR_NOMEM;
    }
    size_t length = fread(text, 1, PRICEBOOK_FILE_SIZE_MAX + 1, file);
    bool read_failed = ferror(file) != 0;
    int saved_errno = errno;
    fclose(file);

    int status;
    if (read_failed) {
        file_error(error, error_size, path, "read failed", strerror(saved_errno));
        status = HM_ERR_IO;
    } else if (length > PRICEBOOK_FILE_SIZE_MAX) {
        file_error(error, error_size, path, "file too large",
                   "a price book is at most " PRICEBOOK_FILE_SIZE_TEXT " bytes");
        status = HM_ERR_INVALID;
    } else {
        status = pricebook_parse(text, length, out, error, error_size);
    }
    free(text);
    return status;
}

void pricebook_free(struct pricebook *book)
{
    free(book);
}

const struct pricebook_gpu_price *pricebook_find_gpu(const struct pricebook *book,
                                                     const char *gpu_type)
{
    const struct pricebook_gpu_price *fallback = NULL;

    for (size_t i = 0; i < book->gpu_count; i++) {
        if (strcmp(book->gpu[i].gpu_type, gpu_type) == 0)
            return &book->gpu[i];
        if (strcmp(book->gpu[i].gpu_type, PRICEBOOK_FALLBACK_KEY) == 0)
            fallback = &book->gpu[i];
    }
    return fallback;
}

const struct pricebook_model_price *pricebook_find_model(const struct pricebook *book,
                                                         const char *model)
{
    const struct pricebook_model_price *fallback = NULL;

    for (size_t i = 0; i < book->model_count; i++) {
        if (strcmp(book->models[i].model, model) == 0)
            return &book->models[i];
        if (strcmp(book->models[i].model, PRICEBOOK_FALLBACK_KEY) == 0)
            fallback = &book->models[i];
    }
    return fallback;
}
