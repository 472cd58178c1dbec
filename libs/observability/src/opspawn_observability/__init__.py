"""Operability shared by every Opspawn service: traces, metrics and logs."""
