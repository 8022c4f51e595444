"""A small client for Gearman's binary protocol and its admin text protocol.

Written for lilqueue because no Gearman client on PyPI works here (see
``docs/backends/gearman.md``). It speaks what a background job queue needs and no
more: submitting background jobs (three priority bands, or at an epoch time),
taking them as a worker (``CAN_DO``, ``GRAB_JOB_UNIQ``, ``PRE_SLEEP``/``NOOP``),
finishing them (``WORK_COMPLETE``/``WORK_FAIL``), and the admin commands
``status``, ``prioritystatus``, ``workers``, ``version`` and ``cancel job``.

The admin listings are one line per function, and gearmand prints a function's name
as it is: any client can submit to a function named ``"x\\nmail\\t9"`` and put
lines of its own, or a lone ``.``, into every listing. So a listing is sent followed
by a binary ``ECHO_REQ`` carrying a random nonce (gearmand takes both protocols on one
connection), and its answer ends where the ``ECHO_RES`` with that nonce begins: a
function name cannot hold the NUL bytes of a binary header, nor guess the nonce.
Lines that do not parse are skipped, with the line after them (the tail of the broken
name); nothing a client names a function can break the stats of another.

A packet is a 12-byte header -- ``\\0REQ`` or ``\\0RES``, then the command and the
length of the data, both big-endian 32-bit -- and the data: the arguments
separated by NUL bytes, the last one raw (it may itself hold NULs). Payloads are
bytes end to end; nothing is decoded or truncated.

Socket errors become :class:`lilqueue.BackendConnectionError` (chained), timeouts
:class:`lilqueue.BackendTimeoutError`, and a server's ``ERROR`` packet or an
unexpected answer :class:`GearmanProtocolError` (a :class:`lilqueue.BackendError`).
Every socket operation has a timeout; nothing here can hang.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from lilqueue.adapters.support.options import CONNECT_TIMEOUT, IO_TIMEOUT
from lilqueue.errors import BackendConnectionError, BackendError, BackendTimeoutError

log = logging.getLogger(__name__)

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
DEFAULT_PORT = 4730
#: gearmand refuses longer unique keys (GEARMAN_MAX_UNIQUE_SIZE)
MAX_UNIQUE = 64
#: the longest function name this client sends (gearmand 1.1 takes longer ones, libgearman 512)
MAX_FUNCTION = 255
#: seconds to connect, and to wait for an answer the server owes us
#: a defence against a corrupt stream: no packet we expect is near this size
MAX_PACKET = 1 << 30

Band = Literal["high", "normal", "low"]


class Command(enum.IntEnum):
    """Packet types, numbered as in gearmand's PROTOCOL file."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36


#: how many arguments each packet carries (the last one may contain NULs)
ARITY: dict[Command, int] = {
    Command.CAN_DO: 1,
    Command.CANT_DO: 1,
    Command.RESET_ABILITIES: 0,
    Command.PRE_SLEEP: 0,
    Command.NOOP: 0,
    Command.SUBMIT_JOB: 3,
    Command.JOB_CREATED: 1,
    Command.GRAB_JOB: 0,
    Command.NO_JOB: 0,
    Command.JOB_ASSIGN: 3,
    Command.WORK_STATUS: 3,
    Command.WORK_COMPLETE: 2,
    Command.WORK_FAIL: 1,
    Command.GET_STATUS: 1,
    Command.ECHO_REQ: 1,
    Command.ECHO_RES: 1,
    Command.SUBMIT_JOB_BG: 3,
    Command.ERROR: 2,
    Command.STATUS_RES: 5,
    Command.SUBMIT_JOB_HIGH: 3,
    Command.SET_CLIENT_ID: 1,
    Command.CAN_DO_TIMEOUT: 2,
    Command.ALL_YOURS: 0,
    Command.WORK_EXCEPTION: 2,
    Command.OPTION_REQ: 1,
    Command.OPTION_RES: 1,
    Command.WORK_DATA: 2,
    Command.WORK_WARNING: 2,
    Command.GRAB_JOB_UNIQ: 0,
    Command.JOB_ASSIGN_UNIQ: 4,
    Command.SUBMIT_JOB_HIGH_BG: 3,
    Command.SUBMIT_JOB_LOW: 3,
    Command.SUBMIT_JOB_LOW_BG: 3,
    Command.SUBMIT_JOB_SCHED: 8,
    Command.SUBMIT_JOB_EPOCH: 4,
}

