-- @description MusicGen: cancel the results streaming onto the timeline
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Cancels every generation, continuation and melody this REAPER is streaming onto the timeline
--   (/musicgen/cancel for each): the bridge stops them, and each waiting action removes its
--   streamed items, leaving the project as it was.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local S = require("musicgen_stream")

local ids = S.running()
if #ids == 0 then
  mg.fail_box("not_found", "nothing is streaming onto the timeline from this REAPER")
  return
end
for _, id in ipairs(ids) do mg.send("/musicgen/cancel", { id }) end
