//! One client connection, from login to close: the transaction-mode state machine.
//!
//! A session owns its client socket and, between the first message of a transaction and the
//! ReadyForQuery that ends it, one server connection checked out of its database's pool.
//! Client messages are forwarded as the bytes the client sent; only the few fields that
//! decide binding, injection and splitting are read. Before the client's first statement of
//! every transaction the session injects `set_config(<tenant setting>, <tenant>, true)` as a
//! Bind/Execute of a statement prepared on every server — in the same write as the client's
//! messages — and swallows its replies, so the client sees exactly what PostgreSQL would
//! have sent for its own messages. A session never returns a server to the pool unless it
//! is idle, with nothing outstanding; anything else closes that server.

pub mod expect;
pub mod login;
pub mod params;
pub mod plan;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cancel::{CancelSlot, CancelTarget};
use crate::clients::Stop;
use crate::guard::{Guard, TenantValue, Verdict as GuardVerdict};
use crate::net::{ClientStream, READ_CHUNK, send_all};
use crate::pool::statements::StmtDef;
use crate::pool::{Checkout, Pool};
use crate::protocol::messages::{self, Severity};
use crate::protocol::{self, FrameError, peek_frame};
use crate::server::{INJECT_SEALED_SQL, INJECT_SEALED_STATEMENT, INJECT_SQL, INJECT_STATEMENT};
use crate::sql::{self, SessionCommand};
use crate::state::Shared;
use crate::stats::{ClientState, ClientTracker, TenantStats};
use crate::tenant::TenantId;
use expect::{ExpectQueue, Expected, Owner, Reply, Verdict};
use login::{LoggedIn, LoginError, LoginOutcome};
use params::{ExtraSettings, ParamSet, tracked_index};
use plan::SqlPlan;

/// Stands for the client's unnamed statement where a shared statement id is expected.
const UNNAMED_STATEMENT: u64 = u64::MAX;
/// Stands for pgtenant's own tenant-setting statements where a shared statement id is
/// expected.
const INJECT_STATEMENTS: u64 = u64::MAX - 1;

/// Above this many bytes queued for one side, stop reading from the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Server messages can be as large as PostgreSQL allows (1 GB).
const MAX_SERVER_MESSAGE: usize = 0x3fff_ffff;
/// Write buffers reserved when a transaction gets its server (taken from the thread's spare
/// buffers, see [`crate::buffers`]).
const TXN_BUF: usize = 1000;

/// Why a session ended abnormally. `Client` errors are told to the client before closing.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{message}")]
    Client {
        sqlstate: &'static str,
        message: String,
    },
    #[error("client connection lost: {0}")]
    ClientIo(std::io::Error),
    #[error("server connection lost: {0}")]
    ServerIo(std::io::Error),
    #[error("server replies out of step with requests (message type '{0}')")]
    Desync(char),
    #[error("server terminated the connection")]
    ServerTerminated,
}

impl SessionError {
    fn client(sqlstate: &'static str, message: impl Into<String>) -> Self {
        SessionError::Client {
            sqlstate,
            message: message.into(),
        }
    }
}

