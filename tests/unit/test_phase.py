"""The phase table itself: the moves it lists, the masks read on the hot path, the hook phases."""

from __future__ import annotations

import itertools

import pytest

from sidecar_proxy.http.phase import (
    ALLOWED,
    AWAITING_HEAD,
    BACKOFF,
    CONNECTING,
    DONE,
    INTERIM,
    NEXT,
    QUEUED,
    REQUEST_HOOK,
    RESPONSE_HOOK,
    STREAMING,
    TUNNEL,
    WAITING_FOR_APP,
    IllegalTransition,
    Phase,
)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Phase, Phase)))
def test_the_masks_say_what_the_table_says(old: Phase, new: Phase) -> None:
    assert bool(ALLOWED[old] >> new & 1) == (new in NEXT[old])


def test_every_live_phase_may_end_and_done_is_final() -> None:
    assert all(DONE in NEXT[p] for p in Phase if p is not DONE)
    assert NEXT[DONE] == frozenset()


def test_the_hook_phases_sit_where_their_hooks_run() -> None:
    # on_request: after the guards, before any attempt; then the attempt goes as it would have.
    assert REQUEST_HOOK in NEXT[QUEUED]
    assert NEXT[REQUEST_HOOK] == frozenset({CONNECTING, AWAITING_HEAD, DONE})
    # on_response: on the final head, before it is committed; no retry from there.
    assert {p for p in Phase if RESPONSE_HOOK in NEXT[p]} == {AWAITING_HEAD}
    assert NEXT[RESPONSE_HOOK] == frozenset({STREAMING, DONE})
    # Nothing else leads into them: a retry does not run on_request again.
    assert {p for p in Phase if REQUEST_HOOK in NEXT[p]} == {QUEUED}
    assert REQUEST_HOOK not in NEXT[BACKOFF] and RESPONSE_HOOK not in NEXT[INTERIM]


def test_the_app_deadline_does_not_run_while_a_hook_does() -> None:
    waiting = {p for p in Phase if WAITING_FOR_APP >> p & 1}
    assert waiting == {CONNECTING, AWAITING_HEAD, INTERIM, BACKOFF}
    assert not waiting & {REQUEST_HOOK, RESPONSE_HOOK, STREAMING, TUNNEL}


def test_an_illegal_move_names_both_phases() -> None:
    error = IllegalTransition(RESPONSE_HOOK, BACKOFF)
    assert str(error) == "illegal exchange transition RESPONSE_HOOK -> BACKOFF"
    assert (error.old, error.new) == (RESPONSE_HOOK, BACKOFF)
