-- More of a REAPER project for tests/lua/harness.lua (HARNESS_EXTRA=this file): items on tracks and a
-- time selection, for scripts that look at the items around a selection.
--   HARNESS_ITEMS       "track|path|position|length|offset|playrate|source length;..." (track 1-based)
--   HARNESS_TIME_SEL    "start,end" in seconds (unset: no time selection)
local items_on = {}
for entry in (os.getenv("HARNESS_ITEMS") or ""):gmatch("[^;]+") do
  local t, path, pos, len, off, rate, slen = entry:match("^(%d+)|([^|]*)|([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)$")
  local track = reaper.GetTrack(0, tonumber(t) - 1)
  local item = { extra = true, path = path, pos = tonumber(pos), len = tonumber(len), offset = tonumber(off),
                 rate = tonumber(rate), slen = tonumber(slen), track = track }
  item.take = { extra = true, item = item }
  item.source = { extra = true, item = item }
  items_on[track] = items_on[track] or {}
  table.insert(items_on[track], item)
end
local sel_start, sel_end = (os.getenv("HARNESS_TIME_SEL") or ""):match("^([^,]+),([^,]+)$")

local orig = {}
for _, name in ipairs({ "GetActiveTake", "TakeIsMIDI", "GetMediaItemTake_Source", "GetMediaSourceFileName",
                        "GetMediaSourceLength", "GetMediaItemInfo_Value", "GetMediaItemTakeInfo_Value",
                        "GetMediaItem_Track" }) do
  orig[name] = reaper[name]
end
local function ours(x) return type(x) == "table" and x.extra end

reaper.GetSet_LoopTimeRange = function(_set, _loop, _start, _end, _seek)
  if not sel_start then return 0.0, 0.0 end
  return tonumber(sel_start), tonumber(sel_end)
end
reaper.CountTrackMediaItems = function(track) return #(items_on[track] or {}) end
reaper.GetTrackMediaItem = function(track, i) return (items_on[track] or {})[i + 1] end
reaper.GetActiveTake = function(item) if ours(item) then return item.take end return orig.GetActiveTake(item) end
reaper.TakeIsMIDI = function(take) if ours(take) then return false end return orig.TakeIsMIDI(take) end
reaper.GetMediaItemTake_Source = function(take)
  if ours(take) then return take.item.source end
  return orig.GetMediaItemTake_Source(take)
end
reaper.GetMediaSourceFileName = function(source, buf)
  if ours(source) then return source.item.path end
  return orig.GetMediaSourceFileName(source, buf)
end
reaper.GetMediaSourceLength = function(source)
  if ours(source) then return source.item.slen, false end
  return orig.GetMediaSourceLength(source)
end
reaper.GetMediaItem_Track = function(item) if ours(item) then return item.track end return orig.GetMediaItem_Track(item) end
reaper.GetMediaItemInfo_Value = function(item, key)
  if not ours(item) then return orig.GetMediaItemInfo_Value(item, key) end
  if key == "D_POSITION" then return item.pos end
  if key == "D_LENGTH" then return item.len end
  return 0
end
reaper.GetMediaItemTakeInfo_Value = function(take, key)
  if not ours(take) then return orig.GetMediaItemTakeInfo_Value(take, key) end
  if key == "D_STARTOFFS" then return take.item.offset end
  if key == "D_PLAYRATE" then return take.item.rate end
  return 0
end
