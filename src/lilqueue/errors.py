"""lilqueue's exceptions: one root, a connection subtree, no builtin names shadowed."""

from __future__ import annotations


class LilqueueError(Exception):
    """The root of every exception lilqueue raises on purpose."""


class ConfigError(LilqueueError):
    """A bad configuration key, value or backend URL; the message names the key."""


class TaskError(LilqueueError):
    """A task that cannot be added (bad data, priority, delay or ttr) or a misused outcome."""


class WireError(LilqueueError):
    """A payload that is not a task envelope: bad JSON, bad shape or bad signature."""


class BackendError(LilqueueError):
    """The backend refused or failed an operation."""


class BackendConnectionError(BackendError):
    """The backend could not be reached, or the connection to it was lost."""


class BackendTimeoutError(BackendConnectionError):
    """Connecting to, or talking with, the backend took longer than allowed."""


class UnsupportedError(LilqueueError):
    """The backend cannot do this (its capabilities declare it ``none``)."""
