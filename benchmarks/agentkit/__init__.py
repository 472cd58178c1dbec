"""agentkit benchmarks: tool-call overhead of the sandbox executors."""
