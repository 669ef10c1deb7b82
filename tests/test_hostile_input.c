/*
 * Regression tests for inputs that the fuzz targets of fuzz/ or their
 * reviews found. Each input is also in tests/corpus/<target>/, so that the
 * targets start from it.
 */
#include "common/status.h"
#include "engine/lib/date.h"
#include "ingest/event.h"

#include <criterion/criterion.h>
#include <criterion/new/assert.h>

/* Criterion's `str` tag takes `char *`, so const strings pass through this cast. */
#define CSTR(text) ((char *)(text))

/*
 * 1970-01-01 is Unix time 0, which service dates, credit and key expiry use
 * for "none": found by fuzz_dates (tests/corpus/fuzz_dates/regression-1970-01-01).
 */
Test(date_parse, rejects_unix_epoch_day)
{
    int64_t seconds = 42;
    cr_assert(eq(int, date_parse("1970-01-01", &seconds), HM_ERR_INVALID));
    cr_assert(eq(i64, seconds, 42));
    cr_assert(eq(int, date_parse("1999-12-31", &seconds), HM_ERR_INVALID));
    cr_assert(eq(int, date_parse("2000-01-01", &seconds), HM_OK));
    cr_assert(eq(i64, seconds, 946684800));
}

/* The strptime-based parser that meterctl had accepted these spellings. */
Test(date_parse, rejects_other_spellings)
{
    static const char *const invalid[] = {
        " 2024-1-5", "2024-06-1", "2024-6-01", "0-01-01",     "+2024-06-01", "2024-06-01 ",
        "2024/06/01", "20240601",  "2024-06-01T00:00:00Z",    "",            "2024-02-30",
        "2023-02-29", "2024-13-01", "2024-00-10", "2024-04-31", "９９９９-01-01",
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        int64_t seconds = 0;
        cr_assert(eq(int, date_parse(invalid[i], &seconds), HM_ERR_INVALID), "\"%s\" parsed",
                  invalid[i]);
    }
}

Test(date_parse, formats_back)
{
    static const char *const valid[] = { "2024-02-29", "2023-11-30", "9999-12-31", "2000-01-01" };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        int64_t seconds = 0;
        cr_assert(eq(int, date_parse(valid[i], &seconds), HM_OK), "\"%s\" rejected", valid[i]);
        cr_assert(eq(i64, seconds % 86400, 0));
        char text[DATE_TEXT_SIZE];
        date_format(seconds, text, sizeof text);
        cr_assert(eq(str, text, CSTR(valid[i])));
    }
}
