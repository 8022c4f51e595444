"""The Gearman protocol client without a server: packets, partial reads, admin parsing, config."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.adapters.gearman import GearmanAdapter, band, new_unique, parse_unique
from lilqueue.adapters.gearman_protocol import (
    MAX_UNIQUE,
    RES,
    Address,
    Admin,
    Assignment,
    Command,
    Connection,
    Decoder,
    GearmanProtocolError,
    Packet,
    encode,
    parse_address,
)
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError, ConfigError

UTF8 = "héllo ✓ 日本語 🚀".encode()
BINARY = bytes(range(256)) * 3  # every byte value, NULs included


def response(command: Command, *args: bytes) -> bytes:
    return encode(command, *args, magic=RES)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    """A client Connection over one end of a socketpair; the test plays the server on the other."""
    ours, theirs = socket.socketpair()
    conn = Connection.wrap(ours, io_timeout=2.0)
    yield conn, theirs
    conn.close()
    theirs.close()


def feed_in_pieces(sock: socket.socket, data: bytes, sizes: tuple[int, ...] = (1, 3, 7, 11)) -> threading.Thread:
    """Write ``data`` in small pieces with pauses, from another thread."""

    def run() -> None:
        i = k = 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            sock.sendall(data[i : i + n])
            i, k = i + n, k + 1
            time.sleep(0.001)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def read_packets(sock: socket.socket, count: int) -> list[Packet]:
    """What the client sent: ``count`` packets read from the server's end."""
    decoder, packets = Decoder(), list[Packet]()
    sock.settimeout(2)
    while len(packets) < count:
        decoder.feed(sock.recv(65536))
        packets.extend(decoder.packets())
    return packets


# -- encoding --------------------------------------------------------------------------


def test_encode_header_and_arguments() -> None:
    assert encode(Command.CAN_DO, b"mail") == b"\0REQ" + struct.pack(">II", 1, 4) + b"mail"
    assert encode(Command.GRAB_JOB_UNIQ) == b"\0REQ\x00\x00\x00\x1e\x00\x00\x00\x00"
    packet = encode(Command.SUBMIT_JOB_EPOCH, b"fn", b"u1", b"1700000000", b"data")
    assert packet[4:12] == struct.pack(">II", 36, len(b"fn\0u1\x001700000000\0data"))
    assert packet[12:] == b"fn\0u1\x001700000000\0data"


def test_encode_checks_arity_and_nul_bytes() -> None:
    with pytest.raises(ValueError, match="takes 3"):
        encode(Command.SUBMIT_JOB_BG, b"fn", b"data")
    with pytest.raises(ValueError, match="last argument"):
        encode(Command.SUBMIT_JOB_BG, b"f\0n", b"u", b"data")
    assert encode(Command.SUBMIT_JOB_BG, b"fn", b"u", b"\0da\0ta\0").endswith(b"fn\0u\0\0da\0ta\0")


@pytest.mark.parametrize("command", [Command.SUBMIT_JOB_BG, Command.SUBMIT_JOB_HIGH_BG, Command.SUBMIT_JOB_LOW_BG])
@pytest.mark.parametrize("payload", [UTF8, BINARY, b""], ids=["utf8", "binary", "empty"])
def test_submit_payloads_travel_unchanged(command: Command, payload: bytes) -> None:
    decoder = Decoder()
    decoder.feed(encode(command, "fonction-é".encode(), b"uniq", payload))
    packet = decoder.next()
    assert packet == Packet(command, ("fonction-é".encode(), b"uniq", payload), b"\0REQ")


# -- decoding, partial reads --------------------------------------------------------------


def test_decoder_waits_for_whole_packets_fed_byte_by_byte() -> None:
    stream = response(Command.JOB_CREATED, b"H:host:1") + response(Command.NOOP)
    stream += response(Command.JOB_ASSIGN_UNIQ, b"H:host:2", b"fn", b"u", BINARY)
    decoder, packets = Decoder(), list[Packet]()
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        packets.extend(decoder.packets())
    assert [p.command for p in packets] == [Command.JOB_CREATED, Command.NOOP, Command.JOB_ASSIGN_UNIQ]
    assert packets[0].args == (b"H:host:1",)
    assert packets[2].args == (b"H:host:2", b"fn", b"u", BINARY)
    assert len(decoder) == 0


