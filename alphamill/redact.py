"""Passwords never leave the process: redaction of URLs in text, and of drivers' messages.

A URL's password can hold anything a user typed, including spaces and ``@``; and database
drivers quote pieces of the URL they could not parse in their own messages. So:

* :func:`redact_url` treats everything between ``://`` and the **last** ``@`` on the line as
  the userinfo and keeps only a user name that is plainly one (``u:***@host``); otherwise
  the whole userinfo becomes ``***``. ``?password=`` parameters are redacted as well.
* :func:`userinfo_problem` refuses, before any driver sees it, a URL whose userinfo holds
  characters that must be percent-encoded, so no driver gets to echo a piece of it.
* :func:`scrub` cleans a driver's message with the URL it was given: the raw URL and each
  form of its password are replaced, wherever they appear.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SAFE_USER = re.compile(r"[A-Za-z0-9._~+-]*")
_PARAM = re.compile(r"(?P<pre>[?&](?:password|pwd)=)(?P<pw>[^&\s]*)", re.IGNORECASE)
_MUST_ENCODE = re.compile(r"[\s@/?#]|%(?![0-9A-Fa-f]{2})")
MASK = "***"


def _masked_userinfo(userinfo: str) -> str:
    user, sep, _ = userinfo.partition(":")
    if not _SAFE_USER.fullmatch(user):
        return MASK
    return f"{user}:{MASK}" if sep else user


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    if not text:
        return text
    text = str(text)
    out: list[str] = []
    pos = 0
    starts = list(_SCHEME.finditer(text))
    for i, m in enumerate(starts):
        if m.start() < pos:
            continue
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        line_end = text.find("\n", m.end(), end)
        end = end if line_end < 0 else line_end
        at = text.rfind("@", m.end(), end)
        if at < 0:
            continue
        out.append(text[pos : m.end()])
        out.append(_masked_userinfo(text[m.end() : at]))
        pos = at
    out.append(text[pos:])
    return _PARAM.sub(lambda p: p.group("pre") + MASK, "".join(out))


def _userinfo(url: str) -> str | None:
    m = _SCHEME.match(url)
    if not m:
        return None
    rest = url[m.end() :]
    at = rest.rfind("@")
    if at < 0:
        return None
    query = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    if query < at and "@" not in rest[:query] and "/" not in rest[at:]:
        return None  # '@' only in the query (?user=me@corp), no host and path after it
    return rest[:at]


def userinfo_problem(url: str) -> str | None:
    """Why the user name or password of ``url`` cannot be given to a driver, or ``None``."""
    if not isinstance(url, str):
        return None
    info = _userinfo(url)
    if info is None or not _MUST_ENCODE.search(info):
        return None
    return (
        "the user name or password holds characters that must be percent-encoded (a space, "
        "an at sign, a slash, ? or #, or a % that starts no escape): encode it with "
        "urllib.parse.quote(password, safe='')"
    )


def url_secrets(url: str) -> list[str]:
    """Every form in which ``url``'s password could appear in a driver's message."""
    found: set[str] = set()
    info = _userinfo(url) if isinstance(url, str) else None
    if info and ":" in info:
        found.add(info.partition(":")[2])
    try:
        parts = urlsplit(url)
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "pwd"))
    except ValueError:
        pass
    found |= {unquote(s) for s in found}
    # longest first, so a password is replaced whole before any piece of it
    return sorted((s for s in found if len(s) >= 2), key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """A driver's message about ``url`` with the URL and its password redacted."""
    text = str(text)
    if url:
        if url in text:
            text = text.replace(url, redact_url(url))
        for secret in url_secrets(url):
            text = text.replace(secret, MASK)
    return redact_url(text)


__all__ = ["MASK", "redact_url", "scrub", "url_secrets", "userinfo_problem"]
