-- @description MusicGen: loop from prompt (a seamless loop of whole bars at the edit cursor)
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Asks for a prompt, what to avoid (a negative prompt; or write it after " -- " in the prompt) and a
--   number of bars, sends /musicgen/loop with the project tempo at the edit cursor, and inserts the
--   loop (exactly that many bars, its end running into its start without a click) at the edit cursor on
--   the selected track. Drag the item's right edge to repeat it.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local prompts = require("musicgen_prompt")

local prompt, negative, bars = prompts.ask_negative("MusicGen: loop", "dusty lofi keys", 2, true)
if not prompt then return end
local position = reaper.GetCursorPosition()
local track = reaper.GetSelectedTrack(0, 0)
local args = { mg.new_id("loop"), prompt, 0.0, table.unpack(mg.bar_options(bars, position)) }
for _, value in ipairs(prompts.negative_options(negative)) do args[#args + 1] = value end
mg.request("/musicgen/loop", args,
  function(paths) mg.insert_at(paths[1], position, track) end,
  mg.fail_box)
