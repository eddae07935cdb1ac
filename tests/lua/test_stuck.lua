-- Scenario 2, stuck sync: a bare mbsync runs past the service's auto_takeover_timeout (2 s
-- here). The first prompt has no warning; once overdue a second one warns and suggests [A]uto.
-- A answers: AutoTakeover goes on (a second instance sees it) and the service takes over. Then,
-- with AutoTakeover on, the next external sync gets no prompt: the service takes it over by
-- itself and a notice says so. The toggle command turns it off again, seen by both instances.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local notes = T.record_notify()
local hs = require('himalaya_sync')
local prompt = require('himalaya_sync.prompt')

local shown = 0
local show = prompt.show
prompt.show = function(...)
  shown = shown + 1
  return show(...)
end

local function prompt_text()
  local _, buf = prompt.window()
  return buf and table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n') or nil
end

local child

T.case('a first prompt, then a stuck warning with the auto-takeover suggestion', function()
  hs.setup({ bin = T.bin, accounts = { 'alice' } })
  child = T.child({ bin = T.bin, accounts = { 'alice' } })
  T.wait('the first prompt', 10000, function()
    return prompt.window() ~= nil
  end)
  local first = prompt_text()
  if not first:find('appears stuck') then
    T.eq(hs.analyze_external_sync().likely_stuck, false)
    vim.api.nvim_feedkeys('N', 'x', false)
    T.ok(prompt.window() == nil, 'N closes the prompt')
    T.wait('the stuck prompt', 10000, function()
      return prompt.window() ~= nil
    end)
  end
  local text = prompt_text()
  T.matches(text, '! This sync appears stuck: it has run longer than the auto%-takeover timeout')
  T.matches(text, '%[A%]uto would let the service take stuck syncs like this over by itself')
  T.eq(hs.analyze_external_sync().likely_stuck, true)
  T.matches(hs.statusline(), '^Syncing %(external%) alice.*%(stuck%)$')
  T.eq(hs.status().auto_takeover, false)
  vim.wait(1500) -- more progress of the same sync: no further prompt
  T.eq(shown, first:find('appears stuck') and 1 or 2, 'one prompt per sync, one more once stuck')
end)

T.case('A: AutoTakeover on everywhere, and this sync taken over', function()
  vim.api.nvim_feedkeys('A', 'x', false)
  T.wait('the service to sync alice', 20000, function()
    local r = hs.progress('alice')
    return r.owner == 'service' and r.state == 'syncing'
  end)
  T.wait('AutoTakeover on here', 5000, function()
    return hs.status().auto_takeover == true
  end)
  T.wait('AutoTakeover on in the other instance', 5000, function()
    return child.lua('return require("himalaya_sync").status().auto_takeover') == true
  end)
  T.wait('the sync to end', 60000, function()
    return hs.progress('alice').state == 'idle'
  end)
  T.eq(hs.progress('alice').last_result, 'ok')
end)

T.case('AutoTakeover on: no prompt, the service takes an overdue sync over and says so', function()
  T.handshake('again', 'started')
  T.wait('the new external sync', 10000, function()
    return hs.detect_external_sync()
  end)
  T.wait('the service to take it over by itself', 20000, function()
    local r = hs.progress('alice')
    return r.owner == 'service' and r.state == 'syncing'
  end)
  T.ok(prompt.window() == nil, 'no prompt while AutoTakeover is on')
  T.wait('the notice', 5000, function()
    return #T.notified(notes, 'alice: the service took over the sync that ran elsewhere %(AutoTakeover%)') == 1
  end)
  T.wait('the sync to end', 60000, function()
    return hs.progress('alice').state == 'idle'
  end)
end)

T.case(':HimalayaToggleAutoTakeover flips it for every instance', function()
  vim.cmd('HimalayaToggleAutoTakeover')
  T.wait('AutoTakeover off here', 5000, function()
    return hs.status().auto_takeover == false
  end)
  T.wait('AutoTakeover off there', 5000, function()
    return child.lua('return require("himalaya_sync").status().auto_takeover') == false
  end)
  T.wait('the notice', 5000, function()
    return #T.notified(notes, 'AutoTakeover is off') == 1
  end)
  child.quit()
end)

T.finish()
