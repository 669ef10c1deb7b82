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
/* Length of an effective time in the only accepted form, "2024-07-01T00:00:00Z". */
#define UTC_TIME_LENGTH 20

_Static_assert(PRICEBOOK_USAGE_KINDS == 7, "kind_names lists 7 usage line kinds");

/* Usage line kinds in invoice order, indexed like pricebook_discount.applies_to. */
static const char *const kind_names[PRICEBOOK_USAGE_KINDS] = {
    "gpu",       "input_tokens", "output_tokens", "cached_input_tokens",
    "api_calls", "storage",      "transfer",
};
#define KIND_NAMES_TEXT                                                                            \
    "gpu, input_tokens, output_tokens, cached_input_tokens, api_calls, storage, transfer"

#define VERSION_FIELDS_TEXT                                                                        \
    "base_fee, support_fee, gpu_hour, tokens_per_million, api_calls_per_million, "                 \
    "storage_gb_month, transfer_gb, gpu_volume_discount, discounts, commitment"

/* Name and driver of the discount that gpu_volume_discount is shorthand for. */
#define GPU_VOLUME_DISCOUNT_NAME "GPU volume discount"
#define GPU_KIND_INDEX 0

/*
 * Messages collected while parsing. Each message goes on its own line; once a
 * message does not fit, or max_count is reached, later ones are counted but
 * not written. out_of_memory records a failed allocation, which ends the
 * parse with HM_ERR_NOMEM instead of HM_ERR_INVALID.
 */
struct error_list {
    char *buffer;
    size_t size;
    size_t used;
    size_t count;
    size_t max_count; /* 0: no limit */
    bool full;
    bool out_of_memory;
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

    /* Bytes outside printable ASCII are shown as \xNN, so that a key cannot forge the message. */
    char quoted[PATH_SIZE];
    size_t at = 0;
    for (const char *p = key; *p != '\0' && at + 5 < sizeof(quoted); p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c >= 0x7f) {
            at += (size_t)snprintf(quoted + at, sizeof(quoted) - at, "\\x%02x", c);
            continue;
        }
        if (c == '"' || c == '\\')
            quoted[at++] = '\\';
        quoted[at++] = (char)c;
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

static bool expect_object(const json_t *value, const char *path, const char *example,
                          struct error_list *errors)
{
    if (json_is_object(value))
        return true;
    add_error(errors, path, "expected an object such as %s, found %s", example,
              json_type_name(value));
    return false;
}

/*
 * Returns the first control character (U+0000 to U+001F, U+007F to U+009F)
 * or bidirectional control (U+202A to U+202E, U+2066 to U+2069) of a UTF-8
 * text, which jansson has checked, or 0 when it has none.
 */
static uint32_t name_forbidden_char(const char *name)
{
    const unsigned char *c = (const unsigned char *)name;
    for (size_t i = 0; c[i] != '\0'; i++) {
        if (c[i] < 0x20 || c[i] == 0x7f)
            return c[i];
        /* U+0080 to U+009F are C2 80 to C2 9F in UTF-8. */
        if (c[i] == 0xc2 && c[i + 1] >= 0x80 && c[i + 1] <= 0x9f)
            return 0x80u + (c[i + 1] - 0x80u);
        /* U+202A to U+202E are E2 80 AA to E2 80 AE, U+2066 to U+2069 E2 81 A6 to E2 81 A9. */
        if (c[i] == 0xe2 && c[i + 1] == 0x80 && c[i + 2] >= 0xaa && c[i + 2] <= 0xae)
            return 0x2000u + c[i + 2] - 0x80u;
        if (c[i] == 0xe2 && c[i + 1] == 0x81 && c[i + 2] >= 0xa6 && c[i + 2] <= 0xa9)
            return 0x2040u + c[i + 2] - 0x80u;
    }
    return 0;
}

/*
 * Copies a name of 1 to PRICEBOOK_NAME_MAX bytes into out. Names are printed
 * on invoices and in terminals, where control characters would forge text
 * and bidirectional controls would reorder it.
 */
static void parse_name(const json_t *value, const char *path, const char *example, char *out,
                       size_t out_size, struct error_list *errors)
{
    if (!json_is_string(value)) {
        add_error(errors, path, "expected a string such as \"%s\", found %s", example,
                  json_type_name(value));
        return;
    }
    const char *name = json_string_value(value);
    if (name[0] == '\0' || strlen(name) > PRICEBOOK_NAME_MAX) {
        add_error(errors, path, "name must be 1 to %d bytes long", PRICEBOOK_NAME_MAX);
        return;
    }
    uint32_t forbidden = name_forbidden_char(name);
    if (forbidden >= 0x2000) {
        add_error(errors, path,
                  "name contains the bidirectional control U+%04X, which reorders the text "
                  "around it on invoices; remove it",
                  (unsigned)forbidden);
        return;
    }
    if (forbidden != 0) {
        add_error(errors, path,
                  "name contains the control character 0x%02x; use printable "
                  "characters only",
                  (unsigned)forbidden);
        return;
    }
    snprintf(out, out_size, "%s", name);
}

/*
 * Checks a GPU type or model name used as a key; returns true when it fits a
 * usage dimension. The wire format carries these names as 1 to 64 bytes of
 * printable ASCII without spaces (0x21 to 0x7e), so a key with any other
 * byte could never match usage.
 */
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
    for (const unsigned char *c = (const unsigned char *)key; *c != '\0'; c++) {
        if (*c < 0x21 || *c > 0x7e) {
            add_error(errors, path,
                      "%s name has the byte 0x%02x at offset %zu%s; usage reports %s names as "
                      "printable ASCII without spaces (0x21 to 0x7e), so this price would never "
                      "apply: write the name exactly as the sender reports it",
                      what, *c, (size_t)(c - (const unsigned char *)key),
                      *c == ' ' ? " (a space)" : "", what);
            return false;
        }
    }
    return true;
}

