/* The invoice files written from the ledger: batches of synced files, rewrites, failures. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"
#include "engine/lib/billing.h"
#include "rollup/ledger.h"

/* More files than one batch of billing_files_write holds, so that several batches are written. */
#define TENANTS 300
#define PERIOD 202311

static char dir[256], ledger_dir[300], invoices_dir[300];
static struct ledger *ledger;

static void document_number(unsigned index, char *out, size_t size)
{
    snprintf(out, size, "HM-%06u", index + 1);
}

/* Creates TENANTS tenants, each with a sealed-looking invoice for PERIOD stored by number. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-files-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(ledger_dir, sizeof ledger_dir, "%s/ledger", dir);
    snprintf(invoices_dir, sizeof invoices_dir, "%s/invoices", dir);
    cr_assert_eq(mkdir(ledger_dir, 0700), 0);
    cr_assert_eq(ledger_open(&ledger, ledger_dir, NULL), HM_OK);
    uint8_t ids[TENANTS][UUID_SIZE];
    for (unsigned i = 0; i < TENANTS; i++) {
        struct tenant tenant = { .active = 1, .created_s = 1700000000 };
        memset(tenant.id, 0, UUID_SIZE);
        tenant.id[0] = (uint8_t)(i >> 8);
        tenant.id[1] = (uint8_t)i;
        snprintf(tenant.name, sizeof tenant.name, "tenant-%03u", i);
        cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
        memcpy(ids[i], tenant.id, UUID_SIZE);
    }
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (unsigned i = 0; i < TENANTS; i++) {
        char number[DOCUMENT_NUMBER_MAX], json[128];
        document_number(i, number, sizeof number);
        snprintf(json, sizeof json, "{\n  \"number\": \"%s\",\n  \"status\": \"finalized\"\n}",
                 number);
        cr_assert_eq(ledger_document_put(txn, number, json), HM_OK);
        cr_assert_eq(ledger_period_close_with(txn, ids[i], PERIOD, number), HM_OK);
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
}

static void teardown(void)
{
    ledger_close(ledger);
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(invoice_files, .init = setup, .fini = teardown);

static void document_path(unsigned index, char *out, size_t size)
{
    char number[DOCUMENT_NUMBER_MAX];
    document_number(index, number, sizeof number);
    snprintf(out, size, "%s/documents/%s.json", invoices_dir, number);
}

static void period_path(unsigned index, char *out, size_t size)
{
    snprintf(out, size, "%s/2023-11/tenant-%03u.json", invoices_dir, index);
}

/* Reads a whole small file into out; returns its size, or -1. */
static long file_text(const char *path, char *out, size_t size)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return -1;
    size_t got = fread(out, 1, size - 1, file);
    fclose(file);
    out[got] = '\0';
    return (long)got;
}

/* Checks that the file contains the document's JSON and a newline, readable by the owner only. */
static void assert_file_of(const char *path, unsigned index)
{
    char *json = NULL, number[DOCUMENT_NUMBER_MAX], text[256];
    document_number(index, number, sizeof number);
    cr_assert_eq(ledger_document_get(ledger, number, &json), HM_OK);
    cr_assert_geq(file_text(path, text, sizeof text), 0, "%s is missing", path);
    cr_assert_eq(strlen(text), strlen(json) + 1, "%s: %s", path, text);
    cr_assert_eq(strncmp(text, json, strlen(json)), 0, "%s: %s", path, text);
    cr_assert_eq(text[strlen(json)], '\n', "%s", path);
    free(json);
    struct stat info;
    cr_assert_eq(stat(path, &info), 0);
    cr_assert_eq(info.st_mode & 0777, 0600, "%s has mode %o", path, info.st_mode & 0777);
}

/* Counts the entries of a directory that start with '.', other than . and .. */
static int hidden_entries(const char *path)
{
    DIR *directory = opendir(path);
    cr_assert_not_null(directory, "%s is missing", path);
    int hidden = 0;
    for (struct dirent *entry; (entry = readdir(directory)) != NULL;) {
        hidden += entry->d_name[0] == '.' && strcmp(entry->d_name, ".") != 0 &&
                  strcmp(entry->d_name, "..") != 0;
    }
    closedir(directory);
    return hidden;
}

