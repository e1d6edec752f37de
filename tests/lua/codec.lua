-- The OSC codec of musicgen_lib.lua on its own, for tests/test_reaper_lua.py.
-- usage: lua5.4 codec.lua SCRIPTS_DIR encode   (writes one message to stdout)
--        lua5.4 codec.lua SCRIPTS_DIR decode   (reads one packet on stdin, prints address|type=value|...)
package.path = arg[1] .. "/?.lua;" .. package.path
local mg = require("musicgen_lib")
if arg[2] == "encode" then
  io.write(mg.encode("/musicgen/generate", { "id-1", "dusty lofi keys ü", 0.0, "bars", 8, "bpm", 92.5,
    "", "abcd", -7, 2147483647, true, false }))
else
  local address, args = mg.decode(io.read("a"))
  if not address then print("NOT OSC") return end
  local out = { address }
  for _, v in ipairs(args) do out[#out + 1] = (math.type(v) or type(v)) .. "=" .. tostring(v) end
  print(table.concat(out, "|"))
end
