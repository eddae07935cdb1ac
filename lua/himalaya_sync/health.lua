-- :checkhealth himalaya_sync: what the client needs, what is missing and how to fix it.

local M = {}

function M.check()
  local health = vim.health
  health.start('himalaya-sync')
  local v = vim.version()
  local nvim = ('%d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.10') == 1 then
    health.ok('Neovim ' .. nvim)
  else
    health.error('Neovim ' .. nvim .. ' is too old', { 'himalaya-sync needs Neovim 0.10 or newer (vim.system)' })
  end

  local H = require('himalaya_sync')._H
  local bin = H.opts and H.opts.bin or 'himalaya-sync'
  if not H.opts then
    health.warn('setup() has not been called', { 'add require("himalaya_sync").setup({}) to your config' })
  end
  if vim.fn.executable(bin) ~= 1 then
    health.error(('%s: not found or not executable'):format(bin), {
      'install it: cargo install --locked --path . (in the himalaya-sync checkout)',
      'or set the full path: setup({ bin = "/path/to/himalaya-sync" })',
    })
    return
  end
  local ok, version = pcall(function()
    return vim.system({ bin, '--version' }, { text = true }):wait(5000)
  end)
  if ok and version.code == 0 then
    health.ok(('%s: %s'):format(vim.fn.exepath(bin), vim.trim(version.stdout)))
  else
    health.error(('%s --version failed'):format(bin), { 'reinstall himalaya-sync' })
    return
  end

  local status = vim.system({ bin, 'status', '--json' }, { text = true }):wait(10000)
  if status.code == 0 then
    local doc = vim.json.decode(status.stdout)
    local names = vim.tbl_keys(doc.accounts or {})
    table.sort(names)
    health.ok('the service answers; accounts: ' .. (#names > 0 and table.concat(names, ', ') or 'none'))
    if #names == 0 then
      health.warn('the service found no accounts', { 'define Channel or Group sections in your mbsync config' })
    end
    if H.opts and H.opts.accounts then
      for _, a in ipairs(H.opts.accounts) do
        if not doc.accounts[a] then
          health.warn(('account %q is configured here but unknown to the service'):format(a), {
            'check the name against `himalaya-sync status` (channels and groups of your mbsync config)',
          })
        end
      end
    end
  else
    health.error('the service cannot be reached: ' .. vim.trim(status.stderr), {
      'start it: systemctl --user enable --now himalaya-sync',
      'or install the D-Bus activation file (README, Install) so it starts on first use',
    })
  end

  if H.watch then
    if H.watch:running() then
      health.ok(('the watch job runs (PID %d)'):format(H.watch:pid()))
    else
      health.warn('the watch job is not running; it is being restarted')
    end
  end
  if pcall(require, 'fidget.progress') then
    health.ok('fidget.nvim found: progress goes there')
  else
    health.info('fidget.nvim not installed: start, end and failures go to vim.notify')
  end
end

return M