SUBMIT_BACKGROUND: dict[Band, Command] = {
    "high": Command.SUBMIT_JOB_HIGH_BG,
    "normal": Command.SUBMIT_JOB_BG,
    "low": Command.SUBMIT_JOB_LOW_BG,
}


class GearmanProtocolError(BackendError):
    """The server sent ``ERROR``, an answer we did not expect, or a malformed packet."""


@dataclasses.dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet: ``magic`` is :data:`REQ` or :data:`RES`."""

    command: Command
    args: tuple[bytes, ...] = ()
    magic: bytes = RES


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """A job handed to this worker by ``JOB_ASSIGN_UNIQ``; ``unique`` as sent (any bytes, maybe empty)."""

    handle: bytes
    function: str
    unique: bytes
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -- packets -------------------------------------------------------------------------


def encode(command: Command, *args: bytes, magic: bytes = REQ) -> bytes:
    """One packet as bytes. Every argument but the last must be free of NUL bytes."""
    expected = ARITY[command]
    if len(args) != expected:
        raise ValueError(f"{command.name} takes {expected} argument(s), not {len(args)}")
    if any(b"\0" in arg for arg in args[:-1]):
        raise ValueError(f"{command.name}: only the last argument may contain NUL bytes")
    data = b"\0".join(args)
    return HEADER.pack(magic, command, len(data)) + data


def decode_args(command: Command, data: bytes) -> tuple[bytes, ...]:
    """Split a packet's data into its arguments (the last keeps any NUL it holds)."""
    arity = ARITY[command]
    if arity == 0:
        return ()
    args = data.split(b"\0", arity - 1)
    if len(args) != arity:
        raise GearmanProtocolError(f"{command.name} packet has {len(args)} argument(s), expected {arity}")
    return tuple(args)


class Decoder:
    """An incremental packet decoder: ``feed`` it bytes as they come, read ``packets``.

    Handles packets split across reads and several packets in one read.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def __len__(self) -> int:
        return len(self._buffer)

    def next_ready(self) -> bool:
        """True when a whole packet is buffered."""
        buf = self._buffer
        return len(buf) >= HEADER.size and len(buf) >= HEADER.size + int(HEADER.unpack_from(buf)[2])

    def next(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive."""
        buf = self._buffer
        if len(buf) < HEADER.size:
            return None
        magic, number, size = HEADER.unpack_from(buf)
        if magic not in (REQ, RES):
            raise GearmanProtocolError(f"bad packet magic {bytes(magic)!r} (is this a Gearman server?)")
        if size > MAX_PACKET:
            raise GearmanProtocolError(f"packet of {size} bytes announced; refusing")
        end = HEADER.size + size
        if len(buf) < end:
            return None
        try:
            command = Command(number)
        except ValueError:
            raise GearmanProtocolError(f"unknown packet type {number}") from None
        data = bytes(buf[HEADER.size : end])
        del buf[:end]
        return Packet(command, decode_args(command, data), bytes(magic))

    def packets(self) -> Iterator[Packet]:
        while (packet := self.next()) is not None:
            yield packet


# -- one connection --------------------------------------------------------------------


