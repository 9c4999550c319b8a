"""The agent loop on `Session` + `tools.ToolRegistry`, and task files (`agentrt run`)."""
