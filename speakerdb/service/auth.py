"""Keys: ``Authorization: Bearer KEY`` with scopes read < write < admin (storage/keys.py).

401 without a valid key, 403 when its scope is too small. Whether a request needs a key at
all is decided when ``serve`` starts (:attr:`ServeConfig.require_keys`) and only ever turned
on while it runs (:meth:`KeyCheck.keys_exist`): revoking keys never opens the service.

A key belongs to one gallery (tenant) and reaches only that gallery's routes: the plain
``/v1/...`` ones for the default gallery, ``/v1/galleries/{gallery}/...`` for the others. A key
used on another gallery's routes is answered 404 with the same words whether that gallery
exists or not (:func:`not_this_gallery`), before its scope is looked at: it can neither read
another gallery nor learn that it exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from ..api import SpeakerDB
from ..config import DEFAULT_GALLERY
from ..storage.keys import SCOPES, KeyInfo
from .lanes import GALLERY, Lane
from .responses import ApiError
from .settings import ServeConfig

log = logging.getLogger("speakerdb.server")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name (None without keys) and scope."""

    key_name: str | None
    scope: str


class KeyCheck:
    """Whether this worker's requests need a key, and whose key a request carries.

    Keys are read through the admin lane's facade from any thread (``authenticate`` only
    reads the store, whose engine is thread-safe); ``not_ready`` says why there is no
    database yet, when it cannot be opened.
    """

    def __init__(self, config: ServeConfig, lane: Lane, not_ready: Callable[[], str | None]) -> None:
        self.insecure_no_auth = config.insecure_no_auth
        # Whether a request needs a key. Set at start and only ever turned on: revoking keys
        # while the service runs must never open it (a database whose keys are all revoked
        # refuses every request instead).
        self.required = config.require_keys and not config.insecure_no_auth
        self._lane = lane
        self._not_ready = not_ready

    def page_refusal(self, host: str | None, origin: str | None) -> str | None:
        """Why a request (or a WebSocket) with these Host and Origin headers is refused while no
        key is needed (:func:`keyless_refusal`; any name with --insecure-no-auth), or None. With
        keys nothing is ambient: neither header matters."""
        if self.required:
            return None
        return keyless_refusal(host, origin, any_name=self.insecure_no_auth)

    def keys_exist(self, db: SpeakerDB) -> bool:
        """Whether requests need a key from now on (see ``required``); never turns back off."""
        if not self.required and not self.insecure_no_auth and db.has_keys(include_revoked=True, any_gallery=True):
            self.required = True
            log.warning("speakerdb worker %d: the database now has API keys: every request needs one", os.getpid())
        return self.required

    def authenticate(self, header: str | None) -> KeyInfo | None:
        """The caller's key; None when the service runs without keys (loopback and the database
        never had one, or --insecure-no-auth)."""
        if self.insecure_no_auth:
            return None
        db = self._lane.db
        if db is None:
            raise ApiError(
                503, "not_ready", self._not_ready() or "the service is starting: retry shortly", {"Retry-After": "5"}
            )
        scheme, _, key = (header or "").partition(" ")
        if not header:
            if not self.keys_exist(db):
                return None  # loopback only: serve refuses other hosts while the database never had a key
            raise ApiError(
                401,
                "unauthorized",
                "this service needs an API key: send `Authorization: Bearer KEY`",
                {"WWW-Authenticate": "Bearer"},
            )
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401, "unauthorized", "send the key as `Authorization: Bearer KEY`", {"WWW-Authenticate": "Bearer"}
            )
        info = db.authenticate(key.strip(), any_gallery=True)  # its gallery is checked against the URL's
        if info is None:
            raise ApiError(
                401,
                "unauthorized",
                "the API key is not valid (unknown, revoked or mistyped)",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return info


#: Where the outer layer (connections.Guard) leaves the key it checked before an upload's body.
CHECKED_KEY = "speakerdb_key"
#: Where the route's key check leaves the name of the key that called, for the access log.
CALLER_KEY = "speakerdb_caller"
#: The routes of a gallery other than the default begin with this, then the gallery's name.
GALLERY_PREFIX = "/v1/galleries/"


def gallery_of_path(path: str) -> str:
    """The gallery a request's (decoded) path names: ``/v1/galleries/{gallery}/...``, else the default."""
    if path.startswith(GALLERY_PREFIX):
        return path.removeprefix(GALLERY_PREFIX).partition("/")[0]
    return DEFAULT_GALLERY


def route_path(path: str) -> str:
    """``path`` as the default gallery's route: ``/v1/galleries/acme/identify`` -> ``/v1/identify``."""
    if path.startswith(GALLERY_PREFIX):
        return "/v1/" + path.removeprefix(GALLERY_PREFIX).partition("/")[2]
    return path


def not_this_gallery(gallery: str) -> ApiError:
    """The answer to a key used on another gallery's routes: the same for a gallery that exists
    and one that does not, so that a key learns nothing about galleries not its own."""
    return ApiError(
        404, "gallery_not_found", f"no gallery named {gallery!r} for this key (a key reaches its own gallery only)"
    )


def loopback_name(host: str) -> bool:
    """Whether a Host header (``name[:port]``, ``[v6]:port``) names this machine's loopback:
    ``localhost``, a name under ``.localhost`` (browsers map those to loopback themselves, never
    through DNS), either with the trailing dot of a fully qualified name, or a loopback address,
    IPv4 also in the short forms of :func:`inet_aton_loopback`."""
    name = host.strip().lower()
    bracketed = name.startswith("[")
    if bracketed:
        name, _, after = name[1:].partition("]")
        if after and not (after[0] == ":" and after[1:].isdigit()):
            return False  # only a port may follow the address
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    typed = name
    name = name.removesuffix(".")  # a fully qualified name (http://localhost.:8000/): the same name
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return not bracketed and inet_aton_loopback(typed)


#: One part of an IPv4 address as inet_aton(3) reads it: hex, octal (a lone 0 too), decimal.
_INET_PART = re.compile(r"0x[0-9a-f]+|0[0-7]*|[1-9][0-9]{0,9}")


def inet_aton_loopback(name: str) -> bool:
    """Whether ``name`` is a 127/8 address in a form that inet_aton(3), and so the clients that
    send a Host as it was typed (Python's), take: ``127.1``, ``127.0.1``, ``2130706433``,
    ``0x7f.1``, ``0177.0.0.1`` (browsers write these as ``127.0.0.1`` themselves). Its grammar
    exactly, less what glibc's ignores after a space: one to four parts, the last filling the bits
    the others leave, nothing that overflows. A name that is no such address (``127.1.evil``,
    ``127.1.``) is one that DNS resolves, which a rebinding site may point here: refused."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_PART.fullmatch(part) for part in parts):
        return False
    *leading, last = [int(part, 16 if part.startswith("0x") else 8 if part.startswith("0") else 10) for part in parts]
    if any(value > 0xFF for value in leading) or last >> (32 - 8 * len(leading)):
        return False
    return (leading[0] if leading else last >> 24) == 127


def keyless_refusal(host: str | None, origin: str | None, *, any_name: bool = False) -> str | None:
    """Why a request to a service that needs no key is refused, or None when it is not.

    Such a service listens on loopback only, yet any web page its user opens can reach it: by
    pointing a name of its own at 127.0.0.1 (DNS rebinding: the page is then same-origin and
    reads every answer; the Host header carries that name), or by sending a form or a WebSocket
    across origins (the Origin header names the page's). Programs send no Origin and a Host that
    is the address they dialled. ``any_name`` (``--insecure-no-auth``, which may serve any
    name): only the Origin is checked.
    """
    if not any_name and host is not None and not loopback_name(host):
        return (
            "this service runs without keys and answers requests to this machine's loopback names only "
            f"(localhost, 127.0.0.1, [::1]), not to {host[:80]!r}: create a key to serve other names"
        )
    if origin is not None:
        try:
            same = urllib.parse.urlsplit(origin).netloc.lower() == (host or "").strip().lower()
        except ValueError:
            same = False
        if not same:
            return f"a page of another origin ({origin[:80]}) may not use this service without a key"
    return None


def require(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller's key must have ``scope`` (read < write < admin)."""
    assert scope in SCOPES

    async def dependency(request: Request) -> Caller:
        keys: KeyCheck = request.app.state.service.keys
        gallery = request.path_params.get("gallery", DEFAULT_GALLERY)
        GALLERY.set(gallery)  # the request's context: its facade calls run in this gallery (lanes.py)
        header = request.headers.get("authorization")
        if keys.insecure_no_auth:
            return Caller(None, "admin")
        checked = getattr(request.state, CHECKED_KEY, None)  # uploads: the guard checked it first
        if checked is not None and checked[0] == header:
            info = checked[1]
        else:  # PBKDF2 on the first use of a key and one indexed query: off the event loop
            info = await asyncio.get_running_loop().run_in_executor(None, keys.authenticate, header)
        if info is None:
            return Caller(None, "admin")
        request.scope.setdefault("state", {})[CALLER_KEY] = info.name  # logged even if refused below
        if info.gallery != gallery:
            raise not_this_gallery(gallery)
        if not info.allows(scope):
            raise ApiError(403, "forbidden", f"key {info.name!r} has scope {info.scope!r}; this needs {scope!r}")
        return Caller(info.name, info.scope)

    return dependency
