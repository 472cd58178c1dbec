"""Stream replicas: configurable per deployment, and R3 on the production NATS cluster works.

The cluster test runs three real nats-servers with the production overlay's configuration file,
changed only where a pod differs from this machine (addresses, ports, directories; the routes
point at the local ports instead of the StatefulSet's DNS names), creates the streams the way
every service does at start with ``OPSPAWN_STREAM_REPLICAS=3``, and shows what R3 buys: with one
server killed, an event is still stored and acknowledged.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import APIError, NoStreamResponseError

from opspawn_contracts.streams import stream_configs
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import free_port
from opspawn_messaging.settings import ServiceSettings, SettingsError, load_settings
from opspawn_messaging.streams import ensure_streams

PROD_NATS_CONFIG = (
    Path(__file__).resolve().parents[2] / "deploy/k8s/overlays/prod/nats/nats-server.conf"
)
NATS_SERVER = Path(sys.executable).parent / "nats-server"


def test_replicas_come_from_the_environment_and_reach_every_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ServiceSettings().stream_settings.replicas == 1
    monkeypatch.setenv("OPSPAWN_STREAM_REPLICAS", "3")
    settings = ServiceSettings()
    configs = stream_configs(settings.subjects, settings.stream_settings)
    assert {config.name: config.num_replicas for config in configs} == {
        config.name: 3 for config in configs
    }


@pytest.mark.parametrize("value", ["0", "7", "three"])
def test_a_bad_replica_count_stops_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OPSPAWN_STREAM_REPLICAS", value)
    with pytest.raises(SettingsError, match="OPSPAWN_STREAM_REPLICAS"):
        load_settings(ServiceSettings)


class LocalCluster:
    """Three nats-servers from the production configuration, on this machine's loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_ports = [free_port() for _ in range(3)]
        self.cluster_ports = [free_port() for _ in range(3)]
        self.monitor_ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def config_for(self, index: int) -> Path:
        text = PROD_NATS_CONFIG.read_text()
        directory = self.root / f"n{index}"
        directory.mkdir(parents=True, exist_ok=True)
        replacements = {
            "0.0.0.0:4222": f"127.0.0.1:{self.client_ports[index]}",
            "0.0.0.0:8222": f"127.0.0.1:{self.monitor_ports[index]}",
            "0.0.0.0:6222": f"127.0.0.1:{self.cluster_ports[index]}",
            "/var/run/nats/nats.pid": str(directory / "nats.pid"),
            "store_dir: /data": f'store_dir: "{directory / "data"}"',
        }
        for old, new in replacements.items():
            assert old in text, f"the production NATS config no longer has {old!r}"
            text = text.replace(old, new)
        routes = re.findall(r"nats://opspawn-nats-(\d)\.opspawn-nats-headless:6222", text)
        assert routes == ["0", "1", "2"]
        for route in routes:
            text = text.replace(
                f"nats://opspawn-nats-{route}.opspawn-nats-headless:6222",
                f"nats://127.0.0.1:{self.cluster_ports[int(route)]}",
            )
        path = directory / "nats-server.conf"
        path.write_text(text)
        return path

    def start(self) -> None:
        for index in range(3):
            with (self.root / f"n{index}.log").open("wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        [str(NATS_SERVER), "-c", str(self.config_for(index))],
                        env={"POD_NAME": f"opspawn-nats-{index}"},
                        stdout=log,
                        stderr=log,
                    )
                )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for index, port in enumerate(self.monitor_ports):
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        log = (self.root / f"n{index}.log").read_text(errors="replace")
                        pytest.fail(f"server {index} not healthy in {timeout}s:\n{log[-3000:]}")
                    time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path)
    running.start()
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_r3_streams_on_the_production_cluster_survive_losing_a_server(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = ",".join(f"nats://127.0.0.1:{port}" for port in cluster.client_ports)
    monkeypatch.setenv("OPSPAWN_NATS_URL", urls)
    monkeypatch.setenv("OPSPAWN_STREAM_REPLICAS", "3")
    settings = load_settings(ServiceSettings)
    subjects = Subjects(f"r3{uuid.uuid4().hex[:8]}")
    client = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=-1)
    try:
        js = client.jetstream(timeout=10)
        async with asyncio.timeout(60):
            while True:  # the cluster elects its meta leader shortly after it is healthy
                try:
                    await ensure_streams(js, subjects, settings.stream_settings)
                    break
                except (APIError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.5)
        info = await js.stream_info(subjects.events_stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert info.cluster.replicas is not None
        assert len(info.cluster.replicas) == 2  # the leader and two followers

        victim = next(index for index in range(3) if f"opspawn-nats-{index}" == info.cluster.leader)
        cluster.processes[victim].kill()
        cluster.processes[victim].wait()

        subject = subjects.event(uuid.uuid4(), "TaskSubmitted")
        async with asyncio.timeout(60):
            while True:  # until a new leader is elected among the two left
                try:
                    ack = await js.publish(subject, b"{}", stream=subjects.events_stream)
                    break
                except (APIError, NoStreamResponseError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.5)
        assert ack.stream == subjects.events_stream
        after = await js.stream_info(subjects.events_stream)
        assert after.state.messages == 1
        assert after.cluster is not None
        assert after.cluster.leader != info.cluster.leader
    finally:
        await client.close()
