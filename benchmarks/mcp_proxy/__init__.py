"""What a tool call through NATS and the MCP proxy costs, against a direct MCP session."""
