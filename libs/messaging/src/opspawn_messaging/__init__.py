"""The runtime side of Opspawn's JetStream use: how a service connects, appends, reads, consumes,
settles and dead-letters messages, and runs as a process.

Where things are:

- :mod:`~opspawn_messaging.settings`: the settings every service shares (``OPSPAWN_*``).
- :mod:`~opspawn_messaging.nats_connection`: connecting, with a bounded first connect.
- :mod:`~opspawn_messaging.streams`: the idempotent stream set-up each service runs at start.
- :mod:`~opspawn_messaging.event_log`: appending events with optimistic concurrency, and a
  task's history (:class:`~opspawn_messaging.event_log.TaskHistory`, whose ``state()`` is the one
  fold of stored events into a task's state).
- :mod:`~opspawn_messaging.stream_reading`: reading a stream from a position (replay, export).
- :mod:`~opspawn_messaging.pull_loop`: the one fetch loop every durable pull consumer runs.
- :mod:`~opspawn_messaging.settlement`: the one rule that acks, naks or dead-letters a message.
- :mod:`~opspawn_messaging.dead_letters`: keeping, listing and re-driving dead letters.
- :mod:`~opspawn_messaging.service_process`: signals, exit codes and the event loop of a service.

What crosses a process boundary (the messages, subjects, stream configuration) is
:mod:`opspawn_contracts`; this package only moves it.
"""
