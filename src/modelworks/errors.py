"""One error hierarchy for the whole line: the CLI, the API and the server render it."""

from __future__ import annotations

from difflib import get_close_matches
from typing import ClassVar


class ModelworksError(Exception):
    """Base of every error the line raises on purpose; the message says what to do."""

    exit_code: ClassVar[int] = 1
    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ModelworksError):
    """modelworks.yaml or an environment override is wrong."""


class SpecError(ModelworksError):
    """A model spec is invalid; names the file and the field."""

    def __init__(self, path: str, message: str, field: str | None = None) -> None:
        where = f"{path}: field '{field}'" if field else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.field = field


class DataError(ModelworksError):
    """A dataset, pointer file or data hash cannot be resolved."""


class PipelineError(ModelworksError):
    """A training pipeline is missing, changed without a version bump, or failed."""


class PlanError(ModelworksError):
    """The plan cannot be computed."""


class RegistryError(ModelworksError):
    """The registry database is unreachable or inconsistent."""


class NotFoundError(ModelworksError):
    """A named model, version, run or request does not exist."""

    status: ClassVar[int] = 404


class ConflictError(ModelworksError):
    """The operation conflicts with newer work (a lock is held, a base moved)."""

    status: ClassVar[int] = 409


class LockError(ConflictError):
    """Another process holds the workspace lock."""

    exit_code: ClassVar[int] = 3


class ArtifactError(ModelworksError):
    """An OCI artifact cannot be written, read or pushed."""


class VerificationError(ArtifactError):
    """A blob digest or signature does not verify: the artifact must not be loaded."""

    status: ClassVar[int] = 422


class ScanError(ArtifactError):
    """Model files are not verified safe to load."""


class GitError(ModelworksError):
    """A git operation failed."""


class DeployError(ModelworksError):
    """A deployment, promotion or rollback cannot be carried out."""


class PermissionDeniedError(ModelworksError):
    """The caller's role does not allow the operation."""

    status: ClassVar[int] = 403


class AuthenticationError(ModelworksError):
    """No credentials, or a token that is unknown, expired or revoked."""

    status: ClassVar[int] = 401


class ServingError(ModelworksError):
    """The inference server cannot serve a request."""


def did_you_mean(name: str, choices: list[str] | set[str]) -> str:
    """Return ' Did you mean X?' when a close match exists, else ''."""
    match = get_close_matches(name, sorted(choices), n=1)
    return f" Did you mean '{match[0]}'?" if match else ""
