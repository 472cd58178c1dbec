"""The module ``python -m dramatiq`` loads in the baseline's worker processes.

It sets the global broker (RabbitMQ at ``E2E_BENCH_RABBITMQ_URL``) and declares the no-op actor
on the run's queue (``E2E_BENCH_QUEUE``); :class:`~benchmarks.end_to_end.baseline.BaselineWorkers`
sets both.
"""

from __future__ import annotations

import os

import dramatiq

from benchmarks.end_to_end.baseline import (
    QUEUE_VARIABLE,
    RABBITMQ_URL_VARIABLE,
    declare_actor,
    make_broker,
)

broker = make_broker(os.environ[RABBITMQ_URL_VARIABLE])
dramatiq.set_broker(broker)
noop = declare_actor(broker, os.environ[QUEUE_VARIABLE])
