/*
 * API keys. A key reads `hmk_<16 hex: key id>_<64 hex: secret>`. The key id
 * is public and travels in every frame. The secret is shown once when the key
 * is created and never stored: the server keeps only its SHA-256 digest and
 * the frame signing key derived from it.
 */
#ifndef HM_APIKEY_H
#define HM_APIKEY_H

#include <stdint.h>

#define APIKEY_SECRET_SIZE 32
#define APIKEY_TEXT_SIZE (4 + 16 + 1 + 64 + 1) /* with the terminating NUL */

struct apikey {
    uint64_t key_id;
    uint8_t secret[APIKEY_SECRET_SIZE];
};

/* Parses the text form; returns HM_ERR_INVALID on any other shape. */
int apikey_parse(const char *text, struct apikey *key);

void apikey_format(const struct apikey *key, char out[APIKEY_TEXT_SIZE]);

/* Creates a key with random id and secret; returns HM_ERR_IO when the CSPRNG fails. */
int apikey_generate(struct apikey *key);

/* Derives the frame signing key: HMAC-SHA256(secret, "harpoon-meter frame signing v1"). */
void apikey_signing_key(const uint8_t secret[APIKEY_SECRET_SIZE], uint8_t out[32]);

/* Computes SHA-256(secret), the digest stored to recognize the key. */
void apikey_secret_hash(const uint8_t secret[APIKEY_SECRET_SIZE], uint8_t out[32]);

#endif
