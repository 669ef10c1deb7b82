#!/usr/bin/env python3
"""A local stand-in for the parts of the Stripe API that the invoice exporter calls.

It serves, on 127.0.0.1 only, over HTTP or TLS:
  POST /v1/invoices, POST /v1/invoiceitems, POST /v1/invoices/{id}/finalize,
  POST /v1/invoices/{id}/void, GET /v1/invoices/{id}, DELETE /v1/invoices/{id} (drafts only),
  POST /v1/credit_notes, GET /v1/credit_notes/{id}, POST /v1/credit_notes/{id}/void
with Stripe's conventions for API version 2026-07-29.dahlia: bearer (or basic) auth with a 401
JSON error for a bad key, form bodies with bracketed keys (metadata[invoice_number]=...),
idempotency keys (the same key and parameters replay the stored reply with the same id, the same
key with other parameters is a 400 idempotency_error), error objects {"error": {"type", "code",
"param", "message"}}, and ids with Stripe's prefixes (in_, ii_, il_, cn_, cnli_, req_).

Tests drive it through /_test/ endpoints, which need no key:
  POST /_test/faults  {"faults": [FAULT, ...]}   replace the fault list
  POST /_test/delay   {"ms": N}                   delay every reply by N ms
  POST /_test/tamper  {"invoice": ID, "total": N} change an invoice's total (a difference)
  POST /_test/tamper  {"credit_note": ID, "amount": N}  change a credit note's amount
  POST /_test/pay     {"invoice": ID}             mark an open invoice paid, as a payment would
  POST /_test/reset                               forget every object, key and fault
  GET  /_test/state                               invoices, items and the request log as JSON
A FAULT matches requests by "method" and "path_prefix", skips the first "skip" matches, then
applies to the next "count" (default 1):
  "429"   reply 429 with Retry-After: "retry_after" seconds, without executing
  "500"   reply 500, with Stripe-Should-Retry: "should_retry" ("true", "false" or absent)
  "delay" execute, then wait "ms" before the reply (beyond the client's timeout)
  "drop"  execute, then close the connection without a reply

Money is never a float here: amounts are ints, decimals are decimal.Decimal.

Usage: stripe_standin.py --port-file FILE --api-key-file FILE [--customers cus_a,cus_b]
                         [--tls-cert CERT --tls-key KEY] [--log FILE]
       stripe_standin.py --self-test
"""
import argparse
import base64
import decimal
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSION = "2026-07-29.dahlia"
ITEMS_PER_INVOICE_MAX = 250
METADATA_KEYS_MAX = 50
METADATA_KEY_SIZE_MAX = 40
METADATA_VALUE_SIZE_MAX = 500
DECIMAL_PATTERN = re.compile(r"^-?[0-9]+(\.[0-9]{1,12})?$")

INVOICE_PARAMS = {
    "account_tax_ids", "application_fee_amount", "auto_advance", "automatic_tax",
    "automatically_finalizes_at", "collection_method", "currency", "custom_fields", "customer",
    "customer_account", "days_until_due", "default_payment_method", "default_source",
    "default_tax_rates", "description", "discounts", "due_date", "effective_at", "expand",
    "footer", "from_invoice", "issuer", "metadata", "number", "on_behalf_of", "payment_settings",
    "pending_invoice_items_behavior", "rendering", "shipping_cost", "shipping_details",
    "statement_descriptor", "subscription", "transfer_data",
}
INVOICEITEM_PARAMS = {
    "amount", "currency", "customer", "customer_account", "description", "discountable",
    "discounts", "expand", "invoice", "metadata", "period", "price_data", "pricing", "quantity",
    "quantity_decimal", "subscription", "tax_behavior", "tax_code", "tax_rates",
    "unit_amount_decimal",
}
FINALIZE_PARAMS = {"auto_advance", "expand"}
# Stripe's three-decimal currencies: payment amounts must end in 0 (a multiple of 10 minor units).
THREE_DECIMAL_CURRENCIES = {"bhd", "jod", "kwd", "omr", "tnd"}
VOID_PARAMS = {"expand"}
CREDIT_NOTE_PARAMS = {
    "amount", "credit_amount", "effective_at", "email_type", "expand", "invoice", "lines", "memo",
    "metadata", "out_of_band_amount", "reason", "refund_amount", "refunds", "shipping_cost",
}
CREDIT_NOTE_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")


class StripeError(Exception):
    """An error reply: HTTP status and Stripe's error object."""

    def __init__(self, status, error_type, message, code=None, param=None, saved=False):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": error_type, "message": message}}
        if code:
            self.body["error"]["code"] = code
            self.body["error"]["doc_url"] = "https://docs.stripe.com/error-codes/" + code.replace(
                "_", "-")
        if param:
            self.body["error"]["param"] = param
        self.saved = saved


def new_id(prefix):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def parse_form(body):
    """Decodes a form body with bracketed keys into nested dicts and lists."""
    params = {}
    for key, value in urllib.parse.parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        parts = re.findall(r"^[^\[]+|\[([^\]]*)\]", key)
        head = key.split("[", 1)[0]
        path = [head] + [p for p in parts[1:]]
        node = params
        for index, part in enumerate(path):
            last = index == len(path) - 1
            following_is_list = not last and path[index + 1] == ""
            if part == "":
                if last:
                    node.append(value)
                else:
                    node.append({})
                    node = node[-1]
                continue
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if following_is_list else {})
    return params


