"""``redis://[USER:PASS@]HOST[:PORT][/DB]``: Redis (>= 6.0) through redis-py.

Every queue lives under keys named from its (prefixed) name ``Q``::

    Q:seq         string  the last task id given out (INCR)
    Q:job:ID      hash    one task: body, pri, ttr; n (times handed out), u (of those, handed back
                          unstarted), s (deliveries at the last outcome); reason, at (held at, epoch s)
    Q:ready       zset    ready tasks: score = priority, member = the id zero-padded to 16 digits,
                          so equal priorities come out in id (FIFO) order
    Q:delayed     zset    delayed tasks: score = when due (server clock, epoch ms), member = id
    Q:reserved    zset    leases: score = when the lease lapses (epoch ms), member = id
    Q:held        zset    held tasks: score = when held (epoch ms), member = id
    Q:wake        list    at most a token or two: what an idle worker's BLPOP waits on

Another client adds a task as ``ID = INCR Q:seq``, then in one MULTI: ``HSET Q:job:ID body
<payload> pri 1024 ttr 60 n 0``, ``ZADD Q:ready 1024 <ID zero-padded to 16>``, ``RPUSH Q:wake
1``, ``LTRIM Q:wake 0 0``. Ids are decimal numbers, so no key of one queue is ever a key of
another, whatever the names (``a:job`` next to ``a``, say).

Every state change is one Lua script (EVALSHA), so it is atomic and takes one round
trip. A reserve moves due delays and lapsed leases to ``ready`` and leases the most
urgent task of all the queues asked for; when nothing is ready it reports the next due
time, and the worker blocks in ``BLPOP`` on the queues' wake lists until a producer
pushes a token or that time comes (no polling while idle), with the take script sent
behind the ``BLPOP`` in the same write. ``n`` counts deliveries and fences a worker whose
lease lapsed: its delete, release, bury or touch no longer match once another worker has
taken the task. ``Job.deliveries`` is ``n - u`` and ``Job.unfinished`` is ``n - u - 1 - s``:
a release, bury or kick sets ``s``, and handing a task back unstarted (``unreserve``) adds to
``u``, so that delivery never counts.

Lua does not roll back a script that fails half-way, so every script reads and checks
before its first write: key types (a queue whose sets are not sorted sets is refused with
an error naming the key, and skipped by a worker that watches others; the take checks all
four, ``held`` included, so no task is leased that could not then be retried or held), and
every field of
a task record. A record the scripts cannot use (``ttr`` "nan", ``n`` "inf", no body, a
string where the hash should be, an entry in ``ready`` that is not an id) is held with a
reason that names what was wrong, its bad fields replaced by safe values so that a kick
runs it: never lost, never run with a guess, never an error in the middle of a script.

A delete (the ack) is pipelined: written at once with MSG_MORE, so it leaves in the same
segment as the next request, and its reply is read with that request's. A busy worker
thus spends one round trip per task, not two. redis-py connects and authenticates;
requests and replies then go straight over its socket (``_Link``). A connection gives up
after ``connect_timeout`` (3 s) to connect and ``io_timeout`` (5 s) for a reply.
"""

from __future__ import annotations

import hashlib
import logging
import math
import select
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.exceptions as rex

from lilqueue.adapters.base import (
    Adapter,
    Capabilities,
    HeldJob,
    Job,
    Peeked,
    PeekState,
    QueueStats,
    native,
)
from lilqueue.adapters.support import options
from lilqueue.errors import BackendConnectionError, BackendError, BackendTimeoutError, ConfigError

log = logging.getLogger(__name__)

#: how long a wait is worth a BLPOP; shorter waits for a known due time just sleep (seconds)
_MIN_BLOCK = 0.05
#: MSG_MORE (Linux): a pipelined ack leaves with the next request, in the same segment
_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)
#: pipelined acks allowed in flight before their replies are read
_MAX_PENDING = 64

