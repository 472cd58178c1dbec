"""Planners, which decide an agent's next step: :mod:`~agentkit.planning.plan` carries out a
given plan, :mod:`~agentkit.planning.llm` asks a language model through
:mod:`~agentkit.planning.chat_completions`.

Empty on purpose: importing a submodule must not import the others (the language-model client
needs httpx, a plan does not).
"""