def parse_bool(params, name):
    value = params.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise StripeError(400, "invalid_request_error",
                          "Invalid boolean: %s" % value, "parameter_invalid_boolean", name)
    return value == "true"


def parse_int(params, name, minimum=None):
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]+", value):
        raise StripeError(400, "invalid_request_error", "Invalid integer: %s" % value,
                          "parameter_invalid_integer", name)
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeError(400, "invalid_request_error",
                          "This value must be greater than or equal to %d." % minimum,
                          "parameter_invalid_integer", name)
    return number


def parse_decimal(params, name, non_negative=False):
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not DECIMAL_PATTERN.match(value) or (
            non_negative and value.startswith("-")):
        raise StripeError(400, "invalid_request_error",
                          "Invalid decimal: %s; use at most 12 decimal places" % value,
                          "parameter_invalid_decimal", name)
    return decimal.Decimal(value)


def check_unknown(params, known):
    for name in params:
        if name not in known:
            raise StripeError(400, "invalid_request_error",
                              "Received unknown parameter: %s" % name, "parameter_unknown", name)


def check_currency(params):
    value = params.get("currency")
    if value is not None and not re.fullmatch(r"[a-z]{3}", value):
        raise StripeError(400, "invalid_request_error",
                          "Invalid currency: %s. Stripe currently supports these currencies: "
                          "usd, eur, jpy, ..." % value, "parameter_invalid_string", "currency")
    return value


def check_metadata(params):
    metadata = params.get("metadata", {})
    if metadata == "":
        return {}
    if not isinstance(metadata, dict):
        raise StripeError(400, "invalid_request_error", "Invalid hash", "parameter_invalid_hash",
                          "metadata")
    if len(metadata) > METADATA_KEYS_MAX:
        raise StripeError(400, "invalid_request_error",
                          "Metadata can have at most 50 keys", None, "metadata")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_SIZE_MAX or not isinstance(value, str) or \
                len(value) > METADATA_VALUE_SIZE_MAX:
            raise StripeError(400, "invalid_request_error",
                              "Metadata keys are at most 40 characters and values at most 500",
                              None, "metadata[%s]" % key)
    return dict(metadata)


