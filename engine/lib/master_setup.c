#include "engine/lib/master_setup.h"

#include "common/status.h"

#include <stdio.h>
#include <string.h>

/* Creates the file when no key of the ledger is wrapped; HM_ERR_NOT_FOUND when some are. */
static int master_create(struct ledger *ledger, const char *path, struct master_key *master,
                         struct master_setup_result *result, char *error, size_t error_size)
{
    size_t count = 0;
    uint8_t first[MASTER_KEY_ID_SIZE];
    int rc = ledger_keys_wrapped(ledger, &count, first);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot read the keys of the ledger: %s", hm_status_str(rc));
        return rc;
    }
    if (count > 0) {
        char id[MASTER_KEY_ID_TEXT_SIZE];
        master_key_id_text(first, id);
        snprintf(error, error_size,
                 "the master key file %s is missing, and %zu keys of the "
                 "ledger are wrapped with master key %s: restore that file, or give its path "
                 "with --master-key",
                 path, count, id);
        return HM_ERR_NOT_FOUND;
    }
    rc = master_key_create(path, master, error, error_size);
    if (rc == HM_OK)
        result->created = 1;
    else if (rc == HM_ERR_EXISTS) /* another process created it first */
        rc = master_key_read(path, master, error, error_size);
    return rc;
}

int master_setup(struct ledger *ledger, const char *path, int required,
                 struct master_setup_result *result, char *error, size_t error_size)
{
    memset(result, 0, sizeof *result);
    struct master_key master;
    int rc = master_key_read(path, &master, error, error_size);
    if (rc == HM_ERR_NOT_FOUND) {
        rc = master_create(ledger, path, &master, result, error, error_size);
        if ((rc == HM_ERR_IO || rc == HM_ERR_FULL) && !required) {
            snprintf(result->warning, sizeof result->warning,
                     "%s; the keys stay as they are "
                     "until a start that can write it",
                     error);
            return HM_OK;
        }
    }
    if (rc != HM_OK)
        return rc;
    ledger_master_key_set(ledger, &master);
    uint8_t master_id[MASTER_KEY_ID_SIZE];
    memcpy(master_id, master.id, sizeof master_id);
    master_key_clear(&master);

    struct ledger_key_wrap_counts counts;
    rc = ledger_keys_wrap(ledger, NULL, &counts);
    if (rc != HM_OK) {
        snprintf(error, error_size, "cannot wrap the signing keys stored as they are: %s",
                 hm_status_str(rc));
        if (required)
            return rc;
        snprintf(result->warning, sizeof result->warning,
                 "%s; they stay as they are until a "
                 "start that can write them",
                 error);
        return HM_OK;
    }
    result->wrapped = counts.wrapped;
    if (counts.foreign > 0) {
        char theirs[MASTER_KEY_ID_TEXT_SIZE], ours[MASTER_KEY_ID_TEXT_SIZE];
        master_key_id_text(counts.foreign_id, theirs);
        master_key_id_text(master_id, ours);
        snprintf(error, error_size,
                 "%zu keys of the ledger are wrapped with master key %s, not "
                 "with %s of %s: give the master key file that wrapped them with --master-key, "
                 "or rewrap them with `meterctl key rewrap --old-master-key FILE`",
                 counts.foreign, theirs, ours, path);
        return HM_ERR_STATE;
    }
    return HM_OK;
}
