"""``sqs://REGION`` (alias ``amazonsqs://``): Amazon SQS, or any server speaking its API.

Names. A lilqueue queue ``mail`` is the standard SQS queue ``mail`` (plus the
configured prefix) for the default priority band; the other bands and the held tasks
live in sibling queues (see :data:`BANDS`)::

    mail__urgent  priority 0-99         mail__low   1025-65535
    mail__high    100-511               mail__bulk  65536 and above
    mail          512-1024 (default)    mail__held  held tasks, with reason and time

Reserving (:mod:`lilqueue.adapters.sqs_poller`). Every band of every watched queue is
polled at once: a quick look at each, then long polls that stay open across
``reserve`` calls; the most urgent band that has a message wins. A message received
while the worker is busy is kept a few seconds, then handed back; so is everything
received when the runner stops (:meth:`SQSAdapter.give_back`).

Counting. Each message carries its id, priority, ttr, due time (when delayed) and two
counts of earlier copies as ``lilqueue-*`` message attributes: ``deliveries`` and
``unfinished`` (deliveries that never reached an outcome). Every outcome but success
is a new copy (sent, then the received one deleted): a retry, a hold, a kick, a delay
hop, and a hand-back of a message never run. So a copy's ``ApproximateReceiveCount``
counts only runs with no outcome yet, and ``Job.deliveries`` = carried deliveries +
receive count, ``Job.unfinished`` = carried unfinished + receive count - 1. A
hand-back carries both counts less this receive, so it never counts.

Hostile attributes. Any SQS client can set ``lilqueue-*`` attributes. Each is checked
(:func:`_read`); a message with one lilqueue cannot use is held without running, with a
reason naming it, and its held copy carries lilqueue's defaults instead, so a kick runs
it. The body is copied as SQS gave it (base64 only where lilqueue encoded it).

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
import binascii
import contextlib
import dataclasses
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

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
from lilqueue.adapters.sqs_poller import LONG_THREADS, QUICK_THREADS, Poller, Slot
from lilqueue.adapters.support import options
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
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueOutputTypeDef,
        MessageAttributeValueTypeDef,
        MessageTypeDef,
    )

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

    @property
    def default(self) -> int:
        """The priority of a message in this band that does not say its own."""
        return self.low if self.suffix else 1024


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
SIBLING_SUFFIXES = (*(b.suffix for b in BANDS if b.suffix), HELD_SUFFIX)
#: SQS's longest queue name; the longest sibling suffix must fit after a lilqueue name
SQS_MAX_NAME = 80
#: SQS's longest DelaySeconds; longer delays hop.
MAX_DELAY = 900
#: SQS's longest visibility timeout: a longer ttr is capped to it
MAX_VISIBILITY = 43_200
#: a delayed message surfacing this many seconds before its due time runs (any earlier: it hops)
HOP_SLACK = 0.5
#: seconds a received message stays invisible before its own ttr is applied; the ttr of
#: a message that does not say its own
CLAIM = 60
#: seconds a scan of the held queue hides what it has seen from other scans
SCAN_HIDE = 30
#: the most held messages one scan looks at
SCAN_MAX = 1000
#: SQS keeps messages at most 14 days; held and delayed tasks get that by default
RETENTION = 1_209_600
#: the longest hold reason stored (an attribute counts towards SQS's message size)
MAX_REASON = 8192
#: priority, ttr and the counts are below it (as in the wire format); so is a delay
LIMIT = 2**32
TOMBSTONE = "lilqueue-deleted-"
# message attributes (at most 10 per message on SQS)
A_ID = "lilqueue-id"
A_PRIORITY = "lilqueue-priority"
A_TTR = "lilqueue-ttr"
A_DUE = "lilqueue-due"
A_DELIVERIES = "lilqueue-deliveries"
A_UNFINISHED = "lilqueue-unfinished"
A_ENCODING = "lilqueue-encoding"
A_REASON = "lilqueue-reason"
A_HELD_AT = "lilqueue-held-at"
#: the attributes a copy of a message carries
CARRIED = (A_ID, A_PRIORITY, A_TTR, A_DUE, A_DELIVERIES, A_UNFINISHED, A_ENCODING)
_NOT_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NAME = re.compile("[A-Za-z0-9_-]+")
_ID = re.compile("[\x21-\x7e]{1,128}")
_REGION = re.compile("[A-Za-z0-9-]{1,64}")
_QUEUE_GONE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_QUEUE_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
_UNAVAILABLE = {"ServiceUnavailable", "InternalError", "InternalFailure", "RequestThrottled", "ThrottlingException"}
OPTIONS = ("region", "endpoint_url", "wait", "attributes", "connect_timeout", "io_timeout")
#: attempts per request (one retry: a kept-alive connection the server closed, say)
ATTEMPTS = 2


def band_of(priority: int) -> Band:
    """The band a priority belongs to."""
    return next((b for b in BANDS if priority in b), BANDS[-1])


@dataclasses.dataclass(frozen=True, slots=True)
class _Meta:
    """What a message's ``lilqueue-*`` attributes say, checked; the counts are of earlier copies."""

    id: str
    priority: int
    ttr: int = CLAIM
    due: float | None = None
    deliveries: int = 0
    unfinished: int = 0
    encoding: str | None = None

    def attributes(self) -> dict[str, str]:
        """The attributes a copy carries (a count of 0 and no due time are left out)."""
        attrs = {A_ID: self.id, A_PRIORITY: str(self.priority), A_TTR: str(self.ttr)}
        if self.due is not None:
            attrs[A_DUE] = f"{self.due:.3f}"
        if self.deliveries:
            attrs[A_DELIVERIES] = str(self.deliveries)
        if self.unfinished:
            attrs[A_UNFINISHED] = str(self.unfinished)
        if self.encoding:
            attrs[A_ENCODING] = self.encoding
        return attrs


