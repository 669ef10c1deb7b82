#include "event.h"

#include "common/status.h"

#include <string.h>

const char *event_kind_name(enum event_kind kind)
{
    switch (kind) {
    case EVENT_GPU_ALLOCATION: return "gpu_allocation";
    case EVENT_INFERENCE: return "inference";
    case EVENT_STORAGE: return "storage";
    case EVENT_API_CALL: return "api_call";
    }
    return "unknown";
}

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

uint32_t event_period_of(int64_t timestamp_us)
{
    int64_t seconds = timestamp_us / 1000000;
    if (timestamp_us % 1000000 < 0)
        seconds--;
    int64_t days = seconds / 86400;
    if (seconds % 86400 < 0)
        days--;

    /* civil_from_days, the inverse of days_from_civil. */
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned day_of_era = (unsigned)(days - era * 146097);
    unsigned year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    int64_t year = (int64_t)year_of_era + era * 400;
    unsigned day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    unsigned month_index = (5 * day_of_year + 2) / 153;
    unsigned month = month_index < 10 ? month_index + 3 : month_index - 9;
    year += month <= 2;
    return (uint32_t)(year * 100 + month);
}

int64_t period_start_us(uint32_t period)
{
    return days_from_civil(period / 100, period % 100, 1) * 86400 * 1000000;
}

uint32_t period_next(uint32_t period)
{
    return period % 100 == 12 ? (period / 100 + 1) * 100 + 1 : period + 1;
}

int period_parse(const char *text, uint32_t *period_out)
{
    /* Digits are checked one by one because sscanf's %u skips spaces and accepts a sign. */
    if (strlen(text) != 7 || text[4] != '-')
        return HM_ERR_INVALID;
    for (size_t i = 0; i < 7; i++) {
        if (i != 4 && (text[i] < '0' || text[i] > '9'))
            return HM_ERR_INVALID;
    }
    unsigned year = (unsigned)(text[0] - '0') * 1000 + (unsigned)(text[1] - '0') * 100 +
                    (unsigned)(text[2] - '0') * 10 + (unsigned)(text[3] - '0');
    unsigned month = (unsigned)(text[5] - '0') * 10 + (unsigned)(text[6] - '0');
    if (year < 1970 || month < 1 || month > 12)
        return HM_ERR_INVALID;
    *period_out = year * 100 + month;
    return HM_OK;
}
