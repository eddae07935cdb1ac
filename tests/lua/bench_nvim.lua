-- The Neovim client's budget (run by `cargo bench --bench nvim`, not a test): when each
-- ProgressChanged reached the client's model (and so statusline()), and an idle phase for the
-- wakeup count. arg[1] = "plugin" or "baseline" (plain Neovim, for the idle wakeups).
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
T.record_notify()
local mode = arg[1] or 'plugin'
local function now_us()
  local t = vim.uv.clock_gettime('realtime')
  return t.sec * 1e6 + t.nsec / 1e3
end

T.case(mode, function()
  if mode == 'plugin' then
    local hs = require('himalaya_sync')
    local seen = {}
    vim.api.nvim_create_autocmd('User', {
      pattern = 'HimalayaSyncProgress',
      callback = function(ev)
        local r = ev.data.progress
        if r and r.messages_done then
          -- statusline() is computed from the model this event just updated.
          table.insert(seen, { t = now_us(), done = r.messages_done, state = r.state, line = hs.statusline() })
        end
      end,
    })
    hs.setup({ bin = T.bin, accounts = { 'alice' } })
    T.wait('the service', 10000, function()
      return hs.status().up
    end)
    T.handshake('ready', 'go')
    T.wait('the end of the sync', 180000, function()
      local r = hs.progress('alice')
      return r and r.state == 'idle' and r.last_result == 'ok'
    end)
    vim.fn.writefile({ vim.json.encode(seen) }, T.dir .. '/latency.json')
  end
  -- Idle: no polling here (vim.wait checks its condition only after the interval).
  vim.fn.writefile({}, T.dir .. '/idle')
  vim.wait(7000, function()
    return false
  end, 60000)
end)

T.finish()