@dataclasses.dataclass(frozen=True, slots=True)
class _Receipt:
    """What a reserved Job needs to be copied: where it came from, its checked metadata, its text."""

    url: str
    handle: str
    meta: _Meta
    text: str


class SQSAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=emulated(
            "5 band queues polled most urgent first: 0-99, 100-511, 512-1024, 1025-65535, 65536+; "
            "best-effort order within a band"
        ),
        delay=emulated("DelaySeconds up to 900 s; longer delays re-sent in 900 s hops until due"),
        ttr=native("visibility timeout, set to the task's own ttr on receipt"),
        touch=native("ChangeMessageVisibility to the task's ttr"),
        retry=native("re-sent with the retry delay as DelaySeconds and its counts; the received copy deleted"),
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
    max_queue_name: ClassVar[int | None] = SQS_MAX_NAME - max(len(s) for s in SIBLING_SUFFIXES)

    def __init__(
        self,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        wait: int = 5,
        attributes: Mapping[str, str] | None = None,
        connect_timeout: float = options.CONNECT_TIMEOUT,
        io_timeout: float = options.IO_TIMEOUT,
    ) -> None:
        self.wait = wait
        self.attributes = dict(attributes or {})
        self.client: SQSClient = _client(region, endpoint_url, _config(connect_timeout, io_timeout, QUICK_THREADS))
        self._receiver: SQSClient | None = None
        self._where = (region, endpoint_url)
        self._polling = _config(connect_timeout, io_timeout + wait, QUICK_THREADS + LONG_THREADS)
        self._urls: dict[str, str] = {}
        self._slots: dict[str, Slot] = {}
        self._watch_lists: dict[tuple[str, ...], list[Slot]] = {}
        self._poller = Poller(self._poll_receive, self._hand_back, wait=wait, io_timeout=io_timeout)

    @property
    def receiver(self) -> SQSClient:
        """The client of the poll threads (made on first use: a producer never needs it),
        whose read timeout is ``io_timeout`` plus the long poll's ``wait``."""
        if self._receiver is None:
            self._receiver = _client(*self._where, self._polling)
        return self._receiver

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> SQSAdapter:
        opts = dict(options)
        if url is not None:
            parts = _url_parts(url)
            if parts.path not in ("", "/"):
                raise ConfigError(f"queue.backend: SQS URLs look like sqs://REGION?endpoint_url=..., not {url!r}")
            if parts.netloc:
                opts["region"] = parts.netloc
            opts.update(parse_qsl(parts.query, keep_blank_values=True))
        kwargs: dict[str, Any] = {}
        for key, value in opts.items():
            kwargs[key] = _option(key, value)
        region = kwargs.pop("region", None)
        return cls(region, **kwargs)

    @classmethod
    def queue_name_problem(cls, name: str) -> str | None:
        """SQS's rules (letters, digits, '-', '_'; 80 characters with the longest sibling suffix)."""
        problem = super().queue_name_problem(name)
        if problem is not None:
            return problem
        if not _NAME.fullmatch(name):
            return (
                "an SQS queue name may hold only ASCII letters, digits, '-' and '_' (FIFO '.fifo' queues are not used)"
            )
        for suffix in SIBLING_SUFFIXES:
            if name.endswith(suffix):
                return f"a queue name must not end in {suffix!r}: SQS queues so named hold another queue's tasks"
        return None

    # -- producing -------------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        due = time.time() + delay if delay > 0 else None
        id = uuid.uuid4().hex if due is None else f"{uuid.uuid4().hex}-{math.ceil(due)}"
        text, encoded = _encode_body(body)
        meta = _Meta(id, priority, ttr, due, encoding="base64" if encoded else None)
        name = queue + band_of(priority).suffix
        try:
            self._send(self._url(name), text, _attribute_values(meta.attributes()), delay)
        except BackendError as exc:
            if _code(exc) not in _QUEUE_GONE:
                raise
            self._urls.pop(name, None)  # deleted behind our back: make it again
            self._send(self._url(name), text, _attribute_values(meta.attributes()), delay)
        return id

    def _send(self, url: str, text: str, attrs: Mapping[str, MessageAttributeValueTypeDef], delay: float = 0) -> None:
        """Send ``text`` (SQS's message body, as it is) with ``attrs``."""
        with _translated("SendMessage"):
            self.client.send_message(
                QueueUrl=url,
                MessageBody=text,
                DelaySeconds=min(MAX_DELAY, max(0, math.ceil(delay))),
                MessageAttributes=attrs,
            )

    def _copy(self, receipt: _Receipt, to: str, meta: _Meta, *, delay: float = 0) -> None:
        """Send a copy of a received message to ``to`` carrying ``meta``, then delete the received one."""
        self._send(to, receipt.text, _attribute_values(meta.attributes()), delay)
        self._delete(receipt.url, receipt.handle)

    # -- reserving ---------------------------------------------------------------------

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        slots = self._watch(queues)
        self._receiver = self.receiver  # made here, before any poll thread needs it
        while True:
            left = 0.0 if timeout <= 0 else max(deadline - time.monotonic(), 0.001)
            taken = self._poller.take(slots, left)
            if taken is None:
                return None
            job = self._job(*taken)
            if job is not None:
                return job

    def give_back(self) -> None:
        self._poller.give_back()

    def _watch(self, queues: Sequence[str]) -> list[Slot]:
        """The slots of ``queues``, most urgent band first (creating the queues on first use)."""
        key = tuple(queues)
        slots = self._watch_lists.get(key)
        if slots is None:
            names = [queue + band.suffix for band in BANDS for queue in queues]
            self._make(names)
            slots = []
            for band in BANDS:
                for queue in queues:
                    name = queue + band.suffix
                    slot = self._slots.get(name)
                    if slot is None:
                        slot = self._slots[name] = Slot(queue, band, self._url(name))
                    slots.append(slot)
            self._watch_lists[key] = slots
        return slots

    def _make(self, names: list[str]) -> None:
        """Find or create the queues ``names`` that are not cached yet, several at a time."""
        missing_names = [n for n in names if n not in self._urls]
        if len(missing_names) < 2:
            return
        with ThreadPoolExecutor(min(16, len(missing_names)), thread_name_prefix="lilqueue-sqs-create") as pool:
            for name, url in zip(missing_names, pool.map(self._create, missing_names), strict=True):
                self._urls[name] = url

    def _poll_receive(self, url: str, wait: int) -> list[MessageTypeDef]:
        """The poller's receive: at most one message, hidden for CLAIM seconds."""
        try:
            return self._receive(url, 1, wait, CLAIM, self.receiver)
        except LilqueueError as exc:
            if _code(exc) in _QUEUE_GONE:  # the runner reconnects, and a new adapter makes it again
                raise BackendConnectionError(f"SQS queue {url} was deleted: {exc}") from exc
            raise

    def _receive(
        self, url: str, count: int, wait: int, hide: int, client: SQSClient | None = None
    ) -> list[MessageTypeDef]:
        with _translated("ReceiveMessage"):
            response = (client or self.client).receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=hide,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return response.get("Messages", [])

    def _hand_back(self, url: str, message: MessageTypeDef) -> None:
        """Return a message this worker received but never ran, without counting a delivery.

        Its attributes go back as they came (a bad one is still bad), but for the counts,
        which drop this receive.
        """
        attrs: dict[str, MessageAttributeValueTypeDef] = {}
        for key, value in message.get("MessageAttributes", {}).items():
            if key in CARRIED:
                attrs[key] = _as_input(value)
        meta, problems = _read(message, 1024)
        count = _receive_count(message)
        if A_ID not in attrs:
            attrs[A_ID] = _attribute_value(meta.id)
        if A_DELIVERIES not in problems:
            attrs[A_DELIVERIES] = _attribute_value(str(meta.deliveries + count - 1))
        if A_UNFINISHED not in problems:
            attrs[A_UNFINISHED] = _attribute_value(str(meta.unfinished + count - 1))
        self._send(url, message.get("Body", ""), attrs)
        self._delete(url, message.get("ReceiptHandle", ""))

    def _job(self, slot: Slot, message: MessageTypeDef, received_at: float) -> Job | None:
        """A Job for ``message``; None if it was a hop of a long delay, a deleted task, or held unread."""
        meta, problems = _read(message, slot.band.default)
        count = _receive_count(message)
        text = message.get("Body", "")
        body = _decode_body(text, meta.encoding)
        if body is None:
            problems[A_ENCODING] = "says base64, but the body is not base64"
            meta = dataclasses.replace(meta, encoding=None)
            body = text.encode("utf-8", "surrogatepass")
        receipt = _Receipt(slot.url, message.get("ReceiptHandle", ""), meta, text)
        deliveries = meta.deliveries + count
        job = Job(meta.id, slot.queue, body, meta.priority, meta.ttr, deliveries, receipt, meta.unfinished + count - 1)
        if problems:
            self._hold_unread(job, problems)
            return None
        if meta.due is not None and job.deliveries == 1 and self._tombstoned(slot.queue, meta.id):
            self._delete(slot.url, receipt.handle)
            self._untag(slot.queue, meta.id)
            return None
        if meta.due is not None and meta.due - time.time() > HOP_SLACK:  # a hop of a long delay
            carried = dataclasses.replace(meta, deliveries=job.deliveries - 1, unfinished=job.unfinished)
            self._copy(receipt, slot.url, carried, delay=meta.due - time.time())
            return None
        self._apply_ttr(job, receipt, received_at)
        return job

    def _apply_ttr(self, job: Job, receipt: _Receipt, received_at: float) -> None:
        """Give the message its own ttr (it was received hidden for CLAIM seconds)."""
        if job.ttr == CLAIM and time.monotonic() - received_at <= 1:
            return
        try:
            self._change_visibility(receipt, job.ttr)
        except BackendConnectionError:
            raise
        except BackendError as exc:
            log.warning("could not set the ttr of message %s (its lease is %ss): %s", job.id, CLAIM, exc)

    def _hold_unread(self, job: Job, problems: Mapping[str, str]) -> None:
        """Hold a message whose attributes lilqueue cannot use, without running it."""
        said = "; ".join(f"{key} {what}" for key, what in problems.items())
        reason = f"bad SQS message attributes: {said}. Held without running; a kick runs it with lilqueue's defaults"
        log.warning("holding SQS message %s on %s: %s", job.id, job.queue, reason, extra={"queue": job.queue})
        self.bury(dataclasses.replace(job, deliveries=job.deliveries - 1), reason=reason)  # it never ran

    # -- finishing ---------------------------------------------------------------------

    def delete(self, job: Job) -> None:
        receipt = _receipt(job)
        self._delete(receipt.url, receipt.handle)

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        receipt = _receipt(job)
        due = time.time() + delay if delay > MAX_DELAY else None
        meta = dataclasses.replace(receipt.meta, priority=priority, due=due, deliveries=job.deliveries, unfinished=0)
        self._copy(receipt, self._url(job.queue + band_of(priority).suffix), meta, delay=delay)

    def unreserve(self, job: Job) -> None:
        """A copy that carries the counts less this delivery: the next run sees the same ones."""
        receipt = _receipt(job)
        meta = dataclasses.replace(receipt.meta, due=None, deliveries=job.deliveries - 1, unfinished=job.unfinished)
        self._copy(receipt, receipt.url, meta)

    def bury(self, job: Job, *, reason: str) -> None:
        receipt = _receipt(job)
        meta = dataclasses.replace(receipt.meta, due=None, deliveries=job.deliveries, unfinished=0)
        url = self._url(job.queue + HELD_SUFFIX)
        text = _safe_text(reason or "held")
        held = {A_REASON: _clip(text, MAX_REASON), A_HELD_AT: f"{time.time():.6f}"}
        try:
            self._send(url, receipt.text, _attribute_values({**meta.attributes(), **held}))
        except BackendConnectionError:
            raise
        except BackendError as exc:  # too big with its reason, say: hold it with less said
            log.warning("could not hold message %s with its full reason (%s); holding it with a short one", job.id, exc)
            held[A_REASON] = _clip(f"(reason cut: SQS refused it in full) {text}", 200)
            self._send(url, receipt.text, _attribute_values({**meta.attributes(), **held}))
        self._delete(receipt.url, receipt.handle)

    def touch(self, job: Job) -> None:
        self._change_visibility(_receipt(job), job.ttr)

    def _change_visibility(self, receipt: _Receipt, seconds: int) -> None:
        """Make the message invisible for ``seconds`` from now (at most SQS's 12 hours)."""
        with _translated("ChangeMessageVisibility"):
            self.client.change_message_visibility(
                QueueUrl=receipt.url, ReceiptHandle=receipt.handle, VisibilityTimeout=min(seconds, MAX_VISIBILITY)
            )

    def _delete(self, url: str, handle: str) -> None:
        with _translated("DeleteMessage"):
            self.client.delete_message(QueueUrl=url, ReceiptHandle=handle)

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
            found.sort(key=lambda m: (_held_at(m) or 0.0, _id(m)))
            chosen = choose(found)
            if act is not None:
                for message in chosen:
                    act(queue, url, message)
                    acted.append(message)
        finally:
            self._show(url, [m for m in found if not any(m is a for a in acted)])
        return chosen

    def _unhold(self, queue: str, url: str, message: MessageTypeDef) -> None:
        """Kick: a copy in its band, carrying its deliveries (its unfinished ones are settled)."""
        meta, _ = _read(message, 1024)
        meta = dataclasses.replace(meta, due=None, unfinished=0)
        to = self._url(queue + band_of(meta.priority).suffix)
        self._send(to, message.get("Body", ""), _attribute_values(meta.attributes()))
        self._delete(url, message.get("ReceiptHandle", ""))

    def _drop(self, queue: str, url: str, message: MessageTypeDef) -> None:
        self._delete(url, message.get("ReceiptHandle", ""))

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
        now = time.time()
        tags = self._tags_or_none(queue)
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
        return {k: _whole(values.get(k)) or 0 for k in keys}

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
        """Hand back what the poll threads hold (waiting for the receives in flight), then stop them."""
        self._poller.close()


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


