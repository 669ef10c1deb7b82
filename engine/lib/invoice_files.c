/*
 * The invoice files beside the ledger (billing_files_write): every document
 * by number, and each tenant's current invoice of a period, written from the
 * ledger, which stays the record.
 *
 * Every file is replaced atomically. Its content goes into a temporary file
 * of its own in the same directory (mkstemp, so that concurrent writers
 * never share one), which is synced and then renamed over the target. So a
 * crash leaves the old file or the new one, never a part. The temporary name is hidden (".NAME.XXXXXX"), so
 * that one left by a killed process does not match "*.json".
 *
 * A close writes two files per tenant, and one fsync after another costs a
 * device cache flush each. So the files are written in batches. Each file
 * of a batch is created and written, then several threads sync the whole
 * batch at once, because the block layer serves concurrent syncs with
 * shared flushes. Then each synced file is renamed.
 */
#include "billing.h"

#include "common/status.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files of one batch. Each keeps its descriptor open from its write to its sync. */
#define FILE_BATCH_MAX 128
/* Threads that sync a batch, the calling thread included. */
#define FILE_SYNC_THREADS 16
#define FILE_PATH_MAX 4200

struct staged_file {
    char path[FILE_PATH_MAX];
    char temporary[FILE_PATH_MAX];
    char number[DOCUMENT_NUMBER_MAX]; /* the document's number, or empty for a period's invoice */
    int fd;
    int error; /* errno of the step that failed, or 0 */
};

struct file_batch {
    struct staged_file files[FILE_BATCH_MAX];
    size_t count;
    atomic_size_t next_sync; /* next file for a sync thread to take */
    int failed;              /* a file could not be written */
    int document_failed;     /* a document file could not be written: later ones are skipped */
};

/* Reports a file that could not be written, with the command that prints its document. */
static void staged_file_report(struct file_batch *batch, const struct staged_file *file)
{
    batch->failed = 1;
    if (file->number[0] == '\0') {
        fprintf(stderr, "meterctl: writing %s failed: %s; the invoice is stored in the "
                "ledger, and `meterctl invoice show` prints it\n", file->path,
                strerror(file->error));
        return;
    }
    /* One failure in a directory is likely all of them: one message is enough. */
    if (!batch->document_failed)
        fprintf(stderr, "meterctl: writing %s failed: %s; the document is stored in the "
                "ledger, and `meterctl invoice show %s` prints it\n", file->path,
                strerror(file->error), file->number);
    batch->document_failed = 1;
}

static int write_all(int fd, const char *bytes, size_t size)
{
    while (size > 0) {
        ssize_t written = write(fd, bytes, size);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0) {
            if (written == 0)
                errno = EIO;
            return -1;
        }
        bytes += written;
        size -= (size_t)written;
    }
    return 0;
}

/* Returns 1 when the file already contains `text` and a newline, as file_stage writes it. */
static int file_has_text(const char *path, const char *text)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return 0;
    size_t size = strlen(text);
    char *stored = malloc(size + 2);
    size_t got = stored ? fread(stored, 1, size + 2, file) : 0;
    fclose(file);
    int same = stored != NULL && got == size + 1 && memcmp(stored, text, size) == 0 &&
               stored[size] == '\n';
    free(stored);
    return same;
}

static void *sync_thread(void *argument)
{
    struct file_batch *batch = argument;
    for (;;) {
        size_t index = atomic_fetch_add(&batch->next_sync, 1);
        if (index >= batch->count)
            return NULL;
        struct staged_file *file = &batch->files[index];
        if (file->error == 0 && fsync(file->fd) != 0)
            file->error = errno;
    }
}

/*
 * Syncs every staged file, several at once, then closes it and renames it
 * over its target. A file whose write, sync, close or rename failed is
 * reported, and its temporary file removed. Empties the batch.
 */
static void file_batch_flush(struct file_batch *batch)
{
    if (batch->count == 0)
        return;
    atomic_store(&batch->next_sync, 0);
    pthread_t threads[FILE_SYNC_THREADS - 1];
    size_t started = 0;
    size_t thread_count = batch->count < FILE_SYNC_THREADS ? batch->count - 1
                                                           : FILE_SYNC_THREADS - 1;
    /* A thread that cannot start leaves its share to the others and to this thread. */
    while (started < thread_count && pthread_create(&threads[started], NULL, sync_thread, batch) == 0)
        started++;
    sync_thread(batch);
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);

    for (size_t i = 0; i < batch->count; i++) {
        struct staged_file *file = &batch->files[i];
        if (close(file->fd) != 0 && file->error == 0)
            file->error = errno;
        if (file->error == 0 && rename(file->temporary, file->path) != 0)
            file->error = errno;
        if (file->error != 0) {
            unlink(file->temporary);
            staged_file_report(batch, file);
        }
    }
    batch->count = 0;
}

/*
 * Writes `text` and a newline into a new temporary file beside `path`, to
 * be synced and renamed by file_batch_flush, unless the file already
 * contains it. `number` names the document (NULL for a period's invoice file).
 */