/* ---- Effective times ---- */

/* Days from 1970-01-01 to a proleptic Gregorian date, in integers only (no timegm, no TZ). */
static int64_t days_from_civil(int64_t year, int month, int day)
{
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

static int days_in_month(int64_t year, int month)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* Reads `count` decimal digits at text; returns -1 when one is not a digit. */
static int read_digits(const char *text, int count)
{
    int value = 0;
    for (int i = 0; i < count; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

/*
 * Parses "YYYY-MM-DDTHH:MM:SSZ" (RFC 3339, UTC, whole seconds, years 0001 to
 * 9999) into Unix seconds. Returns NULL and sets *out, or a static reason.
 */
static const char *parse_utc_time(const char *text, int64_t *out)
{
    if (strlen(text) != UTC_TIME_LENGTH || text[4] != '-' || text[7] != '-' || text[10] != 'T' ||
        text[13] != ':' || text[16] != ':' || text[19] != 'Z')
        return "not of the form YYYY-MM-DDTHH:MM:SSZ";

    int year = read_digits(text, 4);
    int month = read_digits(text + 5, 2);
    int day = read_digits(text + 8, 2);
    int hour = read_digits(text + 11, 2);
    int minute = read_digits(text + 14, 2);
    int second = read_digits(text + 17, 2);
    if (year < 0 || month < 0 || day < 0 || hour < 0 || minute < 0 || second < 0)
        return "not of the form YYYY-MM-DDTHH:MM:SSZ";
    if (year == 0)
        return "year 0000 is out of range";
    if (month < 1 || month > 12)
        return "month is not 01 to 12";
    if (day < 1 || day > days_in_month(year, month))
        return "day is not in the month";
    if (hour > 23 || minute > 59)
        return "hour or minute is out of range";
    /* Unix time has no leap seconds, so 60 cannot be counted. */
    if (second > 59)
        return "second is not 00 to 59";

    *out = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    return NULL;
}

static bool parse_effective_from(const json_t *value, const char *path,
                                 struct pricebook_version *version, struct error_list *errors)
{
    if (!json_is_string(value)) {
        add_error(errors, path,
                  "expected an RFC 3339 UTC time such as \"2024-07-01T00:00:00Z\", found %s",
                  json_type_name(value));
        return false;
    }
    const char *text = json_string_value(value);
    const char *reason = parse_utc_time(text, &version->effective_from_s);
    if (reason != NULL) {
        add_error(errors, path,
                  "invalid time \"%s\": %s; write a UTC time with whole seconds such as "
                  "\"2024-07-01T00:00:00Z\"",
                  text, reason);
        return false;
    }
    version->has_effective_from = true;
    return true;
}

/* ---- Charges ---- */

/* Billing unit and example price that the messages about a charge show. */
struct charge_context {
    const char *price_example; /* "2.50" */
    const char *unit;          /* "GPU-hour" */
};

/* Parses a charge tier's up_to; checks > 0 and the ascending order against the previous tier. */
static void parse_tier_up_to(const json_t *value, const char *path, size_t index,
                             struct pricebook_charge *charge, struct error_list *errors)
{
    struct pricebook_charge_tier *tier = &charge->tiers[index];
    if (!parse_decimal(value, path, "1000", errors, &tier->up_to_pico))
        return;
    tier->bounded = true;
    if (tier->up_to_pico == 0) {
        add_error(errors, path, "up_to is 0; the first tier starts at 0, so give a bound above 0");
        return;
    }

    /* Bounds must rise strictly, so that every tier is a non-empty interval. */
    const struct pricebook_charge_tier *previous = index > 0 ? &charge->tiers[index - 1] : NULL;
    if (previous != NULL && previous->bounded && tier->up_to_pico <= previous->up_to_pico) {
        char bound[MONEY_TEXT_SIZE];
        char previous_bound[MONEY_TEXT_SIZE];
        money_decimal_format(tier->up_to_pico, 0, bound, sizeof(bound));
        money_decimal_format(previous->up_to_pico, 0, previous_bound, sizeof(previous_bound));
        add_error(errors, path,
                  "%s is not above the previous tier's %s; list tiers in strictly ascending "
                  "order of up_to",
                  bound, previous_bound);
    }
}

static void parse_charge_tier(const json_t *value, const char *path, size_t index, bool last,
                              const struct charge_context *context, struct pricebook_charge *charge,
                              struct error_list *errors)
{
    if (!expect_object(value, path, "{\"up_to\": \"1000\", \"price\": \"2.50\"}", errors))
        return;

    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "price") == 0) {
            parse_price(field, child, context->price_example, errors, &charge->tiers[index].price);
        } else if (strcmp(key, "up_to") == 0) {
            if (last)
                add_error(errors, child,
                          "the last tier has an upper bound; remove \"up_to\" so that the last "
                          "tier covers every larger quantity");
            else
                parse_tier_up_to(field, child, index, charge, errors);
        } else {
            add_error(errors, child, "unknown key; expected \"up_to\" or \"price\"");
        }
    }
    if (json_object_get(value, "price") == NULL)
        add_error(errors, path, "missing \"price\"; add the price per %s inside this tier",
                  context->unit);
    if (!last && json_object_get(value, "up_to") == NULL)
        add_error(errors, path,
                  "missing \"up_to\"; every tier but the last needs the upper bound of its "
                  "interval, in %ss",
                  context->unit);
}

