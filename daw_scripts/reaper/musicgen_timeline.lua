-- @noindex
-- musicgen_timeline.lua: putting audio on REAPER's timeline while it is made, for the streaming
-- generate/continue/melody actions and the jam's timeline mode.
--
-- Items are made with REAPER's item API (AddMediaItemToTrack, PCM_Source_CreateFromFile), so the
-- script keeps each item and can remove or replace it; each is exactly as long as its file.
--
-- Settings, from ExtState section "musicgen_bridge":
--   stream      "0" turns streaming off (default on, with LuaSocket): the result lands only when done
--   jam_margin  seconds a jam segment is placed ahead of the play cursor at the least (default 2)
--   jam_mode    "timeline" or "output": the jam's mode whatever the transport does (default: timeline
--               while the project plays, else output)
local T = {}

T.SECTION = "musicgen_bridge"
T.JAM_TRACK = "MusicGen jam"
-- REAPER reads media ahead of the play cursor (Preferences > Audio > Buffering: "media buffer size",
-- 1200 ms by default, and up to ~1 s more with anticipative FX). An item must be in the project before
-- that read-ahead reaches its start, so it plays from its first sample: 2 s covers the default with
-- room for one deferred cycle (~33 ms) and a busy UI thread.
T.DEFAULT_MARGIN = 2.0

local function setting(key) return reaper.GetExtState(T.SECTION, key) end

function T.margin()
  local value = tonumber(setting("jam_margin"))
  if value and value >= 0 then return value end
  return T.DEFAULT_MARGIN
end

function T.streaming_wanted() return setting("stream") ~= "0" end

function T.is_playing() return reaper.GetPlayState() & 1 == 1 end

-- Put `path` on `track` at `position` seconds as an item exactly as long as the file; returns the item.
-- The caller holds the undo block (or none, for items that will be replaced).
function T.place(path, position, track, name)
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  local source = reaper.PCM_Source_CreateFromFile(path)
  reaper.SetMediaItemTake_Source(take, source)
  local length = reaper.GetMediaSourceLength(source)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", position)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", length)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", name or path:match("[^/\\]*$"), true)
  reaper.UpdateItemInProject(item)
  return item, length
end

-- Remove the items that are still in the project (the user may have deleted some).
function T.remove(items)
  for _, item in ipairs(items) do
    if reaper.ValidatePtr2(0, item, "MediaItem*") then
      reaper.DeleteTrackMediaItem(reaper.GetMediaItem_Track(item), item)
    end
  end
  reaper.UpdateArrange()
end

-- `track` while it is still in the project, else a new track at the end.
function T.track_or_new(track)
  if track and reaper.ValidatePtr2(0, track, "MediaTrack*") then return track end
  local index = reaper.CountTracks(0)
  reaper.InsertTrackAtIndex(index, true)
  return reaper.GetTrack(0, index)
end

-- The track named `name` (made at the end of the track list when there is none).
function T.named_track(name)
  for i = 0, reaper.CountTracks(0) - 1 do
    local track = reaper.GetTrack(0, i)
    local _, found = reaper.GetSetMediaTrackInfo_String(track, "P_NAME", "", false)
    if found == name then return track end
  end
  local index = reaper.CountTracks(0)
  reaper.InsertTrackAtIndex(index, true)
  local track = reaper.GetTrack(0, index)
  reaper.GetSetMediaTrackInfo_String(track, "P_NAME", name, true)
  return track
end

-- The bar grid: the start (seconds) of the first bar at or after `time`, and its bar index.
function T.bar_at_or_after(time)
  local beats, measures = reaper.TimeMap2_timeToBeats(0, time)
  measures = math.tointeger(measures) or math.floor(measures)
  local start = reaper.TimeMap2_beatsToTime(0, 0, measures)
  if beats > 1e-9 and start < time - 1e-9 then
    measures = measures + 1
    start = reaper.TimeMap2_beatsToTime(0, 0, measures)
  end
  return start, measures
end

function T.bar_start(measures) return reaper.TimeMap2_beatsToTime(0, 0, measures) end

-- Streaming: one result's chunk items and what replaces them -----------------------------------------

-- A stream of chunks landing from `position` on the track `get_track()` gives (asked for at the first
-- chunk, so a new track is made only when audio comes).
function T.new_stream(position, get_track)
  local stream = { position = position, items = {}, track = nil }

  function stream.chunk(_index, path, start)
    stream.track = stream.track or get_track()
    reaper.PreventUIRefresh(1)
    local item = T.place(path, stream.position + (tonumber(start) or 0), stream.track)
    reaper.PreventUIRefresh(-1)
    stream.items[#stream.items + 1] = item
    reaper.UpdateArrange()
  end

  -- The final file replaces the chunks, in one undo step, same position, as long as the file.
  function stream.finish(path)
    reaper.Undo_BeginBlock()
    T.remove(stream.items)
    stream.items = {}
    stream.track = stream.track or get_track()
    T.place(path, stream.position, stream.track)
    reaper.UpdateArrange()
    reaper.Undo_EndBlock("MusicGen: insert " .. path:match("[^/\\]*$"), -1)
  end

  function stream.discard()
    T.remove(stream.items)
    stream.items = {}
  end

  return stream
end

return T
