"""Forge providers: who opens, merges and closes the request behind a promotion.

The promotion code pushes the branch; a provider only manages the request. `LocalForge`
keeps requests in a JSON file (or in memory) for workspaces without a forge; `GitHubForge`
opens real pull requests through the GitHub REST API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

import httpx
from filelock import FileLock

from modelworks.errors import ConfigError, DeployError, NotFoundError, did_you_mean

State = Literal["open", "merged", "closed"]
GITHUB_API = "https://api.github.com"
GITHUB_API_VERSION = "2022-11-28"
PROVIDERS = ("local", "github")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ForgeRequest:
    """A promotion request as the forge sees it."""

    id: str
    url: str | None
    state: State


@runtime_checkable
class ForgeProvider(Protocol):
    """Opens, merges and closes the request for a branch of the deploy repo."""

    name: str

    def open(self, *, branch: str, base: str, title: str, body: str) -> ForgeRequest: ...

    def merge(self, request_id: str, *, message: str) -> ForgeRequest: ...

    def close(self, request_id: str, *, comment: str | None = None) -> ForgeRequest: ...

    def get(self, request_id: str) -> ForgeRequest: ...


# ---------------------------------------------------------------- local


class LocalForge:
    """Requests kept by modelworks itself: in a JSON file under the state dir, or in memory.

    Transitions are checked like a forge does: only an open request merges or closes;
    merging a merged one or closing a closed one returns it unchanged (safe retries).
    """

    name = "local"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._memory: dict[str, Any] = {"next": 1, "requests": {}}

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return self._memory
        if not self.path.exists():
            return {"next": 1, "requests": {}}
        try:
            return cast(dict[str, Any], json.loads(self.path.read_text()))
        except json.JSONDecodeError as exc:
            raise DeployError(
                f"{self.path}: not valid JSON ({exc}); restore or delete it"
            ) from None

    def _save(self, data: dict[str, Any]) -> None:
        if self.path is None:
            self._memory = data
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def _locked(self) -> FileLock | _NoLock:
        return FileLock(f"{self.path}.lock") if self.path else _NoLock()

    @staticmethod
    def _request(rid: str, rec: dict[str, Any]) -> ForgeRequest:
        return ForgeRequest(id=rid, url=None, state=rec["state"])

    def _record(self, data: dict[str, Any], request_id: str) -> dict[str, Any]:
        rec = data["requests"].get(request_id)
        if rec is None:
            raise NotFoundError(f"no local promotion request {request_id!r}")
        return cast(dict[str, Any], rec)

    def open(self, *, branch: str, base: str, title: str, body: str) -> ForgeRequest:
        """Record a new open request for `branch` into `base`."""
        if not branch or not base or branch == base:
            raise DeployError(f"a request needs two different branches, got {branch!r} -> {base!r}")
        with self._locked():
            data = self._load()
            for rid, rec in data["requests"].items():
                if rec["branch"] == branch and rec["state"] == "open":
                    raise DeployError(f"request {rid} is already open for branch {branch!r}")
            rid = str(data["next"])
            data["next"] += 1
            data["requests"][rid] = {
                "branch": branch,
                "base": base,
                "title": title,
                "body": body,
                "state": "open",
                "comments": [],
            }
            self._save(data)
        return ForgeRequest(id=rid, url=None, state="open")

    def _transition(
        self, request_id: str, target: State, comment: str | None, message: str | None = None
    ) -> ForgeRequest:
        with self._locked():
            data = self._load()
            rec = self._record(data, request_id)
            if rec["state"] not in ("open", target):
                raise DeployError(
                    f"request {request_id} is {rec['state']}; only an open request can be {target}"
                )
            if comment:
                rec["comments"].append(comment)
            if message and rec["state"] == "open":
                rec["merge_message"] = message
            rec["state"] = target
            self._save(data)
        return self._request(request_id, rec)

    def merge(self, request_id: str, *, message: str) -> ForgeRequest:
        """Mark an open request merged (the promotion code merges the branch)."""
        return self._transition(request_id, "merged", None, message)

    def close(self, request_id: str, *, comment: str | None = None) -> ForgeRequest:
        """Mark an open request closed, keeping the comment."""
        return self._transition(request_id, "closed", comment)

    def get(self, request_id: str) -> ForgeRequest:
        """The request's current state."""
        return self._request(request_id, self._record(self._load(), request_id))

    def details(self, request_id: str) -> dict[str, Any]:
        """Everything recorded about a request (branch, base, title, body, comments)."""
        return dict(self._record(self._load(), request_id))


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ---------------------------------------------------------------- GitHub

