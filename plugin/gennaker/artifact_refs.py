"""Where a bake may read its artifact from, when the reference comes from whoever triggered the run.

A bake's ``artifact`` is usually built from a trigger parameter, so it is untrusted:

- a relative path must resolve (symlinks followed) inside the artifact folder
  (``$GENNAKER_ARTIFACTS``); ``..`` and ``~`` are refused outright;
- an absolute path, a ``file://`` or an ``http(s)://`` URL needs a rule of the pipeline's
  ``artifacts.allow`` (set in the spec or a ``defaults.yaml``) that covers it.

A rule is a URL prefix: ``https://artifacts.example.com/builds/`` (same scheme, exactly the
same host and port, a path under ``/builds/``) or ``file:///srv/builds/`` (a real path, symlinks
resolved, under ``/srv/builds``). A rule names no credentials, query or fragment; a reference
may (presigned URLs), and they are sent only to the fetch (see :mod:`gennaker.redact`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gennaker.errors import ArtifactRefused
from gennaker.redact import redact_url

URL_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOW_HINT = "artifacts.allow (in the pipeline or a defaults.yaml)"


@dataclass(frozen=True)
class AllowRule:
    """One entry of ``artifacts.allow``: a scheme, a host (none for file://), a port and a path prefix."""

    scheme: str
    host: str
    port: int | None
    path: str  # always ends with '/'

    def covers_url(self, parts: urllib.parse.SplitResult) -> bool:
        """Whether an http(s) reference (already split) falls under this rule."""
        if self.scheme != parts.scheme.lower() or self.scheme == "file":
            return False
        # Hosts compare whole: 'artifacts.example.com.evil.io' is another host, not a longer string.
        if (parts.hostname or "").lower() != self.host or _port(parts) != self.port:
            return False
        path = parts.path or "/"
        return path == self.path.rstrip("/") or path.startswith(self.path)

    def covers_path(self, real: Path) -> bool:
        """Whether a resolved local path falls under this (file://) rule."""
        return self.scheme == "file" and real.is_relative_to(Path(self.path).resolve())


def _port(parts: urllib.parse.SplitResult) -> int | None:
    return parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())


def parse_rule(text: str) -> AllowRule:
    """An ``artifacts.allow`` entry, checked; :class:`ValueError` says what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as error:
        raise ValueError(f"{text!r} is not a URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in (*URL_SCHEMES, "file"):
        raise ValueError(f"{text!r}: a rule is an https://, http:// or file:/// URL prefix")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(f"{redact_url(text)!r}: a rule names no credentials, query or fragment")
    if _has_dot_segments(parts.path):
        raise ValueError(f"{text!r}: a rule's path has no '.' or '..' segments")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: a file:// rule names a local folder, e.g. file:///srv/builds/")
        if path == "/":
            raise ValueError(f"{text!r}: allowing the whole file system defeats the artifact folder; name a folder")
        return AllowRule("file", "", None, path)
    if not parts.hostname:
        raise ValueError(f"{text!r}: a URL rule names a host, e.g. https://artifacts.example.com/")
    return AllowRule(scheme, parts.hostname.lower(), _port(parts), path)


def _has_dot_segments(path: str) -> bool:
    return any(segment in (".", "..") for segment in urllib.parse.unquote(path).split("/"))


def check_reference(reference: str, allow: Sequence[str], artifacts_root: Path) -> str:
    """What the provider should fetch for ``reference``: a real local path, or the URL as given.

    Raises :class:`ArtifactRefused` when the reference leaves the artifact folder or no rule
    of ``allow`` covers it. Messages show the reference redacted and no host path beyond
    the artifact folder's name.
    """
    text = reference.strip()
    rules = [parse_rule(rule) for rule in allow]
    shown = redact_url(text)
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as error:
        raise ArtifactRefused(f"artifact {shown!r} is not a valid URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme in URL_SCHEMES:
        if _has_dot_segments(parts.path):
            raise ArtifactRefused(f"artifact {shown!r}: a URL's path may not contain '.' or '..' segments")
        if any(rule.covers_url(parts) for rule in rules):
            return text
        raise ArtifactRefused(_not_allowed(shown, f"{scheme}://{parts.hostname or ''}/...", rules))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArtifactRefused(f"artifact {shown!r}: a file:// URL names a local path (file:///...)")
        return _allowed_absolute(urllib.parse.unquote(parts.path), shown, rules)
    if scheme and len(scheme) > 1:  # a one-letter scheme would be a Windows drive, i.e. a path
        raise ArtifactRefused(
            f"artifact {shown!r}: scheme {scheme!r} is not supported; use a path in the artifact folder, "
            f"a file:// or an http(s):// URL"
        )
    if text.startswith("~"):
        raise ArtifactRefused(
            f"artifact {text!r}: '~' is not expanded; a relative artifact is looked up in the artifact folder "
            f"($GENNAKER_ARTIFACTS)"
        )
    if PurePosixPath(text).is_absolute():
        return _allowed_absolute(text, text, rules)
    return _inside_folder(text, artifacts_root)


def _inside_folder(text: str, artifacts_root: Path) -> str:
    if ".." in PurePosixPath(text).parts:
        raise ArtifactRefused(f"artifact {text!r}: '..' is not allowed; name a file inside the artifact folder")
    root = artifacts_root.resolve()
    real = (root / text).resolve()
    # A symlink inside the folder may point anywhere: the real path decides, not the name.
    if not real.is_relative_to(root) or real == root:
        raise ArtifactRefused(
            f"artifact {text!r} leads outside the artifact folder ($GENNAKER_ARTIFACTS), e.g. through a symlink: "
            f"a relative artifact must stay inside it"
        )
    return str(real)


def _allowed_absolute(path: str, shown: str, rules: Sequence[AllowRule]) -> str:
    real = Path(path).resolve()
    if any(rule.covers_path(real) for rule in rules):
        return str(real)
    raise ArtifactRefused(_not_allowed(shown, "file:///<its folder>/", rules))


def _not_allowed(shown: str, example: str, rules: Sequence[AllowRule]) -> str:
    have = ", ".join(_rule_text(rule) for rule in rules) or "none"
    return (
        f"artifact {shown!r} is not allowed: no rule of the pipeline's artifacts.allow covers it "
        f"(it has: {have}); add one such as {example!r} to {ALLOW_HINT}, or put the artifact in the "
        f"artifact folder ($GENNAKER_ARTIFACTS) and name it by a relative path"
    )


def _rule_text(rule: AllowRule) -> str:
    if rule.scheme == "file":
        return f"file://{rule.path}"
    port = "" if rule.port == _DEFAULT_PORTS.get(rule.scheme) else f":{rule.port}"
    return f"{rule.scheme}://{rule.host}{port}{rule.path}"


__all__ = ["ALLOW_HINT", "AllowRule", "ArtifactRefused", "check_reference", "parse_rule"]