def _config(connect_timeout: float, read_timeout: float, connections: int) -> Config:
    """Every request bounded: ``connect_timeout`` and ``read_timeout`` per attempt, ATTEMPTS attempts."""
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
        max_pool_connections=connections,
    )


def _client(region: str | None, endpoint_url: str | None, config: Config) -> SQSClient:
    try:
        session = boto3.session.Session()
        return session.client("sqs", region_name=region, endpoint_url=endpoint_url, config=config)
    except NoRegionError:
        raise ConfigError(
            "queue.amazonsqs.region: no region (give sqs://REGION, region = ..., or AWS_DEFAULT_REGION)"
        ) from None
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"queue.amazonsqs: cannot make an SQS client: {exc}") from exc


def _option(key: str, value: Any) -> Any:
    """A checked option value; ConfigError naming ``queue.amazonsqs.KEY`` otherwise."""
    where = f"queue.amazonsqs.{key}"
    if key == "region":
        if not isinstance(value, str) or not _REGION.fullmatch(value):
            raise ConfigError(f"{where}: must be an AWS region name such as eu-west-1, not {value!r}")
        return value
    if key == "endpoint_url":
        return _endpoint(where, value)
    if key == "wait":
        number = _whole(value)
        if number is None or not 1 <= number <= 20:
            raise ConfigError(f"{where}: must be a whole number of seconds from 1 to 20 (SQS long poll), not {value!r}")
        return number
    if key in ("connect_timeout", "io_timeout"):
        return options.seconds(where, value)
    if key == "attributes":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: must be a table of SQS queue attributes, not {value!r}")
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    raise ConfigError(f"{where}: unknown option (expected one of {', '.join(OPTIONS)})")


