// Follow one account's sync the way a GNOME Shell extension would: a Gio.DBusProxy on the
// account object (/org/himalaya/Sync/account/LABEL, org.himalaya.Sync.Account), and nothing but
// its cached properties and the g-properties-changed signal. No method is called.
//
//   gjs follow_account.js OBJECT_PATH TIMEOUT_S
//
// Prints `ready` once the proxy is up, then one JSON line per change:
// {"changed":["State","Progress"],"state":"syncing","owner":"service","done":15,"total":98,...}
// Exits 0 once State went to `syncing` and back to `idle`; 2 on timeout.
const { Gio, GLib } = imports.gi;

const [path, timeoutS] = ARGV;
const loop = GLib.MainLoop.new(null, false);
let status = 2;
let sawSyncing = false;

const proxy = Gio.DBusProxy.new_for_bus_sync(
    Gio.BusType.SESSION,
    Gio.DBusProxyFlags.NONE,
    null,
    'org.himalaya.Sync',
    path,
    'org.himalaya.Sync.Account',
    null
);

function cached(name) {
    const v = proxy.get_cached_property(name);
    return v === null ? null : v.recursiveUnpack();
}

function snapshot(changed) {
    const progress = cached('Progress') || {};
    return {
        changed,
        name: cached('Name'),
        state: cached('State'),
        owner: cached('Owner'),
        pid: cached('Pid'),
        done: progress.messages_done ?? null,
        total: progress.messages_total ?? null,
        percent: progress.percent ?? null,
        mailbox: progress.mailbox ?? null,
        last_result: progress.last_result ?? null,
    };
}

proxy.connect('g-properties-changed', (_proxy, changed, _invalidated) => {
    const line = snapshot(Object.keys(changed.deepUnpack()));
    print(JSON.stringify(line));
    if (line.state === 'syncing')
        sawSyncing = true;
    if (sawSyncing && line.state === 'idle') {
        status = 0;
        loop.quit();
    }
});

GLib.timeout_add_seconds(GLib.PRIORITY_DEFAULT, Number(timeoutS), () => {
    print('timeout');
    loop.quit();
    return GLib.SOURCE_REMOVE;
});

print('ready ' + JSON.stringify(snapshot([])));
loop.run();
imports.system.exit(status);
