"""One error hierarchy for the whole line: the CLI, the API and the server render it."""

from __future__ import annotations

from difflib import get_close_matches
from typing import ClassVar


class ModelworksError(Exception):
    """Base of every error the line raises on purpose; the message says what to do.

    Each family has its own CLI exit code (`EXIT_CODES`, the README's table; the numbers above
    3 follow BSD sysexits.h, as 70 for a bug does); a subclass inherits its family's code.
    """

    exit_code: ClassVar[int] = 1
    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ModelworksError):
    """An argument, a name or a setting is wrong (names what and where)."""


class SettingsError(ConfigError):
    """modelworks.yaml, an MW_* variable or the registry URL cannot be used as it is."""

    exit_code: ClassVar[int] = 78


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

    exit_code: ClassVar[int] = 77
    status: ClassVar[int] = 403


class AuthenticationError(ModelworksError):
    """No credentials, or a token that is unknown, expired or revoked."""

    exit_code: ClassVar[int] = 77
    status: ClassVar[int] = 401


class UnavailableError(ModelworksError):
    """A port to listen on is taken, or a service the line needs does not answer."""

    exit_code: ClassVar[int] = 69
    status: ClassVar[int] = 503


class StateError(ModelworksError):
    """A file or folder of the workspace cannot be read or written (permissions, disk full)."""

    exit_code: ClassVar[int] = 74
    status: ClassVar[int] = 503


class ServingError(ModelworksError):
    """The inference server cannot serve a request."""


def did_you_mean(name: str, choices: list[str] | set[str]) -> str:
    """Return ' Did you mean X?' when a close match exists, else ''."""
    match = get_close_matches(name, sorted(choices), n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


# The CLI's exit codes, one per failure family, each with the words its README.md "Exit codes"
# row starts with (a test compares the two). 0, 1, 2, 3 and 70 are a public contract.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "an error",
    2: "changes found",
    3: "locked",
    64: "usage",
    69: "unavailable",
    70: "an unexpected error",
    74: "state",
    77: "permission",
    78: "configuration",
}
EXIT_BUG = 70
EXIT_USAGE = 64
