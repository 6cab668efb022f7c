"""The shared store: one Redis (redis-py's asyncio client), so several trackers give one answer.

Every tracker process pointed at the same Redis sees the same agents, holdings
and mirrors; nothing lives in one tracker's memory. Each operation is one Lua
script, so it is atomic against the other trackers and costs one round trip.

Schema (every key starts with the prefix, default ``mfetch:``; ``\\0`` joins
an agent id and a path into one set member)::

    leases               zset   agent_id -> lease expiry, seconds on Redis's clock (TIME)
    agent:{agent_id}     hash   base_url
    held:{agent_id}      hash   path -> "SHA_HEX|SIZE|PIECE_SIZE|ROOT_HEX[|HAVE_HEX]"
                                (its identity; HAVE_HEX: a partial holder's bitfield)
    sha:{sha_hex}        set    "agent_id\\0path" of every holding of that content
    name:{name}          set    "agent_id\\0path" of every holding whose basename or
                                whole path is name (a path in a folder is in two sets)
    mirrors              hash   url -> "SHA_HEX|SIZE|NAME"
    msha:{sha_hex}       set    urls of the mirrors of that content
    mname:{name}         set    urls of the mirrors with that name

Locate is O(holders): one SMEMBERS of ``name:`` or ``sha:``, then for each
member one ZSCORE (is the lease live?), one HGET of its identity and one of
its agent's base_url. Nothing scans all agents or all holdings.

Leases expire by Redis's clock: the tracker passes a lease *length*, the script
reads ``TIME`` and stores ``now + length`` as the score, and liveness compares
scores with ``TIME`` again. Trackers whose clocks disagree still agree on who is
live, and a killed tracker takes nothing with it. Holdings of a lapsed agent
stay (hidden by the score check) until :meth:`RedisStore.purge` drops agents
that lapsed long ago, as in the SQLite store. Tests may pass ``redis_time=False``
to have the injected clock stand in for ``TIME`` and move leases by hand.

Keys are built inside the scripts, so this targets one Redis (or a primary with
replicas), not Redis Cluster.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError
from common.identity import Identity
from tracker.store import (
    AgentInfo,
    ContentInfo,
    Found,
    Holding,
    Located,
    MirrorRecord,
    Overview,
    Renewal,
)

SCHEME = "redis://"

# Shared prelude: NOW is Redis's clock unless the caller passed a time (tests).
_NOW = """
local P = ARGV[1]
local NOW
if ARGV[2] == '' then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  NOW = tonumber(ARGV[2])
end
local function live(agent)
  local s = redis.call('ZSCORE', P .. 'leases', agent)
  return s and tonumber(s) > NOW
