"""CPU seconds per process during a run, with psutil: what the lead profiles from.

Every process of interest is a *group*: a root process under one label (``gateway``,
``agent-runner-2``, ``nats-server``, ``load generator``...) and, optionally, its descendants under
another (``agent-runner-2 children``: the runner's sandbox workers). The harness calls
:meth:`CpuAccount.begin` when the load starts, :meth:`CpuAccount.sample` while it runs and
:meth:`CpuAccount.finish` when the last task completed; a process's CPU is its user + system time
at its last sample minus at the start (zero for a process born during the run). A process that
ends between two samples loses what it used since its last one (samples are a fraction of a
second apart; sandbox workers are replaced only every thousand calls). Times are read per thread
in nanoseconds (``schedstat``), not only in the 10 ms ticks of ``/proc/<pid>/stat``, which
would round the many lightly used PostgreSQL backends of a short run down to nothing.

PostgreSQL backends are found in ``pg_stat_activity`` of the run's database and, when the server
is on this machine and reachable over TCP, attributed to the process at the other end of the
connection (``postgres ← scheduler``); over a unix socket they are ``postgres backends``. The
server's own processes (postmaster, WAL writer, checkpointer...) are ``postgres server``: on a
shared server they also work for other databases, which the label says.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
Key = tuple[int, float]
"""A process: its pid and creation time (pids are reused)."""


@dataclass(frozen=True)
class ProcessGroup:
    label: str
    pid: int
    children_label: str | None = None
    """Label of the root's descendants; ``None``: they count under ``label``."""
    descendants: bool = True
    """Whether to count the descendants at all (not for the harness: they are the systems)."""


@dataclass(frozen=True)
class PostgresWatch:
    """Where to find the run's backends: an admin connection string to the server, the run's
    database name, and backend pids that are the benchmark's own (labelled as given)."""

    admin_url: str
    database: str
    known_backends: dict[int, str]