static void parse_charge_tiers(const json_t *value, const char *path,
                               const struct charge_context *context,
                               struct pricebook_charge *charge, struct error_list *errors)
{
    if (!json_is_array(value)) {
        add_error(errors, path,
                  "expected an array of tiers such as [{\"up_to\": \"1000\", \"price\": "
                  "\"%s\"}, {\"price\": \"%s\"}], found %s",
                  context->price_example, context->price_example, json_type_name(value));
        return;
    }
    size_t count = json_array_size(value);
    if (count == 0) {
        add_error(errors, path, "no tiers; add at least one, the last without \"up_to\"");
        return;
    }
    if (count > PRICEBOOK_TIERS_MAX) {
        add_error(errors, path, "%zu tiers; at most %d are allowed", count, PRICEBOOK_TIERS_MAX);
        return;
    }

    charge->tier_count = count;
    for (size_t i = 0; i < count; i++) {
        char child[PATH_SIZE];
        path_index(child, path, i);
        parse_charge_tier(json_array_get(value, i), child, i, i + 1 == count, context, charge,
                          errors);
    }
}

static bool parse_charge_model(const json_t *value, const char *path,
                               enum pricebook_charge_model *out, struct error_list *errors)
{
    static const struct {
        const char *name;
        enum pricebook_charge_model model;
    } models[] = {
        {"per_unit", PRICEBOOK_CHARGE_PER_UNIT},
        {"package", PRICEBOOK_CHARGE_PACKAGE},
        {"graduated", PRICEBOOK_CHARGE_GRADUATED},
        {"volume", PRICEBOOK_CHARGE_VOLUME},
    };

    if (!json_is_string(value)) {
        add_error(errors, path,
                  "expected \"per_unit\", \"package\", \"graduated\" or \"volume\", found %s",
                  json_type_name(value));
        return false;
    }
    const char *text = json_string_value(value);
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        if (strcmp(text, models[i].name) == 0) {
            *out = models[i].model;
            return true;
        }
    }
    add_error(errors, path,
              "unknown charge model \"%s\"; use \"per_unit\", \"package\", \"graduated\" or "
              "\"volume\"",
              text);
    return false;
}

/* Checks that a charge object has the keys its model needs and none that it ignores. */
static void check_charge_keys(const json_t *value, const char *path,
                              const struct charge_context *context,
                              enum pricebook_charge_model model, struct error_list *errors)
{
    bool needs_price = model == PRICEBOOK_CHARGE_PER_UNIT || model == PRICEBOOK_CHARGE_PACKAGE;
    bool needs_size = model == PRICEBOOK_CHARGE_PACKAGE;
    bool needs_tiers = !needs_price;
    const char *model_name = json_string_value(json_object_get(value, "model"));
    const struct {
        const char *key;
        bool needed;
        const char *fix;
    } keys[] = {
        {"price", needs_price, "the price per %s"},
        {"size", needs_size, "the package size in %ss, above 0"},
        {"tiers", needs_tiers, "an array of tiers priced per %s"},
    };

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        bool present = json_object_get(value, keys[i].key) != NULL;
        char child[PATH_SIZE];
        path_child(child, path, keys[i].key);
        if (present && !keys[i].needed) {
            add_error(errors, child, "a %s charge has no \"%s\"; remove it or change the model",
                      model_name, keys[i].key);
        } else if (!present && keys[i].needed) {
            char fix[MESSAGE_SIZE / 2];
            snprintf(fix, sizeof(fix), keys[i].fix, context->unit);
            add_error(errors, path, "missing \"%s\" of a %s charge; add %s", keys[i].key,
                      model_name, fix);
        }
    }
}

static void parse_charge_object(const json_t *value, const char *path,
                                const struct charge_context *context,
                                struct pricebook_charge *charge, struct error_list *errors)
{
    const json_t *model_value = json_object_get(value, "model");
    char model_path[PATH_SIZE];
    path_child(model_path, path, "model");
    bool model_known = false;
    if (model_value == NULL)
        add_error(errors, path,
                  "missing \"model\"; add \"per_unit\", \"package\", \"graduated\" or \"volume\"");
    else
        model_known = parse_charge_model(model_value, model_path, &charge->model, errors);

    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "model") == 0)
            continue;
        if (strcmp(key, "price") == 0) {
            parse_price(field, child, context->price_example, errors, &charge->price);
        } else if (strcmp(key, "size") == 0) {
            if (parse_decimal(field, child, "100", errors, &charge->package_size_pico) &&
                charge->package_size_pico == 0)
                add_error(errors, child,
                          "package size is 0; give the %ss that one package holds, above 0",
                          context->unit);
        } else if (strcmp(key, "tiers") == 0) {
            parse_charge_tiers(field, child, context, charge, errors);
        } else {
            add_error(errors, child,
                      "unknown key; expected \"model\", \"price\", \"size\" or \"tiers\"");
        }
    }
    if (model_known)
        check_charge_keys(value, path, context, charge->model, errors);
}

/* Parses a CHARGE: a price string (per_unit) or an object with a charge model. */
static bool parse_charge(const json_t *value, const char *path,
                         const struct charge_context *context, struct pricebook_charge *charge,
                         struct error_list *errors)
{
    size_t errors_before = errors->count;

    memset(charge, 0, sizeof(*charge));
    if (json_is_object(value)) {
        parse_charge_object(value, path, context, charge, errors);
        return errors->count == errors_before;
    }
    if (json_is_string(value) || json_is_number(value)) {
        charge->model = PRICEBOOK_CHARGE_PER_UNIT;
        return parse_price(value, path, context->price_example, errors, &charge->price);
    }
    add_error(errors, path,
              "expected a decimal string such as \"%s\" or a charge object such as "
              "{\"model\": \"graduated\", \"tiers\": [...]}, found %s",
              context->price_example, json_type_name(value));
    return false;
}

