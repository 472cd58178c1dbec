"""Opspawn's contracts: the one place that names what crosses a process boundary.

Events (the source of truth), commands, work items, tool RPC messages, subjects, stream and
consumer configuration all live here, so services agree by importing rather than by convention.
"""
