"""The safety refusal of disable_exchange_im and decommission_exchange_im: a reason
stops the step, ``force: true`` turns it into a loud warning, check mode previews it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from runner.errors import PermanentFault
from runner.steps._lcs import refusal_warnings


def _ctx(*, force: bool = False, check: bool = False) -> SimpleNamespace:
    return SimpleNamespace(args={"force": True} if force else {}, check=check)


def test_no_reason_means_no_warning_and_no_refusal() -> None:
    assert refusal_warnings(_ctx(), None, action="disable Exchange IM for alice",
                            forced="disabling Exchange IM for alice") == []


def test_a_reason_refuses_with_a_permanent_fault_that_names_the_override() -> None:
    with pytest.raises(PermanentFault) as err:
        refusal_warnings(_ctx(), "alice is not enabled on LCS (lcs01)",
                         action="disable Exchange IM for alice", forced="disabling Exchange IM for alice")
    assert str(err.value) == ("refusing to disable Exchange IM for alice: alice is not enabled on LCS (lcs01) "
                              "(force: true overrides)")


def test_force_turns_the_refusal_into_a_loud_warning() -> None:
    warnings = refusal_warnings(_ctx(force=True), "2 user(s) still homed on exim01: a, b",
                                action="decommission Exchange IM on exim01", forced="decommissioning")
    assert warnings == ["FORCED: decommissioning although 2 user(s) still homed on exim01: a, b"]


def test_check_mode_warns_that_a_run_would_refuse() -> None:
    warnings = refusal_warnings(_ctx(check=True), "verify_contacts has not passed for alice",
                                action="disable Exchange IM for alice", forced="disabling Exchange IM for alice")
    assert warnings == ["would refuse now: verify_contacts has not passed for alice"]


def test_force_wins_over_check_mode() -> None:
    warnings = refusal_warnings(_ctx(force=True, check=True), "why", action="a", forced="b")
    assert warnings == ["FORCED: b although why"]
