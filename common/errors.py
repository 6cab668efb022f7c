"""The mfetch exception tree. Library errors are translated into it at the edges.

    MfetchError                  every error mfetch reports (the CLIs print one line, exit 1)
    ├── ConfigError              a bad flag, config file or environment value
    ├── TrackerError             the tracker is unreachable or refused a call
    │   └── NotFoundError        the tracker knows no such name or digest
    ├── SourceError              a source failed: refused, unreachable, bad status, stalled
    │   └── ProtocolError        a source answered, but not as HTTP ranges must
    ├── IntegrityError           bytes or a piece list that do not match their hashes
    └── StorageError             the local disk: not writable, full, a bad name
"""
from __future__ import annotations


class MfetchError(Exception):
    """Base of every error mfetch reports to a user."""


class ConfigError(MfetchError):
    """A flag, config file or environment variable is wrong."""


class TrackerError(MfetchError):
    """The tracker could not be reached or refused a call."""


class NotFoundError(TrackerError):
    """The tracker has no content under the name or digest asked for."""


class SourceError(MfetchError):
    """A source failed to deliver (connection, status, timeout)."""


class ProtocolError(SourceError):
    """A source answered in a way HTTP range semantics forbid."""


class IntegrityError(MfetchError):
    """Data that does not match the hash that vouches for it."""


class StorageError(MfetchError):
    """A local file could not be read, written or named."""
