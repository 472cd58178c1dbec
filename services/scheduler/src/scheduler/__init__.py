"""Opspawn scheduler: decides commands and projects the events stream into the read model.

Two independent loops share one NATS connection: :mod:`scheduler.dispatch` turns commands into
events and work items, :mod:`scheduler.projection` folds every event into Postgres. Neither reads
what the other writes, so either can be replaced, scaled or replayed on its own.
"""
