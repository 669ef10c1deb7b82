-- The platform's tables: tenants, their API keys (hashes only), usage events
-- partitioned by month, resource limits and billing configuration.
-- Applied by `meterctl db migrate`, which wraps this file in a transaction.

CREATE TABLE tenants (
    id UUID PRIMARY KEY,
    organization_name VARCHAR(255) NOT NULL UNIQUE,
    deployment_mode VARCHAR(50) NOT NULL
        CHECK (deployment_mode IN ('shared', 'dedicated', 'white_label', 'on_premise')),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    status VARCHAR(50) NOT NULL CHECK (status IN ('active', 'inactive')),
    -- Settings of the metering engine; NULL service_end means no end.
    support_tier VARCHAR(15) NOT NULL DEFAULT 'none'
        CHECK (support_tier IN ('none', 'basic', 'pro', 'enterprise')),
    issuer VARCHAR(64) NOT NULL DEFAULT 'default',
    service_start TIMESTAMPTZ,
    service_end TIMESTAMPTZ,
    metadata JSONB
);

-- A key's secret and its frame signing key never leave the engine: only the
-- SHA-256 of the secret is stored here.
CREATE TABLE api_keys (
    id VARCHAR(16) PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    key_hash VARCHAR(255) NOT NULL UNIQUE CHECK (key_hash ~ '^sha256:[0-9a-f]{64}$'),
    name VARCHAR(255),
    permissions JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    status VARCHAR(50) NOT NULL CHECK (status IN ('active', 'revoked'))
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- The primary key starts with tenant_id because the engine deduplicates an
-- event by (tenant, event UUID): two tenants may send the same UUID, and
-- both events are stored. A partitioned table's primary key must contain
-- the partition key, so "timestamp" completes it. The exporter creates the
-- monthly partitions (usage_events_yYYYYmMM) as it needs them.
CREATE TABLE usage_events (
    id UUID NOT NULL,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    "timestamp" TIMESTAMPTZ NOT NULL,
    event_type VARCHAR(100) NOT NULL
        CHECK (event_type IN ('gpu_allocation', 'inference', 'storage', 'api_call')),
    metadata JSONB NOT NULL,
    -- The engine prices usage per period on invoices, not per event: NULL.
    cost_usd DECIMAL(10, 6),
    -- The event's number in its tenant's arrival order in the ledger (1, 2, ...).
    ledger_seq BIGINT NOT NULL CHECK (ledger_seq > 0),
    PRIMARY KEY (tenant_id, id, "timestamp")
) PARTITION BY RANGE ("timestamp");
CREATE INDEX usage_events_tenant_time ON usage_events (tenant_id, "timestamp");

CREATE TABLE resource_limits (
    tenant_id UUID PRIMARY KEY REFERENCES tenants (id),
    max_concurrent_allocations INTEGER CHECK (max_concurrent_allocations >= 0),
    max_monthly_gpu_hours DECIMAL(10, 2) CHECK (max_monthly_gpu_hours >= 0),
    max_tokens_per_minute BIGINT CHECK (max_tokens_per_minute >= 0),
    allowed_models TEXT[],
    priority_tier VARCHAR(50),
    custom_limits JSONB
);

CREATE TABLE billing_config (
    tenant_id UUID PRIMARY KEY REFERENCES tenants (id),
    billing_provider VARCHAR(50) NOT NULL,
    customer_id VARCHAR(255),
    subscription_id VARCHAR(255),
    payment_method_id VARCHAR(255),
    billing_email VARCHAR(255),
    config JSONB
);
