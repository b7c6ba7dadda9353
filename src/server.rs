//! One connection from pgtenant to an upstream PostgreSQL: connect, authenticate as the pool
//! role, learn the server's parameters, and prepare the statement that injects the tenant.
//!
//! This module owns the server side of the login handshake and the per-connection state the
//! pool and sessions need (parameters in effect, prepared-statement bookkeeping). It never
//! forwards client bytes and never decides which client uses a connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{DatabaseConfig, ServerTlsMode};
use crate::net::{ServerStream, Stream, send_all};
use crate::tls::UpstreamTls;

/// Name of the statement pgtenant prepares on every server to set the tenant. Bound with
/// the setting name and the tenant id as parameters, so neither appears in query text,
/// `pg_stat_activity` or the server log. `pg_catalog` is spelled out so that no object on the
/// client's search_path can stand in for `set_config`.
pub const INJECT_STATEMENT: &str = "__pgtenant_set_tenant";
pub const INJECT_SQL: &str = "SELECT pg_catalog.set_config($1, $2, true)";

/// With `tenant_seal`: sets the tenant and its seal (an HMAC under this connection's secret,
/// see config/sql/seal.sql) in one statement.
pub const INJECT_SEALED_STATEMENT: &str = "__pgtenant_set_sealed_tenant";
pub const INJECT_SEALED_SQL: &str =
    "SELECT pg_catalog.set_config($1, $2, true), pg_catalog.set_config($3, $4, true)";

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Why a server connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {addr}")]
    ConnectTimeout { addr: String },
    #[error("upstream refused login: {message}")]
    LoginRefused { sqlstate: String, message: String },
    #[error("upstream asked for an authentication method pgtenant does not support ({0})")]
    UnsupportedAuth(&'static str),
    #[error("upstream asked for a password but none is configured")]
    PasswordMissing,
    #[error("SCRAM authentication with upstream failed: {0}")]
    Scram(std::io::Error),
    #[error(
        "upstream {addr} does not accept TLS connections (server_tls_sslmode = {:?})",
        mode.as_str()
    )]
    TlsUnavailable { addr: String, mode: ServerTlsMode },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    TlsHandshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "host {host:?} cannot be checked against a certificate (server_tls_sslmode = \"verify-full\")"
    )]
    TlsServerName { host: String },
    #[error("unexpected message from upstream during {phase}")]
    Protocol { phase: &'static str },
    #[error("upstream query failed: {message}")]
    Query { sqlstate: String, message: String },
    #[error("i/o error talking to upstream: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// The SQLSTATE a client sees when its transaction could not get a server because of this.
    pub fn client_sqlstate(&self) -> &'static str {
        match self {
            ServerError::LoginRefused { sqlstate, .. } => match sqlstate.as_str() {
                // Too many connections, starting up, shutting down: said as PostgreSQL said.
                "53300" => "53300",
                "57P03" => "57P03",
                "57P01" => "57P01",
                s if s.starts_with("53") || s.starts_with("57") => "08006",
                _ => "08001",
            },
            ServerError::Connect { .. } | ServerError::ConnectTimeout { .. } => "08006",
            _ => "08001",
        }
    }
}

/// What the pool role may do that would defeat RLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolePrivileges {
    pub superuser: bool,
    pub bypass_rls: bool,
}

