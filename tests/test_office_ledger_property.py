"""The money invariant under random interleavings (hypothesis): top-ups by hand, purchases at three
units, uploads, lost answers and re-uploads, bundles pulled at any point. Always: each balance equals
top-ups minus charges to the cent, no entry counted twice, and every bundle's funds are the balance."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from test_office_support import FakeUnit, call, fleet_public_key, office, verify_receipt  # noqa: F401

pytest.importorskip("django")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

EMPLOYEES = ("E1", "E2", "E3")
UNITS = 3
step = st.one_of(
    st.tuples(st.just("topup"), st.integers(0, 2), st.integers(1, 5000)),
    st.tuples(st.just("buy"), st.integers(0, UNITS - 1), st.integers(0, 2), st.integers(1, 900), st.booleans()),
    st.tuples(st.just("upload"), st.integers(0, UNITS - 1), st.booleans()),
    st.tuples(st.just("bundle"), st.integers(0, UNITS - 1)),
)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=40))
def test_balance_is_topups_minus_charges_under_any_interleaving(office, steps):
    from django.core.management import call_command
    from django.test import Client
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office import ledger
    from vendor_node.office.models import Charge
    from test_office_support import ingested_entries
    from vendor_node.office.server import ensure_roles
    from vendor_node.office.views import register_unit

    call_command("flush", interactive=False, verbosity=0)
    ensure_roles()
    client, pub = Client(), fleet_public_key(office)
    for e in EMPLOYEES:
        ledger.add_employee("t", e, e)
    root = Path(tempfile.mkdtemp(prefix="prop-"))
    units = [FakeUnit(root / f"u{i}", f"unit-{i}") for i in range(UNITS)]
    for unit in units:
        register_unit("t", unit.unit_id, unit.fingerprint)
    topped = {e: 0 for e in EMPLOYEES}
    charged_at = [{e: 0 for e in EMPLOYEES} for _ in units]  # every charge each unit made
    ingested_upto = [0] * UNITS
    try:
        for op in steps:
            if op[0] == "topup":
                ledger.top_up("t", EMPLOYEES[op[1]], f"{op[2] // 100}.{op[2] % 100:02d}")
                topped[EMPLOYEES[op[1]]] += op[2]
            elif op[0] == "buy":
                _, u, e, cents, vended = op
                units[u].buy(EMPLOYEES[e], cents, succeed=vended)
                charged_at[u][EMPLOYEES[e]] += cents if vended else 0
            elif op[0] == "upload":
                _, u, answer_lost = op
                batch = units[u].batch()
                for _attempt in range(2 if answer_lost else 1):  # a lost answer: the unit sends it again
                    response = call(client, units[u], "POST", "journal", batch)
                    assert response.status_code == 200, response.content
                receipt = verify_receipt(office, response.json())
                assert receipt["last_seq"] == json.loads(batch)["body"]["last_seq"]
                units[u].ack(receipt["last_seq"])
                ingested_upto[u] = receipt["last_seq"]
            else:
                bundle = decode_bundle(call(client, units[op[1]], "GET", "bundle", query="after=0").content, pub)
                assert bundle.journal_position.seq == ingested_upto[op[1]]
                money = ledger.balances()
                assert {e.id: e.funds_cents for e in bundle.employees} == {k: max(0, v) for k, v in money.items()}
            charges = {e: sum(int(c or 0) for c in Charge.objects.filter(employee_id=e)
                              .values_list("charged_cents", flat=True)) for e in EMPLOYEES}
            for e in EMPLOYEES:
                assert ledger.balance_cents(e) == topped[e] - charges[e]
            assert len(ingested_entries()) == sum(ingested_upto)  # each (unit, seq) exactly once
            assert ledger.check_totals() == []  # the running totals agree with the entries
        for u, unit in enumerate(units):  # the nightly sync: everything reaches the office
            response = call(client, unit, "POST", "journal", unit.batch())
            assert response.status_code == 200
        for e in EMPLOYEES:
            assert ledger.balance_cents(e) == topped[e] - sum(c[e] for c in charged_at)
    finally:
        for unit in units:
            unit.close()
