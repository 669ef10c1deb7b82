#!/usr/bin/env python3
"""Compare pricing_rate with rating_oracle.py on random price books and usage.

Generates --cases cases from --seed with rating_cases.py. It rates all of
them in one run of pricing_rate_driver (JSON lines through a pipe) and with
the oracle. Every line amount, the subtotal, discount, credits and total
must agree to the minor unit, and a failed rating must fail with the same
error class on both sides. The first line of output is "seed N"; rerun with --seed N to replay a failure.

An overflow reported by the driver counts as agreement when the oracle
expects "overflow", when some exact intermediate amount of the oracle is
above 10^18 minor units, or when a discount's exact calculation contains a
reduced ratio wider than 127 bits. The C rater stores exact rationals in
128 bits and may run out of them before an int64 amount does. Any other
overflow is a disagreement.

Exits 0 when all cases agree, 1 on any disagreement, 2 when the driver fails.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rating_cases  # noqa: E402
import rating_oracle  # noqa: E402

OVERFLOW_TOLERANCE = 10**18


def format_minor(minor, exponent):
    """Return the decimal text of an amount in minor units ("-373.47" for -37347, 2)."""
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def invoice_summary(invoice, exponent, problems):
    """Return the comparable summary of the driver's invoice JSON; adds format problems."""

    def minor(value, what):
        if not isinstance(value, dict) or not isinstance(value.get("amount_minor"), int):
            problems.append(f"{what}: no integer amount_minor in {value!r}")
            return None
        expected_text = format_minor(value["amount_minor"], exponent)
        if value.get("amount") != expected_text:
            problems.append(f"{what}: amount {value.get('amount')!r} does not match "
                            f"amount_minor {value['amount_minor']} ({expected_text!r})")
        return value["amount_minor"]

    lines = []
    for index, line in enumerate(invoice.get("lines", [])):
        lines.append({"kind": line.get("kind"), "dimension": line.get("dimension") or "",
                      "slice_start": line.get("slice_start"), "period": line.get("period"),
                      "description": line.get("description"),
                      "amount_minor": minor(line, f"line {index}")})
    credits = [{"id": int(credit["id"]), "applied": minor(credit.get("applied"), "credit"),
                "balance_after": minor(credit.get("balance_after"), "credit")}
               for credit in invoice.get("credits", [])]
    return {"lines": lines,
            "subtotal": minor(invoice.get("subtotal"), "subtotal"),
            "discount": minor(invoice.get("discount"), "discount"),
            "credits_applied": minor(invoice.get("credits_applied"), "credits_applied"),
            "credits": credits,
            "total": minor(invoice.get("total"), "total")}


def line_key(line):
    """Return what must agree on a line; discount lines also carry the discount's name."""
    key = (line["kind"], line["dimension"], line["slice_start"], line["period"],
           line["amount_minor"])
    if line["kind"] == "discount":
        key += (line["description"],)
    return key


def compare(case, expected, got):
    """Return (verdict, differences): verdict "agree", "tolerated" or "disagree"."""
    if "error" in got:
        if got.get("stage") != "rate":
            return "disagree", [f"the driver rejected the {got.get('stage')}: {got['message']}"]
        if expected.get("error") == got["error"]:
            return "agree", []
        if got["error"] == "overflow" and "error" not in expected and \
                (expected["max_intermediate"] > OVERFLOW_TOLERANCE or expected.get("wide_ratio")):
            return "tolerated", []
        expectation = expected.get("error", "an invoice")
        return "disagree", [f"expected {expectation} ({expected.get('message', '')}), "
                            f"got error {got['error']}: {got['message']}"]
    if "error" in expected:
        return "disagree", [f"expected error {expected['error']} ({expected['message']}), "
                            f"got an invoice"]
    exponent = rating_oracle.CURRENCY_EXPONENTS[case["book"]["currency"]]
    differences = []
    summary = invoice_summary(got["invoice"], exponent, differences)
    want_lines = [line_key(line) for line in expected["lines"]]
    got_lines = [line_key(line) for line in summary["lines"]]
    if want_lines != got_lines:
        differences.append("lines differ:\n    expected " + "\n             ".join(
            map(str, want_lines)) + "\n    got      " + "\n             ".join(
            map(str, got_lines)))
    for key in ("subtotal", "discount", "credits_applied", "total", "credits"):
        if summary[key] != expected[key]:
            differences.append(f"{key}: expected {expected[key]}, got {summary[key]}")
    return ("disagree" if differences else "agree"), differences


def run_driver(driver, cases):
    """Rate every case in one driver process; return its parsed output lines."""
    text = "".join(json.dumps({"book": case["book"], "usage": case["usage"]}) + "\n"
                   for case in cases)
    completed = subprocess.run([driver], input=text.encode(), capture_output=True, timeout=300,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{driver} exited with {completed.returncode}: "
                           f"{completed.stderr.decode(errors='replace')[-2000:]}")
    outputs = [json.loads(line) for line in completed.stdout.decode().splitlines() if line]
    if len(outputs) != len(cases):
        raise RuntimeError(f"{driver} wrote {len(outputs)} results for {len(cases)} cases")
    return outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--driver", required=True, help="path of the pricing_rate_driver program")
    parser.add_argument("--seed", type=int, help="seed of the cases (default: a random one)")
    parser.add_argument("--cases", type=int, default=10000, help="number of cases (default 10000)")
    parser.add_argument("--dump", help="also write the cases as JSON lines to this file")
    parser.add_argument("--show", type=int, default=5,
                        help="disagreements printed in full (default 5)")
    arguments = parser.parse_args()
    seed = arguments.seed if arguments.seed is not None else secrets.randbelow(2**32)
    print(f"seed {seed}", flush=True)

    cases = list(rating_cases.generate(seed, arguments.cases))
    if arguments.dump:
        with open(arguments.dump, "w", encoding="utf-8") as dump:
            for case in cases:
                dump.write(json.dumps(case) + "\n")
    try:
        outputs = run_driver(arguments.driver, cases)
    except (OSError, RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        print(f"driver failed: {error}")
        return 2

    counts = {"agree": 0, "tolerated": 0, "disagree": 0}
    errors = {}
    shown = 0
    for case, got in zip(cases, outputs):
        expected = rating_oracle.rate(case["book"], case["usage"])
        verdict, differences = compare(case, expected, got)
        counts[verdict] += 1
        if verdict == "agree" and "error" in expected:
            errors[expected["error"]] = errors.get(expected["error"], 0) + 1
        if verdict == "disagree" and shown < arguments.show:
            shown += 1
            print(f"\nDISAGREEMENT in case {case['index']} (tags {case['tags']}):")
            for difference in differences:
                print("  " + difference)
            print("  case: " + json.dumps({"book": case["book"], "usage": case["usage"]}))
    print(f"\n{len(cases)} cases: {counts['agree']} agree "
          f"({', '.join(f'{count} {kind}' for kind, count in sorted(errors.items())) or 'no'}"
          f" expected errors among them), {counts['tolerated']} overflow tolerated "
          f"(an amount beyond 10^18, or a ratio wider than 127 bits), {counts['disagree']} disagree")
    return 1 if counts["disagree"] else 0


if __name__ == "__main__":
    sys.exit(main())
