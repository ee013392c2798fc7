"""Compatibility: the client lives in :mod:`speakerdb.service.client`; this path keeps working."""

from .service.client import Client

__all__ = ["Client"]
