-- @description MusicGen: new bars in a prompt's style following the selected item's melody
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Sends the selected audio item's file to /musicgen/melody with a style prompt (the bridge must
--   run a melody model, e.g. facebook/musicgen-melody); the result is inserted on a new track
--   below the item, starting where the item starts. With LuaSocket it lands as it is made
--   (ExtState musicgen_bridge/stream "0": when done).
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local S = require("musicgen_stream")

local selected = mg.selected_audio("whose melody to follow", false)
if not selected then return end
local prompt, bars = mg.ask("MusicGen: melody", "Style prompt", "string quartet", 4, true)
if not prompt then return end
S.run("/musicgen/melody",
  { mg.new_id("mel"), selected.path, prompt, 0.0, table.unpack(mg.bar_options(bars, selected.position)) },
  selected.position, function() return mg.track_below(selected.track) end)
