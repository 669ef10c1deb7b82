#include "range.h"
#include "ledger_private.h"

#include <stdlib.h>

int ledger_usage_range(struct ledger *ledger, const uint8_t tenant_id[UUID_SIZE], int64_t start_us,
                       int64_t end_us, struct rollup_row **rows_out, size_t *count_out)
{
    if (end_us < start_us)
        return HM_ERR_INVALID;
    MDB_txn *txn;
    int rc = read_begin(ledger, &txn);
    if (rc != HM_OK)
        return rc;
    /* The events and the storage samples come from one snapshot: the same transaction. */
    struct row_list list = {0};
    rc = ledger_events_recount(ledger, txn, tenant_id, start_us, end_us, &list);

    unsigned __int128 byte_seconds = 0;
    if (rc == HM_OK)
        rc = ledger_storage_integrate(ledger, txn, tenant_id, floor_seconds(start_us),
                                      floor_seconds(end_us), &byte_seconds);
    mdb_txn_abort(txn);
    if (rc == HM_OK && byte_seconds > 0) {
        struct rollup_row *row = ledger_row_list_find(&list, ROLLUP_STORAGE_BYTE_SECONDS, "");
        if (row == NULL)
            rc = HM_ERR_NOMEM;
        else
            row->quantity = byte_seconds;
    }
    if (rc != HM_OK) {
        free(list.rows);
        return rc;
    }
    *rows_out = list.rows;
    *count_out = list.count;
    return HM_OK;
}
