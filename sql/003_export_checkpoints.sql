-- How far `meterctl export postgres` has copied each tenant's events: the
-- highest ledger arrival number whose event is in usage_events. The
-- exporter updates it in the same transaction as the rows it copies.

CREATE TABLE export_checkpoints (
    tenant_id UUID PRIMARY KEY REFERENCES tenants (id),
    ledger_seq BIGINT NOT NULL CHECK (ledger_seq >= 0),
    events_exported BIGINT NOT NULL CHECK (events_exported >= 0),
    updated_at TIMESTAMPTZ NOT NULL
);
