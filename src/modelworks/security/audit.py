"""The tamper-evident audit log: each row carries the hash of the row before it.

    row 1: prev_hash = GENESIS   hash = H(GENESIS, row 1)
    row 2: prev_hash = hash₁     hash = H(hash₁, row 2)
    row 3: prev_hash = hash₂     hash = H(hash₂, row 3)

Editing a field of row 2 breaks ``H(prev_hash₂, row 2) == hash₂`` ("edited").
Re-hashing the edited row makes it self-consistent but row 3 still points at the old
hash₂ ("broken-link", reported on row 2). Deleting a row leaves a gap in ``seq``
("deleted"); swapping rows puts ``seq`` out of order ("reordered"). Rewriting the
*last* rows and re-hashing them is only detectable against a hash kept elsewhere (a
Git commit, a signed checkpoint): pass those as ``anchors``.

This module is pure logic over dict rows; the registry stores them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from modelworks.errors import RegistryError

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "action", "target", "tenant", "before", "after", "prev_hash")
# Never hashed: the hash itself and a database's surrogate key.
UNHASHED = frozenset({"hash", "id"})


@dataclass
class ChainProblem:
    """One place where the stored log differs from what was chained."""

    seq: int
    kind: str  # "edited" | "deleted" | "reordered" | "broken-link" | "anchor" (security/anchor)
    detail: str


def event_hash(prev_hash: str, event: Mapping[str, Any]) -> str:
    """Return sha256 over canonical JSON of the event (minus `hash`) and `prev_hash`."""
    body = {name: event.get(name) for name in FIELDS}
    body.update({k: v for k, v in event.items() if k not in UNHASHED and k not in body})
    body["prev_hash"] = prev_hash
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"audit event {event.get('action')!r} on {event.get('target')!r} is not "
            f"JSON-serializable: {exc}"
        ) from exc
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def chain(
    events: Iterable[Mapping[str, Any]], prev_hash: str = GENESIS, start_seq: int = 1
) -> list[dict[str, Any]]:
    """Return the events as rows with seq, ts (if absent), prev_hash and hash assigned."""
    rows = []
    for seq, event in enumerate(events, start=start_seq):
        row = {name: event.get(name) for name in FIELDS} | dict(event)
        row.pop("hash", None)
        row["seq"] = seq
        row["ts"] = row.get("ts") or datetime.now(UTC).isoformat()
        row["prev_hash"] = prev_hash
        row["hash"] = prev_hash = event_hash(prev_hash, row)
        rows.append(row)
    return rows


def verify_chain(
    rows: Iterable[Mapping[str, Any]],
    *,
    prev_hash: str = GENESIS,
    start_seq: int = 1,
    anchors: Mapping[int, str] | None = None,
) -> list[ChainProblem]:
    """Return every problem in `rows` (stored order); empty when the log is intact."""
    rows = list(rows)
    problems = _order_problems(rows) + _gap_problems(rows, start_seq, anchors or {})
    by_seq = {row.get("seq"): row for row in rows}
    edited = {_seq(row) for row in rows if not _self_consistent(row)}
    problems += [
        ChainProblem(s, "edited", f"row {s} does not match its stored hash") for s in edited
    ]
    for row in rows:
        if _seq(row) not in edited:
            problems += _link_problems(row, by_seq, prev_hash, start_seq, edited)
    problems += _anchor_problems(by_seq, anchors or {})
    return sorted(problems, key=lambda p: p.seq)


def _order_problems(rows: list[Mapping[str, Any]]) -> list[ChainProblem]:
    problems = []
    for before, row in pairwise(rows):
        seq, previous = _seq(row), _seq(before)
        if seq == previous:
            problems.append(ChainProblem(seq, "reordered", f"seq {seq} appears twice"))
        elif seq < previous:
            detail = f"row {seq} is stored after row {previous}"
            problems.append(ChainProblem(seq, "reordered", detail))
    return problems


def _gap_problems(
    rows: list[Mapping[str, Any]], start_seq: int, anchors: Mapping[int, str]
) -> list[ChainProblem]:
    present = {_seq(row) for row in rows}
    last = max(present | set(anchors), default=start_seq - 1)
    missing = [seq for seq in range(start_seq, last + 1) if seq not in present]
    problems = []
    for first, end in _runs(missing):
        span = f"row {first} is" if first == end else f"rows {first}..{end} are"
        problems.append(ChainProblem(first, "deleted", f"{span} missing from the log"))
    return problems


def _self_consistent(row: Mapping[str, Any]) -> bool:
    stored_prev = row.get("prev_hash")
    return isinstance(stored_prev, str) and row.get("hash") == event_hash(stored_prev, row)


def _link_problems(
    row: Mapping[str, Any],
    by_seq: Mapping[Any, Mapping[str, Any]],
    genesis: str,
    start: int,
    edited: set[int],
) -> list[ChainProblem]:
    seq, stored_prev = _seq(row), row.get("prev_hash")
    if seq == start:
        if stored_prev != genesis:
            return [ChainProblem(seq, "broken-link", f"row {seq} does not start the chain")]
        return []
    previous = by_seq.get(seq - 1)
    if previous is None or seq - 1 in edited or previous.get("hash") == stored_prev:
        return []
    detail = (
        f"row {seq - 1}'s hash is not the prev_hash stored in row {seq}: "
        f"row {seq - 1} was changed and re-hashed (or a row after it was removed and the "
        "rest renumbered)"
    )
    return [ChainProblem(seq - 1, "broken-link", detail)]


def _anchor_problems(
    by_seq: Mapping[Any, Mapping[str, Any]], anchors: Mapping[int, str]
) -> list[ChainProblem]:
    problems = []
    for seq, expected in sorted(anchors.items()):
        row = by_seq.get(seq)
        if row is not None and row.get("hash") != expected:
            detail = f"row {seq} differs from its anchored hash {expected[:12]}…: rewritten"
            problems.append(ChainProblem(seq, "edited", detail))
    return problems


def _seq(row: Mapping[str, Any]) -> int:
    seq = row.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs
