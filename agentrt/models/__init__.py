"""Named models agentrt prepares itself (the default SmolLM2-135M-Instruct) and their DMS adapters."""