class Connection:
    """One TCP connection to one gearmand, speaking the binary protocol.

    ``connect_timeout`` bounds connecting; ``io_timeout`` bounds waiting for an answer
    the server owes us (a request's reply). Both in seconds.
    """

    def __init__(
        self, address: Address, *, connect_timeout: float = CONNECT_TIMEOUT, io_timeout: float = IO_TIMEOUT
    ) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self._sock: socket.socket | None = None
        self._decoder = Decoder()

    @classmethod
    def wrap(cls, sock: socket.socket, address: Address | None = None, *, io_timeout: float = IO_TIMEOUT) -> Connection:
        """A connection over an already connected socket (tests feed socketpairs)."""
        conn = cls(address or Address("socket"), io_timeout=io_timeout)
        conn._sock = sock
        return conn

    def __repr__(self) -> str:
        state = "open" if self._sock is not None else "closed"
        return f"<gearman Connection {self.address} {state}>"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> socket.socket:
        """Open the socket if it is not open; BackendConnectionError if the server is unreachable."""
        if self._sock is None:
            try:
                sock = socket.create_connection((self.address.host, self.address.port), timeout=self.connect_timeout)
            except TimeoutError as exc:
                raise BackendTimeoutError(f"gearmand {self.address}: connect timed out") from exc
            except OSError as exc:
                raise BackendConnectionError(f"gearmand {self.address}: cannot connect: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._decoder = Decoder()
        return self._sock

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def send(self, command: Command, *args: bytes) -> None:
        """Send one request packet."""
        self.send_raw(encode(command, *args))

    def send_raw(self, data: bytes) -> None:
        sock = self.connect()
        try:
            sock.settimeout(self.io_timeout)
            sock.sendall(data)
        except OSError as exc:
            self._lost(exc)

    def pending(self) -> bool:
        """True if a whole packet is already buffered."""
        return self._decoder.next_ready()

    def receive(self, timeout: float | None = None) -> Packet | None:
        """The next packet, waiting up to ``timeout`` seconds (default ``io_timeout``); None on timeout."""
        deadline = time.monotonic() + (self.io_timeout if timeout is None else timeout)
        sock = self.connect()
        while (packet := self._decoder.next()) is None:
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.0))  # 0: one non-blocking read
                data = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return None
            except OSError as exc:
                self._lost(exc)
            if not data:
                self._lost(ConnectionResetError("connection closed by the server"))
            self._decoder.feed(data)
        return packet

    def request(self, command: Command, *args: bytes, expect: Command) -> Packet:
        """Send a request and return its answer (NOOPs from an earlier PRE_SLEEP are skipped)."""
        self.send(command, *args)
        return self.answer(expect, f"{command.name}")

    def answer(self, expect: Command, what: str) -> Packet:
        while True:
            packet = self.receive()
            if packet is None:
                self.close()
                raise BackendTimeoutError(f"gearmand {self.address}: no answer to {what} in {self.io_timeout}s")
            if packet.command == Command.NOOP and expect != Command.NOOP:
                continue
            if packet.command == Command.ERROR:
                code, text = (a.decode("utf-8", "replace") for a in packet.args)
                raise GearmanProtocolError(f"gearmand {self.address}: {what} failed: {code}: {text}")
            if packet.command != expect:
                self.close()
                raise GearmanProtocolError(f"gearmand {self.address}: {what} answered {packet.command.name}")
            return packet

    def _lost(self, exc: BaseException) -> None:
        self.close()
        raise BackendConnectionError(f"gearmand {self.address}: connection lost: {exc}") from exc

    # -- client verbs ------------------------------------------------------------------

    def submit(
        self, function: str, unique: str, data: bytes, *, band: Band = "normal", when: int | None = None
    ) -> bytes:
        """Submit a background job; return its handle once the server has it.

        With ``when`` (epoch seconds) the job is ``SUBMIT_JOB_EPOCH`` (gearmand gives
        such jobs the normal band); otherwise ``band`` picks the submit command.
        """
        fn, uniq = _name(function, "function"), _unique(unique)
        if when is None:
            reply = self.request(SUBMIT_BACKGROUND[band], fn, uniq, data, expect=Command.JOB_CREATED)
        else:
            epoch = str(int(when)).encode()
            reply = self.request(Command.SUBMIT_JOB_EPOCH, fn, uniq, epoch, data, expect=Command.JOB_CREATED)
        return reply.args[0]

    def echo(self, data: bytes) -> bytes:
        return self.request(Command.ECHO_REQ, data, expect=Command.ECHO_RES).args[0]

    # -- worker verbs --------------------------------------------------------------------

    def can_do(self, functions: Iterable[str], *, reset: bool = False) -> None:
        """Announce the functions this worker takes (after ``RESET_ABILITIES`` if ``reset``)."""
        packets = [encode(Command.RESET_ABILITIES)] if reset else []
        packets += [encode(Command.CAN_DO, _name(f, "function")) for f in functions]
        self.send_raw(b"".join(packets))

    def grab(self) -> Assignment | None:
        """``GRAB_JOB_UNIQ``: a job for one of our functions, or None (``NO_JOB``)."""
        self.send(Command.GRAB_JOB_UNIQ)
        while True:
            packet = self.receive()
            if packet is None:
                self.close()
                raise BackendTimeoutError(f"gearmand {self.address}: no answer to GRAB_JOB_UNIQ")
            if packet.command == Command.NO_JOB:
                return None
            if packet.command == Command.JOB_ASSIGN_UNIQ:
                handle, function, unique, data = packet.args
                return Assignment(handle, function.decode("utf-8", "replace"), unique, data)
            if packet.command == Command.ERROR:
                code, text = (a.decode("utf-8", "replace") for a in packet.args)
                raise GearmanProtocolError(f"gearmand {self.address}: GRAB_JOB_UNIQ failed: {code}: {text}")
            if packet.command != Command.NOOP:
                self.close()
                raise GearmanProtocolError(f"gearmand {self.address}: GRAB_JOB_UNIQ answered {packet.command.name}")

    def pre_sleep(self) -> None:
        """Tell the server we sleep: it sends ``NOOP`` when a job for us arrives."""
        self.send(Command.PRE_SLEEP)

    def work_complete(self, handle: bytes, result: bytes = b"") -> None:
        """Finish a job: the server forgets it (no answer is sent for background jobs)."""
        self.send(Command.WORK_COMPLETE, handle, result)

    def work_fail(self, handle: bytes) -> None:
        self.send(Command.WORK_FAIL, handle)


