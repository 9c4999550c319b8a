"""redact_url: no password or secret query value of a database URL ever reaches the output."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from agentrt.sessions.redact import redact_url, scrub, secrets_in


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://alice:S3cretPW@127.0.0.1:1/agentrt",
            "postgresql://alice:***@127.0.0.1:1/agentrt",
        ),
        (
            "postgresql://alice@127.0.0.1:1/agentrt?password=S3cretPW",
            "postgresql://alice@127.0.0.1:1/agentrt?password=***",
        ),
        (
            "postgresql+psycopg://alice@db/agentrt?sslmode=require&PWD=S3cretPW&sslkey=/k.pem",
            "postgresql+psycopg://alice@db/agentrt?sslmode=require&PWD=***&***",
        ),
        ("postgresql://alice:S3cr@tPW@127.0.0.1:1/agentrt", "postgresql://alice:***@***"),
        (
            "postgresql://alice:S3cr%40tPW@127.0.0.1:1/agentrt",
            "postgresql://alice:***@127.0.0.1:1/agentrt",
        ),
        ("postgresql://alice:S3cr@t/PW@host/db", "postgresql://alice:***@***"),
        ("postgresql://alice@127.0.0.1:1/agentrt?password=S3cr@tPW", "postgresql://alice:***@***"),
        ("postgresql://alice:pw@[::1]:5432/agentrt", "postgresql://alice:***@[::1]:5432/agentrt"),
        ("sqlite:////home/a/agentrt.db", "sqlite:////home/a/agentrt.db"),
        ("sqlite://", "sqlite://"),
        ("weird://alice:S3cretPW@host with spaces", "weird://alice:***@***"),
        ("not a url alice:S3cretPW@host", "***"),
        ("postgresql://h/db?password=S3cr&etPW", "postgresql://h/db?password=***&***"),
    ],
)
def test_redact_url_examples(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_url_objects_are_redacted_too() -> None:
    url = make_url("postgresql://alice:S3cretPW@db/agentrt?token=T0KEN")
    assert redact_url(url) == "postgresql://alice:***@db/agentrt?token=***"


def test_scrub_removes_every_piece_of_the_password() -> None:
    url = "postgresql://alice:S3cr@tPW@127.0.0.1:1/agentrt"
    message = 'could not translate host name "tPW@127.0.0.1" to address'
    assert "tPW" not in scrub(message, url)
    assert scrub("auth failed for S3cretPW", "postgresql://a@h/d?password=S3cretPW") == (
        "auth failed for ***"
    )
    assert secrets_in("sqlite:///x.db") == []


# Secrets use upper-case letters and URL punctuation only; every other part is lower-case,
# so an upper-case letter in the output is a leaked piece of a secret.
_SECRET = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ@:/?#&=%+ ", min_size=1, max_size=20).filter(
    lambda s: any(c.isupper() for c in s)
)
_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


@settings(max_examples=400, deadline=None)
@given(
    user=_NAME,
    password=_SECRET,
    host=st.one_of(_NAME, st.sampled_from(["127.0.0.1", "[::1]", "db.example"])),
    db=st.one_of(_NAME, st.just("")),
    where=st.sampled_from(["userinfo", "query", "query-first", "both"]),
    key=st.sampled_from(["password", "passwd", "pwd", "secret", "token", "api_key"]),
    escape=st.booleans(),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_no_piece_of_a_secret_is_ever_printed(
    user: str,
    password: str,
    host: str,
    db: str,
    where: str,
    key: str,
    escape: bool,
    port: int | None,
) -> None:
    secret = quote(password, safe="") if escape else password
    userinfo = f"{user}:{secret}@" if where in ("userinfo", "both") else f"{user}@"
    query = {
        "query": f"?sslmode=require&{key}={secret}",
        "query-first": f"?{key}={secret}&sslmode=require&connect_timeout=5",
        "both": f"?{key}={secret}",
    }.get(where, "")
    netloc = f"{host}:{port}" if port else host
    url = f"postgresql+psycopg://{userinfo}{netloc}/{db}{query}"
    shown = redact_url(url)
    assert not any(c.isupper() for c in shown), (url, shown)
