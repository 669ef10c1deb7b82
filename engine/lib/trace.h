/*
 * Readers for the public LLM inference traces bundled under data/traces/.
 *
 * Three sources, each one request per row:
 * - azure-code and azure-conv: the Azure LLM inference CSVs of 2023
 *   (`TIMESTAMP,ContextTokens,GeneratedTokens`, CRLF line endings, no line
 *   ending after the last row, timestamps `YYYY-MM-DD HH:MM:SS.fffffff`).
 *   The files do not state a time zone, so timestamps are read as UTC. They
 *   are parsed as decimal digits, never through a double, and the seventh
 *   fractional digit (100 ns) is dropped, so the microsecond is truncated.
 * - mooncake: the Mooncake FAST'25 conversation JSONL (`timestamp` in
 *   milliseconds from the start of the trace, `input_length`,
 *   `output_length`, `hash_ids`). The trace has no date, so its time 0 is
 *   anchored at TRACE_MOONCAKE_EPOCH_US, 2023-11-16T18:00:00Z, the hour in
 *   which the Azure traces start.
 *
 * Mooncake rows also get cached-input tokens from one unbounded prefix cache
 * over the rows read so far. A row's cached tokens are 512 for each LEADING
 * hash id that appeared in any earlier row, counting stops at the first id
 * never seen, and the result is capped at the row's input_length.
 *
 * Timestamps must not decrease within a file, because replay aggregates rows
 * per minute as it reads them. A reader is used by one thread at a time.
 */
#ifndef HM_TRACE_H
#define HM_TRACE_H

#include <stddef.h>
#include <stdint.h>

enum trace_source {
    TRACE_AZURE_CODE = 0,
    TRACE_AZURE_CONV = 1,
    TRACE_MOONCAKE = 2,
    TRACE_SOURCE_COUNT = 3,
};

/* Unix time of 2023-11-16T18:00:00Z in microseconds: Mooncake's time 0. */
#define TRACE_MOONCAKE_EPOCH_US (INT64_C(1700157600) * 1000000)
/* Tokens in one Mooncake prefix block (one hash id), as the trace defines it. */
#define TRACE_MOONCAKE_BLOCK_TOKENS 512
/*
 * Maximum line length in bytes. The longest bundled line has 2,054 bytes, and
 * this limit leaves room for a row of TRACE_HASH_IDS_MAX ids.
 */
#define TRACE_LINE_MAX (64 * 1024)
/* Maximum hash ids on one Mooncake row (2 Mi prompt tokens); the bundled trace has at most 247. */
#define TRACE_HASH_IDS_MAX 4096
/*
 * Maximum distinct hash ids in the prefix cache (the bundled trace has
 * 182,790). The table then takes at most 64 MiB.
 */
#define TRACE_CACHE_BLOCKS_MAX (4u * 1024 * 1024)
/* Size of the error message buffer of a reader, with the terminating NUL. */
#define TRACE_ERROR_SIZE 512

/* One request of a trace. */
struct trace_row {
    enum trace_source source;
    uint64_t row;          /* 1-based data row number; the CSV header is not counted */
    int64_t timestamp_us;  /* microseconds since 1970-01-01T00:00:00Z */
    uint64_t input_tokens; /* all prompt tokens, cached ones included */
    uint64_t output_tokens;
    uint64_t cached_input_tokens; /* Mooncake only; 0 for Azure */
};

struct trace_reader;

/* Returns "azure-code", "azure-conv", "mooncake", or "unknown". */
const char *trace_source_name(enum trace_source source);

/*
 * Detects the source of a trace file from its name. A `.jsonl` file is
 * mooncake. A `.csv` file whose base name contains "code" is azure-code, and
 * one whose base name contains "conv" is azure-conv. Returns HM_ERR_INVALID
 * for any other name, including a CSV whose name contains both or neither.
 */
int trace_source_detect(const char *path, enum trace_source *source_out);

/*
 * Opens a trace file and, for a CSV, reads and checks its header line.
 * On success *reader_out is the caller's to release with trace_close.
 * Returns HM_ERR_IO when the file cannot be opened or read, HM_ERR_INVALID
 * for a bad header, HM_ERR_NOMEM; `error` (size error_size) then contains a
 * message naming the file.
 */
int trace_open(const char *path, enum trace_source source, struct trace_reader **reader_out,
               char *error, size_t error_size);

/*
 * Reads the next row into *row. Returns 1 for a row and 0 at the end of the
 * file. Errors: HM_ERR_INVALID for a malformed line or a timestamp that goes
 * backwards, HM_ERR_IO for a read error, HM_ERR_FULL when the prefix cache
 * reaches its limit, HM_ERR_NOMEM. After an error,
 * trace_error names the file, the line number and the bad value, and every
 * later call returns the same error.
 */
int trace_next(struct trace_reader *reader, struct trace_row *row);

/* Returns the message of the last error (empty when none), owned by the reader. */
const char *trace_error(const struct trace_reader *reader);

/* Closes the file and frees the reader; accepts NULL. */
void trace_close(struct trace_reader *reader);

#endif
