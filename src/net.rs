//! The byte stream of one connection, client or server side: plain TCP or TLS (rustls), and
//! the non-blocking send and receive the session loop polls.
//!
//! This module owns how bytes move between a socket and the session's `BytesMut` buffers: on
//! plain TCP one read syscall straight into the buffer's spare capacity and one write per
//! burst, exactly as with a bare `TcpStream`; on TLS the copy out of rustls' plaintext buffer
//! that TLS cannot avoid. It never looks at what the bytes mean and never decides whether a
//! connection should be encrypted (that is [`crate::tls`] and the login's business).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Free space below which a receive buffer grows before the next read.
const MIN_SPARE: usize = 256;
/// How much a receive buffer grows by.
pub const READ_CHUNK: usize = 16 * 1024;
/// The first read into an empty (freed while idle) buffer: most client messages fit.
const FIRST_READ: usize = 1000;
/// Most bytes one TLS receive hands over (a few records), so that the session's
/// back-pressure checks between receives stay close to their mark.
const MAX_TLS_RECEIVE: usize = 64 * 1024;

/// A connection's stream. `Detached` stands for a stream given away to a TLS handshake that
/// failed: every operation on it fails.
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    Detached,
}

/// A client connection: pgtenant is the TLS server.
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;
/// A connection to PostgreSQL: pgtenant is the TLS client.
pub type ServerStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What the stream needs of a TLS session beyond reading and writing.
pub trait TlsSession: AsyncBufRead + AsyncWrite + Unpin {
    /// The socket under the TLS layer.
    fn tcp(&self) -> &TcpStream;
    /// TLS records are waiting to be written to the socket.
    fn wants_write(&self) -> bool;
    /// Decrypted bytes waiting to be read, after processing whatever records are buffered;
    /// `None` when the peer has closed or the session failed.
    fn buffered_plaintext(&mut self) -> Option<usize>;
    /// The ALPN protocol both sides agreed on.
    fn alpn_protocol(&self) -> Option<&[u8]>;
}

macro_rules! tls_session {
    ($stream:ty) => {
        impl TlsSession for $stream {
            fn tcp(&self) -> &TcpStream {
                self.get_ref().0
            }

            fn wants_write(&self) -> bool {
                self.get_ref().1.wants_write()
            }

            fn buffered_plaintext(&mut self) -> Option<usize> {
                let conn = self.get_mut().1;
                match conn.process_new_packets() {
                    Ok(state) if !state.peer_has_closed() => Some(state.plaintext_bytes_to_read()),
                    _ => None,
                }
            }

            fn alpn_protocol(&self) -> Option<&[u8]> {
                self.get_ref().1.alpn_protocol()
            }
        }
    };
}

tls_session!(tokio_rustls::server::TlsStream<TcpStream>);
tls_session!(tokio_rustls::client::TlsStream<TcpStream>);

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was given to a TLS handshake that failed",
    )
}

/// Makes room for at least one more read, without touching a buffer that has room.
fn reserve(buf: &mut BytesMut, at_least: usize) {
    if buf.capacity() == 0 {
        // Most reads between idle spells are one small message: start small (a spare
        // buffer of this thread's); a read that fills it grows the buffer on the next round.
        *buf = crate::buffers::take(at_least.max(FIRST_READ));
        return;
    }
    let spare = buf.capacity() - buf.len();
    if spare < at_least.max(MIN_SPARE) {
        buf.reserve(at_least.max(READ_CHUNK));
    }
}

