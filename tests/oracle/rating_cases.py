#!/usr/bin/env python3
"""Generate random (price book, usage) pairs for the differential test of rating.

generate(seed, count) yields count cases, each {"book": {...}, "usage": {...},
"tags": [...]}, and the same seed always gives the same cases. The tags name
what the case was built to exercise ("overflow", "missing_price", ...). They
help to read a failure and are not part of the input of rating.

The cases aim at the places where raters go wrong: quantities exactly on and
one raw unit past tier and discount boundaries, version changes inside the
period, prices with 12 fraction digits, quantities near 10^15 tokens and
10^12 GPU-seconds, currencies with 0 and 3 minor digits, both rounding
modes, proration of fees, credit order, and a small share of cases that must
fail (missing price, usage before the first version, credit currency
mismatch, amounts beyond int64).

Usage:
    rating_cases.py --seed N --cases COUNT > cases.jsonl
"""

import argparse
import calendar
import json
import random
import sys
import time
from fractions import Fraction

CURRENCIES = (("USD", 30), ("EUR", 8), ("GBP", 5), ("JPY", 15), ("KRW", 5), ("KWD", 12),
              ("BHD", 5), ("JOD", 5), ("OMR", 5))
EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "KRW": 0,
             "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3}
# Meter -> (line kind, raw units per billing unit; storage also divides by the period).
METERS = {
    "gpu_seconds": ("gpu", 3600),
    "input_tokens": ("input_tokens", 10**6),
    "output_tokens": ("output_tokens", 10**6),
    "cached_input_tokens": ("cached_input_tokens", 10**6),
    "api_calls": ("api_calls", 10**6),
    "storage_byte_seconds": ("storage", 10**9),
    "transfer_bytes": ("transfer", 10**9),
}
KINDS = ("gpu", "input_tokens", "output_tokens", "cached_input_tokens", "api_calls", "storage",
         "transfer")
# Byte order differs from case-insensitive order here on purpose ("Z" < "a").
GPU_TYPES = ("H100", "A100", "L4", "B200", "Z9", "a10g", "MI300X")
MODELS = ("m-large", "m-mid", "coder-7b", "Kimi", "chat_70b", "m-bulk")
# Largest raw quantity of a meter in a "huge" case: 10^15 tokens, 10^12 GPU-seconds.
HUGE = {"gpu_seconds": 10**12, "input_tokens": 10**15, "output_tokens": 10**15,
        "cached_input_tokens": 10**15, "api_calls": 10**13,
        "storage_byte_seconds": 10**15 * 31 * 86400, "transfer_bytes": 10**15}
TYPICAL = {"gpu_seconds": 10**7, "input_tokens": 10**10, "output_tokens": 10**9,
           "cached_input_tokens": 10**10, "api_calls": 10**8,
           "storage_byte_seconds": 10**12 * 30 * 86400, "transfer_bytes": 10**12}
FAULTS = (None, "before_first_version", "missing_price", "currency_mismatch",
          "start_not_a_slice", "overflow")
FAULT_WEIGHTS = (935, 10, 20, 10, 5, 20)
# Typical price of one billing unit in major units of a 2-digit currency.
PRICE_SCALE = {"gpu": Fraction(2), "input_tokens": Fraction(1), "output_tokens": Fraction(5),
               "cached_input_tokens": Fraction(1, 4), "api_calls": Fraction(1, 2),
               "storage": Fraction(1, 50), "transfer": Fraction(1, 10)}


def decimal_text(value):
    """Return the decimal string of a Fraction with at most 12 fraction digits (exact)."""
    scaled = value * 10**12
    assert scaled.denominator == 1, value
    assert scaled >= 0, value
    integer, fraction = divmod(scaled.numerator, 10**12)
    if fraction == 0:
        return str(integer)
    return f"{integer}.{fraction:012d}".rstrip("0")


