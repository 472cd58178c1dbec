"""A 3-node nats-server cluster on this machine, from the production configuration.

What Opspawn runs on in production (``deploy/k8s/overlays/prod/nats/nats-server.conf``: three
JetStream servers, routes between them, streams with three replicas), so the benchmark can measure
the task path with R3 streams, where a publish is acknowledged once a majority stored it and
replicas fsync once per raft append entry rather than per message (see STACK-NOTES).

The configuration file is the production one, changed only where a pod differs from this machine,
as ``tests/deploy/test_stream_replicas.py`` does: addresses and ports (free loopback ports), the
pid file and the store directory, routes to the local cluster ports instead of the StatefulSet's
DNS names, and, for the ``sync default`` configurations, without its ``sync_interval: always``.
Every server runs in a session of its own (a Ctrl-C for the harness must not stop NATS under the
services before they are stopped); :meth:`NatsCluster.start` returns once all three are healthy and
the JetStream meta group has a leader, so the services can create their streams at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from opspawn_embedded import free_port, nats_server_binary

PRODUCTION_CONFIG = Path(__file__).parents[2] / "deploy/k8s/overlays/prod/nats/nats-server.conf"
SIZE = 3
HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
SYNC_ALWAYS = "sync_interval: always"
_ROUTE = re.compile(r"nats://opspawn-nats-(\d)\.opspawn-nats-headless:6222")


class NatsCluster:
    """Three nats-servers (``opspawn-nats-0`` .. ``-2``) storing under ``root``."""

    def __init__(self, root: Path, *, sync_always: bool) -> None:
        self.root = root
        self.sync_always = sync_always
        self.client_ports = [free_port(HOST) for _ in range(SIZE)]
        self.cluster_ports = [free_port(HOST) for _ in range(SIZE)]
        self.monitor_ports = [free_port(HOST) for _ in range(SIZE)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated: the form ``OPSPAWN_NATS_URL`` takes."""
        return ",".join(f"nats://{HOST}:{port}" for port in self.client_ports)

    @staticmethod
    def server_name(index: int) -> str:
        return f"opspawn-nats-{index}"

    def config_for(self, index: int) -> Path:
        text = PRODUCTION_CONFIG.read_text()
        directory = self.root / f"n{index}"
        directory.mkdir(parents=True, exist_ok=True)
        replacements = {
            "0.0.0.0:4222": f"{HOST}:{self.client_ports[index]}",
            "0.0.0.0:8222": f"{HOST}:{self.monitor_ports[index]}",
            "0.0.0.0:6222": f"{HOST}:{self.cluster_ports[index]}",
            "/var/run/nats/nats.pid": str(directory / "nats.pid"),
            "store_dir: /data": f'store_dir: "{directory / "data"}"',
        }
        if not self.sync_always:
            replacements[SYNC_ALWAYS] = "# sync_interval: the server's default (benchmark)"
        for old, new in replacements.items():
            if old not in text:
                raise RuntimeError(f"{PRODUCTION_CONFIG} no longer has {old!r}: update {__name__}")
            text = text.replace(old, new)
        routes = _ROUTE.findall(text)
        if sorted(routes) != [str(n) for n in range(SIZE)]:
            raise RuntimeError(f"{PRODUCTION_CONFIG}: expected routes to {SIZE} pods, saw {routes}")
        text = _ROUTE.sub(lambda match: f"nats://{HOST}:{self.cluster_ports[int(match[1])]}", text)
        path = directory / "nats-server.conf"
        path.write_text(text)
        return path

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for index in range(SIZE):
            with (self.root / f"n{index}.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [nats_server_binary(), "-c", str(self.config_for(index))],
                        env={**os.environ, "POD_NAME": self.server_name(index)},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for index, port in enumerate(self.monitor_ports):
            while not self._answers(index, f"http://{HOST}:{port}/healthz"):
                self._wait_more(deadline, f"server {index} is not healthy")
        jsz = f"http://{HOST}:{self.monitor_ports[0]}/jsz"
        while not (self._json(jsz).get("meta_cluster") or {}).get("leader"):
            self._wait_more(deadline, "the JetStream meta group has no leader")

    def _answers(self, index: int, url: str) -> bool:
        if self.processes[index].poll() is not None:
            raise RuntimeError(
                f"nats-server {index} exited with {self.processes[index].returncode}; "
                f"see {self.root / f'n{index}.log'}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            return bool(response.status == 200)
        return False

    def _json(self, url: str) -> dict[str, Any]:
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            document: dict[str, Any] = json.load(response)
            return document
        return {}

    def _wait_more(self, deadline: float, waiting_for: str) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{waiting_for} after {READY_TIMEOUT_SECONDS:.0f}s; see the logs in {self.root}"
            )
        time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM every server (graceful), SIGKILL one still running after 20 s."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
