-- The plan's four commands and :HimalayaSync/:HimalayaSyncCancel, with account completion.
-- The Rust side started an exec lock holder for alice (slowed) before this Neovim; prompts are
-- off (sync_handoff.enabled = false), so only the commands act.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local notes = T.record_notify()
local hs = require('himalaya_sync')
local prompt = require('himalaya_sync.prompt')

local function state(a)
  local r = hs.progress(a)
  return r and r.state
end

T.case('completion and :HimalayaExternalSyncInfo', function()
  hs.setup({ bin = T.bin, sync_handoff = { enabled = false } })
  T.wait('the holder', 10000, function()
    return state('alice') == 'external'
  end)
  T.eq(vim.fn.getcompletion('HimalayaSync al', 'cmdline'), { 'alice' })
  T.eq(vim.fn.getcompletion('HimalayaTakeoverSync ', 'cmdline'), { 'alice', 'bob', 'everyone' })
  vim.cmd('HimalayaExternalSyncInfo')
  T.eq(#T.notified(notes, 'syncs that run elsewhere:\nalice: [^\n]*mbsync[^\n]*, PID %d+, running %d%d:%d%d'), 1)
  T.ok(prompt.window() == nil, 'no prompt with sync_handoff.enabled = false')
  -- show_takeover_prompt() still shows one when asked.
  local win = hs.show_takeover_prompt()
  T.ok(win and vim.api.nvim_win_is_valid(win), 'show_takeover_prompt() opens the prompt')
  local _, buf = prompt.window()
  T.matches(table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n'), 'Account: alice')
  vim.api.nvim_feedkeys('n', 'x', false)
  T.ok(prompt.window() == nil, 'N closes it')
  T.eq(state('alice'), 'external', 'N keeps it running')
end)

T.case(':HimalayaRequestHandoff hands the holder over', function()
  vim.cmd('HimalayaRequestHandoff alice')
  T.wait('the service to sync alice', 15000, function()
    local r = hs.progress('alice')
    return r.owner == 'service' and r.state == 'syncing'
  end)
  T.wait('the notice', 5000, function()
    return #T.notified(notes, 'alice: .*lock holder.*now syncing alice') == 1
  end)
end)

T.case(':HimalayaSync of a running account, then :HimalayaSyncCancel', function()
  vim.cmd('HimalayaSync alice')
  T.wait('AlreadySyncing', 5000, function()
    return #T.notified(notes, 'alice: account "alice" is already being synced by this service') == 1
  end)
  vim.cmd('HimalayaSyncCancel')
  T.wait('the cancel', 15000, function()
    return state('alice') == 'idle' and hs.progress('alice').last_result == 'cancelled'
  end)
  T.eq(#T.notified(notes, 'sync failed'), 0, 'a cancel is no failure')
end)

T.case(':HimalayaTakeoverSync stops a bare mbsync and restarts it here', function()
  T.handshake('bare', 'started')
  T.wait('the bare mbsync', 10000, function()
    return state('alice') == 'external'
  end)
  T.eq(hs.analyze_external_sync().owner, 'process')
  vim.cmd('HimalayaTakeoverSync')
  T.wait('the service to sync alice', 15000, function()
    local r = hs.progress('alice')
    return r.owner == 'service' and r.state == 'syncing'
  end)
  T.wait('the end', 60000, function()
    return state('alice') == 'idle'
  end)
  T.eq(hs.progress('alice').last_result, 'ok')
  T.eq(#T.notified(notes, 'alice: stopped mbsync PID %d+ %(a bare mbsync'), 1)
end)

T.case('a failed sync is one error with its reason', function()
  T.handshake('break', 'broken')
  vim.cmd('HimalayaSync bob')
  T.wait('the failure', 20000, function()
    return state('bob') == 'failed'
  end)
  T.wait('the error', 5000, function()
    return #T.notified(notes, 'bob: sync failed: .*AUTHENTICATIONFAILED') == 1
  end)
  local err = T.notified(notes, 'bob: sync failed')[1]
  T.eq(err.level, vim.log.levels.ERROR)
  T.eq(hs.statusline(), '', 'a failure leaves the status line')
end)

T.finish()
