-- @noindex
-- musicgen_lib.lua: what the MusicGen ReaScripts share to talk to a running `musicgen-bridge serve`.
--
-- OSC 1.0 is encoded here in plain Lua (string.pack, big-endian). Messages go over UDP through
-- LuaSocket when REAPER's Lua can load it; without it, each request runs the bridge's own client,
-- `musicgen-bridge send ... --wait`, in the background. Either way the scripts wait with
-- reaper.defer, so REAPER stays responsive while the model works.
--
-- Settings, each from REAPER's ExtState section "musicgen_bridge" (key in brackets), else the
-- environment variable, else the default:
--   host [host] MUSICGEN_BRIDGE_HOST 127.0.0.1     port [port] MUSICGEN_BRIDGE_PORT 9000
--   timeout [timeout] MUSICGEN_BRIDGE_TIMEOUT 600   token [token] MUSICGEN_BRIDGE_TOKEN (none)
--   command [command] MUSICGEN_BRIDGE_COMMAND musicgen-bridge
--   transport [transport] MUSICGEN_BRIDGE_TRANSPORT auto ("command": never use LuaSocket)
--   reply port [reply_port] MUSICGEN_BRIDGE_REPLY_PORT 0 (any free port; musicgen_settings.lua sets them all)
local M = {}

M.SECTION = "musicgen_bridge"

local function setting(key, env, default)
  local value = reaper and reaper.GetExtState and reaper.GetExtState(M.SECTION, key) or ""
  if value == "" then value = os.getenv(env) or "" end
  if value == "" then return default end
  return value
end

M.host = setting("host", "MUSICGEN_BRIDGE_HOST", "127.0.0.1")
M.port = math.tointeger(tonumber(setting("port", "MUSICGEN_BRIDGE_PORT", "9000")) or 9000)
M.timeout = tonumber(setting("timeout", "MUSICGEN_BRIDGE_TIMEOUT", "600")) or 600
M.token = setting("token", "MUSICGEN_BRIDGE_TOKEN", nil)
M.command = setting("command", "MUSICGEN_BRIDGE_COMMAND", "musicgen-bridge")
M.no_socket = setting("transport", "MUSICGEN_BRIDGE_TRANSPORT", "auto") == "command"
M.reply_port = math.tointeger(tonumber(setting("reply_port", "MUSICGEN_BRIDGE_REPLY_PORT", "0"))) or 0
M.windows = package.config:sub(1, 1) == "\\"