def test_decoder_reads_several_packets_from_one_chunk() -> None:
    decoder = Decoder()
    decoder.feed(response(Command.NO_JOB) * 3 + response(Command.NOOP)[:5])
    assert [p.command for p in decoder.packets()] == [Command.NO_JOB] * 3
    assert not decoder.next_ready() and len(decoder) == 5


def test_decoder_rejects_garbage() -> None:
    decoder = Decoder()
    decoder.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(GearmanProtocolError, match="magic"):
        decoder.next()
    decoder = Decoder()
    decoder.feed(b"\0RES" + struct.pack(">II", 99, 0))
    with pytest.raises(GearmanProtocolError, match="unknown packet type 99"):
        decoder.next()
    decoder = Decoder()
    decoder.feed(b"\0RES" + struct.pack(">II", Command.JOB_ASSIGN_UNIQ, 5) + b"a\0b\0c")
    with pytest.raises(GearmanProtocolError, match="3 argument"):
        decoder.next()


def test_grab_over_a_socket_fed_in_pieces(pair: tuple[Connection, socket.socket]) -> None:
    conn, server = pair
    data = UTF8 + b"\0" + BINARY
    stream = response(Command.NOOP) + response(Command.JOB_ASSIGN_UNIQ, b"H:x:7", "fn-é".encode(), b"u-1", data)
    writer = feed_in_pieces(server, stream)
    assignment = conn.grab()
    writer.join()
    assert assignment == Assignment(b"H:x:7", "fn-é", b"u-1", data)
    assert server.recv(100) == encode(Command.GRAB_JOB_UNIQ)


