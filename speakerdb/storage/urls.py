"""Database URLs made fit to be shown: secrets hidden in the URL itself and in error messages.

Used by the store (names, errors), the schema check (errors) and the facade; whether a
target is a URL at all is decided in :mod:`speakerdb.config`.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus, unquote, unquote_plus

from sqlalchemy.engine import URL, make_url

__all__ = ["MASK", "SECRET_URL_PARAMS", "display_url", "redact"]

#: Query parameters of a libpq URL that hold a secret (``password``, ``sslpassword``) or name
#: the file that holds one (``passfile``, ``sslkey``: where the secrets of a server live is
#: nobody else's business). Compared without case: a misspelt key still holds a secret.
SECRET_URL_PARAMS = frozenset({"password", "sslpassword", "passfile", "sslkey"})
MASK = "***"
_URL_IN_TEXT = re.compile(r"\b(?:postgresql\+psycopg|postgresql|postgres)://[^\s'\"]*", re.IGNORECASE)
_SECRET_IN_TEXT = re.compile(
    r"\b(" + "|".join(sorted(SECRET_URL_PARAMS)) + r")(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)


def display_url(url: str) -> str:
    """The URL as it may be shown and logged: any secret hidden.

    The password of ``user:password@`` and the values of :data:`SECRET_URL_PARAMS` in the
    query become ``***``, in a URL that SQLAlchemy can parse and in one it cannot (several
    hosts, a port that is not a number): this is the one place a database URL is made
    fit to be shown, in ``info``, in error messages, in logs and in the service's answers.
    """

    def mask_query(query: str) -> str:
        out = []
        for part in query.split("&"):
            key, sep, _ = part.partition("=")
            out.append(f"{key}={MASK}" if sep and unquote_plus(key).strip().lower() in SECRET_URL_PARAMS else part)
        return "&".join(out)

    url = str(url)
    try:
        parsed = make_url(url)
        # A password holding an unescaped "@" ends at its first "@": the rest would read as host.
        host = parsed.host.rsplit("@", 1)[-1] if parsed.host else parsed.host
        shown = URL.create(
            parsed.drivername,
            parsed.username,
            "" if parsed.password is not None else None,
            host,
            parsed.port,
            parsed.database,
        ).render_as_string(hide_password=True)
        pairs = [
            (k, v) for k, values in parsed.query.items() for v in ((values,) if isinstance(values, str) else values)
        ]
        if pairs:
            shown += "?" + "&".join(
                f"{quote_plus(k)}={MASK if k.strip().lower() in SECRET_URL_PARAMS else quote_plus(v)}" for k, v in pairs
            )
        return shown
    except Exception:  # noqa: BLE001, S110  (whatever SQLAlchemy cannot parse is handled below)
        pass
    # Unparseable: everything up to the last "@" is a user and maybe a password; show the user only.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", url)
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{':' + MASK if colon else ''}@{rest}"
    head, question, query = rest.partition("?")
    return f"{scheme}://{head}{question}{mask_query(query)}"


def redact(message: object, url: str | None = None) -> str:
    """An error's text as it may be shown: its first line, with every database URL in it
    shown by :func:`display_url`, ``password=...``-like pairs of a libpq DSN masked, and
    the secrets of ``url`` (the URL the failing connection was made with) wherever they
    appear, since a driver may echo any part of what it was given."""
    text = str(getattr(message, "orig", None) or message).strip()
    text = text.splitlines()[0].strip() if text else ""
    for secret in sorted(_secrets_of(url), key=len, reverse=True) if url else ():
        text = text.replace(secret, MASK)
    text = _URL_IN_TEXT.sub(lambda m: display_url(m.group(0)), text)
    return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def _secrets_of(url: str) -> set[str]:
    """The secret values a database URL holds, raw and percent-decoded (three characters or
    more: masking a shorter one would garble a message more than it hides)."""
    found: list[str] = []
    try:
        parsed = make_url(url)
        found.append(parsed.password or "")
        for key, values in parsed.query.items():
            if key.strip().lower() in SECRET_URL_PARAMS:
                found.extend((values,) if isinstance(values, str) else values)
    except Exception:  # noqa: BLE001, S110  (whatever SQLAlchemy cannot parse is handled below)
        pass
    _, _, rest = str(url).partition("://")
    if "@" in rest:  # what an unparseable URL would hold: password up to the last "@"
        found.append(rest.rsplit("@", 1)[0].partition(":")[2])
        found.append(rest.split("@", 1)[0].partition(":")[2])
    for part in rest.partition("?")[2].split("&"):
        key, _, value = part.partition("=")
        if unquote_plus(key).strip().lower() in SECRET_URL_PARAMS:
            found.append(value)
    return {
        form
        for value in found
        for form in (str(value), unquote(str(value)), unquote_plus(str(value)))
        if len(form) >= 3
    }
