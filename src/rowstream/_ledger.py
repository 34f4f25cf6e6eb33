"""The ledger of a distributed run: which partition is done, who holds it, how often it was tried.

A Celery broker's acknowledgement says a message was delivered, not that a partition was
written: a worker killed in the middle leaves the message unacknowledged (redelivered at once by
RabbitMQ, only after the visibility timeout by Redis), a task redelivered after its worker was
lost can run twice, and a message lost with its worker is never seen again. So the coordinator
trusts this ledger instead, and the broker only carries work.

The ledger is a folder that every worker reaches (the one the parts are written to), with one
small JSON file per fact, each written atomically (temporary file, fsync, rename) or linked
into place exclusively, so no two writers ever mix their bytes and a crash leaves a fact whole
or absent:

    job.json                    what the job is (written once by the coordinator)
    parts/P.sent.json           the coordinator sent attempt A of partition P
    parts/P.A.lease             a worker claimed attempt A (linked into place: one claimant)
                                and beats in it; its ``beat`` counter grows every few seconds
    parts/P.done.json           partition P is written, with its result
    parts/P.A.failed.json       attempt A raised; the error, kept for the coordinator to report
                                (type and one-line message; rowstream's exceptions pickled too)

A lease has expired when its counter has not moved for ``lease`` seconds of the coordinator's
own clock, so clocks that differ between machines do not matter. :func:`decide` turns what the
coordinator sees into what it does next; it does no I/O, so its rules are tested without a
broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError, RowstreamError, SinkError
from ._remote_errors import one_line, record, revive

DEFAULT_LEASE = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# How long a sent partition may sit unclaimed while no worker holds any lease before the
# coordinator sends it again (a message lost with its worker before the claim). While other
# partitions are being worked on, an unclaimed one is simply waiting its turn in the queue.
DEFAULT_UNCLAIMED = 60.0


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` atomically and durably."""
    data = json.dumps(document, sort_keys=True, default=str).encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, or None when it is not there (yet)."""
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SinkError(f"cannot read the ledger file {path}: {exc}") from None
    return document


# -- what the coordinator sees and decides (no I/O) -------------------------------------------


@dataclass
class PartView:
    """What the coordinator knows of one partition."""

    part: str
    attempt: int = 0  # the last attempt sent; 0 = never sent
    sent_at: float | None = None  # coordinator clock
    beat: int | None = None  # the last attempt's lease counter; None = not claimed
    beat_seen_at: float | None = None  # coordinator clock when ``beat`` last changed
    done: bool = False
    failure: str | None = None  # the last attempt's error message


@dataclass(frozen=True)
class Send:
    part: str
    attempt: int


@dataclass(frozen=True)
class Fail:
    part: str
    why: str


Action = Send | Fail


@dataclass(frozen=True)
class Rules:
    lease: float = DEFAULT_LEASE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    unclaimed: float = DEFAULT_UNCLAIMED


def decide(now: float, parts: list[PartView], rules: Rules) -> list[Action]:
    """What to do next: send partitions (first time or again) or fail the job."""
    actions: list[Action] = []
    anyone_working = any(
        not p.done
        and p.beat is not None
        and p.beat_seen_at is not None
        and now - p.beat_seen_at < rules.lease
        for p in parts
    )
    for p in parts:
        if p.done:
            continue
        if p.failure is not None:
            actions.append(Fail(p.part, f"attempt {p.attempt} failed: {p.failure}"))
            continue
        if p.attempt == 0:
            actions.append(Send(p.part, 1))
            continue
        if p.beat is not None:
            assert p.beat_seen_at is not None
            if now - p.beat_seen_at < rules.lease:
                continue
            why = (
                f"its worker stopped beating for {rules.lease:g} s "
                f"(lost or killed) on attempt {p.attempt}"
            )
        else:
            assert p.sent_at is not None
            if anyone_working or now - p.sent_at < rules.unclaimed:
                continue
            why = f"no worker claimed attempt {p.attempt} within {rules.unclaimed:g} s"
        if p.attempt >= rules.max_attempts:
            actions.append(Fail(p.part, f"{why}; gave up after {rules.max_attempts} attempts"))
        else:
            actions.append(Send(p.part, p.attempt + 1))
    return actions


# -- the folder --------------------------------------------------------------------------------


@dataclass
class Claim:
    """A worker's hold on one attempt of one partition; beats until it is released."""

    ledger: Ledger
    part: str
    attempt: int
    interval: float
    _beat: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"rowstream-lease-{self.part}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat += 1
            # A missed beat is not fatal: the next one, or the coordinator's patience
            # (several intervals per lease), covers a slow disk.
            with contextlib.suppress(SinkError):
                self.ledger._write_lease(self.part, self.attempt, self._beat)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def done(self, result: Mapping[str, Any]) -> None:
        self.release()
        self.ledger.mark_done(self.part, self.attempt, result)

    def failed(self, error: BaseException, *, url: str | None = None) -> None:
        """Record that this attempt raised ``error`` (nothing of ``url``'s password is kept;
        rowstream's own exceptions are kept whole, see :mod:`rowstream._remote_errors`)."""
        self.release()
        write_json(
            self.ledger.parts / f"{self.part}.{self.attempt}.failed.json",
            {**record(error, url), "at": time.time()},
        )


