"""Each image, installed like its Dockerfile installs it and started like its Dockerfile starts it.

No Docker engine runs on these machines, so the Dockerfiles are read and carried out by hand, as
closely as a build and ``docker run`` would:

- the build context is the repository filtered by ``.dockerignore``;
- the builder stage's ``COPY`` lines copy from that context into a scratch root, its ``ENV`` is
  applied, and its ``RUN uv sync ...`` lines run as written (only ``--mount`` flags dropped),
  with the image's absolute paths (``/src``, ``/opt/venv``) mapped into the scratch root;
  a builder ``RUN`` that is not ``uv sync`` fails the test, since it could not be reproduced;
- the final stage's ``ENV``, ``WORKDIR``, ``ENTRYPOINT``/``CMD`` and ``HEALTHCHECK`` start the
  process (with a clean environment: the image's variables plus what compose would add, the
  NATS and database URLs and free ports) and probe it;
- then SIGTERM, as ``docker stop`` sends (``STOPSIGNAL``), must end it with exit code 0.

What this cannot see: the base image's own contents (``python:3.11-slim``; the machine's
CPython 3.11 stands in for it) and the user the final stage switches to.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_embedded import EmbeddedNats, free_port
from opspawn_readmodel.migrate import alembic_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
SERVICES = ["gateway", "scheduler", "agent-runner", "mcp-proxy"]
IMAGES = [*SERVICES, "cli"]
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` of the ``python`` base images; the final stage's ``ENV PATH=...:$PATH`` extends it."""


# --- reading a Dockerfile ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [each for each in self.instructions if each.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(source: str) -> list[Stage]:
    """Stages and their instructions; continuation lines joined, comment lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in source.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = " ".join(arguments.split()) if keyword != "RUN" else arguments.strip()
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


def env_assignments(arguments: str) -> dict[str, str]:
    """``ENV A=1 B=2`` (the only form used here)."""
    pairs = {}
    for word in shlex.split(arguments):
        name, equals, value = word.partition("=")
        assert equals, f"ENV {arguments!r}: write ENV NAME=value"
        pairs[name] = value
    return pairs


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list), f"{arguments!r} is not the exec (JSON) form"
    return [str(word) for word in command]


@dataclass
class Healthcheck:
    command: list[str]
    timeout: float
    start_period: float


def healthcheck_of(stage: Stage) -> Healthcheck | None:
    instruction = stage.last("HEALTHCHECK")
    if instruction is None:
        return None
    options, _, command = instruction.arguments.partition("CMD ")
    values = dict(re.findall(r"--([a-z-]+)=(\S+)", options))

    def seconds(value: str) -> float:
        assert value.endswith("s"), value
        return float(value[:-1])

    return Healthcheck(
        exec_form(command),
        timeout=seconds(values.get("timeout", "30s")),
        start_period=seconds(values.get("start-period", "0s")),
    )


# --- .dockerignore -------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index : end + 1], end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


class DockerIgnore:
    """Docker's rules: the last matching pattern wins, ``!`` re-includes, and a pattern that
    matches a directory matches everything beneath it."""

    def __init__(self, source: str) -> None:
        self._rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in source.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self._rules.append((include, _glob_regex(pattern)))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
        verdict = False
        for include, pattern in self._rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                verdict = not include
        return verdict


def copy_from_context(ignore: DockerIgnore, source: str, destination: Path) -> None:
    origin = ROOT / source
    assert origin.exists(), f"COPY {source}: not in the build context"
    if origin.is_file():
        if not ignore.excluded(source):
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination)
        return
    for path in origin.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and not ignore.excluded(relative):
            target = destination / path.relative_to(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# --- building and starting an image's venv -------------------------------------------------


@dataclass
class BuiltImage:
    """An image's final stage, carried out: the root its paths map into, and how it starts."""

    name: str
    root: Path
    env: dict[str, str]
    workdir: Path
    command: list[str]
    healthcheck: Healthcheck | None

    def map(self, value: str) -> str:
        return re.sub(r"(?<![\w.])/(opt|src|home)\b", lambda m: f"{self.root}/{m.group(1)}", value)


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the images' venvs (run the tests with `uv run`)")
    return uv


