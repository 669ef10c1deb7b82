#!/usr/bin/env python3
"""Compute the invoices of a trace replay independently of the engine.

The computation follows docs/REPLAY.md (how trace rows become events of
tenants) and docs/PRICING.md (rollups, price books and rating). It never runs
or links the engine, so a disagreement with `meterctl invoice show --json`
points at a bug on one side. Only the standard library is used, and no
amount, price or quantity passes through float: prices are parsed with
decimal and every product or division is an exact Fraction, rounded once.

Usage:
    billing_oracle.py --keys KEYS --pricebook BOOK.json [--tenant-pricebook NAME=BOOK.json]
                      --trace FILE ... [--limit N] [--period YYYY-MM]
    billing_oracle.py --self-test

The output is JSON on stdout: per tenant name, every invoice line (kind,
dimension, metered quantity, amount in minor units), the subtotal, the
discount and the total in minor units, plus the row and event counts of
the replay.
"""

import argparse
import calendar
import csv
import decimal
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction

decimal.getcontext().prec = 60

# Replay constants, from docs/REPLAY.md.
MOONCAKE_EPOCH_S = 1_700_157_600  # 2023-11-16T18:00:00Z, time 0 of the Mooncake trace
CACHE_BLOCK_TOKENS = 512
TOKENS_PER_GPU_MINUTE = 250_000
STORAGE_BASE_BYTES = 50_000_000_000
BYTES_PER_TOKEN = 4
GPU_MINUTE_S = 60
STORAGE_WINDOW_S = 300
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"

MODELS = {
    "azure-code": ("coder-7b", "coder-34b"),
    "azure-conv": ("chat-8b", "chat-70b"),
    "mooncake": ("kimi-chat", "kimi-chat"),
}
GPU_TYPES = {"azure-code": "A100", "azure-conv": "H100", "mooncake": "H800"}

# Rating constants, from docs/PRICING.md.
SECONDS_PER_HOUR = 3600
PER_MILLION = 1_000_000
BYTES_PER_GB = 1_000_000_000
# Minor-unit exponents of the ISO 4217 currencies that docs/PRICING.md names.
CURRENCY_EXPONENTS = {
    "USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "KRW": 0,
    "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3,
}
# The fixed order of invoice lines.
LINE_KINDS = (
    "base_fee", "gpu", "input_tokens", "output_tokens", "cached_input_tokens",
    "api_calls", "storage", "transfer", "discount",
)

AZURE_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?")
DECIMAL_TEXT = re.compile(r"-?(\d{1,18})(?:\.(\d{1,12}))?")
PERIOD_TEXT = re.compile(r"(\d{4})-(\d{2})")


class OracleError(Exception):
    """An input that the oracle cannot process: bad trace, keys file or price book."""


@dataclass(frozen=True)
class Row:
    source: str
    row: int  # 1-based data row number within its file
    timestamp_us: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int


@dataclass
class Usage:
    """Metered totals of one tenant in one period, in the meters' own units."""

    gpu_seconds: dict = field(default_factory=dict)  # GPU type -> seconds
    input_tokens: dict = field(default_factory=dict)  # model -> uncached input tokens
    output_tokens: dict = field(default_factory=dict)
    cached_input_tokens: dict = field(default_factory=dict)
    api_calls: int = 0
    storage_byte_seconds: int = 0
    transfer_bytes: int = 0


def add_to(table, key, quantity):
    table[key] = table.get(key, 0) + quantity


# ---- Traces ----


def source_of(path):
    """Return the trace source of a file name, with the rule of `meterctl replay --trace`."""
    base = os.path.basename(path)
    if base.endswith(".jsonl"):
        return "mooncake"
    if not base.endswith(".csv"):
        raise OracleError(f"{path}: unknown trace type; expected .csv or .jsonl")
    is_code = "code" in base
    is_conv = "conv" in base
    if is_code == is_conv:
        raise OracleError(f"{path}: a .csv name must contain exactly one of 'code' and 'conv'")
    return "azure-code" if is_code else "azure-conv"