/// A live, authenticated server connection.
pub struct ServerConn {
    pub id: u64,
    pub stream: ServerStream,
    pub created: Instant,
    pub last_used: Instant,
    /// Process id and cancel key PostgreSQL gave this connection.
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Parameters in effect on this server session, as PostgreSQL reported them or as
    /// pgtenant last set them.
    pub params: HashMap<String, String>,
    /// Set when something may have dropped [`INJECT_STATEMENT`] (e.g. a client's
    /// `DEALLOCATE ALL`); the next injection re-prepares it.
    pub needs_reprepare: bool,
    /// Reply bytes read from the server but not yet processed.
    pub rbuf: BytesMut,
    /// Client-chosen parameters pgtenant has applied to this session (see
    /// [`crate::session::params`]).
    pub tracked: crate::session::params::ParamSet,
    /// With `tenant_seal`: the secret registered for this backend.
    pub seal_secret: Option<[u8; 32]>,
    /// Shared statements ([`crate::pool::statements`]) prepared on this server: id → when
    /// last used (a counter), for closing the least recently used beyond
    /// `max_prepared_statements`.
    pub prepared: HashMap<u64, u64>,
    use_counter: u64,
    /// The RowDescription/NoData this server last gave for a shared statement: the shape
    /// its plan has now (schema changes can alter it).
    pub described: HashMap<u64, bytes::Bytes>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("id", &self.id)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl ServerConn {
    /// Connects, negotiates TLS as `tls` says, authenticates and prepares the injection
    /// statement.
    pub async fn connect(
        db: &DatabaseConfig,
        timeout: Duration,
        tls: UpstreamTls,
    ) -> Result<ServerConn, ServerError> {
        let addr = format!("{}:{}", db.host, db.port);
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(&addr)).await {
            Err(_) => return Err(ServerError::ConnectTimeout { addr }),
            Ok(Err(source)) => return Err(ServerError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        tcp.set_nodelay(true)?;
        let stream =
            match tokio::time::timeout_at(deadline, negotiate_tls(tcp, db, &addr, tls)).await {
                Err(_) => return Err(ServerError::ConnectTimeout { addr }),
                Ok(r) => r?,
            };
        let mut conn = ServerConn {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            created: Instant::now(),
            last_used: Instant::now(),
            backend_pid: 0,
            backend_secret: 0,
            params: HashMap::new(),
            needs_reprepare: false,
            rbuf: BytesMut::with_capacity(8192),
            tracked: Default::default(),
            seal_secret: None,
            prepared: HashMap::new(),
            use_counter: 0,
            described: HashMap::new(),
        };
        match tokio::time::timeout(timeout, conn.login(db)).await {
            Err(_) => Err(ServerError::ConnectTimeout { addr }),
            Ok(r) => r.map(|()| conn),
        }
    }

    async fn login(&mut self, db: &DatabaseConfig) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let params = [
            ("user", db.user.as_str()),
            ("database", db.dbname.as_str()),
            ("application_name", "pgtenant"),
        ];
        frontend::startup_message(params.iter().copied(), &mut out)?;
        self.flush(&mut out).await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message("login").await?;
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = db.password.as_ref().ok_or(ServerError::PasswordMissing)?;
                    frontend::password_message(pw.expose().as_bytes(), &mut out)?;
                    self.flush(&mut out).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = db.password.as_ref().ok_or(ServerError::PasswordMissing)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        db.user.as_bytes(),
                        pw.expose().as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                    self.flush(&mut out).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let pw = db.password.as_ref().ok_or(ServerError::PasswordMissing)?;
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)
                        .map_err(ServerError::Scram)?
                    {
                        if m == sasl::SCRAM_SHA_256 {
                            has_scram = true;
                        }
                    }
                    if !has_scram {
                        return Err(ServerError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                    }
                    let s = ScramSha256::new(
                        pw.expose().as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                    self.flush(&mut out).await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerError::Protocol { phase: "SCRAM" })?;
                    s.update(body.data()).map_err(ServerError::Scram)?;
                    frontend::sasl_response(s.message(), &mut out)?;
                    self.flush(&mut out).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or(ServerError::Protocol { phase: "SCRAM" })?;
                    s.finish(body.data()).map_err(ServerError::Scram)?;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(ServerError::UnsupportedAuth("Kerberos/GSS/SSPI/SCM"));
                }
                Message::ParameterStatus(body) => {
                    let name = body
                        .name()
                        .map_err(|_| ServerError::Protocol { phase: "login" })?;
                    let value = body
                        .value()
                        .map_err(|_| ServerError::Protocol { phase: "login" })?;
                    self.params.insert(name.to_owned(), value.to_owned());
                }
                Message::BackendKeyData(body) => {
                    self.backend_pid = body.process_id();
                    self.backend_secret = body.secret_key();
                }
                Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => {
                    let (sqlstate, message) = error_fields(&body);
                    return Err(ServerError::LoginRefused { sqlstate, message });
                }
                Message::ReadyForQuery(_) => break,
                _ => return Err(ServerError::Protocol { phase: "login" }),
            }
        }
        self.prepare_injection().await
    }

    /// Prepares [`INJECT_STATEMENT`] on this server and waits for it to be ready.
    pub async fn prepare_injection(&mut self) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        frontend::parse(INJECT_STATEMENT, INJECT_SQL, [25u32, 25u32], &mut out)?;
        frontend::sync(&mut out);
        self.flush(&mut out).await?;
        self.expect_until_ready("prepare").await.map(|_| ())
    }

    /// Registers a fresh random secret for this backend with `pgtenant_seal.register` (as a
    /// bound parameter, so it appears in no query text or log) and prepares the sealed
    /// injection statement.
    pub async fn register_seal(&mut self) -> Result<(), ServerError> {
        use rand::TryRngCore;
        let mut secret = [0u8; 32];
        if rand::rngs::OsRng.try_fill_bytes(&mut secret).is_err() {
            rand::fill(&mut secret);
        }
        let mut out = BytesMut::new();
        frontend::parse("", "SELECT pgtenant_seal.register($1)", [17u32], &mut out)?;
        crate::protocol::put_message(&mut out, b'B', |b| {
            crate::protocol::put_cstr(b, b"");
            crate::protocol::put_cstr(b, b"");
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes()); // binary
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&(secret.len() as i32).to_be_bytes());
            b.extend_from_slice(&secret);
            b.extend_from_slice(&0i16.to_be_bytes());
        });
        frontend::execute("", 0, &mut out)?;
        frontend::parse(
            INJECT_SEALED_STATEMENT,
            INJECT_SEALED_SQL,
            [25u32, 25, 25, 25],
            &mut out,
        )?;
        frontend::sync(&mut out);
        self.flush(&mut out).await?;
        self.expect_until_ready("seal registration").await?;
        self.seal_secret = Some(secret);
        Ok(())
    }

    /// Runs a simple query and returns the text of the first column of every row.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.flush(&mut out).await?;
        self.expect_until_ready("query").await
    }

    /// Checks whether the pool role could bypass RLS.
    pub async fn role_privileges(&mut self) -> Result<RolePrivileges, ServerError> {
        let rows = self
            .simple_query(
                "SELECT rolsuper::text, rolbypassrls::text FROM pg_catalog.pg_roles \
                 WHERE rolname = current_user",
            )
            .await?;
        let row = rows.first().ok_or(ServerError::Protocol {
            phase: "role check",
        })?;
        let flag = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("true");
        Ok(RolePrivileges {
            superuser: flag(0),
            bypass_rls: flag(1),
        })
    }

    /// Reads replies up to ReadyForQuery, collecting data rows and failing on an error.
    async fn expect_until_ready(
        &mut self,
        phase: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read_message(phase).await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    let (sqlstate, message) = error_fields(&body);
                    failure = Some(ServerError::Query { sqlstate, message });
                }
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(r) = fallible_iterator::FallibleIterator::next(&mut ranges)
                        .map_err(|_| ServerError::Protocol { phase })?
                    {
                        row.push(
                            r.and_then(|r| buf.get(r))
                                .map(|b| String::from_utf8_lossy(b).into_owned()),
                        );
                    }
                    rows.push(row);
                }
                Message::ParameterStatus(body) => {
                    if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
                        self.params.insert(n.to_owned(), v.to_owned());
                    }
                }
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    async fn flush(&mut self, out: &mut BytesMut) -> Result<(), ServerError> {
        send_all(&mut self.stream, out).await?;
        out.clear();
        Ok(())
    }

    async fn read_message(&mut self, phase: &'static str) -> Result<Message, ServerError> {
        loop {
            if let Some(msg) =
                Message::parse(&mut self.rbuf).map_err(|_| ServerError::Protocol { phase })?
            {
                return Ok(msg);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ServerError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection",
                )));
            }
        }
    }

    /// True when the idle connection has been closed by the server or has unsolicited bytes
    /// waiting (e.g. a FATAL sent at server shutdown). Costs one non-blocking read.
    pub fn is_dead(&mut self) -> bool {
        !self.rbuf.is_empty() || self.stream.is_dead_when_idle()
    }

    /// Whether this connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Marks a shared statement as used now; returns whether it is prepared here.
    pub fn touch_prepared(&mut self, id: u64) -> bool {
        self.use_counter += 1;
        match self.prepared.get_mut(&id) {
            Some(last) => {
                *last = self.use_counter;
                true
            }
            None => false,
        }
    }

    /// Records a shared statement as prepared here (the Parse is being sent).
    pub fn add_prepared(&mut self, id: u64) {
        self.use_counter += 1;
        self.prepared.insert(id, self.use_counter);
    }

    /// Forgets a shared statement (closed, failed, or its plan may be stale).
    pub fn forget_prepared(&mut self, id: u64) {
        self.prepared.remove(&id);
        self.described.remove(&id);
    }

    /// Forgets every shared statement (after something may have deallocated them).
    pub fn forget_all_prepared(&mut self) {
        self.prepared.clear();
        self.described.clear();
    }

    /// The least recently used statement to close so that one more fits under `max`.
    pub fn prepared_victim(&self, max: usize) -> Option<u64> {
        if self.prepared.len() < max {
            return None;
        }
        self.prepared
            .iter()
            .min_by_key(|(_, last)| **last)
            .map(|(id, _)| *id)
    }

    /// Sends Terminate, best effort, and drops the connection.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            send_all(&mut self.stream, &out).await?;
            if self.stream.is_tls() {
                // close_notify, so the server logs no "unexpected EOF" for it.
                self.stream.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
}

