/*
 * Status codes shared by every module.
 *
 * Functions return 0 (HM_OK) on success or one of the negative codes below.
 * Library errors (errno, LMDB, jansson, OpenSSL) are converted to these at
 * the module boundary; the library's own message goes to the log.
 */
#ifndef HM_STATUS_H
#define HM_STATUS_H

enum hm_status {
    HM_OK = 0,
    HM_ERR_INVALID = -1,   /* bad argument or malformed input */
    HM_ERR_NOMEM = -2,     /* allocation failed */
    HM_ERR_IO = -3,        /* a system call or file operation failed */
    HM_ERR_NOT_FOUND = -4, /* no such tenant, key, period or record */
    HM_ERR_EXISTS = -5,    /* the record already exists */
    HM_ERR_OVERFLOW = -6,  /* an exact result does not fit its type */
    HM_ERR_STORAGE = -7,   /* the ledger store failed; the transaction was aborted */
    HM_ERR_FULL = -8,      /* the ledger map or the disk is full */
    HM_ERR_CONFLICT = -9,  /* the same key with different content */
    HM_ERR_STATE = -10,    /* the operation is not allowed in the current state */
};

/* Returns a short static description of a status code. */
const char *hm_status_str(int status);

#endif
