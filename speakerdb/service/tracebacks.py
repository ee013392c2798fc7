"""Tracebacks for the service's log with nothing of a request's data in them.

An exception's message is made of the values it was raised with: ``KeyError('Alice Smith')``,
an IntegrityError's statement and parameters, a path a client named. In the operator's log a
speaker's name would outlive the person's opt-out, so the service logs what finds the bug
instead: each exception's type and its stack frames (file, line, function), for the
exceptions it was raised from or while handling too, never a message, a source line or a value.
"""

from __future__ import annotations

import logging
import traceback
import types

#: What Python's tracebacks say between an exception and the one it was raised from or while handling.
CAUSE = "\nThe above exception was the direct cause of the following exception:\n"
CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n"


def type_name(error: BaseException) -> str:
    """``error``'s class as code names it (``KeyError``, ``sqlalchemy.exc.IntegrityError``)."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def describe(error: BaseException) -> str:
    """``error`` as a traceback without messages: the exceptions of its chain, oldest first as
    Python prints them, each its frames (file, line, function) and then its type; an exception
    group's members follow it, indented."""
    return "\n".join(_chain(error, set()))


def _chain(error: BaseException, seen: set[int]) -> list[str]:
    lines: list[str] = []
    seen.add(id(error))
    earlier, link = error.__cause__, CAUSE
    if earlier is None and not error.__suppress_context__:
        earlier, link = error.__context__, CONTEXT
    if earlier is not None and id(earlier) not in seen:  # a cycle is cut where it closes
        lines += [*_chain(earlier, seen), link]
    lines += _frames(error.__traceback__)
    lines.append(type_name(error))
    members = getattr(error, "exceptions", None)  # an exception group's (Python 3.11: BaseExceptionGroup)
    if isinstance(members, tuple) and all(isinstance(m, BaseException) for m in members):
        for number, member in enumerate(members, 1):
            lines.append(f"  +---- {number} of {len(members)}")
            if id(member) not in seen:
                lines += [f"  | {line}" for line in _chain(member, seen)]
    return lines


def _frames(tb: types.TracebackType | None) -> list[str]:
    if tb is None:
        return []
    # walk_tb reads the code objects only: no source line, no local variable is looked at.
    frames = [
        f'  File "{frame.f_code.co_filename}", line {lineno}, in {frame.f_code.co_name}'
        for frame, lineno in traceback.walk_tb(tb)
    ]
    return ["Traceback (most recent call last):", *frames]


def log_error(logger: logging.Logger, what: str, error: BaseException) -> None:
    """Log ``error`` at ERROR: ``what``, its type and :func:`describe`'s traceback (not as
    exc_info, which a handler would print with the messages)."""
    logger.error("%s: %s (messages left out)\n%s", what, type_name(error), describe(error))
