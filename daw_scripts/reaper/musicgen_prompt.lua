-- @noindex
-- Prompts for the MusicGen actions: a negative prompt from a dialog field or after " -- " in the prompt.
-- Loaded by the actions from their own folder, as musicgen_lib.lua is; not an action.
local lib = require("musicgen_lib")
local M = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- "no drums, without vocals" -> "drums, vocals": what the audio should not have, as the bridge wants it.
local function avoided(text)
  local items = {}
  for item in (text .. ","):gmatch("([^,]*),") do
    item = trim(item):gsub("^[Nn][Oo]%s+", ""):gsub("^[Ww][Ii][Tt][Hh][Oo][Uu][Tt]%s+", "")
    if item ~= "" then items[#items + 1] = item end
  end
  return table.concat(items, ", ")
end

-- (prompt, negative prompt) from a prompt: the text after " -- " is what to avoid ("warm pads -- no drums").
function M.split_negative(text)
  local prompt, rest = text:match("^(.-)%s+%-%-%s*(.*)$")
  if not prompt then return trim(text), "" end
  return trim(prompt), avoided(rest)
end

-- The request's trailing options for a negative prompt (none when there is none).
function M.negative_options(negative)
  if negative and negative ~= "" then return { "negative", negative } end
  return {}
end

-- A prompt, a negative prompt and, with default_bars, a whole number of bars from one dialog whose fields
-- are split by "|" (prompts may hold commas); a negative prompt may also follow " -- " in the prompt.
-- nil when cancelled (a message says why when wrong).
function M.ask_negative(title, default_prompt, default_bars, prompt_required)
  local captions = "Prompt,Avoid (negative prompt)" .. (default_bars and ",Bars" or "") ..
    ",separator=|,extrawidth=220"
  local defaults = default_prompt .. "|" .. (default_bars and ("|" .. tostring(default_bars)) or "")
  local ok, answer = reaper.GetUserInputs(title, default_bars and 3 or 2, captions, defaults)
  if not ok then return nil end
  local fields = {}
  for field in (answer .. "|"):gmatch("([^|]*)|") do fields[#fields + 1] = field end
  local prompt, negative = M.split_negative(fields[1] or "")
  local typed = avoided(fields[2] or "")
  if typed ~= "" then negative = negative ~= "" and (negative .. ", " .. typed) or typed end
  local bars = nil
  if default_bars then
    bars = tonumber(trim(fields[3] or ""))
    if not bars or bars < 1 or bars ~= math.floor(bars) then
      lib.fail_box("bad_args", "give a whole number of bars (1 or more) in the Bars field")
      return nil
    end
    bars = math.tointeger(bars)
  end
  if prompt_required and prompt == "" then
    lib.fail_box("bad_args", "give a prompt")
    return nil
  end
  return prompt, negative, bars
end

return M