/// Serves one accepted client connection to the end, then takes it off the count of
/// connected clients (`Shared::clients`, which the accept loop raised).
///
/// The returned future is the client's whole task, and every idle client carries one, so it
/// stays small: the login and the session each live in their own box (an idle client
/// carries neither the login's state nor a transaction's), and only the session loop's own
/// few pointers are inline. The login's box is made here, before the task starts, so that
/// the socket and the address move straight into it (an `async fn` would keep its own copy
/// of its arguments for as long as it runs).
pub fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    over_limit: bool,
) -> impl Future<Output = ()> {
    let login = Box::pin(start_session(stream, peer, Arc::clone(&shared), over_limit));
    async move {
        if let Some(mut session) = login.await {
            let result = session.run().await;
            // Boxed: closing needs more room than the loop, and only once.
            Box::pin(session.finish(result, &shared)).await;
        }
        shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs the client in; a session when it is a tenant client that should be served.
async fn start_session(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    over_limit: bool,
) -> Option<Box<Session>> {
    let shared = &shared;
    let client_id = shared.next_client_id();
    let _ = tcp.set_nodelay(true);
    // The login may upgrade it to TLS.
    let mut stream = ClientStream::Plain(tcp);
    let mut out = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let login_timeout = shared.config().general.client_login_timeout;
    let outcome = tokio::time::timeout(
        login_timeout,
        login::login(&mut stream, peer, shared, over_limit, &mut out, &mut rbuf),
    )
    .await;
    // What the client sent past its login is its first messages; an idle client keeps no
    // read buffer.
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    let mut logged_in = match outcome {
        Err(_) => {
            // Logged before the client hears it, so the log never lags what a client saw.
            tracing::info!(client = client_id, %peer, "login timed out");
            out.clear();
            login::refusal(
                &mut out,
                "08006",
                "client_login_timeout expired before login completed",
            );
            let _ = send_all(&mut stream, &out).await;
            return None;
        }
        Ok(Ok(LoginOutcome::Cancel { pid, secret })) => {
            shared.cancels.cancel(pid, secret).await;
            return None;
        }
        Ok(Ok(LoginOutcome::Session(l))) => l,
        Ok(Ok(LoginOutcome::Admin(admin))) => {
            Box::pin(crate::admin::serve(
                stream,
                peer,
                client_id,
                Arc::clone(shared),
                *admin,
                out,
                rbuf,
            ))
            .await;
            return None;
        }
        Ok(Err(LoginError::Refused {
            sqlstate,
            message,
            reason,
        })) => {
            tracing::info!(client = client_id, %peer, reason, sqlstate, "login refused");
            shared.stats.login_failed(reason);
            out.clear();
            login::refusal(&mut out, sqlstate, &message);
            let _ = send_all(&mut stream, &out).await;
            return None;
        }
        Ok(Err(LoginError::Dropped { reason })) => {
            shared.stats.login_failed(reason);
            tracing::info!(client = client_id, %peer, reason, "connection closed during login");
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(client = client_id, %peer, error = %e, "login ended");
            return None;
        }
    };
    let tls = stream.is_tls();
    if shared.config().general.log_connections {
        tracing::info!(client = client_id, %peer, tenant = %logged_in.tenant, db = %logged_in.database, user = %logged_in.user, tls, "login");
    }
    messages::ready_for_query(&mut out, b'I');
    shared.stats.logins.inc();
    if tls {
        shared.stats.tls_logins.inc();
    }
    // The tenant's numbers, and the one copy of its id its clients share.
    let tenant_stats = shared.stats.tenant(&logged_in.tenant);
    // Listed for SHOW CLIENTS and reachable by KILL/KILL_CLIENT until the session ends.
    let registration = shared.logged_in.register(crate::clients::NewClient {
        id: client_id,
        database: Arc::clone(&logged_in.pool.name),
        user: std::mem::take(&mut logged_in.user).into_boxed_str(),
        tenant: tenant_stats.id.clone(),
        peer,
    });
    // Every line the session logs names the client's id and tenant as fields. (Not a
    // span: a span per client costs ~0.5 KiB in the subscriber's registry for as long as
    // the client stays connected, and an enter/exit on every poll.)
    // The login's box is taken apart here, so it is freed now rather than when the client
    // disconnects.
    Some(Box::new(Session::new(
        client_id,
        stream,
        *logged_in,
        shared,
        (out, rbuf),
        tenant_stats,
        registration,
    )))
}

struct Session {
    id: u64,
    client: ClientStream,
    pool: Arc<Pool>,
    tenant: TenantId,
    max_packet: usize,
    max_prepared: usize,
    idle_transaction_timeout: Option<Duration>,
    /// Client bytes read but not yet handled.
    cbuf: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    server: Option<Checkout>,
    expect: ExpectQueue,
    /// Transaction status from the bound server's latest ReadyForQuery.
    status: u8,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// The tenant is set in the server's current transaction, as of the latest message
    /// forwarded.
    tenant_in_txn: bool,
    /// A Sync or Query was forwarded whose ReadyForQuery has not arrived: if the transaction
    /// was implicit it ends there, so the next statement must set the tenant again (harmless
    /// when the transaction was still open).
    maybe_ended: bool,
    /// Parameters the client chose.
    params: ParamSet,
    /// Parameters from its startup packet (what `DISCARD ALL` returns to).
    startup_params: ParamSet,
    /// What only some clients use, allocated when one first does.
    rare: Option<Box<Rare>>,
    /// The bound server carries settings of this client's that must be reset before reuse.
    reset_needed: bool,
    /// The reset (and capture) query is in flight: the client's next transaction waits for
    /// a server in a clean state.
    resetting: bool,
    /// Return the server even if the client's next transaction is already buffered (after a
    /// reset, the next checkout must apply the client's settings again).
    force_release: bool,
    /// `Rare::unnamed_parse` holds its own allocation (not a slice of a read buffer).
    unnamed_parse_owned: bool,
    /// The bound server has the client's unnamed statement.
    unnamed_on_server: bool,
    /// The server is copying in (CopyInResponse seen, the client's CopyDone/CopyFail not yet
    /// forwarded).
    copy_in: bool,
    /// The server's state cannot be vouched for: close it instead of returning it.
    dirty: bool,
    /// The client may have changed session-level settings on the server: `RESET ALL`
    /// before another client gets it.
    session_changed: bool,
    cancel_pid: i32,
    cancel: Arc<CancelSlot>,
    /// This client's state in the gauges and its tenant's counters.
    tracker: ClientTracker,
    guard: Arc<Guard>,
    /// The proxy is draining: end as soon as no transaction is open.
    stopping: bool,
    /// When the current transaction got its server.
    xact_started: Option<Instant>,
}

/// The part of a session only some clients ever need: prepared statements, split queries,
/// session settings of their own, COPY, the sealed injection. Boxed apart and allocated at
/// first use (then kept: a client that used it once will likely again), so that the
/// thousands of clients that only ever run plain transactions do not carry it.
#[derive(Default)]
struct Rare {
    /// The client's prepared statements, by its names.
    statements: HashMap<Bytes, ClientStatement>,
    /// The client's latest Parse of the unnamed statement, re-sent when a later batch binds
    /// it on a server that does not have it (PostgreSQL keeps the unnamed statement until
    /// the next Parse of it or the next simple Query).
    unnamed_parse: Option<Bytes>,
    /// Remaining parts of a client Query split after a transaction-ending statement.
    pieces: VecDeque<Range<usize>>,
    pieces_text: Bytes,
    /// With `tenant_seal`: the sealed injection for the server with this id.
    sealed_inject: Option<(u64, Bytes)>,
    /// Other session settings the client made, replayed on each server it uses.
    extra: ExtraSettings,
    /// Settings being read back from the server (see `params::CAPTURE_SQL`).
    captured: Option<(ParamSet, ExtraSettings)>,
    /// A shared statement is being prepared and described afresh on this server, to check
    /// that its shape still matches what the client was told; client messages wait.
    verifying: Option<u64>,
    /// Queue position when the client's latest CopyDone/CopyFail was forwarded.
    copy_end_seq: u64,
    /// Queue position when pgtenant last sent a Flush of its own (`flush_for_replies`).
    flushed_at: Option<u64>,
}

/// The session's [`Rare`] part, allocated on first use.
fn rare(slot: &mut Option<Box<Rare>>) -> &mut Rare {
    slot.get_or_insert_with(Box::default)
}

/// A statement the client prepared: what pgtenant knows of its SQL, and for a named one the
/// shared server-side statement it maps to.
struct ClientStatement {
    plan: SqlPlan,
    shared: Option<Arc<StmtDef>>,
    /// The RowDescription/NoData the client was told when it described the statement.
    /// Drivers cache it; a server preparing the statement afresh (after a schema change)
    /// must give the same shape, or the client gets 0A000 as PostgreSQL would answer.
    described: Option<Bytes>,
    /// A fresh prepare came back with another shape: executing it fails with 0A000
    /// ("cached plan must not change result type") until the client prepares it again.
    stale: bool,
    /// Parsed between transactions without a server: parse it afresh at first use.
    needs_fresh_parse: bool,
    /// Bound parameters that set the tenant seed-style (`set_config('app.current_tenant_id',
    /// $1, true)`): each must be the client's own tenant at every Bind.
    tenant_params: Vec<usize>,
    /// The queue position of the client's Parse that created it: if PostgreSQL does not
    /// run that Parse (it fails, or an error earlier in its batch makes the server skip
    /// it), the statement never existed.
    parse_seq: Option<u64>,
}

enum Event {
    Stop(Stop),
    Io(Result<Moved, SessionError>),
    IdleTransactionTimeout,
}

/// What one poll of the sockets did.
enum Moved {
    /// Bytes left for the client or the server.
    Sent,
    /// Server bytes were appended to the bound server's read buffer.
    ServerData,
    /// Client bytes were appended to `cbuf`.
    ClientData,
    /// The client closed its side.
    ClientEof,
}

enum Progress {
    /// Need more client bytes (or the client must wait for the server).
    Idle,
    /// The next message starts a transaction: a server is needed.
    NeedServer,
    /// The client said Terminate.
    Terminate,
}

impl Session {
    fn new(
        id: u64,
        client: ClientStream,
        l: LoggedIn,
        shared: &Shared,
        (out, pending): (BytesMut, BytesMut),
        tenant_stats: Arc<TenantStats>,
        registration: crate::clients::Registration,
    ) -> Session {
        let config = shared.config();
        let pool_stats = Arc::clone(&l.pool.stats);
        Session {
            id,
            client,
            pool: l.pool,
            tenant: tenant_stats.id.clone(),
            max_packet: config.general.max_packet_size,
            max_prepared: config.general.max_prepared_statements,
            idle_transaction_timeout: config.general.idle_transaction_timeout,
            cbuf: pending,
            to_client: out,
            to_server: BytesMut::new(),
            server: None,
            expect: ExpectQueue::default(),
            status: b'I',
            unsynced: false,
            tenant_in_txn: false,
            maybe_ended: false,
            startup_params: l.params.clone(),
            params: l.params,
            rare: None,
            reset_needed: false,
            resetting: false,
            force_release: false,
            unnamed_parse_owned: false,
            unnamed_on_server: false,
            copy_in: false,
            dirty: false,
            session_changed: false,
            tracker: ClientTracker::new(
                Arc::clone(&shared.stats),
                tenant_stats,
                pool_stats,
                registration,
            ),
            xact_started: None,
            guard: Arc::clone(&shared.guard),
            stopping: false,
            cancel_pid: l.cancel_pid,
            cancel: l.cancel,
        }
    }

    async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            // A transaction that just ended returns its server before the next one starts.
            self.maybe_release().await;
            // Handle whatever complete client messages are buffered.
            loop {
                // Not matched on the call itself: its `Result` would be kept across the
                // `await` below, in every session's future.
                let progress = self.process_client()?;
                match progress {
                    Progress::Idle => break,
                    Progress::Terminate => return Ok(()),
                    Progress::NeedServer => self.bind_server().await?,
                }
            }
            self.maybe_release().await;
            self.shed_idle_buffers();

            let want_client = self.to_server.len() < HIGH_WATER && !self.splitting();
            let want_server = self.server.is_some() && self.to_client.len() < HIGH_WATER;
            let idle_in_txn = self.server.is_some()
                && self.expect.is_empty()
                && matches!(self.status, b'T' | b'E')
                && self.to_server.is_empty();
            let idle_timeout = self.idle_transaction_timeout.filter(|_| idle_in_txn);
            // Shutting down: a client between transactions is closed now; one in a
            // transaction finishes it first.
            let idle_client = self.server.is_none() && self.to_client.is_empty();
            if self.stopping && idle_client {
                return Err(SessionError::client(
                    "57P01",
                    "terminating connection due to administrator command (pgtenant is shutting down)",
                ));
            }
            // Only an idle-in-transaction client with the timeout configured has a timer,
            // boxed: inline, it would widen every session's future.
            let mut idle_timer = idle_timeout.map(|d| Box::pin(tokio::time::sleep(d)));
            // One hand-written poll instead of `select!`: the future then holds one pointer
            // to the session and the timer's, not a borrow per field and a slot per branch,
            // and every idle client's task is that much smaller. Polled in a fixed order: a
            // stop notice first, then the sockets, then the timer. The stop signal is polled
            // only once its flag is set or before the task waits (which registers it): a
            // channel poll per turn cost more than the flag's load.
            let this = &mut *self;
            let event = std::future::poll_fn(move |cx| {
                let stop_sent = this.tracker.stop_sent();
                if stop_sent
                    && let Poll::Ready(stop) = Pin::new(this.tracker.stop_signal()).poll(cx)
                {
                    return Poll::Ready(Event::Stop(stop));
                }
                if let Poll::Ready(moved) = this.poll_io(cx, want_client, want_server) {
                    return Poll::Ready(Event::Io(moved));
                }
                if !stop_sent
                    && let Poll::Ready(stop) = Pin::new(this.tracker.stop_signal()).poll(cx)
                {
                    return Poll::Ready(Event::Stop(stop));
                }
                match idle_timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Event::IdleTransactionTimeout),
                    _ => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Stop(Stop::Kill) => return Err(killed()),
                // Noted here; the session ends at the top of the loop once it is idle.
                Event::Stop(Stop::Shutdown) => self.stopping = true,
                Event::Io(moved) => match moved? {
                    Moved::Sent | Moved::ClientData => {}
                    Moved::ServerData => self.process_server()?,
                    Moved::ClientEof => return Ok(()),
                },
                Event::IdleTransactionTimeout => {
                    return Err(SessionError::client(
                        "25P03",
                        "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                    ));
                }
            }
        }
    }

    /// One poll over both sockets, in a fixed order: drain towards the client, then towards
    /// the server, then read the server, then the client. Each direction moves what the
    /// socket takes now (one syscall on plain TCP) and reports it.
    fn poll_io(
        &mut self,
        cx: &mut std::task::Context<'_>,
        want_client: bool,
        want_server: bool,
    ) -> Poll<Result<Moved, SessionError>> {
        if (!self.to_client.is_empty() || self.client.has_unflushed())
            && let Poll::Ready(sent) = self.client.poll_send(cx, &mut self.to_client)
        {
            let n = match sent {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(SessionError::ClientIo(e))),
            };
            self.pool.stats.bytes_sent.inc_by(n as u64);
            shrink_drained(&mut self.to_client);
            return Poll::Ready(Ok(Moved::Sent));
        }
        if let Some(checkout) = self.server.as_mut() {
            let conn = checkout.conn();
            if (!self.to_server.is_empty() || conn.stream.has_unflushed())
                && let Poll::Ready(sent) = conn.stream.poll_send(cx, &mut self.to_server)
            {
                if let Err(e) = sent {
                    return Poll::Ready(Err(SessionError::ServerIo(e)));
                }
                shrink_drained(&mut self.to_server);
                return Poll::Ready(Ok(Moved::Sent));
            }
            if want_server && let Poll::Ready(read) = conn.stream.poll_receive(cx, &mut conn.rbuf) {
                return Poll::Ready(match read {
                    Ok(0) => Err(SessionError::ServerIo(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))),
                    Ok(_) => Ok(Moved::ServerData),
                    Err(e) => Err(SessionError::ServerIo(e)),
                });
            }
        }
        if want_client && let Poll::Ready(read) = self.client.poll_receive(cx, &mut self.cbuf) {
            return Poll::Ready(match read {
                Ok(0) => Ok(Moved::ClientEof),
                Ok(n) => {
                    self.pool.stats.bytes_received.inc_by(n as u64);
                    Ok(Moved::ClientData)
                }
                Err(e) => Err(SessionError::ClientIo(e)),
            });
        }
        Poll::Pending
    }

    /// Frees the buffers of a client with nothing in flight: thousands of idle clients
    /// should cost their sockets and little else.
    fn shed_idle_buffers(&mut self) {
        if self.server.is_some() {
            shrink_drained(&mut self.cbuf);
            return;
        }
        crate::buffers::give(&mut self.cbuf);
        if !self.unnamed_parse_owned {
            // Do not keep a whole read buffer alive for one small message.
            if let Some(p) = self.rare.as_mut().and_then(|r| r.unnamed_parse.as_mut()) {
                *p = Bytes::copy_from_slice(p);
            }
            self.unnamed_parse_owned = true;
        }
        crate::buffers::give(&mut self.to_client);
        crate::buffers::give(&mut self.to_server);
    }

    /// Checks out a server for the transaction the next client message starts.
    async fn bind_server(&mut self) -> Result<(), SessionError> {
        // An idle server right now is the common case: no clock reads and no pass through
        // the waiting state for it.
        // `if let`, not `match`: the idle checkout it tried is not kept across the wait.
        let (checkout, waited) = if let Some(c) = self.pool.try_checkout() {
            (Ok(c), Duration::ZERO)
        } else {
            // Boxed: waiting or connecting is the rare case, and its state would otherwise
            // be part of every idle client's task.
            Box::pin(self.wait_for_server()).await?
        };
        self.pool.stats.waited(waited);
        self.tracker
            .tenant()
            .wait_time_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        let mut checkout = match checkout {
            Ok(c) => c,
            Err(e) => return Err(SessionError::client(e.sqlstate(), e.to_string())),
        };
        self.tracker.set(ClientState::Active);
        // Room for a typical transaction's messages each way, so small writes do not grow
        // the (freed while idle) buffers step by step.
        for buf in [&mut self.to_server, &mut self.to_client] {
            if buf.capacity() == 0 {
                *buf = crate::buffers::take(TXN_BUF);
            } else {
                buf.reserve(TXN_BUF);
            }
        }
        self.xact_started = Some(Instant::now());
        self.status = b'I';
        self.unsynced = false;
        self.tenant_in_txn = false;
        self.maybe_ended = false;
        self.expect.clear();
        self.dirty = false;
        self.copy_in = false;
        self.session_changed = false;
        self.unnamed_on_server = false;
        let addr = checkout.upstream_addr();
        let conn = checkout.conn();
        self.cancel.bind(CancelTarget {
            addr,
            pid: conn.backend_pid,
            secret: conn.backend_secret,
        });
        let conn = checkout.conn();
        if params::append_apply_query(
            &mut self.to_server,
            &self.params,
            &mut conn.tracked,
            self.rare.as_ref().map_or(&[], |r| &r.extra),
        ) {
            self.expect.push(Expected::proxy(Reply::Query));
        }
        self.reset_needed = self.rare.as_ref().is_some_and(|r| !r.extra.is_empty());
        self.server = Some(checkout);
        Ok(())
    }

    /// Waits for a server when none is idle (or one must be opened); a KILL ends the wait.
    /// Returns the checkout's outcome and how long it took.
    async fn wait_for_server(
        &mut self,
    ) -> Result<(Result<Checkout, crate::pool::PoolError>, Duration), SessionError> {
        self.tracker.set(ClientState::Waiting);
        let waiting_since = Instant::now();
        let checkout = self.pool.checkout();
        tokio::pin!(checkout);
        let c = loop {
            tokio::select! {
                c = &mut checkout => break c,
                stop = self.tracker.stop_signal() => match stop {
                    Stop::Kill => return Err(killed()),
                    // This transaction still runs; the session ends after it.
                    Stop::Shutdown => self.stopping = true,
                },
            }
        };
        Ok((c, waiting_since.elapsed()))
    }

    /// Returns the server to the pool once the client's transaction is over.
    async fn maybe_release(&mut self) {
        let done = self.server.is_some()
            && self.expect.settled()
            && !self.unsynced
            && self.status == b'I'
            && !self.splitting()
            && self.to_server.is_empty();
        if !done {
            return;
        }
        if (self.session_changed || self.reset_needed) && !self.dirty {
            // Keep the client's session-level settings for its next server (read them back
            // if it changed any), then undo them before anyone else gets this one; the
            // server is released when the reply arrives.
            let sql = if self.session_changed {
                rare(&mut self.rare).captured = Some(Default::default());
                self.expect.push(Expected::capture());
                params::CAPTURE_SQL
            } else {
                self.expect.push(Expected::proxy(Reply::Query));
                "RESET ALL"
            };
            protocol::put_message(&mut self.to_server, b'Q', |b| {
                protocol::put_cstr(b, sql.as_bytes())
            });
            self.session_changed = false;
            self.reset_needed = false;
            self.resetting = true;
            self.unnamed_on_server = false;
            if let Some(server) = self.server.as_mut() {
                server.conn().tracked = Default::default();
            }
            return;
        }
        // A pipelined next transaction is already here: keep the server for it (unless the
        // pool wants it back: PAUSE, RECONNECT).
        if !self.dirty
            && !self.force_release
            && self.server.as_ref().is_some_and(Checkout::reusable)
            && matches!(peek_frame(&self.cbuf, self.max_packet), Ok(Some(_)))
        {
            return;
        }
        self.force_release = false;
        // First make sure no cancel of this client can reach the server any more.
        self.cancel.unbind().await;
        self.transaction_done();
        if let Some(server) = self.server.take() {
            if self.dirty {
                server.discard();
            } else {
                server.release();
            }
        }
        self.tenant_in_txn = false;
        self.maybe_ended = false;
    }

    fn count_query(&self) {
        self.pool.stats.queries.inc();
        self.tracker
            .tenant()
            .queries
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the transaction that just gave back its server.
    fn transaction_done(&mut self) {
        if let Some(started) = self.xact_started.take() {
            self.pool.stats.transaction_done(started.elapsed());
            self.tracker.tenant().xacts.fetch_add(1, Ordering::Relaxed);
        }
        self.tracker.set(ClientState::Idle);
    }

    /// Handles buffered client messages until one needs something that is not there yet.
    fn process_client(&mut self) -> Result<Progress, SessionError> {
        loop {
            if self.resetting || self.splitting() || self.verifying() {
                return Ok(Progress::Idle);
            }
            let frame = match peek_frame(&self.cbuf, self.max_packet) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(Progress::Idle),
                Err(e @ FrameError::TooLarge { .. }) => {
                    return Err(SessionError::client("54000", e.to_string()));
                }
                Err(e) => return Err(SessionError::client("08P01", e.to_string())),
            };
            let tag = frame.tag;
            if tag == b'X' {
                return Ok(Progress::Terminate);
            }
            if self.server.is_none() {
                if self.answer_unbound(tag, frame.total_len) {
                    protocol::skip(&mut self.cbuf, frame.total_len);
                    continue;
                }
                return Ok(Progress::NeedServer);
            }
            // A Query or FunctionCall that starts a transaction needs the tenant injected
            // ahead of it; that is only safe once the server's state is known.
            if matches!(tag, b'Q' | b'F') && self.maybe_ended && !self.expect.only_proxy_setup() {
                return Ok(Progress::Idle);
            }
            if self.waits_for_earlier_batch(tag, frame.total_len) {
                return Ok(Progress::Idle);
            }
            if self.start_verify(tag, frame.total_len) {
                return Ok(Progress::Idle);
            }
            let msg = protocol::take_frame(&mut self.cbuf, frame);
            self.forward_client_message(tag, msg)?;
            if self.expect.has_skipped() {
                // Sent while the server skips to Sync: what it was to prepare never will be.
                self.undo_skipped();
            }
        }
    }

    /// Whether the next client message must wait for the replies to earlier batches (and
    /// the messages behind it with it):
    ///
    /// - a Bind or Describe of a statement whose Parse went out in an earlier batch, still
    ///   unanswered. An error earlier in that batch makes PostgreSQL skip the Parse; only
    ///   then is it known whether this batch must prepare the statement again (or, after the
    ///   client's own Parse was skipped, that the statement does not exist). Within one
    ///   batch there is nothing to wait for: PostgreSQL skips the Parse and the messages
    ///   after it alike.
    /// - a session command pgtenant answers itself (DEALLOCATE, DISCARD ALL, RESET ALL): its
    ///   reply must come after the replies owed for what was sent before it, and if the
    ///   server turns out to be skipping to Sync it is discarded, as PostgreSQL discards it.
    fn waits_for_earlier_batch(&mut self, tag: u8, len: usize) -> bool {
        if self.expect.is_empty() || self.expect.skipping_to_sync() {
            return false;
        }
        let body = protocol::payload(&self.cbuf[..len]);
        match tag {
            b'B' | b'D' => {
                let Some(name) = statement_named(tag, body) else {
                    return false;
                };
                let id = if name.is_empty() {
                    Some(UNNAMED_STATEMENT)
                } else {
                    self.statement(name)
                        .and_then(|s| s.shared.as_ref())
                        .map(|d| d.id)
                };
                id.is_some_and(|id| self.expect.parse_awaits_earlier_sync(id))
            }
            b'Q' if !self.copy_in => {
                let text = protocol::read_cstr(body).map_or(&[][..], |(t, _)| t);
                let session_command = may_be_session_command(text)
                    && sql::session_command(&String::from_utf8_lossy(text)).is_some();
                if session_command && self.unsynced {
                    self.flush_for_replies();
                }
                session_command
            }
            _ => false,
        }
    }

    /// Asks the server for the replies of a batch that has no Sync yet (PostgreSQL holds
    /// them until a Sync or Flush); once per position in the queue.
    fn flush_for_replies(&mut self) {
        let at = self.expect.next_seq();
        let rare = rare(&mut self.rare);
        if rare.flushed_at != Some(at) {
            rare.flushed_at = Some(at);
            protocol::put_message(&mut self.to_server, b'H', |_| {});
        }
    }

    /// Before a Bind/Describe of a described shared statement that the bound server lacks:
    /// prepares and describes it there (Close, Parse, Describe, Flush) and holds the client
    /// until the description arrives (see `finish_verify`). Returns true when it did.
    fn start_verify(&mut self, tag: u8, len: usize) -> bool {
        if self.expect.skipping_to_sync() {
            // The server ignores this message and the preparing alike: nothing to verify.
            return false;
        }
        let body = protocol::payload(&self.cbuf[..len]);
        let Some(name) = statement_named(tag, body).filter(|n| !n.is_empty()) else {
            return false;
        };
        let Some(def) = self
            .statement(name)
            .filter(|s| s.described.is_some() && !s.stale)
            .and_then(|s| s.shared.clone())
        else {
            return false;
        };
        let Some(server) = self.server.as_mut() else {
            return false;
        };
        if server.conn().touch_prepared(def.id) {
            return false;
        }
        self.prepare_on_server(&def);
        protocol::put_message(&mut self.to_server, b'H', |_| {});
        self.unsynced = true;
        rare(&mut self.rare).verifying = Some(def.id);
        true
    }

    /// The fresh description of a statement being verified arrived (or its Parse failed):
    /// a different shape makes the client's statement stale.
    fn finish_verify(&mut self, id: u64, fresh: Option<&[u8]>) {
        let Some(rare) = self.rare.as_mut().filter(|r| r.verifying == Some(id)) else {
            return;
        };
        rare.verifying = None;
        let Some(fresh) = fresh else {
            return;
        };
        for st in rare.statements.values_mut() {
            if st.shared.as_ref().is_some_and(|d| d.id == id)
                && st.described.as_deref().is_some_and(|d| d != fresh)
            {
                st.stale = true;
            }
        }
    }

    /// Whether the guard lets a statement through as it is (anything it refuses or must
    /// check at Bind goes the way of a Parse through a server).
    fn guard_allows_parse(&self, query: &[u8]) -> bool {
        matches!(
            self.guard.check(&String::from_utf8_lossy(query)),
            GuardVerdict::Allow
        )
    }

    /// Answers, without a server, the messages that need none between transactions: closing
    /// a named statement (drivers do this when a statement object is dropped), Flush and
    /// Sync. Returns false when a server is needed.
    fn answer_unbound(&mut self, tag: u8, len: usize) -> bool {
        match tag {
            b'C' => {
                let body = protocol::payload(&self.cbuf[..len]);
                let name = match body.split_first() {
                    Some((b'S', rest)) => match protocol::read_cstr(rest) {
                        Some((name, _)) if !name.is_empty() => name,
                        _ => return false,
                    },
                    _ => return false,
                };
                // Rare path (a driver dropping a statement object): the copy is fine.
                let name = Bytes::copy_from_slice(name);
                if let Some(r) = self.rare.as_mut() {
                    r.statements.remove(&name);
                }
                messages::empty_reply(&mut self.to_client, b'3');
                true
            }
            b'H' => true,
            b'P' => self.parse_unbound(len),
            b'Q' => {
                let text = protocol::payload(&self.cbuf[..len]);
                let text = protocol::read_cstr(text)
                    .map(|(t, _)| t)
                    .unwrap_or_default();
                if !may_be_session_command(text) {
                    return false;
                }
                let text = String::from_utf8_lossy(text).into_owned();
                self.answer_session_command(&text, b'I')
            }
            b'S' => {
                // Unbound means no transaction and nothing outstanding: PostgreSQL would
                // answer idle.
                messages::ready_for_query(&mut self.to_client, b'I');
                true
            }
            _ => false,
        }
    }

    /// A named Parse between transactions is recorded without a server (the statement is
    /// prepared lazily on whichever server runs its Bind, like every shared statement), so
    /// preparing never waits for a free server. PostgreSQL would report a syntax error at
    /// the Parse; here it comes with the first Bind or Describe. Unnamed, reserved, already
    /// used names and statements pgtenant refuses still go through a server.
    fn parse_unbound(&mut self, len: usize) -> bool {
        let body = protocol::payload(&self.cbuf[..len]);
        let Some((name, rest)) = protocol::read_cstr(body) else {
            return false;
        };
        let Some((query, _)) = protocol::read_cstr(rest) else {
            return false;
        };
        if name.is_empty()
            || name == INJECT_STATEMENT.as_bytes()
            || name == INJECT_SEALED_STATEMENT.as_bytes()
            || self.statement(name).is_some()
        {
            return false;
        }
        let plan = SqlPlan::of_statement(&String::from_utf8_lossy(query));
        if plan.needs_session.is_some() || plan.executes_prepared || !self.guard_allows_parse(query)
        {
            return false;
        }
        let def = self.pool.statements.register(rest);
        rare(&mut self.rare).statements.insert(
            Bytes::copy_from_slice(name),
            ClientStatement {
                plan,
                shared: Some(def),
                described: None,
                stale: false,
                needs_fresh_parse: true,
                tenant_params: Vec::new(),
                parse_seq: None,
            },
        );
        messages::empty_reply(&mut self.to_client, b'1');
        true
    }

    fn forward_client_message(&mut self, tag: u8, msg: Bytes) -> Result<(), SessionError> {
        if matches!(tag, b'Q' | b'F') && self.expect.skipping_to_sync() {
            // PostgreSQL discards a Query or FunctionCall that arrives while it skips to
            // Sync (protocol docs, "Extended Query"): no reply and no effect, so nothing is
            // sent or assumed.
            return Ok(());
        }
        let body = protocol::payload(&msg);
        match tag {
            b'Q' => return self.forward_query(msg),
            b'P' => {
                let (name, rest) = split_cstr(body)?;
                let (query, _) = split_cstr(rest)?;
                if name == INJECT_STATEMENT.as_bytes() {
                    return Err(SessionError::client(
                        "42P05",
                        format!(
                            "prepared statement name \"{INJECT_STATEMENT}\" is reserved by pgtenant"
                        ),
                    ));
                }
                let query_text = String::from_utf8_lossy(query);
                let tenant_params = match self.guard_check(&query_text, |_| None) {
                    Ok(params) => params,
                    Err(refusal) => {
                        self.refuse_with("42501", &refusal.message);
                        return Ok(());
                    }
                };
                let plan = SqlPlan::of_statement(&query_text);
                if plan.executes_prepared {
                    self.tracker.stats().guard_refused(SQL_EXECUTE_RULE);
                    self.refuse_with("42501", &sql_execute_message());
                    return Ok(());
                }
                if let Some(feature) = plan.needs_session {
                    self.refuse_parse(&session_feature_message(feature));
                    return Ok(());
                }
                if name.is_empty() {
                    let rare = rare(&mut self.rare);
                    rare.statements.insert(
                        Bytes::new(),
                        ClientStatement {
                            plan,
                            shared: None,
                            described: None,
                            stale: false,
                            needs_fresh_parse: false,
                            tenant_params,
                            parse_seq: None,
                        },
                    );
                    rare.unnamed_parse = Some(msg.clone());
                    self.unnamed_parse_owned = false;
                    self.unnamed_on_server = true;
                    // Marked so that a failed or skipped Parse is undone (`parse_not_done`).
                    self.to_server.extend_from_slice(&msg);
                    self.expect
                        .push(Expected::client(Reply::Parse).with_stmt(UNNAMED_STATEMENT));
                    self.unsynced = true;
                } else if self.statement(name).is_some() {
                    // PostgreSQL refuses to redefine a prepared statement; raised by the
                    // server itself so the error handling is PostgreSQL's.
                    let message = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    self.refuse_with("42P05", &message);
                } else {
                    let def = self.pool.statements.register(rest);
                    // Always parsed afresh, as PostgreSQL would for this client: a shared
                    // statement already on the server may carry a plan from before a schema
                    // change. Closed first (it may exist), described for the record.
                    if !self.server_conn()?.touch_prepared(def.id) {
                        self.make_room_for_statement();
                        self.server_conn()?.add_prepared(def.id);
                    }
                    self.send_close_statement(&def.name);
                    self.to_server.extend_from_slice(&def.parse);
                    let parse_seq = Some(self.expect.next_seq());
                    self.expect
                        .push(Expected::client(Reply::Parse).with_stmt(def.id));
                    rare(&mut self.rare).statements.insert(
                        // Copied: a slice would keep the whole read buffer alive.
                        Bytes::copy_from_slice(name),
                        ClientStatement {
                            plan,
                            shared: Some(Arc::clone(&def)),
                            described: None,
                            stale: false,
                            needs_fresh_parse: false,
                            tenant_params,
                            parse_seq,
                        },
                    );
                    self.send_describe_statement(&def);
                    self.unsynced = true;
                }
            }
            b'B' => {
                let (portal, rest) = split_cstr(body)?;
                let (stmt, tail) = split_cstr(rest)?;
                let (plan, shared, mut stale) = match self.statement(stmt) {
                    Some(s) => (s.plan.clone(), s.shared.clone(), s.stale),
                    None if !stmt.is_empty() => {
                        // Only the client's own statements: names on the server (pgtenant's
                        // injection, shared statements) are never reachable by a client.
                        self.refuse_unknown_statement(stmt);
                        return Ok(());
                    }
                    None if self.unnamed_parse().is_none() && !self.unnamed_on_server => {
                        // Never another client's unnamed statement left on the server.
                        self.refuse_with("26000", "unnamed prepared statement does not exist");
                        return Ok(());
                    }
                    None => (SqlPlan::default(), None, false),
                };
                if let Some(st) = self.statement(stmt).filter(|s| !s.tenant_params.is_empty()) {
                    // Seed-style `set_config('app.current_tenant_id', $n, true)`: only the
                    // client's own tenant may be bound.
                    let own = self.tenant.as_str().as_bytes();
                    let foreign = st
                        .tenant_params
                        .iter()
                        .any(|&n| bind_parameter(tail, n) != Some(own));
                    if foreign {
                        self.tracker
                            .stats()
                            .guard_refused(crate::guard::rule::TENANT_SETTING);
                        let message = format!(
                            "pgtenant refuses setting \"{}\" to a tenant other than the one of \
                             this connection's token (guard rule \"{}\")",
                            self.guard.tenant_setting(),
                            crate::guard::rule::TENANT_SETTING
                        );
                        self.refuse_with("42501", &message);
                        return Ok(());
                    }
                }
                if let (Some(def), Some(told)) = (
                    shared.as_ref(),
                    // Field by field: the server is borrowed mutably below.
                    self.rare
                        .as_ref()
                        .and_then(|r| r.statements.get(stmt))
                        .and_then(|s| s.described.as_ref()),
                ) {
                    // Another client re-prepared the shared statement after a schema change:
                    // its shape on this server is no longer what this client was told.
                    if let Some(now) = self
                        .server
                        .as_mut()
                        .and_then(|s| s.conn().described.get(&def.id).cloned())
                    {
                        stale |= now != *told;
                    }
                }
                if stale {
                    // What PostgreSQL answers when a prepared statement's result columns
                    // changed under it; the client must prepare it again.
                    self.refuse_with("0A000", "cached plan must not change result type");
                    if let Some(last) = self.expect.last_mut() {
                        last.stale_plan = true;
                    }
                    return Ok(());
                }
                if self.bind_needs_tenant(&plan) {
                    self.inject_tenant();
                }
                if plan.drops_prepared {
                    self.mark_reprepare();
                }
                self.session_changed |= plan.changes_session;
                match shared {
                    Some(def) => {
                        self.prepare_for(stmt, &def);
                        protocol::put_message(&mut self.to_server, b'B', |b| {
                            protocol::put_cstr(b, portal);
                            protocol::put_cstr(b, def.name.as_bytes());
                            b.extend_from_slice(tail);
                        });
                        self.expect
                            .push(Expected::client(Reply::Bind).with_stmt(def.id));
                        self.unsynced = true;
                    }
                    None => {
                        if stmt.is_empty() {
                            self.ensure_unnamed();
                        }
                        self.push_client(msg, Some(Reply::Bind));
                    }
                }
                if plan.ends_transaction {
                    self.tenant_in_txn = false;
                }
            }
            b'E' => {
                self.count_query();
                self.push_client(msg, Some(Reply::Execute));
            }
            b'D' => match body.first() {
                Some(b'S') => {
                    let (name, _) = split_cstr(&body[1..])?;
                    match self.statement(name).and_then(|s| s.shared.clone()) {
                        Some(def) => {
                            self.prepare_for(name, &def);
                            protocol::put_message(&mut self.to_server, b'D', |b| {
                                b.extend_from_slice(b"S");
                                protocol::put_cstr(b, def.name.as_bytes());
                            });
                            self.expect
                                .push(Expected::client(Reply::DescribeStatement).with_stmt(def.id));
                            self.unsynced = true;
                        }
                        None if !name.is_empty() => {
                            self.refuse_unknown_statement(name);
                            return Ok(());
                        }
                        None => {
                            self.ensure_unnamed();
                            self.push_client(msg, Some(Reply::DescribeStatement));
                        }
                    }
                }
                Some(b'P') => self.push_client(msg, Some(Reply::DescribePortal)),
                _ => {
                    return Err(SessionError::client(
                        "08P01",
                        "invalid DESCRIBE message subtype",
                    ));
                }
            },
            b'C' => match body.first() {
                Some(b'S') => {
                    let (name, _) = split_cstr(&body[1..])?;
                    if let Some(r) = self.rare.as_mut() {
                        r.statements.remove(name);
                    }
                    if name.is_empty() {
                        self.push_client(msg, Some(Reply::Close));
                    } else {
                        // The shared server-side statement stays for other clients; closing
                        // a name that does not exist is not an error in PostgreSQL either.
                        self.expect.push(Expected::synthetic(b'3'));
                        self.unsynced = true;
                        self.answer_synthetic();
                    }
                }
                Some(b'P') => self.push_client(msg, Some(Reply::Close)),
                _ => {
                    return Err(SessionError::client(
                        "08P01",
                        "invalid CLOSE message subtype",
                    ));
                }
            },
            b'S' | b'H' if self.copy_in => {
                // PostgreSQL ignores Sync and Flush while copying in: no reply to expect.
                self.push_client(msg, None);
            }
            b'S' => {
                self.push_client(msg, Some(Reply::Sync));
                self.unsynced = false;
                self.maybe_ended = true;
            }
            b'H' => self.push_client(msg, None),
            b'F' => {
                let oid = body
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if let Err(refusal) = self.guard.check_function_call(oid) {
                    self.tracker.stats().guard_refused(refusal.rule);
                    self.refuse_query("42501", &refusal.message);
                    return Ok(());
                }
                if self.needs_tenant() && self.status != b'E' {
                    self.inject_tenant();
                }
                self.push_client(msg, Some(Reply::FunctionCall));
                self.unsynced = false;
                self.maybe_ended = true;
            }
            b'd' => self.push_client(msg, None),
            b'c' | b'f' => {
                // Syncs sent before this point, during the copy, are ignored by PostgreSQL.
                rare(&mut self.rare).copy_end_seq = self.expect.next_seq();
                self.copy_in = false;
                self.push_client(msg, None);
            }
            other => {
                return Err(SessionError::client(
                    "08P01",
                    format!(
                        "invalid frontend message type '{}'",
                        char::from(other).escape_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Forwards a simple Query, splitting it after a transaction-ending statement that is
    /// followed by more statements, so that every transaction gets the tenant.
    fn forward_query(&mut self, msg: Bytes) -> Result<(), SessionError> {
        let (text, _) = split_cstr(protocol::payload(&msg))?;
        self.count_query();
        // A simple Query destroys the unnamed statement (PostgreSQL's exec_simple_query).
        if let Some(r) = self.rare.as_mut() {
            r.unnamed_parse = None;
        }
        self.unnamed_on_server = false;
        // Only where PostgreSQL would run it and answer it next (see
        // `waits_for_earlier_batch`); in a failed transaction block the server refuses it
        // with PostgreSQL's own error.
        if self.expect.settled() && self.status != b'E' && may_be_session_command(text) {
            let status = self.status;
            if self.answer_session_command(&String::from_utf8_lossy(text), status) {
                return Ok(());
            }
        }
        let utf8 = std::str::from_utf8(text);
        let lossy;
        let text_str = match utf8 {
            Ok(t) => t,
            Err(_) => {
                // Not UTF-8 (a single-byte client encoding): what matters to the scans is
                // ASCII, which decoding keeps; byte offsets do not survive, so no splitting.
                lossy = String::from_utf8_lossy(text);
                &lossy
            }
        };
        let guarded = if self.trailing_reset_all_is_harmless(text_str) {
            Ok(Vec::new())
        } else {
            self.guard_check(text_str, |_| None)
        };
        if let Err(refusal) = guarded {
            self.refuse_query("42501", &refusal.message);
            return Ok(());
        }
        let mut plan = SqlPlan::of_query(text_str);
        if utf8.is_err() {
            plan.splits.clear();
            plan.begin_split = false;
        }
        if plan.executes_prepared {
            self.tracker.stats().guard_refused(SQL_EXECUTE_RULE);
            self.refuse_query("42501", &sql_execute_message());
            return Ok(());
        }
        if let Some(feature) = plan.needs_session {
            self.refuse_query("0A000", &session_feature_message(feature));
            return Ok(());
        }
        // A lone ROLLBACK/COMMIT reads nothing; a failed transaction accepts only those.
        let lone_end = plan.statements == 1 && plan.ends_transaction;
        let wants_tenant = plan.statements > 0
            && !plan.no_transaction_block
            && !plan.begin_split
            && !plan.opens_block
            && !lone_end;
        if wants_tenant && self.needs_tenant() && self.status != b'E' {
            self.inject_tenant();
        }
        if plan.drops_prepared {
            self.mark_reprepare();
        }
        self.session_changed |= plan.changes_session;
        if plan.splits.is_empty() {
            self.push_client(msg.clone(), Some(Reply::Query));
        } else {
            let text = msg.slice_ref(text);
            let rare = rare(&mut self.rare);
            let mut start = 0;
            for &at in &plan.splits {
                rare.pieces.push_back(start..at);
                start = at;
            }
            rare.pieces.push_back(start..text.len());
            rare.pieces_text = text;
            self.send_next_piece(false);
        }
        if plan.ends_transaction {
            self.tenant_in_txn = false;
        }
        self.unsynced = false;
        self.maybe_ended = true;
        Ok(())
    }

    /// Sends the next part of a split Query, with the tenant set first when the server's
    /// transaction is usable.
    fn send_next_piece(&mut self, inject: bool) {
        let Some(rare) = self.rare.as_mut() else {
            return;
        };
        let Some(range) = rare.pieces.pop_front() else {
            return;
        };
        let piece = rare.pieces_text.slice(range);
        let last = rare.pieces.is_empty();
        if inject {
            self.inject_tenant();
        }
        protocol::put_message(&mut self.to_server, b'Q', |b| protocol::put_cstr(b, &piece));
        self.expect.push(Expected::piece(last));
        self.maybe_ended = true;
    }

    /// Runs the guard over client SQL. `param` gives the bytes bound to `$n` (none in a
    /// simple Query). A seed-style setting of the tenant passes only with the client's own
    /// tenant; a refusal is counted and returned.
    fn guard_check<'p>(
        &self,
        sql: &str,
        param: impl Fn(usize) -> Option<&'p [u8]>,
    ) -> Result<Vec<usize>, crate::guard::Refusal> {
        let refusal = match self.guard.check(sql) {
            GuardVerdict::Allow => return Ok(Vec::new()),
            GuardVerdict::AllowIfOwnTenant(values) => {
                let mut params = Vec::new();
                let mut foreign = false;
                for v in values {
                    match v {
                        TenantValue::Param(n) => params.push(n),
                        lit => foreign |= !lit.is_own_tenant(self.tenant.as_str(), &param),
                    }
                }
                if !foreign {
                    return Ok(params);
                }
                crate::guard::Refusal {
                    rule: crate::guard::rule::TENANT_SETTING,
                    message: format!(
                        "pgtenant refuses setting \"{}\" to a tenant other than the one of \
                         this connection's token (guard rule \"{}\")",
                        self.guard.tenant_setting(),
                        crate::guard::rule::TENANT_SETTING
                    ),
                }
            }
            GuardVerdict::Refuse(r) => r,
        };
        self.tracker.stats().guard_refused(refusal.rule);
        tracing::warn!(client = self.id, tenant = %self.tenant, rule = refusal.rule, "guard refused a statement");
        Err(refusal)
    }

    /// A query that ends with `RESET ALL` outside a transaction block (connection pools send
    /// `…; RESET ALL` when a connection is returned): the reset clears the tenant only for
    /// the rest of a transaction that ends right there, so it is allowed when everything
    /// before it passes the guard. Its session effects are read back and reset like any SET.
    fn trailing_reset_all_is_harmless(&self, text: &str) -> bool {
        let end = text.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
        let ends_with_all = end
            .len()
            .checked_sub(3)
            .and_then(|at| end.get(at..))
            .is_some_and(|w| w.eq_ignore_ascii_case("all"));
        if !ends_with_all || self.status != b'I' || !self.expect.only_proxy_setup() {
            return false;
        }
        let Some(last) = sql::statements(text)
            .filter(|s| s.kind != sql::StatementKind::Empty)
            .last()
        else {
            return false;
        };
        if sql::session_command(last.text) != Some(SessionCommand::ResetAll) {
            return false;
        }
        let before = &text[..last.start];
        // Not when the query opens a block: the reset would then clear the tenant of a
        // transaction that goes on.
        let opens_block = sql::statements(before).any(|st| st.kind == sql::StatementKind::Begin);
        !opens_block
            && (before.trim().is_empty() || matches!(self.guard.check(before), GuardVerdict::Allow))
    }

    /// Replaces the client's simple Query with one that makes PostgreSQL raise the error
    /// (so an open transaction block is aborted as PostgreSQL would).
    fn refuse_query(&mut self, sqlstate: &str, message: &str) {
        let sql = raise_sql(sqlstate, message);
        let mut q = BytesMut::new();
        protocol::put_message(&mut q, b'Q', |b| protocol::put_cstr(b, sql.as_bytes()));
        self.push_client(q.freeze(), Some(Reply::Query));
        self.unsynced = false;
        self.maybe_ended = true;
    }

    /// Answers a Parse with an error raised by PostgreSQL itself (so the extended-protocol
    /// error handling — skip to Sync, abort an open transaction block — is PostgreSQL's):
    /// the unnamed statement is parsed as a `DO` block that raises, and executed. The
    /// client's own statement is never created.
    fn refuse_parse(&mut self, message: &str) {
        self.refuse_with("0A000", message);
    }

    /// A Bind or Describe of a statement name the client never prepared: PostgreSQL's 26000,
    /// without the name ever reaching the server.
    fn refuse_unknown_statement(&mut self, name: &[u8]) {
        let message = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        );
        self.refuse_with("26000", &message);
    }

    /// Makes PostgreSQL raise `sqlstate`/`message` as the reply to the client's current
    /// extended-protocol message (see `refuse_parse`).
    fn refuse_with(&mut self, sqlstate: &str, message: &str) {
        let sql = raise_sql(sqlstate, message);
        protocol::put_message(&mut self.to_server, b'P', |b| {
            protocol::put_cstr(b, b"");
            protocol::put_cstr(b, sql.as_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        });
        put_bind_execute(&mut self.to_server, b"", &[]);
        self.expect.push(Expected::proxy(Reply::Parse));
        self.expect.push(Expected::proxy(Reply::Bind));
        self.expect.push(Expected::client(Reply::Execute));
        self.unsynced = true;
        self.unnamed_on_server = false;
    }

    /// Re-sends the client's unnamed statement to a server that does not have it.
    fn ensure_unnamed(&mut self) {
        if self.unnamed_on_server {
            return;
        }
        if let Some(parse) = self.unnamed_parse().cloned() {
            self.to_server.extend_from_slice(&parse);
            // Marked like a shared statement so that a failure reaches the client (its
            // Bind would have failed the same way).
            self.expect
                .push(Expected::proxy(Reply::Parse).with_stmt(UNNAMED_STATEMENT));
            self.unnamed_on_server = true;
        }
    }

    /// Answers `DEALLOCATE name|ALL` and `DISCARD ALL` for the client's own view of its
    /// session (its prepared statements live in pgtenant, under shared names on the
    /// servers; its settings follow it from server to server), as PostgreSQL would answer
    /// them. `status` is the transaction state to report. Returns false when the statement
    /// must go to the server instead (an unknown name, DISCARD ALL inside a transaction
    /// block: PostgreSQL's own error then).
    fn answer_session_command(&mut self, text: &str, status: u8) -> bool {
        let tag: &[u8] = match sql::session_command(text) {
            Some(SessionCommand::DeallocateAll) => {
                if let Some(r) = self.rare.as_mut() {
                    r.statements.retain(|name, _| name.is_empty());
                }
                b"DEALLOCATE ALL"
            }
            Some(SessionCommand::Deallocate(name)) => {
                let removed = self
                    .rare
                    .as_mut()
                    .and_then(|r| r.statements.remove(name.as_bytes()));
                if removed.is_none() {
                    // Never forwarded: server-side names are pgtenant's (its own statements
                    // and the shared ones), not the client's.
                    let message = format!("prepared statement \"{name}\" does not exist");
                    if self.server.is_some() {
                        self.refuse_query("26000", &message);
                    } else {
                        messages::error_response(
                            &mut self.to_client,
                            Severity::Error,
                            "26000",
                            &message,
                            None,
                        );
                        messages::ready_for_query(&mut self.to_client, status);
                    }
                    return true;
                }
                b"DEALLOCATE"
            }
            Some(SessionCommand::ResetAll) if status == b'I' => {
                // The client's session settings go back to its startup values; the tenant,
                // set per transaction by pgtenant, is not a session setting.
                self.params = self.startup_params.clone();
                if let Some(r) = self.rare.as_mut() {
                    r.extra.clear();
                }
                if self.server.is_some() {
                    self.reset_needed = true;
                }
                b"RESET"
            }
            Some(SessionCommand::DiscardAll) if status == b'I' => {
                if let Some(r) = self.rare.as_mut() {
                    r.statements.clear();
                    r.extra.clear();
                }
                self.params = self.startup_params.clone();
                if self.server.is_some() {
                    self.reset_needed = true;
                }
                b"DISCARD ALL"
            }
            _ => return false,
        };
        protocol::put_message(&mut self.to_client, b'C', |b| protocol::put_cstr(b, tag));
        messages::ready_for_query(&mut self.to_client, status);
        true
    }

    /// A client statement by its name.
    fn statement(&self, name: &[u8]) -> Option<&ClientStatement> {
        self.rare.as_ref()?.statements.get(name)
    }

    /// The client's latest Parse of the unnamed statement.
    fn unnamed_parse(&self) -> Option<&Bytes> {
        self.rare.as_ref()?.unnamed_parse.as_ref()
    }

    /// Parts of a split Query are still to be sent.
    fn splitting(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| !r.pieces.is_empty())
    }

    /// A statement is being verified on the server; client messages wait.
    fn verifying(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.verifying.is_some())
    }

    /// Whether the next statement must set the tenant first.
    fn needs_tenant(&self) -> bool {
        !self.tenant_in_txn || self.maybe_ended
    }

    /// A Bind sets the tenant first unless its statement cannot run in a transaction block,
    /// only ends the transaction (ROLLBACK/COMMIT, also accepted in a failed transaction),
    /// or the transaction is known to have failed (the Bind fails with 25P02 by itself).
    fn bind_needs_tenant(&self, plan: &SqlPlan) -> bool {
        // A lone BEGIN/SET TRANSACTION reads nothing: the tenant is set (with a bound
        // parameter) before the next statement of the block instead.
        if plan.no_transaction_block
            || plan.opens_block
            || (plan.statements == 1 && plan.ends_transaction)
        {
            return false;
        }
        if self.status == b'E' && !self.maybe_ended {
            return false;
        }
        self.needs_tenant()
    }

    fn push_client(&mut self, msg: Bytes, reply: Option<Reply>) {
        self.to_server.extend_from_slice(&msg);
        if let Some(reply) = reply {
            self.expect.push(Expected::client(reply));
            if !reply.ends_with_ready() {
                self.unsynced = true;
            }
        }
    }

    /// Something may have deallocated statements on the server (DEALLOCATE, DISCARD):
    /// prepare again whatever is needed next.
    fn mark_reprepare(&mut self) {
        if let Some(server) = self.server.as_mut() {
            let conn = server.conn();
            conn.needs_reprepare = true;
            conn.forget_all_prepared();
        }
    }

    fn server_conn(&mut self) -> Result<&mut crate::server::ServerConn, SessionError> {
        match self.server.as_mut() {
            Some(s) => Ok(s.conn()),
            None => Err(SessionError::Desync('?')),
        }
    }

    /// Prepares the client statement `name` (shared as `def`) on the bound server if needed;
    /// one parsed between transactions without a server is parsed afresh once, as
    /// PostgreSQL would have at the client's Parse (a plan from before a schema change must
    /// not stand in for it).
    fn prepare_for(&mut self, name: &[u8], def: &Arc<StmtDef>) {
        let fresh = self
            .rare
            .as_mut()
            .and_then(|r| r.statements.get_mut(name))
            .map(|s| std::mem::take(&mut s.needs_fresh_parse))
            .unwrap_or(false);
        if let Some(server) = self.server.as_mut().filter(|_| fresh) {
            server.conn().forget_prepared(def.id);
        }
        self.ensure_prepared(def);
    }

    fn ensure_prepared(&mut self, def: &Arc<StmtDef>) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.conn().touch_prepared(def.id) {
            return;
        }
        self.prepare_on_server(def);
    }

    /// Prepares a shared statement on the bound server (Close first: after a DEALLOCATE
    /// pgtenant cannot tell whether it survived) and asks for its shape.
    fn prepare_on_server(&mut self, def: &StmtDef) {
        self.make_room_for_statement();
        if let Some(server) = self.server.as_mut() {
            server.conn().add_prepared(def.id);
        }
        self.send_close_statement(&def.name);
        self.to_server.extend_from_slice(&def.parse);
        self.expect
            .push(Expected::proxy(Reply::Parse).with_stmt(def.id));
        self.send_describe_statement(def);
    }

    /// Asks the server for a shared statement's shape (swallowed; recorded per server).
    fn send_describe_statement(&mut self, def: &StmtDef) {
        protocol::put_message(&mut self.to_server, b'D', |b| {
            b.extend_from_slice(b"S");
            protocol::put_cstr(b, def.name.as_bytes());
        });
        self.expect
            .push(Expected::proxy(Reply::DescribeStatement).with_stmt(def.id));
    }

    /// Closes the bound server's least recently used shared statement when it holds
    /// `max_prepared_statements` already.
    fn make_room_for_statement(&mut self) {
        let max = self.max_prepared;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let conn = server.conn();
        while let Some(victim) = conn.prepared_victim(max) {
            conn.forget_prepared(victim);
            protocol::put_message(&mut self.to_server, b'C', |b| {
                b.extend_from_slice(b"S");
                protocol::put_cstr(b, crate::pool::statements::server_name(victim).as_bytes());
            });
            self.expect.push(Expected::proxy(Reply::Close));
        }
    }

    fn send_close_statement(&mut self, name: &str) {
        protocol::put_message(&mut self.to_server, b'C', |b| {
            b.extend_from_slice(b"S");
            protocol::put_cstr(b, name.as_bytes());
        });
        self.expect.push(Expected::proxy(Reply::Close));
    }

    /// Answers synthetic entries that reached the front of the queue.
    fn answer_synthetic(&mut self) {
        while let Some(tag) = self.expect.take_synthetic() {
            messages::empty_reply(&mut self.to_client, tag);
        }
    }

    /// Appends the tenant injection ahead of the next client message.
    fn inject_tenant(&mut self) {
        let sealed = self.pool.sealed();
        let mut sealed_inject = None;
        // Prepared again in an earlier batch whose replies are not in: if an error made the
        // server skip that, this batch would find nothing to bind.
        let unsettled = self.expect.parse_awaits_earlier_sync(INJECT_STATEMENTS);
        if let Some(server) = self.server.as_mut() {
            let conn = server.conn();
            if conn.needs_reprepare || unsettled {
                conn.needs_reprepare = false;
                let mut statements = vec![(INJECT_STATEMENT, INJECT_SQL, 2)];
                if sealed {
                    statements.push((INJECT_SEALED_STATEMENT, INJECT_SEALED_SQL, 4));
                }
                for (name, sql, params) in statements {
                    protocol::put_message(&mut self.to_server, b'C', |b| {
                        b.extend_from_slice(b"S");
                        protocol::put_cstr(b, name.as_bytes());
                    });
                    protocol::put_message(&mut self.to_server, b'P', |b| {
                        protocol::put_cstr(b, name.as_bytes());
                        protocol::put_cstr(b, sql.as_bytes());
                        b.extend_from_slice(&(params as i16).to_be_bytes());
                        for _ in 0..params {
                            b.extend_from_slice(&25u32.to_be_bytes());
                        }
                    });
                    self.expect.push(Expected::proxy(Reply::Close));
                    self.expect
                        .push(Expected::proxy(Reply::Parse).with_stmt(INJECT_STATEMENTS));
                }
            }
            if sealed {
                // The seal depends on the server's secret: built per server, reused while
                // the client keeps getting the same one.
                let rare = rare(&mut self.rare);
                sealed_inject = match &rare.sealed_inject {
                    Some((id, bytes)) if *id == conn.id => Some(bytes.clone()),
                    _ => conn.seal_secret.map(|secret| {
                        let bytes = build_sealed_injection(
                            self.guard.tenant_setting().as_bytes(),
                            self.tenant.as_str().as_bytes(),
                            &secret,
                        );
                        rare.sealed_inject = Some((conn.id, bytes.clone()));
                        bytes
                    }),
                };
            }
        }
        match sealed_inject {
            Some(bytes) => self.to_server.extend_from_slice(&bytes),
            // Without a registered secret a sealed pool would inject an unsealed tenant, which
            // the sealed policies refuse anyway (fail closed); the pool never hands out such
            // a server (registration failure closes it).
            // Written afresh each time (a few dozen bytes): cheaper than every idle client
            // keeping its own copy.
            None => put_bind_execute(
                &mut self.to_server,
                INJECT_STATEMENT.as_bytes(),
                &[
                    self.guard.tenant_setting().as_bytes(),
                    self.tenant.as_str().as_bytes(),
                ],
            ),
        }
        self.expect.push(Expected::proxy(Reply::Bind));
        self.expect.push(Expected::proxy(Reply::Execute));
        self.tenant_in_txn = true;
        self.maybe_ended = false;
    }

    /// Handles complete server messages: forwards the client's replies, swallows the
    /// replies to injected messages, and tracks transaction state.
    fn process_server(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut server.conn().rbuf);
        let result = self.process_server_buf(&mut rbuf);
        if let Some(server) = self.server.as_mut() {
            let conn = server.conn();
            // Keep the allocation of whichever buffer is larger.
            if conn.rbuf.is_empty() {
                conn.rbuf = rbuf;
            } else {
                rbuf.extend_from_slice(&conn.rbuf);
                conn.rbuf = rbuf;
            }
        }
        result
    }

    fn process_server_buf(&mut self, rbuf: &mut BytesMut) -> Result<(), SessionError> {
        let mut pos = 0usize;
        let mut result = Ok(());
        loop {
            let frame = match peek_frame(&rbuf[pos..], MAX_SERVER_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    result = Err(SessionError::Desync('?'));
                    break;
                }
            };
            let msg = &rbuf[pos..pos + frame.total_len];
            if let Err(e) = self.on_server_message(frame.tag, msg) {
                result = Err(e);
                break;
            }
            pos += frame.total_len;
        }
        let _ = rbuf.split_to(pos);
        result
    }

    /// Decides one server message, updates state, and copies it to the client if it is the
    /// client's.
    fn on_server_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), SessionError> {
        if tag == b'E' && self.expect.is_empty() {
            // Unsolicited error: PostgreSQL is terminating this backend (shutdown, admin
            // kill, idle timeout). Pass it on; the connection ends after it.
            self.to_client.extend_from_slice(msg);
            self.dirty = true;
            return Err(SessionError::ServerTerminated);
        }
        if tag == b'G' {
            self.on_copy_in_started();
        }
        let step = self.expect.on_message(tag);
        if self.expect.has_skipped() {
            self.undo_skipped();
        }
        if step.verdict == Verdict::Desync {
            return Err(SessionError::Desync(char::from(tag)));
        }
        let mut verdict = step.verdict;
        if let Some(failed) = step.completed.filter(|e| tag == b'E' && e.stmt != 0) {
            // Forget that this server has the statement: a failed Parse did not create it,
            // and after a failed Bind (e.g. "cached plan must not change result type" once
            // the schema changed) a fresh Close + Parse gives it a new plan next time.
            if let Some(server) = self.server.as_mut() {
                server.conn().forget_prepared(failed.stmt);
            }
            if failed.reply == Reply::Parse {
                self.parse_not_done(&failed);
            }
            if failed.owner == Owner::Proxy && failed.stmt != INJECT_STATEMENTS {
                // Preparing for the client's Bind/Describe failed (a table was dropped, …):
                // the client's own message would have drawn this error.
                verdict = Verdict::Forward;
            }
        }
        if tag == b'D' && self.rare.as_ref().is_some_and(|r| r.captured.is_some()) {
            self.capture_row(msg);
        }
        if tag == b'E' && step.completed.is_some_and(|e| e.stale_plan) {
            // Word it as PostgreSQL's plan cache does, routine included: drivers such as
            // asyncpg recognise it by that and prepare the statement again.
            let fields = [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "0A000"),
                (b'M', "cached plan must not change result type"),
                (b'F', "plancache.c"),
                (b'R', "RevalidateCachedQuery"),
            ];
            protocol::put_message(&mut self.to_client, b'E', |b| {
                for (code, value) in fields {
                    b.extend_from_slice(&[code]);
                    protocol::put_cstr(b, value.as_bytes());
                }
                b.extend_from_slice(&[0]);
            });
            verdict = Verdict::Swallow;
        }
        if let Some(done) = step.completed.filter(|e| e.stmt != 0) {
            match (done.reply, done.owner, tag) {
                (Reply::DescribeStatement, Owner::Client, b'T' | b'n') => {
                    let desc = Bytes::copy_from_slice(msg);
                    if let Some(server) = self.server.as_mut() {
                        server.conn().described.insert(done.stmt, desc.clone());
                    }
                    let statements = self.rare.as_mut().map(|r| r.statements.values_mut());
                    for st in statements.into_iter().flatten() {
                        if st.shared.as_ref().is_some_and(|d| d.id == done.stmt) {
                            st.described = Some(desc.clone());
                            st.stale = false;
                        }
                    }
                }
                (Reply::DescribeStatement, Owner::Proxy, b'T' | b'n') => {
                    if let Some(server) = self.server.as_mut() {
                        server
                            .conn()
                            .described
                            .insert(done.stmt, Bytes::copy_from_slice(msg));
                    }
                    self.finish_verify(done.stmt, Some(msg));
                }
                (_, _, b'E') => self.finish_verify(done.stmt, None),
                _ => {}
            }
        }
        match tag {
            b'S' => self.on_parameter_status(msg, verdict == Verdict::Forward),
            b'E' if step.proxy_error && verdict == Verdict::Swallow => {
                let payload = protocol::payload(msg);
                let sqlstate = messages::error_sqlstate(payload).unwrap_or_default();
                let was_query = step.completed.is_none()
                    && self.expect.front().is_some_and(|e| e.reply == Reply::Query);
                if was_query {
                    // pgtenant's own parameter SETs failed: tell the client, and close this
                    // server afterwards since its settings are now unknown.
                    self.dirty = true;
                    self.params = Default::default();
                    let text = messages::error_field(payload, b'M').unwrap_or_default();
                    messages::warning(
                        &mut self.to_client,
                        "01000",
                        &format!(
                            "pgtenant could not apply the connection's session parameters: {}",
                            String::from_utf8_lossy(text)
                        ),
                    );
                } else if sqlstate == b"25P02" {
                    // The transaction had already failed: the client's own next message
                    // would have drawn exactly this error.
                    verdict = Verdict::Forward;
                } else {
                    tracing::error!(
                        client = self.id,
                        tenant = %self.tenant,
                        sqlstate = %String::from_utf8_lossy(sqlstate),
                        "setting the tenant failed; closing the session"
                    );
                    self.dirty = true;
                    return Err(SessionError::client(
                        "08P01",
                        "pgtenant could not set the tenant for this transaction; the connection is closed",
                    ));
                }
            }
            b'Z' => {
                let status = protocol::payload(msg).first().copied().unwrap_or(b'I');
                self.status = status;
                if self.resetting && self.expect.is_empty() {
                    self.resetting = false;
                    self.force_release = true;
                    if let Some(rare) = self.rare.as_mut()
                        && let Some((params, extra)) = rare.captured.take()
                    {
                        self.params = params;
                        rare.extra = extra;
                    }
                }
                if let Some(done) = step
                    .completed
                    .filter(|d| d.owner == Owner::Piece { last: false })
                {
                    verdict = Verdict::Swallow;
                    if done.failed {
                        // PostgreSQL stops a multi-statement query at its first error.
                        if let Some(r) = self.rare.as_mut() {
                            r.pieces.clear();
                        }
                        messages::ready_for_query(&mut self.to_client, status);
                    } else {
                        // The part before ended a transaction: the next part starts a new
                        // one and gets the tenant (unless the server is in a failed
                        // transaction, where only ROLLBACK can run).
                        self.send_next_piece(status != b'E');
                    }
                }
                if !self.expect.owes_ready() {
                    // Everything forwarded has been answered: the state is known.
                    self.maybe_ended = false;
                    if status == b'I' {
                        self.tenant_in_txn = false;
                    }
                }
            }
            _ => {}
        }
        if verdict == Verdict::Forward {
            self.to_client.extend_from_slice(msg);
        }
        self.answer_synthetic();
        Ok(())
    }

    /// PostgreSQL skipped messages after an error: statements pgtenant was preparing were
    /// not prepared, and a verification waiting for a description will not get one.
    fn undo_skipped(&mut self) {
        for e in self.expect.take_skipped() {
            if e.reply == Reply::Parse {
                self.parse_not_done(&e);
            }
            if e.stmt != UNNAMED_STATEMENT {
                self.finish_verify(e.stmt, None);
            }
        }
    }

    /// A Parse PostgreSQL did not run (it failed, or the server skipped it after an earlier
    /// error in its batch) created nothing: the server lacks the statement, and a statement
    /// the client parsed does not exist.
    fn parse_not_done(&mut self, e: &Expected) {
        if e.stmt == INJECT_STATEMENTS {
            if !self.expect.parse_pending(INJECT_STATEMENTS)
                && let Some(server) = self.server.as_mut()
            {
                server.conn().needs_reprepare = true;
            }
            return;
        }
        if e.stmt == UNNAMED_STATEMENT {
            // A later Parse of the unnamed statement, still unanswered, decides instead.
            if self.expect.parse_pending(UNNAMED_STATEMENT) {
                return;
            }
            // Whatever unnamed statement the server has is not this client's.
            self.unnamed_on_server = false;
            if e.owner == Owner::Client
                && let Some(r) = self.rare.as_mut()
            {
                // A failed Parse drops the previous unnamed statement too. After a skipped
                // one PostgreSQL would still have the previous one, which pgtenant no longer
                // keeps: the client is told it has none, never given another's.
                r.unnamed_parse = None;
                r.statements.remove(&b""[..]);
            }
            return;
        }
        if let Some(server) = self.server.as_mut() {
            server.conn().forget_prepared(e.stmt);
        }
        if e.owner == Owner::Client
            && let Some(r) = self.rare.as_mut()
        {
            r.statements.retain(|_, s| s.parse_seq != Some(e.seq));
        }
    }

    /// The server started copying in for the front entry: the Syncs the client sent after
    /// it and before its CopyDone/CopyFail will be ignored by PostgreSQL, so no reply is
    /// expected for them; until the client ends the copy, none for its next ones either.
    fn on_copy_in_started(&mut self) {
        let Some(start) = self.expect.front().map(|e| e.seq) else {
            return;
        };
        let copy_end_seq = self.rare.as_ref().map_or(0, |r| r.copy_end_seq);
        if copy_end_seq > start {
            self.expect.drop_syncs_between(start, copy_end_seq);
        } else {
            self.expect.drop_syncs_between(start, u64::MAX);
            self.copy_in = true;
        }
    }

    /// Records one `(name, setting)` row of the capture query.
    fn capture_row(&mut self, msg: &[u8]) {
        let Some((params, extra)) = self.rare.as_mut().and_then(|r| r.captured.as_mut()) else {
            return;
        };
        let mut cols = data_row_text(protocol::payload(msg));
        if let (Some(Some(name)), Some(Some(value))) = (cols.next(), cols.next()) {
            params::record_captured(name, value, self.guard.tenant_setting(), params, extra);
        }
    }

    fn on_parameter_status(&mut self, msg: &[u8], forwarded: bool) {
        let payload = protocol::payload(msg);
        let Some((name, rest)) = protocol::read_cstr(payload) else {
            return;
        };
        let Some((value, _)) = protocol::read_cstr(rest) else {
            return;
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return;
        };
        // Only the client's own changes are recorded: pgtenant's SETs and RESET ALL update
        // `tracked` themselves when they are sent.
        if let Some(i) = tracked_index(name).filter(|_| forwarded) {
            if let Some(server) = self.server.as_mut() {
                server.conn().tracked.set(i, Some(value));
            }
            self.params.set(i, Some(value));
        }
    }

    /// Closes the session: tells the client why if there is something to tell, and returns
    /// or closes the server.
    async fn finish(&mut self, result: Result<(), SessionError>, shared: &Shared) {
        match &result {
            Ok(()) => {}
            Err(SessionError::Client { sqlstate, message }) => {
                messages::error_response(
                    &mut self.to_client,
                    Severity::Fatal,
                    sqlstate,
                    message,
                    None,
                );
            }
            Err(SessionError::ServerIo(e)) => {
                tracing::warn!(client = self.id, tenant = %self.tenant, error = %e, "server connection lost mid-transaction");
                self.dirty = true;
                messages::error_response(
                    &mut self.to_client,
                    Severity::Fatal,
                    "08006",
                    "server connection lost during the transaction",
                    None,
                );
            }
            Err(SessionError::Desync(tag)) => {
                tracing::error!(client = self.id, tenant = %self.tenant, tag = %tag, "protocol desync with server; closing both");
                self.dirty = true;
                messages::error_response(
                    &mut self.to_client,
                    Severity::Fatal,
                    "08P01",
                    "pgtenant lost track of the server's replies; the connection is closed",
                    None,
                );
            }
            Err(SessionError::ClientIo(_)) | Err(SessionError::ServerTerminated) => {}
        }
        if !self.to_client.is_empty() || self.client.is_tls() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                send_all(&mut self.client, &self.to_client).await?;
                if self.client.is_tls() {
                    // close_notify: the client can tell the end from a cut connection.
                    self.client.shutdown().await?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
        }
        self.cancel.unbind().await;
        shared.cancels.unregister(self.cancel_pid);
        self.transaction_done();
        if let Some(server) = self.server.take() {
            let clean = !self.dirty
                && !self.session_changed
                && !self.reset_needed
                && self.expect.settled()
                && !self.unsynced
                && self.status == b'I'
                && !self.splitting()
                && self.to_server.is_empty();
            if clean {
                server.release();
            } else {
                // A transaction may be open on it: never hand it to anyone else.
                server.discard();
            }
        }
        if shared.config().general.log_disconnections {
            match &result {
                Ok(()) => tracing::info!(client = self.id, tenant = %self.tenant, "disconnect"),
                Err(e) => {
                    tracing::info!(client = self.id, tenant = %self.tenant, error = %e, "disconnect")
                }
            }
        }
    }
}

