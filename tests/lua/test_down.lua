-- No service and no binary: one clear message each, no storm, and recovery by itself when the
-- service appears.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local notes = T.record_notify()
local hs = require('himalaya_sync')

T.case('a missing binary: one error, retried quietly', function()
  hs.setup({ bin = T.dir .. '/no-such-himalaya-sync' })
  T.wait('the error', 3000, function()
    return #notes > 0
  end)
  vim.wait(3500) -- two retries (1 s, then 2 s)
  T.eq(#notes, 1, 'one message: ' .. vim.inspect(notes))
  T.eq(notes[1].level, vim.log.levels.ERROR)
  T.matches(notes[1].msg, 'cannot run .*no%-such%-himalaya%-sync.*install himalaya%-sync or set the bin option')
  T.eq(hs.statusline(), '')
end)

T.case('no service yet: one warning, then it recovers by itself', function()
  for i in pairs(notes) do
    notes[i] = nil
  end
  hs.setup({ bin = T.bin, accounts = { 'bob' } })
  T.wait('the warning', 5000, function()
    return #T.notified(notes, 'the service is not running') == 1
  end)
  T.eq(hs.status().up, false)
  T.handshake('waiting', 'started')
  T.wait('the service', 10000, function()
    return hs.status().up == true and hs.progress('bob') ~= nil
  end)
  T.eq(#T.notified(notes, '%) the service is back$'), 1)
  vim.cmd('HimalayaSync bob')
  T.wait('the sync to end', 30000, function()
    local r = hs.progress('bob')
    return r.state == 'idle' and r.last_result == 'ok'
  end)
  T.eq(#T.notified(notes, 'not running'), 1, 'no storm')
end)

T.finish()
