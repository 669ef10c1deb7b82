#!/usr/bin/env python3
"""Rate a usage against a price book with exact rationals, by the rules of docs/PRICING.md.

This is the reference side of the differential test of pricing_rate. It
shares no code with the C rater: every quantity, price and amount is a
fractions.Fraction, and every rounding happens once, at the place the
rating rules name.

rate(book, usage) returns either {"error": CLASS, "message": TEXT} with
CLASS one of "not_found", "invalid", "overflow", or the expected invoice:

    {"lines": [{"kind", "dimension", "slice_start", "period", "description",
                "amount_minor"}, ...],
     "subtotal", "discount", "credits_applied", "total",    (minor units)
     "credits": [{"id", "applied", "balance_after"}, ...],
     "max_intermediate": largest |exact amount| seen, in minor units,
     "wide_ratio": true when a discount's exact calculation holds a reduced
                   ratio whose numerator or denominator needs more than 127
                   bits, which the engine refuses as an overflow}

Usage:
    rating_oracle.py --self-test
    rating_oracle.py CASES.jsonl     (one {"book", "usage"} object a line)
"""

import argparse
import calendar
import json
import math
import re
import sys
import time
from fractions import Fraction

INT64_MAX = 2**63 - 1
INT128_MAX = 2**127 - 1

CURRENCY_EXPONENTS = {
    "USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "KRW": 0,
    "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3,
}

# Meter of the usage JSON -> (line kind, divisor of the raw quantity, has a dimension).
# Storage is further divided by the period's length in seconds.
METERS = {
    "gpu_seconds": ("gpu", 3600, True),
    "input_tokens": ("input_tokens", 10**6, True),
    "output_tokens": ("output_tokens", 10**6, True),
    "cached_input_tokens": ("cached_input_tokens", 10**6, True),
    "api_calls": ("api_calls", 10**6, False),
    "storage_byte_seconds": ("storage", 10**9, False),
    "transfer_bytes": ("transfer", 10**9, False),
}
USAGE_KINDS = ("gpu", "input_tokens", "output_tokens", "cached_input_tokens",
               "api_calls", "storage", "transfer")
SUPPORT_TIERS = ("basic", "pro", "enterprise")
VERSION_FIELDS = ("base_fee", "support_fee", "gpu_hour", "tokens_per_million",
                  "api_calls_per_million", "storage_gb_month", "transfer_gb",
                  "gpu_volume_discount", "discounts", "commitment")
TIME_PATTERN = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")
PRICE_PATTERN = re.compile(r"^\d{1,18}(\.\d{1,12})?$")


