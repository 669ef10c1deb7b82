#include "apikey.h"

#include "common/status.h"
#include "common/uuid.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static const char signing_label[] = "harpoon-meter frame signing v1";

int apikey_parse(const char *text, struct apikey *key)
{
    if (strlen(text) != APIKEY_TEXT_SIZE - 1 || memcmp(text, "hmk_", 4) != 0 || text[20] != '_')
        return HM_ERR_INVALID;
    uint8_t id_bytes[8];
    if (hex_decode(text + 4, id_bytes, 8) != HM_OK ||
        hex_decode(text + 21, key->secret, APIKEY_SECRET_SIZE) != HM_OK)
        return HM_ERR_INVALID;
    key->key_id = 0;
    for (int i = 0; i < 8; i++)
        key->key_id = key->key_id << 8 | id_bytes[i];
    return HM_OK;
}

void apikey_format(const struct apikey *key, char out[APIKEY_TEXT_SIZE])
{
    char secret_hex[2 * APIKEY_SECRET_SIZE + 1];
    hex_encode(key->secret, APIKEY_SECRET_SIZE, secret_hex);
    snprintf(out, APIKEY_TEXT_SIZE, "hmk_%016" PRIx64 "_%s", key->key_id, secret_hex);
}

int apikey_generate(struct apikey *key)
{
    do {
        if (getrandom(&key->key_id, sizeof key->key_id, 0) != sizeof key->key_id)
            return HM_ERR_IO;
    } while (key->key_id == 0);
    if (getrandom(key->secret, APIKEY_SECRET_SIZE, 0) != APIKEY_SECRET_SIZE)
        return HM_ERR_IO;
    return HM_OK;
}

void apikey_signing_key(const uint8_t secret[APIKEY_SECRET_SIZE], uint8_t out[32])
{
    unsigned int size = 0;
    HMAC(EVP_sha256(), secret, APIKEY_SECRET_SIZE, (const uint8_t *)signing_label,
         sizeof signing_label - 1, out, &size);
}

void apikey_secret_hash(const uint8_t secret[APIKEY_SECRET_SIZE], uint8_t out[32])
{
    unsigned int size = 0;
    EVP_Digest(secret, APIKEY_SECRET_SIZE, out, &size, EVP_sha256(), NULL);
}