_LIB = """
local MAX = 4294967295
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function pad(id) return string.rep('0', 16 - #id) .. id end
local function unpad(member)
  local id = string.gsub(member, '^0+', '')
  if id == '' then return '0' end
  return id
end
local function int(x) return string.format('%d', x) end
-- the whole number lo <= x <= MAX a field holds, or nil (missing, 'nan', 'inf', '1.5', 'x', an error)
local function whole(text, lo)
  local x = tonumber(text)
  if x == nil or x ~= x or x < lo or x > MAX or x ~= math.floor(x) then return nil end
  return x
end
local function quote(text) return "'" .. string.sub(tostring(text), 1, 40) .. "'" end
-- why lilqueue cannot use `key` as a `want` ('zset'), or nil; read before any write
local function misfit(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind == want or kind == 'none' then return nil end
  return 'lilqueue: ' .. key .. ' is a ' .. kind .. ', not a ' .. want .. '; remove or rename it to use this queue'
end
local function misfits(q, sets)
  for _, set in ipairs(sets) do
    local why = misfit(q .. set, 'zset')
    if why then return why end
  end
  return nil
end
local function wake(q)
  local key = q .. ':wake'
  local n = redis.pcall('LLEN', key)
  if type(n) ~= 'number' then
    redis.call('DEL', key)  -- a wake list holds nothing but tokens: another type there is junk
    n = 0
  end
  if n == 0 then redis.call('RPUSH', key, '1') end
end
local function make_ready(q, id)
  local pri = whole(redis.pcall('HGET', q .. ':job:' .. id, 'pri'), 0) or 1024
  redis.call('ZADD', q .. ':ready', pri, pad(id))
end
-- the members of sorted set `key` due by `now`; or nil and why not
local function due(key, now)
  local ids = redis.pcall('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
  if ids.err then return nil, misfit(key, 'zset') or ids.err end
  return ids
end
local function move(q, set, ids)
  for _, id in ipairs(ids) do
    redis.call('ZREM', q .. set, id)
    make_ready(q, id)
  end
end
-- move due delays and lapsed leases to ready; why not, if a key of q is not a sorted set
local function promote(q, now)
  local delayed, why = due(q .. ':delayed', now)
  if not delayed then return why end
  local lapsed
  lapsed, why = due(q .. ':reserved', now)
  if not lapsed then return why end
  if #delayed + #lapsed == 0 then return nil end
  why = misfit(q .. ':ready', 'zset')
  if why then return why end
  move(q, ':delayed', delayed)
  move(q, ':reserved', lapsed)
  return nil
end
-- a fresh task id of q whose key is free, or nil and why
local function new_id(q)
  for _ = 1, 100 do
    local id = redis.pcall('INCR', q .. ':seq')
    if type(id) ~= 'number' then return nil, 'lilqueue: ' .. q .. ':seq is not a task counter: ' .. id.err end
    id = int(id)
    if redis.call('EXISTS', q .. ':job:' .. id) == 0 then return id end
  end
  return nil, 'lilqueue: the next 100 task ids of ' .. q .. ' are all taken by keys lilqueue did not write'
end
-- the task's key and its n, u, ttr if the caller still holds it (handed out as `receipt`, not finished since)
local function owned(q, id, receipt)
  local key = q .. ':job:' .. id
  local f = redis.pcall('HMGET', key, 'n', 'u', 'ttr')
  if f.err or f[1] ~= receipt then return nil end
  if redis.call('ZREM', q .. ':reserved', id) == 0 and redis.call('ZREM', q .. ':ready', pad(id)) == 0 then
    return nil
  end
  return key, f
end
-- deliveries so far (n less the unreserved ones), from owned()'s fields
local function delivered(f) return math.max((whole(f[1], 0) or 0) - (whole(f[2], 0) or 0), 0) end
local function hold(q, id, reason, now)
  redis.call('HSET', q .. ':job:' .. id, 'reason', reason, 'at', string.format('%.3f', now / 1000))
  redis.call('ZADD', q .. ':held', now, id)
end
"""

# Holding what the take script cannot lease; every write here follows checks that make it succeed.
_TAKE_HOLDS = """
-- hold a new record (a fresh id) for an entry with no usable key; nil, or why not
local function hold_new(q, body, reason, now)
  local id, why = new_id(q)
  if id == nil then return why end
  redis.call('HSET', q .. ':job:' .. id, 'body', body, 'pri', 1024, 'ttr', 60, 'n', 0)
  hold(q, id, reason, now)
  return nil
end
-- hold the entry whose key is not a hash: a string becomes the body; other types are left alone
local function hold_odd(q, id, member, score, now)
  local key = q .. ':job:' .. id
  local kind = redis.call('TYPE', key).ok
  local entry = ' (the entry ' .. quote(member) .. ' of ' .. q .. ':ready)'
  if kind ~= 'string' then
    return hold_new(q, '', key .. ' is a ' .. kind .. ', not a task hash; it was left as it is' .. entry, now)
  end
  local body = redis.call('GET', key)
  redis.call('DEL', key)
  redis.call('HSET', key, 'body', body, 'pri', whole(score, 0) or 1024, 'ttr', 60, 'n', 0)
  hold(q, id, key .. ' was a string, not a task hash; its value is kept as the body' .. entry, now)
  return nil
end
-- the values to lease a record with (bad or missing ones replaced) and what was wrong, if anything
local function check(f, score)
  local bad, v = {}, {}
  local specs = {{'pri', 2, 0, whole(score, 0) or false}, {'ttr', 3, 1, 60}, {'n', 4, 0, 0}, {'u', 5, 0, 0},
    {'s', 6, 0, 0}}
  for _, spec in ipairs(specs) do
    local name, text, default = spec[1], f[spec[2]], spec[4]
    v[name] = whole(text, spec[3])
    if v[name] == nil and (text or not default) then
      table.insert(bad, name .. ' ' .. (text and quote(text) or 'missing') .. ' is not a whole number in range')
    end
    v[name] = v[name] or default or 1024
  end
  if not f[1] then table.insert(bad, 'no body field') end
  if v.u > v.n then
    table.insert(bad, 'u ' .. int(v.u) .. ' is more than n ' .. int(v.n))
    v.u = 0
  end
  if v.s > v.n - v.u then
    table.insert(bad, 's ' .. int(v.s) .. ' is more than n - u')
    v.s = v.n - v.u
  end
  if #bad == 0 then return v, nil end
  return v, table.concat(bad, '; ')
end
local function hold_bad(q, id, key, v, body, problems, now)
  redis.call('HSET', key, 'body', body or '', 'pri', int(v.pri), 'ttr', int(v.ttr), 'n', int(v.n), 'u', int(v.u),
    's', int(v.s))
  hold(q, id, 'lilqueue could not use the task record ' .. key .. ': ' .. problems ..
    ' (now replaced by safe values; kick it to run it with them)', now)
end
"""

