"""Opspawn scheduler: decides commands and projects the events stream into the read model.

Its loops share one NATS connection: :mod:`scheduler.dispatch` turns commands into events and
work items, :mod:`scheduler.projection` folds every event into Postgres in batches,
:mod:`scheduler.retries` turns failed attempts into retries (or failures) and queues them when
due, :mod:`scheduler.deadlines` times out tasks past their deadline, and
:mod:`scheduler.abandoned_work` fails tasks no runner survives. Every decision is appended from the
task's fresh history (:mod:`scheduler.task_decisions`); :mod:`scheduler.status` reports the
projection's lag and what was decided.
"""
