"""speakerdb: a speaker enrollment and identification database.

The Python API lives in :mod:`speakerdb.api`; the names most people need are here::

    from . import SpeakerDB

They are imported on first use, so ``speakerdb --help`` does not pay for SQLAlchemy.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["SpeakerDB", "SpeakerDBError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "SpeakerDB":
        from .api import SpeakerDB

        return SpeakerDB
    if name == "SpeakerDBError":
        from .errors import SpeakerDBError

        return SpeakerDBError
    raise AttributeError(f"module 'speakerdb' has no attribute {name!r}")
