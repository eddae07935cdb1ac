-- The takeover prompt: a floating window that says what runs elsewhere and asks what to do,
-- with [Y]es / [N]o / [A]uto. One prompt at a time; the caller decides when to show one.

local M = {}

---@type {buf: integer, win: integer, key: string, answer: fun(choice: string)}|nil
local current = nil

local OWNERS = {
  client = 'a lock holder (himalaya-sync exec or another client)',
  process = 'a bare mbsync (cron, a shell, another tool)',
}

--- The prompt's lines for an `analyze_external_sync()` info table.
---@param info table
---@param opts {graceful: boolean, auto_takeover: boolean|nil}
---@return string[]
function M.lines(info, opts)
  local lines = {
    'External sync detected:',
    '  Account: ' .. tostring(info.account or '?'),
    '  Process: ' .. (info.command or 'mbsync') .. (info.pid and (' (PID ' .. info.pid .. ')') or ''),
    '  Run by:  ' .. (OWNERS[info.owner] or 'another program'),
    '  Runtime: ' .. (info.runtime or 'unknown'),
    '',
  }
  if info.stuck then
    table.insert(lines, '! This sync appears stuck: it has stopped making progress')
  elseif info.likely_stuck then
    table.insert(lines, '! This sync appears stuck: it has run longer than the auto-takeover timeout')
  end
  if info.likely_stuck then
    table.insert(lines, '  [A]uto would let the service take stuck syncs like this over by itself')
    table.insert(lines, '')
  end
  local yes = (opts.graceful and info.owner == 'client') and 'ask it to hand over, then restart it here with progress'
    or 'stop it and restart it here with progress'
  vim.list_extend(lines, {
    'Take control of this sync?',
    '[Y]es  - ' .. yes,
    '[N]o   - keep it running (shown as external)',
    '[A]uto - always take control (turns AutoTakeover on)',
  })
  return lines
end

--- Close the open prompt, if any, without an answer.
function M.close()
  local p = current
  current = nil
  if p and vim.api.nvim_win_is_valid(p.win) then
    vim.api.nvim_win_close(p.win, true)
  end
  if p and vim.api.nvim_buf_is_valid(p.buf) then
    vim.api.nvim_buf_delete(p.buf, { force = true })
  end
end

--- The open prompt's run key, or nil.
function M.open_key()
  return current and current.key or nil
end

--- The open prompt's window and buffer, or nil.
function M.window()
  if current then
    return current.win, current.buf
  end
end

--- Show the prompt for `info`; `on_answer('yes'|'no'|'auto')` once, after the window closed.
--- An open prompt for another sync is closed first (as "no answer").
---@param info table
---@param opts {graceful: boolean}
---@param on_answer fun(choice: string)
---@return integer win, integer buf
function M.show(info, opts, on_answer)
  M.close()
  local lines = M.lines(info, opts)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = 'wipe'
  local width = 0
  for _, l in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(l))
  end
  width = math.min(width + 2, math.max(20, vim.o.columns - 4))
  local height = math.min(#lines, math.max(1, vim.o.lines - 4))
  local win = vim.api.nvim_open_win(buf, true, {
    relative = 'editor',
    width = width,
    height = height,
    row = math.max(0, math.floor((vim.o.lines - height) / 2) - 1),
    col = math.max(0, math.floor((vim.o.columns - width) / 2)),
    style = 'minimal',
    border = 'rounded',
    title = ' himalaya-sync ',
    title_pos = 'center',
  })
  local p = { buf = buf, win = win, key = info.key }
  p.answer = function(choice)
    if current ~= p then
      return
    end
    M.close()
    on_answer(choice)
  end
  current = p
  local map = function(keys, choice)
    for _, key in ipairs(keys) do
      vim.keymap.set('n', key, function()
        p.answer(choice)
      end, { buffer = buf, nowait = true, desc = 'himalaya-sync: ' .. choice })
    end
  end
  map({ 'y', 'Y' }, 'yes')
  map({ 'n', 'N', 'q', '<Esc>' }, 'no')
  map({ 'a', 'A' }, 'auto')
  -- Leaving the window is "no" (it stays open only while it has focus).
  vim.api.nvim_create_autocmd('WinLeave', {
    buffer = buf,
    once = true,
    callback = function()
      vim.schedule(function()
        p.answer('no')
      end)
    end,
  })
  return win, buf
end

return M