class RatingError(Exception):
    """A rating failure of one class: "not_found", "invalid" or "overflow"."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def parse_time(text):
    """Return the Unix seconds of a "YYYY-MM-DDTHH:MM:SSZ" timestamp."""
    match = TIME_PATTERN.match(text)
    if not match:
        raise RatingError("invalid", f"timestamp {text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def format_time(seconds):
    """Return the "YYYY-MM-DDTHH:MM:SSZ" form of Unix seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def period_bounds(period):
    """Return [start, end) in Unix seconds of a "YYYY-MM" calendar month in UTC."""
    match = re.match(r"^(\d{4})-(\d{2})$", period)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise RatingError("invalid", f"period {period!r} is not YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    start = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    end = calendar.timegm((next_year, next_month, 1, 0, 0, 0, 0, 0, 0))
    return start, end


def price(text):
    """Return the exact value of a PRICE string."""
    if not isinstance(text, str) or not PRICE_PATTERN.match(text):
        raise RatingError("invalid", f"price {text!r} is not a decimal string")
    return Fraction(text)


def round_minor(value, exponent, rounding):
    """Round an exact amount in major units to an integer count of minor units."""
    scaled = value * 10**exponent
    floor = scaled.numerator // scaled.denominator
    remainder = scaled - floor
    half = Fraction(1, 2)
    if remainder > half:
        return floor + 1
    if remainder < half:
        return floor
    if rounding == "half_even":
        return floor if floor % 2 == 0 else floor + 1
    return floor + 1 if scaled > 0 else floor


class Charge:
    """A CHARGE of the price book: F(x) for a quantity x in billing units."""

    def __init__(self, spec):
        if isinstance(spec, str):
            self.model, self.price = "per_unit", price(spec)
            return
        self.model = spec["model"]
        if self.model == "per_unit":
            self.price = price(spec["price"])
        elif self.model == "package":
            self.size, self.price = price(spec["size"]), price(spec["price"])
        elif self.model in ("graduated", "volume"):
            self.tiers = [(price(tier["up_to"]) if "up_to" in tier else None,
                           price(tier["price"])) for tier in spec["tiers"]]
        else:
            raise RatingError("invalid", f"unknown charge model {self.model!r}")

    def total(self, quantity):
        """Return F(quantity)."""
        if self.model == "per_unit":
            return self.price * quantity
        if self.model == "package":
            return math.ceil(quantity / self.size) * self.price
        if self.model == "volume":
            return self.price_at(quantity) * quantity
        amount, lower = Fraction(0), Fraction(0)
        for up_to, tier_price in self.tiers:
            upper = quantity if up_to is None else min(quantity, up_to)
            if upper > lower:
                amount += tier_price * (upper - lower)
            if up_to is None or quantity <= up_to:
                break
            lower = up_to
        return amount

    def price_at(self, quantity):
        """Return the price of the volume tier whose interval contains quantity."""
        for up_to, tier_price in self.tiers:
            if up_to is None or quantity <= up_to:
                return tier_price
        raise AssertionError("the last tier is unbounded")


class Discount:
    """One percentage discount of a version, with tiers over its driver's quantity."""

    def __init__(self, name, applies_to, driver, mode, tiers):
        self.name, self.applies_to, self.driver, self.mode = name, applies_to, driver, mode
        self.tiers = tiers  # [(above, percent)], above ascending

    def rate(self, driver_quantity, steps=None):
        """Return the effective fraction of B taken off, for the driver's quantity D.

        Appends to `steps` each exact value of the calculation, reduced, so
        that the caller can tell a result whose calculation needs ratios
        wider than 127 bits."""
        steps = [] if steps is None else steps
        if self.mode == "volume":
            percent = Fraction(0)
            for above, tier_percent in self.tiers:
                if driver_quantity > above:
                    percent = tier_percent
            steps.append(percent / 100)
            return percent / 100
        if driver_quantity <= 0:
            return Fraction(0)
        weighted = Fraction(0)
        for index, (above, tier_percent) in enumerate(self.tiers):
            upper = driver_quantity
            if index + 1 < len(self.tiers):
                upper = min(driver_quantity, self.tiers[index + 1][0])
            if upper > above:
                term = tier_percent / 100 * (upper - above)
                weighted += term
                steps.extend((upper - above, term, weighted))
        steps.append(weighted / driver_quantity)
        return weighted / driver_quantity


class Version:
    """The prices of one version of a price book."""

    def __init__(self, fields):
        self.base_fee = price(fields["base_fee"]) if "base_fee" in fields else None
        self.support_fee = {tier: price(value)
                            for tier, value in fields.get("support_fee", {}).items()}
        self.gpu = {name: Charge(spec) for name, spec in fields.get("gpu_hour", {}).items()}
        self.tokens = {model: {direction: Charge(spec) for direction, spec in entry.items()}
                       for model, entry in fields.get("tokens_per_million", {}).items()}
        self.single = {}
        for kind, key in (("api_calls", "api_calls_per_million"),
                          ("storage", "storage_gb_month"), ("transfer", "transfer_gb")):
            if key in fields:
                self.single[kind] = Charge(fields[key])
        self.discounts = []
        volume = fields.get("gpu_volume_discount")
        if volume is not None:
            tiers = [(price(tier["above_hours"]), price(tier["percent"]))
                     for tier in volume["tiers"]]
            self.discounts.append(Discount("GPU volume discount", ["gpu"], "gpu",
                                           volume["mode"], tiers))
        for entry in fields.get("discounts", []):
            tiers = [(price(tier["above"]), price(tier["percent"])) for tier in entry["tiers"]]
            self.discounts.append(Discount(entry["name"], list(entry["applies_to"]),
                                           entry["driver"], entry["mode"], tiers))
        commitment = fields.get("commitment")
        self.minimum = price(commitment["minimum"]) if commitment is not None else None

    def charge(self, kind, dimension):
        """Return the Charge of a usage line kind and dimension, or None when unpriced."""
        if kind == "gpu":
            return self.gpu.get(dimension, self.gpu.get("*"))
        if kind in ("input_tokens", "output_tokens", "cached_input_tokens"):
            entry = self.tokens.get(dimension, self.tokens.get("*"))
            if entry is None:
                return None
            if kind == "cached_input_tokens":
                return entry.get("cached_input", entry.get("input"))
            return entry.get(kind[:-len("_tokens")])
        return self.single.get(kind)


def parse_book(book):
    """Return (currency, rounding, [(effective_from or None, Version)])."""
    currency = book["currency"]
    if currency not in CURRENCY_EXPONENTS:
        raise RatingError("invalid", f"currency {currency!r} is not supported")
    rounding = book.get("rounding", "half_up")
    if "versions" in book:
        versions = [(parse_time(entry["effective_from"]) if "effective_from" in entry else None,
                     Version({key: value for key, value in entry.items()
                              if key != "effective_from"}))
                    for entry in book["versions"]]
    else:
        versions = [(None, Version({key: value for key, value in book.items()
                                    if key in VERSION_FIELDS}))]
    return currency, rounding, versions


class Tracker:
    """The largest exact amount seen, in minor units, to classify an overflow."""

    def __init__(self, exponent):
        self.exponent = exponent
        self.maximum = Fraction(0)
        self.wide = False

    def ratios(self, values):
        """Record exact values that the engine stores as ratios of 128-bit integers."""
        for value in values:
            if abs(value.numerator) > INT128_MAX or value.denominator > INT128_MAX:
                self.wide = True

    def note(self, value, major=True):
        """Record an exact amount that the rules do not require to fit an int64."""
        minor = abs(value * 10**self.exponent if major else value)
        self.maximum = max(self.maximum, minor)
        return minor

    def see(self, value, what, major=True):
        """Record an exact amount (in major units unless major is False) that must fit."""
        minor = self.note(value, major)
        if minor > INT64_MAX:
            raise RatingError("overflow", f"{what} is {minor} minor units, more than int64")


def rate(book, usage):
    """Rate one usage against one price book; see the module docstring for the result."""
    tracker = None
    try:
        currency, rounding, versions = parse_book(book)
        tracker = Tracker(CURRENCY_EXPONENTS[currency])
        result = rate_parsed(currency, rounding, versions, book["name"], usage, tracker)
        result["max_intermediate"] = tracker.maximum
        result["wide_ratio"] = tracker.wide
        return result
    except RatingError as error:
        result = {"error": error.kind, "message": str(error)}
        if tracker is not None:
            result["max_intermediate"] = tracker.maximum
            result["wide_ratio"] = tracker.wide
        return result


def slices_of(versions, book_name, start, end):
    """Return [(slice_start, slice_end, Version)] covering [start, end)."""
    first_from = versions[0][0]
    if first_from is not None and start < first_from:
        raise RatingError("not_found", f"price book {book_name!r} has no version in effect "
                                       f"at {format_time(start)}")
    in_effect = versions[0][1]
    for effective_from, version in versions:
        if effective_from is None or effective_from <= start:
            in_effect = version
    starts = [(start, in_effect)]
    for effective_from, version in versions:
        if effective_from is not None and start < effective_from < end:
            starts.append((effective_from, version))
    return [(slice_start, starts[index + 1][0] if index + 1 < len(starts) else end, version)
            for index, (slice_start, version) in enumerate(starts)]


def overlap(low, high, service_start, service_end):
    """Return the seconds of [low, high) inside [service_start, service_end or forever)."""
    upper = high if service_end == 0 else min(high, service_end)
    return max(0, upper - max(low, service_start))


def rate_parsed(currency, rounding, versions, book_name, usage, tracker):
    exponent = CURRENCY_EXPONENTS[currency]

    def rnd(value):
        return round_minor(value, exponent, rounding)

    period_start, period_end = period_bounds(usage["period"])
    period_seconds = period_end - period_start
    slices = slices_of(versions, book_name, period_start, period_end)
    multi = len(slices) > 1
    slice_index = {start: index for index, (start, _, _) in enumerate(slices)}
    service_start = period_start
    if usage.get("service_start") is not None:
        service_start = max(period_start, parse_time(usage["service_start"]))
    service_end = 0
    if usage.get("service_end") is not None:
        service_end = parse_time(usage["service_end"])
    lines = []

    def add_line(kind, amount, dimension="", slice_start=None, period=None, description=None):
        tracker.see(amount, f"the {kind} line", major=False)
        lines.append({"kind": kind, "dimension": dimension,
                      "slice_start": format_time(slice_start) if multi and slice_start is not None
                      else None,
                      "period": period, "description": description, "amount_minor": amount})

    # 1 and 2: prorated fixed fees of every slice.
    tier = usage.get("support_tier") or "none"
    if tier != "none" and tier not in SUPPORT_TIERS:
        raise RatingError("invalid", f"support tier {tier!r} is unknown")
    for kind in ("base_fee", "support_fee"):
        for low, high, version in slices:
            if kind == "base_fee":
                fee = version.base_fee
                if fee is None:
                    continue
            elif tier == "none":
                continue
            else:
                fee = version.support_fee.get(tier)
                if fee is None:
                    raise RatingError("not_found", f"support tier {tier} has no price")
            share = overlap(low, high, service_start, service_end)
            if share == 0:
                continue
            exact = fee * Fraction(share, period_seconds)
            tracker.see(exact, kind)
            add_line(kind, rnd(exact), slice_start=low)

    # 3: usage lines, quantities summed per (kind, dimension, slice).
    quantities = {}
    for item in usage.get("items", []):
        meter = item.get("meter")
        if meter not in METERS:
            raise RatingError("invalid", f"meter {meter!r} is unknown")
        kind, divisor, has_dimension = METERS[meter]
        dimension = item.get("dimension") or ""
        if dimension and not has_dimension:
            raise RatingError("invalid", f"meter {meter} has no dimension, got {dimension!r}")
        if has_dimension and not dimension:
            # The rules price GPU types and models by name; a nameless item is a data error.
            raise RatingError("invalid", f"meter {meter} needs a dimension")
        start = period_start if item.get("start") is None else parse_time(item["start"])
        if start == 0:
            start = period_start
        if start not in slice_index:
            raise RatingError("invalid", f"item start {item.get('start')} is not a slice start")
        raw = int(item["quantity"])
        if raw < 0:
            raise RatingError("invalid", f"quantity {raw} is negative")
        if kind == "storage":
            divisor *= period_seconds
        key = (kind, dimension)
        per_slice = quantities.setdefault(key, [Fraction(0)] * len(slices))
        per_slice[slice_index[start]] += Fraction(raw, divisor)

    usage_sums = {kind: 0 for kind in USAGE_KINDS}
    driver_quantities = {kind: Fraction(0) for kind in USAGE_KINDS}
    for kind, dimension in sorted(quantities, key=lambda key: (USAGE_KINDS.index(key[0]),
                                                               key[1].encode())):
        per_slice = quantities[(kind, dimension)]
        whole = sum(per_slice, Fraction(0))
        driver_quantities[kind] += whole
        cumulative = Fraction(0)
        for index, quantity in enumerate(per_slice):
            if quantity == 0:
                continue
            low, _, version = slices[index]
            charge = version.charge(kind, dimension)
            if charge is None:
                raise RatingError("not_found", f"{kind} {dimension!r} has no price")
            if charge.model == "volume":
                exact = charge.price_at(whole) * quantity
            else:
                before = charge.total(cumulative)
                after = charge.total(cumulative + quantity)
                # F(Q(k)) itself may exceed int64 while the difference fits, so a
                # rater may or may not report it as an overflow.
                tracker.note(after)
                exact = after - before
            cumulative += quantity
            tracker.see(exact, f"the {kind} {dimension} line")
            amount = rnd(exact)
            add_line(kind, amount, dimension, slice_start=low)
            usage_sums[kind] += amount
            tracker.see(sum(usage_sums.values()), "the usage lines' sum", major=False)

    # 4: discounts of the last slice's version.
    last_version = slices[-1][2]
    discount_sum = 0
    for discount in last_version.discounts:
        base = sum(usage_sums[kind] for kind in discount.applies_to)
        steps = []
        fraction = discount.rate(driver_quantities[discount.driver], steps)
        exact = Fraction(base, 10**exponent) * fraction
        # The engine takes the base in minor units times the fraction, and the
        # fraction times 100 for the percent it prints.
        tracker.ratios(steps + [base * fraction, fraction * 100])
        tracker.see(exact, f"discount {discount.name}")
        amount = rnd(exact)
        if amount != 0:
            add_line("discount", -amount, description=discount.name)
            discount_sum += amount

    # 5: commitment true-up.
    if last_version.minimum is not None:
        service_seconds = overlap(period_start, period_end, service_start, service_end)
        exact = last_version.minimum * Fraction(service_seconds, period_seconds)
        tracker.see(exact, "the commitment minimum")
        minimum = rnd(exact)
        net_usage = sum(usage_sums.values()) - discount_sum
        if net_usage < minimum:
            add_line("commitment_true_up", minimum - net_usage)

    # 6: adjustments in input order.
    for adjustment in usage.get("adjustments", []):
        amount = int(adjustment["amount_minor"])
        if amount <= 0:
            raise RatingError("invalid", f"adjustment amount {amount} is not > 0")
        add_line("adjustment", amount, period=adjustment["period"],
                 description=adjustment.get("description"))

    subtotal = 0
    for line in lines:
        if line["kind"] != "discount":
            subtotal += line["amount_minor"]
            tracker.see(subtotal, "the subtotal", major=False)
    net = subtotal - discount_sum

    # Credits.
    grants = []
    for credit in usage.get("credits", []):
        # A grant in another currency cannot pay this invoice, so it does not apply.
        if credit["currency"] != currency:
            continue
        granted = parse_time(credit["granted"])
        expires = 0 if credit.get("expires") is None else parse_time(credit["expires"])
        balance = int(credit["balance_minor"])
        # A grant made after the period still pays; an expired one does not.
        if (expires == 0 or expires > period_start) and balance > 0:
            grants.append((expires == 0, expires, granted, int(credit["id"]), balance))
    grants.sort()
    due = net
    credits = []
    for _, _, _, grant_id, balance in grants:
        applied = min(balance, due)
        if applied > 0:
            credits.append({"id": grant_id, "applied": applied,
                            "balance_after": balance - applied})
            due -= applied
    return {"lines": lines, "subtotal": subtotal, "discount": discount_sum,
            "credits_applied": net - due, "credits": credits, "total": due}


PB1_GPU = {"H100": "2.50", "A100": "1.25", "L4": "0.35", "G-test": "2.00"}
PB1_TOKENS = {"m-large": {"input": "3.00", "output": "15.00"}, "m-mid": {"input": "2.50"},
              "m-bulk": {"input": "0.15"},
              **{f"m-{letter}": {"input": "0.10"} for letter in "abcdef"}}
VOLUME_TIERS = [{"above_hours": "1000", "percent": "10"}, {"above_hours": "5000", "percent": "20"}]


def pb1(mode="volume", rounding="half_up", **extra):
    """Return price book PB-1 in USD with the GPU volume discount in the given mode."""
    book = {"name": "pb-1", "currency": "USD", "rounding": rounding, "gpu_hour": PB1_GPU,
            "tokens_per_million": PB1_TOKENS, "api_calls_per_million": "0.50",
            "storage_gb_month": "0.02",
            "gpu_volume_discount": {"mode": mode, "tiers": VOLUME_TIERS}}
    book.update(extra)
    return book


def usage_of(period, triples, **extra):
    """Return a usage JSON object with items given as (meter, dimension, quantity)."""
    usage = {"tenant_name": "t1", "period": period, "service_start": None, "service_end": None,
             "support_tier": None, "credits": [], "adjustments": [],
             "items": [{"meter": meter, "dimension": dimension, "quantity": str(quantity),
                        "start": None} for meter, dimension, quantity in triples]}
    usage.update(extra)
    return usage


def self_test_cases():
    """Yield (name, book, usage, expected) with expected values from the billing cases."""
    c1 = [("gpu_seconds", "H100", 1777608), ("gpu_seconds", "A100", 5760144),
          ("gpu_seconds", "L4", 5144400)]
    yield ("discount rounded once on subtotal", pb1(), usage_of("2024-06", c1),
           {"lines": [("gpu", "A100", 200005), ("gpu", "H100", 123445), ("gpu", "L4", 50015),
                      ("discount", "", -37347)],
            "subtotal": 373465, "discount": 37347, "total": 336118})
    for quantity, rounding, amount in ((15798000, "half_up", 3950), (15794000, "half_up", 3949),
                                       (15794000, "half_even", 3948)):
        yield (f"half a cent {quantity} {rounding}", pb1(rounding=rounding),
               usage_of("2024-06", [("input_tokens", "m-mid", quantity)]),
               {"lines": [("input_tokens", "m-mid", amount)], "subtotal": amount, "total": amount})
    july_seconds = 31 * 86400
    c3 = [("input_tokens", f"m-{letter}", 40000) for letter in "abcdef"]
    c3 += [("api_calls", "", 20000), ("storage_byte_seconds", "", july_seconds * 10**9 // 2)]
    credit = {"id": "7", "currency": "USD", "balance_minor": 500,
              "granted": "2024-01-01T00:00:00Z", "expires": None}
    yield ("credits larger than invoice", pb1(), usage_of("2024-07", c3, credits=[credit]),
           {"lines": [("input_tokens", f"m-{letter}", 0) for letter in "abcdef"]
            + [("api_calls", "", 1), ("storage", "", 1)],
            "subtotal": 2, "credits_applied": 2, "total": 0,
            "credits": [{"id": 7, "applied": 2, "balance_after": 498}]})
    jpy = {"name": "pb-1-jpy", "currency": "JPY", "base_fee": "10000",
           "tokens_per_million": {"m-large": {"input": "450", "output": "2250"}}}
    yield ("JPY base fee proration", jpy,
           usage_of("2024-01", [("input_tokens", "m-large", 1234567)],
                    service_start="2024-01-26T00:00:00Z"),
           {"lines": [("base_fee", "", 1935), ("input_tokens", "m-large", 556)],
            "subtotal": 2491, "total": 2491})
    usd = {"name": "pb-usd", "currency": "USD", "base_fee": "100"}
    yield ("USD base fee proration", usd, usage_of("2024-01", [], service_start="2024-01-26T00:00:00Z"),
           {"lines": [("base_fee", "", 1935)], "subtotal": 1935, "total": 1935})
    # GPU-seconds, the G-test line, the total under the volume and graduated readings.
    tier_cases = ((3600000, 200000, 200000, 200000), (3600001, 200000, 180000, 200000),
                  (18000000, 1000000, 900000, 920000), (3601800, 200100, 180090, 200090),
                  (18000900, 1000050, 800040, 920040))
    for seconds, line, volume_total, graduated_total in tier_cases:
        for mode, total in (("volume", volume_total), ("graduated", graduated_total)):
            usage = usage_of("2024-06", [("gpu_seconds", "G-test", seconds)])
            lines = [("gpu", "G-test", line)]
            if line != total:
                lines.append(("discount", "", total - line))
            yield (f"GPU discount tier bound {seconds} {mode}", pb1(mode), usage,
                   {"lines": lines, "subtotal": line, "discount": line - total, "total": total})
    february = 29 * 86400
    for seconds, amount in ((february, 200), (14 * 86400, 97)):
        yield (f"storage over leap February {seconds}", pb1(),
               usage_of("2024-02", [("storage_byte_seconds", "", 100 * 10**9 * seconds)]),
               {"lines": [("storage", "", amount)], "subtotal": amount, "total": amount})
    yield ("large token counts", pb1(),
           usage_of("2024-06", [("input_tokens", "m-bulk", 1500000000)] * 3
                    + [("output_tokens", "m-large", 700000000000)]),
           {"lines": [("input_tokens", "m-bulk", 67500), ("output_tokens", "m-large", 1050000000)],
            "subtotal": 1050067500, "total": 1050067500})
    graduated = {"name": "tiers", "currency": "USD", "gpu_hour": {"*": {
        "model": "graduated", "tiers": [{"up_to": "1000", "price": "2.50"}, {"price": "2.00"}]}}}
    # 1000 h is all tier 1; one more second adds 2.00 / 3600 = 0.00055... dollars.
    for seconds, amount in ((3600000, 250000), (3600001, 250000), (3600000 + 9000, 250500)):
        yield (f"graduated charge bound {seconds}", graduated,
               usage_of("2024-06", [("gpu_seconds", "X", seconds)]),
               {"lines": [("gpu", "X", amount)], "subtotal": amount, "total": amount})

    yield from hand_cases()


def hand_cases():
    """Yield cases of the rules for slices, packages, credits and commitments, worked by hand."""
    def gpu_tiers(model, low, high):
        return {"*": {"model": model, "tiers": [{"up_to": "1000", "price": low},
                                                {"price": high}]}}

    for model, first, second in (("graduated", 208333, 130000), ("volume", 166667, 120000)):
        # 833.33 h in the first half of June, 500 h after a price change on June 16.
        # graduated: 833.33 * 2.50; then 1000 * 3.00 + 333.33 * 2.40 - 833.33 * 3.00 = 1300.
        # volume: the period's 1333.33 h are in tier 2: 833.33 * 2.00 and 500 * 2.40.
        book = {"name": "two", "currency": "USD", "versions": [
            {"base_fee": "100", "gpu_hour": gpu_tiers(model, "2.50", "2.00")},
            {"effective_from": "2024-06-16T00:00:00Z", "base_fee": "100",
             "gpu_hour": gpu_tiers(model, "3.00", "2.40")}]}
        usage = usage_of("2024-06", [("gpu_seconds", "H100", 3000000),
                                     ("gpu_seconds", "H100", 1800000)])
        usage["items"][1]["start"] = "2024-06-16T00:00:00Z"
        yield (f"two slices {model}", book, usage,
               {"lines": [("base_fee", "", 5000), ("base_fee", "", 5000),
                          ("gpu", "H100", first), ("gpu", "H100", second)],
                "subtotal": 10000 + first + second, "total": 10000 + first + second})
    package = {"name": "package", "currency": "USD",
               "gpu_hour": {"L4": {"model": "package", "size": "10", "price": "5"}}}
    yield ("package started", package, usage_of("2024-06", [("gpu_seconds", "L4", 36001)]),
           {"lines": [("gpu", "L4", 1000)], "subtotal": 1000, "total": 1000})
    grants = [{"id": "3", "currency": "USD", "balance_minor": 1000,
               "granted": "2024-01-01T00:00:00Z", "expires": None},
              {"id": "1", "currency": "USD", "balance_minor": 50,
               "granted": "2024-02-01T00:00:00Z", "expires": "2024-07-15T00:00:00Z"},
              {"id": "9", "currency": "USD", "balance_minor": 50,
               "granted": "2024-01-01T00:00:00Z", "expires": "2024-07-15T00:00:00Z"},
              {"id": "4", "currency": "USD", "balance_minor": 50,
               "granted": "2024-01-01T00:00:00Z", "expires": "2024-06-01T00:00:00Z"},
              {"id": "5", "currency": "USD", "balance_minor": 50,
               "granted": "2024-07-01T00:00:00Z", "expires": None}]
    yield ("credit order", {"name": "fee", "currency": "USD", "base_fee": "1.20"},
           usage_of("2024-06", [], credits=grants),
           {"lines": [("base_fee", "", 120)], "subtotal": 120, "credits_applied": 120,
            "total": 0, "credits": [{"id": 9, "applied": 50, "balance_after": 0},
                                    {"id": 1, "applied": 50, "balance_after": 0},
                                    {"id": 3, "applied": 20, "balance_after": 980}]})
    other_currency = [{"id": "2", "currency": "EUR", "balance_minor": 500,
                       "granted": "2024-01-01T00:00:00Z", "expires": None},
                      {"id": "6", "currency": "USD", "balance_minor": 30,
                       "granted": "2024-02-01T00:00:00Z", "expires": None}]
    yield ("credit in another currency does not apply",
           {"name": "fee", "currency": "USD", "base_fee": "1.20"},
           usage_of("2024-06", [], credits=other_currency),
           {"lines": [("base_fee", "", 120)], "subtotal": 120, "credits_applied": 30,
            "total": 90, "credits": [{"id": 6, "applied": 30, "balance_after": 0}]})
    commitment = {"name": "minimum", "currency": "USD", "gpu_hour": {"*": "2"},
                  "commitment": {"minimum": "100"}}
    yield ("commitment prorated", commitment,
           usage_of("2024-06", [("gpu_seconds", "A100", 36000)],
                    service_start="2024-06-16T00:00:00Z"),
           {"lines": [("gpu", "A100", 2000), ("commitment_true_up", "", 3000)],
            "subtotal": 5000, "total": 5000})
    cached = {"name": "cached", "currency": "KWD", "rounding": "half_even",
              "tokens_per_million": {"m-x": {"input": "2.0005"}}}
    yield ("cached input at input price", cached,
           usage_of("2024-06", [("cached_input_tokens", "m-x", 1000000)]),
           {"lines": [("cached_input_tokens", "m-x", 2000)], "subtotal": 2000, "total": 2000})


def self_test():
    """Check the oracle against the billing cases; return the number of failures."""
    failures = 0
    count = 0
    for name, book, usage, expected in self_test_cases():
        count += 1
        result = rate(book, usage)
        if "error" in result:
            print(f"FAIL {name}: error {result['error']}: {result['message']}")
            failures += 1
            continue
        got = {"lines": [(line["kind"], line["dimension"], line["amount_minor"])
                         for line in result["lines"]],
               "subtotal": result["subtotal"], "discount": result["discount"],
               "credits_applied": result["credits_applied"], "total": result["total"],
               "credits": result["credits"]}
        want = {"discount": 0, "credits_applied": 0, "credits": [], **expected}
        for key, value in want.items():
            if got[key] != value:
                print(f"FAIL {name}: {key}: expected {value}, got {got[key]}")
                failures += 1
    errors = (("usage before the first version", {"name": "late", "currency": "USD", "versions": [
                  {"effective_from": "2024-06-15T00:00:00Z", "base_fee": "1"}]},
               usage_of("2024-06", []), "not_found"),
              ("missing GPU price", pb1(), usage_of("2024-06", [("gpu_seconds", "B200", 1)]),
               "not_found"),
              ("listed model borrows no direction", {
                  "name": "no-borrow", "currency": "USD", "tokens_per_million": {
                      "m-x": {"input": "1"}, "*": {"input": "1", "output": "2"}}},
               usage_of("2024-06", [("output_tokens", "m-x", 5)]), "not_found"),
              ("item start not a slice", pb1(), usage_of("2024-06", [], items=[
                  {"meter": "api_calls", "quantity": "5", "start": "2024-06-02T00:00:00Z"}]),
               "invalid"))
    for name, book, usage, kind in errors:
        count += 1
        result = rate(book, usage)
        if result.get("error") != kind:
            print(f"FAIL {name}: expected error {kind}, got {result}")
            failures += 1
    print(f"{count} oracle self-test cases, {failures} failures")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--self-test", action="store_true",
                        help="check the oracle against the billing cases and exit")
    parser.add_argument("cases", nargs="?", help="JSON lines of {\"book\", \"usage\"} to rate")
    arguments = parser.parse_args()
    if arguments.self_test:
        return 1 if self_test() else 0
    if arguments.cases is None:
        parser.error("give --self-test or a CASES file")
    with open(arguments.cases, encoding="utf-8") as cases:
        for text in cases:
            case = json.loads(text)
            result = rate(case["book"], case["usage"])
            result.pop("max_intermediate", None)
            result.pop("wide_ratio", None)
            print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