def wait_readable(connections: Sequence[Connection], timeout: float) -> list[Connection]:
    """The connections with bytes (or a buffered packet) to read, waiting up to ``timeout``."""
    ready = [c for c in connections if c.pending()]
    if ready:
        return ready
    live = [c for c in connections if c.connected]
    if not live:
        time.sleep(max(timeout, 0.0))
        return []
    poller = select.poll()  # not select(): no limit on descriptor numbers
    for conn in live:
        poller.register(conn.fileno(), select.POLLIN)
    events = {fd for fd, _ in poller.poll(max(timeout, 0.0) * 1000)}  # POLLHUP/POLLERR too: the read finds out
    return [c for c in live if c.fileno() in events]


# -- the admin text protocol -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionStatus:
    """A line of ``status``: queued + running jobs, running jobs, workers that can do it."""

    function: str
    total: int
    running: int
    workers: int


@dataclasses.dataclass(frozen=True, slots=True)
class PriorityStatus:
    """A line of ``prioritystatus``: jobs waiting per band (not running), and workers."""

    function: str
    high: int
    normal: int
    low: int
    workers: int


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A line of ``workers``: fd, address, client id and the functions it can do."""

    fd: int
    address: str
    client_id: str
    functions: tuple[str, ...]


class Admin:
    """The text protocol on its own connection: one line out, one line or a listing back."""

    def __init__(
        self, address: Address, *, connect_timeout: float = CONNECT_TIMEOUT, io_timeout: float = IO_TIMEOUT
    ) -> None:
        self.conn = Connection(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
        self._buffer = bytearray()
        #: names whose figures the last ``status`` / ``prioritystatus`` left out as forged
        self.suspect: frozenset[str] = frozenset()

    def close(self) -> None:
        self.conn.close()
        self._buffer.clear()

    def command(self, line: str) -> str:
        """Send one admin command whose answer is one line (``version``, ``cancel job``); return it."""
        self.conn.send_raw(_admin_line(line))
        text = self._until(b"\n").decode("utf-8", "replace").rstrip("\r")
        if text.startswith("ERR "):
            raise GearmanProtocolError(f"gearmand {self.conn.address}: {line!r}: {text}")
        return text

    def listing(self, line: str) -> list[str]:
        """Send an admin command whose answer is a ``.``-ended listing; return its lines.

        The end is found by the echo of a nonce sent right after the command, not by the
        ``.``, which a function's name may hold (see the module docstring).
        """
        nonce = os.urandom(16).hex().encode("ascii")
        self.conn.send_raw(_admin_line(line) + encode(Command.ECHO_REQ, nonce))
        text = self._until(encode(Command.ECHO_RES, nonce, magic=RES)).decode("utf-8", "replace")
        if text.startswith("ERR "):
            raise GearmanProtocolError(f"gearmand {self.conn.address}: {line!r}: {text.strip()}")
        lines = text.split("\n")
        if lines[-2:] != [".", ""]:
            self.close()
            raise GearmanProtocolError(f"gearmand {self.conn.address}: {line!r}: the listing does not end in '.'")
        return lines[:-2]

    def _until(self, marker: bytes) -> bytes:
        """The bytes up to ``marker`` (which is consumed), reading within ``io_timeout``."""
        deadline = time.monotonic() + self.conn.io_timeout
        while (end := self._buffer.find(marker)) < 0:
            self._read(deadline)
        data = bytes(self._buffer[:end])
        del self._buffer[: end + len(marker)]
        return data

    def _read(self, deadline: float) -> None:
        sock = self.conn.connect()
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(65536)
        except TimeoutError:
            self.close()
            raise BackendTimeoutError(f"gearmand {self.conn.address}: admin answer timed out") from None
        except OSError as exc:
            self.close()
            raise BackendConnectionError(f"gearmand {self.conn.address}: connection lost: {exc}") from exc
        if not data:
            self.close()
            raise BackendConnectionError(f"gearmand {self.conn.address}: connection closed during an admin command")
        self._buffer += data

    def status(self) -> dict[str, FunctionStatus]:
        """``status``: per function, total (waiting + running), running, workers."""
        table, self.suspect = _table(self.listing("status"), 3, self.conn.address)
        return {name: FunctionStatus(name, *numbers) for name, numbers in table.items()}

    def priority_status(self) -> dict[str, PriorityStatus]:
        """``prioritystatus``: per function, jobs waiting in the high, normal and low bands."""
        table, self.suspect = _table(self.listing("prioritystatus"), 4, self.conn.address)
        return {name: PriorityStatus(name, *numbers) for name, numbers in table.items()}

    def workers(self) -> list[WorkerInfo]:
        """``workers``: every connection, with the functions it registered (lines that do not parse are skipped)."""
        result = []
        for line in self.listing("workers"):
            head, colon, functions = line.partition(" : ")
            if not colon:
                head, functions = line.rstrip(":").rstrip(), ""
            parts = head.split(" ", 2)
            if len(parts) == 3 and parts[0].lstrip("-").isdigit():
                result.append(WorkerInfo(int(parts[0]), parts[1], parts[2], tuple(functions.split())))
        return result

    def version(self) -> str:
        return self.command("version").removeprefix("OK ").strip()

    def cancel(self, handle: bytes) -> bool:
        """``cancel job``: the job is dropped when it reaches a worker. False if the server has no such job."""
        try:
            answer = self.command(f"cancel job {handle.decode('ascii', 'replace')}")
        except GearmanProtocolError as exc:
            if "UNKNOWN_JOB" in str(exc):
                return False
            raise
        return answer.startswith("OK")


def _admin_line(line: str) -> bytes:
    if "\n" in line or "\r" in line or "\0" in line:
        raise ValueError("an admin command is one line")
    return line.encode("utf-8") + b"\n"


def _table(lines: Sequence[str], count: int, address: Address) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """``name<TAB>n<TAB>n...`` lines as {name: numbers}, and the names left out as suspect.

    Function names are printed raw, so a name holding a newline makes lines of its own.
    A line that does not parse is such a fragment, and so is the first line that parses
    after it (the name's tail): both are skipped. A line that parses to a name holding a
    tab is a fragment too. Either makes the line's first field suspect: a fragment that
    forges ``q<TAB>figures`` has a field count that fits only one of ``status`` and
    ``prioritystatus``, so it is a fragment in the other. A name seen twice (a forged
    line and the real one) is suspect. Suspect names get no figures.
    """
    table: dict[str, tuple[int, ...]] = {}
    suspect: set[str] = set()
    broken = False
    for line in lines:
        name, *fields = line.rsplit("\t", count)
        numbers = _ints(fields, count)
        if numbers is None:
            suspect.add(line.partition("\t")[0])
            broken = True
        elif broken:
            broken = False
        elif "\t" in name:
            suspect.add(line.partition("\t")[0])
        elif name in table:
            suspect.add(name)
        else:
            table[name] = numbers
    for name in suspect:
        table.pop(name, None)
    if len(table) < len(lines):
        log.debug("gearmand %s: skipped %d admin lines of oddly named functions", address, len(lines) - len(table))
    return table, frozenset(suspect)


def _ints(fields: Sequence[str], count: int) -> tuple[int, ...] | None:
    if len(fields) != count or not all(f.isascii() and f.isdigit() for f in fields):
        return None
    return tuple(int(f) for f in fields)


def _name(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if not data or b"\0" in data or len(data) > MAX_FUNCTION:
        raise ValueError(f"a Gearman {what} name must be 1-{MAX_FUNCTION} bytes without NUL: {text!r}")
    return data


def _unique(text: str) -> bytes:
    data = text.encode("utf-8")
    if b"\0" in data or len(data) > MAX_UNIQUE:
        raise ValueError(f"a Gearman unique key must be at most {MAX_UNIQUE} bytes without NUL: {text!r}")
    return data


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """``host``, ``host:port`` or ``[v6]:port`` as an :class:`Address`; ValueError if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if not host:
        raise ValueError(f"bad server address {text!r}: no host")
    if not port_text:
        return Address(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad server address {text!r}: port must be 1-65535")
    return Address(host, int(port_text))
