//! A throttling TCP proxy 127.0.0.1:port -> 127.0.0.1:target on std threads. Tests use it to
//! slow a sync down (syncs take 1–3 s otherwise), pause it (a stalled server) and cut it (the
//! server gone mid-sync).
//!
//! Each connection has two pump threads. Sockets are blocking with 20 ms timeouts so the pumps
//! see the pause/cut/stop flags quickly; `cut()` also shuts the sockets down itself, so it acts at
//! once.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Socket timeout: how often a blocked pump looks at the flags.
const POLL: Duration = Duration::from_millis(20);
/// Sleep while paused or waiting for tokens.
const NAP: Duration = Duration::from_millis(5);
/// Largest chunk when throttled (the brief's ~1 KiB) and when not.
const THROTTLED_CHUNK: usize = 1024;
const UNTHROTTLED_CHUNK: usize = 16 * 1024;

/// A running proxy; everything stops when it is dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    target: u16,
    stop: AtomicBool,
    paused: AtomicBool,
    refuse: AtomicBool,
    /// Server->client limit in bytes/s; 0 = unlimited.
    rate: AtomicU64,
    /// Bumped by `cut()`; a connection from an older generation ends.
    generation: AtomicU64,
    forwarded: AtomicU64,
    from_server: AtomicU64,
    accepted: AtomicU64,
    bucket: Mutex<Bucket>,
    /// Clones of the open connections' sockets, so `cut()` can shut them down directly.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// Token bucket shared by all connections' server->client pumps.
struct Bucket {
    tokens: f64,
    last: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking pump must not take the whole proxy down with poisoned locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward to 127.0.0.1:`target_port`.
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy: local_addr").port();
        // Non-blocking accept polled every few ms, so the accept thread notices `stop`
        // without a wake-up connection.
        listener.set_nonblocking(true).expect("proxy: set_nonblocking");
        let shared = Arc::new(Shared {
            target: target_port,
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            rate: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            from_server: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bucket: Mutex::new(Bucket { tokens: 0.0, last: Instant::now() }),
            conns: Mutex::new(HashMap::new()),
            handlers: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("proxy: spawn accept thread")
        };
        Proxy { port, shared, accept: Some(accept) }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Limit server->client throughput (bytes/s) over all connections; None = unlimited.
    /// Takes effect at once, also for open connections.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        // 0 means unlimited internally, so Some(0) becomes 1 byte/s (as good as stalled).
        let rate = bytes_per_sec.map_or(0, |r| r.max(1));
        self.shared.rate.store(rate, Ordering::SeqCst);
    }

