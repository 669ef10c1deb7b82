/*
 * The master key of a data directory, as meterd and meterctl find it: the
 * file given with --master-key, else $METER_MASTER_KEY, else DIR/master.key.
 */
#ifndef HM_MASTER_SETUP_H
#define HM_MASTER_SETUP_H

#include "rollup/ledger.h"

#include <stddef.h>

#define MASTER_KEY_FILE_NAME "master.key"

struct master_setup_result {
    int created;    /* the file was missing and was created */
    size_t wrapped; /* signing keys stored as they were, now wrapped */
    /*
     * Set when the key could not be created or the keys not wrapped (a full
     * or read-only disk) and `required` was 0: the ledger then goes on with
     * the keys as they are.
     */
    char warning[512];
};

/*
 * Reads the master key file at `path` and gives the key to the ledger.
 * When the file does not exist and no key of the ledger is wrapped, it is
 * created. Then every signing key stored as is gets wrapped. `error`
 * describes each failure with the file and the fix. The file can be
 * missing while keys are wrapped, unreadable, of another shape or readable
 * by others, and keys can be wrapped with another master key. A failure to
 * create the file or to wrap the keys is an error only if `required`.
 */
int master_setup(struct ledger *ledger, const char *path, int required,
                 struct master_setup_result *result, char *error, size_t error_size);

#endif