static void file_stage(struct file_batch *batch, const char *path, const char *text,
                       const char *number)
{
    if (file_has_text(path, text))
        return;
    if (batch->count == FILE_BATCH_MAX)
        file_batch_flush(batch);
    struct staged_file *file = &batch->files[batch->count];
    memset(file, 0, sizeof *file);
    snprintf(file->path, sizeof file->path, "%s", path);
    snprintf(file->number, sizeof file->number, "%s", number ? number : "");
    const char *slash = strrchr(path, '/');
    int directory_size = slash != NULL ? (int)(slash - path + 1) : 0;
    if (strlen(path) >= sizeof file->path ||
        (size_t)snprintf(file->temporary, sizeof file->temporary, "%.*s.%s.XXXXXX",
                         directory_size, path, path + directory_size) >= sizeof file->temporary) {
        file->error = ENAMETOOLONG;
        staged_file_report(batch, file);
        return;
    }
    /* Invoices are customer billing data: mkstemp creates the file readable by the owner only. */
    file->fd = mkstemp(file->temporary);
    if (file->fd < 0) {
        file->error = errno;
        staged_file_report(batch, file);
        return;
    }
    if (write_all(file->fd, text, strlen(text)) != 0 || write_all(file->fd, "\n", 1) != 0)
        file->error = errno;
    batch->count++;
}

/* Creates a directory unless it exists; reports a failure on stderr. */
static int directory_make(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return HM_OK;
    fprintf(stderr, "meterctl: cannot create %s: %s; the documents are stored in the ledger, "
            "and `meterctl invoice show` prints them\n", path, strerror(errno));
    return HM_ERR_IO;
}

/* Stops the walk at the first document stored by number. */
static int document_has_number(void *context, const char *number, const char *text)
{
    (void)text;
    if (number == NULL)
        return HM_OK;
    *(int *)context = 1;
    return 1;
}

/* Reports a walk over the stored documents that failed, so some of their files are missing. */
static void documents_unread_report(const char *invoices_dir, int status, struct file_batch *batch)
{
    fprintf(stderr, "meterctl: cannot read the documents of the ledger to write their files "
            "under %s: %s; the ledger error above names the cause\n", invoices_dir,
            hm_status_str(status));
    batch->failed = 1;
}

struct document_files {
    char dir[4096];
    struct file_batch *batch;
};

static int document_file_write(void *context, const char *number, const char *text)
{
    struct document_files *files = context;
    if (number == NULL || files->batch->document_failed)
        return HM_OK;
    char path[FILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s.json", files->dir, number);
    file_stage(files->batch, path, text, number);
    return HM_OK;
}

/* Stages each tenant's current invoice of the period as DIR/YYYY-MM/<tenant name>.json. */
static void period_files_stage(struct ledger *ledger, uint32_t period, const char *invoices_dir,
                               struct file_batch *batch)
{
    struct tenant *tenants = NULL;
    size_t count = 0;
    if (ledger_tenant_list(ledger, &tenants, &count) != HM_OK) {
        fprintf(stderr, "meterctl: cannot list the tenants to write the invoice files of "
                "%04u-%02u; the invoices are stored in the ledger\n", period / 100,
                period % 100);
        batch->failed = 1;
        return;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%04u-%02u", invoices_dir, period / 100, period % 100);
    int period_dir_made = 0;
    for (size_t i = 0; i < count; i++) {
        char *text = NULL;
        int rc = ledger_invoice_get(ledger, tenants[i].id, period, &text);
        if (rc == HM_ERR_NOT_FOUND)
            continue;
        if (rc != HM_OK) {
            fprintf(stderr, "meterctl: cannot read the %04u-%02u invoice of tenant %s to write "
                    "its file: %s; the ledger error above names the cause\n",
                    period / 100, period % 100, tenants[i].name, hm_status_str(rc));
            batch->failed = 1;
            continue;
        }
        if (!period_dir_made &&
            (directory_make(invoices_dir) != HM_OK || directory_make(path) != HM_OK)) {
            free(text);
            batch->failed = 1;
            break;
        }
        period_dir_made = 1;
        char file[FILE_PATH_MAX];
        snprintf(file, sizeof file, "%s/%s.json", path, tenants[i].name);
        file_stage(batch, file, text, NULL);
        free(text);
    }
    free(tenants);
}

/*
 * Writes the files of the documents from the ledger, which stays the record,
 * so that a command interrupted after its commit gets its files on the next
 * run: every document by number under invoices_dir/documents, and when
 * period is not 0 the current invoice of each tenant for the period under
 * invoices_dir/YYYY-MM/<tenant name>.json. A directory is made only for a
 * file to write.
 */
int billing_files_write(struct ledger *ledger, uint32_t period, const char *invoices_dir)
{
    struct file_batch *batch = calloc(1, sizeof *batch);
    if (batch == NULL) {
        fprintf(stderr, "meterctl: out of memory for writing the invoice files under %s; the "
                "documents are stored in the ledger\n", invoices_dir);
        return HM_ERR_IO;
    }
    struct document_files files = { .batch = batch };
    snprintf(files.dir, sizeof files.dir, "%s/documents", invoices_dir);
    int has_documents = 0;
    /* document_has_number stops the walk with 1 at the first document stored by number. */
    int rc = ledger_document_each(ledger, document_has_number, &has_documents);
    if (rc < 0)
        documents_unread_report(invoices_dir, rc, batch);
    /* NOTE: every call compares the files of all documents ever stored, so it grows with them. */
    if (has_documents) {
        if (directory_make(invoices_dir) != HM_OK || directory_make(files.dir) != HM_OK)
            batch->failed = batch->document_failed = 1;
        else if ((rc = ledger_document_each(ledger, document_file_write, &files)) != HM_OK)
            documents_unread_report(invoices_dir, rc, batch);
    }
    if (period != 0)
        period_files_stage(ledger, period, invoices_dir, batch);
    file_batch_flush(batch);
    rc = batch->failed ? HM_ERR_IO : HM_OK;
    free(batch);
    return rc;
}