def parse_azure_timestamp(text, where):
    """Parse `YYYY-MM-DD HH:MM:SS.fffffff` as UTC microseconds, cutting the fraction to 6 digits."""
    match = AZURE_TIMESTAMP.fullmatch(text)
    if match is None:
        raise OracleError(f"{where}: invalid timestamp {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = (match.group(7) or "")[:6].ljust(6, "0")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return seconds * 1_000_000 + int(fraction)


def read_azure(path, source, limit):
    """Yield the rows of an Azure CSV file, whose lines end in CRLF except maybe the last."""
    with open(path, "rb") as file:
        text = file.read().decode("ascii")
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != AZURE_HEADER:
        raise OracleError(f"{path}:1: expected the header {AZURE_HEADER!r}")
    data_lines = lines[1:] if limit is None else lines[1 : 1 + limit]
    for index, fields in enumerate(csv.reader(io.StringIO("\n".join(data_lines)))):
        row = index + 1
        where = f"{path}:{row + 1}"
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
            raise OracleError(f"{where}: expected TIMESTAMP,ContextTokens,GeneratedTokens")
        timestamp_us = parse_azure_timestamp(fields[0], where)
        yield Row(source, row, timestamp_us, int(fields[1]), int(fields[2]), 0)


def read_mooncake(path, limit):
    """Yield the rows of a Mooncake JSONL file, with cached tokens from one prefix cache."""
    seen = set()
    with open(path, "r", encoding="utf-8", newline="\n") as file:
        for index, line in enumerate(file):
            if limit is not None and index >= limit:
                break
            row = index + 1
            record = json.loads(line, parse_float=decimal.Decimal)
            timestamp = record["timestamp"]
            input_tokens = record["input_length"]
            output_tokens = record["output_length"]
            hash_ids = record["hash_ids"]
            for value in (timestamp, input_tokens, output_tokens, *hash_ids):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise OracleError(f"{path}:{row}: expected non-negative integers")

            # Count the leading ids seen in earlier rows, stopping at the first new one.
            leading = 0
            for hash_id in hash_ids:
                if hash_id not in seen:
                    break
                leading += 1
            cached = min(CACHE_BLOCK_TOKENS * leading, input_tokens)
            seen.update(hash_ids)

            timestamp_us = MOONCAKE_EPOCH_S * 1_000_000 + 1000 * timestamp
            yield Row("mooncake", row, timestamp_us, input_tokens, output_tokens, cached)


def read_trace(path, limit):
    source = source_of(path)
    rows = read_mooncake(path, limit) if source == "mooncake" else read_azure(path, source, limit)
    last_us = None
    for row in rows:
        if last_us is not None and row.timestamp_us < last_us:
            raise OracleError(f"{path}: row {row.row} goes back in time")
        last_us = row.timestamp_us
        yield row


# ---- Replay rule ----


def read_keys(path):
    """Return (uuid, name) per tenant, in file order: the order is the tenant index."""
    tenants = []
    with open(path, "r", encoding="ascii") as file:
        for number, line in enumerate(file, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.split()
            if len(fields) != 3:
                raise OracleError(f"{path}:{number}: expected TENANT_UUID TENANT_NAME API_KEY")
            tenants.append((fields[0], fields[1]))
    if not tenants:
        raise OracleError(f"{path}: no tenants")
    return tenants


def row_hash(source, row):
    digest = hashlib.sha256(f"{source}:{row}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def tenant_and_model(source, row, tenant_count):
    h = row_hash(source, row)
    return h % tenant_count, MODELS[source][(h // tenant_count) % 2]


def replay_events(trace_paths, tenant_count, limit):
    """Return ({(tenant index, id name): event}, row count) for the replay of the traces.

    An event is a tuple whose first field is its kind. As in the ledger, an
    event with the tenant and id name of a stored one is counted once. When
    its contents differ, it is a conflict and raises OracleError.
    """
    events = {}
    row_count = 0

    def emit(tenant, name, event):
        key = (tenant, name)
        previous = events.setdefault(key, event)
        if previous != event:
            raise OracleError(f"event {name} of tenant {tenant} conflicts: {previous} != {event}")

    for path in trace_paths:
        minutes = {}  # (tenant, minute start s) -> tokens, in first-seen order
        windows = {}  # (tenant, window start s) -> tokens
        source = source_of(path)
        for row in read_trace(path, limit):
            row_count += 1
            tenant, model = tenant_and_model(row.source, row.row, tenant_count)
            latency_ms = 200 + 30 * row.output_tokens
            gpu_time_ms = row.input_tokens // 50 + 25 * row.output_tokens
            endpoint = "/v1/completions" if source == "azure-code" else "/v1/chat/completions"
            prefix = f"{row.source}:{row.row}"
            emit(tenant, prefix + ":inference",
                 ("inference", row.timestamp_us, model, row.input_tokens, row.output_tokens,
                  row.cached_input_tokens, latency_ms, gpu_time_ms))
            emit(tenant, prefix + ":api",
                 ("api_call", row.timestamp_us, endpoint, 200, latency_ms))

            tokens = row.input_tokens + row.output_tokens
            seconds = row.timestamp_us // 1_000_000
            add_to(minutes, (tenant, seconds - seconds % GPU_MINUTE_S), tokens)
            if source == "mooncake":
                add_to(windows, (tenant, seconds - seconds % STORAGE_WINDOW_S), tokens)

        for (tenant, minute), tokens in minutes.items():
            gpus = -(-tokens // TOKENS_PER_GPU_MINUTE)
            emit(tenant, f"{source}:{tenant}:{minute}:gpu",
                 ("gpu", minute * 1_000_000, GPU_MINUTE_S * gpus, GPU_TYPES[source],
                  f"{source}-pool", f"{source}-{tenant}-{minute}"))

        # Stored bytes grow with the tokens of this window and all earlier ones of the file.
        cumulative = {}
        for (tenant, window), tokens in sorted(windows.items(), key=lambda item: item[0][1]):
            add_to(cumulative, tenant, tokens)
            stored = STORAGE_BASE_BYTES * (tenant + 1) + BYTES_PER_TOKEN * cumulative[tenant]
            emit(tenant, f"{source}:{tenant}:{window}:storage",
                 ("storage", window * 1_000_000, stored, BYTES_PER_TOKEN * tokens))
    return events, row_count


# ---- Rollups ----


def period_bounds(period):
    """Return the [start, end) Unix seconds of a `YYYY-MM` period."""
    match = PERIOD_TEXT.fullmatch(period)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise OracleError(f"invalid period {period!r}; expected YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
    end = calendar.timegm((next_year, next_month, 1, 0, 0, 0, 0, 0, 0))
    return start, end


def storage_byte_seconds(samples, start_s, end_s):
    """Integrate stored bytes over [start_s, end_s).

    samples are (second, bytes stored). Each level lasts from its second
    until the next sample, and the last level lasts until end_s. The level
    at start_s is that of the last sample before it, or 0 bytes when there
    is none.
    """
    total = 0
    level = 0
    since = start_s
    for second, stored in sorted(samples, key=lambda sample: sample[0]):
        if second < start_s:
            level = stored
            continue
        if second >= end_s:
            break
        total += level * (second - since)
        since = second
        level = stored
    return total + level * (end_s - since)


def usage_of_tenants(events, tenant_count, start_s, end_s):
    """Sum the events of each tenant into its Usage for the period [start_s, end_s)."""
    usages = [Usage() for _ in range(tenant_count)]
    samples = [[] for _ in range(tenant_count)]
    for (tenant, _name), event in events.items():
        kind, timestamp_us = event[0], event[1]
        second = timestamp_us // 1_000_000
        if kind == "storage":
            samples[tenant].append((second, event[2]))
        if not start_s <= second < end_s:
            continue
        usage = usages[tenant]
        if kind == "inference":
            _, _, model, input_tokens, output_tokens, cached, _, _ = event
            add_to(usage.input_tokens, model, input_tokens - cached)
            add_to(usage.output_tokens, model, output_tokens)
            add_to(usage.cached_input_tokens, model, cached)
        elif kind == "api_call":
            usage.api_calls += 1
        elif kind == "gpu":
            add_to(usage.gpu_seconds, event[3], event[2])
        else:
            usage.transfer_bytes += event[3]
    for tenant, usage in enumerate(usages):
        usage.storage_byte_seconds = storage_byte_seconds(samples[tenant], start_s, end_s)
    return usages


# ---- Price book and rating ----


def parse_price(value, where):
    """Parse a price book decimal string exactly; JSON numbers and exponents are rejected."""
    if not isinstance(value, str) or DECIMAL_TEXT.fullmatch(value) is None:
        raise OracleError(f"{where}: invalid decimal {value!r}")
    return Fraction(decimal.Decimal(value))


def load_pricebook(path):
    """Read a price book into plain dicts of Fractions, following docs/PRICING.md."""
    with open(path, "r", encoding="utf-8") as file:
        raw = json.load(file, parse_float=decimal.Decimal, parse_int=decimal.Decimal)
    return pricebook_from_json(raw)


def pricebook_from_json(raw):
    currency = raw["currency"]
    if currency not in CURRENCY_EXPONENTS:
        raise OracleError(f"$.currency: currency {currency!r} is not in the oracle's table")
    rounding = raw.get("rounding", "half_up")
    if rounding not in ("half_up", "half_even"):
        raise OracleError(f"$.rounding: invalid rounding {rounding!r}")

    def optional_price(key):
        return parse_price(raw[key], f"$.{key}") if key in raw else None

    book = {
        "name": raw["name"],
        "currency": currency,
        "exponent": CURRENCY_EXPONENTS[currency],
        "rounding": rounding,
        "base_fee": optional_price("base_fee"),
        "api_calls_per_million": optional_price("api_calls_per_million"),
        "storage_gb_month": optional_price("storage_gb_month"),
        "transfer_gb": optional_price("transfer_gb"),
        "gpu_hour": {
            gpu: parse_price(price, f"$.gpu_hour.{gpu}")
            for gpu, price in raw.get("gpu_hour", {}).items()
        },
        "tokens_per_million": {
            model: {
                direction: parse_price(price, f"$.tokens_per_million.{model}.{direction}")
                for direction, price in prices.items()
            }
            for model, prices in raw.get("tokens_per_million", {}).items()
        },
        "discount_mode": None,
        "tiers": [],
    }
    discount = raw.get("gpu_volume_discount")
    if discount is not None:
        book["discount_mode"] = discount["mode"]
        book["tiers"] = [
            (parse_price(tier["above_hours"], f"$.gpu_volume_discount.tiers[{i}].above_hours"),
             parse_price(tier["percent"], f"$.gpu_volume_discount.tiers[{i}].percent"))
            for i, tier in enumerate(discount["tiers"])
        ]
    return book


def round_once(value, rounding):
    """Round an exact Fraction to an integer: half_up moves a tie away from zero."""
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    quotient, remainder = divmod(magnitude.numerator, magnitude.denominator)
    twice = 2 * remainder
    if twice > magnitude.denominator:
        quotient += 1
    elif twice == magnitude.denominator:
        if rounding == "half_up" or quotient % 2 == 1:
            quotient += 1
    return sign * quotient


def lookup(table, key, what):
    if key in table:
        return table[key]
    if "*" in table:
        return table["*"]
    raise OracleError(f"no price for {what} {key!r} and no '*' fallback")


def token_price(book, model, kind):
    prices = lookup(book["tokens_per_million"], model, "model")
    direction = {"input_tokens": "input", "output_tokens": "output"}.get(kind)
    if direction is None:
        # Cached input uses the model's cached_input price, else its input price.
        direction = "cached_input" if "cached_input" in prices else "input"
    if direction not in prices:
        raise OracleError(f"no {direction} price for model {model!r}")
    return prices[direction]


def required(price, what):
    if price is None:
        raise OracleError(f"no price for {what} in the price book")
    return price


def gpu_discount(book, gpu_seconds, gpu_subtotal_minor):
    """Return the discount in minor units (>= 0) on the sum of the rounded GPU lines."""
    if book["discount_mode"] is None or not book["tiers"] or gpu_seconds == 0:
        return 0
    hours = Fraction(gpu_seconds, SECONDS_PER_HOUR)
    exceeded = [i for i, (above, _) in enumerate(book["tiers"]) if hours > above]
    if not exceeded:
        return 0
    highest = exceeded[-1]
    if book["discount_mode"] == "volume":
        fraction = book["tiers"][highest][1] / 100
    elif book["discount_mode"] == "graduated":
        # Tier t spans from its threshold to the next one; the hours end inside the highest.
        weighted = Fraction(0)
        for i in range(highest + 1):
            lower, percent = book["tiers"][i]
            upper = book["tiers"][i + 1][0] if i < highest else hours
            weighted += percent / 100 * (upper - lower)
        fraction = weighted / hours
    else:
        raise OracleError(f"unknown discount mode {book['discount_mode']!r}")
    return round_once(gpu_subtotal_minor * fraction, book["rounding"])


def rate(usage, book, start_s, end_s, service_start_s=0):
    """Rate one tenant's Usage: return (lines, subtotal, discount, total) in minor units.

    Each line is {kind, dimension, metered_quantity, amount_minor}; metered
    quantities are in the meters' units (GPU-seconds, tokens, calls,
    byte-seconds, bytes), and a line with quantity 0 is left out.
    """
    minor_per_unit = 10 ** book["exponent"]
    lines = []

    def add_line(kind, dimension, metered, billed, unit_price):
        amount = round_once(billed * unit_price * minor_per_unit, book["rounding"])
        lines.append({"kind": kind, "dimension": dimension,
                      "metered_quantity": str(metered), "amount_minor": amount})

    if book["base_fee"] is not None:
        start = max(service_start_s, start_s)
        if start < end_s:
            share = Fraction(end_s - start, end_s - start_s)
            add_line("base_fee", "", share, share, book["base_fee"])

    gpu_seconds = 0
    for gpu_type, seconds in sorted(usage.gpu_seconds.items()):
        if seconds == 0:
            continue
        price = lookup(book["gpu_hour"], gpu_type, "GPU type")
        add_line("gpu", gpu_type, seconds, Fraction(seconds, SECONDS_PER_HOUR), price)
        gpu_seconds += seconds
    gpu_subtotal = sum(line["amount_minor"] for line in lines if line["kind"] == "gpu")

    for kind in ("input_tokens", "output_tokens", "cached_input_tokens"):
        for model, tokens in sorted(getattr(usage, kind).items()):
            if tokens:
                price = token_price(book, model, kind)
                add_line(kind, model, tokens, Fraction(tokens, PER_MILLION), price)
    if usage.api_calls:
        price = required(book["api_calls_per_million"], "API calls")
        add_line("api_calls", "", usage.api_calls, Fraction(usage.api_calls, PER_MILLION), price)
    if usage.storage_byte_seconds:
        price = required(book["storage_gb_month"], "storage")
        gb_months = Fraction(usage.storage_byte_seconds, BYTES_PER_GB * (end_s - start_s))
        add_line("storage", "", usage.storage_byte_seconds, gb_months, price)
    if usage.transfer_bytes:
        price = required(book["transfer_gb"], "data transfer")
        gigabytes = Fraction(usage.transfer_bytes, BYTES_PER_GB)
        add_line("transfer", "", usage.transfer_bytes, gigabytes, price)

    subtotal = sum(line["amount_minor"] for line in lines)
    discount = gpu_discount(book, gpu_seconds, gpu_subtotal)
    if discount:
        lines.append({"kind": "discount", "dimension": "",
                      "metered_quantity": str(gpu_seconds), "amount_minor": -discount})
    return lines, subtotal, discount, subtotal - discount


def compute_invoices(keys_path, book_path, tenant_book_paths, trace_paths, limit, period):
    """Replay the traces and rate every tenant of the keys file.

    tenant_book_paths maps a tenant name to its own price book, which
    replaces the default book_path for that tenant.
    """
    tenants = read_keys(keys_path)
    default_book = load_pricebook(book_path)
    names = {name for _, name in tenants}
    for name in tenant_book_paths:
        if name not in names:
            raise OracleError(f"--tenant-pricebook names {name!r}, which is not in the keys file")
    start_s, end_s = period_bounds(period)
    events, row_count = replay_events(trace_paths, len(tenants), limit)
    usages = usage_of_tenants(events, len(tenants), start_s, end_s)

    invoices = {}
    for index, ((tenant_id, name), usage) in enumerate(zip(tenants, usages)):
        path = tenant_book_paths.get(name)
        book = load_pricebook(path) if path else default_book
        lines, subtotal, discount, total = rate(usage, book, start_s, end_s)
        invoices[name] = {
            "tenant_id": tenant_id,
            "tenant_index": index,
            "price_book": book["name"],
            "currency": book["currency"],
            "lines": lines,
            "subtotal_minor": subtotal,
            "discount_minor": discount,
            "total_minor": total,
        }
    return {
        "period": period,
        "rows": row_count,
        "events": len(events),
        "tenants": invoices,
    }


# ---- Self-test: the worked examples of docs/PRICING.md and docs/REPLAY.md ----


def self_test():
    failures = []

    def check(label, actual, expected):
        if actual != expected:
            failures.append(f"{label}: got {actual}, expected {expected}")

    def book_with(**fields):
        raw = {"name": "self-test", "currency": "USD"}
        raw.update(fields)
        return pricebook_from_json(raw)

    def line_amount(lines, kind, dimension=""):
        matches = [line["amount_minor"] for line in lines
                   if line["kind"] == kind and line["dimension"] == dimension]
        return matches[0] if len(matches) == 1 else None

    june = period_bounds("2024-06")
    february = period_bounds("2024-02")

    # Tokens at 2.50 per million, both roundings.
    for rounding, tokens, expected in (("half_up", 15_798_000, 3950),
                                       ("half_even", 15_798_000, 3950),
                                       ("half_up", 15_794_000, 3949),
                                       ("half_even", 15_794_000, 3948)):
        book = book_with(rounding=rounding, tokens_per_million={"m-mid": {"input": "2.50"}})
        lines, _, _, _ = rate(Usage(input_tokens={"m-mid": tokens}), book, *june)
        check(f"m-mid {tokens} tokens {rounding}", line_amount(lines, "input_tokens", "m-mid"),
              expected)

    # 7 x 10^11 output tokens at 15.00 per million.
    book = book_with(tokens_per_million={"m-large": {"output": "15.00"}})
    lines, _, _, _ = rate(Usage(output_tokens={"m-large": 7 * 10**11}), book, *june)
    check("m-large 7e11 output", line_amount(lines, "output_tokens", "m-large"), 1_050_000_000)

    # Cached input falls back to the input price when the model has no cached_input price.
    book = book_with(tokens_per_million={"m": {"input": "2.00"}})
    lines, _, _, _ = rate(Usage(cached_input_tokens={"m": 1_000_000}), book, *june)
    check("cached input at the input price", line_amount(lines, "cached_input_tokens", "m"), 200)

    # Storage in February 2024 (29 days): 100 GB for the whole month, then for 14 days.
    book = book_with(storage_gb_month="0.02")
    day = 86_400
    whole = storage_byte_seconds([(february[0], 100 * BYTES_PER_GB)], *february)
    lines, _, _, _ = rate(Usage(storage_byte_seconds=whole), book, *february)
    check("100 GB all February", line_amount(lines, "storage"), 200)
    samples = [(february[0], 100 * BYTES_PER_GB), (february[0] + 14 * day, 0)]
    part = storage_byte_seconds(samples, *february)
    lines, _, _, _ = rate(Usage(storage_byte_seconds=part), book, *february)
    check("100 GB for 14 of 29 days", line_amount(lines, "storage"), 97)

    # Proration: JPY, 10,000 a month from 2024-01-26, plus 1,234,567 input tokens at 450.
    january = period_bounds("2024-01")
    service_start = calendar.timegm((2024, 1, 26, 0, 0, 0, 0, 0, 0))
    book = pricebook_from_json({"name": "jpy", "currency": "JPY", "base_fee": "10000",
                                "tokens_per_million": {"m": {"input": "450"}}})
    usage = Usage(input_tokens={"m": 1_234_567})
    lines, _, _, total = rate(usage, book, *january, service_start_s=service_start)
    check("prorated JPY fee", line_amount(lines, "base_fee"), 1935)
    check("JPY input tokens", line_amount(lines, "input_tokens", "m"), 556)
    check("JPY total", total, 2491)
    book = book_with(base_fee="100")
    lines, _, _, _ = rate(Usage(), book, *january, service_start_s=service_start)
    check("prorated USD fee", line_amount(lines, "base_fee"), 1935)

    # Volume discount on the sum of the rounded GPU lines, rounded once.
    tiers = [{"above_hours": "1000", "percent": "10"}, {"above_hours": "5000", "percent": "20"}]
    book = book_with(gpu_hour={"H100": "2.50", "A100": "1.25", "L4": "0.35"},
                     gpu_volume_discount={"mode": "volume", "tiers": tiers})
    usage = Usage(gpu_seconds={"H100": 1_777_608, "A100": 5_760_144, "L4": 5_144_400})
    lines, subtotal, discount, total = rate(usage, book, *june)
    check("H100 line", line_amount(lines, "gpu", "H100"), 123_445)
    check("A100 line", line_amount(lines, "gpu", "A100"), 200_005)
    check("L4 line", line_amount(lines, "gpu", "L4"), 50_015)
    check("volume discount rounded once", discount, 37_347)
    check("GPU net", total, 336_118)

    # The two readings of the tiers, as GPU lines minus the discount.
    for seconds, volume_net, graduated_net in ((3_600_000, 200_000, 200_000),
                                               (3_600_001, 180_000, 200_000),
                                               (3_601_800, 180_090, 200_090),
                                               (18_000_000, 900_000, 920_000),
                                               (18_000_900, 800_040, 920_040)):
        for mode, expected in (("volume", volume_net), ("graduated", graduated_net)):
            book = book_with(gpu_hour={"G-test": "2.00"},
                             gpu_volume_discount={"mode": mode, "tiers": tiers})
            _, _, _, total = rate(Usage(gpu_seconds={"G-test": seconds}), book, *june)
            check(f"{seconds} GPU-seconds {mode}", total, expected)

    # Replay worked example: row 1 of the Azure code trace with 3 tenants.
    check("azure-code:1 tenant and model", tenant_and_model("azure-code", 1, 3), (2, "coder-7b"))
    check("Azure timestamp", parse_azure_timestamp("2023-11-16 18:17:03.9799600", "self-test"),
          1_700_158_623_979_960)

    # Storage levels: 0 before the first sample, and the last one lasts until the period end.
    check("storage before the first sample", storage_byte_seconds([(10, 5), (20, 7)], 0, 30),
          5 * 10 + 7 * 10)
    check("storage level carried into the period", storage_byte_seconds([(-5, 3)], 0, 10), 30)

    for failure in failures:
        print(f"self-test: {failure}", file=sys.stderr)
    print(f"self-test: {'FAILED' if failures else 'passed'} ({len(failures)} failures)",
          file=sys.stderr)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", help="keys file: TENANT_UUID NAME KEY per line")
    parser.add_argument("--pricebook", help="default price book JSON")
    parser.add_argument("--tenant-pricebook", action="append", default=[], metavar="NAME=FILE",
                        help="a tenant's own price book, used in place of the default")
    parser.add_argument("--trace", action="append", default=[], help="trace file, repeatable")
    parser.add_argument("--limit", type=int, help="read at most the first N rows of each trace")
    parser.add_argument("--period", default="2023-11", help="billing period YYYY-MM")
    parser.add_argument("--self-test", action="store_true",
                        help="check the oracle against the documented worked examples")
    args = parser.parse_args()

    if args.self_test:
        return self_test()
    if not args.keys or not args.pricebook or not args.trace:
        parser.error("--keys, --pricebook and at least one --trace are required")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be 0 or more")
    tenant_books = {}
    for argument in args.tenant_pricebook:
        name, separator, path = argument.partition("=")
        if not separator or not name or not path:
            parser.error(f"--tenant-pricebook {argument!r}: expected NAME=FILE")
        tenant_books[name] = path
    try:
        result = compute_invoices(args.keys, args.pricebook, tenant_books, args.trace, args.limit,
                                  args.period)
    except (OracleError, OSError, KeyError, ValueError) as error:
        print(f"billing_oracle: {error}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
