"""Errors as OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from agentrt.errors import AgentRTError, BudgetError, ConfigError, DatabaseError, SessionError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class APIError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def not_found(what: str, ident: str) -> APIError:
    """404 for an unknown id."""
    return APIError(404, f"no {what} with id {ident!r}", code=f"{what}_not_found", param="id")


def from_agentrt(err: AgentRTError) -> APIError:
    """Map an AgentRTError to its HTTP status: budget 429, usage 400, session state 409, db 503."""
    text = err.message + (f" (hint: {err.hint})" if err.hint else "")
    if isinstance(err, BudgetError):
        return APIError(
            429,
            text,
            type="rate_limit_error",
            code="kv_budget_exhausted",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(err, ConfigError):
        return APIError(400, text, code="invalid_value")
    if isinstance(err, SessionError):
        return APIError(409, text, code="session_conflict")
    if isinstance(err, DatabaseError):
        return APIError(503, text, type="server_error", code="database_unavailable")
    return APIError(400 if err.exit_code in (3, 6, 7) else 500, text, type="server_error")


def from_validation(errors: list[dict[str, Any]]) -> APIError:
    """400 for a body that does not match the schema; names the first bad field."""
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = f"unknown field {loc!r}"
    else:
        msg = f"invalid value for {loc!r}: {first.get('msg', 'invalid')}"
    return APIError(
        400,
        msg,
        code="invalid_value" if kind != "extra_forbidden" else "unknown_field",
        param=loc or None,
    )


def internal(err: BaseException) -> APIError:
    """500 for a bug: the type goes to the log, no traceback or detail to the client."""
    log.error("internal error while serving a request: %s", type(err).__name__, exc_info=err)
    return APIError(500, "internal server error", type="server_error", code="internal_error")
