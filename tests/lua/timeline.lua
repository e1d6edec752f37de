-- The timeline part of the REAPER stand-in (tests/lua/harness.lua loads it): media items on tracks
-- with takes and sources read from real WAV files, track names, the play state and a play cursor
-- that advances with the clock, the bar grid, and atexit. Every name is REAPER's own API
-- (https://www.reaper.fm/sdk/reascript/reascripthelp.html), called as the scripts call them.
-- It prints one line per effect, read by tests/test_reaper_lua.py:
--   ITEM <id> <path> AT <seconds> LEN <seconds> TRACK <n> PLAY <play cursor then, or -1 when stopped>
--                                                   reaper.UpdateItemInProject (the item as placed)
--   DELETED ITEM <id>                               reaper.DeleteTrackMediaItem
--   UNDO <description>                              reaper.Undo_EndBlock
--   PROJECT ITEM <id> <path> AT <s> LEN <s> TRACK <n> NAME <track name>   each item left when the script ends
-- Environment (HARNESS_*): PLAYING (1: the project plays from the start of the run), PLAY_FROM (where
-- the play cursor starts, seconds), PLAY_SPEED (project seconds per real second: above 1 is a machine
-- slower than real time, seen from the model's side). The cursor moves between deferred cycles.
return function(reaper, h)
  local items, next_id = {}, 1
  local playing = h.env("PLAYING", "0") == "1"
  local play, speed = h.num("PLAY_FROM", "0"), h.num("PLAY_SPEED", "1")
  local last_tick = h.clock()
  local at_exit = {}
  local selected_item_info = reaper.GetMediaItemInfo_Value
  local selected_source_length = reaper.GetMediaSourceLength
  local selected_item_track = reaper.GetMediaItem_Track
  local validate = reaper.ValidatePtr2

  -- The play cursor moves between deferred cycles (by the time that passed, times PLAY_SPEED) and
  -- stands still within one, as REAPER's does within one run of a deferred function.
  local function play_position()
    if not playing then return -1 end
    return play
  end
  local function tick()
    local now = h.clock()
    if playing then play = play + (now - last_tick) * speed end
    last_tick = now
  end

  -- frames and sample rate of a WAV file (RIFF "fmt " and "data" chunks), or nil
  local function wav_info(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local data = f:read(4096)  -- the header: the chunks before "data" are small
    f:close()
    if #data < 12 or data:sub(1, 4) ~= "RIFF" or data:sub(9, 12) ~= "WAVE" then return nil end
    local pos, rate, align = 13, nil, nil
    while pos + 8 <= #data do
      local id, size = data:sub(pos, pos + 3), string.unpack("<I4", data, pos + 4)
      if id == "fmt " then
        rate = string.unpack("<I4", data, pos + 12)
        align = string.unpack("<I2", data, pos + 20)
      elseif id == "data" and rate and align then
        return { frames = size // align, rate = rate }
      end
      pos = pos + 8 + size + size % 2
    end
    return nil
  end

  local function track_number(track) return h.index_of(track) or 0 end
  local function describe(item)
    local source = item.take and item.take.source
    return string.format("%d %s AT %.9f LEN %.9f TRACK %d", item.id, source and source.path or "-", item.position,
      item.length, track_number(item.track))
  end

  reaper.AddMediaItemToTrack = function(track)
    local item = { id = next_id, track = track, position = 0.0, length = 0.0, placed = true }
    next_id = next_id + 1
    items[#items + 1] = item
    return item
  end
  reaper.AddTakeToMediaItem = function(item)
    item.take = { item = item }
    return item.take
  end
  reaper.PCM_Source_CreateFromFile = function(path)
    local info = wav_info(path) or { frames = 0, rate = 0 }
    return { path = path, frames = info.frames, rate = info.rate }
  end
  reaper.SetMediaItemTake_Source = function(take, source) take.source = source return true end
  reaper.GetMediaSourceLength = function(source)
    if source and source.path then
      if source.rate == 0 then return 0.0, false end
      return source.frames / source.rate, false
    end
    return selected_source_length(source)
  end
  reaper.SetMediaItemInfo_Value = function(item, key, value)
    if key == "D_POSITION" then item.position = value
    elseif key == "D_LENGTH" then item.length = value end
    return true
  end
  reaper.GetMediaItemInfo_Value = function(item, key)
    if item and item.placed then
      if key == "D_POSITION" then return item.position end
      if key == "D_LENGTH" then return item.length end
      return 0
    end
    return selected_item_info(item, key)
  end
  reaper.GetMediaItem_Track = function(item)
    if item and item.placed then return item.track end
    return selected_item_track(item)
  end
  reaper.GetSetMediaItemTakeInfo_String = function(take, key, value, set)
    if key == "P_NAME" and set then take.name = value end
    return true, take.name or ""
  end
  reaper.UpdateItemInProject = function(item)
    print(string.format("ITEM %s PLAY %.6f", describe(item), play_position()))
  end
  reaper.DeleteTrackMediaItem = function(track, item)
    for i, other in ipairs(items) do
      if other == item and other.track == track then
        table.remove(items, i)
        print(string.format("DELETED ITEM %d", item.id))
        return true
      end
    end
    return false
  end
  reaper.ValidatePtr2 = function(proj, ptr, kind)
    if kind == "MediaItem*" then
      for _, item in ipairs(items) do if item == ptr then return true end end
      return false
    end
    return validate(proj, ptr, kind)
  end
  reaper.GetSetMediaTrackInfo_String = function(track, key, value, set)
    if key == "P_NAME" then
      if set then track.name = value end
      return true, track.name or ""
    end
    return false, ""
  end
  reaper.Undo_EndBlock = function(description, _flags) print("UNDO " .. description) end
  reaper.PreventUIRefresh = function(_n) end

  -- The transport: GetPlayState's bit 1 is "playing"; the play cursor moves with the clock.
  reaper.GetPlayState = function() return playing and 1 or 0 end
  reaper.GetPlayPosition = function() return playing and play_position() or 0.0 end
  reaper.GetPlayPosition2 = reaper.GetPlayPosition

  -- The bar grid at the one tempo and time signature of the stand-in's project, bar 0 at time 0.
  local function bar_seconds()
    local num, denom, bpm = reaper.TimeMap_GetTimeSigAtTime(0, 0)
    return num * 4 / denom * 60 / bpm, num
  end
  reaper.TimeMap2_timeToBeats = function(_proj, time)
    local bar, num = bar_seconds()
    local measures = math.floor(time / bar + 1e-9)
    local beats_in = (time - measures * bar) / bar * num
    return beats_in, measures, num, time / bar * num, num
  end
  reaper.TimeMap2_beatsToTime = function(_proj, beats, measures)
    local bar, num = bar_seconds()
    return (measures or 0) * bar + beats / num * bar
  end

  reaper.atexit = function(fn) at_exit[#at_exit + 1] = fn end

  return {
    tick = tick,
    exit = function()
      for _, fn in ipairs(at_exit) do fn() end
      for _, item in ipairs(items) do
        print(string.format("PROJECT ITEM %s NAME %s", describe(item), item.track and item.track.name or ""))
      end
    end,
  }
end
