"""The app's server for benchmarks and browser tests: what ``make run`` runs, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_command(checkout: Path, port: int) -> list[str]:
    """What ``make run`` runs in ``checkout``, headless on 127.0.0.1:``port``: ``python -m lib
    app``, or ``streamlit run app.py`` for a checkout older than that verb (a benchmark's
    side-by-side run of an earlier commit)."""
    if "def cmd_app(" in (Path(checkout) / "lib" / "cli.py").read_text():
        return [sys.executable, "-m", "lib", "app", "--port", str(port), "--headless", "--address", "127.0.0.1"]
    return [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
            "--server.headless", "true", "--server.address", "127.0.0.1"]


class Server:
    """A context manager: start the app, wait until ``/_stcore/health`` answers, stop its
    whole process group on exit.

    Parameters
    ----------
    log : file that receives the server's stdout and stderr (its tail is in every error).
    home : data home (``WORKBENCH_HOME``); default: the one of this process's environment.
    port : default a free one.
    command : argv to run instead of :func:`app_command` (what ``make run`` runs) on ``port``.
    cwd : the checkout whose app runs (default this one; a benchmark may run an older
        commit's app side by side).
    """

    def __init__(self, log: Path, home: Path | None = None, *, port: int | None = None,
                 command: list[str] | None = None, timeout: float = 90, cwd: Path | None = None):
        self.log_path, self.home, self.timeout = Path(log), home, timeout
        self.cwd = Path(cwd) if cwd is not None else REPO
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = command or app_command(self.cwd, self.port)
        self.started_s = float("nan")  # seconds from launch to healthy

    def __enter__(self) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        if self.home is not None:
            env["WORKBENCH_HOME"] = str(self.home)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in __exit__)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"streamlit exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        self.started_s = time.monotonic() - t0
                        return self
            except OSError:
                time.sleep(0.2)
            if time.monotonic() - t0 > self.timeout:
                self.__exit__()
                raise RuntimeError(f"streamlit did not become healthy in {self.timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
