/*
 * The master key file and the signing keys that it wraps in key records.
 * Files of a wrong shape or mode are rejected with the fix. A wrapped key
 * unwraps only with its master key and for its own record, and the stored
 * bytes never contain the signing key. Older records are wrapped, and
 * wrapped ones rewrapped, in place.
 */
#include "ledger_fixture.h"

#include "engine/lib/master_setup.h"
#include "ingest/masterkey.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

static void setup(void)
{
    ledger_fixture_open("master-key");
}

TestSuite(master_key, .init = setup, .fini = ledger_fixture_remove);

static void path_in_dir(const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", dir, name);
}

static void file_write(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    cr_assert_eq(fchmod(fd, mode), 0);
    close(fd);
}

static struct master_key key_made(const char *name)
{
    char path[512], error[512];
    path_in_dir(name, path, sizeof path);
    struct master_key master;
    cr_assert_eq(master_key_create(path, &master, error, sizeof error), HM_OK, "%s", error);
    return master;
}

static struct key_record signing_record(uint64_t key_id, const uint8_t tenant[UUID_SIZE],
                                        uint8_t fill)
{
    struct key_record key = {.key_id = key_id, .status = KEY_ACTIVE, .created_s = 1700000000};
    memcpy(key.tenant_id, tenant, UUID_SIZE);
    memset(key.signing_key, fill, sizeof key.signing_key);
    return key;
}

/* Returns a copy of the stored value of key 1 of the ledger, which is closed and reopened. */
static uint8_t *stored_value(size_t *size_out)
{
    ledger_close(ledger);
    ledger = NULL;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    raw_begin("keys", &env, &txn, &dbi);
    uint8_t id[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    MDB_val key = {sizeof id, id}, value;
    cr_assert_eq(mdb_get(txn, dbi, &key, &value), 0);
    uint8_t *copy = malloc(value.mv_size);
    cr_assert_not_null(copy);
    memcpy(copy, value.mv_data, value.mv_size);
    *size_out = value.mv_size;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    return copy;
}

static uint8_t *stored_copy_of(const uint8_t *value, size_t size)
{
    uint8_t *copy = malloc(size);
    cr_assert_not_null(copy);
    memcpy(copy, value, size);
    return copy;
}

/* Returns 1 when the stored value of key 1 contains the 32 bytes of `fill`. */
static int stored_value_holds(uint8_t fill, size_t *size_out)
{
    uint8_t *value = stored_value(size_out), pattern[32];
    memset(pattern, fill, sizeof pattern);
    int found = memmem(value, *size_out, pattern, sizeof pattern) != NULL;
    free(value);
    return found;
}

/* Stores key 1 of tenant A, its signing key all `fill`, wrapped with a new master.key. */
static struct key_record key_stored_wrapped(uint8_t fill, struct master_key *master)
{
    *master = key_made("master.key");
    ledger_master_key_set(ledger, master);
    struct key_record key = signing_record(1, tenant_a, fill);
    cr_assert_eq(ledger_key_put(ledger, &key), HM_OK);
    return key;
}

static int lookup(uint64_t key_id, struct key_record *out)
{
    cr_assert_eq(ledger_read_begin(ledger), HM_OK);
    int rc = ledger_key_lookup(ledger, key_id, out);
    ledger_read_end(ledger);
    return rc;
}

Test(master_key, file_created_private_and_read_back)
{
    char path[512], error[512];
    path_in_dir("master.key", path, sizeof path);
    struct master_key made = key_made("master.key"), read;
    struct stat info;
    cr_assert_eq(stat(path, &info), 0);
    cr_assert_eq(info.st_mode & 0777, 0600);
    cr_assert_eq(info.st_size, 65);
    cr_assert_eq(master_key_read(path, &read, error, sizeof error), HM_OK, "%s", error);
    cr_assert_eq(memcmp(made.key, read.key, MASTER_KEY_SIZE), 0);
    cr_assert_eq(memcmp(made.id, read.id, MASTER_KEY_ID_SIZE), 0);
    cr_assert_eq(master_key_create(path, &read, error, sizeof error), HM_ERR_EXISTS);
}

Test(master_key, fifo_rejected_without_blocking, .timeout = 5)
{
    char path[512], error[512];
    path_in_dir("fifo.key", path, sizeof path);
    cr_assert_eq(mkfifo(path, 0600), 0);
    struct master_key master;
    /* No writer ever opens the FIFO, so a blocking open would hang here. */
    cr_assert_eq(master_key_read(path, &master, error, sizeof error), HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "is not a regular file"), "%s", error);
}

