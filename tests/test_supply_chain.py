"""The supply chain end to end on a real workspace: scan, sign, SBOM, verify, audit, secrets.

A two-model fleet is trained once per process (real `apply`, real training in this
process, real git and SQLite), then copied for each test. Tampering is done the way an
attacker would: flipping bytes in blob files, re-packaging with `OCIStore.write_image`,
editing the registry database with sqlite3.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelworks import _git
from modelworks.apply import apply
from modelworks.artifacts.oci import OCIStore
from modelworks.artifacts.sign import generate_keypair, sign_dir
from modelworks.artifacts.verify import verify_audit, verify_version
from modelworks.errors import ConfigError, NotFoundError, VerificationError
from modelworks.pipelines.steps import MissingSecretError, SealedSecrets, load_module, run_steps
from modelworks.registry import audit
from modelworks.registry.queries import show
from modelworks.registry.store import Store
from modelworks.runs.executor import InlineExecutor
from modelworks.security.audit import event_hash
from modelworks.security.keys import (
    fingerprint,
    rotate_signing_key,
    seal_secret,
    sealing_keys,
    secrets_dir,
    signing_keys,
)
from modelworks.testing import make_workspace, small_fleet, write_pipeline, write_spec
from modelworks.workspace import CONFIG_FILE, Workspace

_TEMPLATE: dict[str, Path] = {}


def trained(tmp_path: Path, factory: pytest.TempPathFactory) -> Workspace:
    """A copy of a workspace with two trained models deployed to test."""
    if "ws" not in _TEMPLATE:
        root = factory.mktemp("supply") / "ws"
        ws = make_workspace(root)
        small_fleet(ws, models=2, datasets=1)
        result = apply(ws, Store(ws.registry_url), executor=InlineExecutor(), actor="line")
        assert result.ok, result.to_dict()
        assert len(result.deployed) == 2
        _TEMPLATE["ws"] = root
    dest = tmp_path / "ws"
    shutil.copytree(_TEMPLATE["ws"], dest, symlinks=True)
    return Workspace.load(dest)


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained(tmp_path, tmp_path_factory)


@pytest.fixture
def store(ws: Workspace) -> Iterator[Store]:
    s = Store(ws.registry_url)
    yield s
    s.close()


def deployed(ws: Workspace, name: str = "model-0") -> dict[str, Any]:
    return dict(yaml.safe_load((ws.root / f"deploy/test/{name}/config.yaml").read_text()))


def db(ws: Workspace) -> sqlite3.Connection:
    return sqlite3.connect(ws.state_dir / "registry.db", isolation_level=None)


def repackage(ws: Workspace, digest: str, tmp: Path, change: Any, key: Path | None = None) -> str:
    """Extract an artifact, let `change` edit the folder, optionally re-sign, write it again."""
    oci = OCIStore(ws.oci_dir)
    folder = oci.extract(digest, tmp / "edit")
    for f in folder.rglob("*"):
        f.chmod(0o644)
    change(folder)
    if key is not None:
        sign_dir(folder, key)
    notes = oci.manifest(digest)["annotations"]
    return oci.write_image(notes["dev.modelworks.model"], "tampered", folder, notes).digest


def point_at(ws: Workspace, name: str, version: str, digest: str) -> None:
    """Make the registry and the deploy config name another digest (what an attacker does)."""
    with db(ws) as conn:
        conn.execute(
            "UPDATE model_versions SET artifact_digest = ? WHERE version = ?", (digest, version)
        )
    path = ws.root / f"deploy/test/{name}/config.yaml"
    cfg = yaml.safe_load(path.read_text()) | {"artifact_digest": digest}
    path.write_text(yaml.safe_dump(cfg))


# -- verify -------------------------------------------------------------------------


def test_served_version_verifies_every_check(ws: Workspace, store: Store) -> None:
    info = verify_version(ws, store, "model-0")
    cfg = deployed(ws)
    assert (info["version"], info["digest"]) == (cfg["version"], cfg["artifact_digest"])
    checks = info["checks"]
    assert checks["registry"] == {"registered": True, "scan_safe": True, "signed": True}
    assert checks["digests"]["blobs"] == 4  # manifest, config, base and model layers
    assert {"model.sig", "model.skops", "sbom.json", "metadata.json"} <= set(checks["files"])
    sig = checks["signature"]
    assert sig["key"] == "keys/signing-key.pub.pem"
    assert not sig["retired"]
    assert sig["fingerprint"] == fingerprint(signing_keys(ws)[1])
    assert checks["sbom"]["format"] == "CycloneDX"
    assert checks["sbom"]["components"] > 10
    assert "scikit-learn" in checks["sbom"]["key_packages"]
    assert checks["scan"]["safe"] is True
    assert info["deployed"]["test"]["version"] == cfg["version"]
    assert verify_version(ws, store, "model-0", cfg["version"])["digest"] == cfg["artifact_digest"]


def test_unknown_model_and_version_are_not_found(ws: Workspace, store: Store) -> None:
    with pytest.raises(NotFoundError, match="no model named 'model-9'"):
        verify_version(ws, store, "model-9")
    with pytest.raises(NotFoundError, match="model 'model-0' has no version 'abc'"):
        verify_version(ws, store, "model-0", "abc")


def test_tampered_blob_is_refused(ws: Workspace, store: Store) -> None:
    digest = deployed(ws)["artifact_digest"]
    layer = OCIStore(ws.oci_dir).manifest(digest)["layers"][-1]["digest"]
    blob = OCIStore(ws.oci_dir).blob_path(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    version = deployed(ws)["version"]
    with pytest.raises(VerificationError, match=rf"model-0@{version}: blob {layer} .* is corrupt"):
        verify_version(ws, store, "model-0")


def test_repackaged_model_with_a_stale_signature_names_the_file(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    cfg = deployed(ws)

    def swap_model(folder: Path) -> None:
        (folder / "model.skops").write_bytes((folder / "model.skops").read_bytes() + b"\0")

    new = repackage(ws, cfg["artifact_digest"], tmp_path, swap_model)
    point_at(ws, "model-0", cfg["version"], new)
    with pytest.raises(
        VerificationError, match=r"do not match the signature \(changed: model.skops\)"
    ):
        verify_version(ws, store, "model-0")


def test_deploy_config_and_registry_disagreeing_is_refused(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    cfg = deployed(ws)
    new = repackage(
        ws, cfg["artifact_digest"], tmp_path, lambda folder: (folder / "notes.txt").write_text("hi")
    )
    assert new != cfg["artifact_digest"]
    with db(ws) as conn:
        conn.execute(
            "UPDATE model_versions SET artifact_digest = ? WHERE version = ?", (new, cfg["version"])
        )
    with pytest.raises(VerificationError, match="was changed outside the line"):
        verify_version(ws, store, "model-0")


def test_signature_from_another_key_is_refused(ws: Workspace, store: Store, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub.pem")
    cfg = deployed(ws)
    new = repackage(ws, cfg["artifact_digest"], tmp_path, lambda f: None, tmp_path / "other.pem")
    point_at(ws, "model-0", cfg["version"], new)
    with pytest.raises(VerificationError, match="signed with another key, not the one in"):
        verify_version(ws, store, "model-0")


def test_artifact_of_another_model_is_refused(ws: Workspace, store: Store) -> None:
    other = deployed(ws, "model-1")["artifact_digest"]
    with pytest.raises(
        VerificationError, match="annotations say model 'model-1', expected 'model-0'"
    ):
        verify_version(ws, store, "model-0", other)


def test_corrupted_sbom_fails_verification(ws: Workspace, store: Store, tmp_path: Path) -> None:
    cfg = deployed(ws)

    def break_sbom(folder: Path) -> None:
        doc = json.loads((folder / "sbom.json").read_text())
        doc["components"][0]["purl"] = "pkg:pypi/evil@6.6.6"
        (folder / "sbom.json").write_text(json.dumps(doc))

    resigned = repackage(
        ws, cfg["artifact_digest"], tmp_path / "a", break_sbom, signing_keys(ws)[0]
    )
    point_at(ws, "model-0", cfg["version"], resigned)
    with pytest.raises(
        VerificationError, match=r"sbom.json is invalid: SBOM: components\[0\].purl"
    ):
        verify_version(ws, store, "model-0")
    # Not re-signed: the signature already covers sbom.json and names it.
    unsigned = repackage(ws, cfg["artifact_digest"], tmp_path / "b", break_sbom)
    point_at(ws, "model-0", cfg["version"], unsigned)
    with pytest.raises(VerificationError, match=r"changed: sbom.json"):
        verify_version(ws, store, "model-0")


def test_sbom_that_is_not_json_fails_verification(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    cfg = deployed(ws)
    digest = repackage(
        ws,
        cfg["artifact_digest"],
        tmp_path,
        lambda f: (f / "sbom.json").write_text('{"bomFormat": "Cyclo'),
        signing_keys(ws)[0],
    )
    with pytest.raises(VerificationError, match=r"sbom\.json is not valid JSON"):
        verify_version(ws, store, "model-0", digest)


def test_unknown_scanner_result_fails_verification(ws: Workspace, store: Store) -> None:
    with db(ws) as conn:
        conn.execute("UPDATE model_versions SET scan = '\"maybe\"'")
    with pytest.raises(VerificationError, match="scan result 'maybe' is missing or unknown"):
        verify_version(ws, store, "model-0")


def test_missing_or_wrong_public_key_is_a_config_error(ws: Workspace, store: Store) -> None:
    private, public = signing_keys(ws)
    saved = public.read_bytes()
    public.unlink()
    with pytest.raises(ConfigError, match=r"signing public key .*signing-key.pub.pem is missing"):
        verify_version(ws, store, "model-0")
    public.write_bytes(private.read_bytes())
    with pytest.raises(ConfigError, match="not a usable EC public key"):
        verify_version(ws, store, "model-0")
    public.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a usable EC public key"):
        verify_version(ws, store, "model-0")
    public.write_bytes(saved)
    assert verify_version(ws, store, "model-0")["verified"]


def test_public_key_from_a_configured_file(ws: Workspace, store: Store, tmp_path: Path) -> None:
    elsewhere = tmp_path / "trusted" / "release.pub.pem"
    elsewhere.parent.mkdir()
    signing_keys(ws)[1].rename(elsewhere)
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["signing"] = {"public_key": str(elsewhere)}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    info = verify_version(Workspace.load(ws.root), store, "model-0")
    assert info["checks"]["signature"]["key"] == str(elsewhere)


# -- keys ---------------------------------------------------------------------------


def test_rotated_key_keeps_old_versions_verifying(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    private, public = signing_keys(ws)
    old = fingerprint(public)
    result = rotate_signing_key(ws, store, actor="alice")
    assert result["before"]["fingerprint"] == old
    assert result["after"]["fingerprint"] == fingerprint(public) != old
    retired = ws.root / result["before"]["retired_as"]
    assert fingerprint(retired) == old
    assert _git.git(ws.root, "status", "--porcelain", "keys").strip() == ""
    assert "mw keys rotate" in _git.git(ws.root, "log", "-1", "--format=%s")
    info = verify_version(ws, store, "model-0")
    assert info["checks"]["signature"]["retired"] is True
    assert info["checks"]["signature"]["fingerprint"] == old
    # New versions are signed with the new key and verify with it directly.
    cfg = deployed(ws)
    new = repackage(ws, cfg["artifact_digest"], tmp_path, lambda f: None, private)
    assert verify_version(ws, store, "model-0", new)["checks"]["signature"]["retired"] is False
    [ev] = audit.rows(store, action="key.rotated")
    assert ev["actor"] == "alice"
    assert ev["before"]["fingerprint"] == old
    assert ev["after"]["fingerprint"] == fingerprint(public)
    assert verify_audit(ws, store)["intact"]


def test_rotation_that_drops_the_old_key_refuses_old_versions(ws: Workspace, store: Store) -> None:
    result = rotate_signing_key(ws, store, actor="alice", keep_old=False)
    assert result["before"]["retired_as"] is None
    with pytest.raises(VerificationError, match="signed with another key"):
        verify_version(ws, store, "model-0")


# -- scan ---------------------------------------------------------------------------

EVIL_PIPELINE = textwrap.dedent('''\
    """Trains fine, then saves a pickle that runs a shell command when loaded."""
    import os
    import pickle

    from sklearn.linear_model import LogisticRegression

    MARKER = {marker!r}


    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {{MARKER}}",))


    def prepare(data_path):
        import numpy as np
        table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
        return {{"X": table[:, :-1], "y": table[:, -1].astype(int)}}


    def train(data):
        return LogisticRegression().fit(data["X"], data["y"])


    def evaluate(model, data):
        return {{"accuracy": float((model.predict(data["X"]) == data["y"]).mean())}}


    def save(model, output_dir):
        (output_dir / "model.pkl").write_bytes(pickle.dumps(Payload()))
''')


def test_malicious_pickle_is_rejected_never_packaged_or_deployed(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    write_pipeline(ws, "evil", "v1", EVIL_PIPELINE.format(marker=str(marker)))
    write_spec(ws, "evil-model", "data/set0/data.csv", pipeline="evil")
    _git.commit(ws.root, ["models", "pipelines"], "evil model")
    result = apply(ws, store, names=["evil-model"], executor=InlineExecutor(), actor="line")
    assert not result.ok
    assert [r["name"] for r in result.rejected] == ["evil-model"]
    info = show(store, "evil-model")
    v = info["latest"]
    assert v["status"] == "rejected"
    assert "model.pkl" in v["reason"]
    assert v["artifact"]["digest"] is None
    assert info["artifact"] is None
    assert info["sbom"] is None
    assert any(
        f["file"] == "model.pkl" and f["severity"] == "critical" for f in v["scan"]["findings"]
    )
    assert "evil-model" not in OCIStore(ws.oci_dir).repos()
    assert not (ws.root / "deploy/test/evil-model").exists()
    assert "evil-model" not in [d["name"] for d in result.deployed]
    [ev] = audit.rows(store, action="version.rejected")
    assert ev["target"] == "evil-model"
    assert "model.pkl" in ev["after"]["reason"]
    with pytest.raises(VerificationError, match=r"evil-model@\w+ is rejected, not registered"):
        verify_version(ws, store, "evil-model", v["version"])
    assert not marker.exists()


# -- show ---------------------------------------------------------------------------


def test_show_has_the_sbom_summary_and_signature_scan_status(ws: Workspace, store: Store) -> None:
    info = show(store, "model-0")
    for key in ("oci_layout", "ref", "digest"):
        assert info["artifact"][key]
    assert info["artifact"]["signed"] is True
    assert info["artifact"]["scan"] == "safe"
    sbom = info["sbom"]
    assert (sbom["format"], sbom["spec_version"]) == ("CycloneDX", "1.5")
    assert sbom["version"] == info["artifact"]["version"]
    assert sbom["components"] > 10
    assert sbom["environment"].startswith("python-3")
    assert {"numpy", "scikit-learn"} <= set(sbom["key_packages"])


# -- audit --------------------------------------------------------------------------


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (b,))


TAMPER = {
    "edited": ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2", [(2, "edited")]),
    "edited-json": (
        "UPDATE audit_events SET after = json_set(after, '$.version', 'x') WHERE seq = 1",
        [(1, "edited")],
    ),
    "deleted": ("DELETE FROM audit_events WHERE seq = 2", [(2, "deleted")]),
    "reordered": (_swap, [(2, "edited"), (3, "edited")]),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_audit_verify_detects_direct_database_edits(ws: Workspace, store: Store, how: str) -> None:
    before = verify_audit(ws, store)
    assert before["intact"]
    assert before["events"] == 4
    assert before["problems"] == []
    sql, expected = TAMPER[how]
    with db(ws) as conn:
        sql(conn, 2, 3) if callable(sql) else conn.execute(sql)
    report = verify_audit(ws, store)
    assert not report["intact"]
    assert [(p["seq"], p["kind"]) for p in report["problems"]][: len(expected)] == expected


def test_audit_checkpoint_catches_a_truncated_or_rehashed_tail(ws: Workspace, store: Store) -> None:
    assert verify_audit(ws, store)["intact"]  # checkpoints seq 4
    with db(ws) as conn:
        row = conn.execute(
            "SELECT seq, ts, actor, action, target, tenant, before, after, "
            "prev_hash FROM audit_events WHERE seq = 4"
        ).fetchone()
        fields = dict(
            zip(
                (
                    "seq",
                    "ts",
                    "actor",
                    "action",
                    "target",
                    "tenant",
                    "before",
                    "after",
                    "prev_hash",
                ),
                row,
                strict=True,
            )
        )
        fields["before"], fields["after"] = json.loads(fields["before"]), {"version": "forged"}
        conn.execute(
            "UPDATE audit_events SET after = ?, hash = ? WHERE seq = 4",
            (json.dumps(fields["after"]), event_hash(fields["prev_hash"], fields)),
        )
    assert audit.verify(store) == []  # self-consistent: only the signed head can tell
    report = verify_audit(ws, store)
    assert [(p["seq"], p["kind"]) for p in report["problems"]] == [(4, "edited")]
    assert "rewritten and re-hashed" in report["problems"][0]["detail"]
    with db(ws) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")
    report = verify_audit(ws, store)
    assert [(p["seq"], p["kind"]) for p in report["problems"]] == [(4, "deleted")]
    assert "truncated" in report["problems"][0]["detail"]


# -- secrets ------------------------------------------------------------------------

SECRET_PIPELINE = textwrap.dedent('''\
    """Reads a sealed secret in a step and records something derived from it."""
    import hashlib

    import numpy as np
    from sklearn.linear_model import LogisticRegression


    def prepare(data_path, secrets, log):
        token = secrets["API_TOKEN"]
        log.info("token sha256 %s", hashlib.sha256(token.encode()).hexdigest()[:12])
        table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
        return {"X": table[:, :-1], "y": table[:, -1].astype(int), "token_len": len(token)}


    def train(data):
        return LogisticRegression().fit(data["X"], data["y"])


    def evaluate(model, data, secrets):
        assert "MISSING" not in secrets and secrets.get("MISSING") is None
        return {"accuracy": float((model.predict(data["X"]) == data["y"]).mean()),
                "token_len": data["token_len"]}
''')


def test_secret_reaches_a_step_and_is_never_in_plaintext(ws: Workspace, store: Store) -> None:
    import logging

    value = "s3cr3t-token-value"
    result = seal_secret(ws, store, "API_TOKEN", value.encode(), actor="alice")
    sealed = ws.root / result["path"]
    assert value.encode() not in sealed.read_bytes()
    assert result["commit"]
    assert "secrets/API_TOKEN.sealed" in _git.git(
        ws.root, "show", "--name-only", "--format=", "HEAD"
    )
    folder = write_pipeline(ws, "secretive", "v1", SECRET_PIPELINE)
    secrets = SealedSecrets(secrets_dir(ws), sealing_keys(ws)[0])
    assert list(secrets) == ["API_TOKEN"]
    assert "API_TOKEN" in repr(secrets)
    assert value not in repr(secrets)
    data = ws.root / "data/set0/data.csv"
    log = logging.getLogger("test.secrets")
    ctx = run_steps(
        load_module(folder, "secretive-test"), {"data_path": data, "secrets": secrets}, log
    )
    assert ctx["metrics"]["token_len"] == len(value)
    [ev] = audit.rows(store, action="secret.sealed")
    assert ev["target"] == "API_TOKEN"
    assert value not in json.dumps(ev)


def test_missing_secret_names_it(ws: Workspace) -> None:
    secrets = SealedSecrets(secrets_dir(ws), sealing_keys(ws)[0])
    with pytest.raises(MissingSecretError, match="secret 'DB_PASSWORD', which is not sealed"):
        secrets["DB_PASSWORD"]
    unconfigured = SealedSecrets(None, None)
    assert len(unconfigured) == 0
    with pytest.raises(MissingSecretError, match="mw secret seal X"):
        unconfigured["X"]


def test_sealing_needs_the_public_key(ws: Workspace, store: Store) -> None:
    sealing_keys(ws)[1].unlink()
    with pytest.raises(ConfigError, match=r"sealing public key .*sealing-key.pub is missing"):
        seal_secret(ws, store, "X", b"v", actor="alice")
    with pytest.raises(ConfigError, match="the value is empty"):
        seal_secret(ws, store, "X", b"", actor="alice")


def test_secret_round_trip_through_apply(ws: Workspace, store: Store) -> None:
    import hashlib

    value = "tok-" + "x7" * 10
    seal_secret(ws, store, "API_TOKEN", value.encode(), actor="alice")
    write_pipeline(ws, "secretive", "v1", SECRET_PIPELINE)
    write_spec(ws, "needs-secret", "data/set0/data.csv", pipeline="secretive")
    _git.commit(ws.root, ["models", "pipelines"], "a model that needs a secret")
    result = apply(ws, store, names=["needs-secret"], executor=InlineExecutor(), actor="line")
    assert result.ok, result.to_dict()
    assert result.trained[0]["metrics"]["token_len"] == len(value)
    log = (ws.state_dir / "logs" / "needs-secret").glob("*.log")
    text = "".join(p.read_text() for p in log)
    assert f"token sha256 {hashlib.sha256(value.encode()).hexdigest()[:12]}" in text
    assert value not in text
    tracked = _git.git(ws.root, "ls-files", "secrets").split()
    assert tracked == ["secrets/API_TOKEN.sealed"]
    assert value.encode() not in (ws.root / tracked[0]).read_bytes()


def test_step_asking_for_a_missing_secret_fails_naming_it(ws: Workspace, store: Store) -> None:
    write_pipeline(ws, "secretive", "v1", SECRET_PIPELINE)
    write_spec(ws, "needs-secret", "data/set0/data.csv", pipeline="secretive")
    _git.commit(ws.root, ["models", "pipelines"], "a model that needs a secret")
    result = apply(ws, store, names=["needs-secret"], executor=InlineExecutor(), actor="line")
    [failed] = result.failed
    assert "step asked for secret 'API_TOKEN', which is not sealed" in failed["error"]
    assert "mw secret seal API_TOKEN" in failed["error"]
    assert not (ws.root / "deploy/test/needs-secret").exists()


def test_corrupted_signature_file_fails_verification(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    cfg = deployed(ws)

    def garble(folder: Path) -> None:
        sig = folder / "model.sig"
        sig.write_bytes(sig.read_bytes()[: len(sig.read_bytes()) // 2])

    point_at(ws, "model-0", cfg["version"], repackage(ws, cfg["artifact_digest"], tmp_path, garble))
    with pytest.raises(VerificationError, match="signature file is corrupt or not a model signing"):
        verify_version(ws, store, "model-0")


def test_unusable_private_key_fails_the_run_and_deploys_nothing(
    ws: Workspace, store: Store
) -> None:
    before = deployed(ws)
    private, _public = signing_keys(ws)
    private.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    spec = ws.models_dir / "model-0.json"
    spec.write_text(json.dumps(json.loads(spec.read_text()) | {"model_hyperparameters": {"C": 9}}))
    _git.commit(ws.root, ["models"], "retrain model-0")
    result = apply(ws, store, names=["model-0"], executor=InlineExecutor(), actor="line")
    [failed] = result.failed
    assert "signing-key.pem: not a usable EC private key" in failed["error"]
    assert result.deployed == []
    assert deployed(ws) == before
    assert verify_version(ws, store, "model-0")["version"] == before["version"]


def test_verify_the_version_an_environment_serves(ws: Workspace, store: Store) -> None:
    with pytest.raises(NotFoundError, match="model 'model-0' is not deployed in prod"):
        verify_version(ws, store, "model-0", env="prod")
    with pytest.raises(ConfigError, match="environment 'staging' is not configured"):
        verify_version(ws, store, "model-0", env="staging")
    prod = ws.root / "deploy/prod/model-0/config.yaml"
    prod.parent.mkdir(parents=True)
    shutil.copy(ws.root / "deploy/test/model-0/config.yaml", prod)
    info = verify_version(ws, store, "model-0", env="prod")
    assert info["version"] == deployed(ws)["version"]
    assert set(info["deployed"]) == {"test", "prod"}


def test_file_the_scanner_cannot_judge_rejects_the_version(ws: Workspace, store: Store) -> None:
    source = EVIL_PIPELINE.format(marker="/nonexistent").replace(
        'output_dir / "model.pkl").write_bytes(pickle.dumps(Payload()))',
        'output_dir / "model.weights").write_bytes(bytes(range(166, 230)))',
    )
    write_pipeline(ws, "opaque", "v1", source)
    write_spec(ws, "opaque-model", "data/set0/data.csv", pipeline="opaque")
    _git.commit(ws.root, ["models", "pipelines"], "opaque model")
    result = apply(ws, store, names=["opaque-model"], executor=InlineExecutor(), actor="line")
    [rejected] = result.rejected
    assert "model.weights: critical unknown format" in rejected["reason"]
    assert rejected["scan"]["safe"] is False
    assert result.deployed == []
    assert show(store, "opaque-model")["latest"]["artifact"]["digest"] is None


def test_show_survives_a_broken_sbom(ws: Workspace, store: Store, tmp_path: Path) -> None:
    cfg = deployed(ws)
    digest = repackage(
        ws, cfg["artifact_digest"], tmp_path, lambda f: (f / "sbom.json").write_text("[1, 2]")
    )
    point_at(ws, "model-0", cfg["version"], digest)
    with db(ws) as conn:
        conn.execute(
            "UPDATE model_versions SET oci_layout = ?", (str(ws.oci_dir / "repos/model-0"),)
        )
    assert show(store, "model-0")["sbom"] == {
        "version": cfg["version"],
        "error": "sbom.json is not an object",
    }
    layer = OCIStore(ws.oci_dir).manifest(digest)["layers"][-1]["digest"]
    OCIStore(ws.oci_dir).blob_path(layer).write_bytes(b"gone")
    info = show(store, "model-0")
    assert info["sbom"]["error"].startswith("cannot read sbom.json: layer of image")
    assert info["artifact"]["digest"] == digest
