-- POST a fixed body; optionally pace requests to a fixed rate per thread; print results as JSON.
-- usage: wrk ... -s chat.lua -- BODY_FILE [RATE_PER_THREAD_RPS]
-- Pacing: each thread keeps a schedule of send slots 1/rate apart; delay() hands the next slot to
-- whichever of the thread's connections asks, so the thread offers `rate` requests/s as long as it
-- has an idle connection. wrk still times each request from its actual send (no correction for
-- coordinated omission).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
   local rate = tonumber(args[2] or "0")
   if rate > 0 then
      local interval = 1000 / rate
      local next_slot = nil
      -- Defined only when pacing: wrk checks for a global delay() after init().
      function delay()
         local now = now_ms()
         if next_slot == nil then next_slot = now end
         local wait = next_slot - now
         next_slot = next_slot + interval
         if wait < 0 then
            -- Behind schedule: send now, and do not let the schedule run ahead into a burst.
            if wait < -interval then next_slot = now + interval end
            return 0
         end
         return math.floor(wait + 0.5)
      end
   end
end

function done(summary, latency, requests)
   local p = {}
   for _, q in ipairs({ 50, 90, 99, 99.9 }) do
      p[tostring(q)] = latency:percentile(q)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev,
      p["50"], p["90"], p["99"], p["99.9"]))
end
