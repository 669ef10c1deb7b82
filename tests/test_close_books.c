/*
 * A close of several tenants on shared and own price books: each invoice is
 * rated and sealed with its own tenant's book, also when the close parses
 * each book once for all tenants on it.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "engine/lib/billing.h"
#include "ingest/wire.h"
#include "rollup/ledger.h"

#define TENANTS 5
#define PERIOD 202311
#define NOVEMBER_10_US (INT64_C(1699574400) * 1000000) /* 2023-11-10T00:00:00Z */

static const char default_book[] =
    "{\"name\": \"shared\", \"currency\": \"USD\", \"base_fee\": \"10.00\","
    " \"gpu_hour\": {\"A100\": \"2.00\"}}";
static const char own_book[] =
    "{\"name\": \"own\", \"currency\": \"USD\", \"base_fee\": \"20.00\","
    " \"gpu_hour\": {\"A100\": \"3.00\"}}";

static char dir[256];
static struct ledger *ledger;
static uint8_t ids[TENANTS][UUID_SIZE];

/* Stores one A100 hour of each tenant in November 2023. */
static void gpu_hours_append(void)
{
    struct ledger_txn *txn = NULL;
    cr_assert_eq(ledger_begin(ledger, &txn), HM_OK);
    for (unsigned i = 0; i < TENANTS; i++) {
        struct event event = { .kind = EVENT_GPU_ALLOCATION, .timestamp_us = NOVEMBER_10_US };
        memcpy(event.tenant_id, ids[i], UUID_SIZE);
        memset(event.event_id, 0x40 + (int)i, UUID_SIZE);
        snprintf(event.u.gpu.gpu_type, sizeof event.u.gpu.gpu_type, "A100");
        snprintf(event.u.gpu.allocation_id, sizeof event.u.gpu.allocation_id, "alloc-%u", i);
        snprintf(event.u.gpu.pool_id, sizeof event.u.gpu.pool_id, "pool");
        event.u.gpu.duration_s = 3600;
        uint8_t record[RECORD_SIZE_MAX];
        int size = record_encode(&event, record);
        cr_assert_gt(size, 0);
        cr_assert_eq(ledger_append(txn, &event, record, (size_t)size), APPEND_STORED);
    }
    cr_assert_eq(ledger_commit(txn), HM_OK);
}

/* Tenants 0, 2 and 4 are on the default book, 1 and 3 on their own. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/hm-test-close-books-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(ledger_open(&ledger, dir, NULL), HM_OK);
    cr_assert_eq(ledger_pricebook_put(ledger, "default", default_book), HM_OK);
    for (unsigned i = 0; i < TENANTS; i++) {
        struct tenant tenant = { .active = 1, .created_s = 1698796800,
                                 .service_start_s = 1698796800 };
        memset(tenant.id, 0, UUID_SIZE);
        tenant.id[0] = (uint8_t)(0x10 + i);
        snprintf(tenant.name, sizeof tenant.name, "tenant-%u", i);
        cr_assert_eq(ledger_tenant_create(ledger, &tenant), HM_OK);
        memcpy(ids[i], tenant.id, UUID_SIZE);
        if (i % 2 == 1) {
            char scope[UUID_TEXT_SIZE];
            uuid_format(tenant.id, scope);
            cr_assert_eq(ledger_pricebook_put(ledger, scope, own_book), HM_OK);
        }
    }
    gpu_hours_append();
}

static void teardown(void)
{
    ledger_close(ledger);
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    cr_assert_eq(system(command), 0);
}

TestSuite(close_books, .init = setup, .fini = teardown);

Test(close_books, each_invoice_its_own_book)
{
    char summary_path[300];
    snprintf(summary_path, sizeof summary_path, "%s/summary.txt", dir);
    FILE *summary = fopen(summary_path, "w");
    cr_assert_not_null(summary);
    int rc = billing_close(ledger, PERIOD, NULL, summary);
    fclose(summary);
    cr_assert_eq(rc, HM_OK);

    char shared_sha[BOOK_SHA256_HEX_SIZE], own_sha[BOOK_SHA256_HEX_SIZE];
    ledger_book_sha256(default_book, shared_sha);
    ledger_book_sha256(own_book, own_sha);
    for (unsigned i = 0; i < TENANTS; i++) {
        char *text = NULL;
        cr_assert_eq(ledger_invoice_get(ledger, ids[i], PERIOD, &text), HM_OK,
                     "tenant %u has no invoice", i);
        json_t *invoice = json_loads(text, 0, NULL);
        free(text);
        cr_assert_not_null(invoice);
        int own = i % 2 == 1;
        const char *book = json_string_value(json_object_get(invoice, "price_book"));
        const char *sha = json_string_value(json_object_get(invoice, "price_book_sha256"));
        json_int_t total = json_integer_value(
            json_object_get(json_object_get(invoice, "total"), "amount_minor"));
        cr_assert_str_eq(book, own ? "own" : "shared", "tenant %u", i);
        cr_assert_str_eq(sha, own ? own_sha : shared_sha, "tenant %u", i);
        /* The base fee and one A100 hour: 10.00 + 2.00 on the shared book, 20.00 + 3.00 on its own. */
        cr_assert_eq(total, own ? 2300 : 1200, "tenant %u totals %lld", i, (long long)total);
        json_decref(invoice);
    }
}
