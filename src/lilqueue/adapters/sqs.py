"""``sqs://REGION`` (alias ``amazonsqs://``): Amazon SQS, or any server speaking its API.

Names. A lilqueue queue ``mail`` is the standard SQS queue ``mail`` (plus the
configured prefix) for the default priority band; the other bands and the held tasks
live in sibling queues (see :data:`BANDS`)::

    mail__urgent  priority 0-99         mail__low   1025-65535
    mail__high    100-511               mail__bulk  65536 and above
    mail          512-1024 (default)    mail__held  held tasks, with reason and time

Reserving. Every band of every watched queue is polled at once, from a small thread
pool: first a quick look (``WaitTimeSeconds=0``) at each, then long polls of ``wait``
seconds that stay open across ``reserve`` calls. The most urgent band that has a
message wins, so a task on any watched queue starts within about one round trip.
A poll that brings a message nobody is waiting for keeps it for the next ``reserve``
for :data:`KEEP` seconds; then it is given back as a fresh copy that carries its
delivery count, so attempts are never inflated by a message this worker did not run.

Attributes. Each message carries its id, priority, ttr, due time (when delayed) and
the deliveries of earlier copies as ``lilqueue-*`` message attributes; the body is
the task envelope, unchanged (base64 only for bytes SQS cannot carry as text).
``Job.deliveries`` is those earlier deliveries plus ``ApproximateReceiveCount``.

What SQS cannot do, and what this module does instead:

- hold: the message moves to ``NAME__held`` with its reason and time; ``held``,
  ``kick`` and ``delete --id`` receive-and-scan that queue.
- delays over 900 s: sent with the 900 s maximum and re-sent with the rest when
  they surface ("hops"), until due.
- delete by id of a task still in its delay: a tombstone (a tag ``lilqueue-deleted-ID``
  on the queue) that the worker receiving it honours. A ready task cannot be deleted
  by id: SQS removes only messages it has handed out.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from lilqueue.adapters.base import (
    Adapter,
    Capabilities,
    HeldJob,
    Job,
    Peeked,
    PeekState,
    QueueStats,
    emulated,
    missing,
    native,
)
from lilqueue.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ConfigError,
    LilqueueError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, MessageTypeDef

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Band:
    """Priorities ``low``..``high`` (inclusive) live in the SQS queue ``NAME + suffix``."""

    name: str
    low: int
    high: int
    suffix: str

    def __contains__(self, priority: int) -> bool:
        return self.low <= priority <= self.high


#: The priority bands, most urgent first. The default priority (1024) is in ``normal``,
#: whose queue has the lilqueue queue's own name, so other SQS clients can send to it.
BANDS: tuple[Band, ...] = (
    Band("urgent", 0, 99, "__urgent"),
    Band("high", 100, 511, "__high"),
    Band("normal", 512, 1024, ""),
    Band("low", 1025, 65_535, "__low"),
    Band("bulk", 65_536, 2**32 - 1, "__bulk"),
)
HELD_SUFFIX = "__held"
#: SQS's longest DelaySeconds; longer delays hop.
MAX_DELAY = 900
#: SQS's longest visibility timeout: a longer ttr is capped to it
MAX_VISIBILITY = 43_200
#: a delayed message surfacing this many seconds before its due time runs (any earlier: it hops)
HOP_SLACK = 0.5
#: seconds a received message stays invisible before its own ttr is applied
CLAIM = 60
#: seconds a message fetched while nobody waits is kept for the next reserve
KEEP = 3.0
#: seconds a scan of the held queue hides what it has seen from other scans
SCAN_HIDE = 30
#: the most held messages one scan looks at
SCAN_MAX = 1000
#: SQS keeps messages at most 14 days; held and delayed tasks get that by default
RETENTION = 1_209_600
TOMBSTONE = "lilqueue-deleted-"
# message attributes (at most 10 per message on SQS)
A_ID, A_PRIORITY, A_TTR, A_DUE = "lilqueue-id", "lilqueue-priority", "lilqueue-ttr", "lilqueue-due"
A_DELIVERIES, A_ENCODING = "lilqueue-deliveries", "lilqueue-encoding"
A_REASON, A_HELD_AT = "lilqueue-reason", "lilqueue-held-at"
_NOT_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_QUEUE_GONE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_QUEUE_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
_UNAVAILABLE = {"ServiceUnavailable", "InternalError", "InternalFailure", "RequestThrottled", "ThrottlingException"}
OPTIONS = ("region", "endpoint_url", "wait", "attributes", "connect_timeout")


def band_of(priority: int) -> Band:
    """The band a priority belongs to."""
    return next((b for b in BANDS if priority in b), BANDS[-1])


@dataclasses.dataclass(eq=False, slots=True)
class _Slot:
    """One SQS queue being watched: a band of a lilqueue queue."""

    queue: str
    band: Band
    url: str
    polling: bool = False  # a ReceiveMessage is in flight
    quick: bool = False  # ... and it is a quick look (it answers within a round trip)
    message: MessageTypeDef | None = None  # received, not yet handed out
    received_at: float = 0.0
    error: LilqueueError | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Receipt:
    url: str
    handle: str
    attributes: dict[str, str]


class SQSAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=emulated(
            "5 band queues polled most urgent first: 0-99, 100-511, 512-1024, 1025-65535, 65536+; "
            "best-effort order within a band"
        ),
        delay=emulated("DelaySeconds up to 900 s; longer delays re-sent in 900 s hops until due"),
        ttr=native("visibility timeout, set to the task's own ttr on receipt"),
        touch=native("ChangeMessageVisibility to the task's ttr"),
        retry=native("ChangeMessageVisibility to the retry delay"),
        hold=emulated("moved to the queue NAME__held with reason and time (kept up to 14 days)"),
        kick=emulated("moved back from NAME__held (receive and scan)"),
        stats=native("SQS's approximate counts"),
        blocking_reserve=native("long polls on every band of every watched queue at once"),
        fifo=missing("standard SQS queues deliver in best-effort order"),
        notes=(
            "delete by id: held tasks, and delayed ones through a tombstone; not ready ones. "
            "peek: held only (a receive would count as a delivery)."
        ),
    )
    max_body: ClassVar[int | None] = 1_048_576 - 32_768  # SQS's 1 MiB, less room for attributes

    def __init__(
        self,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        wait: int = 5,
        attributes: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.wait = wait
        self.attributes = dict(attributes or {})
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=wait + 15,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=64,
        )
        try:
            session = boto3.session.Session()
            self.client: SQSClient = session.client("sqs", region_name=region, endpoint_url=endpoint_url, config=config)
        except NoRegionError:
            raise ConfigError(
                "queue.amazonsqs.region: no region (give sqs://REGION, region = ..., or AWS_DEFAULT_REGION)"
            ) from None
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"queue.amazonsqs: cannot make an SQS client: {exc}") from exc
        self._urls: dict[str, str] = {}
        self._slots: dict[str, _Slot] = {}
        self._watch_lists: dict[tuple[str, ...], list[_Slot]] = {}
        self._cond = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> SQSAdapter:
        opts = dict(options)
        if url is not None:
            parts = urlsplit(url)
            if parts.path not in ("", "/"):
                raise ConfigError(f"queue.backend: SQS URLs look like sqs://REGION?endpoint_url=..., not {url!r}")
            if parts.netloc:
                opts["region"] = parts.netloc
            opts.update(parse_qsl(parts.query))
        kwargs: dict[str, Any] = {}
        for key, value in opts.items():
            kwargs[key] = _option(key, value)
        region = kwargs.pop("region", None)
        return cls(region, **kwargs)

    # -- producing -------------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        due = time.time() + delay if delay > 0 else None
        id = uuid.uuid4().hex if due is None else f"{uuid.uuid4().hex}-{math.ceil(due)}"
        attrs = {A_ID: id, A_PRIORITY: str(priority), A_TTR: str(ttr)}
        if due is not None:
            attrs[A_DUE] = f"{due:.3f}"
        name = queue + band_of(priority).suffix
        try:
            self._send(self._url(name), body, attrs, delay)
        except BackendError as exc:
            if _code(exc) not in _QUEUE_GONE:
                raise
            self._urls.pop(name, None)  # deleted behind our back: make it again
            self._send(self._url(name), body, attrs, delay)
        return id

    def _send(self, url: str, body: bytes, attrs: dict[str, str], delay: float = 0) -> None:
        text, encoded = _encode_body(body)
        if encoded:
            attrs = {**attrs, A_ENCODING: "base64"}
        with _translated("SendMessage"):
            self.client.send_message(
                QueueUrl=url,
                MessageBody=text,
                DelaySeconds=min(MAX_DELAY, max(0, math.ceil(delay))),
                MessageAttributes=_attribute_values(attrs),
            )

    # -- reserving ---------------------------------------------------------------------

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        slots = self._watch(queues)
        while True:
            taken = self._take(slots, deadline)
            if taken is None:
                return None
            job = self._job(*taken)
            if job is not None:
                return job

    def _watch(self, queues: Sequence[str]) -> list[_Slot]:
        """The slots of ``queues``, most urgent band first (creating the queues on first use)."""
        key = tuple(queues)
        slots = self._watch_lists.get(key)
        if slots is None:
            slots = []
            for band in BANDS:
                for queue in queues:
                    name = queue + band.suffix
                    slot = self._slots.get(name)
                    if slot is None:
                        slot = self._slots[name] = _Slot(queue, band, self._url(name))
                    slots.append(slot)
            self._watch_lists[key] = slots
        return slots

    def _take(self, slots: list[_Slot], deadline: float) -> tuple[_Slot, MessageTypeDef, float] | None:
        """The most urgent message of ``slots``, waiting until ``deadline`` for one."""
        with self._cond:
            self._poll(slots, 0)
            while True:
                best = self._best(slots)
                if best is not None:
                    message, received_at = best.message, best.received_at
                    assert message is not None
                    best.message = None
                    self._cond.notify_all()  # the poll thread keeping it may go
                    return best, message, received_at
                quick = any(s.quick for s in slots)
                left = deadline - time.monotonic()
                if left <= 0 and not quick:
                    return None
                if left > 0 and not quick:
                    self._poll(slots, self.wait)
                self._cond.wait(self.wait + 20 if quick else left)

    def _best(self, slots: list[_Slot]) -> _Slot | None:
        """The first slot holding a message, unless a quick look ahead of it is unanswered."""
        for slot in slots:
            if slot.error is not None:
                error, slot.error = slot.error, None
                raise error
            if slot.message is not None:
                return slot
            if slot.quick:
                return None
        return None

    def _poll(self, slots: list[_Slot], wait: int) -> None:
        """Start a ReceiveMessage on every slot that has none in flight and no message."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="lilqueue-sqs")
        for slot in slots:
            if not slot.polling and slot.message is None:
                slot.polling, slot.quick = True, wait == 0
                self._pool.submit(self._receive_into, slot, wait)

    def _receive_into(self, slot: _Slot, wait: int) -> None:
        """Pool thread: receive one message into ``slot``; give it back if unclaimed for KEEP seconds.

        A quick look that finds nothing goes on as one long poll, so a queue found empty
        is watched without a new request on every ``reserve``.
        """
        messages, error = self._receive_safely(slot.url, wait)
        if not messages and error is None and wait == 0 and self._go_on_waiting(slot):
            messages, error = self._receive_safely(slot.url, self.wait)
        with self._cond:
            slot.polling = slot.quick = False
            slot.error = error
            if messages and not self._closed:
                slot.message, slot.received_at = messages[0], time.monotonic()
            self._cond.notify_all()
            if messages and not self._closed:
                self._cond.wait_for(lambda: slot.message is not messages[0] or self._closed, KEEP)
                if slot.message is not messages[0]:
                    return  # handed out
                slot.message = None
        if messages:
            self._give_back(slot, messages[0])

    def _go_on_waiting(self, slot: _Slot) -> bool:
        """After an empty quick look: report it, and go on with a long poll unless closed."""
        with self._cond:
            slot.quick = False
            self._cond.notify_all()
            return not self._closed

    def _receive_safely(self, url: str, wait: int) -> tuple[list[MessageTypeDef], LilqueueError | None]:
        try:
            return self._receive(url, 1, wait, CLAIM), None
        except LilqueueError as exc:
            if _code(exc) in _QUEUE_GONE:  # the runner reconnects, and a new adapter makes it again
                return [], BackendConnectionError(f"SQS queue {url} was deleted: {exc}")
            return [], exc
        except Exception as exc:  # noqa: BLE001 - reported to the reserving thread
            return [], BackendError(f"SQS ReceiveMessage: {exc!r}")

    def _receive(self, url: str, count: int, wait: int, hide: int) -> list[MessageTypeDef]:
        with _translated("ReceiveMessage"):
            response = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=hide,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return response.get("Messages", [])

    def _give_back(self, slot: _Slot, message: MessageTypeDef) -> None:
        """Return a message this worker received but never ran, without counting a delivery."""
        attrs = _attributes(message)
        attrs.setdefault(A_ID, message.get("MessageId", uuid.uuid4().hex))
        attrs[A_DELIVERIES] = str(_deliveries(message) - 1)
        try:
            self._move(slot.url, message, slot.url, attrs)
        except LilqueueError as exc:
            log.warning("could not give back message %s (it returns after %ss): %s", attrs[A_ID], CLAIM, exc)

    def _job(self, slot: _Slot, message: MessageTypeDef, received_at: float) -> Job | None:
        """A Job for ``message``; None if it was a hop of a long delay or a deleted task."""
        attrs = _attributes(message)
        id = attrs.get(A_ID) or message.get("MessageId", "")
        deliveries = _deliveries(message)
        due = _float(attrs.get(A_DUE))
        if due is not None and deliveries == 1 and self._tombstoned(slot.queue, id):
            self._delete(slot.url, message)
            self._untag(slot.queue, id)
            return None
        if due is not None and due - time.time() > HOP_SLACK:
            self._move(slot.url, message, slot.url, attrs, delay=due - time.time())  # a hop of a long delay
            return None
        priority = _int(attrs.get(A_PRIORITY), slot.band.low if slot.band.suffix else 1024)
        ttr = _int(attrs.get(A_TTR), CLAIM)
        receipt = _Receipt(slot.url, message.get("ReceiptHandle", ""), attrs)
        if ttr != CLAIM or time.monotonic() - received_at > 1:
            try:
                self._change_visibility(receipt, ttr)
            except BackendConnectionError:
                raise
            except BackendError as exc:
                log.warning("could not set the ttr of message %s (its lease is %ss): %s", id, CLAIM, exc)
        body = _decode_body(message.get("Body", ""), attrs)
        return Job(id, slot.queue, body, priority, ttr, deliveries, receipt)

    # -- finishing ---------------------------------------------------------------------

    def delete(self, job: Job) -> None:
        receipt = _receipt(job)
        with _translated("DeleteMessage"):
            self.client.delete_message(QueueUrl=receipt.url, ReceiptHandle=receipt.handle)

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        receipt = _receipt(job)
        url = self._url(job.queue + band_of(priority).suffix)
        if url == receipt.url and delay <= MAX_DELAY:
            self._change_visibility(receipt, math.ceil(delay))
            return
        attrs = {**_lilqueue_attrs(job, receipt), A_PRIORITY: str(priority), A_DELIVERIES: str(job.deliveries)}
        if delay > MAX_DELAY:
            attrs[A_DUE] = f"{time.time() + delay:.3f}"
        self._send(url, job.body, attrs, delay)
        self.delete(job)

    def bury(self, job: Job, *, reason: str) -> None:
        receipt = _receipt(job)
        attrs = {
            **_lilqueue_attrs(job, receipt),
            A_DELIVERIES: str(job.deliveries),
            A_REASON: reason or "held",
            A_HELD_AT: f"{time.time():.6f}",
        }
        attrs.pop(A_DUE, None)
        self._send(self._url(job.queue + HELD_SUFFIX), job.body, attrs)
        self.delete(job)

    def touch(self, job: Job) -> None:
        self._change_visibility(_receipt(job), job.ttr)

    def _change_visibility(self, receipt: _Receipt, seconds: int) -> None:
        """Make the message invisible for ``seconds`` from now (at most SQS's 12 hours)."""
        with _translated("ChangeMessageVisibility"):
            self.client.change_message_visibility(
                QueueUrl=receipt.url, ReceiptHandle=receipt.handle, VisibilityTimeout=min(seconds, MAX_VISIBILITY)
            )

    def _move(self, url: str, message: MessageTypeDef, to: str, attrs: dict[str, str], *, delay: float = 0) -> None:
        """Send a copy of ``message`` with ``attrs`` to ``to``, then delete it from ``url``."""
        attrs = {k: v for k, v in attrs.items() if k != A_ENCODING}
        self._send(to, _decode_body(message.get("Body", ""), _attributes(message)), attrs, delay)
        self._delete(url, message)

    def _delete(self, url: str, message: MessageTypeDef) -> None:
        with _translated("DeleteMessage"):
            self.client.delete_message(QueueUrl=url, ReceiptHandle=message.get("ReceiptHandle", ""))

    # -- operating: held tasks -----------------------------------------------------------

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        return [_held_job(queue, m) for m in self._held(queue, lambda found: found[:limit])]

    def kick(self, queue: str, count: int) -> int:
        return len(self._held(queue, lambda found: found[:count], self._unhold))

    def kick_id(self, queue: str, id: str) -> bool:
        return bool(self._held(queue, lambda found: [m for m in found if _id(m) == id][:1], self._unhold))

    def delete_id(self, queue: str, id: str) -> bool:
        if self._held(queue, lambda found: [m for m in found if _id(m) == id][:1], self._drop):
            return True
        due = _due_of(id)
        if due is None or due <= time.time():
            return False  # unknown, or ready: SQS cannot remove a message it has not handed out
        return self._tombstone(queue, id, due)

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        if state != "held":
            raise UnsupportedError(f"SQS cannot peek at {state} tasks: a receive counts as a delivery")
        found = self._held(queue, lambda found: found[:1])
        return None if not found else Peeked(_id(found[0]), queue, _held_job(queue, found[0]).body)

    def _held(
        self,
        queue: str,
        choose: Callable[[list[MessageTypeDef]], list[MessageTypeDef]],
        act: Callable[[str, str, MessageTypeDef], None] | None = None,
    ) -> list[MessageTypeDef]:
        """Scan the held queue (oldest first), ``act`` on the chosen messages, show the rest again."""
        url = self._existing(queue + HELD_SUFFIX)
        if url is None:
            return []
        found: list[MessageTypeDef] = []
        acted: list[MessageTypeDef] = []
        try:
            while len(found) < SCAN_MAX and (batch := self._receive(url, 10, 0, SCAN_HIDE)):
                found.extend(batch)
            found.sort(key=lambda m: (_float(_attributes(m).get(A_HELD_AT)) or 0.0, _id(m)))
            chosen = choose(found)
            if act is not None:
                for message in chosen:
                    act(queue, url, message)
                    acted.append(message)
        finally:
            self._show(url, [m for m in found if not any(m is a for a in acted)])
        return chosen

    def _unhold(self, queue: str, url: str, message: MessageTypeDef) -> None:
        attrs = _attributes(message)
        for key in (A_REASON, A_HELD_AT, A_DUE):
            attrs.pop(key, None)
        attrs.setdefault(A_ID, message.get("MessageId", ""))
        self._move(url, message, self._url(queue + band_of(_int(attrs.get(A_PRIORITY), 1024)).suffix), attrs)

    def _drop(self, queue: str, url: str, message: MessageTypeDef) -> None:
        self._delete(url, message)

    def _show(self, url: str, messages: list[MessageTypeDef]) -> None:
        """Make scanned messages visible again."""
        for i in range(0, len(messages), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": m.get("ReceiptHandle", ""), "VisibilityTimeout": 0}
                for n, m in enumerate(messages[i : i + 10])
            ]
            with _translated("ChangeMessageVisibilityBatch"):
                self.client.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]

    # -- operating: tombstones for deleted delayed tasks --------------------------------

    def _tags(self, queue: str) -> dict[str, str]:
        url = self._existing(queue)
        if url is None:
            return {}
        with _translated("ListQueueTags"):
            return dict(self.client.list_queue_tags(QueueUrl=url).get("Tags", {}))

    def _tags_or_none(self, queue: str) -> dict[str, str]:
        """The queue's tags; none (with a warning) where reading them is not allowed."""
        try:
            return self._tags(queue)
        except BackendConnectionError:
            raise
        except BackendError as exc:
            log.warning("cannot read the tags of SQS queue %s (deleted delayed tasks may run): %s", queue, exc)
            return {}

    def _tombstoned(self, queue: str, id: str) -> bool:
        return TOMBSTONE + id in self._tags_or_none(queue)

    def _tombstone(self, queue: str, id: str, due: float) -> bool:
        tags = self._tags(queue)
        if TOMBSTONE + id in tags:
            return False
        stale = [k for k, v in tags.items() if k.startswith(TOMBSTONE) and (_float(v) or 0) + RETENTION < time.time()]
        url = self._url(queue)
        with _translated("TagQueue"):
            if stale:
                self.client.untag_queue(QueueUrl=url, TagKeys=stale)
            self.client.tag_queue(QueueUrl=url, Tags={TOMBSTONE + id: str(math.ceil(due))})
        return True

    def _untag(self, queue: str, id: str) -> None:
        with _translated("UntagQueue"):
            self.client.untag_queue(QueueUrl=self._url(queue), TagKeys=[TOMBSTONE + id])

    # -- operating: counts -----------------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        ready = delayed = reserved = held = 0
        for name in [queue + band.suffix for band in BANDS] + [queue + HELD_SUFFIX]:
            counts = self._counts(name)
            if name.endswith(HELD_SUFFIX):
                held = counts["ApproximateNumberOfMessages"] + counts["ApproximateNumberOfMessagesNotVisible"]
            else:
                ready += counts["ApproximateNumberOfMessages"]
                delayed += counts["ApproximateNumberOfMessagesDelayed"]
                reserved += counts["ApproximateNumberOfMessagesNotVisible"]
        now, tags = time.time(), self._tags_or_none(queue)
        deleted = sum(1 for k, v in tags.items() if k.startswith(TOMBSTONE) and (_float(v) or 0) > now)
        return QueueStats(ready, max(delayed - deleted, 0), reserved, held, approximate=True)

    def _counts(self, name: str) -> dict[str, int]:
        keys = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        keys.append("ApproximateNumberOfMessagesNotVisible")
        url = self._existing(name)
        if url is None:
            return dict.fromkeys(keys, 0)
        with _translated("GetQueueAttributes", name):
            found = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=keys)  # type: ignore[arg-type]
        values: dict[str, str] = {str(k): v for k, v in found.get("Attributes", {}).items()}
        return {k: _int(values.get(k), 0) for k in keys}

    # -- queues ------------------------------------------------------------------------------

    def _url(self, name: str) -> str:
        """The URL of the SQS queue ``name`` (cached), created with the configured attributes."""
        url = self._urls.get(name)
        if url is None:
            url = self._urls[name] = self._create(name)
        return url

    def _existing(self, name: str) -> str | None:
        """The URL of the SQS queue ``name`` (cached), or None if there is no such queue."""
        url = self._urls.get(name)
        if url is None and (url := self._lookup(name)) is not None:
            self._urls[name] = url
        return url

    def _create(self, name: str) -> str:
        attributes = {"MessageRetentionPeriod": str(RETENTION), **self.attributes}
        try:
            with _translated("CreateQueue", name):
                return self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]  # type: ignore[arg-type]
        except BackendError as exc:
            if _code(exc) not in _QUEUE_EXISTS:
                raise
        log.info("SQS queue %s exists with other attributes; using it as it is", name)
        url = self._lookup(name)
        if url is None:
            raise BackendError(f"SQS queue {name!r} exists but cannot be found")
        return url

    def _lookup(self, name: str) -> str | None:
        try:
            with _translated("GetQueueUrl", name):
                return self.client.get_queue_url(QueueName=name)["QueueUrl"]
        except BackendError as exc:
            if _code(exc) in _QUEUE_GONE:
                return None
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(operation: str, queue: str = "") -> Iterator[None]:
    """Turn botocore's errors into lilqueue's, chained."""
    what = f"SQS {operation}" + (f" {queue!r}" if queue else "")
    try:
        yield
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        raise BackendTimeoutError(f"{what}: {exc}") from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise BackendConnectionError(f"{what}: {exc}") from exc
    except NoCredentialsError as exc:
        raise BackendError(f"{what}: no AWS credentials in the default chain (environment, profile, role)") from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        cls = BackendConnectionError if status >= 500 or code in _UNAVAILABLE else BackendError
        raise cls(f"{what}: {exc}") from exc
    except BotoCoreError as exc:
        raise BackendError(f"{what}: {exc}") from exc


