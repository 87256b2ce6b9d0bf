"""A benchmark server's tie to the process that started it: a pipe it watches.

The parent makes one pipe per child, keeps the write end and never writes;
the child inherits the read end (its number in :data:`ENV`) and a thread of
its own waits on it. When the parent process ends, however it ends
(SIGKILL included), the kernel closes the write end, the read returns
end-of-file, and the child ends itself (SIGTERM, then a forced exit if a
handler lingers).

Why not ``PR_SET_PDEATHSIG``: the kernel ties that signal to the *thread*
that forked, not the process. trio starts children from worker threads
(``trio.lowlevel.open_process`` runs ``Popen`` in one) and retires an idle
worker after ten seconds, so every child was killed ten seconds after its
start. A pipe is held by the process, whichever thread spawned the child,
and needs no control over how the spawner picks its thread.

Imports neither trio nor a D-Bus library: servers import it first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping

ENV = "BENCH_LIFELINE_FD"
"""The variable naming the child's read end (outside ``MUSHPI_``: not a setting)."""
EXIT_GRACE_S = 5.0
EXIT_STATUS = 143  # what a shell reports for SIGTERM


class Lifeline:
    """The parent's side, for one child: pass :meth:`env` and :attr:`pass_fds` to the
    spawn, call :meth:`spawned` after it and :meth:`cut` once the child has exited."""

    def __init__(self) -> None:
        self._read: int | None
        self._write: int | None
        self._read, self._write = os.pipe()  # both close-on-exec until passed on

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self._read is None else (self._read,)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: ``base`` (ours by default) and the read end's number."""
        env = dict(os.environ if base is None else base)
        if self._read is not None:
            env[ENV] = str(self._read)
        return env

    def spawned(self) -> None:
        """The child has its copy of the read end: ours is no longer needed."""
        _close(self._read)
        self._read = None

    def cut(self) -> None:
        """Close both ends: a child still watching ends itself."""
        self.spawned()
        _close(self._write)
        self._write = None


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def watch() -> bool:
    """The child's side: end this process when its parent's lifeline closes.

    Takes the variable out of the environment (the server's own children do not
    inherit the pipe) and starts a daemon thread; False when no lifeline was given.
    """
    raw = os.environ.pop(ENV, "")
    try:
        fd = int(raw)
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return False
    threading.Thread(target=_end_at_eof, args=(fd,), name="lifeline", daemon=True).start()
    return True


def _end_at_eof(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass  # the parent never writes; anything read is ignored
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(EXIT_GRACE_S)  # a SIGTERM handler had its chance to clean up
    os._exit(EXIT_STATUS)
