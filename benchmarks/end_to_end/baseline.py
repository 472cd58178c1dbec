"""The baseline: Dramatiq 2 + RabbitMQ + PostgreSQL, written the way the old system worked.

A client inserts a ``pending`` row into :data:`TABLE` (pooled psycopg connections) and sends the
task's id to a Dramatiq actor on RabbitMQ; the actor, in worker processes started by the
``dramatiq`` command (``--processes`` mirrors the runner count), marks the row ``running``, then
``completed``, each in its own transaction on a ``psycopg_pool`` pool of its process. Dramatiq's
defaults are kept (default middleware, 8 threads per process, no publisher confirms), except
``max_retries=0``, since a no-op that fails should show, not be retried.

This client, run in the load generator, is the floor: no HTTP in front. The same work behind
HTTP, as a service of its own, with publisher confirms off or on, is
:mod:`~benchmarks.end_to_end.http_baseline`.

Each run gets a queue of its own (``e2e_bench_<hex>``); :meth:`BaselineWorkers.stop` stops the
workers and deletes the queue and Dramatiq's delay and dead-letter queues beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import psutil
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name
from psycopg_pool import ConnectionPool

TABLE = "baseline_tasks"
ACTOR_NAME = "e2e_bench_noop"
CREATE_TABLE = (
    f"CREATE TABLE {TABLE} (task_id uuid PRIMARY KEY, status text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"
)
INSERT_PENDING = f"INSERT INTO {TABLE} (task_id, status) VALUES (%s, 'pending')"
MARK_RUNNING = f"UPDATE {TABLE} SET status = 'running', updated_at = now() WHERE task_id = %s"
MARK_COMPLETED = f"UPDATE {TABLE} SET status = 'completed', updated_at = now() WHERE task_id = %s"

DATABASE_URL_VARIABLE = "E2E_BENCH_DATABASE_URL"
RABBITMQ_URL_VARIABLE = "E2E_BENCH_RABBITMQ_URL"
QUEUE_VARIABLE = "E2E_BENCH_QUEUE"
POOL_SIZE_VARIABLE = "E2E_BENCH_POOL_SIZE"
WORKER_MODULE = "benchmarks.end_to_end.dramatiq_worker"
READY_TIMEOUT_SECONDS = 60.0


def make_broker(rabbitmq_url: str, *, confirm_delivery: bool = False) -> RabbitmqBroker:
    """Dramatiq's RabbitMQ broker; ``confirm_delivery``: each send waits for RabbitMQ's
    publisher confirm (off by default, as in Dramatiq)."""
    return RabbitmqBroker(url=rabbitmq_url, confirm_delivery=confirm_delivery)


def declare_actor(broker: RabbitmqBroker, queue: str) -> dramatiq.Actor[[str], None]:
    decorate = dramatiq.actor(actor_name=ACTOR_NAME, queue_name=queue, broker=broker, max_retries=0)
    actor: dramatiq.Actor[[str], None] = decorate(mark_running_then_completed)
    return actor


_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> ConnectionPool:
    """The worker process's pool, opened at its first task (worker processes are forked)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            size = int(os.environ.get(POOL_SIZE_VARIABLE, "8"))
            _pool = ConnectionPool(
                os.environ[DATABASE_URL_VARIABLE], min_size=size, max_size=size, open=True
            )
        return _pool


def mark_running_then_completed(task_id: str) -> None:
    """The no-op actor: what the old system's workers did around a task, with no task."""
    pool = _worker_pool()
    with pool.connection() as connection:
        connection.execute(MARK_RUNNING, (task_id,))
    with pool.connection() as connection:
        connection.execute(MARK_COMPLETED, (task_id,))


class BaselineWorkers:
    """``python -m dramatiq`` with ``processes`` worker processes on ``queue``."""

    def __init__(
        self,
        *,
        database_url: str,
        rabbitmq_url: str,
        queue: str,
        processes: int,
        threads: int,
        log_file: Path,
    ) -> None:
        self.database_url = database_url
        self.rabbitmq_url = rabbitmq_url
        self.queue = queue
        self.processes = processes
        self.threads = threads
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            DATABASE_URL_VARIABLE: self.database_url,
            RABBITMQ_URL_VARIABLE: self.rabbitmq_url,
            QUEUE_VARIABLE: self.queue,
            POOL_SIZE_VARIABLE: str(self.threads),
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "dramatiq", WORKER_MODULE,
            "--processes", str(self.processes),
            "--threads", str(self.threads),
            "--worker-shutdown-timeout", "10000",
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=Path(__file__).parents[2],
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until every worker process consumes the queue (RabbitMQ's consumer count)."""
        broker = make_broker(self.rabbitmq_url)
        broker.declare_queue(self.queue, ensure=True)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the dramatiq workers exited with {self.process.returncode}; "
                        f"see {self.log_file}"
                    )
                declared: Any = broker.channel.queue_declare(self.queue, passive=True)
                if declared.method.consumer_count >= self.processes:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{declared.method.consumer_count} of {self.processes} dramatiq worker "
                        f"processes consume {self.queue} after {READY_TIMEOUT_SECONDS:.0f}s; "
                        f"see {self.log_file}"
                    )
                time.sleep(0.1)
        finally:
            broker.close()

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM the master (it stops its workers), SIGKILL what is left after 20 s, then
        delete this run's queues."""
        if self.process is not None and self.process.poll() is None:
            survivors = _descendants(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for leftover in survivors:
                if leftover.is_running():
                    leftover.kill()
        self.process = None
        broker = make_broker(self.rabbitmq_url)
        try:
            for queue in (self.queue, dq_name(self.queue), xq_name(self.queue)):
                broker.channel.queue_delete(queue)
        finally:
            broker.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
