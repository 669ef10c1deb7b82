/*
 * Shared body of the trace targets: the input becomes an in-memory file
 * (memfd) that trace_open and trace_next read like a trace on disk.
 */
#ifndef HM_FUZZ_TRACE_H
#define HM_FUZZ_TRACE_H

#include "fuzz_common.h"

#include "common/status.h"
#include "engine/lib/trace.h"

#include <sys/mman.h>
#include <unistd.h>

/* Rows read per input: more than any input of the default size limit can hold. */
#define FUZZ_TRACE_ROWS_MAX 100000

static inline void fuzz_trace(enum trace_source source, const uint8_t *data, size_t size)
{
    int fd = memfd_create("trace", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    if (size > 0 && write(fd, data, size) != (ssize_t)size)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct trace_reader *reader = NULL;
    char error[TRACE_ERROR_SIZE];
    int rc = trace_open(path, source, &reader, error, sizeof error);
    if (rc == HM_OK) {
        struct trace_row row;
        int64_t previous_us = INT64_MIN;
        for (int i = 0; i < FUZZ_TRACE_ROWS_MAX; i++) {
            rc = trace_next(reader, &row);
            if (rc != 1)
                break;
            FUZZ_CHECK(row.timestamp_us >= previous_us, "timestamps went back at row %llu",
                       (unsigned long long)row.row);
            FUZZ_CHECK(row.cached_input_tokens <= row.input_tokens,
                       "cached tokens above input tokens at row %llu",
                       (unsigned long long)row.row);
            previous_us = row.timestamp_us;
        }
        if (rc < 0)
            FUZZ_CHECK(trace_error(reader)[0] != '\0', "an error without a message");
        trace_close(reader);
    } else {
        FUZZ_CHECK(error[0] != '\0', "trace_open failed without a message");
    }
    close(fd);
}

#endif