/* ---- Version fields ---- */

static const struct charge_context gpu_context = {"2.50", "GPU-hour"};
static const struct charge_context token_context = {"3.00", "1M token"};
static const struct charge_context api_calls_context = {"0.50", "1M call"};
static const struct charge_context storage_context = {"0.02", "GB-month"};
static const struct charge_context transfer_context = {"0.09", "GB"};

static void parse_gpu_hour(const json_t *value, const char *path, struct pricebook_version *version,
                           struct error_list *errors)
{
    if (!expect_object(value, path, "{\"H100\": \"2.50\"}", errors))
        return;
    size_t count = json_object_size(value);
    if (count > PRICEBOOK_GPU_TYPES_MAX) {
        add_error(errors, path, "%zu GPU types; at most %d are allowed", count,
                  PRICEBOOK_GPU_TYPES_MAX);
        return;
    }
    if (count == 0)
        return;
    version->gpu = calloc(count, sizeof(*version->gpu));
    if (version->gpu == NULL) {
        errors->out_of_memory = true;
        return;
    }

    const char *key;
    const json_t *charge;
    json_object_foreach((json_t *)value, key, charge)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (!check_dimension_key(key, child, "GPU type", errors))
            continue;

        struct pricebook_gpu_price *entry = &version->gpu[version->gpu_count];
        if (!parse_charge(charge, child, &gpu_context, &entry->per_hour, errors))
            continue;
        snprintf(entry->gpu_type, sizeof(entry->gpu_type), "%s", key);
        version->gpu_count++;
    }
}

static void parse_model(const json_t *value, const char *path, const char *model,
                        struct pricebook_version *version, struct error_list *errors)
{
    if (!expect_object(value, path, "{\"input\": \"3.00\", \"output\": \"15.00\"}", errors))
        return;
    if (json_object_size(value) == 0) {
        add_error(errors, path,
                  "no prices; give at least one of \"input\", \"output\", \"cached_input\"");
        return;
    }

    struct pricebook_model_price *entry = &version->models[version->model_count];
    size_t errors_before = errors->count;
    const char *key;
    const json_t *charge;
    memset(entry, 0, sizeof(*entry));
    json_object_foreach((json_t *)value, key, charge)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "input") == 0)
            entry->has_input = parse_charge(charge, child, &token_context, &entry->input, errors);
        else if (strcmp(key, "output") == 0)
            entry->has_output = parse_charge(charge, child, &token_context, &entry->output, errors);
        else if (strcmp(key, "cached_input") == 0)
            entry->has_cached_input =
                parse_charge(charge, child, &token_context, &entry->cached_input, errors);
        else
            add_error(errors, child,
                      "unknown key; expected one of \"input\", \"output\", \"cached_input\"");
    }
    if (errors->count != errors_before)
        return;
    snprintf(entry->model, sizeof(entry->model), "%s", model);
    version->model_count++;
}

static void parse_tokens(const json_t *value, const char *path, struct pricebook_version *version,
                         struct error_list *errors)
{
    if (!expect_object(value, path, "{\"m-large\": {\"input\": \"3.00\"}}", errors))
        return;
    size_t count = json_object_size(value);
    if (count > PRICEBOOK_MODELS_MAX) {
        add_error(errors, path, "%zu models; at most %d are allowed", count, PRICEBOOK_MODELS_MAX);
        return;
    }
    if (count == 0)
        return;
    version->models = calloc(count, sizeof(*version->models));
    if (version->models == NULL) {
        errors->out_of_memory = true;
        return;
    }

    const char *key;
    const json_t *prices;
    json_object_foreach((json_t *)value, key, prices)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (check_dimension_key(key, child, "model", errors))
            parse_model(prices, child, key, version, errors);
    }
}

static void parse_support_fee(const json_t *value, const char *path,
                              struct pricebook_version *version, struct error_list *errors)
{
    if (!expect_object(value, path, "{\"basic\": \"50.00\", \"pro\": \"500.00\"}", errors))
        return;

    const char *key;
    const json_t *price;
    json_object_foreach((json_t *)value, key, price)
    {
        char child[PATH_SIZE];
        enum support_tier tier;
        path_child(child, path, key);
        if (support_tier_parse(key, &tier) != HM_OK || tier == SUPPORT_NONE) {
            add_error(errors, child,
                      "unknown support tier; expected \"basic\", \"pro\" or \"enterprise\"");
            continue;
        }
        version->has_support_fee[tier] =
            parse_price(price, child, "500.00", errors, &version->support_fee_per_month[tier]);
    }
}

static void parse_commitment(const json_t *value, const char *path,
                             struct pricebook_version *version, struct error_list *errors)
{
    if (!expect_object(value, path, "{\"minimum\": \"1000.00\"}", errors))
        return;

    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "minimum") == 0)
            version->has_commitment =
                parse_price(field, child, "1000.00", errors, &version->commitment_per_month);
        else
            add_error(errors, child, "unknown key; expected \"minimum\"");
    }
    if (json_object_get(value, "minimum") == NULL)
        add_error(errors, path, "missing \"minimum\"; add the minimum usage spend per month");
}

/* ---- Discounts ---- */

/* Field names that differ between the gpu_volume_discount shorthand and a discounts entry. */
struct discount_syntax {
    const char *above_key; /* "above_hours" or "above" */
    const char *above_fix; /* what to add when above is missing */
    const char *empty_fix; /* what to do when tiers is empty */
};

