#!/usr/bin/env python3
"""Generate the sample events of the defacto examples.

    python3 examples/generate.py

writes

    examples/quickstart/data/helpdesk.jsonl
    examples/showcase/data/app.jsonl
    examples/showcase/data/billing.jsonl

The output is deterministic (fixed seeds, standard library only): running the script again
produces byte-identical files. The script prints the line numbers of the special events of the
showcase (merges, duplicate, late and malformed events) that its README refers to.
"""

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
UTC = timezone.utc

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(t):
    return int(t.timestamp())


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n")


def daytime(rng, day, first_hour=8, last_hour=19):
    """A random instant during working hours of `day` (a datetime at midnight UTC)."""
    return day.replace(hour=0, minute=0, second=0) + timedelta(
        hours=rng.randint(first_hour, last_hour), minutes=rng.randint(0, 59), seconds=rng.randint(0, 59)
    )


def between(rng, shortest, longest):
    """A random duration between two timedeltas, to the second."""
    return timedelta(seconds=rng.randint(int(shortest.total_seconds()), int(longest.total_seconds())))


def random_day(rng, first, last):
    """A random midnight between two dates (inclusive)."""
    return first + DAY * rng.randint(0, (last - first).days)


# ---------------------------------------------------------------------------------------------
# Quickstart: support tickets of a small helpdesk (one source, one entity)
# ---------------------------------------------------------------------------------------------

QS_START = datetime(2024, 3, 1, tzinfo=UTC)
QS_END = datetime(2024, 4, 30, 18, 0, tzinfo=UTC)  # no event after this instant

AGENTS = ["maria", "kenji", "olu", "sofia", "tomas"]
SUBJECTS = [
    "Cannot log in after password reset",
    "Invoice shows the wrong VAT number",
    "Export to CSV times out",
    "How do I add a teammate?",
    "Webhook deliveries failing with 401",
    "Dark mode request",
    "Charged twice this month",
    "Dashboard is slow to load",
    "SSO setup with Okta",
    "API rate limit questions",
    "Mobile app crashes on launch",
    "Cannot delete an old project",
    "Change billing email",
    "Data import stuck at 90%",
    "Missing notifications",
]