/// What a client ended by KILL or KILL_CLIENT is told (PostgreSQL's words for
/// `pg_terminate_backend`).
fn killed() -> SessionError {
    SessionError::client(
        "57P01",
        "terminating connection due to administrator command",
    )
}

/// Bind (unnamed portal, `statement`, text parameters) and Execute (all rows).
fn put_bind_execute(out: &mut BytesMut, statement: &[u8], params: &[&[u8]]) {
    // One reservation for both messages: written per transaction, growing the buffer piece
    // by piece would reallocate several times.
    let values: usize = params.iter().map(|v| 4 + v.len()).sum();
    out.reserve(5 + 1 + statement.len() + 1 + 2 + 2 + values + 2 + 10);
    protocol::put_message(out, b'B', |b| {
        protocol::put_cstr(b, b"");
        protocol::put_cstr(b, statement);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for v in params {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&0i16.to_be_bytes());
    });
    protocol::put_message(out, b'E', |b| {
        protocol::put_cstr(b, b"");
        b.extend_from_slice(&0i32.to_be_bytes());
    });
}

/// The bytes bound to parameter `$n` (1-based) in a Bind payload after the statement name
/// (`tail`: format codes, then the values); `None` for NULL, a missing parameter or a
/// malformed message.
fn bind_parameter(tail: &[u8], n: usize) -> Option<&[u8]> {
    let i16_at = |b: &[u8], at: usize| -> Option<usize> {
        let v = i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
        usize::try_from(v).ok()
    };
    let formats = i16_at(tail, 0)?;
    let mut at = 2 + 2 * formats;
    let count = i16_at(tail, at)?;
    at += 2;
    if n == 0 || n > count {
        return None;
    }
    for i in 1..=count {
        let len = i32::from_be_bytes(tail.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            if i == n {
                return None;
            }
            continue;
        }
        let value = tail.get(at..at + len as usize)?;
        if i == n {
            return Some(value);
        }
        at += len as usize;
    }
    None
}

