-- @description MusicGen: fill the time selection between two items
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   On the selected track, the time selection must start where one audio item ends and end where the
--   next begins. Sends both files to /musicgen/infill with the selection's length: the new audio
--   continues the first item and leads into the second, at the first item's rate and channels, and is
--   inserted into the gap. Asks for an optional prompt and what to avoid (a negative prompt).
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local prompts = require("musicgen_prompt")

local TOLERANCE = 0.01  -- seconds between an item's edge and the selection's

-- The item's own file, or nil after a message; `edge` says which end of the file must be heard.
local function audio_file(item, what, edge)
  local take = reaper.GetActiveTake(item)
  if not take or reaper.TakeIsMIDI(take) then
    mg.fail_box("bad_args", "the item " .. what .. " the selection is not audio: a fill goes between two audio items")
    return nil
  end
  local source = reaper.GetMediaItemTake_Source(take)
  local path = reaper.GetMediaSourceFileName(source, "")
  local offset = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local rate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  local length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
  local heard = edge == "end" and math.abs(offset + length * rate - reaper.GetMediaSourceLength(source)) <= TOLERANCE
    or edge == "start" and math.abs(offset) <= TOLERANCE
  if not path or path == "" or math.abs(rate - 1) > 1e-6 or not heard then
    mg.fail_box("bad_args", "the item " .. what .. " the selection does not play its own file from the " .. edge ..
      " at normal speed, so the fill would not meet what you hear: glue it first (Item > Glue items)")
    return nil
  end
  return path
end

local start, stop = reaper.GetSet_LoopTimeRange(false, false, 0, 0, false)
local track = reaper.GetSelectedTrack(0, 0)
if not track or not start or stop - start <= 0 then
  mg.fail_box("bad_args", "select the track and make a time selection over the gap between two audio items on it")
  return
end
local before, after
for i = 0, reaper.CountTrackMediaItems(track) - 1 do
  local item = reaper.GetTrackMediaItem(track, i)
  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local finish = pos + reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
  if math.abs(finish - start) <= TOLERANCE then before = item end
  if math.abs(pos - stop) <= TOLERANCE then after = item end
  if pos < stop - TOLERANCE and finish > start + TOLERANCE then
    mg.fail_box("bad_args", "the time selection is not empty on the selected track: select only the gap")
    return
  end
end
if not before or not after then
  mg.fail_box("bad_args", "the time selection must start where one audio item ends and end where the next " ..
    "begins, on the selected track (snap the selection to the items' edges)")
  return
end
local first = audio_file(before, "before", "end")
local second = first and audio_file(after, "after", "start")
if not second then return end
local prompt, negative = prompts.ask_negative("MusicGen: fill", "", nil, false)
if not prompt then return end
local args = { mg.new_id("fill"), first, second, prompt, stop - start }
for _, value in ipairs(prompts.negative_options(negative)) do args[#args + 1] = value end
mg.request("/musicgen/infill", args,
  function(paths) mg.insert_at(paths[1], start, track) end,
  mg.fail_box)
