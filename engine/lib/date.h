/* Calendar dates of the command line (YYYY-MM-DD, UTC midnight). */
#ifndef HM_ENGINE_DATE_H
#define HM_ENGINE_DATE_H

#include <stddef.h>
#include <stdint.h>

/* Size of "YYYY-MM-DD" with its NUL. */
#define DATE_TEXT_SIZE 11

/*
 * First year of a date. Records store 0 for "no date", so 1970-01-01 (Unix
 * time 0) cannot be a date, and no billing date lies before 2000.
 */
#define DATE_YEAR_MIN 2000

/*
 * Parses exactly ten characters "YYYY-MM-DD" (years DATE_YEAR_MIN to 9999,
 * a day that the month has) into the Unix time of that midnight UTC.
 * Returns HM_OK or HM_ERR_INVALID for anything else: signs, spaces, other
 * lengths.
 */
int date_parse(const char *text, int64_t *seconds_out);

/* Writes the UTC date of a Unix time as YYYY-MM-DD, or "-" for 0. */
void date_format(int64_t seconds, char *out, size_t size);

#endif