/// The columns of a DataRow payload as text (`None` for NULL or non-UTF-8).
fn data_row_text(payload: &[u8]) -> impl Iterator<Item = Option<&str>> {
    let count = payload
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
    let mut rest = payload.get(2..).unwrap_or(&[]);
    (0..count).map_while(move |_| {
        let len = rest
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
        rest = &rest[4..];
        if len < 0 {
            return Some(None);
        }
        let value = rest.get(..len as usize)?;
        rest = &rest[len as usize..];
        Some(std::str::from_utf8(value).ok())
    })
}

/// The statement a Bind or a Describe of a statement names (payload `body`).
fn statement_named(tag: u8, body: &[u8]) -> Option<&[u8]> {
    let name = match (tag, body.split_first()) {
        (b'B', _) => protocol::read_cstr(body).and_then(|(_, rest)| protocol::read_cstr(rest)),
        (b'D', Some((b'S', rest))) => protocol::read_cstr(rest),
        _ => None,
    };
    name.map(|(name, _)| name)
}

/// Cheap filter before [`sql::session_command`]: such statements start with `D`/`d` or
/// `R`/`r`, or with a comment.
fn may_be_session_command(text: &[u8]) -> bool {
    text.iter()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|c| matches!(c, b'd' | b'D' | b'r' | b'R' | b'/' | b'-'))
}

