-- The client's model of the service, kept apart from jobs and windows (as fidget keeps its
-- notification model apart from its view) so it can be tested on plain tables.
--
-- It is fed the JSON events of `himalaya-sync watch --json`:
--   {"event":"state","accounts":{NAME:RECORD},"auto_takeover":B}  the whole state (first line,
--                                                                  and after a service restart)
--   {"event":"progress","account":NAME,"progress":RECORD}          one account's new record
--   {"event":"finished","account":NAME,"ok":B,"message":S}         a supervised sync ended
--   {"event":"service","up":B}                                     the service went or came back
--   {"event":"auto_takeover","on":B}                               the switch was flipped
-- RECORD is the service's progress record (README: state, owner, pid, command, started_at,
-- messages_done/total, mailbox, operation, stuck, overdue, ...), keys absent while unknown.

local M = {}

---@class HimalayaSyncState
---@field up boolean|nil Whether the service answers (nil: not known yet).
---@field accounts table<string, table> The last record of each account.
---@field auto_takeover boolean|nil The service's AutoTakeover switch.

---@return HimalayaSyncState
function M.new()
  return { up = nil, accounts = {}, auto_takeover = nil }
end

--- Apply one decoded event. Returns the names of the accounts whose record changed.
---@param state HimalayaSyncState
---@param ev table
---@return string[]
function M.apply(state, ev)
  if type(ev) ~= 'table' then
    return {}
  end
  if ev.event == 'state' then
    local old = state.accounts
    state.up = true
    state.accounts = type(ev.accounts) == 'table' and ev.accounts or {}
    if type(ev.auto_takeover) == 'boolean' then
      state.auto_takeover = ev.auto_takeover
    end
    local changed = {}
    for name in pairs(vim.tbl_extend('force', {}, old, state.accounts)) do
      if not vim.deep_equal(old[name], state.accounts[name]) then
        table.insert(changed, name)
      end
    end
    table.sort(changed)
    return changed
  elseif ev.event == 'progress' and type(ev.account) == 'string' and type(ev.progress) == 'table' then
    state.accounts[ev.account] = ev.progress
    return { ev.account }
  elseif ev.event == 'service' then
    state.up = ev.up == true
    if state.up then
      return {}
    end
    -- The service's mbsync dies with it; what it said of other syncs is unknown until it is back.
    local changed = vim.tbl_keys(state.accounts)
    table.sort(changed)
    state.accounts = {}
    return changed
  elseif ev.event == 'auto_takeover' and type(ev.on) == 'boolean' then
    state.auto_takeover = ev.on
  end
  return {}
end

local ACTIVE = { syncing = true, stuck = true, stopping = true, external = true }

--- Whether a record describes a sync that runs now (the service's or an external one).
function M.is_active(record)
  return record ~= nil and ACTIVE[record.state] == true
end

--- Whether a record describes a sync that runs outside the service.
function M.is_external(record)
  return record ~= nil and record.state == 'external'
end

--- Whether a person should be warned that a sync does not move (stuck) or runs too long
--- (overdue, the plan's "likely stuck").
function M.is_stuck(record)
  return record ~= nil and (record.state == 'stuck' or record.stuck == true or record.overdue == true)
end

--- What the sync is at: "15/98 emails" once counts are known, else the operation or mailbox.
function M.detail(record)
  local done, total = record.messages_done, record.messages_total
  if type(done) == 'number' and type(total) == 'number' and total > 0 then
    return ('%d/%d emails'):format(done, total)
  end
  return record.operation or record.mailbox
end

--- The status line text of one account, as the plan shows it, or nil when nothing runs:
--- `Syncing alice: 15/98 emails`, `Syncing (external) alice: 15/98 emails`, with `(stuck)`
--- when stuck or overdue.
---@param name string
---@param record table|nil
---@param show_external boolean
---@return string|nil
function M.status_text(name, record, show_external)
  if not M.is_active(record) then
    return nil
  end
  local head
  if record.state == 'external' then
    if not show_external then
      return nil
    end
    head = 'Syncing (external) ' .. name
  elseif record.state == 'stopping' then
    head = 'Stopping ' .. name
  else
    head = 'Syncing ' .. name
  end
  local detail = M.detail(record)
  local text = detail and (head .. ': ' .. detail) or head
  if M.is_stuck(record) then
    text = text .. ' (stuck)'
  end
  return text
end

--- A key that names one run, whoever runs it: one prompt per external sync, not per change.
function M.run_key(record)
  return ('%s:%s:%s'):format(
    tostring(record.owner_pid or record.pid),
    tostring(record.pid),
    tostring(record.started_at)
  )
end

--- The accounts to show, in order: the configured ones, else all the service knows (sorted).
---@param state HimalayaSyncState
---@param configured string[]|nil
---@return string[]
function M.shown(state, configured)
  if configured then
    return configured
  end
  local names = vim.tbl_keys(state.accounts)
  table.sort(names)
  return names
end

--- The status line for several accounts: one entry per running sync (a group run or a bare
--- `mbsync -a` shows on each account it covers; it is named once, by the first shown account).
---@param state HimalayaSyncState
---@param names string[]
---@param show_external boolean
---@return string
function M.status_line(state, names, show_external)
  local parts, seen = {}, {}
  for _, name in ipairs(names) do
    local r = state.accounts[name]
    local text = M.status_text(name, r, show_external)
    if text then
      local key = M.run_key(r)
      if not seen[key] then
        seen[key] = true
        table.insert(parts, text)
      end
    end
  end
  return table.concat(parts, ' | ')
end

--- "MM:SS" (or "H:MM:SS") from seconds.
function M.clock(seconds)
  seconds = math.max(0, math.floor(seconds))
  local h, m, s = math.floor(seconds / 3600), math.floor(seconds / 60) % 60, seconds % 60
  if h > 0 then
    return ('%d:%02d:%02d'):format(h, m, s)
  end
  return ('%02d:%02d'):format(m, s)
end

--- The seed's `analyze_external_sync()` shape for one external record:
--- { pid, runtime = "MM:SS", command, likely_stuck } plus account, owner, stuck, overdue.
---@param name string
---@param record table
---@param now_s number unix seconds
function M.external_info(name, record, now_s)
  local started = record.started_at and record.started_at / 1e6
  local command = type(record.command) == 'table' and table.concat(record.command, ' ') or record.command
  return {
    account = name,
    pid = record.pid or record.owner_pid,
    owner = record.owner,
    owner_pid = record.owner_pid,
    runtime = started and M.clock(now_s - started) or nil,
    command = command,
    likely_stuck = M.is_stuck(record),
    stuck = record.stuck == true,
    overdue = record.overdue == true,
    key = M.run_key(record),
  }
end

--- The seed's `read_external_progress()` shape for one external record.
function M.external_progress(record)
  local command = type(record.command) == 'table' and table.concat(record.command, ' ') or record.command
  local function seconds(us)
    return us and math.floor(us / 1e6) or nil
  end
  return {
    pid = record.pid or record.owner_pid,
    start_time = seconds(record.started_at),
    command = command,
    progress = {
      current_operation = record.operation,
      messages_processed = record.messages_done,
      messages_total = record.messages_total,
      current_folder = record.mailbox,
      channels_done = record.channels_done,
      channels_total = record.channels_total,
    },
    last_update = seconds(record.last_update),
  }
end

return M
