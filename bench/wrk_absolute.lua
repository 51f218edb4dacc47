-- wrk script: absolute-URI requests (`GET http://ORIGIN/ HTTP/1.1`) sent to a proxy port.
--
-- Environment:
--   WRK_TARGET  the absolute URI to request (required), e.g. http://127.0.0.1:8080/
--   WRK_CLOSE   "1" to send `Connection: close` (a new client connection per request)
--   WRK_METHOD  the method (default GET); WRK_BODY_BYTES a body of that many bytes (default none)
--   WRK_BROWSER "1" for a browser's head: 8 field lines (Host, User-Agent, Accept, Accept-Language,
--               Accept-Encoding, Referer, Cookie, Upgrade-Insecure-Requests) whose Referer and Cookie
--               change on every request, as a browsing session's do
-- At the end it prints one line `WRK_JSON {...}` with requests, req/s, latency percentiles (µs),
-- errors and non-2xx/3xx answers, so the caller needs no parsing of wrk's human output.

local target = os.getenv("WRK_TARGET")
if target == nil or target == "" then
  error("WRK_TARGET is not set")
end
local host = string.match(target, "^%a+://([^/]+)")
local headers = { ["Host"] = host }
if os.getenv("WRK_CLOSE") == "1" then
  headers["Connection"] = "close"
end

local method = os.getenv("WRK_METHOD")
if method == nil or method == "" then
  method = "GET"
end
local body = nil
local size = tonumber(os.getenv("WRK_BODY_BYTES") or "0")
if size > 0 then
  body = string.rep("x", size)
  headers["Content-Type"] = "application/octet-stream"
end

local req = wrk.format(method, target, headers, body)
local browser = os.getenv("WRK_BROWSER") == "1"
local counter = 0

request = function()
  if not browser then
    return req
  end
  counter = counter + 1
  return wrk.format(method, target, {
    ["Host"] = host,
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ["Accept-Language"] = "en-GB,en;q=0.7,de;q=0.3",
    ["Accept-Encoding"] = "gzip, deflate",
    ["Referer"] = string.format("http://%s/catalogue/page-%d.html?ref=%d", host, counter % 977, counter),
    ["Cookie"] = string.format("session=%08x%08x; _ga=GA1.2.%d.1733600000; cart=%d; theme=dark",
                               counter * 2654435761 % 4294967296, counter, counter * 7919, counter % 13),
    ["Upgrade-Insecure-Requests"] = "1",
  }, body)
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "rps": %.1f, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "bad_status": %d, "timeouts": %d}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
