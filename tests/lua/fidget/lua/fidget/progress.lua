-- A recording stand-in for fidget.nvim's progress API (fidget cannot be downloaded here):
-- handle.create(opts) returns a handle with report/finish/cancel, as fidget's does, and every
-- call is kept in `calls` for the test to read.
local M = { calls = {} }

local Handle = {}
Handle.__index = Handle

function Handle:report(fields)
  table.insert(M.calls, { op = 'report', id = self.id, message = fields.message, percentage = fields.percentage })
end

function Handle:finish()
  table.insert(M.calls, { op = 'finish', id = self.id })
end

function Handle:cancel()
  table.insert(M.calls, { op = 'cancel', id = self.id })
end

M.handle = {}
local next_id = 0
function M.handle.create(opts)
  next_id = next_id + 1
  table.insert(M.calls, { op = 'create', id = next_id, title = opts.title, message = opts.message, percentage = opts.percentage, client = opts.lsp_client and opts.lsp_client.name })
  return setmetatable({ id = next_id }, Handle)
end

return M