def _code(exc: BaseException) -> str:
    """The SQS error code behind a translated error ("" if none)."""
    cause = exc.__cause__
    return str(cause.response.get("Error", {}).get("Code", "")) if isinstance(cause, ClientError) else ""


def _option(key: str, value: Any) -> Any:
    where = f"queue.amazonsqs.{key}"
    if key in ("region", "endpoint_url"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty string, not {value!r}")
        return value
    if key == "wait":
        number = _float(value)
        if number is None or not 1 <= number <= 20 or number != int(number):
            raise ConfigError(f"{where}: must be a whole number of seconds from 1 to 20 (SQS long poll), not {value!r}")
        return int(number)
    if key == "connect_timeout":
        number = _float(value)
        if number is None or number <= 0:
            raise ConfigError(f"{where}: must be a positive number of seconds, not {value!r}")
        return number
    if key == "attributes":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: must be a table of SQS queue attributes, not {value!r}")
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    raise ConfigError(f"{where}: unknown option (expected one of {', '.join(OPTIONS)})")


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: str | None, default: int) -> int:
    number = _float(value)
    return default if number is None else int(number)


def _encode_body(body: bytes) -> tuple[str, bool]:
    """The text SQS carries: the body itself when it is valid text, else base64."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if not _NOT_TEXT.search(text):
            return text, False
    return base64.b64encode(body).decode("ascii"), True


def _decode_body(text: str, attrs: Mapping[str, str]) -> bytes:
    if attrs.get(A_ENCODING) == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def _attribute_values(attrs: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    return {k: {"DataType": "String", "StringValue": _NOT_TEXT.sub("\ufffd", v)} for k, v in attrs.items() if v}


def _attributes(message: MessageTypeDef) -> dict[str, str]:
    """The message's ``lilqueue-*`` attributes as strings."""
    found = message.get("MessageAttributes", {})
    return {k: v["StringValue"] for k, v in found.items() if k.startswith("lilqueue-") and "StringValue" in v}


