#include "ingest/masterkey.h"

#include "common/status.h"
#include "common/uuid.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static const char id_label[] = "harpoon-meter master key id v1";

/* Derives the key's id; HM_ERR_IO when OpenSSL fails (it cannot allocate). */
static int key_id_derive(struct master_key *master)
{
    uint8_t digest[32];
    unsigned int size = 0;
    EVP_MD_CTX *context = EVP_MD_CTX_new();
    int ok = context != NULL && EVP_DigestInit_ex(context, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(context, id_label, sizeof id_label - 1) == 1 &&
             EVP_DigestUpdate(context, master->key, MASTER_KEY_SIZE) == 1 &&
             EVP_DigestFinal_ex(context, digest, &size) == 1;
    EVP_MD_CTX_free(context);
    if (!ok)
        return HM_ERR_IO;
    memcpy(master->id, digest, MASTER_KEY_ID_SIZE);
    return HM_OK;
}

/* Derives the id of a key just read from or written to `path`; clears the key on failure. */
static int key_id_set(struct master_key *master, const char *path, char *error, size_t error_size)
{
    if (key_id_derive(master) == HM_OK)
        return HM_OK;
    master_key_clear(master);
    snprintf(error, error_size, "cannot derive the id of the master key in %s: OpenSSL failed",
             path);
    return HM_ERR_IO;
}

void master_key_id_text(const uint8_t id[MASTER_KEY_ID_SIZE], char out[MASTER_KEY_ID_TEXT_SIZE])
{
    hex_encode(id, MASTER_KEY_ID_SIZE, out);
}

int master_key_read(const char *path, struct master_key *out, char *error, size_t error_size)
{
    /* O_NONBLOCK, so that a FIFO at the path is rejected below instead of blocking the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        snprintf(error, error_size, "cannot open the master key file %s: %s", path, strerror(err));
        return err == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO;
    }
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        snprintf(error, error_size, "the master key file %s is not a regular file", path);
        close(fd);
        return HM_ERR_INVALID;
    }
    if ((info.st_mode & 077) != 0) {
        snprintf(error, error_size,
                 "the master key file %s can be read by its group or others (mode %04o); run "
                 "`chmod 600 %s`",
                 path, (unsigned)(info.st_mode & 07777), path);
        close(fd);
        return HM_ERR_INVALID;
    }
    char text[2 * MASTER_KEY_SIZE + 2];
    ssize_t got = read(fd, text, sizeof text);
    int read_errno = errno;
    close(fd);
    if (got < 0) {
        snprintf(error, error_size, "cannot read the master key file %s: %s", path,
                 strerror(read_errno));
        return HM_ERR_IO;
    }
    size_t length = (size_t)got;
    if (length == 2 * MASTER_KEY_SIZE + 1 && text[length - 1] == '\n')
        length--;
    int shape_ok =
        length == 2 * MASTER_KEY_SIZE && hex_decode(text, out->key, MASTER_KEY_SIZE) == HM_OK;
    uint8_t any = 0;
    for (size_t i = 0; shape_ok && i < MASTER_KEY_SIZE; i++)
        any |= out->key[i];
    OPENSSL_cleanse(text, sizeof text);
    if (!shape_ok || any == 0) {
        master_key_clear(out);
        snprintf(error, error_size,
                 "the master key file %s must contain 64 hex digits (32 bytes, not all zero) and "
                 "an optional newline; create one with `meterctl master-key create FILE`",
                 path);
        return HM_ERR_INVALID;
    }
    return key_id_set(out, path, error, error_size);
}

/* Syncs the directory that contains `path`, so that a new file's name survives a crash. */
static int directory_sync(const char *path)
{
    char copy[PATH_MAX];
    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy)
        return ENAMETOOLONG;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return rc;
}

/*
 * Writes the key as text to a new temporary file beside `path` and syncs it.
 * Returns 0 or an errno value, and stores the temporary file's name in `temporary`.
 */
static int key_file_write(const char *path, const struct master_key *master, char *temporary,
                          size_t temporary_size)
{
    if (snprintf(temporary, temporary_size, "%s.tmp.XXXXXX", path) >= (int)temporary_size)
        return ENAMETOOLONG;
    int fd = mkostemp(temporary, O_CLOEXEC); /* mode 0600 */
    if (fd < 0)
        return errno;
    char text[2 * MASTER_KEY_SIZE + 1];
    hex_encode(master->key, MASTER_KEY_SIZE, text);
    text[2 * MASTER_KEY_SIZE] = '\n';
    ssize_t written = write(fd, text, sizeof text);
    int err = 0;
    if (written < 0)
        err = errno;
    else if (written != (ssize_t)sizeof text)
        err = ENOSPC; /* a short write to a regular file: the disk filled */
    OPENSSL_cleanse(text, sizeof text);
    if (err == 0 && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && err == 0)
        err = errno;
    if (err != 0)
        unlink(temporary);
    return err;
}

/*
 * The key is written to a temporary file and then linked to `path`, so that
 * another process never reads a file that is still being written, and a
 * crash leaves no short key file at `path`. link() fails with EEXIST when
 * `path` exists, as O_EXCL would.
 * NOTE: a file system without hard links (EPERM from link) cannot hold a new
 * master key file; create it elsewhere and pass it with --master-key.
 */
int master_key_create(const char *path, struct master_key *out, char *error, size_t error_size)
{
    if (getrandom(out->key, MASTER_KEY_SIZE, 0) != MASTER_KEY_SIZE) {
        snprintf(error, error_size, "cannot create a master key: the random source failed: %s",
                 strerror(errno));
        return HM_ERR_IO;
    }
    char temporary[PATH_MAX];
    int err = key_file_write(path, out, temporary, sizeof temporary);
    if (err == 0) {
        if (link(temporary, path) != 0)
            err = errno;
        unlink(temporary);
    }
    /*
     * A linked file stays even when the directory does not sync, because
     * another process may have read it already and wrapped keys with it.
     */
    if (err == 0)
        err = directory_sync(path);
    if (err != 0) {
        master_key_clear(out);
        if (err == EEXIST) {
            snprintf(error, error_size, "cannot create the master key file %s: it exists, and "
                     "keys may be wrapped with it; give another path", path);
            return HM_ERR_EXISTS;
        }
        snprintf(error, error_size, "cannot write the master key file %s: %s", path, strerror(err));
        return HM_ERR_IO;
    }
    return key_id_set(out, path, error, error_size);
}

int master_key_wrap(const struct master_key *master, const uint8_t binding[MASTER_KEY_BINDING_SIZE],
                    const uint8_t signing_key[32], uint8_t out[MASTER_KEY_WRAP_SIZE])
{
    uint8_t *nonce = out, *sealed = out + 12, *tag = out + 12 + 32;
    if (getrandom(nonce, 12, 0) != 12)
        return HM_ERR_IO;
    EVP_CIPHER_CTX *context = EVP_CIPHER_CTX_new();
    int size = 0, final_size = 0;
    int ok = context != NULL &&
             EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), NULL, master->key, nonce) == 1 &&
             EVP_EncryptUpdate(context, NULL, &size, binding, MASTER_KEY_BINDING_SIZE) == 1 &&
             EVP_EncryptUpdate(context, sealed, &size, signing_key, 32) == 1 && size == 32 &&
             EVP_EncryptFinal_ex(context, sealed + size, &final_size) == 1 && final_size == 0 &&
             EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(context);
    if (!ok)
        OPENSSL_cleanse(out, MASTER_KEY_WRAP_SIZE);
    return ok ? HM_OK : HM_ERR_IO;
}