def _url_parts(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"queue.backend: not a URL ({exc}): {url!r}") from None


def _endpoint(where: str, value: Any) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http:// or https:// URL, not {value!r}")
    return str(value)


def _float(value: Any) -> float | None:
    """A finite number from ``value`` (text or number), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any) -> int | None:
    """A whole number from ``value`` ("5", "5.0", 5), or None."""
    number = _float(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


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


def _decode_body(text: str, encoding: str | None) -> bytes | None:
    """The body a message's text stands for; None if it says base64 and is not."""
    if encoding != "base64":
        return text.encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_text(text: str) -> str:
    """Text SQS accepts: lone surrogates escaped (``\\udc80``), other characters SQS
    refuses (NUL, most control characters) replaced with U+FFFD."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _NOT_TEXT.sub("\ufffd", safe)


def _attribute_value(text: str) -> MessageAttributeValueTypeDef:
    """A String attribute SQS accepts (SQS refuses an empty one)."""
    return {"DataType": "String", "StringValue": _safe_text(text) or "-"}


def _attribute_values(attrs: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    return {k: _attribute_value(v) for k, v in attrs.items()}


def _as_input(value: MessageAttributeValueOutputTypeDef) -> MessageAttributeValueTypeDef:
    """A received attribute, to send again as it came."""
    sent: MessageAttributeValueTypeDef = {"DataType": value.get("DataType", "String")}
    if "StringValue" in value:
        sent["StringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        sent["BinaryValue"] = value["BinaryValue"]
    return sent


def _read(message: MessageTypeDef, priority: int) -> tuple[_Meta, dict[str, str]]:
    """The checked metadata of ``message`` (``priority`` if it says none), and what is wrong
    with its attributes (name -> why): a bad attribute is replaced by the default."""
    found: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, value in message.get("MessageAttributes", {}).items():
        if key in CARRIED:
            checked, problem = _check(key, value)
            if problem is None:
                found[key] = checked
            else:
                problems[key] = problem
    meta = _Meta(
        found.get(A_ID) or message.get("MessageId") or uuid.uuid4().hex,
        found.get(A_PRIORITY, priority),
        found.get(A_TTR, CLAIM),
        found.get(A_DUE),
        found.get(A_DELIVERIES, 0),
        found.get(A_UNFINISHED, 0),
        found.get(A_ENCODING),
    )
    return meta, problems


def _check(key: str, value: MessageAttributeValueOutputTypeDef) -> tuple[Any, str | None]:
    """The value of the attribute ``key``, or why lilqueue cannot use it."""
    text = value.get("StringValue")
    if text is None:
        return None, f"must be a String attribute, not {_clip(repr(value.get('DataType')), 40)}"
    shown = f"= {_clip(repr(text), 60)}"
    if key == A_ID:
        return (text, None) if _ID.fullmatch(text) else (None, f"{shown} is not 1-128 printable ASCII characters")
    if key == A_ENCODING:
        return (text, None) if text == "base64" else (None, f"{shown} is not an encoding lilqueue knows (base64)")
    if key == A_DUE:
        due = _float(text)
        if due is None or not 0 <= due <= time.time() + LIMIT:
            return None, f"{shown} is not a time (epoch seconds) within 2**32 seconds"
        return due, None
    low = 1 if key == A_TTR else 0
    number = _whole(text)
    if number is None or not low <= number < LIMIT:
        return None, f"{shown} is not a whole number from {low} to {LIMIT - 1}"
    return number, None


def _receive_count(message: MessageTypeDef) -> int:
    """SQS's ApproximateReceiveCount of this copy (1 if it does not say)."""
    count = _whole(message.get("Attributes", {}).get("ApproximateReceiveCount"))
    return 1 if count is None or count < 1 else count


def _string(message: MessageTypeDef, key: str) -> str | None:
    value = message.get("MessageAttributes", {}).get(key)
    return None if value is None else value.get("StringValue")


def _id(message: MessageTypeDef) -> str:
    return _read(message, 1024)[0].id


def _held_at(message: MessageTypeDef) -> float | None:
    return _float(_string(message, A_HELD_AT))


def _due_of(id: str) -> float | None:
    """The due time a delayed task's id carries (``HEX-EPOCH``), or None."""
    _, sep, due = id.rpartition("-")
    return _float(due) if sep and due.isdigit() else None


def _receipt(job: Job) -> _Receipt:
    if not isinstance(job.receipt, _Receipt):
        raise BackendError(f"job {job.id} was not reserved from SQS by this adapter")
    return job.receipt


def _held_job(queue: str, message: MessageTypeDef) -> HeldJob:
    """A held message as ``held`` lists it (a body that says base64 and is not: as it is)."""
    meta, _ = _read(message, 1024)
    text = message.get("Body", "")
    body = _decode_body(text, meta.encoding)
    if body is None:
        body = text.encode("utf-8", "surrogatepass")
    return HeldJob(meta.id, queue, body, _string(message, A_REASON), _held_at(message))