static const struct discount_syntax shorthand_syntax = {
    "above_hours", "add the GPU-hours the tier starts above", "remove gpu_volume_discount"};
static const struct discount_syntax discount_syntax = {
    "above", "add the driver's quantity, in billing units, that the tier starts above",
    "remove the discount"};

/* Parses one discount tier. *above_valid is set when its threshold parsed, for the order check. */
static void parse_discount_tier(const json_t *value, const char *path,
                                const struct discount_syntax *syntax, struct pricebook_tier *tier,
                                struct error_list *errors, bool *above_valid)
{
    *above_valid = false;
    char example[MESSAGE_SIZE / 4];
    snprintf(example, sizeof(example), "{\"%s\": \"1000\", \"percent\": \"10\"}",
             syntax->above_key);
    if (!expect_object(value, path, example, errors))
        return;

    bool has_above = false;
    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, syntax->above_key) == 0) {
            has_above = parse_decimal(field, child, "1000", errors, &tier->above_pico);
        } else if (strcmp(key, "percent") == 0) {
            if (parse_decimal(field, child, "10", errors, &tier->percent_pico) &&
                tier->percent_pico > 100 * MONEY_DECIMAL_SCALE)
                add_error(errors, child, "percent \"%s\" is above 100; write a value from 0 to 100",
                          json_string_value(field));
        } else {
            add_error(errors, child, "unknown key; expected \"%s\" or \"percent\"",
                      syntax->above_key);
        }
    }
    if (json_object_get(value, syntax->above_key) == NULL)
        add_error(errors, path, "missing \"%s\"; %s", syntax->above_key, syntax->above_fix);
    if (json_object_get(value, "percent") == NULL)
        add_error(errors, path, "missing \"percent\"; add the tier's discount from 0 to 100");
    *above_valid = has_above;
}

static void parse_discount_tiers(const json_t *value, const char *path,
                                 const struct discount_syntax *syntax,
                                 struct pricebook_discount *discount, struct error_list *errors)
{
    if (!json_is_array(value)) {
        add_error(errors, path, "expected an array of tiers, found %s", json_type_name(value));
        return;
    }
    size_t count = json_array_size(value);
    if (count == 0) {
        add_error(errors, path, "no tiers; add at least one or %s", syntax->empty_fix);
        return;
    }
    if (count > PRICEBOOK_TIERS_MAX) {
        add_error(errors, path, "%zu tiers; at most %d are allowed", count, PRICEBOOK_TIERS_MAX);
        return;
    }

    bool previous_above_valid = false;
    discount->tier_count = count;
    for (size_t i = 0; i < count; i++) {
        char child[PATH_SIZE];
        bool above_valid = false;
        path_index(child, path, i);
        parse_discount_tier(json_array_get(value, i), child, syntax, &discount->tiers[i], errors,
                            &above_valid);
        /* The order is checked whenever both thresholds parsed, so one check reports both faults.
         */
        bool compare = i > 0 && above_valid && previous_above_valid;
        previous_above_valid = above_valid;
        if (!compare)
            continue;

        /* Thresholds must rise strictly, so that each tier is a non-empty interval. */
        const struct pricebook_tier *previous = &discount->tiers[i - 1];
        if (discount->tiers[i].above_pico <= previous->above_pico) {
            char above[MONEY_TEXT_SIZE];
            char previous_above[MONEY_TEXT_SIZE];
            char above_path[PATH_SIZE];
            money_decimal_format(discount->tiers[i].above_pico, 0, above, sizeof(above));
            money_decimal_format(previous->above_pico, 0, previous_above, sizeof(previous_above));
            path_child(above_path, child, syntax->above_key);
            add_error(errors, above_path,
                      "%s is not above the previous tier's %s; list tiers in strictly ascending "
                      "order of %s",
                      above, previous_above, syntax->above_key);
        }
    }
}

static void parse_discount_mode(const json_t *value, const char *path,
                                struct pricebook_discount *discount, struct error_list *errors)
{
    const char *text = json_is_string(value) ? json_string_value(value) : NULL;
    if (text != NULL && strcmp(text, "volume") == 0)
        discount->mode = PRICEBOOK_DISCOUNT_VOLUME;
    else if (text != NULL && strcmp(text, "graduated") == 0)
        discount->mode = PRICEBOOK_DISCOUNT_GRADUATED;
    else if (text != NULL)
        add_error(errors, path, "unknown mode \"%s\"; use \"volume\" or \"graduated\"", text);
    else
        add_error(errors, path, "expected \"volume\" or \"graduated\", found %s",
                  json_type_name(value));
}

/* Returns the index of a usage line kind name, or -1 after reporting an unknown one. */
static int parse_kind(const json_t *value, const char *path, struct error_list *errors)
{
    if (!json_is_string(value)) {
        add_error(errors, path, "expected a usage line kind such as \"gpu\", found %s",
                  json_type_name(value));
        return -1;
    }
    const char *text = json_string_value(value);
    for (int i = 0; i < PRICEBOOK_USAGE_KINDS; i++) {
        if (strcmp(text, kind_names[i]) == 0)
            return i;
    }
    add_error(errors, path, "unknown usage line kind \"%s\"; use one of " KIND_NAMES_TEXT, text);
    return -1;
}

static void parse_applies_to(const json_t *value, const char *path,
                             struct pricebook_discount *discount, struct error_list *errors)
{
    if (!json_is_array(value)) {
        add_error(errors, path, "expected an array of usage line kinds such as [\"gpu\"], found %s",
                  json_type_name(value));
        return;
    }
    if (json_array_size(value) == 0) {
        add_error(errors, path, "no usage line kinds; list at least one of " KIND_NAMES_TEXT);
        return;
    }

