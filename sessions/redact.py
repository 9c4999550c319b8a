"""Database URLs made safe to print: the one redaction rule for every URL agentrt shows or logs.

The rule:
1. the password of the user part becomes `***`;
2. in the query string, a parameter whose name looks secret (contains `pass`, `pwd`,
   `secret`, `token`, `key`, `auth` or `cred`) shows as `name=***`; a parameter without
   `=`, with an odd name, with a secret-looking word in its value, or after a secret one
   shows as `***` (it may be the tail of a secret value that holds a raw `&`);
3. a URL that SQLAlchemy cannot parse, or whose split is ambiguous (more than one `@`; a
   `/`, `?` or `#` before the `@`; a host holding anything but a host name, an IPv4 or an
   IPv6 address), shows only its scheme and user name: `postgresql://alice:***@***`. An
   unescaped `@`, `/` or `?` in a password is the usual cause: percent-encode it (`%40`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
_SECRET_WORD = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
_HOST = re.compile(r"^(?:[\w.-]+|[0-9A-Fa-f:.]+(?:%[\w.-]+)?)$")
_USER = re.compile(r"^[\w.+-]+$")


def _is_secret(text: str) -> bool:
    """Whether a query parameter's name (or value) hints at a secret."""
    return bool(_SECRET_WORD.search(text))


def _masked_query(pairs: Iterable[tuple[str, str | None]]) -> str:
    """A query string from (name, value) pairs (value None: no '='), masked by rule 2."""
    parts: list[str] = []
    after_secret = False
    for name, value in pairs:
        if after_secret or value is None or not _NAME.match(name) or _is_secret(value):
            parts.append(MASK)
        elif _is_secret(name):
            parts.append(f"{name}={MASK}")
            after_secret = True
        else:
            parts.append(f"{name}={quote(value, safe='/:,.-_')}")
    return "&".join(parts)


def _raw_pairs(query: str) -> list[tuple[str, str | None]]:
    """The raw query string's parameters in order, blanks and bare names kept."""
    pairs: list[tuple[str, str | None]] = []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        pairs.append((name, value if eq else None))
    return pairs


def _url_pairs(url: URL) -> list[tuple[str, str | None]]:
    """A parsed URL's query parameters as (name, value) pairs."""
    pairs: list[tuple[str, str | None]] = []
    for name, values in url.query.items():
        for value in values if isinstance(values, tuple) else (values,):
            pairs.append((name, value))
    return pairs


def _conservative(url: str) -> str:
    """Only the scheme and the user name: for URLs whose structure cannot be trusted."""
    if "://" not in url:
        return MASK
    scheme, rest = url.split("://", 1)
    user = re.split(r"[:@/?#]", rest, maxsplit=1)[0]
    if not re.match(r"^[\w+.-]+$", scheme):
        return MASK
    if "@" in rest and _USER.match(user):
        return f"{scheme}://{user}:{MASK}@{MASK}"
    return f"{scheme}://{MASK}"


def _ambiguous(rest: str, parsed: URL) -> bool:
    """Whether the split of `rest` (the URL after '://') into its parts can be trusted."""
    if rest.count("@") > 1:
        return True
    if "@" in rest and any(c in rest[: rest.index("@")] for c in "/?#"):
        return True
    host = parsed.host or ""
    return bool(host) and not _HOST.match(host)


def redact_url(url: str | URL) -> str:
    """`url` as text with its password and secret query values masked, safe to print or log."""
    if isinstance(url, URL):
        text = url.set(query={}).render_as_string(hide_password=True)
        query = _masked_query(_url_pairs(url))
        return f"{text}?{query}" if query else text
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _conservative(str(url))
    rest = url.split("://", 1)[1] if "://" in url else url
    if _ambiguous(rest, parsed):
        return _conservative(url)
    text = parsed.set(query={}).render_as_string(hide_password=True)
    query = _masked_query(_raw_pairs(rest.split("?", 1)[1])) if "?" in rest else ""
    return f"{text}?{query}" if query else text


def secrets_in(url: str | URL) -> list[str]:
    """The secret strings a URL holds (password, its raw pieces, query values), longest first."""
    found: list[str] = []
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    rest = raw.split("://", 1)[1] if "://" in raw else raw
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found += [password, *re.split(r"[@/?#&=]", password)]
    if "?" in rest:
        found += [v for n, v in _raw_pairs(rest.split("?", 1)[1]) if v and _is_secret(n)]
    try:
        parsed = url if isinstance(url, URL) else make_url(raw)
    except (ArgumentError, ValueError, TypeError):
        parsed = None
    if parsed is not None:
        if parsed.password:
            found.append(str(parsed.password))
        found += [v for n, v in _url_pairs(parsed) if v and _is_secret(n)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str | URL | None) -> str:
    """`text` (a driver's error message, say) with every secret of `url` replaced by `***`."""
    if url is None:
        return text
    for secret in secrets_in(url):
        text = text.replace(secret, MASK)
    return text


__all__ = ["MASK", "redact_url", "scrub", "secrets_in"]