_PUT = """
local q, delay = ARGV[1], tonumber(ARGV[4])
local set = ':ready'
if delay > 0 then set = ':delayed' end
local why = misfit(q .. set, 'zset')
if why then return redis.error_reply(why) end
local id, full = new_id(q)
if id == nil then return redis.error_reply(full) end
redis.call('HSET', q .. ':job:' .. id, 'body', ARGV[2], 'pri', ARGV[3], 'ttr', ARGV[5], 'n', 0)
if delay > 0 then
  redis.call('ZADD', q .. ':delayed', now_ms() + delay, id)
else
  redis.call('ZADD', q .. ':ready', tonumber(ARGV[3]), pad(id))
end
wake(q)
return id
"""

_TAKE = (
    _TAKE_HOLDS
    + """
-- the values to lease a record with as it is (lilqueue's own, or a foreign one that left out
-- pri, ttr or n); nil if check() would find anything wrong. Allocates nothing: the hot path.
local function usable_as_is(f, score)
  local pri, ttr, n = whole(f[2] or score, 0), whole(f[3] or 60, 1), whole(f[4] or 0, 0)
  local u, s = whole(f[5] or 0, 0), whole(f[6] or 0, 0)
  if not (f[1] and pri and ttr and n and u and s) or u > n or s > n - u then return nil end
  return pri, ttr, n, u, s
end
-- hold the popped entry of q that cannot be leased (f: its record's fields, or the error reading them)
local function hold_unusable(q, id, f, member, score, now)
  local why = misfit(q .. ':held', 'zset')
  if why then return why end
  local key = q .. ':job:' .. id
  if not string.find(id, '^%d+$') then
    return hold_new(q, '', 'the entry ' .. quote(member) .. ' of ' .. q .. ':ready is not a task id', now)
  end
  if f.err then return hold_odd(q, id, member, score, now) end
  if not f[1] and redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'body', '', 'pri', whole(score, 0) or 1024, 'ttr', 60, 'n', 0)
    hold(q, id, 'no task record ' .. key .. ' for the entry ' .. quote(member) .. ' of ' .. q .. ':ready', now)
    return nil
  end
  local v, problems = check(f, score)
  hold_bad(q, id, key, v, f[1], problems or 'nothing found wrong', now)
  return nil
end
-- lease the popped entry of ARGV[i]: the reply, or nil when it was held instead; or nil and why not
local function lease(i, member, score, now)
  local q = ARGV[i]
  local id = unpad(member)
  local key = q .. ':job:' .. id
  local f
  if string.find(id, '^%d+$') then
    f = redis.pcall('HMGET', key, 'body', 'pri', 'ttr', 'n', 'u', 's')
  else
    f = {err = 'not a task id'}
  end
  local pri, ttr, n, u, s
  if not f.err then pri, ttr, n, u, s = usable_as_is(f, score) end
  if not pri then return nil, hold_unusable(q, id, f, member, score, now) end
  n = n + 1
  redis.call('HSET', key, 'n', int(n))
  redis.call('ZADD', q .. ':reserved', now + ttr * 1000, id)
  if redis.pcall('LLEN', q .. ':wake') == 0 and redis.call('EXISTS', q .. ':ready') == 1 then
    redis.call('RPUSH', q .. ':wake', '1')  -- more is ready: pass a token on to the next idle worker
  end
  return string.format('%d %s %d %d %d %d %d\\n', i, id, pri, ttr, n - u, n - u - 1 - s, n) .. f[1]
end
-- the most urgent ready entry of the usable queues, removed from ready: index, member, score;
-- or the index of a queue whose ready set is not a sorted set, and why
local function pop(usable)
  if #usable == 1 then
    local top = redis.pcall('ZPOPMIN', ARGV[usable[1]] .. ':ready')
    if top.err then return usable[1], nil, nil, misfit(ARGV[usable[1]] .. ':ready', 'zset') or top.err end
    if top[1] then return usable[1], top[1], tonumber(top[2]) end
    return nil
  end
  local best, member, score
  for _, i in ipairs(usable) do
    local top = redis.pcall('ZRANGE', ARGV[i] .. ':ready', 0, 0, 'WITHSCORES')
    if top.err then return i, nil, nil, misfit(ARGV[i] .. ':ready', 'zset') or top.err end
    if top[1] and (best == nil or tonumber(top[2]) < score) then
      best, member, score = i, top[1], tonumber(top[2])
    end
  end
  if best then redis.call('ZREM', ARGV[best] .. ':ready', member) end
  return best, member, score
end
local function drop(usable, i)
  for k, j in ipairs(usable) do
    if j == i then table.remove(usable, k) end
  end
end
local function next_due(usable, now)
  local due = -1
  for _, i in ipairs(usable) do
    for _, set in ipairs({':delayed', ':reserved'}) do
      local first = redis.call('ZRANGE', ARGV[i] .. set, 0, 0, 'WITHSCORES')
      if first[2] then
        local wait = math.min(math.max(math.ceil(tonumber(first[2]) - now), 0), 3600000)
        if due < 0 or wait < due then due = wait end
      end
    end
  end
  return due
end

local now = now_ms()
local usable, broken = {}, {}
for i, q in ipairs(ARGV) do
  -- every key a later write needs: ready and delayed (release), reserved (lease), held (bury,
  -- and holding what cannot be leased): a task taken from q must be able to reach an outcome
  local why = misfit(q .. ':held', 'zset') or promote(q, now)
  if why then table.insert(broken, why) else table.insert(usable, i) end
end
while #usable > 0 do
  local i, member, score, why = pop(usable)
  if i == nil then break end
  local reply
  if not why then reply, why = lease(i, member, score, now) end
  if reply then return reply end
  if why then  -- a key of ARGV[i] lilqueue cannot use: leave that queue as it was for this take
    if member then redis.call('ZADD', ARGV[i] .. ':ready', score, member) end
    drop(usable, i)
    table.insert(broken, why)
  end
end
if #usable == 0 then return redis.error_reply(table.concat(broken, '; ')) end
if #broken > 0 then return {next_due(usable, now), table.concat(broken, '; ')} end
return next_due(usable, now)
"""
)

