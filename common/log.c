#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum log_level log_level_current = LOG_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int log_set_level(const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            log_level_current = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_write(enum log_level level, const char *module, const char *fmt, ...)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);

    char line[1024];
    int used = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                        tm.tm_sec, now.tv_nsec / 1000000, level_names[level], module);
    if (used < 0 || (size_t)used >= sizeof line)
        used = 0;

    va_list args;
    va_start(args, fmt);
    vsnprintf(line + used, sizeof line - (size_t)used, fmt, args);
    va_end(args);
    fprintf(stderr, "%s\n", line);
}

int log_limit_pass(struct log_limit *limit, uint64_t *suppressed_out)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - limit->window_start_s >= (int64_t)limit->window_s) {
        limit->window_start_s = now.tv_sec;
        limit->passed = 0;
    }
    if (limit->passed >= limit->burst) {
        limit->suppressed++;
        return 0;
    }
    limit->passed++;
    *suppressed_out = limit->suppressed;
    limit->suppressed = 0;
    return 1;
}
