"""Issue 11, item 4: every approval is bound to the request it answers and every outcome to the session
that asked. A confused vending machine (the simulator's "change", "change_on_approval", "ghost" and
"multi" customers) never makes the unit charge the wrong customer or the wrong price, and loses nothing:
each item that dropped is charged once at its approved price or held for a technician's review.
"""
from __future__ import annotations

import pytest

from vendor_node.devices.board import BoardLink, VendRequest, VendSucceeded
from vendor_node.sim.simulate import SimUnit, journal_summary

from test_board import ScriptedTransport, drain
from test_service import FAST_RETRY, VMC_FAST, MarkerRecognizer, buy, cfg, hand, marker_gallery  # noqa: F401


@pytest.fixture
def unit(cfg):  # noqa: F811 (the cfg fixture comes from test_service)
    cfg = cfg.replace(board={"hand_wait_s": 3.0})  # the change, not the hand wait, must end a selection
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=dict(VMC_FAST, change_after_s=0.05),
                 gallery_factory=marker_gallery, loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service(5.0), unit.loop.faults
        yield unit
    assert unit.error is None


def money_check(unit) -> dict:
    """Wrong charges (a charge for what did not drop, or at another price) and lost charges (an item that
    dropped and is neither charged nor held for review), from the journal and the machine's own record."""
    summary = journal_summary(unit.journal, 0)
    charged = [(e.item, e.amount_cents) for e in unit.journal.entries() if e.kind == "vend_succeeded"]
    review = [(a.item, a.amount_cents) for a in unit.journal.unknown_outcomes()]
    dropped = [(v.item, v.price_cents, v.approved_cents) for v in unit.vmc.vended]
    dropped_at_its_price = [(item, price) for item, price, approved in dropped if approved == price]
    wrong = [c for c in charged if c not in dropped_at_its_price]
    lost = len(dropped) - len(charged) - len(review)
    return {"charged": len(charged), "wrong": len(wrong), "lost": max(0, lost), "review": len(review),
            "dropped": len(dropped), "charged_cents": summary["charged_cents"]}


def test_a_request_that_changes_before_the_hand_is_refused(unit):
    customer = unit.vmc.next_customer((150, "A2"), behaviour="change", order="selection_first")
    assert unit.vmc.wait_until(lambda: customer.changed, 2.0)  # the second request replaced the first
    purchase = unit.next_purchase(5.0)
    assert purchase.outcome == "refused" and purchase.reason == "request_changed"
    assert customer.wait(2.0) == "denied"
    assert money_check(unit) == {"charged": 0, "wrong": 0, "lost": 0, "review": 0, "dropped": 0, "charged_cents": 0}
    assert unit.vmc.protocol_errors == []
    assert buy(unit, 1)[0].outcome == "vended"  # still serving


def test_a_request_changed_across_the_approval_is_never_charged_at_the_old_price(unit):
    purchase, customer = buy(unit, 1, selection=(150, "A2"), behaviour="change_on_approval")
    assert customer.vmc_customer.changed and unit.vmc.wrong_price_vends == 1  # D1 dropped for 1.50 of credit
    assert purchase.outcome == "outcome_unknown" and "changed" in purchase.reason
    check = money_check(unit)
    assert check["wrong"] == 0 and check["lost"] == 0 and check["charged"] == 0 and check["review"] == 1
    assert "C,VEND,-1" in unit.vmc.commands  # the second request was answered, not left waiting
    assert buy(unit, 1)[0].outcome == "vended"


def test_a_late_success_of_a_timed_out_session_never_charges_the_next_customer(unit):
    first, _ = buy(unit, 1, selection=(250, "B1"), behaviour="ghost")  # dropped, success withheld
    assert first.outcome == "outcome_unknown"
    second, customer = buy(unit, 1, selection=(150, "A2"), behaviour="jam")  # gets the stale success, then jams
    assert customer.vmc_customer.outcome == "failed"
    assert second.outcome == "outcome_unknown" and "contradicting" in second.reason
    check = money_check(unit)
    assert check == {"charged": 0, "wrong": 0, "lost": 0, "review": 2, "dropped": 1, "charged_cents": 0}
    third, _ = buy(unit, 1)
    assert third.outcome == "vended" and money_check(unit)["wrong"] == 0


def test_a_second_request_in_the_same_session_is_denied_not_dropped(unit):
    purchase, customer = buy(unit, 1, selection=(150, "A2"), behaviour="multi")
    assert purchase.outcome == "vended" and purchase.charged
    assert customer.vmc_customer.wait(2.0) == "vended"
    commands = list(unit.vmc.commands)
    assert commands[commands.index("C,VEND,1.50") + 1:].count("C,VEND,-1") == 1
    assert money_check(unit) == {"charged": 1, "wrong": 0, "lost": 0, "review": 0, "dropped": 1, "charged_cents": 150}
    assert unit.vmc.protocol_errors == []


# --- the link's side of the binding, line by line ---------------------------------------------
def test_an_approval_for_a_replaced_request_is_not_sent():
    transport = ScriptedTransport(b"c,STATUS,VEND,1.20,A1\r\n")
    link = BoardLink(transport, reply_timeout_s=0.05)
    first = link.poll(0)
    transport.feed(b"c,STATUS,VEND,3.00,D1\r\n")  # arrived, not yet read: the approval must see it
    assert link.approve_vend(120, request=first) is False
    assert transport.written == []
    second = link.poll(0)
    assert second == VendRequest(300, "D1") and second.seq == first.seq + 1
    assert link.approve_vend(300, request=second) is True and transport.written == ["C,VEND,3.00"]
    with pytest.raises(ValueError):
        link.approve_vend(120, request=second)  # an approval is for the request's own price


def test_the_same_price_and_item_again_is_still_another_request():
    transport = ScriptedTransport(b"c,STATUS,VEND,1.20,A1\r\n")
    link = BoardLink(transport, reply_timeout_s=0.05)
    first = link.poll(0)
    transport.feed(b"c,STATUS,VEND,1.20,A1\r\n")
    assert link.approve_vend(120, request=first) is False  # bound to the request, not to equal-looking text


def test_a_success_with_no_approval_open_is_marked_stray():
    link = BoardLink(ScriptedTransport(b"c,STATUS,IDLE,5.00\r\nc,VEND,SUCCESS\r\n"), reply_timeout_s=0.05)
    events = drain(link)
    assert isinstance(events[-1], VendSucceeded) and events[-1].stray
    assert link.state == "session"  # a stray line does not end the session it arrived in


def test_a_request_changed_across_the_approval_with_no_outcome_stays_in_review(unit):
    from vendor_node.sim.simulate import Customer

    unit.vmc._vend_done = lambda *args: None  # the machine goes silent after taking the approval
    customer = Customer(unit, [hand(1)], (150, "A2"), "change_on_approval", "hand_first")
    unit.panel.listeners.append(customer.on_panel)
    customer.present()
    purchase = unit.next_purchase(5.0)  # the machine never finishes: do not wait for it
    unit.panel.listeners.remove(customer.on_panel)
    assert purchase.outcome == "outcome_unknown" and "no outcome" in purchase.reason
    unit.vmc.send_raw(b"c,VEND,SUCCESS\r\n")  # a success with nothing to bind it to: it settles nothing
    assert not unit.vmc.wait_until(lambda: money_check(unit)["charged"], 1.0)
    assert money_check(unit)["review"] == 1 and money_check(unit)["wrong"] == 0
