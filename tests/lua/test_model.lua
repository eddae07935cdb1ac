-- Pure parts of the Neovim client, no bus: the model fed with watch events as the service
-- prints them, the status line texts the plan shows, the seed's info shapes, and option errors.
local T = dofile(os.getenv('HIMALAYA_SYNC_REPO') .. '/tests/lua/helpers.lua')
local model = require('himalaya_sync.model')
local config = require('himalaya_sync.config')

local function syncing(done, total, extra)
  return vim.tbl_extend('force', {
    state = 'syncing', owner = 'service', pid = 42, owner_pid = 7, started_at = 1700000000000000,
    messages_done = done, messages_total = total, mailbox = 'INBOX', operation = 'Synchronizing',
  }, extra or {})
end

T.case('a notice is cut to the command line only when Neovim echoes it there', function()
  local ui = require('himalaya_sync.ui')
  T.eq(ui.fit('alice: sync started', 40), 'alice: sync started')
  T.eq(ui.fit('alice: stopped mbsync PID 4 (a bare mbsync, ran 1 s); now syncing alice', 20), 'alice: stopped mbsy…')
  T.eq(vim.fn.strdisplaywidth(ui.fit('bôx: ' .. ('é'):rep(50), 12)), 12, 'cut by display cells')
  local long = 'alice: ' .. ('x'):rep(300)
  -- Neovim's own vim.notify: cut to v:echospace, so no hit-enter prompt; errors stay whole.
  local shown = {}
  local echo, err = vim.api.nvim_echo, vim.api.nvim_err_writeln
  vim.api.nvim_echo = function(chunks, ...)
    shown[#shown + 1] = chunks[1][1]
    return echo(chunks, ...)
  end
  -- Neovim 0.10's vim.notify writes errors with nvim_err_writeln.
  vim.api.nvim_err_writeln = function(msg)
    shown[#shown + 1] = msg
    return err(msg)
  end
  ui.notify(long)
  ui.notify(long, vim.log.levels.ERROR)
  vim.api.nvim_echo, vim.api.nvim_err_writeln = echo, err
  T.eq(#shown, 2, 'both echoed')
  T.eq(vim.fn.strdisplaywidth(shown[1]), vim.v.echospace, 'a notice fits the command line')
  T.eq(shown[2], '(himalaya-sync) ' .. long, 'an error is whole')
  -- A notification plugin gets every notice whole.
  local got
  local builtin = vim.notify
  vim.notify = function(msg)
    got = msg
  end
  ui.notify(long)
  T.eq(got, '(himalaya-sync) ' .. long)
  -- nvim-notify's is a callable table.
  got = nil
  vim.notify = setmetatable({}, { __call = function(_, msg) got = msg end })
  ui.notify(long)
  vim.notify = builtin
  T.eq(got, '(himalaya-sync) ' .. long)
end)

T.case('status texts as the plan shows them', function()
  T.eq(model.status_text('alice', syncing(15, 98), true), 'Syncing alice: 15/98 emails')
  T.eq(model.status_text('alice', syncing(15, 98, { state = 'external', owner = 'client' }), true),
    'Syncing (external) alice: 15/98 emails')
  T.eq(model.status_text('alice', syncing(15, 98, { state = 'external' }), false), nil, 'external hidden')
  T.eq(model.status_text('alice', syncing(nil, nil), true), 'Syncing alice: Synchronizing', 'operation while counts unknown')
  local no_op = syncing(0, 0)
  no_op.operation = nil
  T.eq(model.status_text('alice', no_op, true), 'Syncing alice: INBOX', 'the mailbox at 0/0 without an operation')
  T.eq(model.status_text('alice', syncing(3, 9, { state = 'stuck', stuck = true }), true), 'Syncing alice: 3/9 emails (stuck)')
  T.eq(model.status_text('alice', { state = 'external', owner = 'process', overdue = true, stuck = false }, true),
    'Syncing (external) alice (stuck)', 'overdue bare mbsync')
  T.eq(model.status_text('alice', { state = 'idle', messages_done = 9, messages_total = 9 }, true), nil, 'idle is empty')
  T.eq(model.status_text('alice', { state = 'failed', last_error = 'x' }, true), nil, 'failed is empty')
  T.eq(model.status_text('alice', nil, true), nil)
end)

T.case('events build the state; a group run or mbsync -a is named once', function()
  local s = model.new()
  T.eq(model.apply(s, { event = 'state', accounts = { alice = { state = 'idle' }, bob = { state = 'idle' } }, auto_takeover = false }),
    { 'alice', 'bob' })
  T.eq(s.up, true)
  T.eq(s.auto_takeover, false)
  local ext = { state = 'external', owner = 'process', pid = 99, owner_pid = 99, started_at = 5, command = { 'mbsync', '-a' } }
  T.eq(model.apply(s, { event = 'progress', account = 'alice', progress = ext }), { 'alice' })
  model.apply(s, { event = 'progress', account = 'bob', progress = ext })
  T.eq(model.status_line(s, { 'alice', 'bob' }, true), 'Syncing (external) alice')
  model.apply(s, { event = 'progress', account = 'bob', progress = syncing(1, 2, { pid = 100 }) })
  T.eq(model.status_line(s, { 'alice', 'bob' }, true), 'Syncing (external) alice | Syncing bob: 1/2 emails')
  model.apply(s, { event = 'auto_takeover', on = true })
  T.eq(s.auto_takeover, true)
  T.eq(model.apply(s, { event = 'finished', account = 'bob', ok = true, message = 'sync finished' }), {})
  -- The service went away: its runs died with it, nothing is shown until it is back.
  T.eq(model.apply(s, { event = 'service', up = false }), { 'alice', 'bob' })
  T.eq(s.up, false)
  T.eq(model.status_line(s, { 'alice', 'bob' }, true), '')
  T.eq(model.apply(s, { event = 'service', up = true }), {})
  T.eq(model.apply(s, 'garbage'), {})
  T.eq(model.apply(s, { event = 'progress', account = 'alice' }), {}, 'a progress event without a record')
  T.eq(model.shown(s, nil), {})
  T.eq(model.shown(s, { 'x' }), { 'x' })
end)

T.case("the seed's info and progress shapes", function()
  local r = syncing(15, 98, {
    state = 'external', owner = 'client', command = { 'mbsync', '-V', 'alice' }, overdue = true,
    started_at = 1000 * 1e6, last_update = 1065 * 1e6, channels_done = 0, channels_total = 1,
  })
  local info = model.external_info('alice', r, 1000 + 125)
  T.eq(info.pid, 42)
  T.eq(info.runtime, '02:05')
  T.eq(info.command, 'mbsync -V alice')
  T.eq(info.likely_stuck, true)
  T.eq(info.account, 'alice')
  T.eq(info.owner, 'client')
  T.eq(model.external_progress(r), {
    pid = 42, start_time = 1000, command = 'mbsync -V alice', last_update = 1065,
    progress = { current_operation = 'Synchronizing', messages_processed = 15, messages_total = 98,
      current_folder = 'INBOX', channels_done = 0, channels_total = 1 },
  })
  T.eq(model.clock(3725), '1:02:05')
  T.eq(model.clock(-3), '00:00')
end)

T.case('options: defaults, and one clear error for each bad one', function()
  local c = config.resolve(nil)
  T.eq(c.bin, 'himalaya-sync')
  T.eq(c.sync_handoff.graceful_handoff, true)
  T.eq(c.sync_handoff.auto_takeover, nil)
  c = config.resolve({ accounts = { 'work' }, sync_handoff = { auto_takeover = true, auto_takeover_timeout = 60 } })
  T.eq(c.accounts, { 'work' })
  T.eq(c.sync_handoff.auto_takeover_timeout, 60)
  T.eq(c.sync_handoff.enabled, true, 'defaults kept beside given keys')
  local bad = {
    { 'nope', 'setup%(%) takes a table' },
    { { bni = 'x' }, 'unknown option bni' },
    { { sync_handoff = { graceful = true } }, 'unknown option sync_handoff.graceful' },
    { { bin = 3 }, 'option bin must be a string, got number' },
    { { bin = '' }, 'option bin must name' },
    { { accounts = 'work' }, 'option accounts must be a table' },
    { { accounts = { work = true } }, 'option accounts must be a list' },
    { { accounts = { 'a', 4 } }, 'option accounts%[2%] must be an account name' },
    { { sync_handoff = { enabled = 'yes' } }, 'option sync_handoff.enabled must be a boolean' },
    { { sync_handoff = { auto_takeover_timeout = -5 } }, 'auto_takeover_timeout must be a whole number' },
    { { sync_handoff = { progress_write_interval = 0.5 } }, 'progress_write_interval must be a whole number' },
    { { sync_handoff = false }, 'option sync_handoff must be a table' },
    { { handoff_timeout = '5s' }, 'option handoff_timeout must be a number' },
  }
  for _, b in ipairs(bad) do
    local ok, err = pcall(require('himalaya_sync').setup, b[1])
    T.ok(not ok, 'setup(' .. vim.inspect(b[1]) .. ') must fail')
    T.matches(err, '^%(himalaya%-sync%) ', 'prefix')
    T.matches(err, b[2], vim.inspect(b[1]))
  end
  T.eq(require('himalaya_sync').statusline(), '', 'no setup, no status line')
end)

T.case('the prompt says what runs and warns when stuck', function()
  local prompt = require('himalaya_sync.prompt')
  local info = { account = 'alice', pid = 4242, command = 'mbsync alice', owner = 'process', runtime = '05:10', likely_stuck = true, overdue = true }
  local lines = prompt.lines(info, { graceful = true })
  T.eq(lines[1], 'External sync detected:')
  T.ok(vim.tbl_contains(lines, '  Process: mbsync alice (PID 4242)'), vim.inspect(lines))
  T.ok(vim.tbl_contains(lines, '  Runtime: 05:10'))
  T.ok(#vim.tbl_filter(function(l) return l:find('appears stuck') end, lines) == 1, 'stuck warning')
  T.ok(#vim.tbl_filter(function(l) return l:find('%[A%]uto would') end, lines) == 1, 'auto-takeover suggestion')
  T.ok(vim.tbl_contains(lines, '[Y]es  - stop it and restart it here with progress'))
  info.owner, info.likely_stuck = 'client', false
  lines = prompt.lines(info, { graceful = true })
  T.ok(vim.tbl_contains(lines, '[Y]es  - ask it to hand over, then restart it here with progress'))
  T.ok(#vim.tbl_filter(function(l) return l:find('stuck') end, lines) == 0, 'no warning when it moves')
  -- The window answers once, by key.
  local answers = {}
  local win = prompt.show(info, { graceful = true }, function(c) table.insert(answers, c) end)
  T.eq(vim.api.nvim_get_current_win(), win, 'the prompt has focus')
  vim.api.nvim_feedkeys('A', 'x', false)
  T.eq(answers, { 'auto' })
  T.ok(not vim.api.nvim_win_is_valid(win), 'closed after the answer')
  prompt.show(info, { graceful = true }, function(c) table.insert(answers, c) end)
  vim.api.nvim_feedkeys('n', 'x', false)
  T.eq(answers, { 'auto', 'no' })
end)

T.case('the client parses command results', function()
  local client = require('himalaya_sync.client')
  local r = client.result(1, '', 'himalaya-sync: org.himalaya.Sync.Error.AlreadySyncing: alice is syncing already\n')
  T.eq(r.ok, false)
  T.eq(r.error, 'AlreadySyncing')
  T.eq(r.message, 'alice is syncing already')
  r = client.result(0, '', 'alice: stopped mbsync PID 4 (a bare mbsync, ran 1 s: mbsync alice); now syncing alice\n')
  T.eq(r.ok, true)
  T.matches(r.message, '^alice: stopped mbsync PID 4')
  T.eq(client.result(0, 'on\n', '').message, 'on')
end)

T.case(':help himalaya-sync finds the help file and its tags', function()
  local rt = vim.fn.tempname()
  vim.fn.mkdir(rt .. '/doc', 'p')
  vim.fn.writefile(vim.fn.readfile(T.repo .. '/doc/himalaya-sync.txt'), rt .. '/doc/himalaya-sync.txt')
  vim.cmd('helptags ' .. rt .. '/doc') -- fails on a duplicate tag
  vim.opt.rtp:prepend(rt)
  for _, tag in ipairs({ 'himalaya-sync', 'himalaya-sync-options', ':HimalayaTakeoverSync', 'HimalayaSyncProgress' }) do
    vim.cmd('help ' .. tag)
    T.matches(vim.api.nvim_buf_get_name(0), 'himalaya%-sync%.txt$', tag)
    vim.cmd('helpclose')
  end
  vim.fn.delete(rt, 'rf')
end)

T.finish()
