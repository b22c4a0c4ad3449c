"""HTTP GETs whose credentials go to one origin only (standard library, no SDK).

``urllib`` copies every header, ``Authorization`` included, onto the request that follows
a redirect, to whatever host the redirect names; and it cannot use a URL's userinfo
(``https://user:pass@host/``) at all. :func:`open_url` fixes both: userinfo becomes a
Basic ``Authorization`` header, and credential headers ride as *unredirected* headers
that a redirect carries on only when it stays on the same scheme, host and port. A
redirect to anything but http(s) is refused.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from gennaker.redact import redact_url


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default one filled in) of ``url``."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its userinfo, and the Basic ``Authorization`` header the userinfo stood for."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, {"Authorization": f"Basic {token}"}


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follow redirects; carry the credential headers on only while the origin stays the same."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(
                redact_url(req.full_url), code, f"redirect to a {target.split(':', 1)[0]!r} URL refused", headers, fp
            )
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(target) == origin(req.full_url):
            for name, value in req.unredirected_hdrs.items():
                if name not in ("Host", "Content-length", "Content-type"):
                    new.add_unredirected_header(name, value)
        return new


def credential_request(
    url: str, *, headers: Mapping[str, str] | None = None, credentials: Mapping[str, str] | None = None
) -> urllib.request.Request:
    """A GET of ``url`` whose ``credentials`` (and the URL's userinfo) stay with its origin (see :func:`opener`)."""
    bare, from_userinfo = split_userinfo(url)
    request = urllib.request.Request(bare, headers=dict(headers or {}))
    for name, value in {**from_userinfo, **dict(credentials or {})}.items():
        request.add_unredirected_header(name, value)
    return request


def opener() -> urllib.request.OpenerDirector:
    """An opener whose redirects carry credential headers on only within the same origin."""
    return urllib.request.build_opener(_SameOriginCredentials())


def open_url(
    url: str, *, timeout: float, headers: Mapping[str, str] | None = None, credentials: Mapping[str, str] | None = None
) -> Any:
    """GET ``url``; ``credentials`` (and the URL's userinfo) are sent to its origin only.

    Returns the response (a context manager), or raises what ``urllib`` raises.
    """
    return opener().open(credential_request(url, headers=headers, credentials=credentials), timeout=timeout)


__all__ = ["credential_request", "open_url", "opener", "origin", "split_userinfo"]
