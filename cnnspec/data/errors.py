"""DataError: data that cannot be read or does not fit the network."""

from __future__ import annotations

from cnnspec.errors import CnnspecError


class DataError(CnnspecError, ValueError):
    """The data cannot be used; the message says what to do."""
