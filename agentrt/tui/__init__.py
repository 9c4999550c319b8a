"""`agentrt chat`: the textual terminal UI for long, persistent sessions (imported only by that command)."""
