"""Each thread's connection to the backend, for one App; given back when its thread ends.

Adapters are not thread-safe, so every thread that uses an App (a worker, a web
server's request thread, an auto-touch thread) gets an adapter of its own on first use.
The App keeps it in a ``threading.local``, so reading it per task stays one attribute
read, beside a :class:`Slot` from :meth:`Connections.take`.

A thread-local's values are dropped when their thread ends, and the slot's finalizer
then hands the adapter back: to a short idle list that the next new thread takes from
before connecting (a server that starts a thread per request connects once, not once
per request), or closed when that list is full. So the connections open follow the
threads alive, never the threads that ever ran. An adapter goes idle only after its
held-back acks are sent (``flush``) and its prefetched messages returned
(``give_back``); a backend without leases (``ttr`` none, e.g. Gearman) hands a job back
only when its worker's connection closes, so its adapters are closed, never reused.

Ownership: the ``in_use`` dict, under one lock. Whoever removes an adapter from it
(its thread's end, :meth:`Connections.discard`, :meth:`Connections.close`) closes it or
makes it idle; the others find it gone and leave it alone.

Fork: a child must neither use nor close the parent's connections (closing would send
pending acks down sockets the parent still uses). The App swaps in a new
:class:`Connections` in the child, and a finalizer does nothing outside the process
that made it (the child's copies of other threads' slots die before fork hooks run).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable

from lilqueue.adapters.base import Adapter

log = logging.getLogger(__name__)

#: How many adapters of ended threads an App keeps for its next new threads.
MAX_IDLE = 8


class Slot:
    """Kept in a thread-local beside the thread's adapter: when it dies, the adapter goes back."""

    __slots__ = ("__weakref__",)


class Connections:
    """The adapters one App opened in this process: in use by a thread, or idle."""

    def __init__(self, connect: Callable[[], Adapter], *, max_idle: int = MAX_IDLE) -> None:
        self._connect = connect
        self._max_idle = max_idle
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._in_use: dict[int, Adapter] = {}
        self._idle: list[Adapter] = []
        self._generation = 0  # bumped by close(): an adapter taken before is not kept idle after

    def take(self) -> tuple[Adapter, Slot]:
        """An adapter for the calling thread (an idle one, else a new one) and the slot to keep
        beside it in the thread's thread-local. Raises what connecting raises."""
        with self._lock:
            adapter = self._idle.pop() if self._idle else None
            generation = self._generation
        if adapter is None:
            adapter = self._connect()
        slot = Slot()
        with self._lock:
            self._in_use[id(adapter)] = adapter
        weakref.finalize(slot, self._thread_ended, adapter, generation).atexit = False
        return adapter, slot

    def discard(self, adapter: Adapter) -> None:
        """Close ``adapter`` now (it is broken) instead of reusing it."""
        if self._release(adapter):
            _close_all([adapter], quiet=True)

    def close(self) -> None:
        """Close every adapter, in use or idle; raise the first error once all are closed."""
        with self._lock:
            adapters = [*self._in_use.values(), *self._idle]
            self._in_use.clear()
            self._idle.clear()
            self._generation += 1
        _close_all(adapters, quiet=False)

    def counts(self) -> tuple[int, int]:
        """How many adapters are in use by a thread, and how many idle."""
        with self._lock:
            return len(self._in_use), len(self._idle)

    def _release(self, adapter: Adapter) -> bool:
        """Take ``adapter`` out of use; False if someone else already did."""
        with self._lock:
            return self._in_use.pop(id(adapter), None) is not None

    def _thread_ended(self, adapter: Adapter, generation: int) -> None:
        """The finalizer of a thread's slot: make its adapter idle, or close it."""
        if os.getpid() != self._pid or not self._release(adapter):
            return
        if adapter.capabilities.ttr and _settled(adapter):
            with self._lock:
                if generation == self._generation and len(self._idle) < self._max_idle:
                    self._idle.append(adapter)
                    return
        _close_all([adapter], quiet=True)


def _settled(adapter: Adapter) -> bool:
    """Send what the adapter held back and return what it prefetched; False if that failed."""
    try:
        adapter.flush()
        adapter.give_back()
    except Exception as exc:  # noqa: BLE001 - a finalizer must not raise: close it instead
        log.info("not reusing a %s whose thread ended: %s", type(adapter).__name__, exc)
        return False
    return True


def _close_all(adapters: Iterable[Adapter], *, quiet: bool) -> None:
    """Close each adapter; unless ``quiet``, raise the first error after closing the rest."""
    first: Exception | None = None
    for adapter in adapters:
        try:
            adapter.close()
        except Exception as exc:  # noqa: BLE001 - close the others first
            log.info("closing a %s failed: %s", type(adapter).__name__, exc)
            first = first or exc
    if first is not None and not quiet:
        raise first
