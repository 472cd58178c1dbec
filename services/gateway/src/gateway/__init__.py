"""Opspawn gateway: the REST and gRPC front door of the system.

It authenticates callers by API key and scopes everything to their tenant (:mod:`gateway.auth`),
validates submissions and publishes them as commands, idempotently (:mod:`gateway.submission`),
publishes cancellations (:mod:`gateway.cancellation`), answers reads from the Postgres read model
(:mod:`gateway.reading`, :mod:`gateway.pagination`) and follows tasks live in JetStream
(:mod:`gateway.watching`). :mod:`gateway.rest` and :mod:`gateway.grpc_api` are thin bindings over
those, failing the same way (:mod:`gateway.api_errors`), wired together in :mod:`gateway.app`.
It never writes the database.
"""