def quickstart_events(rng):
    events = []  # (time, order, record)
    seq = [0]

    def emit(t, name, ticket_id, **fields):
        assert t <= QS_END, (ticket_id, name, t)
        rec = {"event": name, "at": iso(t), "ticket_id": ticket_id}
        rec.update(fields)
        seq[0] += 1
        events.append((t, seq[0], rec))

    # Scenario of each ticket. The list fixes how many tickets follow each path; times are random.
    scenarios = (
        ["standard"] * 22      # reply, a few back-and-forths, solved by an agent
        + ["quick"] * 10       # solved right after the first reply
        + ["auto"] * 8         # the customer never answers: auto-solved after 5 quiet days
        + ["breach"] * 5       # first reply after more than 24 hours
        + ["reopen"] * 6       # the customer writes again after the ticket was solved
        + ["direct"] * 4       # solved without any reply (spam, duplicate)
    )
    rng.shuffle(scenarios)
    scenarios += ["recent"] * 5  # opened in the last days of April, still in progress

    n = len(scenarios)
    for i, scenario in enumerate(scenarios):
        tid = f"T-{1001 + i}"
        if scenario == "recent":
            day = datetime(2024, 4, 26 + (i % 4), tzinfo=UTC)
        else:
            # spread the tickets evenly over March and the first half of April
            day = QS_START + DAY * int(i * 44 / n)
        t = daytime(rng, day)
        priority = rng.choices(["low", "normal", "high", "urgent"], [2, 5, 3, 1])[0]
        opened = {"priority": priority} if rng.random() < 0.8 else {}  # missing -> default "normal"
        emit(t, "ticket_opened", tid, **opened,
             channel=rng.choice(["email", "chat", "web"]),
             subject=rng.choice(SUBJECTS),
             requester=f"user{rng.randint(100, 999)}@customer{rng.randint(1, 40)}.example")
        agent = rng.choice(AGENTS)

        # a real priority change, or the same priority sent again (ignored by the guard)
        if i % 7 == 3:
            t += between(rng, 1 * HOUR, 3 * HOUR)
            emit(t, "priority_changed", tid, priority="urgent" if priority != "urgent" else "high")
        elif i % 17 == 5:
            t += between(rng, 10 * MINUTE, 50 * MINUTE)
            emit(t, "priority_changed", tid, priority=opened.get("priority", "normal"))

        if scenario == "direct":
            t += between(rng, 1 * HOUR, 6 * HOUR)
            emit(t, "ticket_solved", tid, agent=agent)
            continue

        # first response
        if scenario == "breach":
            t += between(rng, 26 * HOUR, 40 * HOUR)
        elif scenario == "recent":
            t += between(rng, 1 * HOUR, 5 * HOUR)
        else:
            t += between(rng, 15 * MINUTE, 480 * MINUTE)
        emit(t, "agent_replied", tid, agent=agent)

        if scenario == "recent":
            if i % 2 == 0 and t + DAY < QS_END:
                t += between(rng, 2 * HOUR, 20 * HOUR)
                emit(t, "customer_replied", tid)
            continue
        if scenario == "auto":
            continue  # the inactivity rule solves it 5 days later

        rounds = {"quick": 0, "standard": rng.randint(1, 2), "breach": rng.randint(0, 1),
                  "reopen": rng.randint(0, 1)}[scenario]
        for r in range(rounds):
            t += between(rng, 2 * HOUR, 60 * HOUR)      # the customer answers, well within 5 days
            emit(t, "customer_replied", tid)
            if r == rounds - 1 and i % 3 == 0:
                break  # "thanks, that fixed it": the agent solves it without another reply
            t += between(rng, 20 * MINUTE, 600 * MINUTE)
            emit(t, "agent_replied", tid, agent=agent)
        t += between(rng, 1 * HOUR, 30 * HOUR)
        emit(t, "ticket_solved", tid, agent=agent)

        if scenario == "reopen":
            t += between(rng, 4 * HOUR, 60 * HOUR)      # before the ticket closes (3 days)
            emit(t, "customer_replied", tid)
            t += between(rng, 30 * MINUTE, 300 * MINUTE)
            emit(t, "agent_replied", tid, agent=agent)
            t += between(rng, 2 * HOUR, 24 * HOUR)
            emit(t, "ticket_solved", tid, agent=agent)

        # satisfaction survey: answered while solved, or after the ticket closed
        r = rng.random()
        if r < 0.45:
            t += between(rng, 1 * HOUR, 40 * HOUR)
            emit(t, "satisfaction_rated", tid, score=rng.choices([5, 4, 3, 2, 1], [6, 4, 2, 1, 1])[0])
            if i % 9 == 1:  # a second answer: ignored by the guard
                t += between(rng, 1 * HOUR, 20 * HOUR)
                emit(t, "satisfaction_rated", tid, score=rng.randint(1, 5))
        elif r < 0.65:
            t += between(rng, 80 * HOUR, 140 * HOUR)
            emit(t, "satisfaction_rated", tid, score=rng.choices([5, 4, 3, 2, 1], [6, 4, 2, 1, 1])[0])

    events.sort(key=lambda e: (e[0], e[1]))
    # ticket numbers in the order the tickets were opened
    numbers = {}
    for _, _, rec in events:
        rec["ticket_id"] = numbers.setdefault(rec["ticket_id"], f"T-{1001 + len(numbers)}")
    return [e[2] for e in events]


# ---------------------------------------------------------------------------------------------
# Showcase: a B2B SaaS product (sources `app` and `billing`; customer, subscription, order)
# ---------------------------------------------------------------------------------------------

SC_START = datetime(2024, 1, 2, tzinfo=UTC)
SC_END = datetime(2024, 4, 30, 20, 0, tzinfo=UTC)  # no event after this instant

FIRST = ["Ava", "Liam", "Priya", "Mateo", "Zoe", "Noah", "Amara", "Lucas", "Hana", "Omar",
         "Ingrid", "Diego", "Mei", "Tariq", "Elena", "Jonas", "Chloe", "Ravi", "Nadia", "Felix",
         "Sana", "Hugo", "Leila", "Marco", "Aisha", "Erik", "Yuki", "Pablo", "Greta", "Idris",
         "Clara", "Kofi", "Lena", "Arjun", "Maya", "Tobias", "Nora", "Samir", "Freya", "Dmitri",
         "Alba", "Kwame", "Iris", "Rafael", "Selin", "Owen", "Lucia", "Henrik", "Talia", "Bruno",
         "Esme", "Viktor"]
LAST = ["Chen", "Okafor", "Nair", "Rossi", "Muller", "Haddad", "Silva", "Kowalski", "Tanaka",
        "Diaz", "Larsen", "Novak", "Ahmed", "Fischer", "Moreau", "Singh", "Costa", "Ivanova",
        "Brennan", "Yilmaz", "Kim", "Dubois", "Mensah", "Sato", "Lopez", "Berg", "Petrov", "Khan",
        "Weber", "Alves", "Jensen", "Farah", "Romano", "Lindqvist", "Osei", "Park", "Varga",
        "Ortiz", "Hughes", "Bakker", "Ferreira", "Nakamura", "Keller", "Abebe", "Quinn", "Sousa",
        "Horvath", "Ali", "Meyer", "Andersen", "Reyes", "Wolf"]