    /// Stop forwarding in both directions; connections stay open.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Forward again after `pause()`.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Close every open connection at once (both sockets, shutdown(Both)). New connections are
    /// still accepted unless `refuse(true)`.
    pub fn cut(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        for (client, server) in lock(&self.shared.conns).values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// With `yes`, close new connections immediately (the client sees a connection that is
    /// accepted and then closed, i.e. an EOF before the greeting).
    pub fn refuse(&self, yes: bool) {
        self.shared.refuse.store(yes, Ordering::SeqCst);
    }

    /// Bytes forwarded so far, both directions, all connections.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server->client so far (the throttled direction).
    pub fn bytes_from_server(&self) -> u64 {
        self.shared.from_server.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (refused ones included).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (client, server) in lock(&self.shared.conns).values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        let handlers = std::mem::take(&mut *lock(&self.shared.handlers));
        for h in handlers {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((client, _)) = listener.accept() else {
            // Nothing pending (WouldBlock), or e.g. EMFILE: look again shortly.
            std::thread::sleep(NAP);
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        // Read the generation before registering: a cut() racing with this either finds the
        // sockets registered or makes the pumps see a newer generation.
        let generation = shared.generation.load(Ordering::SeqCst);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        lock(&shared.conns).insert(id, (c2, s2));
        let shared2 = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || handle(&shared2, id, generation, &client, &server));
        let mut handlers = lock(&shared.handlers);
        handlers.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => handlers.push(h),
            Err(_) => {
                if let Some((c, s)) = lock(&shared.conns).remove(&id) {
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// Run one connection: client->server in a helper thread, server->client (throttled) here.
fn handle(shared: &Arc<Shared>, id: u64, generation: u64, client: &TcpStream, server: &TcpStream) {
    for s in [client, server] {
        // Accepted sockets are blocking on Linux; make sure, then add the poll timeouts.
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_write_timeout(Some(POLL));
    }
    if let (Ok(c_up), Ok(s_up), Ok(c_down), Ok(s_down)) =
        (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
    {
        let up_shared = Arc::clone(shared);
        let upstream = std::thread::Builder::new()
            .name(format!("proxy-conn-{id}-up"))
            .spawn(move || pump(&up_shared, generation, c_up, s_up, false));
        if let Ok(upstream) = upstream {
            pump(shared, generation, s_down, c_down, true);
            let _ = upstream.join();
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    lock(&shared.conns).remove(&id);
}

impl Shared {
    fn ended(&self, generation: u64) -> bool {
        self.stop.load(Ordering::SeqCst) || self.generation.load(Ordering::SeqCst) != generation
    }

    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    fn rate(&self) -> u64 {
        self.rate.load(Ordering::SeqCst)
    }

    /// Take `n` tokens from the bucket, sleeping as needed. False if the connection ended.
    fn acquire(&self, n: usize, generation: u64) -> bool {
        loop {
            if self.ended(generation) {
                return false;
            }
            let rate = self.rate();
            if rate == 0 {
                return true;
            }
            if self.paused() {
                std::thread::sleep(NAP);
                continue;
            }
            let rate_f = rate as f64;
            let wait = {
                let mut b = lock(&self.bucket);
                let now = Instant::now();
                // Burst capacity: one chunk or 20 ms worth, whichever is larger; small
                // enough that throughput stays smooth.
                let capacity = (THROTTLED_CHUNK as f64).max(rate_f / 50.0);
                b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate_f).min(capacity);
                b.last = now;
                if b.tokens >= n as f64 {
                    b.tokens -= n as f64;
                    return true;
                }
                (n as f64 - b.tokens) / rate_f
            };
            std::thread::sleep(Duration::from_secs_f64(wait).min(Duration::from_millis(10)));
        }
    }
}

/// Chunk size for a rate: at most ~1 KiB, and about 50 chunks/s at low rates.
fn chunk_for(rate: u64) -> usize {
    if rate == 0 {
        UNTHROTTLED_CHUNK
    } else {
        usize::try_from(rate / 50).unwrap_or(THROTTLED_CHUNK).clamp(1, THROTTLED_CHUNK)
    }
}

/// Copy `from` -> `to` until EOF, error, cut or stop. `throttled` marks the server->client pump.
fn pump(shared: &Shared, generation: u64, mut from: TcpStream, mut to: TcpStream, throttled: bool) {
    let mut buf = vec![0u8; UNTHROTTLED_CHUNK];
    let clean_eof = loop {
        if shared.ended(generation) {
            break false;
        }
        if shared.paused() {
            std::thread::sleep(NAP);
            continue;
        }
        let max = if throttled { chunk_for(shared.rate()) } else { UNTHROTTLED_CHUNK };
        match from.read(&mut buf[..max]) {
            Ok(0) => break true,
            Ok(n) => {
                if throttled && !shared.acquire(n, generation) {
                    break false;
                }
                if !write_all(shared, generation, &mut to, &buf[..n]) {
                    break false;
                }
                shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
                if throttled {
                    shared.from_server.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break false,
        }
    };
    if clean_eof {
        // Pass the half-close on; the other direction keeps going until its own EOF.
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// Write all of `data`, waiting while paused. False if the connection ended or failed.
fn write_all(shared: &Shared, generation: u64, to: &mut TcpStream, data: &[u8]) -> bool {
    let mut off = 0;
    while off < data.len() {
        if shared.ended(generation) {
            return false;
        }
        if shared.paused() {
            std::thread::sleep(NAP);
            continue;
        }
        match to.write(&data[off..]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}
