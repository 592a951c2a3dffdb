"""The hash-chained audit log detects edits, deletions, reordering and forged rows."""

from __future__ import annotations

import copy
from itertools import pairwise
from typing import Any

import pytest

from modelworks.errors import RegistryError
from modelworks.security.audit import (
    GENESIS,
    ChainProblem,
    chain,
    event_hash,
    verify_chain,
)


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ts": f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}+00:00",
            "actor": "alice" if i % 2 else "ci-bot",
            "action": "version.registered" if i % 3 else "promotion.approved",
            "target": f"churn-model@{i:04x}",
            "tenant": "acme",
            "before": None if i % 2 else {"status": "staged"},
            "after": {"status": "registered", "metrics": {"auc": 0.5 + i / 1000}},
        }
        for i in range(n)
    ]


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return chain(_events(100))


def _kinds(problems: list[ChainProblem]) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in problems]


def test_chain_of_100_verifies(rows: list[dict[str, Any]]) -> None:
    assert [r["seq"] for r in rows] == list(range(1, 101))
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in pairwise(rows))
    assert verify_chain(rows) == []


def test_hash_is_canonical_and_covers_every_field(rows: list[dict[str, Any]]) -> None:
    row = rows[5]
    reordered = dict(reversed(list(row.items())))
    assert event_hash(row["prev_hash"], reordered) == row["hash"]
    assert event_hash(row["prev_hash"], row | {"id": 999}) == row["hash"]  # db surrogate key
    assert event_hash(GENESIS, row) != row["hash"]
    for field in ("seq", "ts", "actor", "action", "target", "tenant", "before", "after"):
        assert event_hash(row["prev_hash"], row | {field: "x"}) != row["hash"], field


def test_missing_optional_fields_hash_like_none() -> None:
    [row] = chain([{"actor": "a", "action": "x.y", "target": "t"}])
    stored = {"id": 1, "tenant": None, "before": None, "after": None} | row
    assert verify_chain([stored]) == []


def test_edited_field_is_detected(rows: list[dict[str, Any]]) -> None:
    rows[41]["after"]["metrics"]["auc"] = 0.99
    assert _kinds(verify_chain(rows)) == [(42, "edited")]


def test_deleted_row_is_detected(rows: list[dict[str, Any]]) -> None:
    del rows[9]
    problems = verify_chain(rows)
    assert _kinds(problems) == [(10, "deleted")]
    assert "row 10 is missing" in problems[0].detail


def test_deleted_first_rows_are_detected(rows: list[dict[str, Any]]) -> None:
    assert _kinds(verify_chain(rows[3:])) == [(1, "deleted")]


def test_swapped_rows_are_detected(rows: list[dict[str, Any]]) -> None:
    rows[20], rows[21] = rows[21], rows[20]
    problems = verify_chain(rows)
    assert _kinds(problems) == [(21, "reordered")]
    assert "row 21 is stored after row 22" in problems[0].detail


def test_swapped_contents_with_renumbered_seq_are_detected(rows: list[dict[str, Any]]) -> None:
    rows[20], rows[21] = rows[21], rows[20]
    rows[20]["seq"], rows[21]["seq"] = 21, 22
    assert _kinds(verify_chain(rows)) == [(21, "edited"), (22, "edited")]


def test_rehashed_edit_without_fixing_next_link_is_detected(rows: list[dict[str, Any]]) -> None:
    forged = rows[59]
    forged["actor"] = "mallory"
    forged["hash"] = event_hash(forged["prev_hash"], forged)
    problems = verify_chain(rows)
    assert _kinds(problems) == [(60, "broken-link")]
    assert "row 60 was changed and re-hashed" in problems[0].detail


def test_forged_tail_is_detected_against_an_anchor(rows: list[dict[str, Any]]) -> None:
    anchor = {100: rows[-1]["hash"]}
    forged = copy.deepcopy(rows)
    forged[-1]["action"] = "promotion.rejected"
    forged[-1]["hash"] = event_hash(forged[-1]["prev_hash"], forged[-1])
    assert verify_chain(forged) == []  # self-consistent: only an anchor can tell
    assert _kinds(verify_chain(forged, anchors=anchor)) == [(100, "edited")]
    assert _kinds(verify_chain(rows[:-2], anchors=anchor)) == [(99, "deleted")]


def test_duplicate_and_broken_start(rows: list[dict[str, Any]]) -> None:
    assert (2, "reordered") in _kinds(verify_chain([rows[0], rows[1], rows[1], *rows[2:]]))
    first = rows[0] | {"prev_hash": "f" * 64}
    first["hash"] = event_hash(first["prev_hash"], first)
    assert _kinds(verify_chain([first])) == [(1, "broken-link")]


def test_chain_continues_from_an_existing_head(rows: list[dict[str, Any]]) -> None:
    more = chain(_events(3), prev_hash=rows[-1]["hash"], start_seq=101)
    assert [r["seq"] for r in more] == [101, 102, 103]
    assert verify_chain(rows + more) == []
    assert verify_chain(more, prev_hash=rows[-1]["hash"], start_seq=101) == []


def test_unserializable_event_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match=r"'x\.y' on 't' is not JSON-serializable"):
        chain([{"action": "x.y", "target": "t", "after": {"when": object()}}])
