-- himalaya-sync for Neovim: live progress of mbsync syncs supervised by the himalaya-sync
-- service, the takeover prompt for syncs that run elsewhere, and the sync-handoff plan's
-- commands and functions, so a Himalaya sidebar can switch to this backend without a rewrite.
--
-- One `himalaya-sync watch --json` job per instance feeds a model (model.lua); the status
-- line, fidget/vim.notify (ui.lua) and the prompt (prompt.lua) are views of it; actions run
-- the binary's client commands (client.lua). Any number of instances agree, because the service
-- holds the state, including AutoTakeover.

local config = require('himalaya_sync.config')
local model = require('himalaya_sync.model')
local client = require('himalaya_sync.client')
local prompt = require('himalaya_sync.prompt')
local ui = require('himalaya_sync.ui')

local M = {}
local H = {
  opts = nil, ---@type HimalayaSyncOptions|nil
  state = model.new(),
  watch = nil, ---@type HimalayaSyncWatch|nil
  sinks = nil,
  redraw = nil,
  line = '',
  prompted = {}, -- run keys a prompt was shown for
  external = {}, -- account -> info of the external sync it shows now
  ended = {}, -- account -> info of an external sync that ended as the service would take it over
  taking = {}, -- accounts this instance asked the service to take over
  down_warned = false,
  timeout_warned = false,
}
local WARN, ERROR, INFO = vim.log.levels.WARN, vim.log.levels.ERROR, vim.log.levels.INFO
local notify = ui.notify

--- Set up (or set up again) the client.
---@param opts table|nil see :help himalaya-sync-options
function M.setup(opts)
  local c = config.resolve(opts)
  H.teardown()
  H.opts = c
  H.state = model.new()
  H.line, H.prompted, H.external, H.ended, H.taking = '', {}, {}, {}, {}
  H.down_warned, H.timeout_warned = false, false
  H.sinks = ui.sinks(c)
  H.redraw = ui.redrawer(c.sync_handoff.progress_write_interval * 100, function()
    vim.cmd('redrawstatus')
  end)
  local group = vim.api.nvim_create_augroup('HimalayaSync', { clear = true })
  vim.api.nvim_create_autocmd('VimLeavePre', { group = group, callback = H.teardown })
  H.create_commands()
  H.watch = client.watch(c.bin, H.on_event, H.on_problem)
  if c.sync_handoff.auto_takeover ~= nil then
    H.set_auto_takeover(c.sync_handoff.auto_takeover)
  end
  return M
end

function H.teardown()
  if H.watch then
    H.watch:stop()
    H.watch = nil
  end
  client.kill_all()
  if H.sinks then
    H.sinks:close()
  end
  if H.redraw then
    H.redraw.stop()
  end
  prompt.close()
end

local function need_setup()
  if not H.opts then
    notify('call require("himalaya_sync").setup() first', ERROR)
    return true
  end
end

function H.shown_names()
  return model.shown(H.state, H.opts and H.opts.accounts)
end

function H.is_shown(name)
  return H.opts and (H.opts.accounts == nil or vim.tbl_contains(H.opts.accounts, name))
end

function H.on_problem(msg)
  if msg then
    notify(msg, ERROR)
  end
end

function H.on_event(ev)
  local changed = model.apply(H.state, ev)
  if ev.event == 'service' then
    if not ev.up and not H.down_warned then
      H.down_warned = true
      -- One short line (a longer one stops Neovim at a hit-enter prompt); :checkhealth says how
      -- to start it.
      notify('the service is not running; waiting for it (:checkhealth himalaya_sync)', WARN)
    elseif ev.up and H.down_warned then
      H.down_warned = false
      notify('the service is back')
    end
  elseif ev.event == 'state' then
    H.check_timeout(ev.auto_takeover_timeout)
  elseif ev.event == 'finished' and H.is_shown(ev.account) then
    H.sinks:finished(ev.account, ev.ok, ev.message, H.state.accounts[ev.account])
  end
  for _, name in ipairs(changed) do
    if H.is_shown(name) then
      local record = H.state.accounts[name]
      H.sinks:progress(name, record or { state = 'idle' }, H.taking[name])
      vim.api.nvim_exec_autocmds('User', {
        pattern = 'HimalayaSyncProgress',
        modeline = false,
        data = { account = name, progress = record },
      })
      H.detect(name, record)
    end
  end
  local line = M.statusline()
  if line ~= H.line then
    H.line = line
    H.redraw.request()
  end
