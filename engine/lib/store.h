/*
 * The ledger as the ingest server's store: key lookups and the durable
 * batch commit, wired as server hooks.
 */
#ifndef HM_ENGINE_STORE_H
#define HM_ENGINE_STORE_H

#include "common/log.h"
#include "ingest/server.h"
#include "rollup/ledger.h"

struct store {
    struct ledger *ledger;
    struct log_limit conflict_log;
};

/* Fills `hooks` so that the server stores into `store->ledger`. */
void store_hooks(struct store *store, struct server_hooks *hooks);

#endif
