/* Export state of documents in outside systems (Stripe): one JSON text per key. */
#include "ledger.h"
#include "ledger_private.h"

#include <stdlib.h>

int ledger_export_get(struct ledger *ledger, const char *key_text, char **json_out)
{
    if (key_text == NULL || key_text[0] == '\0')
        return HM_ERR_INVALID;
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    MDB_val key = { strlen(key_text), (void *)key_text }, value;
    int mdb_rc = table_get(txn, ledger, TABLE_EXPORTS, &key, &value);
    if (mdb_rc == 0) {
        char *text = malloc(value.mv_size + 1);
        if (text != NULL) {
            memcpy(text, value.mv_data, value.mv_size);
            text[value.mv_size] = '\0';
        }
        *json_out = text;
        rc = text ? HM_OK : HM_ERR_NOMEM;
    } else {
        rc = mdb_rc == MDB_NOTFOUND ? HM_ERR_NOT_FOUND : status_of(mdb_rc, "read export state");
    }
    mdb_txn_abort(txn);
    return rc;
}

int ledger_export_put(struct ledger *ledger, const char *key_text, const char *json)
{
    if (key_text == NULL || key_text[0] == '\0' || json == NULL)
        return HM_ERR_INVALID;
    MDB_txn *txn;
    int mdb_rc = txn_begin(ledger, 0, &txn);
    if (mdb_rc != 0)
        return status_of(mdb_rc, "begin write transaction");
    MDB_val key = { strlen(key_text), (void *)key_text }, value = { strlen(json), (void *)json };
    mdb_rc = mdb_put(txn, ledger->tables[TABLE_EXPORTS], &key, &value, 0);
    if (mdb_rc != 0) {
        mdb_txn_abort(txn);
        return status_of(mdb_rc, "store export state");
    }
    mdb_rc = mdb_txn_commit(txn);
    return mdb_rc == 0 ? HM_OK : status_of(mdb_rc, "commit export state");
}