end

function H.check_timeout(service_timeout)
  local mine = H.opts.sync_handoff.auto_takeover_timeout
  if mine and service_timeout and mine ~= service_timeout and not H.timeout_warned then
    H.timeout_warned = true
    notify(
      ('sync_handoff.auto_takeover_timeout is %d s, but the service decides and uses %d s: set '
        .. 'auto_takeover_timeout = %d in ~/.config/himalaya-sync/config.toml'):format(mine, service_timeout, mine),
      WARN
    )
  end
end

-- An external sync appeared, changed or ended on a shown account.
function H.detect(name, record)
  if not H.opts.sync_handoff.enabled then
    return
  end
  if model.is_external(record) then
    local info = model.external_info(name, record, os.time())
    H.external[name] = info
    H.ended[name] = nil
    -- One prompt per external sync, and one more if it turns out stuck.
    local key = info.key .. (info.likely_stuck and ':stuck' or '')
    if H.prompted[key] or H.state.auto_takeover then
      return
    end
    -- A window cannot open under textlock (the command line, a completion menu): then the next
    -- change of this sync tries again.
    if pcall(M.show_takeover_prompt, info) then
      H.prompted[key] = true
      H.prompted[info.key] = true
    end
    return
  end
  local was = H.external[name]
  if was then
    H.external[name] = nil
    if prompt.open_key() == was.key then
      prompt.close() -- it ended or was taken over: nothing left to ask
    end
    -- A takeover shows as external -> idle (stopped) -> syncing (restarted), so what ended is
    -- remembered until the service's run shows up. Only an overdue or stuck sync is taken over
    -- by the service itself, and only with AutoTakeover on.
    H.ended[name] = was.likely_stuck and H.state.auto_takeover and not H.taking[name] and was or nil
  end
  if record and record.owner == 'service' and model.is_active(record) then
    if H.ended[name] then
      notify(('%s: the service took over the sync that ran elsewhere (AutoTakeover)'):format(name))
    end
    H.ended[name] = nil
    H.taking[name] = nil
  end
end

-- Argument completion for the commands: the accounts the service knows.
function H.complete(arglead)
  return vim.tbl_filter(function(n)
    return vim.startswith(n, arglead)
  end, H.shown_names())
end

function H.first(pred)
  for _, name in ipairs(H.shown_names()) do
    if pred(H.state.accounts[name]) then
      return name
    end
  end
end

function H.set_auto_takeover(on, after)
  client.run(H.opts.bin, { 'auto-takeover', on and 'on' or 'off' }, function(r)
    if not r.ok then
      notify('cannot set AutoTakeover: ' .. r.message, WARN)
    end
    if after then
      after(r)
    end
  end)
end

function H.create_commands()
  local cmd = function(name, fn, desc, nargs)
    vim.api.nvim_create_user_command(name, function(a)
      fn(a.args ~= '' and a.args or nil)
    end, { nargs = nargs or '?', complete = nargs ~= 0 and H.complete or nil, desc = desc })
  end
  cmd('HimalayaTakeoverSync', M.takeover_external_sync, 'Take control of a sync that runs elsewhere')
  cmd('HimalayaRequestHandoff', M.request_sync_handoff, 'Ask the lock holder to hand its sync over')
  cmd('HimalayaExternalSyncInfo', M.show_external_sync_info, 'Show the syncs that run elsewhere')
  cmd('HimalayaToggleAutoTakeover', M.toggle_auto_takeover, "Flip the service's AutoTakeover", 0)
  cmd('HimalayaSync', M.sync, 'Sync an account under the service')
  cmd('HimalayaSyncCancel', M.cancel, "Stop the service's sync of an account")
end

-- Public API -----------------------------------------------------------------------------------

--- A short text for the status line or a sidebar header; empty while nothing syncs:
--- `Syncing alice: 15/98 emails`, `Syncing (external) alice: 15/98 emails`, `... (stuck)`.
---@return string
function M.statusline()
  if not H.opts then
    return ''
  end
  return model.status_line(H.state, H.shown_names(), H.opts.sync_handoff.show_external_progress)
end

--- The plan's `get_sync_status_line()`: the status line text, or nil when nothing syncs.
---@return string|nil
function M.get_sync_status_line()
  local line = M.statusline()
  return line ~= '' and line or nil