def test_grab_no_job_then_error(pair: tuple[Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(response(Command.NO_JOB))
    assert conn.grab() is None
    server.sendall(response(Command.ERROR, b"ERR_CODE", b"something broke"))
    with pytest.raises(GearmanProtocolError, match="something broke"):
        conn.grab()


def test_submit_reads_the_handle_and_sends_the_band(pair: tuple[Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(response(Command.JOB_CREATED, b"H:x:1") + response(Command.JOB_CREATED, b"H:x:2"))
    assert conn.submit("fn", "u", BINARY, band="low") == b"H:x:1"
    assert conn.submit("fn", "u2", UTF8, when=1_700_000_000) == b"H:x:2"
    low, epoch = read_packets(server, 2)
    assert (low.command, low.args) == (Command.SUBMIT_JOB_LOW_BG, (b"fn", b"u", BINARY))
    assert (epoch.command, epoch.args) == (Command.SUBMIT_JOB_EPOCH, (b"fn", b"u2", b"1700000000", UTF8))


def test_worker_verbs_send_the_right_packets(pair: tuple[Connection, socket.socket]) -> None:
    conn, server = pair
    conn.can_do(["mail", "mail@delayed"], reset=True)
    conn.pre_sleep()
    conn.work_complete(b"H:x:1")
    conn.work_fail(b"H:x:2")
    sent = [(p.command, p.args) for p in read_packets(server, 6)]
    assert sent == [
        (Command.RESET_ABILITIES, ()),
        (Command.CAN_DO, (b"mail",)),
        (Command.CAN_DO, (b"mail@delayed",)),
        (Command.PRE_SLEEP, ()),
        (Command.WORK_COMPLETE, (b"H:x:1", b"")),
        (Command.WORK_FAIL, (b"H:x:2",)),
    ]


def test_receive_times_out_and_detects_a_closed_server(pair: tuple[Connection, socket.socket]) -> None:
    conn, server = pair
    started = time.monotonic()
    assert conn.receive(0.2) is None
    assert 0.15 < time.monotonic() - started < 2
    server.sendall(response(Command.NOOP)[:6])  # half a packet, then gone
    server.close()
    with pytest.raises(BackendConnectionError, match="closed by the server"):
        conn.receive(1)
    assert not conn.connected


def test_connect_to_a_closed_port_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        conn = Connection(Address("127.0.0.1", port), connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(BackendConnectionError, match="cannot connect"):
            conn.connect()
    assert time.monotonic() - started < 2


# -- the admin text protocol -------------------------------------------------------------


LISTINGS = ("status", "prioritystatus", "workers")


def admin_serving(answers: list[bytes]) -> tuple[Admin, threading.Thread, list[str]]:
    """An Admin over a socketpair; a thread plays gearmand, answering each command in turn
    (a listing's answer followed by the echo of the nonce sent after it) in small pieces."""
    ours, theirs = socket.socketpair()
    admin = Admin(Address("socket"), io_timeout=2)
    admin.conn = Connection.wrap(ours, io_timeout=2)
    asked: list[str] = []

    def serve() -> None:
        stream = theirs.makefile("rb")
        for answer in answers:
            line = stream.readline().decode().rstrip("\n")
            asked.append(line)
            echo = b""
            if line in LISTINGS:
                header = stream.read(12)
                nonce = stream.read(struct.unpack(">4sII", header)[2])
                echo = response(Command.ECHO_RES, nonce)
            feed_in_pieces(theirs, answer + echo, sizes=(2, 5)).join()
        stream.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return admin, thread, asked


def test_admin_status_and_prioritystatus() -> None:
    admin, server, asked = admin_serving([b"mail\t5\t2\t1\nfn-\xc3\xa9\t0\t0\t0\n.\n", b"mail\t1\t2\t0\t1\n.\n"])
    status = admin.status()
    assert status["mail"].total == 5 and status["mail"].running == 2 and status["mail"].workers == 1
    assert status["fn-é"].total == 0
    prio = admin.priority_status()["mail"]
    assert (prio.high, prio.normal, prio.low, prio.workers) == (1, 2, 0, 1)
    server.join()
    assert asked == ["status", "prioritystatus"]
    admin.close()


def test_admin_workers_version_and_cancel() -> None:
    listing = b"37 127.0.0.1 - :\n38 127.0.0.1 worker-1 : mail mail@delayed\n.\n"
    admin, server, asked = admin_serving([listing, b"OK 1.1.20\n", b"OK\n", b"ERR UNKNOWN_JOB\n"])
    idle, busy = admin.workers()
    assert idle.functions == () and idle.fd == 37
    assert busy.client_id == "worker-1" and busy.functions == ("mail", "mail@delayed")
    assert admin.version() == "1.1.20"
    assert admin.cancel(b"H:x:1") is True
    assert admin.cancel(b"H:x:2") is False
    server.join()
    assert asked == ["workers", "version", "cancel job H:x:1", "cancel job H:x:2"]
    admin.close()


def test_admin_skips_the_lines_of_a_function_named_with_newlines() -> None:
    """Function names are printed raw: 'x<LF>mail' and 'a<LF>.<LF>b' must not break the listing,
    forge a 'mail' line, or end it early."""
    listing = (
        b"x\nmail\t7\t0\t0\n"  # the function 'x<LF>mail': a fragment, then a line that looks like 'mail'
        b"a\n.\nb\t1\t0\t0\n"  # the function 'a<LF>.<LF>b': a fake end of the listing
        b"nomail\tfive\t2\t1\n"  # numbers that are not numbers
        b"\t1\t0\t0\n"  # the tail of a name ending in a newline
        b"mail\t5\t2\t1\nother\t1\t1\t1\n.\n"
    )
    admin, server, _ = admin_serving([listing, b"OK 1.1.20\n"])
    status = admin.status()
    assert set(status) == {"mail", "other"}
    assert (status["mail"].total, status["other"].total) == (5, 1)
    assert admin.version() == "1.1.20"  # the connection is still in step
    server.join()
    admin.close()


# -- addresses, bands, unique keys, configuration -------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("h", Address("h", 4730)),
        ("10.0.0.1:4731", Address("10.0.0.1", 4731)),
        ("[::1]:4732", Address("::1", 4732)),
        ("[::1]", Address("::1", 4730)),
    ],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", ":4730", "h:port", "h:0", "h:70000", "[::1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_bands_match_the_seed() -> None:
    """The seed sends priority < 1024 / 3 (341.33) high and < 2 * 1024 / 3 (682.67) normal."""
    priorities = (0, 341, 342, 682, 683, 1024, 2**32 - 1)
    assert [band(p) for p in priorities] == ["high", "high", "normal", "normal", "low", "low", "low"]
    assert [band(p) for p in priorities] == [_seed_band(p) for p in priorities]


def _seed_band(priority: int) -> str:
    if priority < 1024 / 3:
        return "high"
    return "normal" if priority < 2 * 1024 / 3 else "low"


def test_unique_keys_are_fresh_and_carry_priority_and_ttr() -> None:
    keys = {new_unique(2**32 - 1, 2**31) for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert len(key.encode()) <= MAX_UNIQUE
    assert parse_unique(key) == (2**32 - 1, 2**31)
    assert parse_unique("0113adbe-eaf6-11f1-842d-02fc00000001") == (1024, 60)  # the gearman CLI's


@pytest.mark.parametrize(
    ("unique", "expected"),
    [
        ("ab" * 16 + ".9999999999.60", (1024, 60)),  # priority out of range: the loop of issue 11
        ("ab" * 16 + ".5.9999999999", (5, 60)),  # ttr out of range
        ("ab" * 16 + ".5.0", (5, 60)),  # ttr 0
        ("ab" * 16 + ".-5.60", (1024, 60)),
        ("ab" * 16 + ".nan.60", (1024, 60)),
        ("ab" * 16 + ".\u0663.60", (1024, 60)),  # an Arabic-Indic digit: int() would take it
        ("ab" * 16 + ".5.60\n", (1024, 60)),
        ("", (1024, 60)),
        ("\\xff\\xfe", (1024, 60)),
        ("ab" * 16 + ".4294967295.4294967295", (2**32 - 1, 2**32 - 1)),
    ],
)
def test_garbage_unique_keys_read_as_the_defaults(unique: str, expected: tuple[int, int]) -> None:
    assert parse_unique(unique) == expected


def test_queue_names_gearman_can_carry() -> None:
    assert GearmanAdapter.queue_name_problem("mail") is None
    assert GearmanAdapter.queue_name_problem("mail box é") is None
    assert GearmanAdapter.queue_name_problem("q" * 247) is None  # 'q' * 247 + '@delayed' is 255 bytes
    for bad in ("", "a\nb", "a\tb", "a\0b", "\udc80", "q" * 248, "é" * 124):
        assert GearmanAdapter.queue_name_problem(bad), bad
    assert "@delayed" in (GearmanAdapter.queue_name_problem("mail@delayed") or "")


def test_app_queue_refuses_what_gearman_cannot_carry(tmp_path: Path) -> None:
    app = lilqueue.App(settings=load_settings(backend=f"gearman://127.0.0.1:1?held_store={tmp_path}/h.db", env={}))
    for name in ("mail@delayed", "q" * 248, "new\nline"):
        with pytest.raises(ConfigError, match="cannot declare queue"):
            app.queue(name)
    assert app.queue("q" * 247).name == "q" * 247
    app.close()


def test_config_rejects_unknown_options_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"queue\.gearman\.ttl: unknown option"):
        GearmanAdapter.from_config("gearman://127.0.0.1:4730", {"ttl": 5})
    with pytest.raises(ConfigError, match=r"queue\.gearman\.poll_interval"):
        GearmanAdapter.from_config(None, {"poll_interval": "soon"})
    for store in ("ftp://x", "sqlite://relative.db", "", 5, "redis://h:port/0"):
        with pytest.raises(ConfigError, match=r"queue\.gearman\.held_store"):
            GearmanAdapter.from_config(None, {"held_store": store})
    with pytest.raises(ConfigError, match=r"queue\.gearman\.servers\[0\]\.port"):
        GearmanAdapter.from_config(None, {"servers": [{"host": "h", "port": "x"}]})
    with pytest.raises(ConfigError, match=r"queue\.backend"):
        GearmanAdapter.from_config("gearman://h:notaport", {})


def test_config_from_url_and_servers_option(tmp_path: Path) -> None:
    held = f"sqlite:///{tmp_path}/h.db"
    adapter = GearmanAdapter.from_config(f"gearman://a:1,[::1]:2?poll_interval=0.3&held_store={held}", {})
    try:
        assert [s.address for s in adapter.servers] == [Address("a", 1), Address("::1", 2)]
        assert adapter.poll_interval == 0.3 and adapter.store.path == f"{tmp_path}/h.db"
    finally:
        adapter.close()
    adapter = GearmanAdapter.from_config(None, {"servers": [{"host": "b", "port": 3}, "c"], "held_store": held})
    try:
        assert [s.address for s in adapter.servers] == [Address("b", 3), Address("c", 4730)]
    finally:
        adapter.close()


@pytest.mark.parametrize("key", ["connect_timeout", "io_timeout", "poll_interval"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1, "five", "nan", True, None, 86401])
def test_timeouts_must_be_finite_positive_numbers(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"queue\.gearman\.{key}"):
        GearmanAdapter.from_config("gearman://127.0.0.1:4730", {key: value})


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-1", "1e400", "soon", ""])
def test_timeouts_in_the_url_must_be_finite_positive_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match=r"queue\.gearman\.io_timeout"):
        GearmanAdapter.from_config(f"gearman://127.0.0.1:4730?io_timeout={text}", {})


def test_timeouts_default_to_3_and_5_seconds(tmp_path: Path) -> None:
    adapter = GearmanAdapter.from_config("gearman://127.0.0.1:4730?connect_timeout=0.5", {"io_timeout": 2})
    conn = adapter.servers[0].client
    assert (conn.connect_timeout, conn.io_timeout) == (0.5, 2.0)
    adapter.close()
    adapter = GearmanAdapter.from_config("gearman://127.0.0.1:4730", {"held_store": str(tmp_path / "h.db")})
    for conn in (adapter.servers[0].client, adapter.servers[0].worker, adapter.servers[0].admin.conn):
        assert (conn.connect_timeout, conn.io_timeout) == (3.0, 5.0)
    adapter.close()


def test_the_held_store_is_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "held.db"
    adapter = GearmanAdapter.from_config(f"gearman://127.0.0.1:1?held_store=sqlite:///{path}", {})
    try:
        assert not path.exists()  # a producer that never holds or delays never creates it
        assert adapter.held("mail") == [] and adapter.kick("mail", 5) == 0
        assert not adapter.delete_id("mail", "nope") and not adapter.kick_id("mail", "nope")
        assert path.exists()
    finally:
        adapter.close()


def test_admin_leaves_out_a_function_whose_lines_a_name_forged() -> None:
    """A name holding '<LF>' and tabs prints a whole line for 'mail'. Its field count fits
    one listing only; in the other it is a fragment, which makes 'mail' suspect there.
    A name listed twice is suspect too."""
    listing = (
        b"mail\t900\t0\t5\nx\t1\t0\t0\n"  # a forged status line, then the name's tail
        b"mail\t900\t0\t0\t5\ny\t1\t0\t0\n"  # a forged prioritystatus line: a tab in the name here
        b"twice\t1\t0\t0\ntwice\t2\t0\t0\nother\t1\t1\t1\n.\n"
    )
    admin, server, _ = admin_serving([listing])
    status = admin.status()
    assert set(status) == {"x", "y", "other"}  # 'mail' forged, 'twice' twice
    assert {"mail", "twice"} <= admin.suspect
    server.join()
    admin.close()