end
local function basename(path) return string.match(path, '([^/]*)$') end
-- A holding set member is 'agent\\0path': if its agent's lease is live, append
-- agent, base_url, path, value to `out` (the flat shape _flat_located reads).
local function add_live(out, member)
  local sep = string.find(member, '\\0', 1, true)
  local agent, path = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  if live(agent) then
    local v = redis.call('HGET', P .. 'held:' .. agent, path)
    local base = redis.call('HGET', P .. 'agent:' .. agent, 'base_url')
    if v and base then
      out[#out + 1] = agent; out[#out + 1] = base; out[#out + 1] = path; out[#out + 1] = v
    end
  end
end
local function drop(agent, path)
  local v = redis.call('HGET', P .. 'held:' .. agent, path)
  if not v then return end
  local member = agent .. '\\0' .. path
  redis.call('SREM', P .. 'sha:' .. string.sub(v, 1, 64), member)
  local base = basename(path)
  redis.call('SREM', P .. 'name:' .. base, member)
  if base ~= path then redis.call('SREM', P .. 'name:' .. path, member) end
  redis.call('HDEL', P .. 'held:' .. agent, path)
end
local function forget(agent)
  local paths = redis.call('HKEYS', P .. 'held:' .. agent)
  for _, path in ipairs(paths) do drop(agent, path) end
  redis.call('DEL', P .. 'held:' .. agent, P .. 'agent:' .. agent)
  redis.call('ZREM', P .. 'leases', agent)
end
"""

# ARGV: prefix, now, agent, base_url, lease_length
_REGISTER = _NOW + """
redis.call('ZADD', P .. 'leases', NOW + tonumber(ARGV[5]), ARGV[3])
redis.call('HSET', P .. 'agent:' .. ARGV[3], 'base_url', ARGV[4])
return 1
"""

# ARGV: prefix, now, agent, lease_length
_RENEW = _NOW + """
if not live(ARGV[3]) then return 0 end
redis.call('ZADD', P .. 'leases', NOW + tonumber(ARGV[4]), ARGV[3])
return 1
"""

# ARGV: prefix, now, then (agent, lease_length, age) triples -> {1 or 0 each}: renewed if
# the lease was live `age` seconds ago (when the heartbeat arrived); never shortened
_RENEW_MANY = _NOW + """
local out = {}
for i = 3, #ARGV, 3 do
  local agent = ARGV[i]
  local s = redis.call('ZSCORE', P .. 'leases', agent)
  if s and tonumber(s) > NOW - tonumber(ARGV[i + 2]) then
    local until_ = NOW + tonumber(ARGV[i + 1])
    if until_ > tonumber(s) then redis.call('ZADD', P .. 'leases', until_, agent) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: prefix, now, agent
_IS_LIVE = _NOW + """
if live(ARGV[3]) then return 1 end
return 0
"""

# ARGV: prefix, now, agent
_REMOVE_AGENT = _NOW + """
forget(ARGV[3])
return 1
"""

# ARGV: prefix, now, cutoff_age, limit -> agents forgotten (at most limit)
_PURGE = _NOW + """
local cutoff = NOW - tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[4])
for _, agent in ipairs(old) do forget(agent) end
return #old
"""

# ARGV: prefix, now, agent, replace(0/1), n_removed, removed..., then (path, value) pairs
_UPDATE = _NOW + """
local agent = ARGV[3]
local held = P .. 'held:' .. agent
if ARGV[4] == '1' then
  for _, path in ipairs(redis.call('HKEYS', held)) do drop(agent, path) end
end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do drop(agent, ARGV[i]) end
for i = 6 + n, #ARGV, 2 do
  local path, v = ARGV[i], ARGV[i + 1]
  drop(agent, path)
  local member = agent .. '\\0' .. path
  redis.call('HSET', held, path, v)
  redis.call('SADD', P .. 'sha:' .. string.sub(v, 1, 64), member)
  local base = basename(path)
  redis.call('SADD', P .. 'name:' .. base, member)
  if base ~= path then redis.call('SADD', P .. 'name:' .. path, member) end
end
return redis.call('HLEN', held)
"""

# ARGV: prefix, now, set key suffix -> flat [agent, base_url, path, value, ...] of live holdings
_LOCATE = _NOW + """
local out = {}
for _, member in ipairs(redis.call('SMEMBERS', P .. ARGV[3])) do
  add_live(out, member)
end
return out
"""

# Locate in one script (Store.locate_name / locate_sha256).
# ARGV: prefix, now, name or '' , max_contents, sha_hex (when name is '')
#   -> {"agent\0base_url\0path\0value\0..." of live holdings, flat [url, value, ...]}
# The holdings come back as one string joined by NUL (no field can hold one: ids, URLs
# and paths are printable), not as a list: redis-py parses a reply element by element
# in Python, and a list of 4 x holders bulk strings was a sixth of a locate's time.
_LOCATE_ALL = _NOW + """
local shas = {}
if ARGV[3] == '' then
  shas[1] = ARGV[5]
else
  local count = {}
  for _, member in ipairs(redis.call('SMEMBERS', P .. 'name:' .. ARGV[3])) do
    local sep = string.find(member, '\\0', 1, true)
    local agent, path = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if live(agent) then
      local v = redis.call('HGET', P .. 'held:' .. agent, path)
      if v then
        local sha = string.sub(v, 1, 64)
        count[sha] = (count[sha] or 0) + 1
      end
    end
  end
  for _, url in ipairs(redis.call('SMEMBERS', P .. 'mname:' .. ARGV[3])) do
    local v = redis.call('HGET', P .. 'mirrors', url)
    if v then
      local sha = string.match(v, '^(%x+)|')
      count[sha] = count[sha] or 0
    end
  end
  for sha in pairs(count) do shas[#shas + 1] = sha end
  table.sort(shas, function(a, b)
    if count[a] ~= count[b] then return count[a] > count[b] end
    return a < b
  end)
  for i = #shas, tonumber(ARGV[4]) + 1, -1 do shas[i] = nil end
end
local holdings, mirrors = {}, {}
for _, sha in ipairs(shas) do
  for _, member in ipairs(redis.call('SMEMBERS', P .. 'sha:' .. sha)) do
    add_live(holdings, member)
  end
  for _, url in ipairs(redis.call('SMEMBERS', P .. 'msha:' .. sha)) do
    local v = redis.call('HGET', P .. 'mirrors', url)
    if v then mirrors[#mirrors + 1] = url; mirrors[#mirrors + 1] = v end
  end
end
return {table.concat(holdings, '\\0'), mirrors}
"""

# ARGV: prefix, now, url, value ("SHA_HEX|SIZE|NAME") or '' to remove -> 1 if one was there
_PUT_MIRROR = _NOW + """
local url = ARGV[3]
local old = redis.call('HGET', P .. 'mirrors', url)
if old then
  local sha, _, name = string.match(old, '^(%x+)|(%d+)|(.*)$')
  redis.call('SREM', P .. 'msha:' .. sha, url)
  redis.call('SREM', P .. 'mname:' .. name, url)
  redis.call('HDEL', P .. 'mirrors', url)
end
local v = ARGV[4]
if v ~= '' then
  local sha, _, name = string.match(v, '^(%x+)|(%d+)|(.*)$')
  redis.call('HSET', P .. 'mirrors', url, v)
  redis.call('SADD', P .. 'msha:' .. sha, url)
  redis.call('SADD', P .. 'mname:' .. name, url)
end
if old then return 1 end
return 0
"""

# ARGV: prefix, now, set key suffix ('' for all) -> flat [url, value, ...]
_MIRRORS = _NOW + """
local urls
if ARGV[3] == '' then urls = redis.call('HKEYS', P .. 'mirrors')
else urls = redis.call('SMEMBERS', P .. ARGV[3]) end
local out = {}
for _, url in ipairs(urls) do
  local v = redis.call('HGET', P .. 'mirrors', url)
  if v then out[#out + 1] = url; out[#out + 1] = v end
end
return out
"""

# ARGV: prefix, now, limit -> {live count, mirror count, {agent, base_url, lease_left, held}...,
#                              {url, value}...} (at most limit of each)
_OVERVIEW = _NOW + """
local limit = tonumber(ARGV[3])
local live = redis.call('ZCOUNT', P .. 'leases', '(' .. NOW, '+inf')
local agents = {}
local ids = redis.call('ZREVRANGEBYSCORE', P .. 'leases', '+inf', '(' .. NOW,
                       'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #ids, 2 do
  local agent = ids[i]
  agents[#agents + 1] = agent
  agents[#agents + 1] = redis.call('HGET', P .. 'agent:' .. agent, 'base_url') or ''
  agents[#agents + 1] = tostring(tonumber(ids[i + 1]) - NOW)
  agents[#agents + 1] = redis.call('HLEN', P .. 'held:' .. agent)
end
local urls = redis.call('HKEYS', P .. 'mirrors')
table.sort(urls)
local mirrors = {}
for i = 1, math.min(#urls, limit) do
  mirrors[#mirrors + 1] = urls[i]
  mirrors[#mirrors + 1] = redis.call('HGET', P .. 'mirrors', urls[i])
end
return {live, #urls, agents, mirrors}
"""

# ARGV: prefix, now, limit, holders_shown, names_shown, sha_hex... -> for each of the first
# `limit` contents with a live holder: {sha_hex, size, holder_count, {holders...}, {names...}}
_CONTENTS = _NOW + """
local limit, holders_shown = tonumber(ARGV[3]), tonumber(ARGV[4])
local names_shown = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV do
  if #out >= limit then break end
  local sha = ARGV[i]
  local seen, holders, names, named, count, size = {}, {}, {}, {}, 0, nil
  for _, member in ipairs(redis.call('SMEMBERS', P .. 'sha:' .. sha)) do
    local sep = string.find(member, '\\0', 1, true)
    local agent, path = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if live(agent) then
      if not seen[agent] then
        seen[agent] = true
        count = count + 1
        holders[#holders + 1] = agent
      end
      local base = basename(path)
      if not named[base] then named[base] = true; names[#names + 1] = base end
      if not size then
        local v = redis.call('HGET', P .. 'held:' .. agent, path)
        if v then size = string.match(v, '^%x+|(%d+)|') end
      end
    end
  end
  if count > 0 then
    table.sort(holders); table.sort(names)
    local h, n = {}, {}
    for j = 1, math.min(#holders, holders_shown) do h[j] = holders[j] end
    for j = 1, math.min(#names, names_shown) do n[j] = names[j] end
    out[#out + 1] = {sha, size or '0', count, h, n}
  end
end
return out
"""

NAMES_SHOWN = 5  # names listed per content in an overview
CONTENTS_BATCH = 10  # contents described per script run, so Redis is never blocked long
OVERVIEW_SCAN = 4  # contents looked at per content listed, at most
PURGE_BATCH = 100  # agents forgotten per script run, so one purge never blocks Redis long


def is_redis_url(db: str) -> bool:
    """Whether a --db value names a Redis store rather than a SQLite file."""
    return db.startswith(SCHEME)


def check_url(url: str) -> str:
    """Validate redis://[:PASSWORD@]HOST:PORT[/DB]; raises ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"db: bad Redis URL {redact(url)!r}: {e}") from None
    if parts.scheme != "redis" or not parts.hostname or port is None:
        raise ConfigError(f"db: expected redis://HOST:PORT[/DB], got {redact(url)!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"db: the Redis database must be a number, got {path!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"db: unexpected ?query or #fragment in {redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "redis://(unparsable)"


def _value(h: Holding) -> str:
    ident = h.identity
    value = f"{ident.sha256.hex()}|{ident.size}|{ident.piece_size}|{ident.root.hex()}"
    return value + f"|{h.have.hex()}" if h.have else value


def _holding(path: str, value: bytes) -> Holding:
    sha, size, piece_size, root, *have = value.decode().split("|")
    return Holding(path, Identity(int(size), bytes.fromhex(sha), int(piece_size),
                                  bytes.fromhex(root)), bytes.fromhex(have[0]) if have else b"")


def _unjoin(joined: bytes) -> list[bytes]:
    """The fields of a reply joined by NUL in Lua (see _LOCATE_ALL)."""
    return joined.split(b"\0") if joined else []


def _flat_located(flat: list[bytes]) -> list[Located]:
    """[agent, base_url, path, value, ...] as Located, ordered by (agent_id, path)."""
    found = []
    holdings: dict[tuple[bytes, bytes], Holding] = {}  # holders of a content share the parse
    for i in range(0, len(flat), 4):
        path, value = flat[i + 2], flat[i + 3]
        holding = holdings.get((path, value))
        if holding is None:
            holding = holdings[path, value] = _holding(path.decode(), value)
        found.append(Located(flat[i].decode(), flat[i + 1].decode(), holding))
    found.sort(key=lambda x: (x.agent_id, x.holding.path))
    return found


def _flat_mirrors(flat: list[bytes]) -> list[MirrorRecord]:
    """[url, "SHA_HEX|SIZE|NAME", ...] as MirrorRecords, ordered by URL."""
    out = []
    for i in range(0, len(flat), 2):
        sha, size, name = flat[i + 1].decode().split("|", 2)
        out.append(MirrorRecord(flat[i].decode(), name, bytes.fromhex(sha), int(size)))
    out.sort(key=lambda m: m.url)
    return out


class RedisStore:
    """A :class:`tracker.store.Store` in Redis. Open with :meth:`open`."""

    def __init__(self, client: Any, clock: Callable[[], float], *, redis_time: bool = True,
                 prefix: str = "mfetch:") -> None:
        """Prefer :meth:`open`. `clock` is the tracker's clock, which its callers use to
        compute `expires_at`; leases are stored as lengths from Redis's own TIME unless
        `redis_time` is False (then `clock` is the time base: for tests)."""
        self._redis = client
        self._clock = clock
        self._redis_time = redis_time
        self._prefix = prefix
        reg = client.register_script
        self._register, self._renew, self._is_live = reg(_REGISTER), reg(_RENEW), reg(_IS_LIVE)
        self._remove_agent, self._purge, self._update = (
            reg(_REMOVE_AGENT), reg(_PURGE), reg(_UPDATE))
        self._locate, self._put_mirror, self._mirrors = (
            reg(_LOCATE), reg(_PUT_MIRROR), reg(_MIRRORS))
        self._overview, self._contents = reg(_OVERVIEW), reg(_CONTENTS)
        self._locate_all = reg(_LOCATE_ALL)
        self._renew_many = reg(_RENEW_MANY)

    @classmethod
    async def open(cls, url: str, clock: Callable[[], float] = time.time, *,
                   redis_time: bool = True, prefix: str = "mfetch:") -> RedisStore:
        """Connect to redis://HOST:PORT[/DB] and check it answers.

        Raises ConfigError for a malformed URL, redis.exceptions.RedisError (or OSError)
        if Redis cannot be reached.
        """
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(check_url(url), socket_timeout=10,
                                         socket_connect_timeout=5, health_check_interval=30)
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, clock, redis_time=redis_time, prefix=prefix)

    async def _call(self, script: Any, *args: Any) -> Any:
        now = "" if self._redis_time else repr(self._clock())
        return await script(keys=[], args=[self._prefix, now, *args])

    def _length(self, expires_at: float) -> str:
        return repr(max(0.0, expires_at - self._clock()))

    # --- agents ---------------------------------------------------------------------------

    async def register(self, agent_id: str, base_url: str, expires_at: float) -> None:
        await self._call(self._register, agent_id, base_url, self._length(expires_at))

    async def renew(self, agent_id: str, expires_at: float) -> bool:
        return bool(await self._call(self._renew, agent_id, self._length(expires_at)))

    async def renew_many(self, renewals: Sequence[Renewal]) -> list[bool]:
        now = self._clock()
        args: list[Any] = []
        for r in renewals:
            args += [r.agent_id, self._length(r.expires_at), repr(max(0.0, now - r.asked_at))]
        return [bool(x) for x in await self._call(self._renew_many, *args)]

    async def is_live(self, agent_id: str) -> bool:
        return bool(await self._call(self._is_live, agent_id))

    async def remove_agent(self, agent_id: str) -> None:
        await self._call(self._remove_agent, agent_id)

    async def purge(self, lapsed_before: float) -> int:
        age = repr(self._clock() - lapsed_before)  # "lapsed more than age seconds ago"
        total = 0
        while True:
            n = int(await self._call(self._purge, age, PURGE_BATCH))
            total += n
            if n < PURGE_BATCH:
                return total

    # --- holdings -------------------------------------------------------------------------

    async def update_holdings(self, agent_id: str, *, replace: bool,
                              added: Sequence[Holding], removed: Sequence[str]) -> int:
        args: list[Any] = [agent_id, "1" if replace else "0", len(removed), *removed]
        for h in added:
            args += [h.path, _value(h)]
        return int(await self._call(self._update, *args))

    async def holdings_named(self, name: str) -> list[Located]:
        return await self._located("name:" + name)

    async def holders_of(self, sha256: bytes) -> list[Located]:
        return await self._located("sha:" + sha256.hex())

    async def _located(self, key: str) -> list[Located]:
        return _flat_located(await self._call(self._locate, key))

    async def locate_name(self, name: str, max_contents: int) -> Found:
        holdings, mirrors = await self._call(self._locate_all, name, max_contents)
        return _flat_located(_unjoin(holdings)), _flat_mirrors(mirrors)

    async def locate_sha256(self, sha256: bytes) -> Found:
        holdings, mirrors = await self._call(self._locate_all, "", 1, sha256.hex())
        return _flat_located(_unjoin(holdings)), _flat_mirrors(mirrors)

    # --- mirrors --------------------------------------------------------------------------

    async def put_mirror(self, mirror: MirrorRecord) -> None:
        await self._call(self._put_mirror, mirror.url,
                         f"{mirror.sha256.hex()}|{mirror.size}|{mirror.name}")

    async def remove_mirror(self, url: str) -> bool:
        return bool(await self._call(self._put_mirror, url, ""))

    async def list_mirrors(self) -> list[MirrorRecord]:
        return await self._mirror_list("")

    async def mirrors_named(self, name: str) -> list[MirrorRecord]:
        return await self._mirror_list("mname:" + name)

    async def mirrors_of(self, sha256: bytes) -> list[MirrorRecord]:
        return await self._mirror_list("msha:" + sha256.hex())

    async def _mirror_list(self, key: str) -> list[MirrorRecord]:
        return _flat_mirrors(await self._call(self._mirrors, key))

    # --- overview (status page, metrics) ----------------------------------------------

    async def overview(self, limit: int) -> Overview:
        live, mirror_count, flat_agents, flat_mirrors = await self._call(self._overview, limit)
        agents = tuple(
            AgentInfo(flat_agents[i].decode(), flat_agents[i + 1].decode(),
                      float(flat_agents[i + 2]), int(flat_agents[i + 3]))
            for i in range(0, len(flat_agents), 4))
        mirrors = []
        for i in range(0, len(flat_mirrors), 2):
            sha, size, name = flat_mirrors[i + 1].decode().split("|", 2)
            mirrors.append(MirrorRecord(flat_mirrors[i].decode(), name, bytes.fromhex(sha),
                                        int(size)))
        # Contents are counted with SCAN (incremental: Redis is never blocked by it) over
        # the sha: sets, then the first `limit` with a live holder are described, a few
        # per script run.
        shas: list[str] = []
        start = len(self._prefix) + len("sha:")
        async for key in self._redis.scan_iter(match=self._prefix + "sha:*", count=1000):
            shas.append(key.decode()[start:])
        shas.sort()
        contents: list[ContentInfo] = []
        for i in range(0, len(shas), CONTENTS_BATCH):
            if len(contents) >= limit or i >= limit * OVERVIEW_SCAN:
                break
            for sha, size, count, holders, names in await self._call(
                    self._contents, limit - len(contents), limit, NAMES_SHOWN,
                    *shas[i:i + CONTENTS_BATCH]):
                contents.append(ContentInfo(
                    bytes.fromhex(sha.decode()), int(size), tuple(n.decode() for n in names),
                    tuple(h.decode() for h in holders), int(count)))
        return Overview(int(live), len(shas), int(mirror_count), agents, tuple(contents),
                        tuple(mirrors))

    async def close(self) -> None:
        await self._redis.aclose()