end

--- The last record of an account (a copy), or nil.
function M.progress(account)
  local r = H.state.accounts[account]
  return r and vim.deepcopy(r) or nil
end

--- Whether the service answers, its AutoTakeover switch, and the watch job (health, tests).
function M.status()
  return {
    up = H.state.up,
    auto_takeover = H.state.auto_takeover,
    watch_pid = H.watch and H.watch:pid() or nil,
    processes = client.live_count(),
    accounts = vim.tbl_keys(H.state.accounts),
  }
end

local function external_account(account)
  if account then
    return model.is_external(H.state.accounts[account]) and account or nil
  end
  return H.first(model.is_external)
end

--- The plan's `analyze_external_sync()`: { pid, runtime = "MM:SS", command, likely_stuck } (and
--- account, owner, stuck, overdue) of the first shown account synced elsewhere, or nil.
---@param account string|nil
---@return table|nil
function M.analyze_external_sync(account)
  local name = external_account(account)
  return name and model.external_info(name, H.state.accounts[name], os.time()) or nil
end

--- The plan's `detect_external_sync()`: whether a sync runs elsewhere, and its info.
---@return boolean, table|nil
function M.detect_external_sync()
  local info = M.analyze_external_sync()
  return info ~= nil, info
end

--- The plan's `read_external_progress()`: { pid, start_time, command, progress = {
--- current_operation, messages_processed, messages_total, current_folder, channels_done,
--- channels_total }, last_update }, or nil. Live from the service, so never stale.
---@param account string|nil
---@return table|nil
function M.read_external_progress(account)
  local name = external_account(account)
  return name and model.external_progress(H.state.accounts[name]) or nil
end

--- The plan's takeover prompt for `info` (default: the current external sync). Returns its
--- window and buffer, or nil when nothing runs elsewhere.
---@param info table|nil
function M.show_takeover_prompt(info)
  if need_setup() then
    return
  end
  info = info or M.analyze_external_sync()
  if not info then
    notify('no sync runs elsewhere')
    return
  end
  return prompt.show(info, { graceful = H.opts.sync_handoff.graceful_handoff }, function(choice)
    if choice == 'yes' then
      M.takeover_external_sync(info.account)
    elseif choice == 'auto' then
      H.set_auto_takeover(true, function()
        M.takeover_external_sync(info.account)
      end)
    end
  end)
end

-- Report a takeover or handoff that ended; AlreadySyncing (another instance won) is success.
local function report(account, r, on_done)
  -- H.detect clears it when the service's run shows up; if that came first, clear it here.
  if not (r.ok or r.error == 'AlreadySyncing') or not model.is_external(H.state.accounts[account]) then
    H.taking[account] = nil
  end
  if r.ok then
    -- Without the stopped command line (the prompt and :HimalayaExternalSyncInfo show it): a
    -- notice wider than the screen stops Neovim at a hit-enter prompt mid-sync.
    local message = r.message:gsub('(, ran %d+ s): .-(%); now syncing)', '%1%2')
    notify(message ~= '' and message or (account .. ': the service runs the sync now'))
  elseif r.error == 'AlreadySyncing' then
    notify(account .. ': the service runs the sync already')
  elseif r.error == 'NotRunning' then
    notify(account .. ': nothing to take over: the sync has ended')
  else
    notify(account .. ': ' .. r.message, ERROR)
  end
  if on_done then
    on_done(r.ok or r.error == 'AlreadySyncing', r)
  end
end

local function force(account, on_done)
  client.run(H.opts.bin, { 'takeover', account, '--no-wait' }, function(r)
    report(account, r, on_done)
  end)
end

-- Ask the holder of `account`'s locks to hand over; `on_result(r)` gets the command's result.
local function handoff(account, on_result)
  local args = { 'handoff', account, '--timeout', tostring(H.opts.handoff_timeout), '--no-wait' }
  client.run(H.opts.bin, args, on_result)
end

-- The account a takeover or handoff is for (the named one, else the first synced elsewhere),
-- marked as taken over by this instance; nil (and a notice) when there is none.
local function takeover_target(account)
  if need_setup() then
    return nil
  end
  local name = external_account(account) or account
  if not name then
    notify('no sync runs elsewhere')
    return nil
  end
  H.taking[name] = true
  return name
end

