"""Test doubles that ship with agentkit, for its own tests, the runner's and the benchmarks.

Empty on purpose, like the other subpackages: a submodule is imported only when named.
"""
