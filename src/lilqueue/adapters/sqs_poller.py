"""The receiving side of the SQS adapter: many SQS queues polled at once, most urgent first.

Every SQS queue a worker watches (one band of one lilqueue queue) is a :class:`Slot`.
A slot has at most one ``ReceiveMessage`` in flight and holds at most one received
message, so nothing is taken from SQS that this worker could not run next.

Three kinds of receive, each on a thread pool of its own so that no kind queues
behind another:

- a *quick look* (``WaitTimeSeconds=0``, :data:`QUICK_THREADS` threads) answers within a
  round trip. ``take`` hands out the first slot (most urgent band first) holding a
  message, but waits for unanswered quick looks at more urgent slots, at most
  :data:`PRIORITY_WAIT` seconds. A slot found empty is looked at again only once its
  answer is :data:`FRESH` seconds old, and not while a message is held (a burst drain
  costs a request per task, not one per watched queue);
- a *long poll* (``WaitTimeSeconds=wait``, :data:`LONG_THREADS` threads) follows a quick
  look that found nothing while a ``take`` with a timeout is waiting, and goes on polling
  while takes keep waiting, across calls. With more slots than threads, long polls take
  turns and are shortened (down to 1 s) so a round over every slot stays near ``wait``;
- a *confirming look* (``WaitTimeSeconds=1``) on every slot before a ``take`` with
  timeout 0 answers "nothing ready": on SQS a quick look samples only some servers.

``take(slots, 0)`` returns None only when no receive is in flight, no message is held
and every slot was confirmed empty: a burst worker never stops with a message stranded.

A message nobody takes within :data:`KEEP` seconds (the worker is busy) is handed back
by the keeper thread; :meth:`Poller.give_back` hands back every held message and waits
for the receives in flight, which hand back what they bring. Handing back is the
adapter's business (a callback): it must not count a delivery.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lilqueue.errors import LilqueueError

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

#: threads for quick looks (and hand-backs), and for long polls and confirming looks
QUICK_THREADS = 32
LONG_THREADS = 256
#: seconds a message fetched while nobody waits is kept for the next take
KEEP = 3.0
#: the longest a take waits for more urgent quick looks before handing out what it has
PRIORITY_WAIT = 1.0
#: WaitTimeSeconds of a confirming look
CONFIRM_WAIT = 1
#: seconds a slot found empty is not looked at again by a take (a confirming look still is)
FRESH = 1.0
QUICK, LONG, CONFIRM = "quick", "long", "confirm"

Receive = Callable[[str, int], list["MessageTypeDef"]]
HandBack = Callable[[str, "MessageTypeDef"], None]


@dataclasses.dataclass(eq=False, slots=True)
class Slot:
    """One SQS queue being watched: the band ``band`` (any object) of the lilqueue queue ``queue``."""

    queue: str
    band: Any
    url: str
    polling: bool = False  # a receive (or a hand-back) is in flight
    quick: bool = False  # ... and it is a quick look
    message: MessageTypeDef | None = None  # received, not yet handed out
    fruitful: bool = True  # its last receive brought a message (or it has had none yet)
    answered_at: float = 0.0  # when its last receive answered (monotonic seconds)
    received_at: float = 0.0
    error: LilqueueError | None = None


Taken = tuple[Slot, "MessageTypeDef", float]


class Poller:
    """Receives for one adapter. ``receive(url, wait)`` returns at most one message and raises
    LilqueueError; ``hand_back(url, message)`` returns one uncounted."""

    def __init__(self, receive: Receive, hand_back: HandBack, *, wait: int, io_timeout: float) -> None:
        self.receive = receive
        self.hand_back = hand_back
        self.wait = wait
        self.io_timeout = io_timeout
        self._cond = threading.Condition()
        self._known: dict[int, Slot] = {}
        self._listening = False  # long polls may go on: the last take had a timeout
        self._returning = False  # give_back() ran: whatever arrives goes back at once
        self._closed = False
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._keeper: threading.Thread | None = None

    # -- taking ---------------------------------------------------------------------------

    def take(self, slots: list[Slot], timeout: float) -> Taken | None:
        """The most urgent message of ``slots``, waiting up to ``timeout`` seconds for one.

        With ``timeout`` 0, None means every slot was looked at and confirmed empty with
        nothing in flight. Raises the LilqueueError a receive met.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            self._returning = False
            self._listening = timeout > 0
            for slot in slots:
                self._known.setdefault(id(slot), slot)
            self._look(slots)
            found = self._wait_for(slots, deadline, timeout > 0)
            if found is None and timeout <= 0:
                self._start(slots, CONFIRM)
                found = self._wait_for(slots, deadline, False)
            return found

    def _wait_for(self, slots: list[Slot], deadline: float, patient: bool) -> Taken | None:
        """Wait (lock held) for a message to hand out; None once the wait is over.

        ``patient``: wait until ``deadline`` (and for quick looks in flight); otherwise
        until no receive is in flight on ``slots``.
        """
        blocked_since: float | None = None
        while True:
            now = time.monotonic()
            slot = self._pick(slots, blocked_since is not None and now - blocked_since >= PRIORITY_WAIT)
            if slot is not None:
                return self._hand_out(slot)
            if blocked_since is None and any(s.message is not None for s in slots):
                blocked_since = now
            pause = self._pause(slots, deadline - now, patient)
            if pause is None:
                return None
            if blocked_since is not None:
                pause = min(pause, blocked_since + PRIORITY_WAIT - now)
            self._cond.wait(max(pause, 0.001))

    def _pause(self, slots: list[Slot], left: float, patient: bool) -> float | None:
        """How long to wait for news (None: the wait is over)."""
        bound = self.io_timeout + self.wait + 1.0  # no receive lasts longer; a safety net
        if patient and left > 0:
            return left
        in_flight = any(s.quick for s in slots) if patient else any(s.polling for s in slots)
        return bound if in_flight else None

    def _pick(self, slots: list[Slot], impatient: bool) -> Slot | None:
        """The first slot holding a message, unless a quick look ahead of it is unanswered."""
        for slot in slots:
            if slot.error is not None:
                error = slot.error
                slot.error = None
                raise error
            if slot.message is not None:
                return slot
            if slot.quick and not impatient:
                return None
        return None

    def _hand_out(self, slot: Slot) -> Taken:
        message = slot.message
        assert message is not None
        slot.message = None
        self._cond.notify_all()
        return slot, message, slot.received_at

    # -- receiving (pool threads) -------------------------------------------------------------

    def _look(self, slots: list[Slot]) -> None:
        """Start the receives a take needs on its idle slots (lock held): a quick look where
        the last receive brought a message, or (while no message is held) where it is
        older than FRESH; elsewhere, a long poll if the take waits, else nothing."""
        held = any(s.message is not None for s in slots)
        stale = time.monotonic() - FRESH
        looks = [s for s in slots if s.fruitful or (not held and s.answered_at < stale)]
        self._start(looks, QUICK)
        if self._listening:
            self._start(slots, LONG)

    def _start(self, slots: list[Slot], kind: str) -> None:
        """Start a receive of ``kind`` on every slot with none in flight and no message (lock held)."""
        for slot in slots:
            if not slot.polling and slot.message is None and not self._closed:
                slot.polling = True
                slot.quick = kind == QUICK
                self._submit(slot, kind)

    def _submit(self, slot: Slot, kind: str) -> None:
        pool = self._pool(QUICK if kind == QUICK else LONG)
        try:
            pool.submit(self._receive_into, slot, kind)
        except RuntimeError:  # shut down by close() in another thread
            slot.polling = False
            slot.quick = False

    def _pool(self, kind: str) -> ThreadPoolExecutor:
        pool = self._pools.get(kind)
        if pool is None:
            size = QUICK_THREADS if kind == QUICK else LONG_THREADS
            pool = self._pools[kind] = ThreadPoolExecutor(size, thread_name_prefix=f"lilqueue-sqs-{kind}")
        return pool

    def _receive_into(self, slot: Slot, kind: str) -> None:
        """Pool thread: one receive into ``slot``; whatever happens, the slot is settled."""
        messages: list[MessageTypeDef] = []
        error: LilqueueError | None = None
        try:
            if self._wanted(kind):
                messages = self.receive(slot.url, self._wait_of(kind))
        except LilqueueError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - reported to the taking thread
            error = LilqueueError(f"SQS ReceiveMessage: {exc!r}")
        finally:
            self._settle(slot, kind, messages, error)

    def _wanted(self, kind: str) -> bool:
        """Whether a receive that waited its turn in a pool is still wanted (else it is skipped)."""
        if self._returning or self._closed:
            return False
        return kind != LONG or self._listening  # a long poll nobody waits for any more: no

    def _wait_of(self, kind: str) -> int:
        if kind == QUICK:
            return 0
        if kind == CONFIRM:
            return CONFIRM_WAIT
        count = len(self._known)
        return self.wait if count <= LONG_THREADS else max(1, self.wait * LONG_THREADS // count)

    def _settle(self, slot: Slot, kind: str, messages: list[MessageTypeDef], error: LilqueueError | None) -> None:
        with self._cond:
            slot.error = error
            slot.quick = False
            slot.fruitful = bool(messages) or error is not None
            slot.answered_at = time.monotonic()
            self._cond.notify_all()
            if messages and not (self._returning or self._closed):
                slot.message = messages[0]
                slot.received_at = time.monotonic()
                slot.polling = False
                self._wake_keeper()
                return
            if not messages and error is None and kind != CONFIRM and self._listening and not self._closed:
                self._submit(slot, LONG)  # found nothing: go on (or start) long polling
                return
            if not messages:
                slot.polling = False
                return
        self._return(slot, messages[0])  # it came after give_back() or close()

    def _return(self, slot: Slot, message: MessageTypeDef) -> None:
        """Hand ``message`` back (slot marked busy meanwhile), then free the slot."""
        try:
            self.hand_back(slot.url, message)
        except Exception as exc:  # noqa: BLE001 - the message comes back after its visibility timeout
            log.warning("could not give back an SQS message of %s: %s", slot.url, exc)
        finally:
            with self._cond:
                slot.polling = False
                self._cond.notify_all()

    # -- keeping and giving back ------------------------------------------------------------

    def _wake_keeper(self) -> None:
        """Make sure the keeper thread runs while a message is held (lock held)."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="lilqueue-sqs-keeper", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        """Keeper thread: hand back messages nobody took within KEEP seconds; ends when none is held."""
        while True:
            with self._cond:
                held = [s for s in self._known.values() if s.message is not None]
                if self._closed or not held:
                    self._keeper = None
                    return
                now = time.monotonic()
                chosen = self._claim([s for s in held if now - s.received_at >= KEEP])
                if not chosen:
                    self._cond.wait(max(0.01, min(s.received_at for s in held) + KEEP - now))
            for slot, message in chosen:
                self._return(slot, message)

    def _claim(self, slots: list[Slot]) -> list[tuple[Slot, MessageTypeDef]]:
        """Take the messages out of ``slots`` to hand them back, marking the slots busy (lock held)."""
        chosen = []
        for slot in slots:
            if slot.message is not None:
                chosen.append((slot, slot.message))
                slot.message = None
                slot.polling = True
        return chosen

    def give_back(self, *, settle: bool = True) -> None:
        """Hand back every held message. What the receives in flight bring goes back as it
        comes; with ``settle``, wait for them (at most one long poll and a reply), so a
        process exiting next strands nothing."""
        with self._cond:
            self._returning = True
            self._listening = False
            chosen = self._claim(list(self._known.values()))
            self._cond.notify_all()
        if chosen:
            pool = self._pool(QUICK)
            concurrent.futures.wait([pool.submit(self._return, slot, message) for slot, message in chosen])
        if settle:
            with self._cond:
                self._cond.wait_for(self._idle, self.wait + self.io_timeout + 1.0)

    def _idle(self) -> bool:
        return not any(s.polling for s in self._known.values())

    def close(self) -> None:
        """Give back (not waiting for receives in flight: they hand back what they bring), stop the threads."""
        try:
            self.give_back(settle=False)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            for pool in self._pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
