-- The service restarts mid-sync (SIGTERM, as on an upgrade): the status line empties while it
-- is gone, one warning says so (no error storm), and it recovers by itself when the new daemon
-- resumes the sync, to an exact end.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local notes = T.record_notify()
local hs = require('himalaya_sync')
local empty_while_down = nil

T.case('the status line recovers after a restart', function()
  hs.setup({ bin = T.bin, accounts = { 'alice' } })
  vim.api.nvim_create_autocmd('User', {
    pattern = 'HimalayaSyncProgress',
    callback = function()
      if hs.status().up == false then
        empty_while_down = hs.statusline() == ''
      end
    end,
  })
  local watch = hs.status().watch_pid
  vim.cmd('HimalayaSync alice')
  T.wait('the sync', 20000, function()
    return hs.statusline():find('^Syncing alice') ~= nil
  end)
  T.handshake('syncing', 'restarted')
  T.wait('the resumed sync', 20000, function()
    return hs.status().up and hs.statusline():find('^Syncing alice') ~= nil
  end)
  T.eq(empty_while_down, true, 'nothing shown while the service was down')
  T.wait('the end', 60000, function()
    return hs.progress('alice').state == 'idle'
  end)
  T.eq(hs.progress('alice').last_result, 'ok')
  T.eq(hs.progress('alice').messages_done, hs.progress('alice').messages_total)
  T.eq(#T.notified(notes, 'the service is not running'), 1, 'one warning')
  T.eq(#T.notified(notes, '%) the service is back$'), 1)
  T.eq(#T.notified(notes, 'sync failed'), 0, 'an interruption is no failure')
  T.eq(hs.status().watch_pid, watch, 'the same watch job followed the restart')
end)

T.finish()
