"""Opspawn API v1: code generated from ``proto/opspawn/v1/*.proto`` by ``make proto``.

Do not edit the ``*_pb2*`` modules; change the ``.proto`` files and regenerate.
"""
