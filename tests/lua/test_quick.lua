-- Scenario 4, rapid switching: one instance among several that start and quit quickly while a
-- sync runs (arg: how long to stay, in ms). It must see the sync, then leave nothing behind.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
T.record_notify()
local hs = require('himalaya_sync')
local stay = tonumber(arg[1] or '0')

T.case('start, maybe see the sync, quit', function()
  hs.setup({ bin = T.bin, accounts = { 'alice' } })
  if stay > 0 then
    T.wait('the running sync', 10000, function()
      return hs.statusline():find('^Syncing alice') ~= nil
    end)
    vim.wait(stay)
  end
end)

T.finish()
