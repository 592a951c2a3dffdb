"""OIDC: real JWTs signed by key pairs the test makes, a JWKS served over loopback.

The provider is played by an http.server thread on 127.0.0.1 serving /jwks.json; PyJWT
checks the signature, exp, aud and iss, as it would against Keycloak or Dex.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from modelworks import _git
from modelworks.errors import AuthenticationError, ConfigError, PermissionDeniedError
from modelworks.registry.store import Store
from modelworks.security.identity import Identity, authenticate_bearer
from modelworks.testing import make_workspace, run_cli
from modelworks.workspace import CONFIG_FILE, Workspace

ISSUER = "https://idp.example.test/realms/ml"
AUDIENCE = "modelworks"


class JWKSServer:
    """A JWKS endpoint on loopback that counts its requests."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JWKSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    return {**algorithm.to_jwk(public_key, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def idp(rsa_key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    with JWKSServer({"keys": [jwk(rsa_key.public_key(), "k1", "RS256")]}) as server:
        yield server


def oidc_workspace(root: Path, mode: str = "local", **oidc: Any) -> Workspace:
    cfg = {"issuer": ISSUER, "audience": AUDIENCE, **oidc}
    return make_workspace(root, auth={"mode": mode, "oidc": cfg})


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f3a1c2d4-0000-4000-8000-000000000001",
        "preferred_username": "Alice",
        "roles": ["offline_access", "viewer", "approver"],
        "iat": now,
        "exp": now + 300,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, body: dict[str, Any], kid: str = "k1", alg: str = "RS256") -> str:
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def test_a_good_jwt_is_accepted_and_its_roles_mapped(
    tmp_path: Path, idp: JWKSServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = oidc_workspace(tmp_path / "ws", jwks_url=idp.url)
    store = Store(ws.registry_url)
    token = sign(rsa_key, claims())
    who = authenticate_bearer(ws, store, f"Bearer {token}")
    assert who == Identity("alice", "approver", "default", True, "oidc")
    assert who.audit_actor == "alice"
    # The key set is fetched once and cached, not once per request.
    authenticate_bearer(ws, store, f"Bearer {sign(rsa_key, claims(roles=['default:admin']))}")
    assert idp.hits == 1
    no_name = sign(rsa_key, claims(preferred_username=None, roles="developer"))
    assert authenticate_bearer(ws, store, f"Bearer {no_name}") == Identity(
        "f3a1c2d4-0000-4000-8000-000000000001", "developer", "default", True, "oidc"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (claims(exp=int(time.time()) - 3600), "the JWT has expired"),
        (claims(aud="another-client"), "Audience doesn't match"),
        (claims(iss="https://evil.example.test/realms/ml"), "Invalid issuer"),
        (claims(exp=None), 'missing the "exp" claim'),
        (claims(aud=None), 'missing the "aud" claim'),
    ],
)
def test_expired_wrong_audience_and_wrong_issuer_are_refused(
    tmp_path: Path, idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, body: dict[str, Any], message: str
) -> None:
    ws = oidc_workspace(tmp_path / "ws", jwks_url=idp.url)
    with pytest.raises(AuthenticationError, match=message) as info:
        authenticate_bearer(ws, None, f"Bearer {sign(rsa_key, body)}")
    assert info.value.status == 401


def test_a_bad_signature_is_refused(
    tmp_path: Path, idp: JWKSServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = oidc_workspace(tmp_path / "ws", jwks_url=idp.url)
    forged = sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), claims())
    with pytest.raises(AuthenticationError, match="Signature verification failed"):
        authenticate_bearer(ws, None, f"Bearer {forged}")
    # The real token with its payload swapped keeps a signature that no longer matches.
    head, _, sig = sign(rsa_key, claims()).split(".")
    other = sign(rsa_key, claims(roles=["admin"])).split(".")[1]
    with pytest.raises(AuthenticationError, match="Signature verification failed"):
        authenticate_bearer(ws, None, f"Bearer {head}.{other}.{sig}")
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError, match="not valid"):
        authenticate_bearer(ws, None, f"Bearer {unsigned}")
    with pytest.raises(AuthenticationError, match="Unable to find a signing key"):
        authenticate_bearer(ws, None, f"Bearer {sign(rsa_key, claims(), kid='k9')}")
    with pytest.raises(AuthenticationError, match=r"malformed|not valid|signing key"):
        authenticate_bearer(ws, None, "Bearer not.a.jwt")


