/*
 * Billing cases that cross ingest and pricing: events sent to a real meterd,
 * then rated from the ledger with the reference price book.
 */
#include "meterd_harness.h"

#include "engine/lib/billing.h"

static struct harness server;
static uint8_t frame[FRAME_SIZE_MAX];

static void setup(void) { harness_make_dir(&server); }
static void teardown(void) { harness_remove(&server); }

TestSuite(billing_cases, .init = setup, .fini = teardown, .timeout = 60);

static void load_reference_book(void)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    FILE *file = fopen(HM_SOURCE_DIR "/tests/data/pricebooks/pb1.json", "r");
    cr_assert_not_null(file);
    static char text[65536];
    size_t size = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[size] = '\0';
    cr_assert_eq(ledger_pricebook_put(ledger, "default", text), HM_OK);
    ledger_close(ledger);
}

/* Rates June 2024 for a tenant and returns the amount of the line of the given kind and dimension. */
static int64_t line_amount(const struct test_tenant *tenant, const char *name,
                           enum invoice_line_kind kind, const char *dimension)
{
    struct ledger *ledger = NULL;
    cr_assert_eq(ledger_open(&ledger, server.dir, NULL), HM_OK);
    struct tenant record;
    cr_assert_eq(ledger_tenant_find(ledger, name, &record), HM_OK);
    cr_assert_eq(memcmp(record.id, tenant->id, UUID_SIZE), 0);
    struct invoice invoice;
    char error[512] = "";
    cr_assert_eq(billing_draft(ledger, &record, 202406, &invoice, NULL, error, sizeof error), HM_OK,
                 "rating failed: %s", error);
    int64_t amount = -1;
    for (size_t i = 0; i < invoice.line_count; i++) {
        if (invoice.lines[i].kind == kind && strcmp(invoice.lines[i].dimension, dimension) == 0)
            amount = invoice.lines[i].amount.minor;
    }
    invoice_free(&invoice);
    ledger_close(ledger);
    return amount;
}

Test(billing_cases, event_delivered_twice_billed_once)
{
    struct test_tenant tenant;
    harness_tenant(&server, "c8-tenant", &tenant);
    load_reference_book();
    harness_start(&server);

    struct event u2 = harness_inference(0x52, "m-large", 1200000, 300000);
    size_t size = harness_frame(frame, &tenant, 1, &u2, 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);
    struct frame_ack ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(ack.duplicates, 1);

    struct event changed = u2;
    changed.u.inference.output_tokens = 300001;
    size = harness_frame(frame, &tenant, 2, &changed, 1);
    ack = harness_send_frame(&server, frame, size);
    cr_assert_eq(ack.status, FRAME_ACCEPTED);
    cr_assert_eq(ack.conflicts, 1);
    cr_assert_eq(ack.stored, 0);
    cr_assert_eq(harness_stop(&server), 0);

    int64_t input = line_amount(&tenant, "c8-tenant", INVOICE_LINE_INPUT_TOKENS, "m-large");
    int64_t output = line_amount(&tenant, "c8-tenant", INVOICE_LINE_OUTPUT_TOKENS, "m-large");
    cr_assert_eq(input, 360);
    cr_assert_eq(output, 450);
    cr_assert_eq(input + output, 810);
}

Test(billing_cases, idempotency_key_scoped_to_tenant)
{
    struct test_tenant a, b;
    harness_tenant(&server, "tenant-a", &a);
    harness_tenant(&server, "tenant-b", &b);
    load_reference_book();
    harness_start(&server);

    /*
     * Two events of A with different UUIDs that carry the same provider
     * response id in their allocation id, and one event of B with A's first
     * UUID: three events in all.
     */
    struct event events[3];
    for (int i = 0; i < 3; i++) {
        memset(&events[i], 0, sizeof events[i]);
        events[i].kind = EVENT_GPU_ALLOCATION;
        events[i].timestamp_us = HARNESS_JUNE_US;
        strcpy(events[i].u.gpu.allocation_id, "chatcmpl-424");
        strcpy(events[i].u.gpu.pool_id, "pool-1");
        strcpy(events[i].u.gpu.gpu_type, "H100");
        events[i].u.gpu.duration_s = 3600;
    }
    memset(events[0].event_id, 0xa1, UUID_SIZE);
    memset(events[1].event_id, 0xa2, UUID_SIZE);
    memset(events[2].event_id, 0xa1, UUID_SIZE);

    size_t size = harness_frame(frame, &a, 1, events, 2);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 2);
    size = harness_frame(frame, &b, 1, &events[2], 1);
    cr_assert_eq(harness_send_frame(&server, frame, size).stored, 1);

    uint64_t a_events = harness_quantity(&server, a.id, ROLLUP_EVENTS, "gpu_allocation");
    uint64_t b_events = harness_quantity(&server, b.id, ROLLUP_EVENTS, "gpu_allocation");
    cr_assert_eq(a_events, 2);
    cr_assert_eq(b_events, 1);
    cr_assert_eq(a_events + b_events, 3);
    cr_assert_eq(harness_stop(&server), 0);
    cr_assert_eq(line_amount(&a, "tenant-a", INVOICE_LINE_GPU, "H100"), 500);
    cr_assert_eq(line_amount(&b, "tenant-b", INVOICE_LINE_GPU, "H100"), 250);
}