    size_t index;
    const json_t *element;
    json_array_foreach((json_t *)value, index, element)
    {
        char child[PATH_SIZE];
        path_index(child, path, index);
        int kind = parse_kind(element, child, errors);
        if (kind < 0)
            continue;
        if (discount->applies_to[kind]) {
            add_error(errors, child, "\"%s\" is listed twice; list each kind once",
                      kind_names[kind]);
            continue;
        }
        discount->applies_to[kind] = true;
    }
}

/* Parses the gpu_volume_discount shorthand into the full discount that it abbreviates. */
static void parse_gpu_volume_discount(const json_t *value, const char *path,
                                      struct pricebook_discount *discount,
                                      struct error_list *errors)
{
    memset(discount, 0, sizeof(*discount));
    snprintf(discount->name, sizeof(discount->name), "%s", GPU_VOLUME_DISCOUNT_NAME);
    discount->applies_to[GPU_KIND_INDEX] = true;
    discount->driver = GPU_KIND_INDEX;
    if (!expect_object(value, path, "{\"mode\": \"volume\", \"tiers\": [...]}", errors))
        return;

    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "mode") == 0)
            parse_discount_mode(field, child, discount, errors);
        else if (strcmp(key, "tiers") == 0)
            parse_discount_tiers(field, child, &shorthand_syntax, discount, errors);
        else
            add_error(errors, child, "unknown key; expected \"mode\" or \"tiers\"");
    }
    if (json_object_get(value, "mode") == NULL)
        add_error(errors, path, "missing \"mode\"; add \"volume\" or \"graduated\"");
    if (json_object_get(value, "tiers") == NULL)
        add_error(errors, path, "missing \"tiers\"; add an array of tiers");
}

static void parse_discount(const json_t *value, const char *path,
                           struct pricebook_discount *discount, struct error_list *errors)
{
    memset(discount, 0, sizeof(*discount));
    discount->driver = -1;
    if (!expect_object(value, path,
                       "{\"name\": \"Token discount\", \"applies_to\": [\"input_tokens\"], "
                       "\"driver\": \"input_tokens\", \"mode\": \"volume\", \"tiers\": [...]}",
                       errors))
        return;

    static const char *const required[] = {"name", "applies_to", "driver", "mode", "tiers"};
    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "name") == 0)
            parse_name(field, child, "Token discount", discount->name, sizeof(discount->name),
                       errors);
        else if (strcmp(key, "applies_to") == 0)
            parse_applies_to(field, child, discount, errors);
        else if (strcmp(key, "driver") == 0)
            discount->driver = parse_kind(field, child, errors);
        else if (strcmp(key, "mode") == 0)
            parse_discount_mode(field, child, discount, errors);
        else if (strcmp(key, "tiers") == 0)
            parse_discount_tiers(field, child, &discount_syntax, discount, errors);
        else
            add_error(errors, child,
                      "unknown key; expected one of name, applies_to, driver, "
                      "mode, tiers");
    }
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (json_object_get(value, required[i]) == NULL)
            add_error(errors, path,
                      "missing \"%s\"; a discount needs name, applies_to, driver, "
                      "mode and tiers",
                      required[i]);
    }
}

/*
 * Reports a usage kind in applies_to of two discounts of the version: rating
 * would otherwise take two discounts off the same lines.
 */
static void check_discount_overlap(const struct pricebook_version *version, char paths[][PATH_SIZE],
                                   struct error_list *errors)
{
    int owner[PRICEBOOK_USAGE_KINDS];
    for (int kind = 0; kind < PRICEBOOK_USAGE_KINDS; kind++)
        owner[kind] = -1;

    for (size_t i = 0; i < version->discount_count; i++) {
        for (int kind = 0; kind < PRICEBOOK_USAGE_KINDS; kind++) {
            if (!version->discounts[i].applies_to[kind])
                continue;
            if (owner[kind] < 0) {
                owner[kind] = (int)i;
                continue;
            }
            char child[PATH_SIZE];
            path_child(child, paths[i], "applies_to");
            add_error(errors, child,
                      "\"%s\" is already in applies_to of %s (\"%s\"); a usage line kind may "
                      "belong to one discount of a version, so remove it from one of them",
                      kind_names[kind], paths[owner[kind]], version->discounts[owner[kind]].name);
        }
    }
}

/*
 * Parses a version's discounts: the gpu_volume_discount shorthand first, then
 * the discounts array in its order. Either may be NULL.
 */
static void parse_discounts(const json_t *shorthand, const json_t *list, const char *path,
                            struct pricebook_version *version, struct error_list *errors)
{
    char paths[PRICEBOOK_DISCOUNTS_MAX][PATH_SIZE];

    if (shorthand != NULL) {
        path_child(paths[0], path, "gpu_volume_discount");
        parse_gpu_volume_discount(shorthand, paths[0], &version->discounts[0], errors);
        version->discount_count = 1;
    }
    if (list != NULL) {
        char list_path[PATH_SIZE];
        path_child(list_path, path, "discounts");
        size_t count = json_is_array(list) ? json_array_size(list) : 0;
        if (!json_is_array(list)) {
            add_error(errors, list_path, "expected an array of discounts, found %s",
                      json_type_name(list));
        } else if (count + version->discount_count > PRICEBOOK_DISCOUNTS_MAX) {
            add_error(errors, list_path, "%zu discounts%s; at most %d are allowed per version",
                      count, shorthand != NULL ? " and gpu_volume_discount" : "",
                      PRICEBOOK_DISCOUNTS_MAX);
        } else {
            for (size_t i = 0; i < count; i++) {
                size_t slot = version->discount_count++;
                path_index(paths[slot], list_path, i);
                parse_discount(json_array_get(list, i), paths[slot], &version->discounts[slot],
                               errors);
            }
        }
    }
    check_discount_overlap(version, paths, errors);
}

