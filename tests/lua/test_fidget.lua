-- fidget.nvim installed (a recording stand-in): progress goes to a fidget handle that is
-- created, reports growing counts and finishes; vim.notify is left for failures.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
T.with_fidget()
local notes = T.record_notify()
local hs = require('himalaya_sync')
local fidget = require('fidget.progress')

T.case('a sync reports through fidget', function()
  hs.setup({ bin = T.bin, accounts = { 'alice' } })
  T.wait('the service', 10000, function()
    return hs.status().up
  end)
  vim.cmd('HimalayaSync alice')
  T.wait('the end', 60000, function()
    local last = fidget.calls[#fidget.calls]
    return last and last.op == 'finish'
  end)
  local calls = fidget.calls
  T.eq(calls[1].op, 'create')
  T.eq(calls[1].title, 'Syncing alice')
  T.eq(calls[1].client, 'himalaya-sync')
  local done = {}
  for _, c in ipairs(calls) do
    T.eq(c.id, 1, 'one handle for one sync')
    local n = c.op == 'report' and c.message and c.message:match('^(%d+)/%d+ emails$')
    if n then
      table.insert(done, tonumber(n))
    end
  end
  T.ok(#done >= 2, 'counts reported: ' .. vim.inspect(calls))
  for i = 2, #done do
    T.ok(done[i] >= done[i - 1], 'counts never go back')
  end
  T.eq(#T.notified(notes, 'sync started'), 0, 'no start notice with fidget')
  T.eq(#T.notified(notes, 'sync finished'), 0, 'no end notice with fidget')
end)

T.case(':checkhealth himalaya_sync says what is there', function()
  vim.cmd('checkhealth himalaya_sync')
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  T.matches(text, 'OK Neovim 0%.1%d')
  T.matches(text, 'OK [^\n]*himalaya%-sync: himalaya%-sync %d+%.%d+%.%d+')
  T.matches(text, 'OK the service answers; accounts: alice, bob, everyone')
  T.matches(text, 'OK the watch job runs %(PID %d+%)')
  T.matches(text, 'OK fidget%.nvim found')
  T.ok(not text:find('ERROR'), text)
end)

T.finish()
