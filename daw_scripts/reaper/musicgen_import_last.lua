-- @description MusicGen: insert the last result at the edit cursor
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Inserts what the bridge last made for these scripts (a generation, continuation, melody or
--   jam take) at the edit cursor on the selected track: asks the bridge how that job ended
--   (/musicgen/job), and falls back to the files remembered from REAPER's last run when the
--   bridge is not running or has forgotten the job. Variations go on new tracks below.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")

local id, remembered = mg.remembered()
local position = reaper.GetCursorPosition()
local track = reaper.GetSelectedTrack(0, 0)

local function insert(paths)
  local target = track
  for i, path in ipairs(paths) do
    if i > 1 then target = mg.track_below(target) end
    mg.insert_at(path, position, target)
    target = target or reaper.GetSelectedTrack(0, 0)
  end
end

local function from_memory(code, message)
  if #remembered > 0 and mg.file_exists(remembered[1]) then
    insert(remembered)
  else
    mg.fail_box(code, message)
  end
end

if id == "" then
  from_memory("not_found", "nothing was made from REAPER yet: run MusicGen: generate (or continue, melody, jam) first")
  return
end
mg.job_state(id, function(state, _address, rest)
  if state == "done" then
    mg.remember(nil, rest)
    insert(rest)
  elseif state == "queued" or state == "running" then
    mg.fail_box("busy", "the last job (" .. id .. ") is still " .. state .. ": run this again when it is done")
  else
    mg.fail_box(rest[1] or state, rest[2] or "")
  end
end, from_memory)
