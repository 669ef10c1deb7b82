-- Sealed invoices, their lines and credit notes, as the engine stores them.
-- Money is an integer count of the currency's minor unit (cents for USD)
-- beside the ISO 4217 code and its exponent, exactly as the engine computes
-- it. Quantities and unit prices are exact decimals (NUMERIC).

CREATE TABLE invoices (
    number VARCHAR(40) PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    issuer VARCHAR(64) NOT NULL,
    period DATE NOT NULL CHECK (EXTRACT(DAY FROM period) = 1),
    period_start TIMESTAMPTZ NOT NULL,
    period_end TIMESTAMPTZ NOT NULL,
    revision INTEGER NOT NULL CHECK (revision >= 1),
    replaces VARCHAR(40),
    status VARCHAR(20) NOT NULL CHECK (status IN ('finalized', 'void')),
    currency CHAR(3) NOT NULL,
    currency_exponent SMALLINT NOT NULL CHECK (currency_exponent BETWEEN 0 AND 4),
    subtotal_minor BIGINT NOT NULL,
    discount_minor BIGINT NOT NULL,
    credits_applied_minor BIGINT NOT NULL,
    total_minor BIGINT NOT NULL,
    price_book VARCHAR(255),
    price_book_sha256 CHAR(64),
    event_count BIGINT,
    closed_at TIMESTAMPTZ,
    voided_at TIMESTAMPTZ,
    void_reason TEXT,
    -- The engine's seal: SHA-256 of the canonical JSON without this member.
    sha256 CHAR(64) NOT NULL,
    -- The sealed document as the engine stores it.
    document JSONB NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL,
    CHECK ((status = 'void') = (voided_at IS NOT NULL))
);
CREATE INDEX invoices_tenant_period ON invoices (tenant_id, period);

CREATE TABLE invoice_lines (
    invoice_number VARCHAR(40) NOT NULL REFERENCES invoices (number) ON DELETE CASCADE,
    line_number INTEGER NOT NULL CHECK (line_number >= 1),
    kind VARCHAR(40) NOT NULL,
    description TEXT NOT NULL,
    dimension VARCHAR(128),
    quantity NUMERIC NOT NULL,
    quantity_exact BOOLEAN NOT NULL,
    unit VARCHAR(40) NOT NULL,
    unit_price NUMERIC NOT NULL,
    unit_price_exact BOOLEAN NOT NULL,
    price_unit VARCHAR(40) NOT NULL,
    amount_minor BIGINT NOT NULL,
    events BIGINT,
    slice_start TIMESTAMPTZ,
    -- An adjustment line's earlier period (late usage billed on this invoice).
    adjusted_period DATE,
    PRIMARY KEY (invoice_number, line_number)
);

CREATE TABLE credit_notes (
    number VARCHAR(40) PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    issuer VARCHAR(64) NOT NULL,
    credited_invoice VARCHAR(40) NOT NULL REFERENCES invoices (number),
    period DATE NOT NULL CHECK (EXTRACT(DAY FROM period) = 1),
    kind VARCHAR(20) NOT NULL CHECK (kind IN ('manual', 'late_usage')),
    status VARCHAR(20) NOT NULL CHECK (status IN ('finalized', 'void')),
    revision INTEGER NOT NULL CHECK (revision >= 1),
    currency CHAR(3) NOT NULL,
    currency_exponent SMALLINT NOT NULL CHECK (currency_exponent BETWEEN 0 AND 4),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    reason TEXT NOT NULL,
    events BIGINT,
    price_book_sha256 CHAR(64),
    issued_at TIMESTAMPTZ NOT NULL,
    sha256 CHAR(64) NOT NULL,
    document JSONB NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX credit_notes_invoice ON credit_notes (credited_invoice);
