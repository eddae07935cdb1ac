-- Scenario 1, basic takeover (arg: "bare" or "exec"): the Rust side started a sync outside the
-- service before this Neovim; the prompt shows it at setup, Y makes the service take over (a
-- handoff for an exec holder), and the status line counts up while the service syncs.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local holder = assert(arg[1], 'bare or exec')
local notes = T.record_notify()
local hs = require('himalaya_sync')
local prompt = require('himalaya_sync.prompt')
local shown = {}
vim.api.nvim_create_autocmd('User', {
  pattern = 'HimalayaSyncProgress',
  callback = function()
    table.insert(shown, hs.statusline())
  end,
})

T.case('the external sync is seen at setup and the prompt shows it', function()
  hs.setup({ bin = T.bin, accounts = { 'alice' } })
  T.wait('the prompt', 10000, function()
    return prompt.window() ~= nil
  end)
  local _, buf = prompt.window()
  local text = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n')
  T.matches(text, '^External sync detected:')
  T.matches(text, 'Process: [^\n]*mbsync[^\n]* %(PID %d+%)')
  T.matches(text, holder == 'bare' and 'Run by:  a bare mbsync' or 'Run by:  a lock holder')
  T.matches(text, 'Runtime: %d%d:%d%d')
  T.matches(text, holder == 'bare' and '%[Y%]es  %- stop it and restart it here' or '%[Y%]es  %- ask it to hand over')
  local found, info = hs.detect_external_sync()
  T.ok(found, 'detect_external_sync() finds it')
  T.eq(info.account, 'alice')
  T.eq(info.owner, holder == 'bare' and 'process' or 'client')
  T.ok(type(info.pid) == 'number', 'a pid')
  T.matches(info.runtime, '^%d%d:%d%d$')
  T.eq(info.likely_stuck, false)
  local p = hs.read_external_progress()
  T.eq(p.pid, info.pid, 'read_external_progress() names the same process')
  T.ok(type(p.start_time) == 'number' and p.start_time <= os.time(), 'start_time in unix seconds')
  T.matches(hs.statusline(), '^Syncing %(external%) alice')
  T.eq(hs.get_sync_status_line(), hs.statusline())
end)

T.case('Y: the service takes over and the status line counts up', function()
  vim.api.nvim_feedkeys('Y', 'x', false)
  T.ok(prompt.window() == nil, 'the prompt closed')
  T.wait('the service to sync alice', 20000, function()
    local r = hs.progress('alice')
    return r.owner == 'service' and r.state == 'syncing'
  end)
  T.handshake('answered', 'go')
  T.wait('the sync to end', 60000, function()
    return hs.progress('alice').state == 'idle'
  end)
  local r = hs.progress('alice')
  T.eq(r.last_result, 'ok')
  T.eq(r.messages_done, r.messages_total, 'the final counts are exact')
  local counts = {}
  for _, line in ipairs(shown) do
    local done, total = line:match('^Syncing alice: (%d+)/(%d+) emails$')
    if done then
      table.insert(counts, { tonumber(done), tonumber(total) })
    end
  end
  T.ok(#counts >= 2, 'the status line showed counts: ' .. vim.inspect(shown))
  for i = 2, #counts do
    T.ok(counts[i][1] >= counts[i - 1][1], 'counts never go back: ' .. vim.inspect(counts))
  end
  T.ok(counts[#counts][1] <= r.messages_total, 'never past the total')
  T.eq(hs.statusline(), '', 'empty once idle')
  T.eq(hs.detect_external_sync(), false)
  T.eq(#T.notified(notes, holder == 'bare' and 'stopped mbsync PID %d+' or 'now syncing alice'), 1, 'one notice of what was stopped')
  T.eq(#T.notified(notes, 'alice: stopped mbsync PID %d+ %([^:]*, ran %d+ s%); now syncing alice$'), 1, 'without the command line')
  T.eq(#T.notified(notes, 'the service took over'), 0, 'no AutoTakeover notice for our own takeover')
end)

T.finish()
