"""Package of agentrt (see DESIGN.md)."""