int master_key_unwrap(const struct master_key *master,
                      const uint8_t binding[MASTER_KEY_BINDING_SIZE],
                      const uint8_t wrapped[MASTER_KEY_WRAP_SIZE], uint8_t signing_key[32])
{
    const uint8_t *nonce = wrapped, *sealed = wrapped + 12, *tag = wrapped + 12 + 32;
    uint8_t tag_copy[16];
    memcpy(tag_copy, tag, sizeof tag_copy);
    EVP_CIPHER_CTX *context = EVP_CIPHER_CTX_new();
    int size = 0, final_size = 0;
    int ok = context != NULL &&
             EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), NULL, master->key, nonce) == 1 &&
             EVP_DecryptUpdate(context, NULL, &size, binding, MASTER_KEY_BINDING_SIZE) == 1 &&
             EVP_DecryptUpdate(context, signing_key, &size, sealed, 32) == 1 && size == 32 &&
             EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, 16, tag_copy) == 1 &&
             EVP_DecryptFinal_ex(context, signing_key + size, &final_size) == 1;
    EVP_CIPHER_CTX_free(context);
    if (!ok)
        OPENSSL_cleanse(signing_key, 32);
    return ok ? HM_OK : HM_ERR_STORAGE;
}

void master_key_clear(struct master_key *master)
{
    OPENSSL_cleanse(master, sizeof *master);
}