def test_es256_from_a_jwks_file(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = oidc_workspace(tmp_path / "ws", jwks_file="idp-jwks.json")
    keys = [jwk(ec_key.public_key(), "e1", "ES256"), jwk(rsa_key.public_key(), "k1", "RS256")]
    (ws.root / "idp-jwks.json").write_text(json.dumps({"keys": keys}))
    token = sign(ec_key, claims(roles=["developer"]), kid="e1", alg="ES256")
    assert authenticate_bearer(ws, None, f"Bearer {token}").role == "developer"
    # Only RS256 and ES256: a valid RSA signature under RS512 is still refused.
    rs512 = sign(rsa_key, claims(), kid="k1", alg="RS512")
    with pytest.raises(AuthenticationError, match="not valid"):
        authenticate_bearer(ws, None, f"Bearer {rs512}")


def test_roles_claim_mapping(tmp_path: Path, idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    ws = oidc_workspace(tmp_path / "ws", jwks_url=idp.url, roles_claim="realm_access.roles")

    def role(roles: Any) -> str:
        token = sign(rsa_key, claims(roles=None, realm_access={"roles": roles}))
        return authenticate_bearer(ws, None, f"Bearer {token}").role

    assert role(["uma_authorization", "developer"]) == "developer"
    assert role(["viewer", "default:admin", "approver"]) == "admin"
    assert role("viewer APPROVER") == "approver"
    assert role(["team-a:admin", "viewer"]) == "viewer"  # another tenant's role is not ours
    for nothing in (["team-a:admin"], [], "owner", {"admin": True}):
        with pytest.raises(PermissionDeniedError, match=r"realm_access\.roles"):
            role(nothing)


def test_an_unreachable_jwks_is_a_401_not_a_crash(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    with JWKSServer({"keys": []}) as gone:
        url = gone.url
    ws = oidc_workspace(tmp_path / "ws", jwks_url=url)
    with pytest.raises(AuthenticationError, match="cannot get the signing key"):
        authenticate_bearer(ws, None, f"Bearer {sign(rsa_key, claims())}")


def test_a_jwt_works_on_the_cli_in_token_mode(
    tmp_path: Path,
    idp: JWKSServer,
    rsa_key: rsa.RSAPrivateKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MW_TOKEN", raising=False)
    ws = oidc_workspace(tmp_path / "ws", mode="token", jwks_url=idp.url)
    viewer = sign(rsa_key, claims(roles=["viewer"]))
    code, out, err = run_cli(capsys, "promotions", "--json", "--token", viewer, "-C", str(ws.root))
    assert code == 0, err
    assert json.loads(out) == {"promotions": []}
    code, _, err = run_cli(capsys, "promote", "m", "--token", viewer, "-C", str(ws.root))
    assert code == 77  # permission denied (README: exit codes)
    assert "alice has the viewer role (via oidc) and cannot promote to prod" in err
    expired = sign(rsa_key, claims(exp=int(time.time()) - 600))
    code, _, err = run_cli(capsys, "promotions", "--token", expired, "-C", str(ws.root))
    assert code == 77  # authentication (README: exit codes)
    assert "the JWT has expired" in err
    assert "Traceback" not in err


def test_oidc_settings_need_exactly_one_key_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = make_workspace(tmp_path / "ws")
    cfg = yaml.safe_load((ws.root / CONFIG_FILE).read_text())
    cfg["auth"] = {"oidc": {"issuer": ISSUER, "audience": AUDIENCE}}
    (ws.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    _git.commit(ws.root, [CONFIG_FILE], "oidc without keys")
    with pytest.raises(ConfigError, match=r"auth\.oidc.*exactly one of jwks_url and jwks_file"):
        Workspace.load(ws.root)
    code, _, err = run_cli(capsys, "promotions", "-C", str(ws.root))
    assert code == 78  # configuration (README: exit codes)
    assert "exactly one of jwks_url and jwks_file" in err
