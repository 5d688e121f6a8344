-- POST /connections with a realistic body (a 400-character refresh token), for as long
-- as wrk runs. Arguments: BODY_FILE API_KEY
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require "report"

function init(args)
  local file = io.open(args[1])
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.path = "/connections"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end

function done(summary, latency, requests)
  report(summary, latency)
end
