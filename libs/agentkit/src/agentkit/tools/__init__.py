"""Tools and tool managers: the :mod:`~agentkit.tools.registry` of typed tools, the
:mod:`~agentkit.tools.builtin` ones, :mod:`~agentkit.tools.local` (run in a sandbox),
:mod:`~agentkit.tools.mcp_proxy` (behind the MCP proxy) and the :mod:`~agentkit.tools.router` in
front of both.

Empty on purpose: a sandbox worker imports tool modules (``agentkit.tools.builtin``) and must not
pay for nats-py, which only the MCP proxy tool needs.
"""
