-- The client's processes: one long `himalaya-sync watch --json` job per Neovim instance, and
-- short client commands (sync, cancel, takeover, handoff, auto-takeover) for actions. It never
-- speaks D-Bus or parses busctl: the binary's own client commands are the contract.
--
-- `watch` follows the service across its restarts by itself (service up/down events), so the
-- job is restarted only when the job itself dies (binary missing, bus gone), with backoff.

local M = {}

-- Live processes, so that quitting Neovim leaves none behind.
local live = {}

---@class HimalayaSyncWatch
---@field bin string
---@field on_event fun(ev: table)
---@field on_problem fun(msg: string|nil) nil: the problem is over
---@field proc vim.SystemObj|nil
---@field timer uv.uv_timer_t|nil
local Watch = {}
Watch.__index = Watch

local BACKOFF_FIRST, BACKOFF_MAX = 1000, 30000

--- Start the watch job. `on_event` gets each decoded JSON line (on the main loop);
--- `on_problem(msg)` is called once when the job cannot run or died, `on_problem(nil)` once it
--- runs again.
---@return HimalayaSyncWatch
function M.watch(bin, on_event, on_problem)
  local self = setmetatable({
    bin = bin,
    on_event = on_event,
    on_problem = on_problem,
    backoff = BACKOFF_FIRST,
    stopped = false,
    troubled = false,
  }, Watch)
  self:spawn()
  return self
end

function Watch:problem(msg)
  if not self.troubled then
    self.troubled = true
    self.on_problem(msg)
  end
end

function Watch:line(line)
  if line == '' then
    return
  end
  local ok, ev = pcall(vim.json.decode, line, { luanil = { object = true, array = true } })
  if not ok or type(ev) ~= 'table' then
    return
  end
  if self.troubled then
    self.troubled = false
    self.on_problem(nil)
  end
  self.backoff = BACKOFF_FIRST
  self.on_event(ev)
end

function Watch:spawn()
  self.timer = nil
  if self.stopped then
    return
  end
  local pending, stderr = '', ''
  local ok, proc = pcall(vim.system, { self.bin, 'watch', '--json' }, {
    text = true,
    stdout = function(_, data)
      if not data then
        return
      end
      local text, lines, rest = pending .. data, {}, 1
      for line, next_at in text:gmatch('([^\n]*)\n()') do
        table.insert(lines, line)
        rest = next_at
      end
      pending = text:sub(rest)
      if #lines > 0 then
        vim.schedule(function()
          for _, line in ipairs(lines) do
            self:line(line)
          end
        end)
      end
    end,
    stderr = function(_, data)
      if data then
        stderr = (stderr .. data):sub(-2000)
      end
    end,
  }, function(obj)
    vim.schedule(function()
      self:exited(obj, stderr)
    end)
  end)
  if not ok then
    self:problem(('cannot run %s (%s): install himalaya-sync or set the bin option'):format(
      self.bin,
      tostring(proc):gsub('^.-: ', '')
    ))
    self:retry()
    return
  end
  self.proc = proc
  live[proc] = true
end

function Watch:exited(obj, stderr)
  if self.proc then
    live[self.proc] = nil
  end
  self.proc = nil
  if self.stopped then
    return
  end
  local reason = vim.trim(stderr):match('[^\n]*$')
  self:problem(('the watch job ended (exit %d)%s; restarting it'):format(
    obj.code,
    reason ~= '' and (': ' .. reason:gsub('^himalaya%-sync: ', '')) or ''
  ))
  -- The service is gone from the model until the new job reports.
  self.on_event({ event = 'service', up = false })
  self:retry()
end

function Watch:retry()
  if self.stopped then
    return
  end
  local delay = self.backoff
  self.backoff = math.min(self.backoff * 2, BACKOFF_MAX)
  self.timer = vim.defer_fn(function()
    self:spawn()
  end, delay)
end

--- Stop the job for good (VimLeavePre, a new setup()).
function Watch:stop()
  self.stopped = true
  if self.timer then
    self.timer:stop()
    if not self.timer:is_closing() then
      self.timer:close()
    end
    self.timer = nil
  end
  if self.proc then
    live[self.proc] = nil
    self.proc:kill('sigterm')
    self.proc = nil
  end
end

--- Whether the job runs now (for health checks and tests).
function Watch:running()
  return self.proc ~= nil
end

--- The pid of the job, or nil.
function Watch:pid()
  return self.proc and self.proc.pid or nil
end

---@class HimalayaSyncResult
---@field ok boolean
---@field code integer
---@field error string|nil The org.himalaya.Sync.Error.* name's last part, e.g. "AlreadySyncing".
---@field message string What the command said (stderr's last line, else stdout's).
---@field stdout string

--- Parse a finished client command.
---@return HimalayaSyncResult
function M.result(code, stdout, stderr)
  stdout, stderr = stdout or '', stderr or ''
  local last = function(s)
    return (vim.trim(s):match('[^\n]*$') or ''):gsub('^himalaya%-sync: ', '')
  end
  local message = last(stderr)
  if code == 0 or message == '' then
    message = last(stdout) ~= '' and last(stdout) or message
  end
  return {
    ok = code == 0,
    code = code,
    error = stderr:match('org%.himalaya%.Sync%.Error%.(%a+)'),
    -- People get the words; the error name is in `error`.
    message = (message:gsub('^org%.himalaya%.Sync%.Error%.%a+: ', '')),
    stdout = stdout,
  }
end

--- Run `bin ARGS...`; `on_done(result)` on the main loop. Arguments are an argv, never a shell.
---@param bin string
---@param args string[]
---@param on_done fun(r: HimalayaSyncResult)|nil
function M.run(bin, args, on_done)
  local argv = vim.list_extend({ bin }, args)
  local proc
  local ok, err = pcall(function()
    proc = vim.system(argv, { text = true }, function(obj)
      vim.schedule(function()
        live[proc] = nil
        if on_done then
          on_done(M.result(obj.code, obj.stdout, obj.stderr))
        end
      end)
    end)
  end)
  if not ok then
    local r = { ok = false, code = -1, message = ('cannot run %s: %s'):format(bin, tostring(err)), stdout = '' }
    if on_done then
      vim.schedule(function()
        on_done(r)
      end)
    end
    return
  end
  live[proc] = true
end

--- Kill every process this client started (VimLeavePre).
function M.kill_all()
  for proc in pairs(live) do
    live[proc] = nil
    pcall(proc.kill, proc, 'sigterm')
  end
end

--- The number of live processes this client started.
function M.live_count()
  return vim.tbl_count(live)
end

return M