_DELETE = """
local key = owned(ARGV[1], ARGV[2], ARGV[3])
if key == nil then return 0 end
redis.call('DEL', key)
return 1
"""

_RELEASE = """
local q, id, pri, delay = ARGV[1], ARGV[2], ARGV[4], tonumber(ARGV[5])
local set = ':ready'
if delay > 0 then set = ':delayed' end
local why = misfit(q .. set, 'zset')
if why then return redis.error_reply(why) end
local key, f = owned(q, id, ARGV[3])
if key == nil then return 0 end
if ARGV[6] == 'unstarted' then
  redis.call('HSET', key, 'pri', pri, 'u', int((whole(f[2], 0) or 0) + 1))
else
  redis.call('HSET', key, 'pri', pri, 's', int(delivered(f)))
end
if delay > 0 then
  redis.call('ZADD', q .. ':delayed', now_ms() + delay, id)
else
  redis.call('ZADD', q .. ':ready', tonumber(pri), pad(id))
end
wake(q)
return 1
"""

_BURY = """
local q, id = ARGV[1], ARGV[2]
local why = misfit(q .. ':held', 'zset')
if why then return redis.error_reply(why) end
local key, f = owned(q, id, ARGV[3])
if key == nil then return 0 end
redis.call('HSET', key, 's', int(delivered(f)))
hold(q, id, ARGV[4], now_ms())
return 1
"""

_TOUCH = """
local q, id = ARGV[1], ARGV[2]
local key, f = owned(q, id, ARGV[3])
if key == nil then return 0 end
redis.call('ZADD', q .. ':reserved', now_ms() + (whole(f[3], 1) or 60) * 1000, id)
return 1
"""

_KICK = """
local q, count = ARGV[1], tonumber(ARGV[2])
local why = misfits(q, {':held', ':ready'})
if why then return redis.error_reply(why) end
local ids = {}
if ARGV[3] then
  if redis.call('ZSCORE', q .. ':held', ARGV[3]) then ids = {ARGV[3]} end
elseif count > 0 then
  ids = redis.call('ZRANGE', q .. ':held', 0, count - 1)
end
for _, id in ipairs(ids) do
  local key = q .. ':job:' .. id
  local f = redis.pcall('HMGET', key, 'n', 'u')
  redis.call('ZREM', q .. ':held', id)
  if not f.err then
    redis.call('HDEL', key, 'reason', 'at')
    local n, u = whole(f[1], 0), whole(f[2], 0) or 0
    if n and u <= n then redis.call('HSET', key, 's', int(n - u)) end
  end
  make_ready(q, id)
end
if #ids > 0 then wake(q) end
return #ids
"""

