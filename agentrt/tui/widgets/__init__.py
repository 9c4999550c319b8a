"""The chat UI's widgets: sidebar, conversation, messages, tool blocks, input, status bar, session panel."""
