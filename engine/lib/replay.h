/*
 * `meterctl replay`: turns the public inference traces (engine/lib/trace.h)
 * into signed usage events of several tenants and sends them to meterd.
 * The rule that maps rows to tenants, models and events is deterministic and
 * written out in docs/REPLAY.md and in the command's --help text.
 */
#ifndef HM_REPLAY_H
#define HM_REPLAY_H

#include <stdint.h>

#include "common/uuid.h"
#include "trace.h"

/* Namespace of every replay event id: uuid_from_name(namespace, name). */
#define REPLAY_NAMESPACE "e8054f95-64a2-4797-9857-f3e8bde3af9a"
/* Tenants in one keys file; each keeps a frame buffer of up to about 60 KiB. */
#define REPLAY_TENANTS_MAX 256
/* Tokens that one GPU serves in one minute, for the derived GPU allocations. */
#define REPLAY_GPU_TOKENS_PER_MINUTE 250000
/* Length of a storage window in seconds. */
#define REPLAY_STORAGE_WINDOW_S 300
/* Base stored bytes of tenant index i: (i + 1) times this. */
#define REPLAY_STORAGE_BASE_BYTES UINT64_C(50000000000)
/* Stored and transferred bytes per token. */
#define REPLAY_BYTES_PER_TOKEN 4

/* Exit statuses of replay_command. */
enum replay_exit {
    REPLAY_EXIT_OK = 0,
    REPLAY_EXIT_REJECTED = 1, /* a frame was rejected, an event conflicted, or delivery failed */
    REPLAY_EXIT_USAGE = 2,    /* bad options, keys file or trace file */
};

/* The tenant and model that the rule gives a row. */
struct replay_assignment {
    uint64_t hash; /* first 8 bytes of SHA-256("<source>:<row>"), big-endian */
    uint32_t tenant_index;
    const char *model; /* static string */
};

/*
 * Applies the tenant and model rule to row `row` (1-based) of `source`:
 * tenant_index = hash mod tenant_count, and the model by the parity of
 * hash / tenant_count. tenant_count is 1..REPLAY_TENANTS_MAX.
 */
void replay_assign(enum trace_source source, uint64_t row, uint32_t tenant_count,
                   struct replay_assignment *out);

/*
 * Runs the replay command. argv[0] is "replay"; the options are described by
 * `replay --help`. Writes progress to stderr about once a second (unless
 * --quiet) and one summary line to stdout. Never prints a key, a secret or a
 * signing key. Runs on the calling thread and blocks until done. Returns a
 * process exit status from enum replay_exit.
 */
int replay_command(int argc, char **argv);

#endif
