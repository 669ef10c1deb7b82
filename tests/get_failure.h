/*
 * Makes the next mdb_get of a chosen key fail once with MDB_CORRUPTED, as a
 * damaged page would. A test binary that includes this file is linked with
 * -Wl,--wrap=mdb_get (tests/CMakeLists.txt), so that the ledger's own reads
 * go through __wrap_mdb_get.
 */
#ifndef HM_TEST_GET_FAILURE_H
#define HM_TEST_GET_FAILURE_H

#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdint.h>
#include <string.h>

#include "rollup/ledger.h"

int __real_mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int __wrap_mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);

/* The key whose next read fails, while get_failure_armed. */
static uint8_t get_failure_key[64];
static size_t get_failure_key_size;
static int get_failure_armed;
/* Matching reads that pass before the one that fails. */
static int get_failure_skip;

int __wrap_mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
{
    if (get_failure_armed && key->mv_size == get_failure_key_size &&
        memcmp(key->mv_data, get_failure_key, get_failure_key_size) == 0) {
        if (get_failure_skip > 0) {
            get_failure_skip--;
        } else {
            get_failure_armed = 0;
            return MDB_CORRUPTED;
        }
    }
    return __real_mdb_get(txn, dbi, key, data);
}

/* Arms the failure of the next mdb_get of `key` (at most 64 bytes), in any table. */
static inline void get_failure_arm(const void *key, size_t key_size)
{
    cr_assert_leq(key_size, sizeof get_failure_key);
    memcpy(get_failure_key, key, key_size);
    get_failure_key_size = key_size;
    get_failure_skip = 0;
    get_failure_armed = 1;
}

/*
 * Arms the failure of the next read keyed by a tenant's period: the tenant
 * id, then the period as a big-endian uint32 (the periods and invoices tables).
 */
static inline void get_failure_arm_period(const uint8_t tenant_id[UUID_SIZE], uint32_t period)
{
    uint8_t key[UUID_SIZE + 4];
    memcpy(key, tenant_id, UUID_SIZE);
    key[UUID_SIZE] = (uint8_t)(period >> 24);
    key[UUID_SIZE + 1] = (uint8_t)(period >> 16);
    key[UUID_SIZE + 2] = (uint8_t)(period >> 8);
    key[UUID_SIZE + 3] = (uint8_t)period;
    get_failure_arm(key, sizeof key);
}

#endif
