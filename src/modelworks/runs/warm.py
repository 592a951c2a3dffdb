"""A warm process that forks the workers: started when an apply starts, it imports what
training needs (sklearn, skops, model_signing, the environment's SBOM) while the parent
plans, so the plan does not wait for imports and the workers start warm.

The warm process (a child of the apply) forks each worker on request and hands the parent
the worker's end of a fresh pipe over a Unix socket. It reaps its workers and reports each
exit code, so the pool can kill, join and replace a worker as it does its own children.
If the parent dies, the warm process and the workers see their pipes close and exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

REAP_SECONDS = 0.05


def _serve_forked(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """In a worker forked by the warm process: run jobs until told to stop."""
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt, OSError):
            return
        if job is None:
            return
        conn.send(fn(job))


def _fork_worker(ctl: Connection, fd: int, fn: Callable[[Any], Any]) -> int:
    pid = os.fork()
    if pid:
        os.close(fd)
        return pid
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ctl.close()  # only the warm process talks to the parent on this one
        _serve_forked(Connection(fd), fn)
    except BaseException:  # a worker never returns into the warm process's loop
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return 0  # unreachable


def _main(ctl: Connection, fn: Callable[[Any], Any], warm: Callable[[], None]) -> None:
    """The warm process: warm up, then fork a worker per request and report exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the apply, which stops us
    with contextlib.suppress(Exception):  # then workers import on their own, errors and all
        warm()
    children: set[int] = set()
    while True:
        try:
            ready = ctl.poll(REAP_SECONDS if children else None)
            if ready:
                msg = ctl.recv()
                if msg is None:
                    break
                fd = reduction.recv_handle(ctl)
                pid = _fork_worker(ctl, fd, fn)
                children.add(pid)
                ctl.send(("pid", pid))
            _reap(ctl, children)
        except (EOFError, OSError):
            break
    deadline = time.monotonic() + 5
    while children and time.monotonic() < deadline:
        with contextlib.suppress(OSError, EOFError):
            _reap(ctl, children)
        time.sleep(REAP_SECONDS)


def _reap(ctl: Connection, children: set[int]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        ctl.send(("exit", pid, os.waitstatus_to_exitcode(status)))


class WarmProcess:
    """The parent's side: start it, ask it for workers, stop it."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any], warm: Callable[[], None]) -> None:
        self.ctx = ctx
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(child, fn, warm), daemon=True)
        self.proc.start()
        child.close()
        self.conn: Connection = parent
        self.exits: dict[int, int] = {}
        self.used = False

    def spawn(self) -> tuple[Forked, Connection]:
        """A new warm worker and the parent's end of its pipe."""
        self.used = True
        mine, theirs = self.ctx.Pipe()
        try:
            self.conn.send("fork")
            reduction.send_handle(self.conn, theirs.fileno(), self.proc.pid)
        finally:
            theirs.close()
        while True:
            msg = self.conn.recv()
            if msg[0] == "pid":
                return Forked(self, msg[1]), mine
            self.exits[msg[1]] = msg[2]

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The worker's exit code once the warm process reaped it (None: still running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.exits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if not self.conn.poll(left):
                    return None
                msg = self.conn.recv()
            except (EOFError, OSError):
                return self.exits.get(pid, -signal.SIGKILL)  # the warm process is gone
            if msg[0] == "exit":
                self.exits[msg[1]] = msg[2]
        return self.exits[pid]

    def close(self) -> None:
        """Stop the warm process (its workers must have been shut down first). One that never
        forked a worker (nothing to train) is killed at once, even mid warm-up."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5 if self.used else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class Forked:
    """A worker forked by the warm process, with the slice of the Process API the pool uses."""

    def __init__(self, warm: WarmProcess, pid: int) -> None:
        self.warm, self.pid = warm, pid

    @property
    def exitcode(self) -> int | None:
        return self.warm.exit_code(self.pid, 0)

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self.warm.exit_code(self.pid, timeout)

    def kill(self) -> None:
        if self.pid in self.warm.exits:  # reaped: the pid may belong to someone else now
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
