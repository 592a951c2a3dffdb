"""Identities through the real CLI: --as in local mode, tokens and roles in token mode.

Each test runs `mw` in-process on a real trained workspace (git + SQLite) copied from the
template test_promote builds once: three models served in test, nothing in prod.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_promote import served, trained_copy

from modelworks import _git
from modelworks.errors import AuthenticationError
from modelworks.registry.models import Token
from modelworks.registry.store import Store
from modelworks.security.identity import Identity, authenticate_bearer, require
from modelworks.security.tokens import hash_token
from modelworks.testing import mw, mw_json
from modelworks.workspace import CONFIG_FILE, Workspace

Capsys = pytest.CaptureFixture[str]


def refused(capsys: Capsys, ws: Workspace, *args: str) -> str:
    """Run a command that must fail cleanly; return its one-line error."""
    code, out, err = mw(capsys, ws, *args)
    assert code != 0, out
    assert "Traceback" not in err
    assert "unexpected error" not in err
    return " ".join(err.split())


@pytest.fixture
def ws(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return trained_copy(tmp_path, tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MW_TOKEN", raising=False)


def token_mode(capsys: Capsys, ws: Workspace) -> dict[str, str]:
    """Switch ws to auth.mode token; bootstrap an admin and give four users a token each."""
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["auth"] = {"mode": "token"}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    _git.commit(ws.root, [CONFIG_FILE], "auth: token mode")
    tokens = {"root": mw_json(capsys, ws, "token", "create", "--bootstrap", "--user", "root")}
    for user, role in [
        ("alice", "developer"),
        ("carol", "developer"),
        ("bob", "approver"),
        ("vic", "viewer"),
    ]:
        mw_json(capsys, ws, "user", "add", user, "--token", tokens["root"]["token"])
        tokens[user] = mw_json(
            capsys,
            ws,
            "token",
            "create",
            "--user",
            user,
            "--role",
            role,
            "--token",
            tokens["root"]["token"],
        )
    return {user: t["token"] for user, t in tokens.items()}


def request_state(capsys: Capsys, ws: Workspace, token: str | None = None) -> str:
    extra = ("--token", token) if token else ()
    return str(mw_json(capsys, ws, "promotion", "1", *extra)["state"])


# ---------------------------------------------------------------- local mode


@pytest.mark.parametrize("spelling", [" alice", "alice ", "ALICE", "\uff41lice", " Alice\t"])
def test_the_author_cannot_approve_under_another_spelling(
    capsys: Capsys, ws: Workspace, spelling: str
) -> None:
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--as", "alice")
    err = refused(capsys, ws, "approve", "1", "--as", spelling)
    assert "alice opened promotion request 1 and cannot approve it" in err
    assert request_state(capsys, ws) == "open"
    assert served(ws, "prod", "model-0") is None


def test_one_approver_under_two_spellings_counts_once(capsys: Capsys, ws: Workspace) -> None:
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["environments"]["prod"]["approvals"] = 2
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    _git.commit(ws.root, [CONFIG_FILE], "prod needs two approvals")
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--as", "alice")
    assert mw_json(capsys, ws, "approve", "1", "--as", "bob")["approvals"] == ["bob"]
    err = refused(capsys, ws, "approve", "1", "--as", " Bob")
    assert "bob already approved promotion request 1 (1/2 approvals)" in err
    assert request_state(capsys, ws) == "open"
    assert served(ws, "prod", "model-0") is None


@pytest.mark.parametrize("empty", ["", " ", "\t\n"])
def test_an_empty_as_is_refused_not_the_git_user(capsys: Capsys, ws: Workspace, empty: str) -> None:
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--as", "alice")
    err = refused(capsys, ws, "approve", "1", "--as", empty)
    assert "--as" in err
    assert "is not a valid user name" in err
    assert request_state(capsys, ws) == "open"
    assert served(ws, "prod", "model-0") is None


@pytest.mark.parametrize("bad", ["../bob", "bob smith", "bob/../x", "-bob"])
def test_as_must_be_a_name(capsys: Capsys, ws: Workspace, bad: str) -> None:
    err = refused(capsys, ws, "promote", "model-0", "--to", "prod", "--as", bad)
    assert f"--as {bad!r} is not a valid user name" in err
    assert mw_json(capsys, ws, "promotions")["promotions"] == []


def test_local_mode_audits_the_user_as_unauthenticated(capsys: Capsys, ws: Workspace) -> None:
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--as", " Alice")
    req = mw_json(capsys, ws, "approve", "1", "--as", "BOB")
    assert (req["state"], req["author"], req["approvals"]) == ("merged", "alice", ["bob"])
    events = mw_json(capsys, ws, "audit", "--action", "promotion.*")["events"]
    actors = {(e["action"], e["actor"]) for e in events}
    assert ("promotion.opened", "alice (unauthenticated)") in actors
    assert ("promotion.approved", "bob (unauthenticated)") in actors
    # Git keeps the plain, normalised name as the merge's author.
    assert _git.git(ws.deploy_repo, "log", "-1", "--format=%an").strip() == "bob"


# ---------------------------------------------------------------- token mode


def test_any_name_cannot_approve_in_token_mode(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    req = mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["alice"])
    assert req["author"] == "alice"

    err = refused(capsys, ws, "approve", "1", "--as", "bob")
    assert "MW_TOKEN" in err
    assert "--token" in err
    err = refused(capsys, ws, "approve", "1", "--as", "bob", "--token", tokens["carol"])
    assert "--as cannot be combined with a token" in err
    err = refused(capsys, ws, "approve", "1", "--token", tokens["alice"])
    assert "needs approver" in err  # alice is a developer; and she is the author anyway
    assert request_state(capsys, ws, tokens["vic"]) == "open"
    assert served(ws, "prod", "model-0") is None

    merged = mw_json(capsys, ws, "approve", "1", "--token", tokens["bob"])
    assert (merged["state"], merged["approvals"]) == ("merged", ["bob"])
    assert served(ws, "prod", "model-0") == served(ws, "test", "model-0")


def test_an_approver_cannot_approve_their_own_request(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["bob"])
    err = refused(capsys, ws, "approve", "1", "--token", tokens["bob"])
    assert "bob opened promotion request 1 and cannot approve it" in err
    assert request_state(capsys, ws, tokens["bob"]) == "open"


def test_roles_are_checked(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    err = refused(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["vic"])
    assert "vic has the viewer role (via token) and cannot promote to prod" in err
    assert "needs developer" in err
    assert mw_json(capsys, ws, "promotions", "--token", tokens["vic"])["promotions"] == []

    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["alice"])
    err = refused(capsys, ws, "approve", "1", "--token", tokens["carol"])
    assert "carol has the developer role" in err
    assert "needs approver" in err
    err = refused(capsys, ws, "reject", "1", "--reason", "no", "--token", tokens["carol"])
    assert "needs approver" in err
    err = refused(capsys, ws, "rollback", "model-0", "--env", "prod", "--token", tokens["carol"])
    assert "cannot roll back model-0 in prod" in err
    assert "needs approver" in err
    err = refused(capsys, ws, "apply", "--token", tokens["vic"])
    assert "cannot apply" in err
    err = refused(capsys, ws, "token", "create", "--user", "vic", "--role", "admin")
    assert "MW_TOKEN" in err
    err = refused(
        capsys, ws, "token", "create", "--user", "vic", "--role", "admin", "--token", tokens["bob"]
    )
    assert "bob has the approver role" in err
    assert "needs admin" in err
    assert request_state(capsys, ws, tokens["vic"]) == "open"


@pytest.mark.parametrize(
    ("args", "action"),
    [
        (["attest", "--env", "prod"], "cannot attest prod"),
        (["keys", "rotate"], "cannot rotate keys"),
        (["audit", "verify", "--accept-head"], "cannot accept the audit head"),
    ],
)
def test_signing_commands_need_admin(
    capsys: Capsys, ws: Workspace, args: list[str], action: str
) -> None:
    tokens = token_mode(capsys, ws)
    keys_before = sorted(p.name for p in (ws.root / "keys").iterdir())
    err = refused(capsys, ws, *args, "--token", tokens["bob"])
    assert action in err
    assert "needs admin" in err
    assert sorted(p.name for p in (ws.root / "keys").iterdir()) == keys_before


def test_read_commands_need_a_token_in_token_mode(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    err = refused(capsys, ws, "promotions")
    assert "auth.mode is 'token'" in err
    assert "MW_TOKEN" in err
    err = refused(capsys, ws, "promotions", "--token", "mw_not-a-real-token")
    assert "not valid" in err
    assert mw_json(capsys, ws, "promotions", "--token", tokens["vic"]) == {"promotions": []}


def test_mw_token_env_and_the_global_flag_are_the_same(
    capsys: Capsys, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = token_mode(capsys, ws)
    monkeypatch.setenv("MW_TOKEN", tokens["alice"])
    req = mw_json(capsys, ws, "promote", "model-0", "--to", "prod")
    assert req["author"] == "alice"
    # --token wins over MW_TOKEN for one command, and MW_TOKEN is as it was afterwards.
    assert mw_json(capsys, ws, "approve", "1", f"--token={tokens['bob']}")["state"] == "merged"
    assert os.environ["MW_TOKEN"] == tokens["alice"]
    monkeypatch.delenv("MW_TOKEN")
    mw(capsys, ws, "promotions", "--token", tokens["vic"])
    assert "MW_TOKEN" not in os.environ


def test_the_audit_log_names_the_tokens_user(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    mw_json(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["alice"])
    mw_json(capsys, ws, "approve", "1", "--token", tokens["bob"])
    events = mw_json(capsys, ws, "audit", "--token", tokens["vic"])["events"]
    by_action = {e["action"]: e["actor"] for e in events}
    assert by_action["promotion.opened"] == "alice"
    assert by_action["promotion.approved"] == "bob"
    assert by_action["promotion.merged"] == "bob"
    assert by_action["user.added"] == "root"
    # Only the bootstrap was done by whoever sat at the machine.
    assert [e["action"] for e in events if "unauthenticated" in e["actor"]] == ["token.created"]
    created = [e for e in events if e["action"] == "token.created"]
    assert created[0]["after"]["bootstrap"] is True
    assert {e["actor"] for e in created[1:]} == {"root"}


# ---------------------------------------------------------------- tokens


def test_a_token_is_shown_once_and_stored_only_as_its_hash(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    secret = tokens["alice"]
    assert secret.startswith("mw_")
    assert len(secret) >= 40
    listed = mw_json(capsys, ws, "token", "list", "--token", tokens["root"])["tokens"]
    assert secret not in json.dumps(listed)
    assert [t["user"] for t in listed] == ["root", "alice", "carol", "bob", "vic"]
    assert {t["state"] for t in listed} == {"active"}
    assert all(secret.startswith(t["name"]) for t in listed if t["user"] == "alice")
    code, out, _ = mw(capsys, ws, "token", "list", "--token", tokens["root"])
    assert code == 0
    assert secret not in out
    audit_text = json.dumps(mw_json(capsys, ws, "audit", "--token", tokens["root"]))
    assert not [t for t in tokens.values() if t in audit_text]

    # Read every file SQLite may have written to (the database and its WAL).
    db_files = list(Path(ws.state_dir).glob("registry.db*"))
    blob = b"".join(p.read_bytes() for p in db_files)
    assert hash_token(secret).encode() in blob
    for t in tokens.values():
        assert t.encode() not in blob


def test_expired_and_revoked_tokens_are_refused(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    assert mw_json(capsys, ws, "promotions", "--token", tokens["alice"]) == {"promotions": []}
    store = Store(ws.registry_url)
    with store.session() as s:
        row = s.query(Token).filter_by(user="alice").one()
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    err = refused(capsys, ws, "promotions", "--token", tokens["alice"])
    assert "expired at" in err

    short = mw_json(
        capsys,
        ws,
        *("token", "create", "--user", "carol", "--role", "developer", "--expires", "2h"),
        *("--token", tokens["root"]),
    )
    expires = datetime.fromisoformat(short["expires_at"])
    assert timedelta(hours=1, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=2)

    carol = next(
        t
        for t in mw_json(capsys, ws, "token", "list", "--token", tokens["root"])["tokens"]
        if t["user"] == "carol" and secret_is(t, tokens["carol"])
    )
    revoked = mw_json(capsys, ws, "token", "revoke", str(carol["id"]), "--token", tokens["root"])
    assert revoked["state"] == "revoked"
    err = refused(capsys, ws, "promote", "model-0", "--to", "prod", "--token", tokens["carol"])
    assert "was revoked" in err
    assert mw_json(capsys, ws, "promotions", "--token", short["token"]) == {"promotions": []}
    states = {
        t["id"]: t["state"]
        for t in mw_json(capsys, ws, "token", "list", "--token", tokens["root"])["tokens"]
    }
    assert states[carol["id"]] == "revoked"
    assert "expired" in states.values()

    err = refused(capsys, ws, "token", "revoke", "999", "--token", tokens["root"])
    assert "no token with id 999" in err
    err = refused(capsys, ws, "token", "create", "--user", "nobody", "--role", "viewer",
                  "--token", tokens["root"])  # fmt: skip
    assert "mw user add nobody" in err
    err = refused(capsys, ws, "token", "create", "--user", "vic", "--role", "owner",
                  "--token", tokens["root"])  # fmt: skip
    assert "unknown role 'owner'" in err
    err = refused(capsys, ws, "token", "create", "--user", "vic", "--role", "viewer",
                  "--expires", "forever", "--token", tokens["root"])  # fmt: skip
    assert "--expires 'forever' is not a duration" in err


def secret_is(row: dict[str, Any], secret: str) -> bool:
    return secret.startswith(row["name"])


def test_bootstrap_is_refused_once_an_admin_exists(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    before = mw_json(capsys, ws, "token", "list", "--token", tokens["root"])["tokens"]
    err = refused(capsys, ws, "token", "create", "--bootstrap", "--user", "mallory")
    assert "--bootstrap is refused" in err
    err = refused(
        capsys, ws, "token", "create", "--bootstrap", "--user", "mallory", "--token", tokens["root"]
    )
    assert "--bootstrap is refused" in err
    assert mw_json(capsys, ws, "token", "list", "--token", tokens["root"])["tokens"] == before
    users = mw_json(capsys, ws, "user", "list", "--token", tokens["root"])["users"]
    assert "mallory" not in {u["name"] for u in users}

    # Once the only admin token is revoked there is no admin, and bootstrap works again.
    mw_json(capsys, ws, "token", "revoke", str(before[0]["id"]), "--token", tokens["root"])
    again = mw_json(capsys, ws, "token", "create", "--bootstrap", "--user", "Mallory")
    assert (again["user"], again["role"]) == ("mallory", "admin")


def test_user_names_are_normalised_and_unique(capsys: Capsys, ws: Workspace) -> None:
    assert mw_json(capsys, ws, "user", "add", " Dana ")["name"] == "dana"
    err = refused(capsys, ws, "user", "add", "DANA")
    assert "user 'dana' exists already" in err
    err = refused(capsys, ws, "user", "add", "../etc")
    assert "user name '../etc' is not valid" in err
    err = refused(capsys, ws, "user", "add", "  ")
    assert "is not valid" in err
    assert [u["name"] for u in mw_json(capsys, ws, "user", "list")["users"]] == ["dana"]
    assert mw_json(capsys, ws, "user", "disable", "dana")["disabled"] is True


def test_a_disabled_users_tokens_stop_working(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    mw_json(capsys, ws, "user", "disable", "vic", "--token", tokens["root"])
    err = refused(capsys, ws, "promotions", "--token", tokens["vic"])
    assert "user 'vic' of token" in err
    assert "disabled" in err


def test_authenticate_bearer_over_the_registry(capsys: Capsys, ws: Workspace) -> None:
    tokens = token_mode(capsys, ws)
    ws = Workspace.load(ws.root)
    store = Store(ws.registry_url)
    bob = authenticate_bearer(ws, store, f"Bearer {tokens['bob']}")
    assert bob == Identity("bob", "approver", "default", True, "token")
    assert bob.audit_actor == "bob"
    assert authenticate_bearer(ws, store, f"bearer  {tokens['vic']} ").user == "vic"
    require(bob, "developer", "promote")
    with pytest.raises(Exception, match="needs admin"):
        require(bob, "admin", "create tokens")
    for header, message in [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        (f"Basic {tokens['bob']}", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("Bearer mw_" + "x" * 43, "not valid"),
        (f"Bearer {tokens['bob']}x", "not valid"),
        ("Bearer eyJhbGciOiJub25lIn0.e30.", "auth.oidc is not configured"),
        ("Bearer mw_" + "x" * 5000, "not a modelworks token"),
    ]:
        with pytest.raises(AuthenticationError, match=message) as info:
            authenticate_bearer(ws, store, header)
        assert info.value.status == 401
        assert tokens["bob"] not in str(info.value)


def test_token_lifecycle_on_each_registry_backend(registry_url: str) -> None:
    from modelworks.errors import ConflictError
    from modelworks.security.tokens import (
        bootstrap_token,
        create_token,
        list_tokens,
        revoke_token,
        verify_token,
    )
    from modelworks.security.users import add_user

    store = Store(registry_url)
    root = bootstrap_token(store, user="root", actor="setup")
    with pytest.raises(ConflictError, match="--bootstrap is refused"):
        bootstrap_token(store, user="eve", actor="eve")
    add_user(store, "alice", actor="root")
    dev = create_token(store, user="alice", role="developer", expires="1h", actor="root")
    assert verify_token(store, dev["token"]) == Identity(
        "alice", "developer", "default", True, "token"
    )
    with store.session() as s:
        row = s.get(Token, root["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    with pytest.raises(AuthenticationError, match="expired at"):
        verify_token(store, root["token"])
    # The only admin token expired: there is no admin, so a bootstrap is allowed again.
    again = bootstrap_token(store, user="root", actor="setup")
    revoke_token(store, dev["id"], actor="root")
    with pytest.raises(AuthenticationError, match="was revoked"):
        verify_token(store, dev["token"])
    states = [(t["user"], t["state"]) for t in list_tokens(store)]
    assert states == [("root", "expired"), ("alice", "revoked"), ("root", "active")]
    assert verify_token(store, again["token"]).role == "admin"
    store.close()