static ino_t inode_of(const char *path)
{
    struct stat info;
    cr_assert_eq(stat(path, &info), 0, "%s is missing", path);
    return info.st_ino;
}

Test(invoice_files, every_file_over_batches)
{
    cr_assert_eq(billing_files_write(ledger, PERIOD, invoices_dir), HM_OK);
    char path[512];
    for (unsigned i = 0; i < TENANTS; i++) {
        document_path(i, path, sizeof path);
        assert_file_of(path, i);
        period_path(i, path, sizeof path);
        assert_file_of(path, i);
    }
    snprintf(path, sizeof path, "%s/documents", invoices_dir);
    cr_assert_eq(hidden_entries(path), 0, "temporary files left in %s", path);
    snprintf(path, sizeof path, "%s/2023-11", invoices_dir);
    cr_assert_eq(hidden_entries(path), 0, "temporary files left in %s", path);
}

Test(invoice_files, unchanged_files_kept)
{
    cr_assert_eq(billing_files_write(ledger, PERIOD, invoices_dir), HM_OK);
    char first[512], changed[512], missing[512];
    document_path(0, first, sizeof first);
    document_path(150, changed, sizeof changed);
    period_path(299, missing, sizeof missing);
    ino_t first_inode = inode_of(first), changed_inode = inode_of(changed);

    FILE *file = fopen(changed, "w");
    cr_assert_not_null(file);
    fputs("edited\n", file);
    fclose(file);
    cr_assert_eq(unlink(missing), 0);
    cr_assert_eq(billing_files_write(ledger, PERIOD, invoices_dir), HM_OK);

    /* A rewrite renames a new file over the old one, so an unchanged inode means no rewrite. */
    cr_assert_eq(inode_of(first), first_inode, "%s was written again", first);
    cr_assert_neq(inode_of(changed), changed_inode, "%s was not written again", changed);
    assert_file_of(changed, 150);
    assert_file_of(missing, 299);
}

/* Runs billing_files_write for PERIOD with stderr captured into `log`; returns its status. */
static int files_write_logged(char *log, size_t size)
{
    char log_path[512];
    snprintf(log_path, sizeof log_path, "%s/stderr.log", dir);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(log_fd, 0);
    dup2(log_fd, STDERR_FILENO);
    int rc = billing_files_write(ledger, PERIOD, invoices_dir);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(log_fd);
    cr_assert_geq(file_text(log_path, log, size), 0);
    return rc;
}

Test(invoice_files, document_failure_reported_once)
{
    /* A regular file where the documents folder belongs: every document file fails. */
    char path[512];
    cr_assert_eq(mkdir(invoices_dir, 0700), 0);
    snprintf(path, sizeof path, "%s/documents", invoices_dir);
    FILE *blocker = fopen(path, "w");
    cr_assert_not_null(blocker);
    fclose(blocker);

    char log[8192];
    int rc = files_write_logged(log, sizeof log);

    cr_assert_eq(rc, HM_ERR_IO);
    const char *first = strstr(log, "writing ");
    cr_assert_not_null(first, "no failure message: %s", log);
    cr_assert_not_null(strstr(first, "the document is stored in the ledger"), "%s", log);
    cr_assert_null(strstr(first + 1, "writing "), "more than one message: %s", log);
    /* The period files are written all the same. */
    for (unsigned i = 0; i < TENANTS; i++) {
        period_path(i, path, sizeof path);
        assert_file_of(path, i);
    }
}

Test(invoice_files, unreadable_invoice_reported)
{
    /* The period of tenant-007 points at an invoice number that no document has. */
    uint8_t id[UUID_SIZE] = { 0, 7 };
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    cr_assert_eq(ledger_invoice_point(txn, id, PERIOD, "HM-999999"), HM_OK);
    cr_assert_eq(ledger_commit(txn), HM_OK);

    char log[8192];
    int rc = files_write_logged(log, sizeof log);

    cr_assert_eq(rc, HM_ERR_IO, "a missing invoice file was reported as written");
    cr_assert_not_null(strstr(log, "invoice of tenant tenant-007"), "no message: %s", log);
    char path[512];
    period_path(7, path, sizeof path);
    cr_assert_eq(access(path, F_OK), -1, "%s was written", path);
    /* The other tenants' files are written all the same. */
    period_path(8, path, sizeof path);
    assert_file_of(path, 8);
}
