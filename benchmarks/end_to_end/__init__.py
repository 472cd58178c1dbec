"""End-to-end benchmark: Opspawn through its REST gateway against Dramatiq + RabbitMQ + PostgreSQL.

``uv run python -m benchmarks.end_to_end`` (``--quick`` for a run of about a minute, ``--help``
for every knob). What one invocation does:

* For each runner count (1, 2, 4) and each JetStream durability setting (``sync_interval:
  always``, the default of ``opspawn up``, and the opt-out, the server's periodic flush), a fresh
  Opspawn: its own nats-server with a new store, a fresh database, the four services as separate
  processes (:mod:`~benchmarks.end_to_end.systems`). For the same process count, the baseline:
  a fresh database, a queue of its own on the machine's RabbitMQ, Dramatiq worker processes
  (:mod:`~benchmarks.end_to_end.baseline`).
* Against each: a warm-up (not reported), then closed-loop runs of N tasks (1,000 and 10,000)
  by concurrent clients (32), then open-loop runs at fixed rates (100, 200 and 400 tasks/s, 10 s
  each; the issue's latency target is p50 ≤ 5 ms at 200/s). An Opspawn task is ``POST /v1/tasks``
  with a one-step plan calling the built-in ``util.noop``; a baseline task is a pending row
  inserted and a message sent (:mod:`~benchmarks.end_to_end.load_generator`).
* Completion = the task's status is terminal in the read model. It is timed without polling: a
  trigger the benchmark adds in its own database notifies at commit, and a listener process
  stamps each notification on the clock the submissions are timed with
  (:mod:`~benchmarks.end_to_end.completions`). Latency = that stamp - the submission's start (for
  the open loop, the time the submission was due).
* CPU seconds of every process (each service, each runner and its sandbox workers, nats-server,
  the Dramatiq processes, RabbitMQ, the PostgreSQL backends of the run's database attributed to
  the process they serve, the load generator) from the first submission to the last completion,
  printed as CPU ms per task (:mod:`~benchmarks.end_to_end.cpu_accounting`).
* Output: tables on stdout (side by side, with the ratio to the baseline), a JSON document with
  every figure and the machine's facts, and a PNG of latency percentiles vs load
  (:mod:`~benchmarks.end_to_end.report`), both under ``benchmarks/end_to_end/results/`` unless
  ``--output`` says otherwise.

Every process started is stopped and every database and queue created is removed at the end,
also on Ctrl-C, SIGTERM or an error; a run whose tasks stop completing ends with a message saying
how many are outstanding, and the benchmark goes on with the next configuration.
"""