def time_text(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def month_bounds(year, month):
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, calendar.timegm(following + (1, 0, 0, 0))


class CaseBuilder:
    """Builds one case from a random generator; see generate()."""

    def __init__(self, rng):
        self.rng = rng
        self.tags = []

    def chance(self, probability):
        return self.rng.random() < probability

    def price(self, typical, digits=12):
        """Return a random price near typical, with up to `digits` fraction digits."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return Fraction(0)
        if roll < 0.12:
            # Very small prices, down to 10^-12.
            return Fraction(rng.randint(1, 999), 10**rng.randint(digits - 2, digits))
        if roll < 0.22:
            # A price ending in 5 one digit past the minor unit: whole billing units then
            # cost an exact half of a minor unit, the tie that the two roundings split.
            exponent = EXPONENTS[self.currency]
            mantissa = round(typical * self.currency_scale * 10**exponent * rng.randint(1, 40))
            return Fraction(mantissa * 10 + 5, 10**(exponent + 1))
        factor = Fraction(rng.randint(1, 4000), 1000)
        value = typical * factor * self.currency_scale
        places = rng.choice((0, 1, 2, 3, 4, 6, 9, digits))
        places = min(places, digits)
        rounded = Fraction(round(value * 10**places), 10**places)
        return rounded if rounded > 0 else Fraction(1, 10**places)

    def charge(self, kind, boundaries):
        """Return a CHARGE JSON value for a usage kind; records tier bounds in boundaries."""
        rng = self.rng
        typical = PRICE_SCALE[kind]
        model = rng.choices(("string", "per_unit", "package", "graduated", "volume"),
                            (30, 10, 15, 25, 20))[0]
        if model == "string":
            return decimal_text(self.price(typical))
        if model == "per_unit":
            return {"model": "per_unit", "price": decimal_text(self.price(typical))}
        typical_quantity = Fraction(TYPICAL[self.meter_of[kind]], METERS[self.meter_of[kind]][1])
        if kind == "storage":
            typical_quantity /= 30 * 86400
        if model == "package":
            size = self.bound(typical_quantity)
            boundaries.append(size)
            boundaries.append(size * rng.randint(2, 5))
            return {"model": "package", "size": decimal_text(size),
                    "price": decimal_text(self.price(typical * max(size, Fraction(1))))}
        tiers = []
        bound = Fraction(0)
        for _ in range(rng.randint(0, 4)):
            bound += self.bound(typical_quantity)
            boundaries.append(bound)
            tiers.append({"up_to": decimal_text(bound),
                          "price": decimal_text(self.price(typical))})
        tiers.append({"price": decimal_text(self.price(typical))})
        return {"model": model, "tiers": tiers}

    def bound(self, typical_quantity):
        """Return a positive tier bound in billing units with at most 6 fraction digits."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return Fraction(rng.choice((1, 5, 10, 100, 1000, 5000, 10**6)))
        if roll < 0.6:
            return Fraction(rng.randint(1, 10**6), 10**rng.randint(1, 6))
        scaled = typical_quantity * Fraction(rng.randint(1, 2000), 1000)
        return max(Fraction(round(scaled * 1000), 1000), Fraction(1, 1000))

    def discount_tiers(self, key, boundaries):
        rng = self.rng
        tiers = []
        above = Fraction(0) if self.chance(0.3) else None
        for _ in range(rng.randint(1, 4)):
            if above is None:
                above = Fraction(rng.choice((0, 1, 10, 100, 1000, 5000)))
            else:
                above += self.bound(Fraction(1000))
            boundaries.append(above)
            percent = rng.choice((Fraction(10), Fraction(20), Fraction(25, 2), Fraction(100),
                                  Fraction(0), Fraction(rng.randint(0, 100000), 1000)))
            tiers.append({key: decimal_text(above), "percent": decimal_text(percent)})
        return tiers

    def build(self):
        rng = self.rng
        # At most one deliberate fault per case, so that the expected error is never a
        # matter of which check a rater runs first.
        fault = rng.choices(FAULTS, FAULT_WEIGHTS)[0]
        if fault is not None:
            self.tags.append(fault)
        overflow = fault == "overflow"
        self.currency = rng.choices([code for code, _ in CURRENCIES],
                                    [weight for _, weight in CURRENCIES])[0]
        exponent = EXPONENTS[self.currency]
        self.currency_scale = Fraction(100) if exponent == 0 else Fraction(1)
        if exponent == 3 and self.chance(0.5):
            self.currency_scale = Fraction(1, 3)
        year, month = rng.randint(2023, 2025), rng.randint(1, 12)
        period_start, period_end = month_bounds(year, month)
        self.period_seconds = period_end - period_start

        # Meters and dimensions that the usage will carry.
        kinds_used = [kind for kind in KINDS if self.chance(0.45)] or [rng.choice(KINDS)]
        self.meter_of = {kind: meter for meter, (kind, _) in METERS.items()}
        dimensions = {}
        for kind in kinds_used:
            if kind == "gpu":
                dimensions[kind] = rng.sample(GPU_TYPES, rng.randint(1, 3))
            elif kind.endswith("_tokens"):
                dimensions[kind] = rng.sample(MODELS, rng.randint(1, 3))
            else:
                dimensions[kind] = [""]

        # Version start times: the first at or before the period start.
        version_count = rng.choices((1, 2, 3), (50, 30, 20))[0]
        starts = []
        first = None
        if self.chance(0.4):
            first = period_start - rng.choice((0, 1, 86400, 40 * 86400))
        if fault == "before_first_version":
            first = period_start + rng.randint(1, self.period_seconds - 1)
        starts.append(first)
        moment = first if first is not None else period_start - 90 * 86400
        for _ in range(version_count - 1):
            roll = rng.random()
            if roll < 0.7:
                step = rng.choice((86400, 7 * 86400, rng.randint(1, 20 * 86400)))
                candidate = max(moment, period_start) + step
            elif roll < 0.85:
                candidate = moment + rng.randint(1, 86400)
            else:
                candidate = max(moment, period_end) + rng.randint(0, 86400)
            candidate = max(candidate, moment + 1)
            starts.append(candidate)
            moment = candidate
        slice_starts = [period_start] + [start for start in starts[1:]
                                         if period_start < start < period_end]

        tier = rng.choice((None, None, "none", "basic", "pro", "enterprise"))
        missing = None
        if fault == "missing_price":
            missing = rng.choice(("usage", "support")) if tier not in (None, "none") else "usage"

        versions = []
        boundaries = {kind: [] for kind in KINDS}
        for index, start in enumerate(starts):
            fields = self.version(kinds_used, dimensions, tier, boundaries,
                                  missing if index == len(starts) - 1 else None)
            if start is not None:
                fields = {"effective_from": time_text(start), **fields}
            versions.append(fields)

        book = {"name": f"book-{rng.randint(0, 10**6)}", "currency": self.currency}
        if self.chance(0.7):
            book["rounding"] = rng.choice(("half_up", "half_even"))
        if len(versions) == 1 and starts[0] is None and self.chance(0.5):
            book.update(versions[0])
        else:
            book["versions"] = versions

        usage = {"tenant_name": f"tenant-{rng.randint(0, 999)}", "period": f"{year:04d}-{month:02d}",
                 "service_start": None, "service_end": None, "support_tier": tier,
                 "items": [], "credits": [], "adjustments": []}
        self.service(usage, period_start, period_end, missing == "support")
        self.items(usage, kinds_used, dimensions, boundaries, slice_starts, overflow,
                   fault == "start_not_a_slice")
        self.credits(usage, period_start, period_end, fault == "currency_mismatch")
        for _ in range(rng.choices((0, 1, 2, 3), (70, 15, 10, 5))[0]):
            earlier_year, earlier_month = (year - 1, 12) if month == 1 else (year, month - 1)
            usage["adjustments"].append({
                "period": f"{earlier_year:04d}-{earlier_month:02d}",
                "amount_minor": rng.choice((1, rng.randint(1, 10**6), rng.randint(1, 10**12))),
                "events": rng.randint(0, 1000), "description": f"Late usage {rng.randint(0, 99)}"})
        if overflow:
            self.overflow(book, usage)
        return {"book": book, "usage": usage, "tags": self.tags}

    def version(self, kinds_used, dimensions, tier, boundaries, missing):
        """Return the fields of one version that prices every used kind and dimension."""
        rng = self.rng
        fields = {}
        if self.chance(0.5):
            fields["base_fee"] = decimal_text(self.price(Fraction(rng.choice((10, 100, 5000)))))
        if tier not in (None, "none") or self.chance(0.2):
            fields["support_fee"] = {name: decimal_text(self.price(Fraction(rng.choice((50, 500)))))
                                     for name in ("basic", "pro", "enterprise")
                                     if name == tier or self.chance(0.5)}
            if missing == "support":
                fields["support_fee"].pop(tier, None)
        omitted = None
        if missing == "usage":
            omitted_kind = rng.choice(kinds_used)
            omitted = (omitted_kind, rng.choice(dimensions[omitted_kind]))
        for kind in kinds_used:
            if kind == "gpu":
                fields["gpu_hour"] = self.gpu_prices(dimensions[kind], boundaries[kind], omitted)
            elif not kind.endswith("_tokens") and (kind, "") != omitted:
                key = {"api_calls": "api_calls_per_million", "storage": "storage_gb_month",
                       "transfer": "transfer_gb"}[kind]
                fields[key] = self.charge(kind, boundaries[kind])
        token_kinds = [kind for kind in kinds_used if kind.endswith("_tokens")]
        if token_kinds:
            fields["tokens_per_million"] = self.token_prices(token_kinds, dimensions,
                                                             boundaries, omitted)
        self.discounts(fields, kinds_used, boundaries)
        if self.chance(0.25):
            fields["commitment"] = {"minimum": decimal_text(
                self.price(Fraction(rng.choice((10, 1000, 100000)))))}
        return fields

    def gpu_prices(self, types, boundaries, omitted):
        """Return the gpu_hour object: each type priced itself or through "*"."""
        prices = {}
        use_fallback = self.chance(0.3) and omitted is None
        for name in types:
            if ("gpu", name) != omitted and (not use_fallback or self.chance(0.5)):
                prices[name] = self.charge("gpu", boundaries)
        if use_fallback:
            prices["*"] = self.charge("gpu", boundaries)
        if not prices:
            prices["unused-gpu"] = self.charge("gpu", boundaries)
        return prices

    def token_prices(self, token_kinds, dimensions, boundaries, omitted):
        """Return the tokens_per_million object pricing each used (direction, model)."""
        table = {}
        models = sorted({model for kind in token_kinds for model in dimensions[kind]})
        for model in models:
            entry = table.setdefault(model if self.chance(0.8) else "*", {})
            for kind in token_kinds:
                direction = kind[:-len("_tokens")]
                if model not in dimensions[kind] or direction in entry:
                    continue
                if direction == "cached_input" and "input" in entry and self.chance(0.4):
                    continue  # cached input tokens fall back to the model's input charge
                if direction == "cached_input" and self.chance(0.3):
                    entry["input"] = self.charge("input_tokens", boundaries["input_tokens"])
                    continue
                entry[direction] = self.charge(kind, boundaries[kind])
        if omitted is not None and omitted[0].endswith("_tokens"):
            # A listed model does not borrow a direction from "*".
            kind, model = omitted
            entry = table.setdefault(model, {})
            direction = kind[:-len("_tokens")]
            entry.pop(direction, None)
            if direction == "cached_input":
                entry.pop("input", None)
            if not entry:
                entry["output" if direction != "output" else "input"] = self.charge(kind, [])
        return {model: entry for model, entry in table.items() if entry}

    def discounts(self, fields, kinds_used, boundaries):
        rng = self.rng
        free = list(KINDS)
        if self.chance(0.4):
            fields["gpu_volume_discount"] = {
                "mode": rng.choice(("volume", "graduated")),
                "tiers": self.discount_tiers("above_hours", boundaries["gpu"])}
            free.remove("gpu")
        entries = []
        for number in range(rng.choices((0, 1, 2, 3), (55, 25, 12, 8))[0]):
            if not free:
                break
            applies = rng.sample(free, rng.randint(1, min(3, len(free))))
            for kind in applies:
                free.remove(kind)
            driver = rng.choice(kinds_used + list(KINDS)) if self.chance(0.8) else rng.choice(
                KINDS)
            entries.append({"name": f"Discount {number} on {'+'.join(applies)}",
                            "applies_to": applies, "driver": driver,
                            "mode": rng.choice(("volume", "graduated")),
                            "tiers": self.discount_tiers("above", boundaries[driver])})
        if entries:
            fields["discounts"] = entries

    def service(self, usage, period_start, period_end, keep_whole):
        rng = self.rng
        if keep_whole:
            return
        if self.chance(0.2):
            start = rng.choice((period_start - 86400, period_start,
                                period_start + 86400 * rng.randint(1, 27),
                                rng.randint(period_start, period_end - 1)))
            usage["service_start"] = time_text(start)
        if self.chance(0.15):
            end = rng.choice((period_end, period_end + 86400,
                              period_start + 86400 * rng.randint(1, 27),
                              rng.randint(period_start, period_end - 1)))
            if usage["service_start"] is not None:
                end = max(end, calendar.timegm(time.strptime(usage["service_start"],
                                                             "%Y-%m-%dT%H:%M:%SZ")))
            usage["service_end"] = time_text(end)

    def quantity(self, meter, kind, boundaries, huge):
        """Return a raw whole-period quantity, often exactly on or one unit off a boundary."""
        rng = self.rng
        divisor = Fraction(METERS[meter][1])
        if kind == "storage":
            divisor *= self.period_seconds
        roll = rng.random()
        if roll < 0.45 and boundaries:
            raw = rng.choice(boundaries) * divisor
            raw = int(raw) + rng.choice((0, 0, 1, -1))
            return max(raw, 0)
        if roll < 0.5:
            return 0
        if roll < 0.6:
            return rng.randint(1, 5000)
        if huge:
            return rng.randint(1, HUGE[meter])
        return rng.randint(1, TYPICAL[meter] * 4)

    def items(self, usage, kinds_used, dimensions, boundaries, slice_starts, overflow,
              misplaced):
        rng = self.rng
        huge = overflow or self.chance(0.1)
        if huge:
            self.tags.append("huge")
        items = []
        for kind in kinds_used:
            meter = self.meter_of[kind]
            for dimension in dimensions[kind]:
                total = self.quantity(meter, kind, boundaries[kind], huge)
                # Spread the total over slices and items; a part may be 0.
                cuts = sorted(rng.randint(0, total) for _ in range(rng.randint(0, 3)))
                parts = [high - low for low, high in zip([0] + cuts, cuts + [total])]
                for part in parts:
                    index = rng.randrange(len(slice_starts))
                    start = None
                    if index > 0:
                        start = time_text(slice_starts[index])
                    elif self.chance(0.2):
                        start = time_text(rng.choice((slice_starts[0], 0)))
                    item = {"meter": meter, "dimension": dimension or None,
                            "quantity": str(part), "start": start,
                            "events": rng.randint(0, 100)}
                    if not dimension and self.chance(0.5):
                        del item["dimension"]
                    items.append(item)
        if misplaced:
            offset = next(offset for offset in (17, 18, 19)
                          if slice_starts[0] + offset not in slice_starts)
            items.append(dict(items[0], start=time_text(slice_starts[0] + offset)))
        rng.shuffle(items)
        usage["items"] = items

    def credits(self, usage, period_start, period_end, mismatch):
        rng = self.rng
        grants = []
        ids = rng.sample(range(1, 10**6), 6)
        count = rng.choices((0, 1, 2, 3, 5), (50, 20, 15, 10, 5))[0]
        for number in range(count):
            grant_id = ids[number] if self.chance(0.9) else 2**64 - 1 - number
            granted = rng.choice((period_start - 86400 * 30, period_start,
                                  rng.randint(period_start, period_end - 1), period_end,
                                  period_end + 5))
            expires = rng.choice((None, None, period_start, period_start + 1, period_end,
                                  rng.randint(period_start, period_end + 86400 * 60)))
            balance = rng.choice((0, 1, rng.randint(1, 10**4), rng.randint(1, 10**9)))
            grants.append({"id": str(grant_id), "currency": self.currency,
                           "balance_minor": balance, "granted": time_text(granted),
                           "expires": time_text(expires) if expires is not None else None})
        if mismatch:
            # A mismatch that would otherwise apply, so that every rater must reject it.
            other = rng.choice([code for code, _ in CURRENCIES if code != self.currency])
            grants.append({"id": str(ids[-1]), "currency": other, "balance_minor": 100,
                           "granted": time_text(period_start - 86400), "expires": None})
        usage["credits"] = grants

    def overflow(self, book, usage):
        """Push one amount past int64 minor units (or close to it)."""
        rng = self.rng
        how = rng.choice(("fee", "price", "adjustments", "commitment"))
        for fields in book["versions"] if "versions" in book else [book]:
            self.overflow_version(fields, how)
        if how == "adjustments":
            for _ in range(3):
                usage["adjustments"].append({"period": usage["period"],
                                             "amount_minor": rng.randint(2**61, 2**63 - 1),
                                             "events": 1, "description": "Late usage"})
        elif how == "price":
            usage["items"].append({"meter": "gpu_seconds", "dimension": "H100",
                                   "quantity": str(rng.randint(10**9, 10**12)), "start": None})

    def overflow_version(self, fields, how):
        rng = self.rng
        if how == "fee":
            fields["base_fee"] = decimal_text(Fraction(rng.randint(10**16, 10**18 - 1)))
        elif how == "commitment":
            fields["commitment"] = {"minimum": decimal_text(Fraction(rng.randint(10**15,
                                                                                 10**18 - 1)))}
        elif how == "price":
            fields["gpu_hour"] = {"*": decimal_text(Fraction(rng.randint(10**9, 10**18 - 1)))}


def generate(seed, count):
    """Yield count cases for a seed; case i depends only on (seed, i)."""
    for index in range(count):
        rng = random.Random(f"{seed}/{index}")
        case = CaseBuilder(rng).build()
        case["index"] = index
        yield case


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="seed of the random cases")
    parser.add_argument("--cases", type=int, default=100, help="number of cases (default 100)")
    arguments = parser.parse_args()
    for case in generate(arguments.seed, arguments.cases):
        print(json.dumps(case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