COMPANIES = ["Lumen", "Copperline", "Northwind", "Bluefjord", "Quillsoft", "Harbor Labs",
             "Tessellate", "Brightpath", "Kiln & Co", "Orbital Foods", "Meridian Health",
             "Foxglove", "Saltmarsh", "Redwood Analytics", "Pinecrest", "Tidewater", "Ironbark",
             "Lattice Works", "Nimbus Retail", "Cobalt Freight", "Amberly", "Greenhouse Media",
             "Stillwater", "Vantage Point", "Juniper Legal", "Quarry", "Hollow Oak", "Signal Nine",
             "Marigold", "Sparrow Travel", "Keystone Build", "Driftwood", "Obsidian", "Papercraft",
             "Wavelength", "Beacon Hill", "Cinder", "Evergreen Ed", "Fathom", "Goldleaf",
             "Halcyon", "Inkwell", "Jetstream", "Kestrel", "Larkspur", "Moonrise", "Nettle",
             "Oakhurst", "Prism", "Quasar", "Rook", "Sable"]

PLANS = {"starter": 12, "growth": 25, "scale": 40}   # price per seat and month
LEAD_CHANNELS = ["organic", "ads", "referral", "partner", "events"]
SIGNUP_CHANNELS = ["organic", "ads", "referral", "direct"]
CANCEL_REASONS = ["too_expensive", "missing_features", "switched_service", "unused"]
SKUS = {  # sku -> unit price in cents
    "onboarding-standard": 49900,
    "onboarding-premium": 149900,
    "training-remote": 60000,
    "training-onsite": 240000,
    "storage-100gb": 12000,
    "support-priority": 90000,
}


def slug(company):
    return "".join(ch for ch in company.lower() if ch.isalnum())


