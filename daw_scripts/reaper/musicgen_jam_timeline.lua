-- @noindex
-- musicgen_jam_timeline.lua: the jam written onto REAPER's timeline ahead of the play cursor, so the
-- project itself plays it in time with everything else (musicgen_jam_toggle.lua's timeline mode).
--
-- The bridge jams with `play 0` (files only) at the project's tempo and time signature; this script
-- keeps running (reaper.defer) and puts each /musicgen/jam/segment on the "MusicGen jam" track at a
-- bar: segment n at the bar `bars * n` after the first one, so they follow each other without a seam.
-- A segment goes no nearer the play cursor than the margin (T.margin(), ExtState jam_margin, 2 s):
-- when the play cursor has overtaken the jam (a machine slower than real time), the script says so
-- once and places each later segment at the next bar it can still reach, never under the playhead.
-- Stopping (the toggle again, the transport stopping, or the bridge going away) leaves the items as
-- the take.
local mg = require("musicgen_lib")
local T = require("musicgen_timeline")

local J = {}

J.PING_SECONDS = 2
J.SILENT_SECONDS = 10  -- no word from the bridge for this long: it is gone
J.STOP_WAIT = 60  -- seconds to wait for the last segment after asking the jam to stop

local function say(text) reaper.ShowConsoleMsg("MusicGen: " .. text .. "\n") end

local function clear()
  for _, key in ipairs({ "jam_id", "jam_running_mode", "jam_stop" }) do reaper.DeleteExtState(T.SECTION, key, false) end
  mg.set_toggle(false)
end
J.clear = clear

-- Where segment `index` goes; nil, why when it cannot be placed. `jam` keeps the grid.
function J.position(jam, index, play)
  local earliest = play + jam.margin
  local target
  if jam.anchor_bar then target = T.bar_start(jam.anchor_bar + (index - jam.anchor_index) * jam.bars) end
  if target and target >= earliest - 1e-9 then return target end
  if target and not jam.overtaken then
    jam.overtaken = true
    say(string.format("the play cursor overtook the jam (this machine makes it slower than real time): segment %d " ..
      "and later go at the next bar still %.1f s ahead of the play cursor, so there are gaps", index, jam.margin))
  end
  local start, bar = T.bar_at_or_after(earliest)
  jam.anchor_bar, jam.anchor_index = bar, index
  return start
end

-- Start a jam on the timeline; runs until stopped. Failures show in a message box.
function J.start(prompt, bars)
  local socket = mg.socket()
  if not socket then
    mg.fail_box("no_socket", "the jam on the timeline needs LuaSocket in REAPER (ReaPack: Mavriq Lua Sockets); " ..
      "without it, stop the transport and run the jam again to hear it on the bridge's audio output")
    return
  end
  local id = mg.new_id("jam")
  local play = reaper.GetPlayPosition()
  local args = { id, prompt, table.unpack(mg.bar_options(bars, play)) }
  args[#args + 1] = "play"; args[#args + 1] = 0
  -- the bridge makes the segments a segment and a bar ahead of real time at most: a prompt set with
  -- musicgen_jam_set.lua is heard within that, not after all a fast machine could make ahead
  args[#args + 1] = "ahead_bars"; args[#args + 1] = bars + 1
  local jam = { bars = bars, margin = T.margin(), placed = 0, track = nil }
  local udp, port = mg.open_udp(socket)
  local send = mg.sender(udp)
  local begun, stopping, heard, was_playing = false, nil, false, T.is_playing()
  local last_heard, last_ping = mg.now(), mg.now()

  local function begin()
    if begun then return end
    begun = true
    reaper.SetExtState(T.SECTION, "jam_id", id, false)
    reaper.SetExtState(T.SECTION, "jam_running_mode", "timeline", false)
    mg.set_toggle(true)
    reaper.atexit(function()  -- REAPER ends the script (terminated, or REAPER quits): the jam ends too
      if reaper.GetExtState(T.SECTION, "jam_id") == id then
        send("/musicgen/jam/stop", {})
        clear()
      end
    end)
  end
  local function finish(message, code)
    if begun then clear() end
    send("/musicgen/unnotify", { port })
    udp:close()
    if code then mg.fail_box(code, message) elseif message then say(message) end
  end
  local function kept() return string.format("the %d segments placed stay on the '%s' track", jam.placed, T.JAM_TRACK) end
  local function stop(why)
    if stopping then return end
    stopping = mg.now()
    send("/musicgen/jam/stop", {})
    say(why)
  end
  local function place(index, path)
    jam.track = jam.track or T.named_track(T.JAM_TRACK)
    local position = J.position(jam, index, reaper.GetPlayPosition())
    reaper.Undo_BeginBlock()
    T.place(path, position, jam.track, string.format("%s %d", prompt, index))
    reaper.UpdateArrange()
    reaper.Undo_EndBlock("MusicGen: jam segment " .. index, -1)
    jam.placed = jam.placed + 1
  end

  send("/musicgen/notify", { port })
  send("/musicgen/jam/start", args)
  local function poll()
    while true do
      local data = udp:receive()
      if not data then break end
      local addr, reply = mg.decode(data)
      if addr then heard, last_heard = true, mg.now() end
      if addr == "/musicgen/fail" and (reply[2] == id or (reply[2] == "" and
          (reply[1] == "/musicgen/jam/start" or reply[1] == "/musicgen/notify"))) then
        finish(tostring(reply[4]) .. (jam.placed > 0 and ("; " .. kept()) or ""), reply[3])
        return
      elseif addr == "/musicgen/queued" and reply[1] == id then
        begin()
      elseif addr == "/musicgen/jam/segment" and reply[1] == id then  -- <id> <index> <path> [<beat>]
        begin()
        place(math.tointeger(reply[2]) or jam.placed, reply[3])
      elseif addr == "/musicgen/done" and reply[1] == "/musicgen/jam/start" and reply[2] == id then
        mg.remember(id, { reply[3] })
        finish("the jam stopped: " .. kept() .. " (the whole take is also at " .. tostring(reply[3]) .. ")")
        return
      end
    end
    local now = mg.now()
    if now - last_heard > math.min(J.SILENT_SECONDS, mg.timeout) then
      if heard then
        finish("musicgen-bridge stopped answering (did it quit?): " .. kept(), "no_bridge")
      else
        finish("no answer from musicgen-bridge at " .. mg.host .. ":" .. mg.port ..
          ": is `musicgen-bridge serve` running?", "timeout")
      end
      return
    end
    if stopping and now - stopping > J.STOP_WAIT then
      finish("the jam did not end within " .. J.STOP_WAIT .. " s of being stopped: " .. kept(), "timeout")
      return
    end
    if begun and reaper.GetExtState(T.SECTION, "jam_stop") == id then
      reaper.DeleteExtState(T.SECTION, "jam_stop", false)  -- taken: the toggle's second run sees it
      stop("stopping the jam; the segment being made still lands")
    end
    local playing = T.is_playing()
    if was_playing and not playing then stop("the transport stopped, so the jam stops") end
    was_playing = playing
    if now - last_ping >= J.PING_SECONDS then
      send("/musicgen/ping", {})
      last_ping = now
    end
    reaper.defer(poll)
  end
  poll()
end

-- The toggle run again: ask the running instance to stop; if it is gone, stop the jam from here.
function J.request_stop(id)
  reaper.SetExtState(T.SECTION, "jam_stop", id, false)
  local deadline = mg.now() + 3
  local function wait()
    if reaper.GetExtState(T.SECTION, "jam_id") ~= id then return end  -- it ended meanwhile
    if reaper.GetExtState(T.SECTION, "jam_stop") ~= id then return end  -- the running instance took it
    if mg.now() > deadline then
      mg.send("/musicgen/jam/stop", {})
      clear()
      say("the jam's script was not running any more: asked the bridge to stop the jam")
      return
    end
    reaper.defer(wait)
  end
  wait()
end

return J