_HINTS = {
    401: "the token was rejected; check the token variable (forge.token_env) is current",
    403: "the token lacks permission (pull requests and contents: write) or hit a rate limit",
    404: "the repository or pull request does not exist, or the token cannot see it",
    405: "the pull request is not mergeable (conflicts, required checks or reviews)",
    409: "the head branch moved since the request was opened; review and retry",
    422: "GitHub rejected the request's fields",
}


def _github_message(resp: httpx.Response) -> str:
    """GitHub's `message` plus each entry of `errors`, or the start of a non-JSON body."""
    try:
        payload = resp.json()
    except ValueError:
        return resp.text.strip()[:200] or resp.reason_phrase
    if not isinstance(payload, dict):
        return str(payload)[:200]
    message = str(payload.get("message") or resp.reason_phrase)
    details = []
    for err in payload.get("errors") or []:
        if isinstance(err, dict):
            where = ".".join(str(err[k]) for k in ("resource", "field") if err.get(k))
            details.append(err.get("message") or f"{where} {err.get('code', 'invalid')}".strip())
        else:
            details.append(str(err))
    return f"{message} ({'; '.join(details)})" if details else message


def _pr_state(pr: Mapping[str, Any]) -> State:
    if pr.get("merged") or pr.get("merged_at"):
        return "merged"
    return "open" if pr.get("state") == "open" else "closed"


