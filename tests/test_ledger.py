"""The ledger's rules and files, without a broker: what the coordinator does next, and how
workers claim and beat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rowstream import ConfigurationError
from rowstream._ledger import Fail, Ledger, PartView, Rules, Send, decide

RULES = Rules(lease=10.0, max_attempts=3, unclaimed=60.0)


def test_new_partitions_are_sent_once() -> None:
    parts = [PartView("p0"), PartView("p1", attempt=1, sent_at=0.0)]
    assert decide(1.0, parts, RULES) == [Send("p0", 1)]


def test_a_beating_partition_is_left_alone_and_a_silent_one_is_sent_again() -> None:
    beating = PartView("p0", attempt=1, sent_at=0.0, beat=3, beat_seen_at=95.0)
    silent = PartView("p1", attempt=1, sent_at=0.0, beat=2, beat_seen_at=89.0)
    assert decide(100.0, [beating, silent], RULES) == [Send("p1", 2)]


def test_a_partition_lost_too_often_fails_the_job_naming_it() -> None:
    lost = PartView("p7", attempt=3, sent_at=0.0, beat=1, beat_seen_at=50.0)
    [action] = decide(100.0, [lost], RULES)
    assert isinstance(action, Fail) and action.part == "p7"
    assert "gave up after 3 attempts" in action.why


def test_an_unclaimed_partition_waits_its_turn_while_others_are_worked_on() -> None:
    waiting = PartView("p1", attempt=1, sent_at=0.0)
    working = PartView("p0", attempt=1, sent_at=0.0, beat=9, beat_seen_at=99.0)
    assert decide(100.0, [working, waiting], RULES) == []
    # Nobody works any more and it was never claimed: its message was lost with a worker.
    idle = PartView("p0", done=True)
    assert decide(100.0, [idle, waiting], RULES) == [Send("p1", 2)]


def test_a_failed_attempt_fails_the_job_with_its_error() -> None:
    failed = PartView("p2", attempt=1, sent_at=0.0, failure="ValueError: no customer")
    assert decide(1.0, [failed], RULES) == [Fail("p2", "attempt 1 failed: ValueError: no customer")]


def test_one_claim_per_attempt_and_none_once_done(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, lease=1.2)
    ledger.create({"kind": "test", "partitions": {}}, resume=False)
    claim = ledger.claim("p0", 1)
    assert claim is not None
    assert ledger.claim("p0", 1) is None  # a redelivery of the same attempt
    second = ledger.claim("p0", 2)  # the coordinator's next attempt may run
    assert second is not None
    second.release()
    claim.done({"rows": 5})
    assert ledger.claim("p0", 3) is None
    assert ledger.result("p0") == {
        "rows": 5,
        "attempt": 1,
        "finished": pytest.approx(time.time(), abs=60),
    }


def test_the_coordinator_sees_beats_on_its_own_clock(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, lease=0.6)
    ledger.create({"kind": "test", "partitions": {}}, resume=False)
    ledger.sent("p0", 1)
    claim = ledger.claim("p0", 1)
    assert claim is not None
    try:
        first = ledger.view("p0", now=1000.0)
        deadline = time.monotonic() + 5
        while ledger.view("p0", now=1001.0).beat == first.beat and time.monotonic() < deadline:
            time.sleep(0.05)
        later = ledger.view("p0", now=1001.0)
        assert later.beat is not None and first.beat is not None and later.beat > first.beat
        assert later.beat_seen_at == 1001.0  # when the counter moved, by the coordinator's clock
    finally:
        claim.release()
    # A released claim stops beating: the counter stays put.
    stopped = ledger.view("p0", now=1002.0).beat
    time.sleep(0.3)
    assert ledger.view("p0", now=1003.0).beat == stopped


def test_a_job_folder_is_not_reused_by_accident(tmp_path: Path) -> None:
    Ledger(tmp_path).create({"kind": "test"}, resume=False)
    with pytest.raises(ConfigurationError, match="already holds a rowstream job"):
        Ledger(tmp_path).create({"kind": "test"}, resume=False)
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        Ledger(tmp_path / "empty").create({"kind": "test"}, resume=True)
