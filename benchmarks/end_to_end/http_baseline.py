"""The baseline behind HTTP: the old design as a service, FastAPI + uvicorn in front of Dramatiq.

``POST /v1/tasks`` does what the no-HTTP baseline's client does (:mod:`~benchmarks.end_to_end.
baseline`): insert the ``pending`` row through a ``psycopg_pool`` pool, send the task's id to the
Dramatiq actor, and only then answer ``202 {"task_id": ...}``. The load generator drives it with
the same client, body and connections as Opspawn's gateway, so both sides pay for HTTP; the body
(``task_type``, ``input_data``) is validated by a pydantic model, as the gateway validates its
own, and not stored (the baseline's table has no column for it).

One process, as the gateway is one: uvicorn with its access log off and ``loop``/``http`` on
``auto`` (uvloop and httptools when installed, as they are here: the gateway's choice too). The
endpoint is a plain ``def``, the usual FastAPI way with blocking clients: it runs in the
framework's thread pool, sized to the connection pool so that no thread waits for a connection;
Dramatiq's RabbitMQ broker keeps one connection per thread.

``confirm_delivery`` is Dramatiq's publisher-confirm switch. Off (its default), a send returns
once the message is written to the socket: a RabbitMQ crash right after the 202 can lose the
task. On, each send waits for RabbitMQ's confirm, which for the persistent message on a durable
queue that Dramatiq publishes comes once the message is written to disk: the durability of a
JetStream ack under ``sync_interval: always``. The benchmark measures both.

:class:`HttpBaselineApp` runs ``python -m benchmarks.end_to_end.http_baseline`` as a process of
its own (configured by environment variables, like the Dramatiq workers) and stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from anyio import to_thread
from fastapi import FastAPI
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from benchmarks.end_to_end.baseline import (
    DATABASE_URL_VARIABLE,
    INSERT_PENDING,
    POOL_SIZE_VARIABLE,
    QUEUE_VARIABLE,
    RABBITMQ_URL_VARIABLE,
    declare_actor,
    make_broker,
)

HOST = "127.0.0.1"
PORT_VARIABLE = "E2E_BENCH_HTTP_PORT"
CONFIRM_VARIABLE = "E2E_BENCH_CONFIRM_DELIVERY"
READY_TIMEOUT_SECONDS = 60.0
MODULE = "benchmarks.end_to_end.http_baseline"


class TaskRequest(BaseModel):
    task_type: str
    input_data: dict[str, Any] = {}


class TaskAccepted(BaseModel):
    task_id: uuid.UUID


def create_app(
    *, database_url: str, rabbitmq_url: str, queue: str, confirm_delivery: bool, pool_size: int
) -> FastAPI:
    """The app; its lifespan opens the database pool (start-up fails if PostgreSQL does not
    answer) and closes the pool and the broker's connections at shutdown."""
    pool = ConnectionPool(database_url, min_size=pool_size, max_size=pool_size, open=False)
    broker = make_broker(rabbitmq_url, confirm_delivery=confirm_delivery)
    actor = declare_actor(broker, queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = pool_size
        pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            pool.close()
            broker.close()

    app = FastAPI(title="Dramatiq baseline over HTTP", lifespan=lifespan)

    @app.post("/v1/tasks", status_code=202)
    def submit(request: TaskRequest) -> TaskAccepted:
        task_id = uuid.uuid4()
        with pool.connection() as connection:
            connection.execute(INSERT_PENDING, (task_id,))
        actor.send(str(task_id))
        return TaskAccepted(task_id=task_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """The process's entry point: the app from the environment, served until SIGTERM."""
    app = create_app(
        database_url=os.environ[DATABASE_URL_VARIABLE],
        rabbitmq_url=os.environ[RABBITMQ_URL_VARIABLE],
        queue=os.environ[QUEUE_VARIABLE],
        confirm_delivery=os.environ[CONFIRM_VARIABLE] == "1",
        pool_size=int(os.environ[POOL_SIZE_VARIABLE]),
    )
    uvicorn.run(
        app,
        host=HOST,
        port=int(os.environ[PORT_VARIABLE]),
        loop="auto",
        http="auto",
        access_log=False,
        log_level="warning",
    )


class HttpBaselineApp:
    """The app's process on ``port``, started and stopped by the harness."""

    def __init__(
        self,
        *,
        database_url: str,
        rabbitmq_url: str,
        queue: str,
        confirm_delivery: bool,
        pool_size: int,
        port: int,
        log_file: Path,
    ) -> None:
        self.port = port
        self.log_file = log_file
        self._env = {
            **os.environ,
            DATABASE_URL_VARIABLE: database_url,
            RABBITMQ_URL_VARIABLE: rabbitmq_url,
            QUEUE_VARIABLE: queue,
            CONFIRM_VARIABLE: "1" if confirm_delivery else "0",
            POOL_SIZE_VARIABLE: str(pool_size),
            PORT_VARIABLE: str(port),
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=Path(__file__).parents[2],
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until ``GET /healthz`` answers 200 (the lifespan has opened the pool)."""
        health = f"http://{HOST}:{self.port}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the HTTP baseline app exited with {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(health, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the HTTP baseline app did not answer on port {self.port} after "
                    f"{READY_TIMEOUT_SECONDS:.0f}s; see {self.log_file}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes its requests and runs the lifespan's shutdown), SIGKILL
        after 20 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


if __name__ == "__main__":
    main()
