"""Opspawn gateway: the REST and gRPC front door of the system.

It validates task submissions and publishes them as commands (:mod:`gateway.submission`), and
answers reads from the Postgres read model (:mod:`gateway.reading`); :mod:`gateway.rest` and
:mod:`gateway.grpc_api` are thin bindings over those two, wired together in :mod:`gateway.app`.
It never writes the database.
"""
