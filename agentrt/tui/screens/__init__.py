"""The chat UI's screens: main, help, error, confirm, name prompt."""
