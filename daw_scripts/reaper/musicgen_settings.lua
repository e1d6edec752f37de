-- @description MusicGen: settings (the bridge's host, ports, command and token)
-- @author musicgen-bridge
-- @version 0.2.0
-- @about
--   A dialog for where the bridge is and how to reach it, kept in REAPER's ExtState (section
--   "musicgen_bridge", saved with REAPER), so nobody edits Lua to change them: the host, its OSC port,
--   the port replies come back to (0: any free port, one per request), the full path of
--   `musicgen-bridge` (used without LuaSocket; macOS apps do not get the shell's PATH) and the token
--   of a bridge started with --token. An empty field goes back to the default.
local dir = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or "./"
package.path = dir .. "?.lua;" .. package.path
local mg = require("musicgen_lib")

local FIELDS = {  -- ExtState key, caption, default shown when unset
  { "host", "Bridge host", "127.0.0.1" },
  { "port", "Bridge OSC port", "9000" },
  { "reply_port", "Reply port (0: any free)", "0" },
  { "command", "Path to musicgen-bridge", "musicgen-bridge" },
  { "token", "Token (empty: none)", "" },
}
local SEP = "|"

local captions, current = {}, {}
for i, field in ipairs(FIELDS) do
  captions[i] = field[2]
  local value = reaper.GetExtState(mg.SECTION, field[1])
  current[i] = value ~= "" and value or field[3]
end
local ok, answer = reaper.GetUserInputs("MusicGen: settings", #FIELDS,
  table.concat(captions, ",") .. ",separator=" .. SEP .. ",extrawidth=240", table.concat(current, SEP))
if not ok then return end

local values = {}
for value in (answer .. SEP):gmatch("(.-)" .. SEP:gsub("%p", "%%%0")) do values[#values + 1] = value:match("^%s*(.-)%s*$") end
if #values ~= #FIELDS then
  mg.fail_box("bad_args", "the dialog gave " .. #values .. " fields, not " .. #FIELDS .. ": do not type '" .. SEP ..
    "' in a field")
  return
end
local function port(value, low, what)
  local n = math.tointeger(tonumber(value))
  if value ~= "" and (not n or n < low or n > 65535) then
    mg.fail_box("bad_args", what .. " must be a whole number from " .. low .. " to 65535, got '" .. value ..
      "': nothing was changed")
    return false
  end
  return true
end
if not port(values[2], 1, "the bridge's OSC port") or not port(values[3], 0, "the reply port") then return end

local shown = {}
for i, field in ipairs(FIELDS) do
  local value = values[i]
  if value == "" or (value == field[3] and field[1] ~= "token") then
    reaper.DeleteExtState(mg.SECTION, field[1], true)
  else
    reaper.SetExtState(mg.SECTION, field[1], value, true)
  end
  shown[#shown + 1] = field[2] .. ": " .. (field[1] == "token" and (value ~= "" and "set" or "none") or
    (value ~= "" and value or field[3]))
end
reaper.ShowConsoleMsg("MusicGen: settings saved (the next action uses them)\n  " .. table.concat(shown, "\n  ") .. "\n")
