#include "uuid.h"

#include "status.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *text, uint8_t *out, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        int high = hex_digit(text[2 * i]);
        if (high < 0)
            return HM_ERR_INVALID;
        int low = hex_digit(text[2 * i + 1]);
        if (low < 0)
            return HM_ERR_INVALID;
        out[i] = (uint8_t)(high << 4 | low);
    }
    return HM_OK;
}

void hex_encode(const uint8_t *bytes, size_t size, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < size; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * size] = '\0';
}

int uuid_parse(const char *text, uint8_t out[UUID_SIZE])
{
    if (strlen(text) != 36)
        return HM_ERR_INVALID;
    char compact[33];
    size_t used = 0;
    for (size_t i = 0; i < 36; i++) {
        int dash_position = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash_position != (text[i] == '-'))
            return HM_ERR_INVALID;
        if (!dash_position)
            compact[used++] = text[i];
    }
    compact[used] = '\0';
    return hex_decode(compact, out, UUID_SIZE);
}

void uuid_format(const uint8_t id[UUID_SIZE], char out[UUID_TEXT_SIZE])
{
    char hex[33];
    hex_encode(id, UUID_SIZE, hex);
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
}

int uuid_random(uint8_t id[UUID_SIZE])
{
    if (getrandom(id, UUID_SIZE, 0) != UUID_SIZE)
        return HM_ERR_IO;
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
    return HM_OK;
}

void uuid_from_name(const uint8_t namespace_id[UUID_SIZE], const char *name,
                    uint8_t out[UUID_SIZE])
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* An allocation failure here leaves no way to return an error, so it aborts. */
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, namespace_id, UUID_SIZE) != 1 ||
        EVP_DigestUpdate(ctx, name, strlen(name)) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &digest_size) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    memcpy(out, digest, UUID_SIZE);
    out[6] = (uint8_t)((out[6] & 0x0f) | 0x80);
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);
}
