"""The Lua scripts that write live tables into Redis (layout: `waxhouse.livetables`).

Each runs atomically in Redis, so a row, its key's window index, its window's top and its
stream entry change together or not at all: a crash between two calls leaves every row
either written whole or not at all, and the replay that follows writes what is missing.

- `WRITE_FINAL`: final rows, each a compare-and-set on its version: an equal or older
  version (a replay, a partial row) is refused and changes nothing, a stream entry
  included. ARGV: namespace, ttl ms, stream length, top ('1'/'0'), rows in the stream
  ('1'/'0'), session spans ('1'/'0'), then the rows as one JSON array (one argument is
  cheap to send), each `[kid, wid, order, part, version, row JSON, score, deleted (0/1),
  close time (window end + lateness, ms), session end]`. Returns {written, refused}.
- `WRITE_PROVISIONAL`: open windows' and sessions' rows so far, where no final row of
  that part exists and the version is newer. ARGV: namespace, ttl ms, session spans
  ('1'/'0'), then the rows as one JSON array, each `[kid, wid, order, part, version, row
  JSON, session end]`. Returns {written, refused}.
- `WATERMARKS`: source partitions' watermarks (each only moves forward); then, per table
  with a top, every window whose close time the smallest watermark has passed gets one
  `top` stream entry, once. ARGV: marks key, n, then n (part, watermark) pairs, then per
  table: namespace, top n, stream length. Returns the number of windows closed.
"""

from __future__ import annotations

__all__ = ["WATERMARKS", "WRITE_FINAL", "WRITE_PROVISIONAL"]

# A key's window index gained a window: it lives as long as its newest row, and keeps its
# newest windows only (trimmed to 8 one time in 8, so at most 16: each trim costs a call).
_INDEX_ADDED = """
local function index_added(kkey, ttl)
  redis.call('PEXPIRE', kkey, ttl)
  if math.random(8) == 1 then redis.call('ZREMRANGEBYRANK', kkey, 0, -9) end
end
"""

# Sessions: a provisional row of the key starting within the session just written
# (from its start to `span_end`) is an earlier state of that session, whose start has
# moved or which merged with another: it goes, unless a final row is there too.
_FORGET_PROVISIONAL = """
local function forget_provisional(ns, kkey, kid, part, wid, order, span_end)
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', kkey, order, span_end)) do
    if other ~= wid then
      local okey = ns .. ':r:' .. other .. ':' .. kid
      if redis.call('HEXISTS', okey, 'v:' .. part) == 0 then
        redis.call('DEL', okey)
        redis.call('ZREM', kkey, other)
      end
    end
  end
end
"""

WRITE_FINAL = (
    _INDEX_ADDED
    + _FORGET_PROVISIONAL
    + """
local ns, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local top, stream_rows, spans = ARGV[4] == '1', ARGV[5] == '1', ARGV[6] == '1'
local through = tonumber(redis.call('GET', ns .. ':through') or '-1')
local written, refused = 0, 0
local windows = {}
for _, r in ipairs(cjson.decode(ARGV[7])) do
  local kid, wid, order, part, version, row = r[1], r[2], r[3], r[4], r[5], r[6]
  local rkey = ns .. ':r:' .. wid .. ':' .. kid
  local vf, sf, qf = 'v:' .. part, 's:' .. part, 'qv:' .. part
  local held, before, provisional = unpack(redis.call('HMGET', rkey, vf, sf, qf))
  if held and tonumber(held) >= version then
    refused = refused + 1
  else
    if top then
      redis.call('HSET', rkey, vf, version, 'p:' .. part, row, sf, r[7])
    else
      redis.call('HSET', rkey, vf, version, 'p:' .. part, row)
    end
    if provisional then redis.call('HDEL', rkey, 'q:' .. part, qf) end
    redis.call('PEXPIRE', rkey, ttl)
    local kkey = ns .. ':k:' .. kid
    if r[8] == 1 then
      redis.call('ZREM', kkey, wid)
    elseif redis.call('ZADD', kkey, order, wid) == 1 then
      index_added(kkey, ttl)
    end
    if spans then forget_provisional(ns, kkey, kid, part, wid, order, r[10]) end
    if top then
      redis.call('ZINCRBY', ns .. ':t:' .. wid, r[7] - (tonumber(before) or 0), kid)
      windows[wid] = r[9]
    end
    if stream_rows and r[8] == 0 then
      redis.call('XADD', ns .. ':s', 'MAXLEN', '~', maxlen, '*',
        'k', 'row', 'w', wid, 'i', kid, 'p', part, 'r', row)
    end
    written = written + 1
  end
end
for wid, close_at in pairs(windows) do
  redis.call('PEXPIRE', ns .. ':t:' .. wid, ttl)
  if close_at >= through then
    redis.call('ZADD', ns .. ':pending', 'NX', close_at, wid)
  end
end
return {written, refused}
"""
)

WRITE_PROVISIONAL = (
    _INDEX_ADDED
    + _FORGET_PROVISIONAL
    + """
local ns, ttl, spans = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local written, refused = 0, 0
for _, r in ipairs(cjson.decode(ARGV[4])) do
  local kid, wid, order, part, version, row = r[1], r[2], r[3], r[4], r[5], r[6]
  local rkey = ns .. ':r:' .. wid .. ':' .. kid
  local final, held = unpack(redis.call('HMGET', rkey, 'v:' .. part, 'qv:' .. part))
  if final or (held and tonumber(held) >= version) then
    refused = refused + 1
  else
    redis.call('HSET', rkey, 'qv:' .. part, version, 'q:' .. part, row)
    redis.call('PEXPIRE', rkey, ttl)
    local kkey = ns .. ':k:' .. kid
    if redis.call('ZADD', kkey, order, wid) == 1 then
      index_added(kkey, ttl)
    end
    if spans then forget_provisional(ns, kkey, kid, part, wid, order, r[7]) end
    written = written + 1
  end
end
return {written, refused}
"""
)

WATERMARKS = """
local marks, n = ARGV[1], tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do
  local held = redis.call('HGET', marks, ARGV[i])
  if not held or tonumber(held) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', marks, ARGV[i], ARGV[i + 1])
  end
end
local low = nil
for _, mark in ipairs(redis.call('HVALS', marks)) do
  local m = tonumber(mark)
  if low == nil or m < low then low = m end
end
if low == nil then return 0 end
local closed = 0
for i = 3 + 2 * n, #ARGV, 3 do
  local ns, topn, maxlen = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ready = redis.call('ZRANGEBYSCORE', ns .. ':pending', '-inf', '(' .. low)
  for _, wid in ipairs(ready) do
    local flat = redis.call('ZREVRANGE', ns .. ':t:' .. wid, 0, topn - 1, 'WITHSCORES')
    local pairs_ = {}
    for j = 1, #flat, 2 do
      pairs_[#pairs_ + 1] = {flat[j], tonumber(flat[j + 1])}
    end
    local top = '[]'
    if #pairs_ > 0 then top = cjson.encode(pairs_) end
    redis.call('XADD', ns .. ':s', 'MAXLEN', '~', maxlen, '*', 'k', 'top', 'w', wid, 't', top)
    redis.call('SET', ns .. ':closed', wid)
    redis.call('ZREM', ns .. ':pending', wid)
    closed = closed + 1
  end
  local through = tonumber(redis.call('GET', ns .. ':through') or '-1')
  if low > through then redis.call('SET', ns .. ':through', low) end
end
return closed
"""
