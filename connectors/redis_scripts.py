"""The Lua scripts that write live tables into Redis (layout: `waxhouse.livetables`).

Each runs atomically in Redis, so a row, its key's window index, its window's top and its
stream entry change together or not at all: a crash between two calls leaves every row
either written whole or not at all, and the replay that follows writes what is missing.

- `WRITE_FINAL`: final rows, each a compare-and-set on its version: an equal or older
  version (a replay, a partial row) is refused and changes nothing, a stream entry
  included. ARGV: namespace, ttl ms, stream length, top ('1'/'0'), rows in the stream
  ('1'/'0'), session spans ('1'/'0'), then per row: kid, wid, order, part, version, row
  JSON, score, deleted ('1'/'0'), close time (window end + lateness, ms), session end.
  Returns {written, refused}.
- `WRITE_PROVISIONAL`: open windows' and sessions' rows so far, where no final row of
  that part exists and the version is newer. ARGV: namespace, ttl ms, session spans,
  then per row: kid, wid, order, part, version, row JSON, session end. Returns
  {written, refused}.
- `WATERMARKS`: source partitions' watermarks (each only moves forward); then, per table
  with a top, every window whose close time the smallest watermark has passed gets one
  `top` stream entry, once. ARGV: marks key, n, then n (part, watermark) pairs, then per
  table: namespace, top n, stream length. Returns the number of windows closed.
"""

from __future__ import annotations

__all__ = ["WATERMARKS", "WRITE_FINAL", "WRITE_PROVISIONAL"]

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
    _FORGET_PROVISIONAL
    + """
local ns, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local top, stream_rows, spans = ARGV[4] == '1', ARGV[5] == '1', ARGV[6] == '1'
local through = tonumber(redis.call('GET', ns .. ':through') or '-1')
local written, refused = 0, 0
for i = 7, #ARGV, 10 do
  local kid, wid, order, part = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local version, row, score = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local deleted, close_at = ARGV[i + 7] == '1', tonumber(ARGV[i + 8])
  local span_end = ARGV[i + 9]
  local rkey = ns .. ':r:' .. wid .. ':' .. kid
  local held = redis.call('HGET', rkey, 'v:' .. part)
  if held and tonumber(held) >= tonumber(version) then
    refused = refused + 1
  else
    local before = 0
    if top then
      before = tonumber(redis.call('HGET', rkey, 's:' .. part) or '0')
      redis.call('HSET', rkey, 's:' .. part, score)
    end
    redis.call('HSET', rkey, 'v:' .. part, version, 'p:' .. part, row)
    redis.call('HDEL', rkey, 'q:' .. part, 'qv:' .. part)
    redis.call('PEXPIRE', rkey, ttl)
    local kkey = ns .. ':k:' .. kid
    if deleted then
      redis.call('ZREM', kkey, wid)
    else
      redis.call('ZADD', kkey, order, wid)
      redis.call('ZREMRANGEBYRANK', kkey, 0, -9)
    end
    if spans then forget_provisional(ns, kkey, kid, part, wid, order, span_end) end
    redis.call('PEXPIRE', kkey, ttl)
    if top then
      local tkey = ns .. ':t:' .. wid
      redis.call('ZINCRBY', tkey, tonumber(score) - before, kid)
      redis.call('PEXPIRE', tkey, ttl)
      if close_at >= through then
        redis.call('ZADD', ns .. ':pending', 'NX', close_at, wid)
      end
    end
    if stream_rows and not deleted then
      redis.call('XADD', ns .. ':s', 'MAXLEN', '~', maxlen, '*',
        'k', 'row', 'w', wid, 'i', kid, 'p', part, 'r', row)
    end
    written = written + 1
  end
end
return {written, refused}
"""
)

WRITE_PROVISIONAL = (
    _FORGET_PROVISIONAL
    + """
local ns, ttl, spans = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local written, refused = 0, 0
for i = 4, #ARGV, 7 do
  local kid, wid, order, part = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local version, row, span_end = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local rkey = ns .. ':r:' .. wid .. ':' .. kid
  local final, held = unpack(redis.call('HMGET', rkey, 'v:' .. part, 'qv:' .. part))
  if final or (held and tonumber(held) >= tonumber(version)) then
    refused = refused + 1
  else
    redis.call('HSET', rkey, 'qv:' .. part, version, 'q:' .. part, row)
    redis.call('PEXPIRE', rkey, ttl)
    local kkey = ns .. ':k:' .. kid
    redis.call('ZADD', kkey, order, wid)
    redis.call('ZREMRANGEBYRANK', kkey, 0, -9)
    if spans then forget_provisional(ns, kkey, kid, part, wid, order, span_end) end
    redis.call('PEXPIRE', kkey, ttl)
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