def build_image(name: str, scratch: Path) -> BuiltImage:
    stages = parse_dockerfile((DOCKER_DIR / f"{name}.Dockerfile").read_text())
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    builder = next(stage for stage in stages if stage.name == "builder")
    final = stages[-1]
    root = scratch / "root"
    image = BuiltImage(name, root, {}, root, [], None)
    workdir = root
    build_env: dict[str, str] = {}
    for instruction in builder.instructions:
        if instruction.keyword == "ENV":
            build_env |= {
                k: image.map(v) for k, v in env_assignments(instruction.arguments).items()
            }
        elif instruction.keyword == "WORKDIR":
            workdir = Path(image.map(instruction.arguments))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            words = instruction.arguments.split()
            if any(word.startswith("--from=") for word in words):
                continue  # the uv binary; the machine's uv stands in for it
            *sources, destination = words
            target = workdir / destination
            for source in sources:
                copied = target / Path(source).name if destination.endswith("/") else target
                copy_from_context(ignore, source, copied)
        elif instruction.keyword == "RUN":
            words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--mount")]
            assert words[:2] == ["uv", "sync"], (
                f"builder RUN {instruction.arguments!r}: only `uv sync` can be reproduced here"
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
            env |= build_env
            done = subprocess.run(
                [_uv(), *words[1:]], cwd=workdir, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{name}: {' '.join(words)} failed:\n{done.stderr}"
    for instruction in final.instructions:
        if instruction.keyword == "ENV":
            for key, value in env_assignments(instruction.arguments).items():
                value = value.replace("$PATH", image.env.get("PATH", BASE_PATH))
                image.env[key] = image.map(value)
        elif instruction.keyword == "WORKDIR":
            image.workdir = Path(image.map(instruction.arguments))
        elif instruction.keyword == "COPY":
            words = instruction.arguments.split()
            assert "--from=builder" in words, f"final COPY {instruction.arguments!r}"
            assert words[-2] == words[-1], "the venv must keep its path (its scripts name it)"
    image.workdir.mkdir(parents=True, exist_ok=True)
    image.env.setdefault("PATH", BASE_PATH)
    image.env["HOME"] = str(image.workdir)
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None, f"{name}: no ENTRYPOINT"
    cmd = final.last("CMD")
    image.command = exec_form(entrypoint.arguments) + (exec_form(cmd.arguments) if cmd else [])
    image.healthcheck = healthcheck_of(final)
    return image


class ImageBuilds:
    """One build per image per test session (uv's cache makes each a few seconds)."""

    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch
        self._built: dict[str, BuiltImage] = {}

    def get(self, name: str) -> BuiltImage:
        if name not in self._built:
            self._built[name] = build_image(name, self._scratch / name)
        return self._built[name]


@pytest.fixture(scope="session")
def image_builds(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilds:
    return ImageBuilds(tmp_path_factory.mktemp("images"))


@dataclass
class Started:
    process: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[list[Started]]:
    """Processes a test starts; any still running at the end are killed (the test has failed)."""
    running: list[Started] = []
    yield running
    for each in running:
        if each.process.returncode is None:
            each.process.kill()
            await each.process.wait()


async def start(image: BuiltImage, env: dict[str, str], log: Path) -> Started:
    handle = log.open("wb")
    process = await asyncio.create_subprocess_exec(
        *image.command,
        cwd=image.workdir,
        env=image.env | env,
        stdout=handle,
        stderr=asyncio.subprocess.STDOUT,
    )
    handle.close()
    return Started(process, log)


async def wait_healthy(image: BuiltImage, env: dict[str, str], running: Started) -> None:
    """Run the image's HEALTHCHECK command until it succeeds, as Docker does after start."""
    check = image.healthcheck
    assert check is not None, f"{image.name}: no HEALTHCHECK"
    deadline = asyncio.get_running_loop().time() + max(check.start_period, 30.0)
    last = b""
    while asyncio.get_running_loop().time() < deadline:
        if running.process.returncode is not None:
            pytest.fail(f"{image.name} exited {running.process.returncode}:\n{running.output()}")
        probe = await asyncio.create_subprocess_exec(
            *check.command,
            cwd=image.workdir,
            env=image.env | env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(check.timeout):
                last, _ = await probe.communicate()
        except TimeoutError:
            probe.kill()
            await probe.wait()
            continue
        if probe.returncode == 0:
            return
        await asyncio.sleep(0.25)
    pytest.fail(
        f"{image.name} never passed its HEALTHCHECK; last probe said:\n{last.decode()}\n"
        f"service log:\n{running.output()}"
    )


async def stop_with_sigterm(image: BuiltImage, running: Started) -> None:
    running.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(60):
            code = await running.process.wait()
    except TimeoutError:
        pytest.fail(f"{image.name} did not stop within 60 s of SIGTERM:\n{running.output()}")
    assert code == 0, f"{image.name} exited {code} after SIGTERM:\n{running.output()}"


# --- the tests -----------------------------------------------------------------------------


def _deployment_env(
    service: str, nats_server: EmbeddedNats, database_url: str, prefix: str, scratch: Path
) -> dict[str, str]:
    """What compose or Kubernetes adds to the image's own environment for ``service``."""
    env = {"OPSPAWN_NATS_URL": nats_server.url, "OPSPAWN_SUBJECT_PREFIX": prefix}
    if service == "gateway":
        env |= {
            "OPSPAWN_DATABASE_URL": database_url,
            "OPSPAWN_HTTP_PORT": str(free_port()),
            "OPSPAWN_GRPC_PORT": str(free_port()),
        }
    else:
        env["OPSPAWN_OPS_PORT"] = str(free_port())
    if service == "scheduler":
        env["OPSPAWN_DATABASE_URL"] = database_url
    if service == "mcp-proxy":
        # A real third-party MCP server over stdio; the proxy is ready only once its session is up.
        config = scratch / "mcp_servers.yaml"
        config.write_text(
            "servers:\n"
            "  time:\n"
            "    transport: stdio\n"
            f"    command: {sys.executable}\n"
            '    args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
        )
        env["OPSPAWN_MCP_CONFIG"] = str(config)
    return env


@pytest.mark.parametrize("service", SERVICES)
async def test_service_installs_and_starts_like_its_image_answers_health_and_stops_cleanly(
    service: str,
    image_builds: ImageBuilds,
    nats_server: EmbeddedNats,
    database_url: str,
    started: list[Started],
    tmp_path: Path,
) -> None:
    image = await asyncio.to_thread(image_builds.get, service)
    env = _deployment_env(
        service, nats_server, database_url, f"img{uuid.uuid4().hex[:8]}", tmp_path
    )
    running = await start(image, env, tmp_path / f"{service}.log")
    started.append(running)
    await wait_healthy(image, env, running)

    port = env.get("OPSPAWN_OPS_PORT") or env["OPSPAWN_HTTP_PORT"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        if service != "gateway":
            assert ready.json()["status"] == "ready"
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "python_info" in metrics.text
    if service == "mcp-proxy":
        assert "mcp_server:time" in ready.json()["checks"]

    await stop_with_sigterm(image, running)


async def test_migrations_image_migrates_an_empty_database_once_and_again(
    image_builds: ImageBuilds, postgres_server_url: str, started: list[Started], tmp_path: Path
) -> None:
    image = await asyncio.to_thread(image_builds.get, "cli")
    assert image.command == ["opspawn", "migrate"]
    assert image.healthcheck is None
    name = f"opspawn_image_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(postgres_server_url).set(database=name).render_as_string(False)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        for attempt in (1, 2):
            running = await start(image, {"OPSPAWN_DATABASE_URL": url}, tmp_path / f"m{attempt}")
            started.append(running)
            async with asyncio.timeout(120):
                code = await running.process.wait()
            assert code == 0, running.output()
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        finally:
            await engine.dispose()
        assert version == head
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def _workspace_members() -> list[str]:
    workspace: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = []
    for pattern in workspace["tool"]["uv"]["workspace"]["members"]:
        members += [
            path.parent.relative_to(ROOT).as_posix()
            for path in sorted(ROOT.glob(f"{pattern}/pyproject.toml"))
        ]
    return members


def _stages(image: str) -> list[Stage]:
    return parse_dockerfile((DOCKER_DIR / f"{image}.Dockerfile").read_text())


def test_every_image_has_a_dockerfile_and_nothing_else_is_there() -> None:
    assert sorted(path.name for path in DOCKER_DIR.glob("*.Dockerfile")) == sorted(
        f"{image}.Dockerfile" for image in IMAGES
    )


@pytest.mark.parametrize("image", IMAGES)
def test_dependency_layer_copies_every_workspace_members_pyproject(image: str) -> None:
    """Otherwise the cached dependency layer would not know the whole workspace."""
    builder = next(stage for stage in _stages(image) if stage.name == "builder")
    copied = {
        source
        for instruction in builder.all("COPY")
        for source in instruction.arguments.split()[:-1]
        if source.endswith("/pyproject.toml")
    }
    assert copied == {f"{member}/pyproject.toml" for member in _workspace_members()}


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_is_slim_without_compilers_and_not_root(image: str) -> None:
    stages = _stages(image)
    final = stages[-1]
    assert final.base.startswith("python:3.11-slim")
    assert all("apt-get" not in run.arguments for run in final.all("RUN")), "nothing installed"
    user = final.last("USER")
    assert user is not None
    assert user.arguments.split(":")[0] not in ("0", "root")
    syncs = [
        run.arguments for stage in stages for run in stage.all("RUN") if "uv sync" in run.arguments
    ]
    assert syncs, "the venv comes from `uv sync`"
    for sync in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable"):
            assert flag in sync.split(), f"{image}: {sync!r} lacks {flag}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_stop_on_sigterm_and_have_a_healthcheck(service: str) -> None:
    final = _stages(service)[-1]
    stop = final.last("STOPSIGNAL")
    assert stop is not None
    assert stop.arguments == "SIGTERM"
    assert healthcheck_of(final) is not None


def test_dockerignore_keeps_sources_and_lock_and_drops_tests_caches_and_local_state() -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    kept = [
        "uv.lock",
        "pyproject.toml",
        "libs/contracts/pyproject.toml",
        "libs/contracts/src/opspawn_contracts/events.py",
        "services/mcp-proxy/mcp_servers.example.yaml",
    ]
    dropped = [
        ".venv/bin/python",
        ".git/HEAD",
        ".opspawn/nats/x",
        "tests/test_end_to_end.py",
        "libs/contracts/tests/test_events.py",
        "libs/contracts/src/opspawn_contracts/__pycache__/events.cpython-311.pyc",
        "README.md",
        "deploy/compose.yaml",
    ]
    assert [path for path in kept if ignore.excluded(path)] == []
    assert [path for path in dropped if not ignore.excluded(path)] == []
