#!/usr/bin/env python3
"""Compare the engine's invoices with the output of billing_oracle.py, to the minor unit.

Usage:
    compare_invoices.py ORACLE.json NAME=INVOICE.json ...

Each INVOICE.json is the output of `meterctl invoice show NAME --period P --json`.
Lines are matched by (kind, dimension). Every amount, the subtotal, the
discount and the total must be equal, and the engine's lines must follow the
fixed kind order of docs/PRICING.md. Prints one row per difference and exits
1 when there is any, 0 when every invoice matches.
"""

import hashlib
import json
import sys

LINE_KINDS = (
    "base_fee", "gpu", "input_tokens", "output_tokens", "cached_input_tokens",
    "api_calls", "storage", "transfer", "discount",
)


def compare_tenant(name, expected, invoice, period):
    """Return the differences between one oracle invoice and one engine invoice."""
    differences = []

    def differ(what, engine_value, oracle_value):
        differences.append(f"{name}: {what}: engine {engine_value}, oracle {oracle_value}")

    for key, value in (("tenant_name", name), ("tenant_id", expected["tenant_id"]),
                       ("period", period), ("currency", expected["currency"]),
                       ("price_book", expected["price_book"])):
        if invoice.get(key) != value:
            differ(key, invoice.get(key), value)

    # The seal is SHA-256 over the invoice without its "sha256" member, with
    # sorted keys and no whitespace, as README.md describes.
    unsealed = {key: value for key, value in invoice.items() if key != "sha256"}
    canonical = json.dumps(unsealed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    seal = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if invoice.get("sha256") != seal:
        differ("sha256 seal", invoice.get("sha256"), seal)

    engine_lines = {}
    kinds_in_order = []
    for line in invoice.get("lines", []):
        key = (line.get("kind"), line.get("dimension", ""))
        if key in engine_lines:
            differ(f"line {key}", "appears twice", "once")
        engine_lines[key] = line
        kinds_in_order.append(line.get("kind"))
    rank = [LINE_KINDS.index(kind) if kind in LINE_KINDS else -1 for kind in kinds_in_order]
    if rank != sorted(rank) or -1 in rank:
        differ("line kind order", kinds_in_order, "in the order " + ", ".join(LINE_KINDS))

    oracle_lines = {(line["kind"], line["dimension"]): line for line in expected["lines"]}
    for key in sorted(set(engine_lines) | set(oracle_lines)):
        label = f"line {key[0]}" + (f" {key[1]}" if key[1] else "")
        engine_line = engine_lines.get(key)
        oracle_line = oracle_lines.get(key)
        if engine_line is None:
            differ(label, "missing", f"{oracle_line['amount_minor']} minor units "
                   f"(metered quantity {oracle_line['metered_quantity']})")
        elif oracle_line is None:
            differ(label, f"{engine_line.get('amount_minor')} minor units "
                   f"(quantity {engine_line.get('quantity')})", "no such line")
        elif engine_line.get("amount_minor") != oracle_line["amount_minor"]:
            differ(label, f"{engine_line.get('amount_minor')} minor units "
                   f"(quantity {engine_line.get('quantity')} {engine_line.get('unit')})",
                   f"{oracle_line['amount_minor']} minor units "
                   f"(metered quantity {oracle_line['metered_quantity']})")

    for key, oracle_key in (("subtotal", "subtotal_minor"), ("discount", "discount_minor"),
                            ("total", "total_minor")):
        engine_value = (invoice.get(key) or {}).get("amount_minor")
        if engine_value != expected[oracle_key]:
            differ(key, engine_value, expected[oracle_key])
    return differences


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as file:
        oracle = json.load(file)
    invoices = {}
    for argument in sys.argv[2:]:
        name, _, path = argument.partition("=")
        with open(path, encoding="utf-8") as file:
            invoices[name] = json.load(file)

    differences = []
    for name in sorted(set(oracle["tenants"]) | set(invoices)):
        if name not in invoices:
            differences.append(f"{name}: engine invoice missing")
        elif name not in oracle["tenants"]:
            differences.append(f"{name}: engine invoice for a tenant the oracle does not know")
        else:
            differences += compare_tenant(name, oracle["tenants"][name], invoices[name],
                                          oracle["period"])

    for name in sorted(invoices):
        expected = oracle["tenants"].get(name)
        if expected is not None:
            engine_total = (invoices[name].get("total") or {}).get("amount_minor")
            print(f"{name}: price book {expected['price_book']}, {len(expected['lines'])} lines, "
                  f"total in {expected['currency']} minor units: oracle "
                  f"{expected['total_minor']}, engine {engine_total}")
    if differences:
        print(f"MISMATCH: {len(differences)} differences between the engine and the oracle:")
        for difference in differences:
            print(f"  {difference}")
        return 1
    print(f"every invoice matches the oracle: {len(invoices)} tenants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