_DELETE_ID = """
local q, id = ARGV[1], ARGV[2]
local why = misfits(q, {':ready', ':delayed', ':reserved', ':held'})
if why then return redis.error_reply(why) end
local lease = redis.call('ZSCORE', q .. ':reserved', id)
if lease and tonumber(lease) > now_ms() then return 0 end
local found = redis.call('ZREM', q .. ':ready', pad(id)) + redis.call('ZREM', q .. ':delayed', id)
  + redis.call('ZREM', q .. ':held', id) + redis.call('ZREM', q .. ':reserved', id)
if found == 0 then return 0 end
return found + redis.call('DEL', q .. ':job:' .. id)
"""

_HELD = """
local q = ARGV[1]
local why = misfit(q .. ':held', 'zset')
if why then return redis.error_reply(why) end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', q .. ':held', 0, tonumber(ARGV[2]) - 1)) do
  local key = q .. ':job:' .. id
  local f = redis.pcall('HMGET', key, 'body', 'reason', 'at')
  if f.err then f = {'', key .. ' is a ' .. redis.call('TYPE', key).ok .. ', not a task hash', ''} end
  table.insert(out, {id, f[1] or '', f[2] or '', f[3] or ''})
end
return out
"""

_PEEK = """
local q, state = ARGV[1], ARGV[2]
local why = misfit(q .. ':ready', 'zset') or promote(q, now_ms()) or misfit(q .. ':' .. state, 'zset')
if why then return redis.error_reply(why) end
local first = redis.call('ZRANGE', q .. ':' .. state, 0, 0)[1]
if not first then return 0 end
local id = first
if state == 'ready' then id = unpad(first) end
local f = redis.pcall('HMGET', q .. ':job:' .. id, 'body', 'pri')
if f.err then f = {} end
return {id, f[1] or '', whole(f[2], 0) or -1}
"""

_STATS = """
local q = ARGV[1]
local why = misfits(q, {':ready', ':held'}) or promote(q, now_ms())
if why then return redis.error_reply(why) end
local out = {}
for _, set in ipairs({':ready', ':delayed', ':reserved', ':held'}) do
  table.insert(out, redis.call('ZCARD', q .. set))
end
return out
"""

_FIX_WAKE = """
local fixed = 0
for _, q in ipairs(ARGV) do
  local kind = redis.call('TYPE', q .. ':wake').ok
  if kind ~= 'list' and kind ~= 'none' then fixed = fixed + redis.call('DEL', q .. ':wake') end
end
return fixed
"""


class _Script:
    """One Lua script, run by EVALSHA (and loaded by EVAL the first time it is missing)."""

    __slots__ = ("evalsha", "name", "sha", "text")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.text = _LIB + body
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self.evalsha = (b"EVALSHA", self.sha.encode(), b"0")


PUT, TAKE, DELETE = _Script("put", _PUT), _Script("take", _TAKE), _Script("delete", _DELETE)
RELEASE, BURY, TOUCH = _Script("release", _RELEASE), _Script("bury", _BURY), _Script("touch", _TOUCH)
KICK, DELETE_ID, HELD = _Script("kick", _KICK), _Script("delete_id", _DELETE_ID), _Script("held", _HELD)
PEEK, STATS, FIX_WAKE = _Script("peek", _PEEK), _Script("stats", _STATS), _Script("fix_wake", _FIX_WAKE)


