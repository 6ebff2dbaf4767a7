-- wrk script: POSTs the JSON body read from the file named by $BODY_FILE, and at the
-- end prints one machine-readable line with the figures serving_vs_fastapi.sh reads.
local path = os.getenv("BODY_FILE")
if not path then
  error("wrk_post.lua: set BODY_FILE to the file holding the request body")
end
local f = assert(io.open(path, "rb"), "wrk_post.lua: cannot open BODY_FILE " .. path)
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors_connect=%d errors_read=%d " ..
    "errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