-- OSC 1.0 ------------------------------------------------------------------------------------------
local function pad(s)
  s = s .. "\0"
  return s .. string.rep("\0", (4 - #s % 4) % 4)
end

-- One OSC message. args is a list: Lua integers (math.type "integer") go as int32 "i", other
-- numbers as float32 "f", strings as "s", booleans as "T"/"F".
function M.encode(address, args)
  local tags, body = { "," }, {}
  for _, v in ipairs(args or {}) do
    if type(v) == "string" then
      tags[#tags + 1] = "s"; body[#body + 1] = pad(v)
    elseif math.type(v) == "integer" then
      tags[#tags + 1] = "i"; body[#body + 1] = string.pack(">i4", v)
    elseif type(v) == "number" then
      tags[#tags + 1] = "f"; body[#body + 1] = string.pack(">f", v)
    elseif type(v) == "boolean" then
      tags[#tags + 1] = v and "T" or "F"
    else
      error("musicgen: cannot send a " .. type(v) .. " over OSC")
    end
  end
  return pad(address) .. pad(table.concat(tags)) .. table.concat(body)
end

local function read_string(data, pos)
  local zero = data:find("\0", pos, true)
  if not zero then return nil, pos end
  return data:sub(pos, zero - 1), pos + ((zero - pos) // 4 + 1) * 4
end

-- address, args of one OSC message; nil for anything else (a bundle, a truncated packet).
function M.decode(data)
  local address, pos = read_string(data, 1)
  if not address or address:sub(1, 1) ~= "/" then return nil end
  local tags
  tags, pos = read_string(data, pos)
  if not tags or tags:sub(1, 1) ~= "," then return address, {} end
  local args = {}
  for i = 2, #tags do
    local t = tags:sub(i, i)
    local ok, value, after = true, nil, pos
    if t == "s" or t == "S" then value, after = read_string(data, pos)
    elseif t == "i" then ok, value, after = pcall(string.unpack, ">i4", data, pos)
    elseif t == "f" then ok, value, after = pcall(string.unpack, ">f", data, pos)
    elseif t == "h" then ok, value, after = pcall(string.unpack, ">i8", data, pos)
    elseif t == "d" then ok, value, after = pcall(string.unpack, ">d", data, pos)
    elseif t == "b" then
      local n
      ok, n, after = pcall(string.unpack, ">i4", data, pos)
      if ok then value = data:sub(after, after + n - 1); after = after + ((n + 3) // 4) * 4 end
    elseif t == "T" then value = true
    elseif t == "F" then value = false
    elseif t == "N" or t == "I" then value = false
    else return nil end
    if not ok or value == nil then return nil end
    args[#args + 1], pos = value, after
  end
  return address, args
end

-- The project ---------------------------------------------------------------------------------------

-- Tempo and bar at a time (default: the edit cursor) as the bridge counts them: bpm in quarter
-- notes (as REAPER shows it) and whole beats per bar; 6/8 is 3 beats of a quarter, 7/8 is 7
-- eighths at twice the bpm. Returns bpm, beats_per_bar, numerator, denominator.
function M.project_tempo(time)
  time = time or reaper.GetCursorPosition()
  local num, denom, bpm = reaper.TimeMap_GetTimeSigAtTime(0, time)
  if not bpm or bpm <= 0 then bpm = reaper.Master_GetTempo() end
  num, denom = math.floor(num or 4), math.floor(denom or 4)
  if num < 1 then num = 4 end
  if denom < 1 then denom = 4 end
  local quarters = num * 4 / denom
  if quarters == math.floor(quarters) then return bpm, math.tointeger(quarters), num, denom end
  return bpm * denom / 4, num, num, denom
end

-- The trailing options that make a result exactly `bars` bars long at the project tempo.
function M.bar_options(bars, time)
  local bpm, beats = M.project_tempo(time)
  return { "bpm", bpm + 0.0, "bars", math.tointeger(bars), "beats_per_bar", math.tointeger(beats) }
end

-- A prompt and a whole number of bars from a dialog; nil when cancelled (a message says why when wrong).
function M.ask(title, prompt_caption, default_prompt, default_bars, prompt_required)
  local ok, csv = reaper.GetUserInputs(title, 2, prompt_caption .. ",Bars,extrawidth=220",
    default_prompt .. "," .. tostring(default_bars))
  if not ok then return nil end
  local prompt, bars = csv:match("^(.*),%s*(%d+)%s*$")  -- the prompt may hold commas: bars come last
  bars = tonumber(bars)
  if not bars or bars < 1 then
    M.fail_box("bad_args", "give a whole number of bars (1 or more) after the prompt")
    return nil
  end
  if prompt_required and prompt:match("^%s*$") then
    M.fail_box("bad_args", "give a prompt")
    return nil
  end
  return prompt, math.tointeger(bars)
end

function M.new_id(kind)
  return string.format("reaper-%s-%d-%d", kind, os.time(), math.random(100000, 999999))
end

function M.now()
  if reaper.time_precise then return reaper.time_precise() end
  return os.time()
end
local now = M.now

-- What the bridge made last (for musicgen_import_last.lua), kept across REAPER sessions.
function M.remember(id, paths)
  if id then reaper.SetExtState(M.SECTION, "last_job", id, true) end
  if paths then reaper.SetExtState(M.SECTION, "last_paths", table.concat(paths, "\t"), true) end
end

function M.remembered()
  local paths = {}
  for p in reaper.GetExtState(M.SECTION, "last_paths"):gmatch("[^\t]+") do paths[#paths + 1] = p end
  return reaper.GetExtState(M.SECTION, "last_job"), paths
end

-- Transport: LuaSocket ------------------------------------------------------------------------------
-- Where ReaPack's "Mavriq Lua Sockets" package puts LuaSocket built for REAPER's own Lua.
local function add_reaper_luasocket_paths()
  if M.paths_added or not (reaper and reaper.GetResourcePath) then return end
  M.paths_added = true
  local dir = reaper.GetResourcePath() .. "/Scripts/Mavriq ReaScript Repository/Various/Mavriq-Lua-Sockets/"
  package.cpath = package.cpath .. ";" .. dir .. "?.dll;" .. dir .. "?.so"
  package.path = package.path .. ";" .. dir .. "?.lua"
end

function M.socket()
  if M.no_socket then return nil end
  add_reaper_luasocket_paths()
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and socket.udp then return socket end
  return nil
end

local function with_token(args)
  if not M.token then return args end
  local out = { table.unpack(args) }
  out[#out + 1] = "token"; out[#out + 1] = M.token
  return out
end

-- send(address, args) on `udp` to the bridge, the token added when there is one.
function M.sender(udp)
  return function(address, args) udp:sendto(M.encode(address, with_token(args)), M.host, M.port) end
end

-- A non-blocking UDP socket for replies: at the reply_port setting (a port a firewall lets through),
-- or any free port when it is 0 or taken (another action waits on it). Returns the socket and its port.
function M.open_udp(socket)
  local udp = socket.udp()
  local loopback = M.host == "127.0.0.1" or M.host == "localhost"
  local address = loopback and "127.0.0.1" or "*"
  if M.reply_port == 0 or not udp:setsockname(address, M.reply_port) then
    udp:close()
    udp = socket.udp()
    udp:setsockname(address, 0)
  end
  udp:settimeout(0)
  local _, port = udp:getsockname()
  return udp, math.tointeger(tonumber(port))
end

-- Send `address args` and feed every reply to handle(address, args) until it returns true; after each
-- batch of replies handle(nil) may also end the wait by returning true. on_timeout() after `timeout`
-- (default M.timeout) seconds. Replies come to a private port registered with /musicgen/notify.
-- Returns false when LuaSocket is missing (the caller falls back to the command).
function M.exchange(address, args, handle, on_timeout, timeout)
  local socket = M.socket()
  if not socket then return false end
  local udp, port = M.open_udp(socket)
  local function finish()
    udp:sendto(M.encode("/musicgen/unnotify", with_token({ port })), M.host, M.port)
    udp:close()
  end
  udp:sendto(M.encode("/musicgen/notify", with_token({ port })), M.host, M.port)
  udp:sendto(M.encode(address, with_token(args)), M.host, M.port)
  local deadline = now() + (timeout or M.timeout)
  local function poll()
    while true do
      local data = udp:receive()
      if not data then break end
      local addr, reply = M.decode(data)
      if addr and addr == "/musicgen/fail" and reply[1] == "/musicgen/notify" then
        finish()  -- refused before our request was looked at (a token is needed?)
        handle("/musicgen/fail", { address, "", reply[3], reply[4] })
        return
      end
      if addr and handle(addr, reply) then finish() return end
    end
    if handle(nil) then finish() return end
    if now() > deadline then finish() on_timeout() return end
    reaper.defer(poll)
  end
  poll()
  return true
end

-- Transport: the command line -----------------------------------------------------------------------
local function quote(s)
  s = tostring(s)
  if M.windows then return '"' .. s:gsub('"', '\\"') .. '"' end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function M.command_line(address, args, wait, timeout)
  local command = M.command:find(" ", 1, true) and quote(M.command) or M.command
  local parts = { command, "send", "--host", quote(M.host), "--port", tostring(M.port), quote(address) }
  if M.token then  -- in the environment, not on the command line where other users could read it
    table.insert(parts, 1, M.windows and ('set "MUSICGEN_BRIDGE_TOKEN=' .. M.token .. '" &&')
      or ("MUSICGEN_BRIDGE_TOKEN=" .. quote(M.token)))
  end
  for _, v in ipairs(args) do
    if math.type(v) == "integer" then parts[#parts + 1] = "i:" .. v
    elseif type(v) == "number" then parts[#parts + 1] = "f:" .. string.format("%.17g", v)
    else parts[#parts + 1] = quote("s:" .. tostring(v)) end
  end
  if wait then parts[#parts + 1] = "--wait --quiet --timeout " .. tostring(timeout or M.timeout) end
  return table.concat(parts, " ")
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Run the command; on_exit(ok, output) when it ends. On Linux and macOS it runs in the background and
-- is polled with reaper.defer; on Windows io.popen waits (install LuaSocket to keep REAPER responsive).
function M.run_command(address, args, wait, on_exit, timeout)
  local line = M.command_line(address, args, wait, timeout)
  if M.windows then
    local pipe = io.popen(line .. " 2>&1")
    local out = pipe:read("a")
    local ok = pipe:close()
    on_exit(ok == true, out)
    return
  end
  local base = os.tmpname()
  local out, rc = base .. ".out", base .. ".rc"
  os.execute("( " .. line .. " > " .. quote(out) .. " 2>&1; echo $? > " .. quote(rc .. ".tmp") .. "; mv " ..
    quote(rc .. ".tmp") .. " " .. quote(rc) .. " ) </dev/null >/dev/null 2>&1 &")
  local function poll()
    local code = read_all(rc)
    if not code then reaper.defer(poll) return end
    local output = read_all(out) or ""
    os.remove(out); os.remove(rc); os.remove(base)
    on_exit(tonumber(code) == 0, output)
  end
  poll()
end

local function lines(text)
  local out = {}
  for line in text:gmatch("[^\r\n]+") do out[#out + 1] = line end
  return out
end

-- code, message from the command's output ("musicgen-bridge: <code>: <message>" on stderr).
function M.command_failure(output)
  local code, message = output:match("musicgen%-bridge: ([%w_]+): ([^\n]*)")
  if code then return code, message end
  if output:match("not found") or output == "" then
    return "no_command", "could not run `" .. M.command .. "`: install LuaSocket for REAPER, or put " ..
      "musicgen-bridge on REAPER's PATH (or set its full path as the ExtState musicgen_bridge/command)"
  end
  return "failed", output
end

-- Jobs ----------------------------------------------------------------------------------------------

-- Send a job request (args[1] is its id) and call on_done(paths, seconds) or on_fail(code, message)
-- when it ends; on_progress(fraction) as it goes (LuaSocket only).
function M.request(address, args, on_done, on_fail, on_progress)
  local id = args[1]
  M.remember(id, nil)
  local function done(paths, seconds)
    M.remember(nil, paths)
    on_done(paths, seconds)
  end
  local sent = M.exchange(address, args, function(addr, reply)
    if addr == "/musicgen/done" and reply[1] == address and reply[2] == id then
      local paths = { reply[3] }
      for i = 5, #reply do paths[#paths + 1] = reply[i] end
      done(paths, reply[4])
      return true
    elseif addr == "/musicgen/fail" and reply[1] == address and (reply[2] == id or reply[2] == "") then
      on_fail(reply[3], reply[4])
      return true
    elseif addr == "/musicgen/progress" and reply[1] == id and on_progress then
      on_progress(reply[2])
    end
    return false
  end, function()
    on_fail("timeout", "no answer from musicgen-bridge at " .. M.host .. ":" .. M.port ..
      " within " .. M.timeout .. " s: is `musicgen-bridge serve` running? (If it was started with --token, " ..
      "set the same token as ExtState musicgen_bridge/token or MUSICGEN_BRIDGE_TOKEN.)")
  end)
  if sent then return end
  M.run_command(address, args, true, function(ok, output)
    local paths = lines(output)
    if ok and #paths > 0 then done(paths) return end
    on_fail(M.command_failure(output))
  end)
end

-- How job `id` is doing: on_state(state, address, rest) with rest the paths (done) or code, message.
function M.job_state(id, on_state, on_fail)
  local sent = M.exchange("/musicgen/job", { id }, function(addr, reply)
    if addr == "/musicgen/job" and reply[1] == id then
      on_state(reply[2], reply[3], { table.unpack(reply, 4) })
      return true
    elseif addr == "/musicgen/fail" and reply[1] == "/musicgen/job" then
      on_fail(reply[3], reply[4])
      return true
    end
    return false
  end, function() on_fail("timeout", "no answer from musicgen-bridge: is it running?") end, math.min(10, M.timeout))
  if sent then return end
  M.run_command("/musicgen/job", { id }, true, function(ok, output)
    local line = lines(output)[1] or ""
    -- "/musicgen/job <id> <state> <address> <path> ..." (paths may hold spaces: one path is the usual case)
    local state, address, rest = line:match("^/musicgen/job " .. id:gsub("%p", "%%%0") .. " (%S+) (%S+) ?(.*)$")
    if not ok or not state then on_fail(M.command_failure(output)) return end
    if state == "done" then on_state(state, address, { rest }) return end
    local code, message = rest:match("^(%S+) (.*)$")
    on_state(state, address, { code or rest, message or "" })
  end, math.min(10, M.timeout))
end

-- Poll job `id` about once a second until it ends: on_done(paths) or on_fail(code, message).
function M.wait_job(id, on_done, on_fail, timeout)
  local deadline = now() + (timeout or M.timeout)
  local function ask()
    M.job_state(id, function(state, _address, rest)
      if state == "done" then on_done(rest) return end
      if state ~= "queued" and state ~= "running" then on_fail(rest[1], rest[2]) return end
      if now() > deadline then on_fail("timeout", "job " .. id .. " is still " .. state) return end
      local wake = now() + 1
      local function sleep() if now() < wake then reaper.defer(sleep) else ask() end end
      sleep()
    end, on_fail)
  end
  ask()
end

function M.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- Fire and forget (no reply expected, or none waited for).
function M.send(address, args)
  local socket = M.socket()
  if socket then
    local udp = socket.udp()
    udp:sendto(M.encode(address, with_token(args)), M.host, M.port)
    udp:close()
    return
  end
  M.run_command(address, args, false, function() end)
end

-- REAPER --------------------------------------------------------------------------------------------

-- Put a file on `track` (default: the first selected track, else a new one at the end) at `position`
-- seconds, as REAPER does when a file is dropped there; the edit cursor is left where it was.
function M.insert_at(path, position, track)
  reaper.Undo_BeginBlock()
  local cursor = reaper.GetCursorPosition()
  if track and reaper.ValidatePtr2 and not reaper.ValidatePtr2(0, track, "MediaTrack*") then track = nil end
  track = track or reaper.GetSelectedTrack(0, 0)
  if not track then
    local index = reaper.CountTracks(0)
    reaper.InsertTrackAtIndex(index, true)
    track = reaper.GetTrack(0, index)
  end
  reaper.SetOnlyTrackSelected(track)
  reaper.SetEditCurPos(position, false, false)
  reaper.InsertMedia(path, 0)
  reaper.SetEditCurPos(cursor, false, false)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("MusicGen: insert " .. path:match("[^/\\]*$"), -1)
end

-- A track by its GUID (tracks cannot be kept in ExtState, their GUIDs can); nil when it is gone.
function M.track_by_guid(guid)
  for i = 0, reaper.CountTracks(0) - 1 do
    local track = reaper.GetTrack(0, i)
    if reaper.GetTrackGUID(track) == guid then return track end
  end
  return nil
end

-- A new track right below `track` (for results that should line up with an item without covering it).
function M.track_below(track)
  local index = math.tointeger(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER"))  -- 1-based
  reaper.InsertTrackAtIndex(index, true)
  return reaper.GetTrack(0, index)
end

function M.fail_box(code, message)
  reaper.ShowMessageBox("musicgen-bridge: " .. tostring(code) .. "\n\n" .. tostring(message), "MusicGen", 0)
end

-- The selected audio item's file, position and track, or nil after a message saying what to select.
-- With whole_source, the item must play its file to the end at normal speed (what a continuation needs).
function M.selected_audio(what, whole_source)
  local item = reaper.GetSelectedMediaItem(0, 0)
  if not item then M.fail_box("bad_args", "select the audio item " .. what .. " first") return nil end
  local take = reaper.GetActiveTake(item)
  if not take or reaper.TakeIsMIDI(take) then
    M.fail_box("bad_args", "the selected item is not audio: " .. what .. " needs an audio item")
    return nil
  end
  local source = reaper.GetMediaItemTake_Source(take)
  local path = reaper.GetMediaSourceFileName(source, "")
  if not path or path == "" then
    M.fail_box("bad_args", "the selected item has no audio file of its own: glue it first (Item > Glue items)")
    return nil
  end
  local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
  if whole_source then
    local offset = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
    local rate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
    local source_length = reaper.GetMediaSourceLength(source)
    if math.abs(rate - 1) > 1e-6 or math.abs(offset + length * rate - source_length) > 0.01 then
      M.fail_box("bad_args", "the selected item does not play its file to the end at normal speed, so the " ..
        "continuation would not follow what you hear: glue it first (Item > Glue items)")
      return nil
    end
  end
  return { item = item, path = path, position = position, length = length,
           track = reaper.GetMediaItem_Track(item) }
end

-- The running script's action section and command id (for its toolbar toggle state).
function M.action_context()
  local _, _, section, command = reaper.get_action_context()
  return section, command
end

function M.set_toggle(on)
  local section, command = M.action_context()
  if reaper.SetToggleCommandState and section and command then
    reaper.SetToggleCommandState(section, command, on and 1 or 0)
    reaper.RefreshToolbar2(section, command)
  end
end

return M