/// A `DO` block that makes PostgreSQL raise `sqlstate` with `message` (pgtenant's own text,
/// quoted as a literal).
fn raise_sql(sqlstate: &str, message: &str) -> String {
    let mut sql = String::from("DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = '");
    sql.push_str(sqlstate);
    sql.push_str("', MESSAGE = '");
    for c in message.chars().filter(|&c| c != '$') {
        if c == '\'' {
            sql.push('\'');
        }
        sql.push(c);
    }
    sql.push_str("'; END$pgtenant$");
    sql
}

/// Guard rule for SQL `EXECUTE` of a prepared statement.
const SQL_EXECUTE_RULE: &str = "sql-execute";

fn sql_execute_message() -> String {
    format!(
        "pgtenant refuses SQL EXECUTE of prepared statements: statement names on the server \
         belong to pgtenant; use the protocol's Bind with your own statement names (guard \
         rule \"{SQL_EXECUTE_RULE}\")"
    )
}

fn session_feature_message(feature: &str) -> String {
    format!(
        "{feature} cannot be used through pgtenant: it needs a dedicated server session, and \
         pgtenant lends servers per transaction; use a transaction-scoped alternative or \
         connect to PostgreSQL directly"
    )
}

/// Bind + Execute of the sealed injection statement: the tenant, and under
/// `<setting>_seal` the hex HMAC-SHA256 of the tenant id keyed with the server's secret
/// (config/sql/seal.sql verifies it), all as bound parameters.
fn build_sealed_injection(setting: &[u8], tenant: &[u8], secret: &[u8; 32]) -> Bytes {
    use hmac::{Hmac, Mac};
    let seal = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(tenant);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this cannot fail for a 32-byte key.
        Err(_) => String::new(),
    };
    let mut seal_setting = setting.to_vec();
    seal_setting.extend_from_slice(b"_seal");
    let mut b = BytesMut::new();
    put_bind_execute(
        &mut b,
        INJECT_SEALED_STATEMENT.as_bytes(),
        &[setting, tenant, &seal_setting, seal.as_bytes()],
    );
    b.freeze()
}

fn split_cstr(data: &[u8]) -> Result<(&[u8], &[u8]), SessionError> {
    protocol::read_cstr(data).ok_or_else(|| {
        SessionError::client("08P01", "invalid message format: missing string terminator")
    })
}

/// A send buffer that grew for a burst and is now empty goes back to nothing.
fn shrink_drained(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > READ_CHUNK * 4 {
        *buf = BytesMut::new();
    }
}