/* ---- Versions and the book ---- */

/* Discount fields of a version, parsed after its other keys so that the shorthand comes first. */
struct deferred_discounts {
    const json_t *shorthand;
    const json_t *list;
};

/* Parses one version field into version. Returns false when key is not a version field. */
static bool parse_version_field(const char *key, const json_t *value, const char *path,
                                struct pricebook_version *version,
                                struct deferred_discounts *deferred, struct error_list *errors)
{
    if (strcmp(key, "base_fee") == 0)
        version->has_base_fee =
            parse_price(value, path, "100.00", errors, &version->base_fee_per_month);
    else if (strcmp(key, "support_fee") == 0)
        parse_support_fee(value, path, version, errors);
    else if (strcmp(key, "gpu_hour") == 0)
        parse_gpu_hour(value, path, version, errors);
    else if (strcmp(key, "tokens_per_million") == 0)
        parse_tokens(value, path, version, errors);
    else if (strcmp(key, "api_calls_per_million") == 0)
        version->has_api_calls =
            parse_charge(value, path, &api_calls_context, &version->api_calls_per_million, errors);
    else if (strcmp(key, "storage_gb_month") == 0)
        version->has_storage =
            parse_charge(value, path, &storage_context, &version->storage_per_gb_month, errors);
    else if (strcmp(key, "transfer_gb") == 0)
        version->has_transfer =
            parse_charge(value, path, &transfer_context, &version->transfer_per_gb, errors);
    else if (strcmp(key, "commitment") == 0)
        parse_commitment(value, path, version, errors);
    else if (strcmp(key, "gpu_volume_discount") == 0)
        deferred->shorthand = value;
    else if (strcmp(key, "discounts") == 0)
        deferred->list = value;
    else
        return false;
    return true;
}

static bool is_version_field(const char *key)
{
    static const char *const fields[] = {
        "base_fee",           "support_fee",           "gpu_hour",
        "tokens_per_million", "api_calls_per_million", "storage_gb_month",
        "transfer_gb",        "gpu_volume_discount",   "discounts",
        "commitment",
    };

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (strcmp(key, fields[i]) == 0)
            return true;
    }
    return false;
}

/* Parses an element of versions; previous is the version before it, or NULL for the first. */
static void parse_version_object(const json_t *value, const char *path,
                                 struct pricebook_version *version,
                                 const struct pricebook_version *previous,
                                 const char *previous_text, struct error_list *errors)
{
    if (!expect_object(value, path,
                       "{\"effective_from\": \"2024-07-01T00:00:00Z\", \"base_fee\": \"100.00\"}",
                       errors))
        return;

    struct deferred_discounts deferred = {NULL, NULL};
    const char *key;
    const json_t *field;
    json_object_foreach((json_t *)value, key, field)
    {
        char child[PATH_SIZE];
        path_child(child, path, key);
        if (strcmp(key, "effective_from") == 0) {
            if (parse_effective_from(field, child, version, errors) && previous != NULL &&
                previous->has_effective_from &&
                version->effective_from_s <= previous->effective_from_s)
                add_error(errors, child,
                          "\"%s\" is not after the previous version's \"%s\"; list versions in "
                          "strictly ascending order of effective_from",
                          json_string_value(field), previous_text);
        } else if (!parse_version_field(key, field, child, version, &deferred, errors)) {
            add_error(errors, child,
                      "unknown key; expected effective_from or one of " VERSION_FIELDS_TEXT);
        }
    }
    if (previous != NULL && json_object_get(value, "effective_from") == NULL)
        add_error(errors, path,
                  "missing \"effective_from\"; every version after the first needs the UTC time "
                  "it takes effect, such as \"2024-07-01T00:00:00Z\"");
    parse_discounts(deferred.shorthand, deferred.list, path, version, errors);
}

static void parse_versions(const json_t *value, const char *path, struct pricebook *book,
                           struct error_list *errors)
{
    if (!json_is_array(value)) {
        add_error(errors, path, "expected an array of versions, found %s", json_type_name(value));
        return;
    }
    size_t count = json_array_size(value);
    if (count == 0) {
        add_error(errors, path,
                  "no versions; add at least one version, or remove \"versions\" "
                  "and put the version fields at the top level");
        return;
    }
    if (count > PRICEBOOK_VERSIONS_MAX) {
        add_error(errors, path,
                  "%zu versions; at most %d are allowed, so start a new price book "
                  "for older prices",
                  count, PRICEBOOK_VERSIONS_MAX);
        return;
    }
    book->versions = calloc(count, sizeof(*book->versions));
    if (book->versions == NULL) {
        errors->out_of_memory = true;
        return;
    }
    book->version_count = count;