class Ledger:
    """The partition states of one distributed job, kept as files under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, lease: float = DEFAULT_LEASE) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.lease = lease
        # Coordinator memory, on its own clock: when each sending was first seen, and the
        # last lease counter seen per partition with when it changed.
        self._sent_clock: dict[tuple[str, int], float] = {}
        self._seen: dict[str, tuple[int, int, float]] = {}

    # coordinator side
    def create(self, job: Mapping[str, Any], *, resume: bool) -> dict[str, Any]:
        """Write the job (or, with ``resume``, read back the one already there)."""
        existing = read_json(self.root / "job.json")
        if existing is not None:
            if not resume:
                raise ConfigurationError(
                    f"{self.root} already holds a rowstream job: pass resume=True (--resume) "
                    "to finish it, or choose an empty folder"
                )
            return existing
        if resume:
            raise ConfigurationError(
                f"nothing to resume in {self.root}: no job.json there; run without resume"
            )
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the job folder {self.root}: {exc.strerror}") from None
        write_json(self.root / "job.json", job)
        return dict(job)

    def job(self) -> dict[str, Any]:
        job = read_json(self.root / "job.json")
        if job is None:
            raise ConfigurationError(
                f"no rowstream job in {self.root}: the folder must be the one the coordinator "
                "wrote, reachable at the same path from every worker"
            )
        return job

    def sent(self, part: str, attempt: int) -> None:
        write_json(self.parts / f"{part}.sent.json", {"attempt": attempt, "at": time.time()})

    def view(self, part: str, now: float) -> PartView:
        """Read what the files say of ``part``, against the coordinator's clock ``now``."""
        view = PartView(part)
        if (self.parts / f"{part}.done.json").exists():
            view.done = True
            return view
        sent = read_json(self.parts / f"{part}.sent.json")
        if sent is None:
            return view
        view.attempt = int(sent["attempt"])
        view.sent_at = self._sent_clock.setdefault((part, view.attempt), now)
        failed = read_json(self.parts / f"{part}.{view.attempt}.failed.json")
        if failed is not None:
            view.failure = f"{failed['error']}: {one_line(str(failed['message']))}"
            return view
        lease = read_json(self.parts / f"{part}.{view.attempt}.lease")
        if lease is not None:
            beat = int(lease["beat"])
            last = self._seen.get(part)
            if last is None or last[:2] != (view.attempt, beat):
                self._seen[part] = (view.attempt, beat, now)
            view.beat = beat
            view.beat_seen_at = self._seen[part][2]
        return view

    def error(self, part: str) -> RowstreamError | None:
        """The rowstream exception that failed the last attempt of ``part``, as the worker
        raised it (class, message, context), or None: not failed, or not one of rowstream's
        exceptions (the failure's text, in :meth:`view`, is all there is)."""
        sent = read_json(self.parts / f"{part}.sent.json")
        if sent is None:
            return None
        failed = read_json(self.parts / f"{part}.{int(sent['attempt'])}.failed.json")
        return None if failed is None else revive(failed)

    def result(self, part: str) -> dict[str, Any] | None:
        return read_json(self.parts / f"{part}.done.json")

    # worker side
    def claim(self, part: str, attempt: int) -> Claim | None:
        """Hold ``attempt`` of ``part``, or None when it is done or already held.

        The lease file is created exclusively: of two deliveries of one attempt (a broker's
        redelivery racing the original), one runs.
        """
        if (self.parts / f"{part}.done.json").exists():
            return None
        path = self.parts / f"{part}.{attempt}.lease"
        # Written whole under a temporary name, then linked into place: link() fails when the
        # name exists, so the claim is exclusive, and a reader never sees a half-written lease.
        staging = self.parts / f".{part}.{attempt}.{os.getpid()}.{threading.get_ident()}.claim"
        write_json(staging, self._lease(0))
        try:
            os.link(staging, path)
        except FileExistsError:
            return None
        except OSError as exc:
            raise SinkError(
                f"cannot claim partition {part} in {self.parts}: {exc.strerror}"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)
        claim = Claim(self, part, attempt, interval=max(0.2, self.lease / 6))
        claim.start()
        return claim

    def _write_lease(self, part: str, attempt: int, beat: int) -> None:
        write_json(self.parts / f"{part}.{attempt}.lease", self._lease(beat))

    @staticmethod
    def _lease(beat: int) -> dict[str, Any]:
        return {"beat": beat, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}

    def mark_done(self, part: str, attempt: int, result: Mapping[str, Any]) -> None:
        write_json(
            self.parts / f"{part}.done.json",
            {**result, "attempt": attempt, "finished": time.time()},
        )
