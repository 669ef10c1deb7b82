/*
 * The master key: 32 random bytes in a file of their own, which wrap the
 * frame signing keys that the ledger stores. A copy of the ledger without
 * the file cannot sign frames. A signing key is wrapped with AES-256-GCM
 * under the master key, bound to its key id and tenant, so that a wrapped
 * key moved to another record does not unwrap.
 *
 * File: 64 hex digits and an optional newline, readable by its owner only.
 */
#ifndef HM_MASTERKEY_H
#define HM_MASTERKEY_H

#include <stddef.h>
#include <stdint.h>

#define MASTER_KEY_SIZE 32
#define MASTER_KEY_ID_SIZE 8
#define MASTER_KEY_ID_TEXT_SIZE (2 * MASTER_KEY_ID_SIZE + 1)
/* A wrapped signing key: nonce (12 bytes), ciphertext (32), tag (16). */
#define MASTER_KEY_WRAP_SIZE (12 + 32 + 16)
/* Binding of a wrapped key: the key id (8 bytes, big-endian) and the tenant id. */
#define MASTER_KEY_BINDING_SIZE (8 + 16)

struct master_key {
    uint8_t key[MASTER_KEY_SIZE];
    /* Names the key in records and messages: the first bytes of a SHA-256 of it. */
    uint8_t id[MASTER_KEY_ID_SIZE];
};

/*
 * Reads a master key file. Returns HM_ERR_NOT_FOUND when it does not exist,
 * HM_ERR_INVALID for a file of another shape or one that others can read,
 * and HM_ERR_IO when it cannot be read. On failure, `error` describes the
 * cause and the fix.
 */
int master_key_read(const char *path, struct master_key *out, char *error, size_t error_size);

/*
 * Creates a master key file with a new random key, mode 0600. Returns
 * HM_ERR_EXISTS when the file exists, so that two processes never replace
 * each other's key.
 */
int master_key_create(const char *path, struct master_key *out, char *error, size_t error_size);

void master_key_id_text(const uint8_t id[MASTER_KEY_ID_SIZE], char out[MASTER_KEY_ID_TEXT_SIZE]);

/* Wraps a signing key bound to `binding`; HM_ERR_IO when the random source or cipher fails. */
int master_key_wrap(const struct master_key *master, const uint8_t binding[MASTER_KEY_BINDING_SIZE],
                    const uint8_t signing_key[32], uint8_t out[MASTER_KEY_WRAP_SIZE]);

/* Unwraps a signing key; HM_ERR_STORAGE when the tag does not match (other key, binding or bytes).
 */
int master_key_unwrap(const struct master_key *master,
                      const uint8_t binding[MASTER_KEY_BINDING_SIZE],
                      const uint8_t wrapped[MASTER_KEY_WRAP_SIZE], uint8_t signing_key[32]);

/* Overwrites the key in memory. */
void master_key_clear(struct master_key *master);

#endif
