/*
 * Structured, levelled logging to stderr.
 *
 * Lines read `LEVEL module: event key=value ...`. The level is checked before
 * formatting. Never pass a secret or customer payload to these functions.
 */
#ifndef HM_LOG_H
#define HM_LOG_H

#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern enum log_level log_level_current;

/* Sets the level from a name (error, warn, info, debug); returns -1 on an unknown name. */
int log_set_level(const char *name);

void log_write(enum log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(level, module, ...)                                                                 \
    do {                                                                                           \
        if ((level) <= log_level_current)                                                          \
            log_write((level), (module), __VA_ARGS__);                                             \
    } while (0)

#define log_error(module, ...) LOG_AT(LOG_ERROR, module, __VA_ARGS__)
#define log_warn(module, ...) LOG_AT(LOG_WARN, module, __VA_ARGS__)
#define log_info(module, ...) LOG_AT(LOG_INFO, module, __VA_ARGS__)
#define log_debug(module, ...) LOG_AT(LOG_DEBUG, module, __VA_ARGS__)

/*
 * Rate limiter for repeated log lines: at most `burst` lines per window of
 * `window_s` seconds; the lines suppressed in a window are reported with the
 * next line that passes.
 */
struct log_limit {
    uint32_t burst;
    uint32_t window_s;
    int64_t window_start_s;
    uint32_t passed;
    uint64_t suppressed;
};

#define LOG_LIMIT_INIT(burst_lines, window_seconds) { (burst_lines), (window_seconds), 0, 0, 0 }

/*
 * Returns 1 when a line may be written now, 0 when it is suppressed. When it
 * returns 1, *suppressed_out receives the number of lines dropped since the
 * last line that passed.
 */
int log_limit_pass(struct log_limit *limit, uint64_t *suppressed_out);

#endif
