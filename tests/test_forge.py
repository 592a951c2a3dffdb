"""Forge providers: LocalForge on real files; GitHubForge against a real HTTP server on
127.0.0.1 that emulates the GitHub REST endpoints it uses and checks every request."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelworks.errors import ConfigError, DeployError, NotFoundError
from modelworks.gitops.forge import (
    ForgeProvider,
    ForgeRequest,
    GitHubForge,
    LocalForge,
    provider_from_settings,
)

REPO = "acme/deploy"
TOKEN = "ghp_test_token"
DOCS = "https://docs.github.com/rest/pulls/pulls"


class FakeGitHub:
    """The state and the recorded calls of the emulated GitHub."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.pulls: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[str]] = {}
        self.branches = {"main", "promote/prod-1", "promote/prod-2"}
        self.unmergeable: set[int] = set()
        self.moved: set[int] = set()

    def pr(self, number: int) -> dict[str, Any]:
        return self.pulls[number]

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.calls.append({"method": method, "path": path, "headers": headers, "body": body})
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        if (
            headers.get("accept") != "application/vnd.github+json"
            or headers.get("x-github-api-version") != "2022-11-28"
        ):
            return 400, {"message": "missing GitHub API headers"}
        if body is not None and headers.get("content-type") != "application/json":
            return 415, {"message": "expected JSON"}
        prefix = f"/repos/{REPO}"
        if not path.startswith(prefix + "/"):
            return 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
        return self.route(method, path[len(prefix) :].strip("/").split("/"), body)

    def route(self, method: str, parts: list[str], body: Any) -> tuple[int, Any]:
        if parts == ["pulls"] and method == "POST":
            return self.create(body)
        if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in self.pulls:
            n = int(parts[1])
            if parts[0] == "pulls" and len(parts) == 2 and method == "GET":
                return 200, self.pulls[n]
            if parts[0] == "pulls" and len(parts) == 2 and method == "PATCH":
                self.pulls[n]["state"] = body["state"]
                return 200, self.pulls[n]
            if parts[0] == "pulls" and parts[2:] == ["merge"] and method == "PUT":
                return self.merge(n, body)
            if parts[0] == "issues" and parts[2:] == ["comments"] and method == "POST":
                self.comments.setdefault(n, []).append(body["body"])
                return 201, {"id": 1, "body": body["body"]}
        return 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}

    def create(self, body: dict[str, Any]) -> tuple[int, Any]:
        missing = [k for k in ("title", "head", "base") if not body.get(k)]
        if missing or body["head"] not in self.branches:
            field = missing[0] if missing else "head"
            return 422, {
                "message": "Validation Failed",
                "documentation_url": DOCS,
                "status": "422",
                "errors": [
                    {
                        "resource": "PullRequest",
                        "field": field,
                        "code": "missing_field" if missing else "invalid",
                    }
                ],
            }
        if any(
            p["head"]["ref"] == body["head"] and p["state"] == "open" for p in self.pulls.values()
        ):
            return 422, {
                "message": "Validation Failed",
                "documentation_url": DOCS,
                "status": "422",
                "errors": [
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for acme:{body['head']}.",
                    }
                ],
            }
        n = len(self.pulls) + 1
        self.pulls[n] = {
            "number": n,
            "html_url": f"https://github.com/{REPO}/pull/{n}",
            "state": "open",
            "merged": False,
            "merged_at": None,
            "title": body["title"],
            "body": body.get("body"),
            "head": {"ref": body["head"]},
            "base": {"ref": body["base"]},
        }
        return 201, self.pulls[n]

    def merge(self, n: int, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("merge_method") not in ("merge", "squash", "rebase"):
            return 422, {"message": "Invalid merge_method", "status": "422"}
        if n in self.moved:
            return 409, {
                "message": "Head branch was modified. Review and try the merge again.",
                "documentation_url": DOCS,
                "status": "409",
            }
        if n in self.unmergeable or self.pulls[n]["state"] != "open":
            return 405, {
                "message": "Pull Request is not mergeable",
                "documentation_url": DOCS,
                "status": "405",
            }
        self.pulls[n].update(state="closed", merged=True, merged_at="2026-11-23T12:00:00Z")
        return 200, {
            "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "merged": True,
            "message": "Pull Request successfully merged",
        }


def _handler(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def forge(url: str, token: str = TOKEN) -> GitHubForge:
    return GitHubForge(REPO, token, api_url=url, timeout=5.0)


def test_github_open_merge(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    gh = forge(url)
    assert isinstance(gh, ForgeProvider)
    req = gh.open(
        branch="promote/prod-1",
        base="main",
        title="Promote 3 models to prod",
        body="| model | accuracy |\n|---|---|",
    )
    assert req == ForgeRequest(id="1", url=f"https://github.com/{REPO}/pull/1", state="open")
    call = fake.calls[0]
    assert (call["method"], call["path"]) == ("POST", f"/repos/{REPO}/pulls")
    assert call["body"] == {
        "title": "Promote 3 models to prod",
        "head": "promote/prod-1",
        "base": "main",
        "body": "| model | accuracy |\n|---|---|",
    }
    assert call["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert call["headers"]["accept"] == "application/vnd.github+json"
    assert call["headers"]["x-github-api-version"] == "2022-11-28"

    merged = gh.merge("1", message="Promote 3 models to prod\n\nApproved by alice")
    assert merged == ForgeRequest(id="1", url=f"https://github.com/{REPO}/pull/1", state="merged")
    put = fake.calls[1]
    assert (put["method"], put["path"]) == ("PUT", f"/repos/{REPO}/pulls/1/merge")
    assert put["body"] == {
        "commit_title": "Promote 3 models to prod",
        "commit_message": "Approved by alice",
        "merge_method": "merge",
    }
    assert fake.pr(1)["merged"] is True
    assert gh.get("1").state == "merged"


def test_github_close_with_comment(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    gh = forge(url)
    gh.open(branch="promote/prod-2", base="main", title="t", body="b")
    closed = gh.close("1", comment="Rejected: accuracy regressed")
    assert closed.state == "closed"
    assert [(c["method"], c["path"], c["body"]) for c in fake.calls[1:]] == [
        ("POST", f"/repos/{REPO}/issues/1/comments", {"body": "Rejected: accuracy regressed"}),
        ("PATCH", f"/repos/{REPO}/pulls/1", {"state": "closed"}),
    ]
    assert fake.comments[1] == ["Rejected: accuracy regressed"]
    assert gh.close("1").state == "closed"  # no comment: only the PATCH
    assert fake.calls[-1]["method"] == "PATCH"


def test_github_422_names_githubs_errors(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    gh = forge(url)
    gh.open(branch="promote/prod-1", base="main", title="t", body="b")
    with pytest.raises(
        DeployError,
        match=r"failed with 422: Validation Failed \(A pull request "
        r"already exists for acme:promote/prod-1\.\)",
    ):
        gh.open(branch="promote/prod-1", base="main", title="t", body="b")
    with pytest.raises(DeployError, match=r"422: Validation Failed \(PullRequest\.head invalid\)"):
        gh.open(branch="no-such-branch", base="main", title="t", body="b")
    assert len(fake.pulls) == 1


def test_github_401_bad_token(github: tuple[FakeGitHub, str]) -> None:
    _, url = github
    with pytest.raises(
        DeployError,
        match=r"failed with 401: Bad credentials; the token was "
        r"rejected",
    ) as exc:
        forge(url, token="expired").open(branch="promote/prod-1", base="main", title="t", body="")
    assert "expired" not in str(exc.value)


def test_github_405_and_409_on_merge(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    gh = forge(url)
    gh.open(branch="promote/prod-1", base="main", title="t", body="")
    fake.unmergeable.add(1)
    with pytest.raises(DeployError, match=r"405: Pull Request is not mergeable; .*conflicts"):
        gh.merge("1", message="m")
    fake.unmergeable.clear()
    fake.moved.add(1)
    with pytest.raises(DeployError, match=r"409: Head branch was modified"):
        gh.merge("1", message="m")
    assert fake.pr(1)["state"] == "open"


def test_github_404_wrong_repo_or_request(github: tuple[FakeGitHub, str]) -> None:
    _, url = github
    other = GitHubForge("acme/other", TOKEN, api_url=url)
    with pytest.raises(DeployError, match=r"POST /repos/acme/other/pulls failed with 404"):
        other.open(branch="promote/prod-1", base="main", title="t", body="")
    with pytest.raises(DeployError, match=r"404: Not Found"):
        forge(url).get("99")
    with pytest.raises(DeployError, match=r"is a number, got 'abc'"):
        forge(url).merge("abc", message="m")


def test_github_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gh = GitHubForge(REPO, TOKEN, api_url=f"http://127.0.0.1:{port}", timeout=2.0)
    with pytest.raises(
        DeployError, match=rf"cannot reach the GitHub API at http://127.0.0.1:{port}"
    ):
        gh.open(branch="b", base="main", title="t", body="")


def test_github_timeout() -> None:
    with socket.socket() as s:  # listens but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        gh = GitHubForge(REPO, TOKEN, api_url=f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.3)
        with pytest.raises(DeployError, match=r"did not answer within 0.3s"):
            gh.get("1")


def test_github_repo_must_be_owner_name() -> None:
    with pytest.raises(ConfigError, match=r"forge.repo must be 'owner/name'"):
        GitHubForge("https://github.com/acme/deploy", TOKEN)


def test_local_forge_persists_and_checks_transitions(tmp_path: Path) -> None:
    path = tmp_path / ".mw" / "forge-requests.json"
    local = LocalForge(path)
    assert isinstance(local, ForgeProvider)
    a = local.open(branch="promote/prod-1", base="main", title="A", body="a")
    b = local.open(branch="promote/prod-2", base="main", title="B", body="b")
    assert (a, b) == (ForgeRequest("1", None, "open"), ForgeRequest("2", None, "open"))
    with pytest.raises(DeployError, match="request 1 is already open for branch 'promote/prod-1'"):
        local.open(branch="promote/prod-1", base="main", title="A again", body="")

    again = LocalForge(path)  # a new process sees the same requests
    assert again.merge("1", message="ok").state == "merged"
    assert again.merge("1", message="ok").state == "merged"  # retry is harmless
    assert again.close("2", comment="not now").state == "closed"
    assert again.details("2")["comments"] == ["not now"]
    assert again.details("1")["merge_message"] == "ok"
    with pytest.raises(DeployError, match="request 2 is closed; only an open request can be m"):
        again.merge("2", message="m")
    with pytest.raises(DeployError, match="request 1 is merged; only an open request can be c"):
        again.close("1")
    with pytest.raises(NotFoundError, match="no local promotion request '7'"):
        again.get("7")
    assert json.loads(path.read_text())["requests"]["1"]["state"] == "merged"


def test_local_forge_in_memory_and_bad_branches() -> None:
    local = LocalForge()
    assert local.open(branch="p", base="main", title="t", body="").id == "1"
    assert local.get("1").state == "open"
    with pytest.raises(DeployError, match="two different branches"):
        local.open(branch="main", base="main", title="t", body="")


def test_provider_from_settings(tmp_path: Path) -> None:
    local = provider_from_settings(None, {}, state_dir=tmp_path)
    assert isinstance(local, LocalForge)
    assert local.path == tmp_path / "forge-requests.json"
    gh = provider_from_settings(
        {
            "provider": "github",
            "repo": REPO,
            "token_env": "MW_GH",
            "api_url": "http://127.0.0.1:9/",
        },
        {"MW_GH": TOKEN},
    )
    assert isinstance(gh, GitHubForge)
    assert (gh.name, gh.repo, gh.api_url) == ("github", REPO, "http://127.0.0.1:9")


def test_provider_from_settings_errors() -> None:
    with pytest.raises(ConfigError, match="environment variable GITHUB_TOKEN, which is not set"):
        provider_from_settings({"provider": "github", "repo": REPO}, {})
    with pytest.raises(ConfigError, match="variable MY_TOKEN, which is not set"):
        provider_from_settings(
            {"provider": "github", "repo": REPO, "token_env": "MY_TOKEN"}, {"GITHUB_TOKEN": "x"}
        )
    with pytest.raises(ConfigError, match=r"never put a token in modelworks.yaml"):
        provider_from_settings({"provider": "github", "repo": REPO, "token": "x"}, {})
    with pytest.raises(ConfigError, match=r"forge.repo is required"):
        provider_from_settings({"provider": "github"}, {"GITHUB_TOKEN": "x"})
    with pytest.raises(ConfigError, match=r"'githib' is not supported.*Did you mean 'github'"):
        provider_from_settings({"provider": "githib"}, {})
    with pytest.raises(ConfigError, match=r"forge.api: unknown setting.*Did you mean 'api_url'"):
        provider_from_settings({"provider": "github", "repo": REPO, "api": "x"}, {})
