/*
 * Periods (YYYY-MM) and dates (YYYY-MM-DD) of the command line from hostile
 * text. What parses must format back to the same text, so that no other
 * spelling (spaces, signs, single digits, day 31 of a short month) passes.
 */
#include "fuzz_common.h"

#include "common/status.h"
#include "engine/lib/date.h"
#include "ingest/event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64)
        return 0;
    char *text = fuzz_string(data, size);

    uint32_t period = 0;
    if (period_parse(text, &period) == HM_OK) {
        char formatted[16];
        snprintf(formatted, sizeof formatted, "%04u-%02u", period / 100, period % 100);
        FUZZ_CHECK(strcmp(formatted, text) == 0, "period %u formats as %s", period, formatted);
        int64_t start_us = period_start_us(period);
        FUZZ_CHECK(event_period_of(start_us) == period, "period %u starts in another period",
                   period);
        FUZZ_CHECK(period_start_us(period_next(period)) > start_us, "period %u does not end",
                   period);
    }

    int64_t seconds = 0;
    if (date_parse(text, &seconds) == HM_OK) {
        char formatted[DATE_TEXT_SIZE];
        date_format(seconds, formatted, sizeof formatted);
        FUZZ_CHECK(strcmp(formatted, text) == 0, "date %lld formats as %s", (long long)seconds,
                   formatted);
        FUZZ_CHECK(seconds % 86400 == 0, "date %s is not a midnight", text);
    }
    free(text);
    return 0;
}
