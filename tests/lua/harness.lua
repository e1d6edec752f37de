-- Runs a REAPER script under plain lua5.4 with a stub `reaper` table that keeps a tiny project
-- (tracks, one selected item, the edit cursor, ExtState) and prints one line per effect on it,
-- read by tests/test_reaper_lua.py:
--   INSERTED <path> AT <seconds> TRACK <n>     reaper.InsertMedia (n: 1-based track number)
--   NEW TRACK <n>                              reaper.InsertTrackAtIndex
--   TOGGLE <0|1>                               reaper.SetToggleCommandState
--   MESSAGE <text>                             reaper.ShowMessageBox (newlines become spaces)
--   CURSOR <seconds>                           the edit cursor when the script ended
-- usage: lua5.4 harness.lua SCRIPT. The project comes from HARNESS_* environment variables:
--   INPUT (GetUserInputs' answer; unset: the user cancels), BPM, NUM, DENOM, CURSOR, TRACKS (count),
--   SELECTED_TRACK (1-based; 0: none), ITEM (the selected item's file), ITEM_POS, ITEM_LEN,
--   ITEM_OFFSET, ITEM_RATE, ITEM_SOURCE_LEN, ITEM_TRACK, STATE (a file that keeps ExtState between
--   runs), SECONDS (how long deferred functions may run).
local script = arg[1]
io.stdout:setvbuf("line")  -- the tests read what a long-running script did while it runs
local env = function(key, default) return os.getenv("HARNESS_" .. key) or default end
local num = function(key, default) return tonumber(env(key, default)) end
local socket_ok, socket = pcall(require, "socket")

local deferred = {}
local cursor = num("CURSOR", "0")
local tracks = {}
for i = 1, num("TRACKS", "1") do tracks[i] = { guid = string.format("{TRACK-%d}", i) } end
local selected = tracks[num("SELECTED_TRACK", "1")]
local item = env("ITEM") and { track = tracks[num("ITEM_TRACK", "1")] } or nil
local take = item and {} or nil
local source = item and {} or nil

-- ExtState, kept in HARNESS_STATE between runs (as REAPER keeps it while it runs, and with persist)
-- (read again before each use: a second script run may change it while a first one still runs)
local ext, state_file = {}, env("STATE")
local function load_state()
  if not state_file then return end
  local f = io.open(state_file)
  if not f then return end
  ext = {}
  for line in f:lines() do
    local k, v = line:match("^([^=]*)=(.*)$")
    if k then ext[k] = v:gsub("\\n", "\n"):gsub("\\t", "\t") end
  end
  f:close()
end
load_state()
local function save_state()
  if not state_file then return end
  local f = assert(io.open(state_file, "w"))
  for k, v in pairs(ext) do f:write(k, "=", (v:gsub("\n", "\\n"):gsub("\t", "\\t")), "\n") end
  f:close()
end

local function index_of(track)
  for i, t in ipairs(tracks) do if t == track then return i end end
  return nil
end

local clock = socket_ok and socket.gettime or os.time

reaper = {
  get_action_context = function() return false, script, 0, 40000, -1, -1, -1 end,
  GetUserInputs = function(_title, _n, _captions, _defaults)
    local answer = env("INPUT")
    if not answer then return false, "" end
    return true, answer
  end,
  Master_GetTempo = function() return num("BPM", "120") end,
  TimeMap_GetTimeSigAtTime = function(_proj, _time) return num("NUM", "4"), num("DENOM", "4"), num("BPM", "120") end,
  GetCursorPosition = function() return cursor end,
  SetEditCurPos = function(t, _moveview, _seekplay) cursor = t end,
  time_precise = function() return clock() end,
  CountTracks = function() return #tracks end,
  GetTrack = function(_proj, i) return tracks[i + 1] end,
  GetSelectedTrack = function(_proj, i) if i == 0 then return selected end end,
  SetOnlyTrackSelected = function(track) selected = track end,
  InsertTrackAtIndex = function(i, _defaults)
    table.insert(tracks, i + 1, { guid = string.format("{NEW-%d}", #tracks + 1) })
    print(string.format("NEW TRACK %d", i + 1))
  end,
  GetTrackGUID = function(track) return track.guid end,
  GetMediaTrackInfo_Value = function(track, key)
    if key == "IP_TRACKNUMBER" then return index_of(track) or 0 end
    return 0
  end,
  ValidatePtr2 = function(_proj, ptr, _kind) return index_of(ptr) ~= nil end,
  InsertMedia = function(path, mode)
    print(string.format("INSERTED %s AT %.6f TRACK %s MODE %d", path, cursor, tostring(index_of(selected)), mode))
    return 1
  end,
  Undo_BeginBlock = function() end,
  Undo_EndBlock = function(_desc, _flags) end,
  UpdateArrange = function() end,
  ShowMessageBox = function(msg, _title, _type) print("MESSAGE " .. msg:gsub("\n", " ")) return 1 end,
  ShowConsoleMsg = function(msg) io.write(msg) end,
  defer = function(fn) deferred[#deferred + 1] = fn end,
  GetSelectedMediaItem = function(_proj, i) if i == 0 then return item end end,
  GetActiveTake = function(_item) return take end,
  TakeIsMIDI = function(_take) return false end,
  GetMediaItemTake_Source = function(_take) return source end,
  GetMediaSourceFileName = function(_source, _buf) return env("ITEM") end,
  GetMediaSourceLength = function(_source) return num("ITEM_SOURCE_LEN", env("ITEM_LEN", "0")), false end,
  GetMediaItem_Track = function(_item) return item.track end,
  GetMediaItemInfo_Value = function(_item, key)
    if key == "D_POSITION" then return num("ITEM_POS", "0") end
    if key == "D_LENGTH" then return num("ITEM_LEN", "0") end
    return 0
  end,
  GetMediaItemTakeInfo_Value = function(_take, key)
    if key == "D_STARTOFFS" then return num("ITEM_OFFSET", "0") end
    if key == "D_PLAYRATE" then return num("ITEM_RATE", "1") end
    return 0
  end,
  GetExtState = function(section, key) load_state() return ext[section .. "/" .. key] or "" end,
  SetExtState = function(section, key, value, _persist) load_state() ext[section .. "/" .. key] = value save_state() end,
  DeleteExtState = function(section, key, _persist) load_state() ext[section .. "/" .. key] = nil save_state() end,
  SetToggleCommandState = function(_section, _command, on) print("TOGGLE " .. on) return true end,
  RefreshToolbar2 = function(_section, _command) end,
}

-- Items on tracks, the play state and the play cursor: tests/lua/timeline.lua.
local here = arg[0]:match("^(.*[/\\])") or "./"
local timeline = dofile(here .. "timeline.lua")(reaper, { tracks = tracks, index_of = index_of, clock = clock,
  env = env, num = num })

if env("EXTRA") then dofile(env("EXTRA")) end  -- more of the project (tests/lua/items.lua: items, a time selection)
dofile(script)
-- REAPER runs deferred functions about 30 times a second; so does this loop, for a bounded time.
local deadline = clock() + num("SECONDS", "120")
while #deferred > 0 and clock() <= deadline do
  local now = deferred
  deferred = {}
  timeline.tick()
  for _, fn in ipairs(now) do fn() end
  if socket_ok then socket.sleep(0.01) else os.execute("sleep 0.03") end
end
timeline.exit()
print(string.format("CURSOR %.6f", cursor))
if #deferred > 0 then print("HARNESS timed out") os.exit(2) end
