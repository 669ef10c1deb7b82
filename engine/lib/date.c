#include "date.h"

#include "common/status.h"

#include <stdio.h>
#include <time.h>

static int digits_value(const char *text, size_t count, int *out)
{
    int value = 0;
    for (size_t i = 0; i < count; i++) {
        if (text[i] < '0' || text[i] > '9')
            return HM_ERR_INVALID;
        value = value * 10 + (text[i] - '0');
    }
    *out = value;
    return HM_OK;
}

/*
 * The digits are read one by one, because glibc's strptime skips leading
 * spaces and takes one-digit months and days and year 0, so that
 * " 2024-1-5" and "0-01-01" would pass.
 */
int date_parse(const char *text, int64_t *seconds_out)
{
    int year, month, day;
    for (size_t i = 0; i < DATE_TEXT_SIZE - 1; i++) {
        if (text[i] == '\0')
            return HM_ERR_INVALID;
    }
    if (text[DATE_TEXT_SIZE - 1] != '\0' || text[4] != '-' || text[7] != '-' ||
        digits_value(text, 4, &year) != HM_OK || digits_value(text + 5, 2, &month) != HM_OK ||
        digits_value(text + 8, 2, &day) != HM_OK)
        return HM_ERR_INVALID;
    if (year < DATE_YEAR_MIN || month < 1 || month > 12 || day < 1 || day > 31)
        return HM_ERR_INVALID;
    struct tm tm = { .tm_year = year - 1900, .tm_mon = month - 1, .tm_mday = day };
    time_t seconds = timegm(&tm);
    /* timegm normalizes 2024-02-30 to 2024-03-01; a changed date means it did not exist. */
    if (tm.tm_year != year - 1900 || tm.tm_mon != month - 1 || tm.tm_mday != day)
        return HM_ERR_INVALID;
    *seconds_out = (int64_t)seconds;
    return HM_OK;
}

void date_format(int64_t seconds, char *out, size_t size)
{
    if (seconds == 0) {
        snprintf(out, size, "-");
        return;
    }
    time_t at = (time_t)seconds;
    struct tm tm;
    gmtime_r(&at, &tm);
    strftime(out, size, "%Y-%m-%d", &tm);
}