class GitHubForge:
    """Pull requests on GitHub (or GitHub Enterprise through `api_url`), via the REST API."""

    name = "github"

    def __init__(
        self, repo: str, token: str, *, api_url: str = GITHUB_API, timeout: float = 10.0
    ) -> None:
        if not _REPO.match(repo):
            raise ConfigError(f"forge.repo must be 'owner/name', got {repo!r}")
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
            "User-Agent": "modelworks",
        }

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.api_url}/repos/{self.repo}{path}"
        try:
            with httpx.Client(headers=self._headers, timeout=self.timeout) as client:
                resp = client.request(method, url, json=body)
        except httpx.TimeoutException:
            raise DeployError(
                f"GitHub {method} {url} did not answer within {self.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise DeployError(f"cannot reach the GitHub API at {self.api_url}: {exc}") from None
        if resp.status_code >= 400:
            hint = _HINTS.get(resp.status_code, "unexpected answer from GitHub")
            raise DeployError(
                f"GitHub {method} /repos/{self.repo}{path} failed with {resp.status_code}: "
                f"{_github_message(resp)}; {hint}"
            )
        return resp.json() if resp.content else {}

    @staticmethod
    def _number(request_id: str) -> str:
        if not request_id.isdigit():
            raise DeployError(f"a GitHub pull request id is a number, got {request_id!r}")
        return request_id

    def _request(self, pr: Mapping[str, Any]) -> ForgeRequest:
        return ForgeRequest(id=str(pr["number"]), url=pr.get("html_url"), state=_pr_state(pr))

    def open(self, *, branch: str, base: str, title: str, body: str) -> ForgeRequest:
        """Open a pull request of `branch` into `base`."""
        pr = self._call(
            "POST", "/pulls", {"title": title, "head": branch, "base": base, "body": body}
        )
        return self._request(pr)

    def get(self, request_id: str) -> ForgeRequest:
        """The pull request's current state (merged when GitHub says so)."""
        return self._request(self._call("GET", f"/pulls/{self._number(request_id)}"))

    def merge(self, request_id: str, *, message: str) -> ForgeRequest:
        """Merge the pull request with a merge commit whose title is `message`'s first line."""
        number = self._number(request_id)
        title, _, rest = message.strip().partition("\n")
        body: dict[str, Any] = {"commit_title": title, "merge_method": "merge"}
        if rest.strip():
            body["commit_message"] = rest.strip()
        result = self._call("PUT", f"/pulls/{number}/merge", body)
        if not result.get("merged"):
            raise DeployError(
                f"GitHub did not merge pull request {number} of {self.repo}: "
                f"{result.get('message', 'no reason given')}"
            )
        return ForgeRequest(id=number, url=self.get(number).url, state="merged")

    def close(self, request_id: str, *, comment: str | None = None) -> ForgeRequest:
        """Close the pull request unmerged, commenting first when `comment` is given."""
        number = self._number(request_id)
        if comment:
            self._call("POST", f"/issues/{number}/comments", {"body": comment})
        return self._request(self._call("PATCH", f"/pulls/{number}", {"state": "closed"}))


# ---------------------------------------------------------------- settings

_GITHUB_KEYS = {"provider", "repo", "token_env", "api_url", "timeout"}


def _github_from_settings(forge: Mapping[str, Any], environ: Mapping[str, str]) -> GitHubForge:
    if "token" in forge:
        raise ConfigError(
            "forge.token: never put a token in modelworks.yaml; set "
            "forge.token_env to the name of an environment variable holding it"
        )
    unknown = sorted(set(forge) - _GITHUB_KEYS)
    if unknown:
        raise ConfigError(
            f"forge.{unknown[0]}: unknown setting for provider github; expected "
            f"{', '.join(sorted(_GITHUB_KEYS))}." + did_you_mean(unknown[0], _GITHUB_KEYS)
        )
    repo = forge.get("repo")
    if not isinstance(repo, str) or not repo:
        raise ConfigError("forge.repo is required for provider github, as 'owner/name'")
    token_env = str(forge.get("token_env") or "GITHUB_TOKEN")
    token = environ.get(token_env)
    if not token:
        raise ConfigError(
            f"forge provider github needs a token in the environment variable "
            f"{token_env}, which is not set; export a token that can write pull "
            f"requests to {repo}"
        )
    try:
        timeout = float(forge.get("timeout", 10.0))
    except (TypeError, ValueError):
        raise ConfigError(f"forge.timeout must be seconds, got {forge['timeout']!r}") from None
    api_url = str(forge.get("api_url") or GITHUB_API)
    return GitHubForge(repo, token, api_url=api_url, timeout=timeout)


def provider_from_settings(
    forge: Mapping[str, Any] | None, environ: Mapping[str, str], *, state_dir: Path | None = None
) -> ForgeProvider:
    """The provider the `forge` section of modelworks.yaml asks for; none means local.

    {"provider": "github", "repo": "owner/name", "token_env": "GITHUB_TOKEN", "api_url": ...}.
    A local forge keeps its requests in `state_dir`/forge-requests.json (memory without one).
    """
    forge = forge or {}
    provider = str(forge.get("provider") or "local")
    if provider == "local":
        return LocalForge(state_dir / "forge-requests.json" if state_dir else None)
    if provider == "github":
        return _github_from_settings(forge, environ)
    raise ConfigError(
        f"forge.provider {provider!r} is not supported; expected one of "
        f"{', '.join(PROVIDERS)}." + did_you_mean(provider, set(PROVIDERS))
    )


def as_dict(request: ForgeRequest) -> dict[str, Any]:
    """A request as plain JSON-able data (for --json output and the API)."""
    return asdict(request)