class Showcase:
    def __init__(self, rng):
        self.rng = rng
        self.app = []      # [time, seq, record, tag]
        self.bill = []
        self.seq = 0
        self.next_user = 1001
        self.next_sub = 2001
        self.next_order = 3001
        self.next_invoice = 5001

    # -- emitting -----------------------------------------------------------------------------

    def _push(self, stream, t, record, tag):
        assert SC_START <= t <= SC_END, (record, t)
        self.seq += 1
        stream.append([t, self.seq, record, tag])

    def app_event(self, t, name, user_id=None, traits=None, context=None, tag=None):
        rec = {"event": name, "occurred_at": iso(t), "message_id": None}
        if user_id is not None:
            rec["userId"] = user_id
        if traits:
            rec["traits"] = traits
        if context:
            rec["context"] = context
        self._push(self.app, t, rec, tag)

    def bill_event(self, t, type_, tag=None, **body):
        rec = {"id": None, "type": type_, "created": epoch(t)}
        rec.update(body)
        self._push(self.bill, t, rec, tag)

    # -- building blocks ----------------------------------------------------------------------

    def logins(self, c, start, end, min_gap, max_gap, first_gap=None):
        """Logins of customer `c` between `start` and `end` (exclusive) with random gaps."""
        rng = self.rng
        t = start + (first_gap if first_gap is not None else HOUR * rng.randint(2, 30))
        t += timedelta(seconds=rng.randint(0, 1800))
        last = None
        while t < end and t <= SC_END:
            self.app_event(t, "logged_in", c["uid"], context={"device": c["device"]})
            last = t
            t += HOUR * rng.randint(int(min_gap / HOUR), int(max_gap / HOUR))
            t += timedelta(seconds=rng.randint(-1800, 1800))
        return last

    def subscription(self, c, t, plan=None, seats=None, tag="sub_created"):
        rng = self.rng
        sub = {"id": f"sub_{self.next_sub}", "plan": plan or rng.choice(["starter", "growth", "growth", "scale"]),
               "seats": seats or rng.randint(2, 30)}
        self.next_sub += 1
        c.setdefault("subs", []).append(sub)
        self.bill_event(t, "customer.subscription.created", tag=tag,
                        customer={"email": c["email"], "name": c["name"]},
                        subscription={"id": sub["id"], "plan": sub["plan"], "quantity": str(sub["seats"]),
                                      "interval": "month"},
                        mrr_cents=self.mrr_cents(sub))
        return sub

    @staticmethod
    def mrr_cents(sub):
        return PLANS[sub["plan"]] * sub["seats"] * 100

    def sub_update(self, c, sub, t, plan=None, seats=None, tag="sub_updated"):
        if plan:
            sub["plan"] = plan
        if seats:
            sub["seats"] = seats
        self.bill_event(t, "customer.subscription.updated", tag=tag,
                        customer={"email": c["email"]},
                        subscription={"id": sub["id"], "plan": sub["plan"], "quantity": str(sub["seats"]),
                                      "interval": "month"},
                        mrr_cents=self.mrr_cents(sub))

    def invoice(self, sub, t, paid, attempt=1, invoice_id=None):
        if invoice_id is None:
            invoice_id = f"in_{self.next_invoice}"
            self.next_invoice += 1
        if paid:
            self.bill_event(t, "invoice.paid", tag="invoice_paid",
                            invoice={"id": invoice_id, "subscription": sub["id"], "attempt_count": attempt},
                            amount_paid=self.mrr_cents(sub))
        else:
            self.bill_event(t, "invoice.payment_failed", tag="invoice_failed",
                            invoice={"id": invoice_id, "subscription": sub["id"], "attempt_count": attempt},
                            amount_due=self.mrr_cents(sub),
                            failure={"code": self.rng.choice(["card_declined", "expired_card", "insufficient_funds"])})
        return invoice_id

    def renewals(self, sub, start, until, failing=None):
        """Monthly renewal invoices after `start`, before `until`.

        failing: None, "recover" (one failure, paid on retry), "recover2" (two failures, then
        paid), "dunning" (two failures, never paid: the subscription's 14-day rule cancels it) or
        "cancel" (one failure, then the customer cancels). Returns the time of the first failure
        for "dunning" and "cancel".
        """
        rng = self.rng
        k = 1
        t = start + 30 * DAY + MINUTE * rng.randint(1, 20)
        while t < until and t <= SC_END:
            if failing and k == 2:
                inv = self.invoice(sub, t, paid=False, attempt=1)
                if failing == "cancel":
                    return t
                if failing == "dunning":
                    self.invoice(sub, t + 3 * DAY, paid=False, attempt=2, invoice_id=inv)
                    return t
                if failing == "recover2":
                    self.invoice(sub, t + 3 * DAY, paid=False, attempt=2, invoice_id=inv)
                    self.invoice(sub, t + 6 * DAY + HOUR * rng.randint(1, 8), paid=True, attempt=3, invoice_id=inv)
                else:
                    self.invoice(sub, t + 3 * DAY + HOUR * rng.randint(1, 8), paid=True, attempt=2, invoice_id=inv)
            else:
                self.invoice(sub, t, paid=True)
            k += 1
            t += 30 * DAY + MINUTE * rng.randint(-20, 20)
        return None

    def cancel(self, c, sub, t, reason):
        body = {"customer": {"email": c["email"]}, "subscription": {"id": sub["id"]}}
        if reason:
            body["cancellation"] = {"reason": reason}
        self.bill_event(t, "customer.subscription.deleted", tag="sub_cancelled", **body)

    def order(self, c, t, flow="normal"):
        rng = self.rng
        oid = f"ord_{self.next_order}"
        self.next_order += 1
        sku = rng.choice(list(SKUS))
        qty = rng.randint(1, 4) if sku in ("training-remote", "storage-100gb") else 1
        items = [{"sku": sku, "quantity": qty, "unit_amount": SKUS[sku]}]
        if rng.random() < 0.25:
            extra = rng.choice([s for s in SKUS if s != sku])
            items.append({"sku": extra, "quantity": 1, "unit_amount": SKUS[extra]})
        total = sum(i["quantity"] * i["unit_amount"] for i in items)
        self.bill_event(t, "order.created", tag="order_created",
                        order={"id": oid, "currency": "usd"},
                        customer={"email": c["email"]},
                        items=items, amount_total=total)
        method = rng.choice(["card", "card", "card", "invoice", "sepa_debit"])
        if flow == "unpaid":
            return oid                                   # cancelled by the 7-day expiration rule
        if flow == "late_pay":
            paid = t + 9 * DAY + HOUR * rng.randint(1, 6)  # after the order expired
        elif method == "card":
            paid = t + MINUTE * rng.randint(1, 30)
        else:
            paid = t + HOUR * rng.randint(20, 70)
        self.bill_event(paid, "order.paid", tag="order_paid", order={"id": oid},
                        payment={"method": method, "amount": total})
        if flow == "refund_paid":                        # refunded before fulfilment
            self.bill_event(paid + DAY + HOUR * rng.randint(0, 10), "order.refunded", tag="order_refunded",
                            order={"id": oid}, amount_refunded=total,
                            refund={"reason": "requested_by_customer"})
            return oid
        done = paid + HOUR * rng.randint(20, 90)
        self.bill_event(done, "order.fulfilled", tag="order_fulfilled", order={"id": oid},
                        fulfillment={"channel": "email" if sku.startswith(("onboarding", "support")) else "manual"})
        if flow == "refund_twice":                       # two partial refunds after fulfilment
            first = total // 4
            self.bill_event(done + 3 * DAY, "order.refunded", tag="order_refunded",
                            order={"id": oid}, amount_refunded=first, refund={"reason": "service_issue"})
            self.bill_event(done + 6 * DAY + HOUR * 3, "order.refunded", tag="order_refunded",
                            order={"id": oid}, amount_refunded=first, refund={"reason": "service_issue"})
        return oid

    def profile(self, c, t, email=None, with_company=True, tag="profile"):
        traits = {}
        if email is not None:
            traits["email"] = email
        if with_company:
            traits["company"] = c["company"]
        self.app_event(t, "profile_updated", c["uid"], traits=traits, tag=tag)

    def signup(self, c, t, with_email=True, channel=None):
        c["uid"] = self.next_user
        self.next_user += 1
        traits = {"email": c["signup_email"]} if with_email else None
        context = {"device": c["device"]}
        if channel:
            context["channel"] = channel
        self.app_event(t, "signed_up", c["uid"], traits=traits, context=context,
                       tag="signup" if with_email else "signup_no_email")

    def lead(self, c, t, channel):
        self.app_event(t, "lead_captured", traits={"email": c["email"]},
                       context={"channel": channel, "page": self.rng.choice(["/pricing", "/demo", "/blog", "/"])},
                       tag="lead")

    # -- customers ----------------------------------------------------------------------------

    def customers(self):
        rng = self.rng
        firsts, lasts, companies = FIRST[:], LAST[:], COMPANIES[:]
        rng.shuffle(firsts)
        rng.shuffle(lasts)
        specs = (
            [("lost_lead", {})] * 5
            + [("open_lead", {})] * 2
            + [("lost_then_signup", {})]
            + [("merge", {"fast": True}), ("merge", {"fast": False})]
            + [("sales", {"order": False}), ("sales", {"order": True})]
        )
        # self-serve customers: (trial outcome, features)
        selfserve = [
            ("convert", {"upgrade", "order_refund_twice", "profile"}),
            ("convert", {"upgrade", "noop"}),
            ("convert", {"upgrade", "profile"}),
            ("convert", {"seats", "order"}),
            ("convert", {"seats", "noop", "order_unpaid"}),
            ("convert", {"noop", "order_late_pay"}),
            ("convert", {"fail_recover", "order"}),
            ("convert", {"fail_recover2", "profile"}),
            ("convert", {"dunning"}),
            ("convert", {"dunning", "order"}),
            ("convert", {"cancel", "order_refund_paid"}),
            ("convert", {"fail_cancel"}),
            ("convert", {"cancel", "profile"}),
            ("convert", {"reactivate"}),
            ("convert", {"winback"}),
            ("convert", {"quiet"}),
            ("convert", {"quiet"}),
            ("convert", {"quiet_return", "order"}),
            ("convert", {"quiet_return"}),
            ("convert", {"cancel_at_risk"}),
            ("convert", {"upgrade", "order", "order2"}),
            ("convert", {"order", "profile"}),
            ("convert", {"order"}),
            ("convert", {"profile"}),
            ("convert", set()),
            ("convert", set()),
            ("convert", set()),
            ("convert", {"late_login"}),
            ("expire_convert", {"upgrade"}),
            ("expire_convert", {"order"}),
            ("expire_convert", {"profile"}),
            ("expire_convert", set()),
            ("expire", set()),
            ("expire", {"login_after_expiry"}),
            ("expire", set()),
            ("expire", set()),
            ("expire", set()),
            ("trialing", set()),
            ("trialing", set()),
            ("trialing", {"order"}),
        ]
        specs += [("self", {"outcome": o, "features": f}) for o, f in selfserve]

        result = []
        for i, (kind, params) in enumerate(specs):
            first, last, company = firsts[i], lasts[i], companies[i]
            domain = slug(company) + ".example"
            email = f"{first.lower()}.{last.lower()}@{domain}"
            c = {"index": i, "kind": kind, "params": params, "name": f"{first} {last}", "company": company,
                 "email": email, "device": rng.choice(["web", "web", "web", "ios", "android"])}
            # the app sometimes keeps the capitalisation the user typed
            c["signup_email"] = (f"{first}.{last}@{domain}" if rng.random() < 0.3 else email)
            result.append(c)
        return result

    def run(self):
        rng = self.rng
        for c in self.customers():
            kind, p = c["kind"], c["params"]
            if kind == "lost_lead":                      # never signs up: lost after 45 days
                self.lead(c, daytime(rng, random_day(rng, datetime(2024, 1, 3, tzinfo=UTC),
                                                     datetime(2024, 3, 10, tzinfo=UTC))),
                          rng.choice(LEAD_CHANNELS))
            elif kind == "open_lead":                    # captured recently, still a lead
                self.lead(c, daytime(rng, random_day(rng, datetime(2024, 4, 5, tzinfo=UTC),
                                                     datetime(2024, 4, 25, tzinfo=UTC))),
                          rng.choice(LEAD_CHANNELS))
            elif kind == "lost_then_signup":
                self.lead(c, daytime(rng, datetime(2024, 1, 4, tzinfo=UTC)), "events")
                t = daytime(rng, datetime(2024, 3, 12, tzinfo=UTC))
                self.signup(c, t, channel="direct")
                self.trial_then_active(c, t, conversion_day=6, features=set())
            elif kind == "merge":
                self.merge_customer(c, fast=p["fast"])
            elif kind == "sales":
                self.sales_led(c, with_order=p["order"])
            else:
                self.self_serve(c, p["outcome"], p["features"])

    def self_serve(self, c, outcome, features):
        rng = self.rng
        early = features - {"order", "profile"}  # features that need a few months to play out
        if outcome == "trialing":
            day = random_day(rng, datetime(2024, 4, 18, tzinfo=UTC), datetime(2024, 4, 26, tzinfo=UTC))
        elif outcome == "expire":
            day = random_day(rng, datetime(2024, 1, 5, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
        elif outcome == "expire_convert":
            day = random_day(rng, datetime(2024, 1, 8, tzinfo=UTC), datetime(2024, 2, 28, tzinfo=UTC))
        elif early:
            day = random_day(rng, datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC))
        else:
            day = random_day(rng, datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 3, 10, tzinfo=UTC))
        signup_t = daytime(rng, day)

        lead_days = min(rng.randint(2, 20), (signup_t - SC_START).days)
        if c["index"] % 3 == 0 and lead_days >= 1:      # filled in a website form first
            self.lead(c, daytime(rng, day - DAY * lead_days), rng.choice(LEAD_CHANNELS))
        channel = rng.choice(SIGNUP_CHANNELS) if rng.random() < 0.8 else None   # missing -> "direct"
        self.signup(c, signup_t, channel=channel)

        if outcome == "trialing":
            self.logins(c, signup_t, SC_END, 30 * HOUR, 120 * HOUR)
            if "order" in features:
                self.order(c, signup_t + DAY + HOUR * 3)
            return
        if outcome == "expire":                            # 14 days of trial, then nothing
            self.logins(c, signup_t, signup_t + 12 * DAY, 36 * HOUR, 150 * HOUR)
            if "login_after_expiry" in features:
                self.app_event(signup_t + 20 * DAY + HOUR * 5, "logged_in", c["uid"],
                               context={"device": c["device"]})
            return
        conversion_day = rng.randint(17, 30) if outcome == "expire_convert" else rng.randint(2, 12)
        self.trial_then_active(c, signup_t, conversion_day, features)

    def trial_then_active(self, c, signup_t, conversion_day, features):
        rng = self.rng
        trial_end = min(signup_t + 12 * DAY, signup_t + DAY * conversion_day)
        self.logins(c, signup_t, trial_end, 40 * HOUR, 150 * HOUR)
        start = daytime(rng, signup_t + DAY * conversion_day)
        sub = self.subscription(c, start)

        # when the customer stops (cancellation) and how they use the product until then
        stop = SC_END
        if features & {"cancel", "reactivate", "winback"}:
            stop = start + DAY * rng.randint(45, 65)
        if "profile" in features:
            self.profile(c, start + DAY * rng.randint(3, 20), email=c["email"] if rng.random() < 0.5 else None)

        if "quiet" in features or "quiet_return" in features or "cancel_at_risk" in features:
            quiet_from = max(start + 5 * DAY, datetime(2024, 2, 20, tzinfo=UTC) + DAY * rng.randint(0, 20))
            last = self.logins(c, start, quiet_from, 5 * DAY, 12 * DAY, first_gap=HOUR * 5)
            if "quiet_return" in features:
                back = last + DAY * rng.randint(35, 45)
                self.logins(c, back, SC_END, 6 * DAY, 18 * DAY, first_gap=timedelta(0))
            if "cancel_at_risk" in features:
                stop = last + DAY * rng.randint(33, 40)
                self.cancel(c, sub, stop, "unused")
            if "order" in features:
                self.order(c, start + DAY * 2 + HOUR * 2)
            self.renewals(sub, start, stop)
            return

        failing = next((mode for feature, mode in (("dunning", "dunning"), ("fail_recover2", "recover2"),
                                                   ("fail_recover", "recover"), ("fail_cancel", "cancel"))
                        if feature in features), None)
        dunning_start = self.renewals(sub, start, stop, failing)
        if dunning_start is not None and failing == "dunning":
            # the 14-day rule cancels the subscription; billing's own webhook follows a day later
            stop = dunning_start + 15 * DAY + HOUR * 2
            self.cancel(c, sub, stop, "payment_failed")
        elif dunning_start is not None:
            # payment failed, and instead of updating the card the customer cancels
            stop = dunning_start + 5 * DAY + HOUR * 3
            self.cancel(c, sub, stop, "too_expensive")

        self.logins(c, start, stop, 8 * DAY, 25 * DAY)
        if "late_login" in features:                        # sent by a phone that was offline
            self.app_event(datetime(2024, 3, 14, 21, 7, 41, tzinfo=UTC), "logged_in", c["uid"],
                           context={"device": "ios"}, tag="late_login")

        # plan and seat changes
        if "upgrade" in features:
            nxt = {"starter": "growth", "growth": "scale", "scale": "growth"}[sub["plan"]]  # up, or down
            self.sub_update(c, sub, start + DAY * rng.randint(8, 25), plan=nxt)
        if "seats" in features:
            self.sub_update(c, sub, start + DAY * rng.randint(8, 25), seats=sub["seats"] + rng.randint(2, 6))
        if "noop" in features:   # billing re-sends the subscription unchanged (e.g. new tax id)
            self.sub_update(c, sub, start + DAY * rng.randint(27, 35) + HOUR * 7, tag="sub_noop")

        # orders
        order_flows = {"order_refund_twice": "refund_twice", "order_unpaid": "unpaid",
                       "order_late_pay": "late_pay", "order_refund_paid": "refund_paid", "order": "normal"}
        for feature, flow in order_flows.items():
            if feature in features:
                self.order(c, start + DAY * rng.randint(3, 15) + HOUR * rng.randint(0, 8), flow)
        if "order2" in features:
            self.order(c, start + DAY * rng.randint(30, 45))

        # voluntary cancellation and what follows
        if stop < SC_END and dunning_start is None:
            self.cancel(c, sub, stop, rng.choice(CANCEL_REASONS) if "winback" not in features else None)
            if "reactivate" in features:
                back = stop + DAY * rng.randint(5, 9)
                self.bill_event(back, "customer.subscription.resumed", tag="sub_resumed",
                                customer={"email": c["email"]},
                                subscription={"id": sub["id"], "plan": sub["plan"], "quantity": str(sub["seats"])},
                                mrr_cents=self.mrr_cents(sub))
                self.logins(c, back, SC_END, 6 * DAY, 18 * DAY)
                self.renewals(sub, back - 30 * DAY + HOUR, SC_END)
            if "winback" in features:
                back = daytime(rng, stop + DAY * rng.randint(20, 30))
                new = self.subscription(c, back, plan="starter", seats=max(2, sub["seats"] // 2))
                self.logins(c, back, SC_END, 6 * DAY, 18 * DAY)
                self.renewals(new, back, SC_END)

    def merge_customer(self, c, fast):
        """Signs up on mobile without an email, pays through billing with the email, and only
        later tells the app its email: two customer records until then, merged by that event."""
        rng = self.rng
        c["device"] = "ios"
        signup_t = daytime(rng, datetime(2024, 1, 15, tzinfo=UTC) if fast else datetime(2024, 2, 5, tzinfo=UTC))
        self.signup(c, signup_t, with_email=False, channel="organic")
        pay_day = 4 if fast else 18
        self.logins(c, signup_t, signup_t + DAY * (pay_day - 1), 30 * HOUR, 100 * HOUR)
        start = daytime(rng, signup_t + DAY * pay_day)
        sub = self.subscription(c, start, plan="growth", seats=rng.randint(5, 15), tag="merge_billing")
        link = start + DAY * (5 if fast else 6) + HOUR * 2
        # typed on a phone: capitals and a stray space; the identity normalize takes care of it
        first, rest = c["email"].split(".", 1)
        typed = f" {first.capitalize()}.{rest.split('@')[0].capitalize()}@{c['email'].split('@')[1]}"
        self.profile(c, link, email=typed, tag="merge_link")
        self.logins(c, link, SC_END, 5 * DAY, 15 * DAY, first_gap=HOUR * 20)
        self.renewals(sub, start, SC_END)
        if fast:
            self.order(c, link + DAY * 9)

    def sales_led(self, c, with_order):
        """Bought through the sales team: billing only, never uses the app."""
        rng = self.rng
        start = daytime(rng, datetime(2024, 1, 10, tzinfo=UTC) if with_order else datetime(2024, 2, 14, tzinfo=UTC))
        sub = self.subscription(c, start, plan="scale", seats=rng.randint(20, 40))
        self.renewals(sub, start, SC_END)
        if with_order:
            self.order(c, start + DAY * 2, "normal")

    # -- special records ----------------------------------------------------------------------

    def finish(self):
        """Sorts the streams, assigns message and webhook ids and adds the special records."""
        app = sorted(self.app, key=lambda e: (e[0], e[1]))
        bill = sorted(self.bill, key=lambda e: (e[0], e[1]))

        # number users, subscriptions, orders and invoices in order of first appearance
        def renumber(stream, paths):
            maps = {prefix: {} for _, _, prefix, _ in paths}
            for e in stream:
                for outer, inner, prefix, first in paths:
                    holder = e[2].get(outer) if inner else e[2]
                    key = inner or outer
                    if isinstance(holder, dict) and key in holder:
                        m = maps[prefix]
                        old = holder[key]
                        if old not in m:
                            m[old] = first + len(m) if prefix == "" else f"{prefix}{first + len(m)}"
                        holder[key] = m[old]

        renumber(app, [("userId", None, "", 1001)])
        renumber(bill, [("subscription", "id", "sub_", 2001), ("invoice", "subscription", "sub_", 2001),
                        ("order", "id", "ord_", 3001), ("invoice", "id", "in_", 5001)])

        # malformed: an old SDK that sends `timestamp` instead of `occurred_at`
        bad_t = datetime(2024, 2, 21, 16, 2, 9, tzinfo=UTC)
        signed_up = {e[2]["userId"] for e in app if e[3] == "signup"}
        some_user = next(e[2]["userId"] for e in app
                         if e[2]["event"] == "logged_in" and e[0] > bad_t and e[2]["userId"] in signed_up)
        bad_app = {"event": "logged_in", "timestamp": iso(bad_t), "message_id": None, "userId": some_user,
                   "context": {"device": "android", "sdk": "1.4.0"}}
        app.insert(next(i for i, e in enumerate(app) if e[0] > bad_t), [bad_t, 0, bad_app, "malformed"])

        # malformed: a webhook type the billing source does not define
        bad_t = datetime(2024, 3, 27, 11, 40, 0, tzinfo=UTC)
        bad_bill = {"id": None, "type": "charge.dispute.created", "created": epoch(bad_t),
                    "charge": {"id": "ch_90210", "amount": 49900}, "dispute": {"reason": "fraudulent"}}
        bill.insert(next(i for i, e in enumerate(bill) if e[0] > bad_t), [bad_t, 0, bad_bill, "malformed"])

        for n, e in enumerate(app, 1):
            e[2]["message_id"] = f"msg_{n:06d}"
        for n, e in enumerate(bill, 1):
            e[2]["id"] = f"evt_{n:05d}"

        # late: the offline phone's login is delivered three weeks after it happened
        late = next(e for e in app if e[3] == "late_login")
        app.remove(late)
        app.insert(next(i for i, e in enumerate(app) if e[0] > late[0] + 21 * DAY), late)

        # duplicate: billing redelivers an invoice.paid webhook unchanged (it keeps its `created`)
        dup_of = next(e for e in bill if e[3] == "invoice_paid" and e[0] > datetime(2024, 3, 18, tzinfo=UTC))
        bill.insert(bill.index(dup_of) + 1, [dup_of[0], 0, json.loads(json.dumps(dup_of[2])), "duplicate"])
        return app, bill


def showcase_events(rng):
    s = Showcase(rng)
    s.run()
    return s.finish()


def main():
    qs = quickstart_events(random.Random(7))
    write_jsonl(HERE / "quickstart" / "data" / "helpdesk.jsonl", qs)

    app, bill = showcase_events(random.Random(2024))
    write_jsonl(HERE / "showcase" / "data" / "app.jsonl", [e[2] for e in app])
    write_jsonl(HERE / "showcase" / "data" / "billing.jsonl", [e[2] for e in bill])

    print(f"quickstart/data/helpdesk.jsonl  {len(qs)} events")
    print(f"showcase/data/app.jsonl         {len(app)} events")
    print(f"showcase/data/billing.jsonl     {len(bill)} events")
    for name, stream in (("app.jsonl", app), ("billing.jsonl", bill)):
        for line, e in enumerate(stream, 1):
            if e[3] in ("malformed", "late_login", "duplicate", "merge_link", "signup_no_email", "merge_billing"):
                print(f"  {name}:{line}  {e[3]:<16} {json.dumps(e[2])[:110]}")
        if name == "billing.jsonl":
            dup = next(e for e in stream if e[3] == "duplicate")
            orig = next(n for n, e in enumerate(stream, 1) if e[2] == dup[2] and e[3] != "duplicate")
            print(f"  billing.jsonl:{orig}  (original of the duplicate)")


if __name__ == "__main__":
    main()
