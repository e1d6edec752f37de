-- @description MusicGen: generate bars at the project tempo and insert them at the edit cursor
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Asks for a prompt and a number of bars, sends /musicgen/generate to a running
--   `musicgen-bridge serve` with the project's tempo and time signature at the edit cursor, and
--   inserts the result (exactly that many bars long) at the edit cursor on the selected track. With
--   LuaSocket the audio lands as it is made (ExtState musicgen_bridge/stream "0" turns that off).
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local T = require("musicgen_timeline")
local S = require("musicgen_stream")

local prompt, bars = mg.ask("MusicGen: generate", "Prompt", "dusty lofi keys", 4, true)
if not prompt then return end
local position = reaper.GetCursorPosition()
local track = reaper.GetSelectedTrack(0, 0)
S.run("/musicgen/generate", { mg.new_id("gen"), prompt, 0.0, table.unpack(mg.bar_options(bars, position)) },
  position, function() return T.track_or_new(track) end)