    const char *previous_text = NULL;
    for (size_t i = 0; i < count && !errors->out_of_memory; i++) {
        char child[PATH_SIZE];
        const json_t *element = json_array_get(value, i);
        path_index(child, path, i);
        parse_version_object(element, child, &book->versions[i],
                             i > 0 ? &book->versions[i - 1] : NULL, previous_text, errors);
        previous_text = json_string_value(json_object_get(element, "effective_from"));
    }
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

/* Parses name, currency, rounding, versions or a misplaced effective_from; false for other keys. */
static bool parse_book_field(const char *key, const json_t *value, const char *path,
                             struct pricebook *book, struct error_list *errors)
{
    if (strcmp(key, "name") == 0)
        parse_name(value, path, "standard-2024", book->name, sizeof(book->name), errors);
    else if (strcmp(key, "currency") == 0)
        parse_currency(value, path, book, errors);
    else if (strcmp(key, "rounding") == 0)
        parse_rounding(value, path, book, errors);
    else if (strcmp(key, "versions") == 0)
        parse_versions(value, path, book, errors);
    else if (strcmp(key, "effective_from") == 0)
        add_error(errors, path,
                  "effective_from belongs to a version; put the prices and "
                  "effective_from in an element of \"versions\"");
    else
        return false;
    return true;
}

static void parse_book(const json_t *root, struct pricebook *book, struct error_list *errors)
{
    if (!expect_object(root, "$", "{\"name\": \"standard-2024\", \"currency\": \"USD\"}", errors))
        return;

    /* Without "versions", the top-level version fields form the only version, in effect always. */
    bool has_versions = json_object_get(root, "versions") != NULL;
    if (!has_versions) {
        book->versions = calloc(1, sizeof(*book->versions));
        if (book->versions == NULL) {
            errors->out_of_memory = true;
            return;
        }
        book->version_count = 1;
    }

    struct deferred_discounts deferred = {NULL, NULL};
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)root, key, value)
    {
        char path[PATH_SIZE];
        path_child(path, "$", key);
        if (errors->out_of_memory)
            return;
        if (parse_book_field(key, value, path, book, errors))
            continue;
        if (has_versions && is_version_field(key))
            add_error(errors, path,
                      "version field beside \"versions\"; move it into a version "
                      "in \"versions\", or remove \"versions\" and keep the fields at the top "
                      "level");
        else if (has_versions ||
                 !parse_version_field(key, value, path, &book->versions[0], &deferred, errors))
            add_error(errors, path,
                      "unknown key; expected one of name, currency, rounding, "
                      "versions, " VERSION_FIELDS_TEXT);
    }
    if (!has_versions)
        parse_discounts(deferred.shorthand, deferred.list, "$", &book->versions[0], errors);

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
    if (errors->out_of_memory) {
        pricebook_free(book);
        return HM_ERR_NOMEM;
    }
    if (errors->count != errors_before) {
        pricebook_free(book);
        return HM_ERR_INVALID;
    }
    *out = book;
    return HM_OK;
}

int pricebook_parse(const char *text, size_t length, struct pricebook **out, char *error,
                    size_t error_size)
{
    struct error_list errors = {error, error_size, 0, 0, 1, false, false};

    if (error != NULL && error_size > 0)
        error[0] = '\0';
    return parse_text(text, length, &errors, out);
}

int pricebook_check(const char *text, size_t length, char *errors_out, size_t errors_size,
                    size_t *error_count)
{
    struct error_list errors = {errors_out, errors_size, 0, 0, 0, false, false};
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
    if (book == NULL)
        return;
    for (size_t i = 0; i < book->version_count; i++) {
        free(book->versions[i].gpu);
        free(book->versions[i].models);
    }
    free(book->versions);
    free(book);
}

const struct pricebook_gpu_price *pricebook_find_gpu(const struct pricebook_version *version,
                                                     const char *gpu_type)
{
    const struct pricebook_gpu_price *fallback = NULL;

    for (size_t i = 0; i < version->gpu_count; i++) {
        if (strcmp(version->gpu[i].gpu_type, gpu_type) == 0)
            return &version->gpu[i];
        if (strcmp(version->gpu[i].gpu_type, PRICEBOOK_FALLBACK_KEY) == 0)
            fallback = &version->gpu[i];
    }
    return fallback;
}

const struct pricebook_model_price *pricebook_find_model(const struct pricebook_version *version,
                                                         const char *model)
{
    const struct pricebook_model_price *fallback = NULL;

    for (size_t i = 0; i < version->model_count; i++) {
        if (strcmp(version->models[i].model, model) == 0)
            return &version->models[i];
        if (strcmp(version->models[i].model, PRICEBOOK_FALLBACK_KEY) == 0)
            fallback = &version->models[i];
    }
    return fallback;
}

const struct pricebook_version *pricebook_version_at(const struct pricebook *book, int64_t time_s)
{
    const struct pricebook_version *found = NULL;

    /* Versions ascend, so the last one that has started is in effect. */
    for (size_t i = 0; i < book->version_count; i++) {
        const struct pricebook_version *version = &book->versions[i];
        if (version->has_effective_from && version->effective_from_s > time_s)
            break;
        found = version;
    }
    return found;
}

int pricebook_slices(const struct pricebook *book, int64_t start_s, int64_t end_s,
                     int64_t *starts_out, size_t max, size_t *count_out)
{
    *count_out = 0;
    if (start_s >= end_s)
        return HM_ERR_INVALID;
    if (pricebook_version_at(book, start_s) == NULL)
        return HM_ERR_NOT_FOUND;

    size_t count = 1;
    for (size_t i = 0; i < book->version_count; i++) {
        const struct pricebook_version *version = &book->versions[i];
        if (version->has_effective_from && version->effective_from_s > start_s &&
            version->effective_from_s < end_s)
            count++;
    }
    if (count > max)
        return HM_ERR_INVALID;

    size_t at = 0;
    starts_out[at++] = start_s;
    for (size_t i = 0; i < book->version_count; i++) {
        const struct pricebook_version *version = &book->versions[i];
        if (version->has_effective_from && version->effective_from_s > start_s &&
            version->effective_from_s < end_s)
            starts_out[at++] = version->effective_from_s;
    }
    *count_out = count;
    return HM_OK;
}