Test(master_key, create_leaves_no_temporary_file)
{
    char path[512], error[512];
    path_in_dir("made.key", path, sizeof path);
    struct master_key first = key_made("made.key"), second;
    cr_assert_eq(master_key_create(path, &second, error, sizeof error), HM_ERR_EXISTS);
    char directory[512];
    path_in_dir("", directory, sizeof directory);
    DIR *listing = opendir(directory);
    cr_assert_not_null(listing);
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL)
        cr_assert_null(strstr(entry->d_name, ".tmp."), "left behind: %s", entry->d_name);
    closedir(listing);
    struct master_key read;
    cr_assert_eq(master_key_read(path, &read, error, sizeof error), HM_OK, "%s", error);
    cr_assert_eq(memcmp(first.key, read.key, MASTER_KEY_SIZE), 0);
}

Test(master_key, bad_files_rejected_with_fix)
{
    char path[512], error[512];
    path_in_dir("bad.key", path, sizeof path);
    struct master_key master;
    static const char hex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    static const struct {
        const char *text;
        mode_t mode;
        const char *message;
    } cases[] = {
        {hex, 0644, "can be read by its group or others (mode 0644); run `chmod 600"},
        {"0011", 0600, "must contain 64 hex digits"},
        {"zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 0600,
         "must contain 64 hex digits"},
        {"0000000000000000000000000000000000000000000000000000000000000000", 0600, "not all zero"},
        {"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\n", 0600,
         "must contain 64 hex digits"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        file_write(path, cases[i].text, cases[i].mode);
        cr_assert_eq(master_key_read(path, &master, error, sizeof error), HM_ERR_INVALID,
                     "case %zu", i);
        cr_assert_not_null(strstr(error, cases[i].message), "case %zu: %s", i, error);
        cr_assert_not_null(strstr(error, path), "case %zu: %s", i, error);
    }
    file_write(path, hex, 0600);
    cr_assert_eq(master_key_read(path, &master, error, sizeof error), HM_OK, "%s", error);
    path_in_dir("missing.key", path, sizeof path);
    cr_assert_eq(master_key_read(path, &master, error, sizeof error), HM_ERR_NOT_FOUND);
}

Test(master_key, wrap_bound_to_key_and_record)
{
    struct master_key one = key_made("one.key"), two = key_made("two.key");
    uint8_t binding[MASTER_KEY_BINDING_SIZE] = {1, 2, 3}, other[MASTER_KEY_BINDING_SIZE] = {1};
    uint8_t signing[32], wrapped[MASTER_KEY_WRAP_SIZE], out[32];
    memset(signing, 0x5a, sizeof signing);
    cr_assert_eq(master_key_wrap(&one, binding, signing, wrapped), HM_OK);
    cr_assert_null(memmem(wrapped, sizeof wrapped, signing, sizeof signing));
    cr_assert_eq(master_key_unwrap(&one, binding, wrapped, out), HM_OK);
    cr_assert_eq(memcmp(out, signing, sizeof out), 0);
    cr_assert_eq(master_key_unwrap(&two, binding, wrapped, out), HM_ERR_STORAGE);
    cr_assert_eq(master_key_unwrap(&one, other, wrapped, out), HM_ERR_STORAGE);
    wrapped[20] ^= 1;
    cr_assert_eq(master_key_unwrap(&one, binding, wrapped, out), HM_ERR_STORAGE);
    uint8_t zero[32] = {0};
    cr_assert_eq(memcmp(out, zero, sizeof out), 0, "a failed unwrap left key bytes behind");
}

Test(master_key, stored_wrapped_and_looked_up)
{
    struct master_key master;
    struct key_record key = key_stored_wrapped(0xc3, &master), read;
    size_t size = 0;
    cr_assert_eq(stored_value_holds(0xc3, &size), 0, "the signing key is stored as it is");
    cr_assert_gt(size, sizeof key);

    /* The reopened ledger has no master key: the lookup fails, the list still works. */
    cr_assert_eq(lookup(1, &read), HM_ERR_STATE);
    struct key_record *keys = NULL;
    size_t count = 0;
    cr_assert_eq(ledger_key_list(ledger, tenant_a, &keys, &count), HM_OK);
    cr_assert_eq(count, 1);
    cr_assert_eq(keys[0].key_id, 1);
    free(keys);

    struct master_key other = key_made("other.key");
    ledger_master_key_set(ledger, &other);
    cr_assert_eq(lookup(1, &read), HM_ERR_STATE);
    ledger_master_key_set(ledger, &master);
    cr_assert_eq(lookup(1, &read), HM_OK);
    cr_assert_eq(memcmp(read.signing_key, key.signing_key, 32), 0);
    cr_assert_eq(memcmp(read.tenant_id, tenant_a, UUID_SIZE), 0);
}

Test(master_key, revoke_keeps_key_wrapped)
{
    struct master_key master;
    struct key_record key = key_stored_wrapped(0x7e, &master), read;
    ledger_master_key_set(ledger, NULL);
    cr_assert_eq(ledger_key_revoke(ledger, 1, 1234), HM_OK);
    size_t size = 0;
    cr_assert_eq(stored_value_holds(0x7e, &size), 0);
    ledger_master_key_set(ledger, &master);
    cr_assert_eq(lookup(1, &read), HM_OK);
    cr_assert_eq(read.status, KEY_REVOKED);
    cr_assert_eq(read.revoked_s, 1234);
    cr_assert_eq(memcmp(read.signing_key, key.signing_key, 32), 0);
}

Test(master_key, record_moved_to_other_key_fails)
{
    struct master_key master;
    struct key_record read;
    key_stored_wrapped(0x11, &master);
    size_t size = 0;
    uint8_t *copy = stored_value(&size);
    /* The record as it is, for key id 3: the id inside it stays 1. */
    uint8_t *whole = stored_copy_of(copy, size);
    /* The bytes under key id 2 with id 2 inside, and with tenant B: the wrap is bound to both. */
    struct key_record moved;
    memcpy(&moved, copy, sizeof moved);
    moved.key_id = 2;
    memcpy(copy, &moved, sizeof moved);
    ledger_close(ledger);
    ledger = NULL;
    uint8_t id1[8] = {0, 0, 0, 0, 0, 0, 0, 1}, id2[8] = {0, 0, 0, 0, 0, 0, 0, 2},
            id3[8] = {0, 0, 0, 0, 0, 0, 0, 3};
    raw_put("keys", id2, sizeof id2, copy, size);
    memcpy(moved.tenant_id, tenant_b, UUID_SIZE);
    moved.key_id = 1;
    memcpy(copy, &moved, sizeof moved);
    raw_put("keys", id1, sizeof id1, copy, size);
    free(copy);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    ledger_master_key_set(ledger, &master);
    cr_assert_eq(lookup(2, &read), HM_ERR_STORAGE);
    cr_assert_eq(lookup(1, &read), HM_ERR_STORAGE);
    ledger_close(ledger);
    ledger = NULL;
    raw_put("keys", id3, sizeof id3, whole, size);
    free(whole);
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    ledger_master_key_set(ledger, &master);
    cr_assert_eq(lookup(3, &read), HM_ERR_STORAGE);
}

Test(master_key, older_keys_wrapped_then_rewrapped)
{
    /* Two keys of an older build, stored as they are. */
    struct key_record first = signing_record(1, tenant_a, 0x21);
    struct key_record second = signing_record(2, tenant_b, 0x22);
    second.expires_s = 1900000000;
    cr_assert_eq(ledger_key_put(ledger, &first), HM_OK);
    cr_assert_eq(ledger_key_put(ledger, &second), HM_OK);
    size_t size = 0;
    cr_assert_eq(stored_value_holds(0x21, &size), 1);

    char path[512], error[512];
    path_in_dir("master.key", path, sizeof path);
    struct master_setup_result result;
    cr_assert_eq(master_setup(ledger, path, 1, &result, error, sizeof error), HM_OK, "%s", error);
    cr_assert_eq(result.created, 1);
    cr_assert_eq(result.wrapped, 2);
    cr_assert_eq(stored_value_holds(0x21, &size), 0);

    /* The reopened ledger: the file now exists, and nothing is left to wrap. */
    cr_assert_eq(master_setup(ledger, path, 1, &result, error, sizeof error), HM_OK, "%s", error);
    cr_assert_eq(result.created, 0);
    cr_assert_eq(result.wrapped, 0);
    struct key_record read;
    cr_assert_eq(lookup(2, &read), HM_OK);
    cr_assert_eq(read.expires_s, 1900000000);
    cr_assert_eq(memcmp(read.signing_key, second.signing_key, 32), 0);

    /* Rotation: the keys move to a new master key, and the old one no longer opens them. */
    struct master_key old, fresh = key_made("new.key");
    cr_assert_eq(master_key_read(path, &old, error, sizeof error), HM_OK);
    ledger_master_key_set(ledger, &fresh);
    struct ledger_key_wrap_counts counts;
    cr_assert_eq(ledger_keys_wrap(ledger, NULL, &counts), HM_OK);
    cr_assert_eq(counts.foreign, 2);
    cr_assert_eq(counts.wrapped, 0);
    cr_assert_eq(memcmp(counts.foreign_id, old.id, MASTER_KEY_ID_SIZE), 0);
    cr_assert_eq(ledger_keys_wrap(ledger, &old, &counts), HM_OK);
    cr_assert_eq(counts.wrapped, 2);
    cr_assert_eq(counts.foreign, 0);
    cr_assert_eq(lookup(1, &read), HM_OK);
    cr_assert_eq(memcmp(read.signing_key, first.signing_key, 32), 0);
    ledger_master_key_set(ledger, &old);
    cr_assert_eq(lookup(1, &read), HM_ERR_STATE);
}

Test(master_key, missing_file_with_wrapped_keys_is_error)
{
    char path[512], error[512];
    path_in_dir("master.key", path, sizeof path);
    struct master_setup_result result;
    cr_assert_eq(master_setup(ledger, path, 1, &result, error, sizeof error), HM_OK, "%s", error);
    struct key_record key = signing_record(1, tenant_a, 0x33);
    cr_assert_eq(ledger_key_put(ledger, &key), HM_OK);
    cr_assert_eq(unlink(path), 0);
    ledger_master_key_set(ledger, NULL);
    cr_assert_eq(master_setup(ledger, path, 0, &result, error, sizeof error), HM_ERR_NOT_FOUND);
    cr_assert_not_null(strstr(error, "is missing, and 1 keys of the ledger are wrapped"), "%s",
                       error);
    cr_assert_eq(access(path, F_OK), -1, "a new master key replaced the lost one");

    /* Another master key file: the keys are wrapped with a foreign key. */
    key_made("master.key");
    cr_assert_eq(master_setup(ledger, path, 0, &result, error, sizeof error), HM_ERR_STATE);
    cr_assert_not_null(strstr(error, "meterctl key rewrap --old-master-key"), "%s", error);
}