def _cpu(process: psutil.Process) -> float:
    """CPU seconds ``process`` has used: its user + system time, to the nanosecond where Linux
    tells (``/proc/<pid>/task/*/schedstat``)."""
    times = process.cpu_times()
    ticks = float(times.user + times.system)
    try:
        threads = os.listdir(f"/proc/{process.pid}/task")
        nanoseconds = 0
        for thread in threads:
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                stat = Path(f"/proc/{process.pid}/task/{thread}/schedstat").read_text()
                nanoseconds += int(stat.split()[0])
    except OSError:
        return ticks
    # The tick count (10 ms steps) includes threads that have ended; the schedstat sum is exact
    # but only for live threads: the larger is the better lower bound.
    return max(ticks, nanoseconds / 1e9)


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, if it can be seen."""
    with contextlib.suppress(psutil.AccessDenied):
        for connection in psutil.net_connections(kind="tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
                and connection.pid is not None
            ):
                return int(connection.pid)
    return None


class CpuAccount:
    def __init__(
        self,
        groups: Callable[[], Iterable[ProcessGroup]],
        *,
        postgres: PostgresWatch | None = None,
    ) -> None:
        """``groups`` is called at every sample, so a restarted service (new pid) is followed."""
        self._groups = groups
        self._postgres = postgres
        self._pg: psycopg.Connection[tuple[object, ...]] | None = None
        self._server_port: int | None = None
        self._started_wall = 0.0
        self._base: dict[Key, float] = {}
        self._last: dict[Key, float] = {}
        self._labels: dict[Key, str] = {}
        self._backend_labels: dict[int, str] = {}
        self.notes: list[str] = []

    def __enter__(self) -> CpuAccount:
        if self._postgres is not None:
            connection = psycopg.connect(self._postgres.admin_url, autocommit=True)
            host = connection.info.host
            if host.startswith("/"):
                self._pg = connection  # a unix socket: the server is on this machine
            elif host in LOCAL_HOSTS:
                self._pg, self._server_port = connection, connection.info.port
            else:
                connection.close()
                self.notes.append(f"PostgreSQL CPU not measured: the server ({host}) is remote")
                return self
            self._backend_labels[connection.info.backend_pid] = "postgres ← harness"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def begin(self) -> None:
        self._started_wall = time.time()
        self._last = {}
        self._labels = {}
        self._base = self._scan()
        self._last = dict(self._base)

    def sample(self) -> None:
        self._last.update(self._scan())

    def finish(self) -> dict[str, float]:
        """CPU seconds per label since :meth:`begin`."""
        self.sample()
        totals: dict[str, float] = {}
        for key, last in self._last.items():
            label = self._labels[key]
            used = last - self._base.get(key, 0.0)
            totals[label] = totals.get(label, 0.0) + max(used, 0.0)
        return totals

    # ---------------------------------------------------------------------------------------

    def _scan(self) -> dict[Key, float]:
        seen: dict[Key, float] = {}
        for pid, label in self._labelled_processes().items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._record(seen, psutil.Process(pid), label)
        for pid, label in self._postgres_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._record(seen, psutil.Process(pid), label)
        return seen

    def _labelled_processes(self) -> dict[int, str]:
        """Every process of every group, by pid. The process tree is read once for all groups
        (``Process.children`` would read the whole process table once per group)."""
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process.pid)
        labels: dict[int, str] = {}
        for group in self._groups():
            labels.setdefault(group.pid, group.label)
            pending = list(children.get(group.pid, ())) if group.descendants else []
            while pending:
                pid = pending.pop()
                labels.setdefault(pid, group.children_label or group.label)
                pending.extend(children.get(pid, ()))
        return labels

    def _record(self, seen: dict[Key, float], process: psutil.Process, label: str) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            key = (process.pid, process.create_time())
            seen[key] = _cpu(process)
            self._labels.setdefault(key, label)
            if key not in self._base and self._base and key[1] < self._started_wall:
                # Existed before the run but is seen only now: count from this first sight.
                self._base[key] = seen[key]

    def _postgres_processes(self) -> list[tuple[int, str]]:
        if self._pg is None or self._postgres is None:
            return []
        try:
            rows = self._pg.execute(
                "SELECT pid, backend_type, datname, client_port FROM pg_stat_activity"
            ).fetchall()
        except psycopg.Error as error:
            self.notes.append(f"pg_stat_activity could not be read: {error}")
            return []
        found: list[tuple[int, str]] = []
        unknown: dict[int, int] = {}
        postmaster: int | None = None
        for pid, backend_type, datname, client_port in rows:
            assert isinstance(pid, int)
            if backend_type == "client backend":
                if datname != self._postgres.database:
                    continue
                label = self._postgres.known_backends.get(pid) or self._backend_labels.get(pid)
                if label is None and isinstance(client_port, int) and client_port > 0:
                    unknown[pid] = client_port
                    continue
                found.append((pid, label or "postgres backends"))
            elif datname in (None, self._postgres.database):
                found.append((pid, "postgres server (shared with other databases)"))
                if postmaster is None:
                    with contextlib.suppress(psutil.Error):
                        postmaster = psutil.Process(pid).ppid()
        if unknown:
            self._attribute(unknown)
            found.extend((pid, self._backend_labels[pid]) for pid in unknown)
        if postmaster is not None:
            found.append((postmaster, "postgres server (shared with other databases)"))
        return found

    def _attribute(self, backends: dict[int, int]) -> None:
        """Label backends by the local process at the other end of their TCP connection."""
        owners: dict[int, int] = {}
        with contextlib.suppress(psutil.AccessDenied):
            for connection in psutil.net_connections(kind="tcp"):
                if (
                    connection.raddr
                    and connection.raddr.port == self._server_port
                    and connection.pid is not None
                ):
                    local: Any = connection.laddr
                    owners[local.port] = connection.pid
        labels_by_pid = self._labelled_processes()
        for backend, port in backends.items():
            owner = owners.get(port)
            label = labels_by_pid.get(owner) if owner is not None else None
            self._backend_labels[backend] = (
                f"postgres ← {label}" if label is not None else "postgres backends"
            )