/// SSLRequest ("Message Formats" in the protocol documentation): length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks the server for TLS as `tls.mode` says ("SSL Session Encryption" in the protocol
/// documentation): an SSLRequest answered `S` is followed by the handshake, `N` means
/// plaintext, which only `prefer` accepts.
async fn negotiate_tls(
    mut tcp: TcpStream,
    db: &DatabaseConfig,
    addr: &str,
    tls: UpstreamTls,
) -> Result<ServerStream, ServerError> {
    if tls.mode == ServerTlsMode::Disable {
        return Ok(Stream::Plain(tcp));
    }
    // A verifying mode without its connector (no CA loaded) must not fall back to anything.
    let connector = tls.connector.ok_or(ServerError::TlsUnavailable {
        addr: addr.to_owned(),
        mode: tls.mode,
    })?;
    tcp.write_all(&SSL_REQUEST).await?;
    // Exactly one byte: anything the server sent after it would otherwise be taken as part
    // of the TLS handshake (the answer is not part of TLS).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = crate::tls::server_name(&db.host, tls.mode).ok_or_else(|| {
                ServerError::TlsServerName {
                    host: db.host.clone(),
                }
            })?;
            let stream =
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ServerError::TlsHandshake {
                        addr: addr.to_owned(),
                        source,
                    })?;
            Ok(Stream::Tls(Box::new(stream)))
        }
        b'N' if tls.mode == ServerTlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(ServerError::TlsUnavailable {
            addr: addr.to_owned(),
            mode: tls.mode,
        }),
        _ => Err(ServerError::Protocol {
            phase: "TLS negotiation",
        }),
    }
}

fn error_fields(body: &postgres_protocol::message::backend::ErrorResponseBody) -> (String, String) {
    let mut sqlstate = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        match f.type_() {
            b'C' => sqlstate = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (sqlstate, message)
}