impl<T: TlsSession> Stream<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket (under TLS, if any).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(t.tcp()),
            Stream::Detached => None,
        }
    }

    /// The ALPN protocol agreed in the TLS handshake (`None` on plain TCP).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(t) => t.alpn_protocol(),
            _ => None,
        }
    }

    /// Bytes handed to [`Stream::poll_send`] still wait in the TLS layer: keep polling
    /// `poll_send` (with an empty buffer it flushes them). Always false on plain TCP.
    pub fn has_unflushed(&self) -> bool {
        match self {
            Stream::Tls(t) => t.wants_write(),
            _ => false,
        }
    }

    /// Writes what the socket takes of `buf` now and removes it from `buf`; with `buf`
    /// empty, flushes what the TLS layer holds. `Pending` only when nothing moved; the
    /// waker is then registered.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => {
                if buf.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                let n = ready!(Pin::new(s).poll_write(cx, buf))?;
                buf.advance(n);
                Poll::Ready(Ok(n))
            }
            Stream::Tls(t) => {
                if buf.is_empty() {
                    ready!(Pin::new(&mut **t).poll_flush(cx))?;
                    return Poll::Ready(Ok(0));
                }
                // Accepted bytes may stay in rustls when the socket is full: the caller sees
                // `has_unflushed` and comes back.
                let n = ready!(Pin::new(&mut **t).poll_write(cx, buf))?;
                buf.advance(n);
                Poll::Ready(Ok(n))
            }
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    /// Appends what can be read now to `buf`; `Ok(0)` is end of stream. `Pending` (waker
    /// registered) when nothing is there. A buffer is only grown once bytes have arrived, so
    /// an idle connection with an empty buffer allocates nothing.
    pub fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => {
                // Readiness first (no syscall), so an idle connection reserves nothing.
                ready!(s.poll_read_ready(cx))?;
                reserve(buf, 0);
                // `poll_read` rather than `try_read`: a read that leaves room in the buffer
                // drained the socket, and tokio then forgets the readiness, so the next turn
                // waits for epoll instead of paying a read that finds nothing.
                let read = tokio_util::io::poll_read_buf(Pin::new(s), cx, buf);
                if read.is_pending() && buf.is_empty() {
                    // Readiness was stale; the waker is registered. An idle connection must
                    // not keep the buffer just reserved for nothing.
                    crate::buffers::give(buf);
                }
                read
            }
            Stream::Tls(t) => {
                let mut total = 0;
                loop {
                    let taken = match Pin::new(&mut **t).poll_fill_buf(cx) {
                        Poll::Ready(Ok([])) => return Poll::Ready(Ok(total)),
                        Poll::Ready(Ok(data)) => {
                            reserve(buf, data.len());
                            buf.extend_from_slice(data);
                            data.len()
                        }
                        // What was read is handed over; the error comes back on the next call.
                        Poll::Ready(Err(_)) | Poll::Pending if total > 0 => {
                            return Poll::Ready(Ok(total));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // Records just processed may call for an answer (a TLS 1.3
                            // KeyUpdate): send it now rather than at the next write.
                            if t.wants_write() {
                                let _ = Pin::new(&mut **t).poll_flush(cx);
                            }
                            return Poll::Pending;
                        }
                    };
                    Pin::new(&mut **t).consume(taken);
                    total += taken;
                    if total >= MAX_TLS_RECEIVE {
                        return Poll::Ready(Ok(total));
                    }
                }
            }
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    /// For an idle pooled connection: true when the peer closed it or sent something
    /// unsolicited (e.g. a FATAL at server shutdown). Costs one non-blocking read; under TLS
    /// the raw socket is probed (an idle TLS peer has nothing in flight, so any byte there
    /// means the connection cannot be reused and consuming it does no harm).
    pub fn is_dead_when_idle(&mut self) -> bool {
        let tcp = match self {
            Stream::Plain(s) => &*s,
            Stream::Tls(t) => {
                if t.buffered_plaintext() != Some(0) {
                    return true;
                }
                t.tcp()
            }
            Stream::Detached => return true,
        };
        let mut probe = [0u8; 1];
        match tcp.try_read(&mut probe) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

impl<T: TlsSession> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => {
                let data = ready!(Pin::new(&mut **t).poll_fill_buf(cx))?;
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                Pin::new(&mut **t).consume(n);
                Poll::Ready(Ok(()))
            }
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl<T: TlsSession> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Writes all of `bytes` and flushes (which a TLS stream needs before anything leaves).
pub async fn send_all<T: TlsSession>(stream: &mut Stream<T>, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await?;
    stream.flush().await
}
