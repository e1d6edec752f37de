-- @noindex
-- musicgen_stream.lua: a generate/continue/melody request whose audio lands on the timeline as it is
-- made (`stream 1`): each /musicgen/chunk becomes an item, end to end from the insertion point; at
-- /musicgen/done the final file replaces them in one undo step; on a failure, a cancel
-- (musicgen_cancel.lua) or a bridge that stops answering, the chunk items are removed.
--
-- Needs LuaSocket (the `musicgen-bridge send` fallback cannot stream); without it, or with ExtState
-- musicgen_bridge/stream set to "0", the request runs as before and the result lands when done.
local mg = require("musicgen_lib")
local T = require("musicgen_timeline")

local S = {}

S.PING_SECONDS = 2  -- how often the bridge is asked whether it is still there
S.SILENT_SECONDS = 10  -- no word from the bridge for this long: it is gone

-- The ids of the streams running in this REAPER (musicgen_cancel.lua cancels them).
local function running(update)
  local ids = {}
  for id in reaper.GetExtState(T.SECTION, "streaming"):gmatch("[^\t]+") do ids[#ids + 1] = id end
  if update then
    ids = update(ids)
    reaper.SetExtState(T.SECTION, "streaming", table.concat(ids, "\t"), false)
  end
  return ids
end
S.running = running

local function add_running(id) running(function(ids) ids[#ids + 1] = id return ids end) end
local function drop_running(id)
  running(function(ids)
    local kept = {}
    for _, other in ipairs(ids) do if other ~= id then kept[#kept + 1] = other end end
    return kept
  end)
end

function S.available() return T.streaming_wanted() and mg.socket() ~= nil end

-- Send `address args` (args[1] the id) with `stream 1`; the result streams onto `get_track()` from
-- `position`. on_done(paths) after the final item is placed; failures show in a message box.
function S.request(address, args, position, get_track, on_done)
  local socket = mg.socket()
  local id = args[1]
  local stream = T.new_stream(position, get_track)
  local request = { table.unpack(args) }
  request[#request + 1] = "stream"; request[#request + 1] = 1
  mg.remember(id, nil)
  add_running(id)
  local udp, port = mg.open_udp(socket)
  local send = mg.sender(udp)
  local started = mg.now()
  local heard, last_heard, last_ping = false, started, started
  local silent = math.min(S.SILENT_SECONDS, mg.timeout)

  local function finish()
    drop_running(id)
    send("/musicgen/unnotify", { port })
    udp:close()
  end
  local function failed(code, message)
    stream.discard()
    finish()
    mg.fail_box(code, message)
  end

  send("/musicgen/notify", { port })
  send(address, request)
  local function poll()
    while true do
      local data = udp:receive()
      if not data then break end
      local addr, reply = mg.decode(data)
      if addr then heard, last_heard = true, mg.now() end
      if addr == "/musicgen/fail" and reply[1] == "/musicgen/notify" then
        failed(reply[3], reply[4])  -- refused before the request was looked at (a token is needed?)
        return
      elseif addr == "/musicgen/chunk" and reply[1] == id then
        stream.chunk(reply[2], reply[3], reply[4])
      elseif addr == "/musicgen/done" and reply[1] == address and reply[2] == id then
        stream.finish(reply[3])
        finish()
        local paths = { reply[3] }
        for i = 5, #reply do paths[#paths + 1] = reply[i] end
        mg.remember(nil, paths)
        if on_done then on_done(paths) end
        return
      elseif addr == "/musicgen/fail" and reply[1] == address and (reply[2] == id or reply[2] == "") then
        local what = #stream.items > 0 and " (the streamed items were removed)" or ""
        failed(reply[3], tostring(reply[4]) .. what)
        return
      end
    end
    local now = mg.now()
    if now - last_heard > silent then
      if heard then
        failed("no_bridge", "musicgen-bridge at " .. mg.host .. ":" .. mg.port .. " stopped answering for " ..
          silent .. " s (did it quit?): the streamed items were removed. Start it again and run the action again.")
      else
        failed("timeout", "no answer from musicgen-bridge at " .. mg.host .. ":" .. mg.port .. " within " .. silent ..
          " s: is `musicgen-bridge serve` running? (If it was started with --token, set the same token as " ..
          "ExtState musicgen_bridge/token or MUSICGEN_BRIDGE_TOKEN.)")
      end
      return
    end
    if now - last_ping >= S.PING_SECONDS then
      send("/musicgen/ping", {})
      last_ping = now
    end
    reaper.defer(poll)
  end
  poll()
end

-- The request for an action: streamed when it can be, else as before (inserted when done).
function S.run(address, args, position, get_track, on_done)
  if S.available() then
    S.request(address, args, position, get_track, on_done)
    return
  end
  mg.request(address, args, function(paths)
    mg.insert_at(paths[1], position, get_track())
    if on_done then on_done(paths) end
  end, mg.fail_box)
end

return S