--- The plan's `takeover_external_sync()`: take control of the sync that runs elsewhere. With
--- graceful_handoff a lock holder is asked to hand over first and forced only if it refuses or
--- times out; a bare mbsync is stopped safely. Returns whether a request was made;
--- `on_done(ok, result)` follows.
---@param account string|nil
---@param on_done fun(ok: boolean, r: table)|nil
---@return boolean
function M.takeover_external_sync(account, on_done)
  local name = takeover_target(account)
  if not name then
    return false
  end
  local record = H.state.accounts[name]
  if not (H.opts.sync_handoff.graceful_handoff and record and record.owner == 'client') then
    force(name, on_done)
    return true
  end
  handoff(name, function(r)
    if r.error == 'HandoffRefused' or r.error == 'HandoffTimeout' then
      notify(('%s: %s; taking it over'):format(name, r.message), WARN)
      force(name, on_done)
    else
      report(name, r, on_done)
    end
  end)
  return true
end

--- The plan's `request_sync_handoff()`: ask the lock holder to hand over gracefully (nothing is
--- killed; a bare mbsync cannot be asked: use takeover). Returns whether it was asked.
---@param account string|nil
---@param on_done fun(ok: boolean, r: table)|nil
---@return boolean
function M.request_sync_handoff(account, on_done)
  local name = takeover_target(account)
  if not name then
    return false
  end
  handoff(name, function(r)
    report(name, r, on_done)
  end)
  return true
end

--- :HimalayaExternalSyncInfo: what runs elsewhere, with its progress.
function M.show_external_sync_info(account)
  if need_setup() then
    return
  end
  local lines, seen = {}, {}
  for _, name in ipairs(account and { account } or H.shown_names()) do
    local r = H.state.accounts[name]
    if model.is_external(r) and not seen[model.run_key(r)] then
      seen[model.run_key(r)] = true
      local info = model.external_info(name, r, os.time())
      table.insert(
        lines,
        ('%s: %s, PID %s, running %s%s%s'):format(
          name,
          info.command or 'mbsync',
          tostring(info.pid),
          info.runtime or '?',
          model.detail(r) and (', ' .. model.detail(r)) or '',
          info.likely_stuck and ', appears stuck' or ''
        )
      )
    end
  end
  if #lines == 0 then
    notify('no sync runs elsewhere')
  else
    notify('syncs that run elsewhere:\n' .. table.concat(lines, '\n'))
  end
  return lines
end

--- :HimalayaToggleAutoTakeover: flip the service's AutoTakeover (every instance sees it).
function M.toggle_auto_takeover(_, on_done)
  if need_setup() then
    return
  end
  client.run(H.opts.bin, { 'auto-takeover', 'toggle' }, function(r)
    if r.ok then
      notify('AutoTakeover is ' .. vim.trim(r.stdout))
    else
      notify('cannot toggle AutoTakeover: ' .. r.message, ERROR)
    end
    if on_done then
      on_done(r.ok, r)
    end
  end)
end

--- :HimalayaSync [account]: a supervised sync (default: the first configured account).
function M.sync(account, on_done)
  if need_setup() then
    return
  end
  account = account or (H.opts.accounts and H.opts.accounts[1])
  if not account then
    notify('which account? :HimalayaSync ACCOUNT (or set accounts in setup())', WARN)
    return
  end
  client.run(H.opts.bin, { 'sync', account, '--no-wait' }, function(r)
    if not r.ok then
      local hint = r.error == 'LockedElsewhere' and ' (:HimalayaTakeoverSync takes it over)' or ''
      notify(account .. ': ' .. r.message .. hint, r.error == 'AlreadySyncing' and INFO or ERROR)
    end
    if on_done then
      on_done(r.ok, r)
    end
  end)
end

--- :HimalayaSyncCancel [account]: stop the service's sync safely (default: the one running).
function M.cancel(account, on_done)
  if need_setup() then
    return
  end
  account = account
    or H.first(function(r)
      return model.is_active(r) and r.owner == 'service'
    end)
  if not account then
    notify('the service syncs nothing now')
    return
  end
  client.run(H.opts.bin, { 'cancel', account }, function(r)
    if not r.ok then
      notify(account .. ': ' .. r.message, WARN)
    end
    if on_done then
      on_done(r.ok, r)
    end
  end)
end

M._H = H -- for tests and :checkhealth only

return M
