-- Scenario 3, progress sharing: two Neovim instances follow one supervised sync and show the
-- same status lines, in the same order, to the same end.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local notes = T.record_notify()
local hs = require('himalaya_sync')
local RECORD = [[
  _G.lines = {}
  vim.api.nvim_create_autocmd('User', { pattern = 'HimalayaSyncProgress', callback = function()
    local l = require('himalaya_sync').statusline()
    if l ~= '' and l ~= _G.lines[#_G.lines] then table.insert(_G.lines, l) end
  end })
]]

T.case('two instances show the same counts during one sync', function()
  loadstring(RECORD)()
  -- The plan's auto_takeover is written to the service at setup; its timeout is the service's.
  hs.setup({ bin = T.bin, accounts = { 'alice' }, sync_handoff = { auto_takeover = true, auto_takeover_timeout = 60 } })
  local child = T.child()
  child.lua(RECORD)
  child.lua('require("himalaya_sync").setup(...)', { bin = T.bin, accounts = { 'alice' } })
  T.wait('both instances to see the service', 10000, function()
    return hs.status().up and child.lua('return require("himalaya_sync").status().up')
  end)
  T.wait('AutoTakeover on in the other instance', 5000, function()
    return child.lua('return require("himalaya_sync").status().auto_takeover') == true
  end)
  T.eq(#T.notified(notes, 'auto_takeover_timeout is 60 s, but the service decides and uses 300 s'), 1)
  vim.cmd('HimalayaSync alice')
  T.wait('a count here', 20000, function()
    return hs.statusline():find('^Syncing alice: %d+/%d+ emails$') ~= nil
  end)
  -- Mid-sync, the other instance shows what this one shows (within one update).
  T.wait('the same line there', 2000, function()
    return child.lua('return require("himalaya_sync").statusline()') == hs.statusline()
  end)
  T.wait('the sync to end', 60000, function()
    return hs.progress('alice').state == 'idle' and child.lua('return require("himalaya_sync").progress("alice").state') == 'idle'
  end)
  local there = child.lua('return _G.lines')
  T.ok(#_G.lines >= 3, 'several lines: ' .. vim.inspect(_G.lines))
  T.eq(there, _G.lines, 'the same sequence of status lines in both instances')
  T.eq(child.lua('return require("himalaya_sync").progress("alice")'), hs.progress('alice'), 'the same final record')
  child.quit()
end)

T.finish()