class _Link:
    """One connection to Redis. redis-py connects and shakes hands (AUTH, HELLO, SELECT,
    with its connect timeout); requests and replies then go straight over the socket.

    Raises redis-py's own exceptions (``ConnectionError``, ``TimeoutError``,
    ``ResponseError`` and its subclasses), which the adapter translates.
    """

    def __init__(self, conn: Any, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.buf, self.pos = b"", 0
        self.sock: Any = None
        self.poller, self.polled = select.poll(), None

    def send(self, data: bytes, *, more: bool = False) -> None:
        """Write a request. ``more``: hold it in the kernel (MSG_MORE) to leave with the next
        request in one segment; Linux sends it anyway within 200 ms, and on close or exit."""
        if self.sock is None:
            self.conn.connect()
            self.sock, self.buf, self.pos = self.conn._sock, b"", 0
        try:
            self.sock.sendall(data, _MSG_MORE if more else 0)
        except OSError as exc:
            self.close()
            raise rex.ConnectionError(f"error writing to Redis: {exc}") from exc
        except BaseException:  # half a request may be out: this connection is done
            self.close()
            raise

    def flush(self) -> None:
        """Send what MSG_MORE held back now (setting TCP_NODELAY pushes pending frames)."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                self.close()
                raise rex.ConnectionError(f"error writing to Redis: {exc}") from exc

    def read(self, timeout: float | None = None) -> Any:
        """One reply (waiting up to ``timeout`` seconds, default the socket timeout)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return self._reply()
        except TimeoutError as exc:
            self.close()
            raise rex.TimeoutError("timed out reading from Redis") from exc
        except OSError as exc:
            self.close()
            raise rex.ConnectionError(f"error reading from Redis: {exc}") from exc
        except rex.ResponseError:
            raise  # a whole error reply was read: the connection is fine
        except BaseException:  # a broken stream, or interrupted mid-reply (a second signal)
            self.close()
            raise
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(self.timeout)

    def idle_and_closed(self) -> bool:
        """Whether the server closed this idle connection (EOF or junk waiting; no round trip)."""
        if self.sock is None or self.pos < len(self.buf):
            return False
        if self.polled is not self.sock:
            self.poller, self.polled = select.poll(), self.sock
            self.poller.register(self.sock, select.POLLIN)
        return bool(self.poller.poll(0))

    def close(self) -> None:
        self.sock, self.buf, self.pos = None, b"", 0
        self.conn.disconnect()

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$" or kind == b"=":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b":" or kind == b"(":
            return int(rest)
        if kind == b"*" or kind == b"~" or kind == b">":
            size = int(rest)
            items = None if size < 0 else [self._reply() for _ in range(size)]
            return self._reply() if kind == b">" else items  # a push message: not ours
        if kind == b"%":
            return {self._reply(): self._reply() for _ in range(int(rest))}
        if kind == b"_":
            return None
        if kind == b"+":
            return rest
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"-" or kind == b"!":
            message = (self._exact(int(rest)) if kind == b"!" else rest).decode(errors="replace")
            raise _ERRORS.get(message.split(" ", 1)[0], rex.ResponseError)(message)
        raise rex.ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._fill()
        line, self.pos = self.buf[self.pos : end], end + 2
        return line

    def _exact(self, size: int) -> bytes:
        while len(self.buf) - self.pos < size + 2:
            self._fill()
        data, self.pos = self.buf[self.pos : self.pos + size], self.pos + size + 2
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise rex.ConnectionError("Redis closed the connection")
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0


_ERRORS: dict[str, type[rex.RedisError]] = {
    "NOSCRIPT": rex.NoScriptError,
    "LOADING": rex.BusyLoadingError,
    "MASTERDOWN": rex.ConnectionError,
    "READONLY": rex.ConnectionError,
}


_OPTIONS = {
    "host": str,
    "port": int,
    "db": int,
    "username": str,
    "password": str,
    "protocol": int,
    "connect_timeout": float,
    "io_timeout": float,
    "timeout": float,  # the name io_timeout had before: still accepted
    "pipeline_acks": bool,
}
#: seconds between two warnings about the same queue whose keys lilqueue cannot use
_WARN_EVERY = 60.0


class RedisAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=native("Q:ready is a sorted set scored by priority; members are zero-padded ids (FIFO)"),
        delay=native("Q:delayed, scored by due time on the server clock; moved to ready by the reserve script"),
        ttr=native("Q:reserved, scored by lease deadline; a lapsed lease is made ready by the next reserve"),
        touch=native("moves the lease deadline in Q:reserved"),
        retry=native("release: back to Q:ready or Q:delayed in one script"),
        hold=native("Q:held, with reason and time in the task's hash"),
        kick=native(),
        stats=native("exact counts (ZCARD)"),
        blocking_reserve=native("BLPOP on the queues' wake lists, bounded by the next due time"),
        notes="durable as far as the server's persistence goes: use appendonly yes",
    )

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        protocol: int = 3,
        connect_timeout: float = options.CONNECT_TIMEOUT,
        io_timeout: float = options.IO_TIMEOUT,
        pipeline_acks: bool = True,
    ) -> None:
        self.where = f"redis://{host}:{port}/{db}"
        self.timeout = io_timeout
        self.pipeline_acks = pipeline_acks
        self._pending: list[tuple[_Script, tuple[Any, ...]]] = []
        self._takes: dict[tuple[str, ...], bytes] = {}
        self._warned: dict[str, float] = {}
        # One connection, driven command by command: a pipelined ack's reply is read later.
        conn = redis.Connection(  # type: ignore[no-untyped-call]
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            protocol=protocol,
            socket_connect_timeout=connect_timeout,
            socket_timeout=io_timeout,
        )
        self._link = _Link(conn, io_timeout)

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> RedisAdapter:
        values = dict(options)
        if url is not None:
            values.update(_parse_url(url))
        kwargs = {key: _option(key, value) for key, value in values.items()}
        if kwargs.get("protocol", 3) not in (2, 3):
            raise ConfigError(f"queue.redis.protocol: must be 2 or 3, not {kwargs['protocol']!r}")
        if not 0 < kwargs.get("port", 6379) < 65536:
            raise ConfigError(f"queue.redis.port: must be a port number 1-65535, not {kwargs['port']!r}")
        if "timeout" in kwargs:
            kwargs.setdefault("io_timeout", kwargs.pop("timeout"))
        return cls(**kwargs)

    # -- the hot path --------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        return _text(self._call(PUT, queue, body, priority, delay * 1000 if delay > 0 else 0, ttr))

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        if not queues:
            raise ValueError("reserve() needs at least one queue")
        deadline = time.monotonic() + timeout
        names = tuple(queues)
        take = self._takes.get(names) or self._take_request(names)
        reply = self._call(TAKE, *names, request=take)
        while not isinstance(reply, bytes):  # else b"INDEX ID PRIORITY TTR DELIVERIES UNFINISHED N\nBODY"
            due = self._next_due(reply)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = left if due < 0 else min(left, due / 1000)
            if wait >= _MIN_BLOCK:
                reply = self._block_then_take(names, take, wait)
            else:
                time.sleep(wait)  # a delay or lease is due within a few ms
                reply = self._call(TAKE, *names, request=take)
        head, _, body = reply.partition(b"\n")
        index, id, priority, ttr, deliveries, unfinished, n = head.split()
        queue = queues[int(index) - 1]
        return Job(id.decode(), queue, body, int(priority), int(ttr), int(deliveries), n.decode(), int(unfinished))

    def _next_due(self, reply: Any) -> int:
        """Milliseconds to the next due delay or lease (-1: none) from a take that found nothing;
        the take also names the watched queues whose keys it cannot use: warn of those."""
        if not isinstance(reply, list):
            return int(reply)
        due, problem = reply
        now = time.monotonic()
        text = _text(problem)
        if now - self._warned.get(text, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[text] = now
            log.warning("Redis %s: skipping queues: %s", self.where, text)
        return int(due)

    def _take_request(self, names: tuple[str, ...]) -> bytes:
        """The take script's request for these queues (the same bytes every time: kept)."""
        request = _pack(TAKE.evalsha, names)
        if len(self._takes) < 64:
            self._takes[names] = request
        return request

    def _block_then_take(self, queues: tuple[str, ...], take: bytes, wait: float) -> Any:
        """BLPOP the queues' wake lists for up to ``wait`` seconds, then the take script.

        Both go in one write: Redis runs the take as soon as the BLPOP returns (woken by a
        token or timed out), so a woken worker has its task one round trip after the put.
        """
        self._settle()
        blpop = _pack((b"BLPOP",), (*(f"{q}:wake" for q in queues), f"{wait:.3f}"))
        try:
            self._link.send(blpop + take)
            try:
                self._link.read(timeout=wait + self.timeout)
                junk = False
            except rex.ResponseError:  # a wake key of another type; the take's reply still comes
                junk = True
            try:
                reply = self._link.read()
            except rex.NoScriptError:
                reply = self._eval(TAKE, queues)
            if junk:
                fixed = self._eval(FIX_WAKE, queues)
                log.warning("Redis %s: removed %s wake keys of another type", self.where, fixed)
            return reply
        except rex.RedisError as exc:
            raise self._translate(exc, "reserve") from exc

    def delete(self, job: Job) -> None:
        args = (job.queue, job.id, job.receipt)
        if not self.pipeline_acks or (not self._pending and self._link.idle_and_closed()):
            self._call(DELETE, *args)  # (a task that ran while Redis restarted: reconnect first)
            return
        if len(self._pending) >= _MAX_PENDING:
            self._settle()
        try:
            self._link.send(_pack(DELETE.evalsha, args), more=True)
        except rex.RedisError as exc:
            raise self._translate(exc, "delete") from exc
        self._pending.append((DELETE, args))

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        self._call(RELEASE, job.queue, job.id, job.receipt, priority, delay * 1000 if delay > 0 else 0)

    def unreserve(self, job: Job) -> None:
        """Back to ready with its priority; the release script counts this delivery as never made."""
        self._call(RELEASE, job.queue, job.id, job.receipt, job.priority, 0, "unstarted")

    def bury(self, job: Job, *, reason: str) -> None:
        self._call(BURY, job.queue, job.id, job.receipt, reason)

    def touch(self, job: Job) -> None:
        self._call(TOUCH, job.queue, job.id, job.receipt)

    # -- operating -----------------------------------------------------------------

    def kick(self, queue: str, count: int) -> int:
        return int(self._call(KICK, queue, count))

    def kick_id(self, queue: str, id: str) -> bool:
        return int(self._call(KICK, queue, 1, id)) == 1

    def delete_id(self, queue: str, id: str) -> bool:
        return int(self._call(DELETE_ID, queue, id)) > 0

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        if limit <= 0:
            return []
        return [_held(queue, *row) for row in self._call(HELD, queue, limit)]

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        if state not in ("ready", "delayed", "held"):
            raise ValueError(f"peek state must be ready, delayed or held, not {state!r}")
        reply = self._call(PEEK, queue, state)
        if not isinstance(reply, list):
            return None
        id, body, priority = reply
        return Peeked(_text(id), queue, bytes(body), None if int(priority) < 0 else int(priority))

    def stats(self, queue: str) -> QueueStats:
        ready, delayed, reserved, held = (int(n) for n in self._call(STATS, queue))
        return QueueStats(ready, delayed, reserved, held)

    def flush(self) -> None:
        """Push out the pipelined acks now and read their replies (the runner, when it stops)."""
        self._settle()

    def close(self) -> None:
        try:
            self._settle()
        except BackendError as exc:
            log.debug("pipelined acks lost on close (they come back after their ttr): %s", exc)
        self._link.close()

    # -- talking to Redis ------------------------------------------------------------

    def _call(self, script: _Script, *args: Any, request: bytes | None = None) -> Any:
        """Run ``script`` by EVALSHA (``request``: its packed form, if at hand); read any
        pipelined acks' replies first. Translates errors."""
        if not self._pending and self._link.idle_and_closed():
            log.info("Redis %s closed an idle connection (a restart?); reconnecting", self.where)
            self._link.close()
        try:
            self._link.send(request or _pack(script.evalsha, args))
            redo = self._drain()
            try:
                reply = self._link.read()
            except rex.NoScriptError:  # a new or restarted server: EVAL loads the script
                redo.append((script, args))
                reply = None
            for missed, missed_args in redo:
                result = self._eval(missed, missed_args)
                if missed is script and missed_args is args:
                    reply = result
            return reply
        except rex.RedisError as exc:
            raise self._translate(exc, script.name) from exc

    def _eval(self, script: _Script, args: tuple[Any, ...]) -> Any:
        self._link.send(_pack((b"EVAL", script.text.encode(), b"0"), args))
        return self._link.read()

    def _drain(self) -> list[tuple[_Script, tuple[Any, ...]]]:
        """Read the pipelined acks' replies, in order; return those whose script was missing."""
        redo = []
        while self._pending:
            script, args = self._pending.pop(0)
            try:
                self._link.read()
            except rex.NoScriptError:
                redo.append((script, args))
            except rex.ResponseError as exc:
                log.warning("Redis refused a pipelined %s of task %s on %s: %s", script.name, args[1], args[0], exc)
        return redo

    def _settle(self) -> None:
        """Finish the pipelined acks (nothing else in flight)."""
        try:
            if self._pending:
                self._link.flush()
            for script, args in self._drain():
                self._eval(script, args)
        except rex.RedisError as exc:
            raise self._translate(exc, "delete") from exc

    def _translate(self, exc: rex.RedisError, what: str) -> BackendError:
        if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
            self._pending.clear()
            self._link.close()
            kind = BackendTimeoutError if isinstance(exc, rex.TimeoutError) else BackendConnectionError
            return kind(f"Redis {self.where} ({what}): {exc}")
        return BackendError(f"Redis {self.where} ({what}): {exc}")


def _pack(head: tuple[bytes, ...], args: tuple[Any, ...]) -> bytes:
    """The RESP request for ``head + args`` (bytes as they are; anything else as its str())."""
    parts = [b"*%d\r\n" % (len(head) + len(args))]
    for item in (*head, *args):
        data = item if isinstance(item, bytes) else str(item).encode(errors="backslashreplace")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _text(value: Any) -> str:
    """Text from Redis: what is not UTF-8 (another client wrote it) comes escaped."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _held(queue: str, id: Any, body: Any, reason: Any, at: Any) -> HeldJob:
    """A row of the held script: ``at`` is epoch seconds as text, or anything another client wrote."""
    try:
        when: float | None = float(at)
    except (TypeError, ValueError):
        when = None
    if when is not None and not math.isfinite(when):
        when = None
    return HeldJob(_text(id), queue, bytes(body), _text(reason) or None, when)


def _parse_url(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"queue.backend: not a Redis URL ({exc}): {url!r}") from None
    if parts.scheme != "redis":
        raise ConfigError(f"queue.backend: Redis URLs look like redis://HOST:PORT/DB, not {url!r}")
    values: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.hostname:
        values["host"] = parts.hostname
    if port is not None:
        values["port"] = port
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password:
        values["password"] = unquote(parts.password)
    db = parts.path.strip("/")
    if db:
        values["db"] = db
    return values


def _option(key: str, value: Any) -> Any:
    """The value of option ``key`` from a URL's text or the config file; ConfigError naming it."""
    where = f"queue.redis.{key}"
    kind = _OPTIONS.get(key)
    if kind is None:
        raise ConfigError(f"{where}: unknown option (expected one of {', '.join(_OPTIONS)})")
    if kind is bool:
        return _flag(where, value)
    if kind is str:
        return _string(where, value)
    if kind is float:
        return _seconds(where, value)
    return _whole(where, value)


def _flag(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return str(value).lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{where}: must be true or false, not {value!r:.60}")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, not {value!r:.60}")
    if where.endswith(".host") and any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{where}: must be a host name or address, not {value!r:.60}")
    return value


def _seconds(where: str, value: Any) -> float:
    return options.seconds(where, value)


def _whole(where: str, value: Any) -> int:
    """A whole number 0 <= n < 2**31 (port, db, protocol; each is checked further by its use)."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = -1
    if not 0 <= number < 2**31:
        raise ConfigError(f"{where}: must be a whole number >= 0, not {value!r:.60}")
    return number
