/*
 * The ledger as the ingest server's store: key lookups and the durable
 * batch commit, wired as server hooks.
 */
#ifndef HM_ENGINE_STORE_H
#define HM_ENGINE_STORE_H

#include "common/log.h"
#include "ingest/server.h"
#include "rollup/ledger.h"

struct rollup_deltas;

/* Batches of a server that can carry state of the store; the server has two. */
#define STORE_BATCH_STATES_MAX 8

struct store {
    struct ledger *ledger;
    struct log_limit conflict_log;
    /* Summed rollup changes of each batch, made by prepare on the server's loop. */
    struct rollup_deltas *batch_states[STORE_BATCH_STATES_MAX];
    size_t batch_state_count;
    /* Changes of the commit's duplicates and conflicts, taken away again (commit thread). */
    struct rollup_deltas *not_stored;
};

/*
 * Fills `hooks` so that the server stores into `store->ledger`. Call
 * store_release after server_run has returned.
 */
void store_hooks(struct store *store, struct server_hooks *hooks);

/* Frees what the hooks allocated. */
void store_release(struct store *store);

/* Reads the ledger's index of event ids into the server's form, for its stats file. */
void store_index_read(const struct store *store, struct batch_index *out);

#endif
