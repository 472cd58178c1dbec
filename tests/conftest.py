"""Fixtures for cross-service tests; the servers themselves come from the root conftest."""
