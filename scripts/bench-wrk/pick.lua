-- Every request picks one connection at random: `{id}` in the path template is replaced
-- by a random line of the ids file. The baselines (`/healthz?c={id}`) pay the same script
-- cost as the token path. Arguments: IDS_FILE PATH_TEMPLATE [API_KEY]
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require "report"

local ids, template = {}, nil

function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  template = args[2]
  if args[3] then wrk.headers["Authorization"] = "Bearer " .. args[3] end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  local path = template:gsub("{id}", ids[math.random(#ids)])
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  report(summary, latency)
end
