-- @description MusicGen: continue the selected item, inserting the new bars right after it
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Sends the selected audio item's file to /musicgen/continue with the project tempo at the
--   item's end; the new audio (whole bars, sample-aligned to follow the file) lands right after
--   the item on the same track. The item must play its file to the end: glue it first if not.
--   With LuaSocket the new bars land as they are made (ExtState musicgen_bridge/stream "0": when done).
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local S = require("musicgen_stream")

local selected = mg.selected_audio("to continue", true)
if not selected then return end
local prompt, bars = mg.ask("MusicGen: continue", "Prompt (optional)", "", 4, false)
if not prompt then return end
local item_end = selected.position + selected.length
S.run("/musicgen/continue",
  { mg.new_id("cont"), selected.path, prompt, 0.0, table.unpack(mg.bar_options(bars, item_end)) },
  item_end, function() return selected.track end)
