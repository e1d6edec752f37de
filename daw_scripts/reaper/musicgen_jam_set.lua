-- @description MusicGen: give the running jam a new prompt (from its next segment)
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   Asks for a new prompt and sends it to the running jam (/musicgen/jam/set prompt ...): the
--   bridge uses it from the next segment it makes, in either jam mode (timeline or the bridge's
--   audio output). The REAPER console says which prompt the next segment takes.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")

local ok, prompt = reaper.GetUserInputs("MusicGen: jam prompt", 1, "New prompt,extrawidth=220", "")
if not ok then return end
if prompt:match("^%s*$") then
  mg.fail_box("bad_args", "give a prompt")
  return
end
local function applied(settings)
  for i = 1, #settings - 1, 2 do
    if settings[i] == "prompt" then
      reaper.ShowConsoleMsg("MusicGen: the jam takes the prompt '" .. tostring(settings[i + 1]) ..
        "' from its next segment\n")
    end
  end
end
local sent = mg.exchange("/musicgen/jam/set", { "prompt", prompt }, function(address, reply)
  if address == "/musicgen/jam/set" then applied(reply) return true end
  if address == "/musicgen/fail" and reply[1] == "/musicgen/jam/set" then
    mg.fail_box(reply[3], reply[4])
    return true
  end
  return false
end, function()
  mg.fail_box("timeout", "no answer from musicgen-bridge at " .. mg.host .. ":" .. mg.port ..
    ": is `musicgen-bridge serve` running?")
end, math.min(10, mg.timeout))
if not sent then
  mg.run_command("/musicgen/jam/set", { "prompt", prompt }, true, function(done, output)
    if not done then mg.fail_box(mg.command_failure(output)) return end
    applied({ "prompt", prompt })
  end, 10)
end
