-- Where progress shows besides statusline(): fidget.nvim's progress handles when it is
-- installed, otherwise vim.notify for a sync's start, end and failure only; and the status
-- line redraw, which happens only on change and at most once per refresh interval.

local model = require('himalaya_sync.model')

local M = {}

--- `msg` cut to `width` display cells, ending in '…' when cut.
function M.fit(msg, width)
  if width < 2 or vim.fn.strdisplaywidth(msg) <= width then
    return msg
  end
  -- '…' takes two cells with 'ambiwidth' double.
  local room = width - vim.fn.strdisplaywidth('…')
  local cut = vim.fn.strcharpart(msg, 0, room)
  while vim.fn.strdisplaywidth(cut) > room do
    cut = vim.fn.strcharpart(cut, 0, vim.fn.strchars(cut) - 1)
  end
  return cut .. '…'
end

-- Whether vim.notify is Neovim's own, which echoes on the command line.
local function builtin_notify()
  -- nvim-notify's `vim.notify = require('notify')` is a callable table.
  if type(vim.notify) ~= 'function' then
    return false
  end
  local info = debug.getinfo(vim.notify, 'S')
  return info ~= nil and info.source ~= nil and info.source:find('vim/_editor.lua', 1, true) ~= nil
end

local function notify(msg, level)
  level = level or vim.log.levels.INFO
  msg = '(himalaya-sync) ' .. msg
  -- Neovim's own vim.notify echoes on the command line, and a notice wider than it stops Neovim
  -- at a hit-enter prompt (seen under tmux at 100 columns after a takeover's "Y"). A notice is
  -- cut to fit; an error is shown whole, to be read. Notification plugins get it whole.
  if level < vim.log.levels.ERROR and builtin_notify() then
    msg = M.fit(msg, vim.v.echospace)
  end
  vim.notify(msg, level, { title = 'himalaya-sync' })
end
M.notify = notify

---@class HimalayaSyncSinks
---@field fidget table|nil fidget.progress, when used
---@field handles table<string, table> account -> fidget handle of its running sync
---@field notify boolean
local Sinks = {}
Sinks.__index = Sinks

--- Progress sinks for the options: fidget if wanted and installed.
function M.sinks(opts)
  local fidget = nil
  if opts.fidget then
    local ok, mod = pcall(require, 'fidget.progress')
    if ok and type(mod) == 'table' and mod.handle then
      fidget = mod
    end
  end
  return setmetatable({ fidget = fidget, handles = {}, notify = opts.notify, running = {} }, Sinks)
end

local function title(name, record)
  return (record.state == 'external' and 'Syncing (external) ' or 'Syncing ') .. name
end

local function percentage(record)
  return type(record.percent) == 'number' and math.floor(record.percent) or nil
end

--- An account's record changed. `quiet`: no start notice (a takeover's own notice says it).
function Sinks:progress(name, record, quiet)
  local active = model.is_active(record)
  if self.fidget then
    local h = self.handles[name]
    if active and not h then
      local ok, handle = pcall(self.fidget.handle.create, {
        title = title(name, record),
        message = model.detail(record) or record.state,
        percentage = percentage(record),
        lsp_client = { name = 'himalaya-sync' },
      })
      if ok then
        self.handles[name] = handle
      end
    elseif active and h then
      pcall(h.report, h, { message = (model.detail(record) or record.state) .. (model.is_stuck(record) and ' (stuck)' or ''), percentage = percentage(record) })
    elseif h then
      self.handles[name] = nil
      pcall(h.finish, h)
    end
    return
  end
  -- vim.notify: only the start of the service's own sync (its end comes as `finished`).
  local own = active and record.state ~= 'external'
  -- Two notices in a row stop Neovim at a hit-enter prompt: one per event a person needs.
  if own and not self.running[name] and self.notify and not quiet then
    notify(name .. ': sync started')
  end
  self.running[name] = own or nil
end

--- A supervised sync ended. Failures always reach vim.notify (fidget shows progress, not errors);
--- a cancelled or interrupted run (the service stopped; it resumes the run when it is back) is no
--- failure: the record that came just before says which it was.
function Sinks:finished(name, ok, message, record)
  self.running[name] = nil
  local result = record and record.last_result
  if ok then
    if self.notify and not self.fidget then
      local counts = record and record.messages_total
          and (' (%d/%d emails)'):format(record.messages_done or 0, record.messages_total)
        or ''
      notify(('%s: %s%s'):format(name, message, counts))
    end
  elseif result == 'interrupted' then
    notify(('%s: %s'):format(name, message))
  elseif result ~= 'cancelled' then
    notify(('%s: sync failed: %s'):format(name, message), vim.log.levels.ERROR)
  end
end

--- Finish every open handle (VimLeavePre, setup() again).
function Sinks:close()
  for name, h in pairs(self.handles) do
    self.handles[name] = nil
    pcall(h.finish, h)
  end
end

--- A redraw limiter: `request()` redraws the status line now if the last redraw is at least
--- `interval_ms` old, else once when it is (one one-shot timer, never a periodic one).
function M.redrawer(interval_ms, redraw)
  local uv = vim.uv or vim.loop
  local last, timer = -math.huge, nil
  local self = {}
  function self.request()
    if timer then
      return
    end
    local wait = last + interval_ms - uv.now()
    if wait <= 0 then
      last = uv.now()
      redraw()
      return
    end
    timer = vim.defer_fn(function()
      timer = nil
      last = uv.now()
      redraw()
    end, wait)
  end
  function self.stop()
    if timer then
      timer:stop()
      if not timer:is_closing() then
        timer:close()
      end
      timer = nil
    end
  end
  return self
end

return M
