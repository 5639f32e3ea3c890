"""Start and stop a real ``bentoml serve`` of :class:`serve.service.NewsClassifier` (tests, benchmarks).

The server runs in its own process group on 127.0.0.1 at a free port; :meth:`Server.stop` ends that
group only (SIGTERM, then SIGKILL after ``grace_s``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A ``bentoml serve`` subprocess; a context manager (``with Server(...) as srv: srv.url``).

    Args:
        export_dir: export folder (or run folder with ``export/``), passed as ``DISTILL_EXPORT_DIR``;
            None serves ``serve/model``.
        target: what ``bentoml serve`` serves: the service import path (default) or a bento tag.
        env: extra environment variables (``DISTILL_*`` settings).
        port: port (default: a free one). The host is always 127.0.0.1.
        ready_timeout_s: most seconds to wait for ``GET /readyz`` to answer 200.
        log_path: file for the server's stdout/stderr (default: a temp file, removed by :meth:`stop`;
            a start-up failure puts the log's tail in the error first).
        cwd: working directory of the server (default: the repo root).
        host: ``--host`` for ``bentoml serve``; None leaves it to the service config (127.0.0.1).
            The URL used is always ``http://127.0.0.1:PORT``.
        add_repo_to_path: put the repo root on ``PYTHONPATH`` (off when serving a built bento,
            so that the bento's own copy of ``serve`` is imported).

    Raises:
        RuntimeError: the server exited or was not ready within ``ready_timeout_s`` (the log tail
            is in the message); the process group is stopped first.
    """

    def __init__(self, export_dir: str | Path | None = None, target: str = "serve.service:NewsClassifier",
                 env: dict[str, str] | None = None, port: int | None = None, ready_timeout_s: float = 60.0,
                 log_path: str | Path | None = None, cwd: str | Path | None = None,
                 host: str | None = "127.0.0.1", add_repo_to_path: bool = True):
        self.export_dir = export_dir
        self.target = target
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self._own_log = not log_path
        if log_path:
            self.log_path = Path(log_path)
        else:
            fd, name = tempfile.mkstemp(prefix="distill-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.cwd = Path(cwd) if cwd else ROOT
        self.host = host
        self.add_repo_to_path = add_repo_to_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        """Start the server and wait until ``/readyz`` answers 200."""
        env = dict(os.environ)
        env.pop("DISTILL_EXPORT_DIR", None)
        env.update(self.extra_env)
        if self.add_repo_to_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.export_dir is not None:
            env["DISTILL_EXPORT_DIR"] = str(Path(self.export_dir).resolve())
        env.setdefault("BENTOML_DO_NOT_TRACK", "True")
        cmd = [sys.executable, "-m", "bentoml", "serve", self.target, "--port", str(self.port)]
        if self.host:
            cmd += ["--host", self.host]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, cwd=str(self.cwd), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"server not ready after {self.ready_timeout_s:.0f} s:\n{tail}")

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``grace_s`` seconds; remove the
        temp log (one that the caller named is kept)."""
        try:
            self._stop(grace_s)
        finally:
            if self._own_log:
                self.log_path.unlink(missing_ok=True)

    def _stop(self, grace_s: float) -> None:
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None and pgid == self.proc.pid:  # our own new session, never the caller's group
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=grace_s)
            except ProcessLookupError:
                pass
            try:  # workers left behind in the group
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=grace_s)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
