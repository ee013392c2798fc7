"""Database URLs made fit to be shown: secrets hidden in the URL itself and in error messages.

Used by the store (names, errors), the schema check (errors) and the facade; whether a
target is a URL at all is decided in :mod:`speakerdb.config`.
"""

from __future__ import annotations

import re
import weakref
from urllib.parse import unquote, unquote_plus

from sqlalchemy.engine import Engine, make_url

__all__ = ["MASK", "SECRET_URL_PARAMS", "display_url", "engine_name", "redact", "remember_typed"]

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
    """The URL as it may be shown and logged: as the user typed it (its scheme, its escapes,
    the order of its parameters), with any secret hidden.

    The password of ``user:password@`` and the values of :data:`SECRET_URL_PARAMS` in the
    query become ``***``, whether or not SQLAlchemy can parse the URL (several hosts, a port
    that is not a number): this is the one place a database URL is made fit to be shown, in
    ``info``, in error messages, in logs and in the service's answers.
    """

    def mask_query(query: str) -> str:
        out = []
        for part in query.split("&"):
            key, sep, _ = part.partition("=")
            out.append(f"{key}={MASK}" if sep and unquote_plus(key).strip().lower() in SECRET_URL_PARAMS else part)
        return "&".join(out)

    url = str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:  # a libpq "key=value" string
        return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", url)
    if "@" in rest:
        # Everything up to the last "@" is a user and maybe a password (one holding an unescaped
        # "@" included): the user is shown, the password never.
        userinfo, rest = rest.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{':' + MASK if colon else ''}@{rest}"
    head, question, query = rest.partition("?")
    return f"{scheme}://{head}{question}{mask_query(query)}"


#: The URL each server engine was made from, as the user typed it: messages show its scheme
#: (``postgresql://``, ``postgres://``), not the driver's ``postgresql+psycopg://`` the engine uses.
_TYPED: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def remember_typed(engine: Engine, url: str) -> None:
    """Remember that ``engine`` was opened for ``url`` as typed (see :func:`engine_name`)."""
    _TYPED[engine] = url


def engine_name(engine: Engine) -> str:
    """How messages name ``engine``'s database: its SQLite file, or its server URL as the user
    typed it, secrets hidden (:func:`display_url`)."""
    if engine.dialect.name == "sqlite":
        return str(engine.url.database)
    return display_url(_TYPED.get(engine) or engine.url.render_as_string(hide_password=False))


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
