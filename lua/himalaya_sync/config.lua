-- Options of the Neovim client: defaults, and validation with errors a person can act on.
-- Pure: no jobs, no windows. `resolve(opts)` returns the merged table or raises one error
-- prefixed '(himalaya-sync)'.

local M = {}

---@class HimalayaSyncHandoffOptions
---@field enabled boolean Detect external syncs and offer the takeover prompt.
---@field auto_takeover boolean|nil When set, written to the service's AutoTakeover at setup.
---@field auto_takeover_timeout integer|nil The service's (config.toml); checked, not applied.
---@field show_external_progress boolean Show syncs that run elsewhere in the status line.
---@field share_progress boolean Always true in effect: the service shares progress.
---@field progress_write_interval integer Status line refresh limit, in 100 ms steps.
---@field graceful_handoff boolean Ask a lock holder to hand over before forcing a takeover.

---@class HimalayaSyncOptions
---@field bin string The himalaya-sync binary (a name in $PATH or a path).
---@field accounts string[]|nil Accounts to show; nil shows every account of the service.
---@field notify boolean vim.notify on start, finish and failure (when fidget is not used).
---@field fidget boolean Send progress to fidget.nvim when it is installed.
---@field handoff_timeout integer Milliseconds a lock holder gets to hand over.
---@field sync_handoff HimalayaSyncHandoffOptions

---@type HimalayaSyncOptions
M.defaults = {
  bin = 'himalaya-sync',
  accounts = nil,
  notify = true,
  fidget = true,
  handoff_timeout = 5000,
  sync_handoff = {
    enabled = true,
    auto_takeover = nil,
    auto_takeover_timeout = nil,
    show_external_progress = true,
    share_progress = true,
    progress_write_interval = 1,
    graceful_handoff = true,
  },
}

local function fail(msg)
  error('(himalaya-sync) ' .. msg, 0)
end

local function check(name, value, expected, optional)
  if value == nil then
    if optional then
      return
    end
    fail(('option %s is missing'):format(name))
  end
  if type(value) ~= expected then
    fail(('option %s must be a %s, got %s (%s)'):format(name, expected, type(value), vim.inspect(value)))
  end
end

local function positive_integer(name, value)
  check(name, value, 'number')
  if value < 1 or value ~= math.floor(value) then
    fail(('option %s must be a whole number of at least 1, got %s'):format(name, value))
  end
end

-- Every option, so a typo is an error instead of a silent default (the defaults hold nil ones).
local KEYS = {
  [''] = { 'bin', 'accounts', 'notify', 'fidget', 'handoff_timeout', 'sync_handoff' },
  ['sync_handoff.'] = {
    'enabled',
    'auto_takeover',
    'auto_takeover_timeout',
    'show_external_progress',
    'share_progress',
    'progress_write_interval',
    'graceful_handoff',
  },
}

local function no_unknown_keys(prefix, given)
  for key in pairs(given) do
    if not vim.tbl_contains(KEYS[prefix], key) then
      fail(('unknown option %s%s (known: %s)'):format(prefix, tostring(key), table.concat(KEYS[prefix], ', ')))
    end
  end
end

--- Merge `opts` over the defaults and validate every field.
---@param opts table|nil
---@return HimalayaSyncOptions
function M.resolve(opts)
  if opts == nil then
    opts = {}
  end
  if type(opts) ~= 'table' then
    fail(('setup() takes a table of options, got %s'):format(type(opts)))
  end
  no_unknown_keys('', opts)
  if opts.sync_handoff ~= nil then
    check('sync_handoff', opts.sync_handoff, 'table')
    no_unknown_keys('sync_handoff.', opts.sync_handoff)
  end
  local c = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  check('bin', c.bin, 'string')
  if c.bin == '' then
    fail('option bin must name the himalaya-sync binary, got an empty string')
  end
  if c.accounts ~= nil then
    check('accounts', c.accounts, 'table')
    if not vim.islist(c.accounts) then
      fail('option accounts must be a list of account names, e.g. { "work" }')
    end
    for i, a in ipairs(c.accounts) do
      if type(a) ~= 'string' or a == '' then
        fail(('option accounts[%d] must be an account name, got %s'):format(i, vim.inspect(a)))
      end
    end
  end
  check('notify', c.notify, 'boolean')
  check('fidget', c.fidget, 'boolean')
  positive_integer('handoff_timeout', c.handoff_timeout)
  local h = c.sync_handoff
  check('sync_handoff.enabled', h.enabled, 'boolean')
  check('sync_handoff.auto_takeover', h.auto_takeover, 'boolean', true)
  if h.auto_takeover_timeout ~= nil then
    positive_integer('sync_handoff.auto_takeover_timeout', h.auto_takeover_timeout)
  end
  check('sync_handoff.show_external_progress', h.show_external_progress, 'boolean')
  check('sync_handoff.share_progress', h.share_progress, 'boolean')
  positive_integer('sync_handoff.progress_write_interval', h.progress_write_interval)
  check('sync_handoff.graceful_handoff', h.graceful_handoff, 'boolean')
  return c
end

return M
