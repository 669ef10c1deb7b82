/*
 * crash_fill: writes a large ledger quickly through the ledger API, for
 * measuring how long meterd takes to start on it.
 *
 *   crash_fill DATA_DIR EVENTS [TENANTS]
 *
 * Creates TENANTS tenants (default 4) with one key each, appends EVENTS
 * crash-test events spread over them and three months, 50,000 events per
 * transaction, and writes the keys as "TENANT_ID NAME KEY" lines to
 * DATA_DIR/keys.txt.
 */
#include "crash_events.h"

#include "common/status.h"
#include "ingest/apikey.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVENTS_PER_COMMIT 50000

static int tenants_create(struct ledger *ledger, const char *data_dir, unsigned count,
                          uint8_t (*ids)[UUID_SIZE])
{
    char path[4096];
    snprintf(path, sizeof path, "%s/keys.txt", data_dir);
    FILE *keys = fopen(path, "w");
    if (keys == NULL)
        return HM_ERR_IO;
    for (unsigned i = 0; i < count; i++) {
        struct tenant tenant = { .active = 1, .created_s = (int64_t)time(NULL) };
        struct apikey key;
        int rc = uuid_random(tenant.id);
        snprintf(tenant.name, sizeof tenant.name, "fill-%u", i);
        if (rc == HM_OK)
            rc = ledger_tenant_create(ledger, &tenant);
        if (rc == HM_OK)
            rc = apikey_generate(&key);
        struct key_record record = { .key_id = key.key_id, .status = KEY_ACTIVE };
        memcpy(record.tenant_id, tenant.id, UUID_SIZE);
        apikey_signing_key(key.secret, record.signing_key);
        apikey_secret_hash(key.secret, record.secret_hash);
        if (rc == HM_OK)
            rc = ledger_key_put(ledger, &record);
        if (rc != HM_OK) {
            fclose(keys);
            return rc;
        }
        char id_text[UUID_TEXT_SIZE], key_text[APIKEY_TEXT_SIZE];
        uuid_format(tenant.id, id_text);
        apikey_format(&key, key_text);
        fprintf(keys, "%s %s %s\n", id_text, tenant.name, key_text);
        memcpy(ids[i], tenant.id, UUID_SIZE);
    }
    return fclose(keys) == 0 ? HM_OK : HM_ERR_IO;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: crash_fill DATA_DIR EVENTS [TENANTS]\n");
        return 2;
    }
    char *end = NULL;
    unsigned long long events = strtoull(argv[2], &end, 10);
    unsigned long tenant_count = argc == 4 ? strtoul(argv[3], NULL, 10) : 4;
    if (*end != '\0' || events == 0 || tenant_count == 0 || tenant_count > CRASH_SENDERS_MAX) {
        fprintf(stderr, "crash_fill: invalid EVENTS \"%s\" or TENANTS: expected EVENTS >= 1 "
                "and 1 to %d tenants\n", argv[2], CRASH_SENDERS_MAX);
        return 2;
    }
    struct ledger *ledger = NULL;
    if (ledger_open(&ledger, argv[1], NULL) != HM_OK)
        return 1;
    static uint8_t ids[CRASH_SENDERS_MAX][UUID_SIZE];
    int rc = tenants_create(ledger, argv[1], (unsigned)tenant_count, ids);
    for (unsigned long long done = 0; rc == HM_OK && done < events;) {
        struct ledger_txn *txn = NULL;
        rc = ledger_begin(ledger, &txn);
        for (unsigned i = 0; rc == HM_OK && i < EVENTS_PER_COMMIT && done < events; i++, done++) {
            /* Sender number = tenant index, so crash_check could read this ledger too. */
            unsigned sender = (unsigned)(done % tenant_count);
            struct event event;
            uint8_t record[RECORD_SIZE_MAX];
            crash_event(sender, done / tenant_count, &event);
            memcpy(event.tenant_id, ids[sender], UUID_SIZE);
            int size = record_encode(&event, record);
            int outcome = size > 0 ? ledger_append(txn, &event, record, (size_t)size)
                                   : HM_ERR_INVALID;
            if (outcome < 0)
                rc = outcome;
        }
        if (rc == HM_OK)
            rc = ledger_commit(txn);
        else if (txn != NULL)
            ledger_abort(txn);
    }
    ledger_close(ledger);
    if (rc != HM_OK) {
        fprintf(stderr, "crash_fill: failed: %s\n", hm_status_str(rc));
        return 1;
    }
    printf("crash_fill: %llu events for %lu tenants in %s\n", events, tenant_count, argv[1]);
    return 0;
}
