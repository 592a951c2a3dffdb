"""The `mw` command line: thin adapters over the library, one error rendering at the top."""

from __future__ import annotations

import contextvars
import json
import os
import sys
from importlib import import_module
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="mw",
    help="modelworks: a GitOps model factory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands on `app`; imports stay lazy inside the commands
# so that `mw plan` starts fast.
COMMAND_MODULES = [
    "core",
    "gitops",
    "serve",
    "server",
    "supply",
    "monitor",
    "controller",
    "admin",
    "gc",
    "fsck",
    "tenant",
]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("modelworks")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from modelworks import __version__ as found
        sys.stdout.write(f"mw (modelworks) {found}\n")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """modelworks: a GitOps model factory."""


def emit_json(payload: Any) -> None:
    """Write one JSON document to stdout (the `--json` contract): indented for a terminal,
    compact for a pipe or file (9,000 models: indenting cost a quarter of `mw plan`)."""
    indent = 2 if sys.stdout.isatty() else None
    separators = None if indent else (",", ":")
    sys.stdout.write(json.dumps(payload, indent=indent, separators=separators, default=str) + "\n")


_registered = False


def _register_all() -> None:
    global _registered
    if not _registered:
        from importlib.util import find_spec

        from modelworks.cli._help import hide_flag_types

        hide_flag_types()
        for name in COMMAND_MODULES:
            if find_spec(f"modelworks.cli.{name}") is not None:
                import_module(f"modelworks.cli.{name}").register(app)
        _registered = True


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, render ModelworksError as one red line and its exit code."""
    from modelworks.errors import EXIT_BUG, EXIT_USAGE, ModelworksError, StateError

    _register_all()
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or os.environ.get("MW_VERBOSE") == "1"
    args = [a for a in args if a != "--verbose"]
    saved_token = os.environ.get("MW_TOKEN")
    try:
        args = _take_token(args)
        # A fresh context per run: what one command sets (audit labels) ends with it.
        rv = contextvars.copy_context().run(app, args=args, prog_name="mw", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except ModelworksError as exc:
        _fail(str(exc), exc.exit_code, verbose)
    except KeyboardInterrupt:
        _fail("interrupted", 130, verbose)
    except OSError as exc:
        if not exc.filename:
            _fail(_unexpected(exc), EXIT_BUG, verbose)
        # A read-only .mw, a full disk, a file where a folder belongs: the machine, not a bug.
        _fail(_state_error(exc), StateError.exit_code, verbose)
    except Exception as exc:  # click's own usage errors come through here too
        exit_types, usage_types, abort_types = _click_types()
        if isinstance(exc, exit_types):
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, usage_types):
            exc.show()  # type: ignore[attr-defined]
            # click exits 2 on a usage error; 2 is ours ("changes found"): usage has its own code
            sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, abort_types):
            _fail("aborted", 1, verbose)
        _fail(_unexpected(exc), EXIT_BUG, verbose)
    finally:
        _restore_env("MW_TOKEN", saved_token)


def _unexpected(exc: BaseException) -> str:
    return (
        f"unexpected error: {type(exc).__name__}: {exc} "
        "(this is a bug in modelworks; run with --verbose and report it)"
    )


def _state_error(exc: OSError) -> str:
    return (
        f"cannot read or write {exc.filename}: {exc.strerror} "
        "(check that it is a folder or file you may write, and the free disk space)"
    )


def _take_token(args: list[str]) -> list[str]:
    """Move a global `--token T` (or `--token=T`) into MW_TOKEN; return the other args."""
    from modelworks.errors import ConfigError

    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--token":
            value = next(it, None)
            if value is None or not value.strip():
                raise ConfigError("--token needs a value: --token <token> (or set MW_TOKEN)")
            os.environ["MW_TOKEN"] = value
        elif arg.startswith("--token="):
            os.environ["MW_TOKEN"] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _click_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """click's Exit/ClickException/Abort, and typer's vendored copies of them where it has one."""
    import click

    mods: list[Any] = [click.exceptions]
    try:
        from typer._click import exceptions as vendored  # typer >= 0.29 ships its own click

        mods.append(vendored)
    except ImportError:
        pass

    def found(name: str) -> tuple[type, ...]:
        return tuple(getattr(m, name) for m in mods if hasattr(m, name))

    return found("Exit"), found("ClickException"), found("Abort")


def _fail(message: str, code: int, verbose: bool) -> NoReturn:
    from rich.markup import escape

    from modelworks._console import err_console

    if verbose:
        err_console.print_exception()
    # The message is data (paths, patterns like [a-z0-9], a pipeline's own text), not markup.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
