"""End-to-end benchmark: Opspawn through its REST gateway against Dramatiq + RabbitMQ + PostgreSQL.

``uv run python -m benchmarks.end_to_end`` (``--quick`` for a run of a few minutes, ``--help``
for every knob). What one invocation does:

* For each runner count (1, 2, 4) and each JetStream durability setting (``sync_interval:
  always``, the default of ``opspawn up``, and the opt-out, the server's periodic flush), a fresh
  Opspawn: its own NATS with new stores, a fresh database, the four services as separate
  processes (:mod:`~benchmarks.end_to_end.systems`). NATS is one nats-server, or with ``--nats
  cluster`` also three from the production configuration with every stream at three replicas
  (:mod:`~benchmarks.end_to_end.nats_cluster`).
* For the same process count, the baseline, the old design: a fresh database, a queue of its own
  on the machine's RabbitMQ, Dramatiq worker processes (:mod:`~benchmarks.end_to_end.baseline`),
  with tasks submitted three ways (``--systems`` picks): ``dramatiq-http`` and
  ``dramatiq-http-confirm``, through a FastAPI app of its own that inserts the row and sends the
  message, with Dramatiq's publisher confirms off (its default) and on (RabbitMQ has the message
  on disk before the 202, as JetStream has an event before its ack)
  (:mod:`~benchmarks.end_to_end.http_baseline`); and ``dramatiq``, by the load generator itself,
  without HTTP: the floor. Opspawn is compared with the first two, which pay for HTTP as it does.
* Against each: a warm-up (not reported), then closed-loop runs of N tasks (1,000 and 10,000)
  by concurrent clients (32), then open-loop runs at fixed rates (100, 200 and 400 tasks/s, 10 s
  each; the issue's latency target is p50 ≤ 5 ms at 200/s). A task over HTTP (Opspawn, the HTTP
  baselines) is ``POST /v1/tasks`` with a one-step plan calling the built-in ``util.noop``, sent
  by the same client code; a no-HTTP baseline task is a pending row inserted and a message sent
  (:mod:`~benchmarks.end_to_end.load_generator`).
* Completion = the task's status is terminal in the read model. It is timed without polling: a
  trigger the benchmark adds in its own database notifies at commit, and a listener process
  stamps each notification on the clock the submissions are timed with
  (:mod:`~benchmarks.end_to_end.completions`). Latency = that stamp - the submission's start (for
  the open loop, the time the submission was due).
* CPU seconds of every process (each service, each runner and its sandbox workers, every
  nats-server, the Dramatiq processes, the baseline's FastAPI app, RabbitMQ, the PostgreSQL
  backends of the run's database attributed to the process they serve, the load generator) from
  the first submission to the last completion, printed as CPU ms per task
  (:mod:`~benchmarks.end_to_end.cpu_accounting`).
* Output: tables on stdout (per load and process count, every system side by side with
  Opspawn's ratios to the HTTP baselines; then every figure per run and per process), a JSON
  document with every figure and the machine's facts, and a PNG of latency percentiles vs load
  (:mod:`~benchmarks.end_to_end.report`), both under ``benchmarks/end_to_end/results/`` unless
  ``--output`` says otherwise.

Every process started is stopped and every database and queue created is removed at the end,
also on Ctrl-C, SIGTERM or an error; a run whose tasks stop completing ends with a message saying
how many are outstanding, and the benchmark goes on with the next configuration.
"""
