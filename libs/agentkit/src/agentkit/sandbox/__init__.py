"""Running local tools in separate processes: the :mod:`~agentkit.sandbox.executor` protocol and
its per-call executor, the :mod:`~agentkit.sandbox.pool` of pre-started workers, the
parent-side :mod:`~agentkit.sandbox.process` handle, and the :mod:`~agentkit.sandbox.worker`
program the child runs.

Empty on purpose: every sandbox process runs ``python -m agentkit.sandbox.worker``, which imports
this package first, so anything imported here would be paid for at every worker start.
"""