class Store:
    """Objects, idempotent results, faults and the request log; one lock guards all."""

    def __init__(self, customers):
        self.lock = threading.Lock()
        self.customers = set(customers)
        self.reset()

    def reset(self):
        self.invoices = {}
        self.items = {}
        self.credit_notes = {}
        self.idempotent = {}
        self.faults = []
        self.delay_ms = 0
        self.requests = []

    # ---- faults ----

    def take_fault(self, method, path):
        for fault in self.faults:
            if fault.get("method", method) != method or not path.startswith(
                    fault.get("path_prefix", "")):
                continue
            if fault.get("skip", 0) > 0:
                fault["skip"] -= 1
                continue
            if fault.get("count", 1) <= 0:
                continue
            fault["count"] = fault.get("count", 1) - 1
            fault["applied"] = fault.get("applied", 0) + 1
            return dict(fault)
        return None

    # ---- objects ----

    def invoice_totals(self, invoice):
        total = sum(self.items[item_id]["amount"] for item_id in invoice["_items"])
        invoice["subtotal"] = total
        invoice["subtotal_excluding_tax"] = total
        invoice["total"] = total
        invoice["total_excluding_tax"] = total
        if invoice["status"] in ("draft", "open"):
            invoice["amount_due"] = max(total, 0)
            invoice["amount_remaining"] = max(total, 0)

    def invoice_view(self, invoice):
        view = {k: v for k, v in invoice.items() if not k.startswith("_")}
        lines = []
        for item_id in invoice["_items"]:
            item = self.items[item_id]
            lines.append({
                "id": item["_line_id"], "object": "line_item", "amount": item["amount"],
                "currency": item["currency"], "description": item["description"],
                "discount_amounts": [], "discountable": item["discountable"], "discounts": [],
                "invoice": invoice["id"], "livemode": False, "metadata": item["metadata"],
                "period": item["period"],
                "parent": {"type": "invoice_item_details",
                           "invoice_item_details": {"invoice_item": item_id, "proration": False,
                                                    "proration_details": {"credited_items": None},
                                                    "subscription": None},
                           "subscription_item_details": None},
                "pretax_credit_amounts": [], "pricing": item["pricing"],
                "quantity": item["quantity"], "quantity_decimal": item["quantity_decimal"],
                "subtotal": item["amount"], "taxes": [],
            })
        view["lines"] = {"object": "list", "data": lines[:10], "has_more": len(lines) > 10,
                         "total_count": len(lines), "url": "/v1/invoices/%s/lines" % invoice["id"]}
        return view

    def get_invoice(self, invoice_id, param="invoice"):
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(404, "invalid_request_error",
                              "No such invoice: '%s'" % invoice_id, "resource_missing", param)
        return invoice

    def check_customer(self, params):
        customer = params.get("customer")
        if customer is None:
            raise StripeError(400, "invalid_request_error",
                              "Missing required param: customer.", "parameter_missing",
                              "customer")
        if customer not in self.customers:
            raise StripeError(400, "invalid_request_error",
                              "No such customer: '%s'" % customer, "resource_missing", "customer")
        return customer

    def create_invoice(self, params):
        check_unknown(params, INVOICE_PARAMS)
        customer = self.check_customer(params)
        currency = check_currency(params) or "usd"
        auto_advance = parse_bool(params, "auto_advance")
        behavior = params.get("pending_invoice_items_behavior", "exclude")
        if behavior not in ("exclude", "include"):
            raise StripeError(400, "invalid_request_error",
                              "Invalid pending_invoice_items_behavior: must be one of exclude "
                              "or include", "parameter_invalid_string",
                              "pending_invoice_items_behavior")
        metadata = check_metadata(params)
        now = int(time.time())
        invoice = {
            "id": new_id("in_"), "object": "invoice", "account_country": "US",
            "account_name": "Harpoon Meter stand-in", "account_tax_ids": None, "amount_due": 0,
            "amount_overpaid": 0, "amount_paid": 0, "amount_paid_off_stripe": 0,
            "amount_remaining": 0, "amount_shipping": 0, "application": None,
            "attempt_count": 0, "attempted": False, "auto_advance": bool(auto_advance),
            "automatic_tax": {"enabled": False, "liability": None, "status": None,
                              "disabled_reason": None, "provider": None},
            "automatically_finalizes_at": None, "billing_reason": "manual",
            "collection_method": params.get("collection_method", "charge_automatically"),
            "confirmation_secret": None, "created": now, "currency": currency,
            "custom_fields": None, "customer": customer, "customer_account": None,
            "customer_address": None, "customer_email": None, "customer_name": None,
            "customer_phone": None, "customer_shipping": None, "customer_tax_exempt": "none",
            "customer_tax_ids": [], "default_payment_method": None, "default_source": None,
            "default_tax_rates": [], "description": params.get("description"), "discounts": [],
            "due_date": None, "effective_at": None, "ending_balance": None, "footer": None,
            "from_invoice": None, "hosted_invoice_url": None, "invoice_pdf": None,
            "issuer": {"type": "self"}, "last_finalization_error": None,
            "latest_revision": None, "livemode": False, "metadata": metadata,
            "next_payment_attempt": None, "number": None, "on_behalf_of": None, "parent": None,
            "payment_settings": {"default_mandate": None, "payment_method_options": None,
                                 "payment_method_types": None},
            "period_end": now, "period_start": now, "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0, "receipt_number": None,
            "rendering": None, "shipping_cost": None, "shipping_details": None,
            "starting_balance": 0, "statement_descriptor": None, "status": "draft",
            "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                                   "paid_at": None, "voided_at": None},
            "subtotal": 0, "subtotal_excluding_tax": 0, "test_clock": None,
            "threshold_reason": None, "total": 0, "total_discount_amounts": [],
            "total_excluding_tax": 0, "total_pretax_credit_amounts": [], "total_taxes": [],
            "webhooks_delivered_at": None, "_items": [],
        }
        if behavior == "include":
            for item_id, item in self.items.items():
                if item["customer"] == customer and item["invoice"] is None and \
                        item["currency"] == currency:
                    item["invoice"] = invoice["id"]
                    invoice["_items"].append(item_id)
        self.invoices[invoice["id"]] = invoice
        self.invoice_totals(invoice)
        return self.invoice_view(invoice)

    def create_item(self, params):
        check_unknown(params, INVOICEITEM_PARAMS)
        customer = self.check_customer(params)
        currency = check_currency(params)
        amount = parse_int(params, "amount")
        unit = parse_decimal(params, "unit_amount_decimal")
        quantity = parse_int(params, "quantity", minimum=0)
        quantity_decimal = parse_decimal(params, "quantity_decimal", non_negative=True)
        if amount is not None and (unit is not None or "pricing" in params or
                                   "price_data" in params):
            raise StripeError(400, "invalid_request_error",
                              "You may only specify one of these parameters: amount, "
                              "unit_amount_decimal.", "parameters_exclusive", "amount")
        if quantity is not None and quantity_decimal is not None:
            raise StripeError(400, "invalid_request_error",
                              "You may only specify one of these parameters: quantity, "
                              "quantity_decimal.", "parameters_exclusive", "quantity")
        if amount is None and unit is None:
            raise StripeError(400, "invalid_request_error",
                              "You must specify either amount, unit_amount_decimal, pricing or "
                              "price_data.", "parameter_missing", "amount")
        invoice = None
        if "invoice" in params:
            invoice = self.get_invoice(params["invoice"])
            if invoice["status"] != "draft":
                raise StripeError(400, "invalid_request_error",
                                  "You can only add invoice items to draft invoices.",
                                  "invoice_not_editable", "invoice")
            if invoice["customer"] != customer:
                raise StripeError(400, "invalid_request_error",
                                  "The invoice belongs to another customer.", None, "invoice")
            if len(invoice["_items"]) >= ITEMS_PER_INVOICE_MAX:
                raise StripeError(400, "invalid_request_error",
                                  "An invoice can have at most 250 invoice items.", None,
                                  "invoice")
            if currency is not None and currency != invoice["currency"]:
                raise StripeError(400, "invalid_request_error",
                                  "The currency of the invoice item must match the invoice's.",
                                  None, "currency")
            currency = currency or invoice["currency"]
        if currency is None:
            raise StripeError(400, "invalid_request_error", "Missing required param: currency.",
                              "parameter_missing", "currency")
        metadata = check_metadata(params)
        count = decimal.Decimal(quantity_decimal if quantity_decimal is not None else
                                (quantity if quantity is not None else 1))
        if amount is None:
            # NOTE: Stripe's rounding of quantity x unit_amount_decimal is not documented in the
            # API reference; half-up is assumed here. The exporter sends decimals only when the
            # product is a whole number of minor units, so no rounding happens for its items.
            product = (count * unit).quantize(decimal.Decimal(1), decimal.ROUND_HALF_UP)
            amount = int(product)
        period = params.get("period")
        if isinstance(period, dict):
            period = {"start": parse_int(period, "start"), "end": parse_int(period, "end")}
        else:
            now = int(time.time())
            period = {"start": now, "end": now}
        item = {
            "id": new_id("ii_"), "object": "invoiceitem", "amount": amount, "currency": currency,
            "customer": customer, "customer_account": None, "date": int(time.time()),
            "description": params.get("description"), "discountable": amount >= 0,
            "discounts": [], "invoice": invoice["id"] if invoice else None, "livemode": False,
            "metadata": metadata, "net_amount": amount, "parent": None, "period": period,
            "pricing": {"price_details": None, "type": "price_details",
                        "unit_amount_decimal": str(unit) if unit is not None else str(amount)},
            "proration": False, "proration_details": {"credited_items": None},
            "quantity": int(count) if count == count.to_integral_value() else 1,
            "quantity_decimal": str(count), "tax_rates": [], "test_clock": None,
            "_line_id": new_id("il_"),
        }
        self.items[item["id"]] = item
        if invoice is not None:
            invoice["_items"].append(item["id"])
            self.invoice_totals(invoice)
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def finalize(self, invoice_id, params):
        check_unknown(params, FINALIZE_PARAMS)
        invoice = self.get_invoice(invoice_id)
        auto_advance = parse_bool(params, "auto_advance")
        if invoice["status"] != "draft":
            raise StripeError(400, "invalid_request_error",
                              "This invoice is already finalized, you can't re-finalize a "
                              "non-draft invoice.", "invoice_not_editable")
        self.invoice_totals(invoice)
        # NOTE: Stripe documents the rule for payments; the stand-in applies it where an
        # invoice's amount becomes payable, at finalization.
        if invoice["currency"] in THREE_DECIMAL_CURRENCIES and invoice["amount_due"] % 10 != 0:
            raise StripeError(400, "invalid_request_error",
                              "Amounts in %s must be divisible by 10 (the last digit must be "
                              "0); this invoice's amount due is %d." % (
                                  invoice["currency"].upper(), invoice["amount_due"]),
                              "amount_invalid")
        now = int(time.time())
        invoice["number"] = "STANDIN-%04d" % (1 + sum(
            1 for other in self.invoices.values() if other["number"]))
        invoice["status_transitions"]["finalized_at"] = now
        invoice["effective_at"] = now
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        # Stripe marks an invoice with nothing to pay as paid when it is finalized.
        if invoice["amount_due"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        else:
            invoice["status"] = "open"
        return self.invoice_view(invoice)

    def void(self, invoice_id, params):
        check_unknown(params, VOID_PARAMS)
        invoice = self.get_invoice(invoice_id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise StripeError(400, "invalid_request_error",
                              "You can only pass in open or uncollectible invoices.",
                              "invoice_not_editable")
        # NOTE: the stand-in rejects the void of an invoice with issued credit notes. Stripe's
        # documentation, as far as it was read, does not say what the real API does here.
        issued = [note["id"] for note in self.credit_notes.values()
                  if note["invoice"] == invoice_id and note["status"] == "issued"]
        if issued:
            raise StripeError(400, "invalid_request_error",
                              "This invoice has issued credit notes (%s); void them before "
                              "voiding the invoice." % ", ".join(issued), "invoice_not_editable")
        invoice["status"] = "void"
        invoice["amount_remaining"] = 0
        invoice["status_transitions"]["voided_at"] = int(time.time())
        return self.invoice_view(invoice)

    def delete(self, invoice_id):
        invoice = self.get_invoice(invoice_id)
        if invoice["status"] != "draft":
            raise StripeError(400, "invalid_request_error",
                              "You can only delete draft invoices. Void or mark the invoice "
                              "uncollectible instead.", "invoice_not_editable")
        # The one-off draft goes with its invoice items.
        for item_id in invoice["_items"]:
            del self.items[item_id]
        del self.invoices[invoice_id]
        return {"id": invoice_id, "object": "invoice", "deleted": True}

    # ---- credit notes ----

    def get_credit_note(self, note_id):
        note = self.credit_notes.get(note_id)
        if note is None:
            raise StripeError(404, "invalid_request_error",
                              "No such credit note: '%s'" % note_id, "resource_missing", "id")
        return note

    def create_credit_note(self, params):
        """Issues a credit note of `amount` against an open or paid invoice.

        As Stripe documents for API versions since 2025-11-17.clover, the amount first reduces
        the invoice's amount_remaining (and amount_due), not below zero: that part is the
        pre_payment_amount. The rest, the post_payment_amount, must equal the sum of
        refund_amount, credit_amount and out_of_band_amount.
        """
        check_unknown(params, CREDIT_NOTE_PARAMS)
        invoice_id = params.get("invoice")
        if invoice_id is None:
            raise StripeError(400, "invalid_request_error", "Missing required param: invoice.",
                              "parameter_missing", "invoice")
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(400, "invalid_request_error",
                              "No such invoice: '%s'" % invoice_id, "resource_missing", "invoice")
        if "lines" in params or "refunds" in params or "shipping_cost" in params:
            raise StripeError(400, "invalid_request_error",
                              "This stand-in issues credit notes by amount only", None,
                              "lines")
        amount = parse_int(params, "amount", minimum=1)
        if amount is None:
            raise StripeError(400, "invalid_request_error",
                              "You must pass either amount or lines.", "parameter_missing",
                              "amount")
        extra = {name: parse_int(params, name, minimum=0) or 0
                 for name in ("credit_amount", "out_of_band_amount", "refund_amount")}
        reason = params.get("reason")
        if reason is not None and reason not in CREDIT_NOTE_REASONS:
            raise StripeError(400, "invalid_request_error",
                              "Invalid reason: must be one of duplicate, fraudulent, "
                              "order_change, or product_unsatisfactory",
                              "parameter_invalid_string", "reason")
        metadata = check_metadata(params)
        if invoice["status"] not in ("open", "paid"):
            raise StripeError(400, "invalid_request_error",
                              "Credit notes can only be issued for open or paid invoices; "
                              "invoice %s is %s." % (invoice_id, invoice["status"]),
                              "invoice_not_editable", "invoice")
        credited = sum(note["amount"] for note in self.credit_notes.values()
                       if note["invoice"] == invoice_id and note["status"] == "issued")
        if credited + amount > invoice["total"]:
            raise StripeError(400, "invalid_request_error",
                              "The credit note amount (%d) exceeds the invoice's total (%d) "
                              "less its issued credit notes (%d)." % (
                                  amount, invoice["total"], credited),
                              "credit_note_amount_too_large", "amount")
        pre = min(amount, invoice["amount_remaining"])
        post = amount - pre
        if sum(extra.values()) != post:
            raise StripeError(400, "invalid_request_error",
                              "The sum of refund_amount, credit_amount and out_of_band_amount "
                              "(%d) must equal the credit note's post_payment_amount (%d): "
                              "the amount less the invoice's amount_remaining." % (
                                  sum(extra.values()), post), None, "amount")
        now = int(time.time())
        invoice["amount_due"] -= pre
        invoice["amount_remaining"] -= pre
        invoice["pre_payment_credit_notes_amount"] += pre
        invoice["post_payment_credit_notes_amount"] += post
        if invoice["status"] == "open" and invoice["amount_remaining"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        count = sum(1 for note in self.credit_notes.values() if note["invoice"] == invoice_id)
        note_id = new_id("cn_")
        if pre and post:
            note_type = "mixed"
        elif post:
            note_type = "post_payment"
        else:
            note_type = "pre_payment"
        note = {
            "id": note_id, "object": "credit_note", "amount": amount, "amount_shipping": 0,
            "created": now, "currency": invoice["currency"], "customer": invoice["customer"],
            "customer_balance_transaction": None, "discount_amount": 0, "discount_amounts": [],
            "effective_at": now, "invoice": invoice_id,
            "lines": {"object": "list", "has_more": False,
                      "url": "/v1/credit_notes/%s/lines" % note_id,
                      "data": [{"id": new_id("cnli_"), "object": "credit_note_line_item",
                                "amount": amount, "description": params.get("memo"),
                                "discount_amount": 0, "discount_amounts": [],
                                "livemode": False, "quantity": 1, "type": "custom_line_item",
                                "unit_amount": amount, "unit_amount_decimal": str(amount)}]},
            "livemode": False, "memo": params.get("memo"), "metadata": metadata,
            "number": "%s-CN-%02d" % (invoice["number"], count + 1),
            "out_of_band_amount": extra["out_of_band_amount"] or None,
            "pdf": None, "post_payment_amount": post, "pre_payment_amount": pre,
            "reason": reason, "refunds": [], "status": "issued", "subtotal": amount,
            "subtotal_excluding_tax": amount, "total": amount, "total_excluding_tax": amount,
            "total_taxes": [],
            "type": note_type,
            "voided_at": None,
        }
        self.credit_notes[note_id] = note
        return dict(note)

    def void_credit_note(self, note_id, params):
        check_unknown(params, VOID_PARAMS)
        note = self.get_credit_note(note_id)
        if note["status"] == "void":
            raise StripeError(400, "invalid_request_error",
                              "The credit note %s has already been voided." % note_id)
        invoice = self.invoices[note["invoice"]]
        if invoice["status"] != "open":
            raise StripeError(400, "invalid_request_error",
                              "A credit note can only be voided while its invoice is open; "
                              "invoice %s is %s." % (invoice["id"], invoice["status"]),
                              "invoice_not_editable")
        invoice["amount_due"] += note["pre_payment_amount"]
        invoice["amount_remaining"] += note["pre_payment_amount"]
        invoice["pre_payment_credit_notes_amount"] -= note["pre_payment_amount"]
        invoice["post_payment_credit_notes_amount"] -= note["post_payment_amount"]
        note["status"] = "void"
        note["voided_at"] = int(time.time())
        return dict(note)

    def state(self):
        return {
            "invoices": [self.invoice_view(invoice) for invoice in self.invoices.values()],
            "invoiceitems": [{k: v for k, v in item.items() if not k.startswith("_")}
                             for item in self.items.values()],
            "credit_notes": list(self.credit_notes.values()),
            "requests": list(self.requests),
            "faults": self.faults,
        }


def route(store, method, path, params):
    """Executes an API call under the store's lock; returns the reply object."""
    if method == "POST" and path == "/v1/invoices":
        return store.create_invoice(params)
    if method == "POST" and path == "/v1/invoiceitems":
        return store.create_item(params)
    if method == "POST" and path == "/v1/credit_notes":
        return store.create_credit_note(params)
    note = re.fullmatch(r"/v1/credit_notes/([^/]+)(/void)?", path)
    if note and method == "POST" and note.group(2) == "/void":
        return store.void_credit_note(note.group(1), params)
    if note and method == "GET" and note.group(2) is None:
        return dict(store.get_credit_note(note.group(1)))
    match = re.fullmatch(r"/v1/invoices/([^/]+)(/finalize|/void)?", path)
    if match and method == "POST" and match.group(2) == "/finalize":
        return store.finalize(match.group(1), params)
    if match and method == "POST" and match.group(2) == "/void":
        return store.void(match.group(1), params)
    if match and method == "GET" and match.group(2) is None:
        return store.invoice_view(store.get_invoice(match.group(1), "id"))
    if match and method == "DELETE" and match.group(2) is None:
        return store.delete(match.group(1))
    raise StripeError(404, "invalid_request_error",
                      "Unrecognized request URL (%s: %s). Please see https://stripe.com/docs "
                      "or we can help at https://support.stripe.com/." % (method, path))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stripe-standin/1"

    def log_message(self, fmt, *args):  # the request log replaces the default stderr lines
        pass

    def reply(self, status, body, headers=None):
        data = json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", new_id("req_")[:18])
        self.send_header("Stripe-Version", API_VERSION)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        size = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(size).decode("utf-8", "replace") if size else ""

    def authorized(self):
        header = self.headers.get("Authorization", "")
        given = None
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                given = ""
        if given is None or given == "":
            self.reply(401, {"error": {
                "type": "invalid_request_error",
                "message": "You did not provide an API key. You need to provide your API key in "
                           "the Authorization header, using Bearer auth (e.g. 'Authorization: "
                           "Bearer YOUR_SECRET_KEY')."}})
            return False
        if not secrets.compare_digest(given.encode(), self.server.api_key.encode()):
            masked = given[:8] + "*" * 4 + given[-4:] if len(given) > 12 else "****"
            self.reply(401, {"error": {"type": "invalid_request_error",
                                       "message": "Invalid API Key provided: %s" % masked}})
            return False
        return True

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def handle_test(self, method, path, body):
        store = self.server.store
        data = json.loads(body) if body else {}
        with store.lock:
            if method == "GET" and path == "/_test/state":
                result = store.state()
            elif path == "/_test/faults":
                store.faults = data.get("faults", [])
                result = {"faults": store.faults}
            elif path == "/_test/delay":
                store.delay_ms = int(data.get("ms", 0))
                result = {"ms": store.delay_ms}
            elif path == "/_test/pay":
                invoice = store.get_invoice(data["invoice"])
                invoice["amount_paid"] += invoice["amount_remaining"]
                invoice["amount_remaining"] = 0
                invoice["status"] = "paid"
                result = store.invoice_view(invoice)
            elif path == "/_test/tamper" and "credit_note" in data:
                note = store.get_credit_note(data["credit_note"])
                note["amount"] = int(data["amount"])
                result = dict(note)
            elif path == "/_test/tamper":
                invoice = store.get_invoice(data["invoice"])
                invoice["total"] = int(data["total"])
                result = store.invoice_view(invoice)
            elif path == "/_test/reset":
                store.reset()
                result = {"reset": True}
            else:
                result = None
        if result is None:
            self.reply(404, {"error": {"type": "invalid_request_error",
                                       "message": "unknown test endpoint %s" % path}})
        else:
            self.reply(200, result)

    def handle_request(self, method):
        path = urllib.parse.urlsplit(self.path).path
        body = self.read_body()
        if path.startswith("/_test/"):
            self.handle_test(method, path, body)
            return
        if not self.authorized():
            return
        store = self.server.store
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        content_type = self.headers.get("Content-Type", "")
        entry = {"method": method, "path": path, "idempotency_key": key, "at": time.time()}
        if method == "POST" and body and not content_type.startswith(
                "application/x-www-form-urlencoded"):
            entry["status"] = 400
            self.log_entry(entry)
            self.reply(400, {"error": {"type": "invalid_request_error",
                                       "message": "Invalid request: use "
                                                  "application/x-www-form-urlencoded"}})
            return
        params = parse_form(body)
        after = None
        with store.lock:
            fault = store.take_fault(method, path)
            kind = fault["kind"] if fault else None
            entry["fault"] = kind
            if kind == "429":
                status, result, headers = 429, {"error": {
                    "type": "invalid_request_error", "code": "rate_limit",
                    "message": "Too many requests hit the API too quickly. We recommend an "
                               "exponential backoff of your requests."}}, {
                    "Retry-After": str(fault.get("retry_after", 1))}
            elif kind == "500":
                status, result, headers = 500, {"error": {
                    "type": "api_error",
                    "message": "An unknown error occurred in our API."}}, {}
                if "should_retry" in fault:
                    headers["Stripe-Should-Retry"] = fault["should_retry"]
            else:
                status, result, headers = self.execute(store, method, path, params, key, entry)
                after = kind
            entry["status"] = status
            self.log_entry(entry)
            delay_ms = store.delay_ms + (fault.get("ms", 0) if after == "delay" else 0)
        if delay_ms:
            time.sleep(delay_ms / 1000)
        if after == "drop":
            # The request was executed and its result stored: only its reply is lost.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.reply(status, result, headers)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def execute(self, store, method, path, params, key, entry):
        fingerprint = json.dumps([method, path, params], sort_keys=True)
        if key is not None and key in store.idempotent:
            saved = store.idempotent[key]
            if saved["fingerprint"] != fingerprint:
                entry["idempotency"] = "mismatch"
                return 400, {"error": {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used with the same "
                               "parameters they were first used with. Try using a key other "
                               "than '%s' if you meant to execute a different request." % key}}, {}
            entry["idempotency"] = "replayed"
            return saved["status"], saved["body"], {"Idempotent-Replayed": "true",
                                                    "Idempotency-Key": key}
        try:
            result = route(store, method, path, params)
            status = 200
        except StripeError as error:
            return error.status, error.body, {}
        entry["executed"] = True
        entry["object"] = result.get("id")
        if key is not None:
            store.idempotent[key] = {"fingerprint": fingerprint, "status": status,
                                     "body": result}
        return status, result, {"Idempotency-Key": key} if key else {}

    def log_entry(self, entry):
        self.server.store.requests.append(entry)
        if self.server.log_file is not None:
            self.server.log_file.write(json.dumps(entry) + "\n")
            self.server.log_file.flush()


def make_server(api_key, customers, cert=None, key=None, log_path=None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.api_key = api_key
    server.store = Store(customers)
    server.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def self_test():
    """Checks the stand-in's own behaviour against Stripe's conventions; exits 1 on a failure."""
    import urllib.request
    api_key = "sk_test_" + secrets.token_hex(12)
    server = make_server(api_key, ["cus_selftest1"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    failures = []

    def call(method, path, form=None, key=api_key, idem=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(base + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + key)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if idem:
            request.add_header("Idempotency-Key", idem)
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.load(reply), dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error), dict(error.headers)

    def expect(what, condition):
        print(("ok   " if condition else "FAIL ") + "stand-in: " + what)
        if not condition:
            failures.append(what)

    status, body, _ = call("POST", "/v1/invoices", {"customer": "cus_selftest1"}, key="sk_bad_1")
    expect("bad key is a 401 invalid_request_error",
           status == 401 and body["error"]["type"] == "invalid_request_error")
    form = {"customer": "cus_selftest1", "currency": "jpy", "metadata[invoice_number]": "HM-1"}
    status, invoice, _ = call("POST", "/v1/invoices", form, idem="k-invoice")
    expect("invoice created with an in_ id", status == 200 and invoice["id"].startswith("in_"))
    expect("bracketed metadata decoded", invoice["metadata"] == {"invoice_number": "HM-1"})
    status, again, headers = call("POST", "/v1/invoices", form, idem="k-invoice")
    expect("same key and parameters replay the same id",
           status == 200 and again["id"] == invoice["id"] and
           headers.get("Idempotent-Replayed") == "true")
    status, body, _ = call("POST", "/v1/invoices", dict(form, description="x"), idem="k-invoice")
    expect("same key with other parameters is a 400 idempotency_error",
           status == 400 and body["error"]["type"] == "idempotency_error")
    item_form = {"customer": "cus_selftest1", "invoice": invoice["id"], "currency": "jpy",
                 "quantity_decimal": "2500000", "unit_amount_decimal": "0.00015"}
    status, item, _ = call("POST", "/v1/invoiceitems", item_form, idem="k-item")
    expect("decimal item: 2500000 x 0.00015 = 375",
           status == 200 and item["id"].startswith("ii_") and item["amount"] == 375)
    status, body, _ = call("POST", "/v1/invoiceitems", dict(item_form, amount="5"), idem="k2")
    expect("amount with unit_amount_decimal is parameters_exclusive",
           status == 400 and body["error"].get("code") == "parameters_exclusive")
    status, body, _ = call("POST", "/v1/invoiceitems", dict(item_form, colour="blue"),
                           idem="k3")
    expect("unknown parameter is parameter_unknown",
           status == 400 and body["error"].get("code") == "parameter_unknown" and
           body["error"].get("param") == "colour")
    status, body, _ = call("POST", "/v1/invoices", {"customer": "cus_nobody"})
    expect("unknown customer is resource_missing",
           status == 400 and body["error"].get("code") == "resource_missing")
    status, final, _ = call("POST", "/v1/invoices/%s/finalize" % invoice["id"], {},
                            idem="k-final")
    expect("finalized invoice is open with the items' total",
           status == 200 and final["status"] == "open" and final["total"] == 375)
    status, body, _ = call("POST", "/v1/invoiceitems", item_form, idem="k-late")
    expect("item on a finalized invoice is rejected", status == 400)
    status, fetched, _ = call("GET", "/v1/invoices/" + invoice["id"])
    expect("GET returns the invoice", status == 200 and fetched["total"] == 375)
    status, body, _ = call("DELETE", "/v1/invoices/" + invoice["id"])
    expect("an open invoice cannot be deleted",
           status == 400 and "only delete draft" in body["error"]["message"])
    status, draft, _ = call("POST", "/v1/invoices", {"customer": "cus_selftest1"})
    status, gone, _ = call("DELETE", "/v1/invoices/" + draft["id"])
    expect("a draft is deleted", status == 200 and gone == {
        "id": draft["id"], "object": "invoice", "deleted": True})
    status, body, _ = call("DELETE", "/v1/invoices/" + draft["id"])
    expect("a deleted draft is then missing",
           status == 404 and body["error"].get("code") == "resource_missing")
    status, kwd, _ = call("POST", "/v1/invoices", {"customer": "cus_selftest1",
                                                   "currency": "kwd"})
    call("POST", "/v1/invoiceitems", {"customer": "cus_selftest1", "invoice": kwd["id"],
                                      "amount": "1234"})
    status, body, _ = call("POST", "/v1/invoices/%s/finalize" % kwd["id"], {})
    expect("KWD amount not divisible by 10 is refused",
           status == 400 and "divisible by 10" in body["error"]["message"])
    status, body, _ = call("GET", "/v1/invoices/in_missing")
    expect("unknown invoice is a 404 resource_missing",
           status == 404 and body["error"].get("code") == "resource_missing")
    # Credit notes against the open invoice of 375 JPY.
    note_form = {"invoice": invoice["id"], "amount": "100", "memo": "m",
                 "metadata[credit_note_number]": "HM-CN-1"}
    status, note, _ = call("POST", "/v1/credit_notes", note_form, idem="k-note")
    expect("credit note created with a cn_ id, issued, all pre-payment",
           status == 200 and note["id"].startswith("cn_") and note["status"] == "issued" and
           note["pre_payment_amount"] == 100 and note["post_payment_amount"] == 0)
    status, again, headers = call("POST", "/v1/credit_notes", note_form, idem="k-note")
    expect("credit note replayed for the same key",
           status == 200 and again["id"] == note["id"] and
           headers.get("Idempotent-Replayed") == "true")
    status, fetched, _ = call("GET", "/v1/invoices/" + invoice["id"])
    expect("credit note lowers amount_due and adds to pre_payment_credit_notes_amount",
           fetched["amount_due"] == 275 and fetched["pre_payment_credit_notes_amount"] == 100
           and fetched["total"] == 375)
    status, body, _ = call("POST", "/v1/credit_notes", dict(note_form, amount="300"))
    expect("credit note above the invoice's amount_remaining without credit_amount is a 400",
           status == 400 and body["error"].get("param") == "amount")
    status, body, _ = call("POST", "/v1/credit_notes", dict(note_form, amount="276",
                                                            credit_amount="1"))
    expect("credit note above the total less earlier credit notes is a 400",
           status == 400 and body["error"].get("code") == "credit_note_amount_too_large")
    status, body, _ = call("POST", "/v1/credit_notes", dict(note_form, reason="goodwill"))
    expect("unknown reason is a 400 on param reason",
           status == 400 and body["error"].get("param") == "reason")
    status, body, _ = call("POST", "/v1/credit_notes", {"invoice": draft["id"], "amount": "1"})
    expect("credit note for a missing invoice is resource_missing on param invoice",
           status == 400 and body["error"].get("code") == "resource_missing" and
           body["error"].get("param") == "invoice")
    status, draft2, _ = call("POST", "/v1/invoices", {"customer": "cus_selftest1"})
    status, body, _ = call("POST", "/v1/credit_notes", {"invoice": draft2["id"], "amount": "1"})
    expect("credit note for a draft invoice is a 400 on param invoice",
           status == 400 and body["error"].get("param") == "invoice")
    status, body, _ = call("POST", "/v1/invoices/%s/void" % invoice["id"], {})
    expect("an invoice with an issued credit note is not voided",
           status == 400 and "credit notes" in body["error"]["message"])
    status, voided, _ = call("POST", "/v1/credit_notes/%s/void" % note["id"], {}, idem="k-nv")
    expect("credit note voided", status == 200 and voided["status"] == "void")
    status, fetched, _ = call("GET", "/v1/invoices/" + invoice["id"])
    expect("voided credit note gives back amount_due",
           fetched["amount_due"] == 375 and fetched["pre_payment_credit_notes_amount"] == 0)
    status, body, _ = call("POST", "/v1/credit_notes/%s/void" % note["id"], {})
    expect("a void credit note cannot be voided again",
           status == 400 and "already been voided" in body["error"]["message"])
    status, body, _ = call("GET", "/v1/credit_notes/cn_missing")
    expect("unknown credit note is a 404 resource_missing",
           status == 404 and body["error"].get("code") == "resource_missing")
    status, paid, _ = call("POST", "/v1/credit_notes", dict(note_form, amount="375"))
    expect("credit note of the whole amount_remaining marks the invoice paid",
           status == 200 and call("GET", "/v1/invoices/" + invoice["id"])[1]["status"] == "paid")
    status, body, _ = call("POST", "/v1/credit_notes/%s/void" % paid["id"], {})
    expect("credit note of a paid invoice cannot be voided", status == 400)
    server.shutdown()
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port-file", metavar="FILE",
                        help="write the port, which the kernel picks on 127.0.0.1, to FILE "
                        "once the server listens (required)")
    parser.add_argument("--api-key-file", metavar="FILE",
                        help="file that contains the one API key that the server accepts, "
                        "for example sk_test_... (required)")
    parser.add_argument("--customers", default="", metavar="LIST",
                        help="comma-separated customer ids that exist, for example "
                        "cus_a,cus_b; an invoice for another customer gets Stripe's 400 "
                        "resource_missing (default: none)")
    parser.add_argument("--tls-cert", metavar="PEM",
                        help="certificate chain: serve HTTPS instead of plain HTTP")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    parser.add_argument("--log", metavar="FILE",
                        help="append every authorized API request as one JSON line "
                        "(method, path, idempotency key, status, object id) to FILE")
    parser.add_argument("--self-test", action="store_true",
                        help="check the server's own behaviour against Stripe's conventions, "
                        "then exit: 0 when every check passed")
    args = parser.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not args.port_file or not args.api_key_file:
        parser.error("--port-file and --api-key-file are required")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together: give both for HTTPS, or neither")
    with open(args.api_key_file, encoding="utf-8") as file:
        api_key = file.read().strip()
    customers = [c for c in args.customers.split(",") if c]
    server = make_server(api_key, customers, args.tls_cert, args.tls_key, args.log)
    temporary = args.port_file + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write("%d\n" % server.server_address[1])
    os.rename(temporary, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
