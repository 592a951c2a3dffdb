"""A sealed secret's value never reaches apply output, runs.error, `mw runs` or the run log."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from modelworks import _git
from modelworks.data.add import add
from modelworks.security.redact import REDACTED, RedactingWriter, redact
from modelworks.testing import make_workspace, run_cli, write_dataset, write_pipeline, write_spec
from modelworks.workspace import Workspace

VALUE = 'pa55-"w0rd"/x+y'

LEAKY_PIPELINE = textwrap.dedent("""\
    import numpy as np
    from sklearn.linear_model import LogisticRegression


    def prepare(data_path, secrets, log):
        token = secrets["DB_PASSWORD"]
        print("connecting with", token)
        log.info("password is %s and %r", token, {"password": token})
        raise ConnectionError(f"login refused for password {token!r} ({[token]})")


    def train(data):
        return LogisticRegression()


    def evaluate(model, data):
        return {"accuracy": 1.0}
""")


def _forms() -> list[str]:
    """The spellings a leak would take: plain, repr-escaped, JSON-escaped."""
    return [VALUE, repr(VALUE)[1:-1], json.dumps(VALUE)[1:-1]]


def assert_clean(text: str, where: str) -> None:
    for form in _forms():
        assert form not in text, f"{where} leaks the secret as {form!r}"


@pytest.fixture
def leaky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Workspace:
    ws = make_workspace(tmp_path / "ws", executor={"workers": 1, "retries": 1})
    write_pipeline(ws, "leaky", "v1", LEAKY_PIPELINE)
    write_dataset(ws, "data/set0/data.csv")
    add(ws, ws.root / "data/set0/data.csv", commit=False)
    write_spec(ws, "leaks", "data/set0/data.csv", pipeline="leaky")
    _git.commit(ws.root, ["models", "pipelines", "data"], "a pipeline that leaks its secret")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{VALUE}\n".encode())))
    code, _, err = run_cli(capsys, "secret", "seal", "DB_PASSWORD", "-C", str(ws.root))
    assert code == 0, err
    return ws


@pytest.mark.parametrize("json_out", [False, True])
def test_a_step_that_raises_with_the_secret_leaks_it_nowhere(
    capsys: pytest.CaptureFixture[str], leaky: Workspace, json_out: bool
) -> None:
    args = ["apply", "-C", str(leaky.root)] + (["--json"] if json_out else [])
    _code, out, err = run_cli(capsys, *args)
    assert "ConnectionError" in out + err  # the failure itself is reported
    assert REDACTED in out + err
    assert_clean(out + err, "apply output")
    if json_out:
        [failed] = json.loads(out)["failed"]
        assert "login refused for password" in failed["error"]

    code, out, err = run_cli(capsys, "runs", "--json", "-C", str(leaky.root))
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert runs
    assert all(r["status"] == "failed" for r in runs)
    assert_clean(out, "mw runs --json")
    assert any(REDACTED in (r.get("error") or "") for r in runs)

    conn = sqlite3.connect(leaky.state_dir / "registry.db")
    errors = [e for (e,) in conn.execute("SELECT error FROM runs")]
    events = [a for (a,) in conn.execute("SELECT after FROM audit_events")]
    conn.close()
    assert errors
    assert all(e and "login refused" in e for e in errors)
    assert_clean(json.dumps(errors), "runs.error")
    assert_clean(json.dumps(events), "audit_events")

    logs = list((leaky.state_dir / "logs" / "leaks").glob("*.log"))
    text = "".join(p.read_text() for p in logs)
    assert f"connecting with {REDACTED}" in text
    assert "Traceback" in text
    assert_clean(text, "the run log")


def test_redact_covers_encodings_and_nested_values() -> None:
    import base64
    import urllib.parse

    leaked = {
        "error": f"bad {VALUE!r}",
        "list": [json.dumps({"p": VALUE}), (VALUE.encode(),)],
        VALUE: urllib.parse.quote(VALUE, safe="") + " " + base64.b64encode(VALUE.encode()).decode(),
    }
    clean = redact(leaked, [VALUE.encode()])
    text = repr(clean)
    assert_clean(text, "redact()")
    assert base64.b64encode(VALUE.encode()).decode().rstrip("=") not in text
    assert urllib.parse.quote(VALUE, safe="") not in text
    assert clean["error"] == f"bad '{REDACTED}'"
    assert clean["list"][1] == (REDACTED.encode(),)
    assert clean[REDACTED] == f"{REDACTED} {REDACTED}"
    assert redact("short ab", [b"ab"]) == "short ab"  # too short to redact


def test_redacting_writer_catches_a_value_written_in_pieces() -> None:
    target = io.StringIO()
    values: list[bytes] = []
    w = RedactingWriter(target, values)
    values.append(VALUE.encode())  # revealed after the writer was made: still redacted
    w.write("token: " + VALUE[:4])
    w.write(VALUE[4:] + "\nnext line")
    w.finish()
    assert target.getvalue() == f"token: {REDACTED}\nnext line"
