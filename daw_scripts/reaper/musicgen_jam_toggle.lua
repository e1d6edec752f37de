-- @description MusicGen: start or stop a live jam at the project tempo
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   First run: asks for a prompt and the bars per segment, and starts a jam on the bridge (it
--   keeps continuing its own output through the bridge's audio output, at the project tempo).
--   Next run: stops it; the whole take is inserted where the edit cursor was when the jam started.
--   Put it on a toolbar: the button is lit while the jam runs.
--   Timeline mode (the default while the project plays; ExtState musicgen_bridge/jam_mode "timeline" or
--   "output" picks one always): the jam's segments are written onto a "MusicGen jam" track at the bars
--   ahead of the play cursor, so the project plays them; the next run (choose "New instance" when
--   REAPER asks) or stopping the transport stops it, and the items stay as the take.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")
local T = require("musicgen_timeline")
local J = require("musicgen_jam_timeline")

local GRACE = 2.0  -- seconds after /musicgen/queued in which an early failure (no audio device) still shows

local function state(key) return reaper.GetExtState(mg.SECTION, key) end
local function clear()
  for _, key in ipairs({ "jam_id", "jam_position", "jam_track" }) do reaper.DeleteExtState(mg.SECTION, key, false) end
  mg.set_toggle(false)
end

local function timeline_mode()
  local mode = state("jam_mode")
  if mode == "timeline" or mode == "output" then return mode == "timeline" end
  return T.is_playing()
end

local function start()
  local prompt, bars = mg.ask("MusicGen: jam", "Prompt", "lofi hip hop groove", 4, true)
  if not prompt then return end
  if timeline_mode() then return J.start(prompt, bars) end
  local id = mg.new_id("jam")
  local position = reaper.GetCursorPosition()
  local track = reaper.GetSelectedTrack(0, 0)
  local function begin()
    reaper.SetExtState(mg.SECTION, "jam_id", id, false)
    reaper.SetExtState(mg.SECTION, "jam_position", string.format("%.9f", position), false)
    reaper.SetExtState(mg.SECTION, "jam_track", track and reaper.GetTrackGUID(track) or "", false)
    mg.set_toggle(true)
  end
  local args = { id, prompt, table.unpack(mg.bar_options(bars, position)) }
  local queued_at
  local sent = mg.exchange("/musicgen/jam/start", args, function(address, reply)
    if address == nil then return queued_at ~= nil and mg.now() - queued_at > GRACE end
    if address == "/musicgen/fail" and (reply[2] == id or (reply[1] == "/musicgen/jam/start" and reply[2] == "")) then
      if queued_at then clear() end
      mg.fail_box(reply[3], reply[4])
      return true
    elseif address == "/musicgen/queued" and reply[1] == id and not queued_at then
      queued_at = mg.now()
      begin()
    elseif address == "/musicgen/jam/segment" and reply[1] == id then
      if not queued_at then begin() end
      return true  -- it plays
    end
    return false
  end, function()
    if queued_at then return end
    mg.fail_box("timeout", "no answer from musicgen-bridge at " .. mg.host .. ":" .. mg.port ..
      ": is `musicgen-bridge serve` running?")
  end, 30)
  if sent then return end
  mg.run_command("/musicgen/jam/start", args, false, function(ok, output)
    if ok then begin() else mg.fail_box(mg.command_failure(output)) end
  end)
end

local function stop(id)
  local position = tonumber(state("jam_position")) or reaper.GetCursorPosition()
  local track = mg.track_by_guid(state("jam_track"))
  local function take(paths)
    clear()
    mg.remember(id, paths)
    mg.insert_at(paths[1], position, track)
  end
  local function failed(code, message)
    clear()
    mg.fail_box(code, message)
  end
  local sent = mg.exchange("/musicgen/jam/stop", {}, function(address, reply)
    if address == "/musicgen/done" and reply[1] == "/musicgen/jam/start" and reply[2] == id then
      take({ reply[3] })
      return true
    elseif address == "/musicgen/fail" and (reply[1] == "/musicgen/jam/stop" or reply[2] == id) then
      failed(reply[3], reply[4])
      return true
    end
    return false
  end, function() failed("timeout", "the jam did not hand over its take: is musicgen-bridge still running?") end)
  if sent then return end
  mg.run_command("/musicgen/jam/stop", {}, false, function(ok, output)
    if not ok then failed(mg.command_failure(output)) return end
    mg.wait_job(id, take, failed)
  end)
end

local running = state("jam_id")
if running == "" then start()
elseif state("jam_running_mode") == "timeline" then J.request_stop(running)
else stop(running) end