def _deliveries(message: MessageTypeDef) -> int:
    """Deliveries of earlier copies plus this copy's ApproximateReceiveCount."""
    count = _int(message.get("Attributes", {}).get("ApproximateReceiveCount"), 1)
    return _int(_attributes(message).get(A_DELIVERIES), 0) + count


def _id(message: MessageTypeDef) -> str:
    return _attributes(message).get(A_ID) or message.get("MessageId", "")


def _due_of(id: str) -> float | None:
    """The due time a delayed task's id carries (``HEX-EPOCH``), or None."""
    _, sep, due = id.rpartition("-")
    return _float(due) if sep and due.isdigit() else None


def _receipt(job: Job) -> _Receipt:
    if not isinstance(job.receipt, _Receipt):
        raise BackendError(f"job {job.id} was not reserved from SQS by this adapter")
    return job.receipt


def _lilqueue_attrs(job: Job, receipt: _Receipt) -> dict[str, str]:
    attrs = {k: v for k, v in receipt.attributes.items() if k != A_ENCODING}
    attrs.update({A_ID: job.id, A_PRIORITY: str(job.priority), A_TTR: str(job.ttr)})
    return attrs


def _held_job(queue: str, message: MessageTypeDef) -> HeldJob:
    attrs = _attributes(message)
    body = _decode_body(message.get("Body", ""), attrs)
    return HeldJob(_id(message), queue, body, attrs.get(A_REASON), _float(attrs.get(A_HELD_AT)))
