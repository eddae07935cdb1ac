-- A tiny test harness for `nvim --headless -l` (no test framework can be installed here):
-- cases run in order, each in pcall; a failed case prints why; the script exits non-zero if
-- any failed. Waits are bounded polls (vim.wait runs the event loop meanwhile), never sleeps.

local T = { failed = 0, passed = 0, notes = {} }

local repo = assert(os.getenv('HIMALAYA_SYNC_REPO'), 'HIMALAYA_SYNC_REPO is not set (run through cargo test)')
T.repo = repo
T.bin = os.getenv('HIMALAYA_SYNC_BIN') or 'himalaya-sync'
T.nvim = os.getenv('HIMALAYA_SYNC_TEST_NVIM') or vim.v.progpath
T.dir = os.getenv('HIMALAYA_SYNC_TEST_DIR')
vim.opt.rtp:prepend(repo)

--- Put the recording fidget stand-in on the runtimepath.
function T.with_fidget()
  vim.opt.rtp:prepend(repo .. '/tests/lua/fidget')
end

local function fail(msg, level)
  error(msg, (level or 1) + 1)
end

function T.eq(got, want, what)
  if not vim.deep_equal(got, want) then
    fail(('%s: expected %s, got %s'):format(what or 'value', vim.inspect(want), vim.inspect(got)), 2)
  end
end

function T.ok(cond, what)
  if not cond then
    fail(what or 'assertion failed', 2)
  end
  return cond
end

function T.matches(s, pattern, what)
  if type(s) ~= 'string' or not s:find(pattern) then
    fail(('%s: %s does not match %q'):format(what or 'text', vim.inspect(s), pattern), 2)
  end
end

--- Poll `cond` until it is true, at most `ms`; fail with `what` on time-out.
function T.wait(what, ms, cond)
  local ok = vim.wait(ms, function()
    local good, v = pcall(cond)
    return good and v
  end, 10)
  if not ok then
    fail(('timed out after %d ms waiting for %s'):format(ms, what), 2)
  end
end

--- Record every vim.notify call: { msg, level }.
function T.record_notify()
  local seen = {}
  vim.notify = function(msg, level)
    table.insert(seen, { msg = msg, level = level or vim.log.levels.INFO })
    io.stdout:write(('  notify[%s]: %s\n'):format(level or 2, msg))
  end
  return seen
end

--- The notifications whose text matches `pattern`.
function T.notified(seen, pattern)
  return vim.tbl_filter(function(n)
    return n.msg:find(pattern) ~= nil
  end, seen)
end

--- Tell the Rust side of the test that `step` is reached, and wait until it says `reply`.
function T.handshake(step, reply, ms)
  assert(T.dir, 'HIMALAYA_SYNC_TEST_DIR is not set')
  local f = assert(io.open(T.dir .. '/' .. step, 'w'))
  f:close()
  T.wait('the test to answer ' .. reply, ms or 30000, function()
    return vim.uv.fs_stat(T.dir .. '/' .. reply) ~= nil
  end)
end

--- A second Neovim instance (embedded, driven over RPC) with the plugin on its runtimepath.
function T.child(opts)
  local chan = vim.fn.jobstart({ T.nvim, '--embed', '--headless', '--clean' }, { rpc = true })
  T.ok(chan > 0, 'start a second Neovim')
  local child = { chan = chan }
  function child.lua(code, ...)
    return vim.rpcrequest(chan, 'nvim_exec_lua', code, { ... })
  end
  child.lua('vim.opt.rtp:prepend(...)', repo)
  if opts then
    child.lua('require("himalaya_sync").setup(...)', opts)
  end
  function child.quit()
    pcall(vim.rpcrequest, chan, 'nvim_command', 'qall!')
    vim.fn.jobwait({ chan }, 5000)
  end
  return child
end

function T.case(name, fn)
  io.stdout:write('case ' .. name .. '\n')
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    T.passed = T.passed + 1
    io.stdout:write('ok   ' .. name .. '\n')
  else
    T.failed = T.failed + 1
    io.stdout:write('FAIL ' .. name .. ': ' .. tostring(err) .. '\n')
  end
end

--- Quit as a user does (VimLeavePre runs), with the exit code of the cases.
function T.finish()
  io.stdout:write(('%d passed, %d failed\n'):format(T.passed, T.failed))
  io.stdout:flush()
  vim.cmd((T.failed > 0 and 'cquit 1' or 'qall!'))
end

return T
