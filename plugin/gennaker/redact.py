"""Credentials out of URLs before they are logged, returned in XCom or shown on a page.

A URL may carry a secret in two places: its userinfo (``https://user:password@host/``)
and its query (presigned URLs: ``X-Amz-Signature``, ``X-Amz-Credential``, Azure's
``sig``, ``token``, ...). :func:`redact_url` masks both (``https://***@host/path?
X-Amz-Signature=***``) and keeps what a person needs to tell artifacts apart: scheme,
host, port, path, harmless query parameters and the fragment (``#sha256=...``).
:func:`redact_text` does the same for every URL inside a free text (an error message).

The real URL only ever goes to the fetch itself.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

# A query parameter whose name contains one of these carries a secret (case-insensitive).
_SECRET_WORDS = (
    "signature",
    "credential",
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api_key",
    "api-key",
    "auth",
    "session",
)
# Short names that are secrets on their own (Azure SAS 'sig', Google API 'key', ...).
_SECRET_NAMES = frozenset({"sig", "key", "pwd", "pass", "code"})

_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def secret_query_key(name: str) -> bool:
    """Whether a query parameter of this name carries a credential (its value is masked)."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        name, sep, _value = item.partition("=")
        if secret_query_key(urllib.parse.unquote_plus(name)):
            parts.append(f"{name}={MASK}")
        else:
            parts.append(name + sep + _value)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with its userinfo replaced by ``***`` and its secret query values masked.

    Text that is not a URL (a relative path) comes back unchanged.
    """
    text = str(url)
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. a malformed IPv6 host: show nothing after the scheme rather than a secret
        scheme = text.split("://", 1)[0]
        return f"{scheme}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries (userinfo, secret query values), to register with a log masker."""
    text = str(url)
    if "://" not in text:
        return []
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return [text]
    found = []
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        found.append(userinfo)
        found.extend(urllib.parse.unquote(piece) for piece in userinfo.split(":", 1))
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if secret_query_key(name) and value:
            found.extend({value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)})
    # Very short pieces (a one-letter user) would mask unrelated text everywhere.
    return [piece for piece in dict.fromkeys(found) if len(piece) >= 4]


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), str(text))


__all__ = ["MASK", "redact_text", "redact_url", "secret_query_key", "url_secrets"]
