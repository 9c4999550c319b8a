"""The error a request gets when the replica that held its session died."""

from __future__ import annotations

from agentrt.errors import SessionError


class ReplicaLost(SessionError):
    """The replica serving a request died; its sessions were reopened elsewhere. Retry."""

    title = "replica lost"
    retryable = True

    def __init__(
        self, message: str, *, hint: str | None = None, moved: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.moved = dict(moved or {})  # session name -> replica it was reopened on
