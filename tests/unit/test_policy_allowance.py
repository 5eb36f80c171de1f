"""The allowance that bounds the disk all request-body spools take together."""

from __future__ import annotations

import pytest

from sidecar_proxy.policy.allowance import Allowance


def test_takes_up_to_the_limit_and_refuses_what_would_pass_it() -> None:
    allowance = Allowance(100)
    assert allowance.try_take(60) and allowance.try_take(40)
    assert not allowance.try_take(1)
    assert allowance.in_use == 100
    allowance.give_back(60)
    assert not allowance.try_take(61) and allowance.in_use == 40  # a refusal takes nothing
    assert allowance.try_take(60) and allowance.in_use == 100


def test_zero_is_unlimited() -> None:
    allowance = Allowance(0)
    assert allowance.try_take(1 << 40) and allowance.in_use == 1 << 40


def test_giving_back_more_than_was_taken_is_a_bug() -> None:
    allowance = Allowance(10)
    allowance.try_take(5)
    with pytest.raises(RuntimeError):
        allowance.give_back(6)
    with pytest.raises(ValueError):
        Allowance(-1)
