//! Query cancellation across the pool: which server a client's cancel key reaches right now.
//!
//! Each logged-in client gets a random (pid, secret) from pgtenant; while the client is bound
//! to a server, its slot names that server's own cancel key. A `CancelRequest` is forwarded
//! only while the binding lasts, and the binding cannot end while a forwarded cancel is
//! still being delivered (the slot marks it in flight and unbinding waits for it), so a late
//! cancel can never interrupt another client's query on the same server (the stale-cancel
//! failure of other poolers). Binding and unbinding happen once per transaction: they take
//! a short synchronous lock and never wait unless a cancel is being delivered right then.
//! This module never sees query traffic.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Where a bound client's cancel goes: the upstream address and the server's own key.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug)]
pub struct CancelSlot {
    secret: i32,
    state: Mutex<SlotState>,
    /// Signalled when a cancel in flight has been delivered.
    delivered: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    target: Option<CancelTarget>,
    /// A cancel for `target` is being delivered; the binding must outlive it.
    in_flight: bool,
}

/// All logged-in clients' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<CancelSlot>>,
}

impl CancelRegistry {
    /// Registers a client key; `None` when the pid is taken (draw another).
    pub fn register(&self, pid: i32, secret: i32) -> Option<Arc<CancelSlot>> {
        let slot = Arc::new(CancelSlot {
            secret,
            state: Mutex::new(SlotState::default()),
            delivered: Notify::new(),
        });
        match self.slots.entry(pid) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::clone(&slot));
                Some(slot)
            }
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.slots.remove(&pid);
    }

    /// Handles a client's CancelRequest: forwards it to the server the client is bound to
    /// right now, if the key matches; otherwise does nothing, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let Some(slot) = self.slots.get(&pid).map(|s| Arc::clone(s.value())) else {
            tracing::debug!("cancel request for an unknown key ignored");
            return;
        };
        if !constant_time_eq(slot.secret, secret) {
            tracing::debug!("cancel request with a wrong secret ignored");
            return;
        }
        let target = {
            let mut st = slot.lock();
            if st.in_flight {
                tracing::debug!("cancel request while another is being delivered; dropped");
                return;
            }
            let Some(target) = st.target.clone() else {
                tracing::debug!("cancel request arrived after the transaction ended; dropped");
                return;
            };
            st.in_flight = true;
            target
        };
        // The binding is held until PostgreSQL has taken the request (it closes the
        // connection after signalling the backend), so the server cannot move on to another
        // client before that.
        let sent = send_cancel(&target).await;
        slot.lock().in_flight = false;
        slot.delivered.notify_waiters();
        if let Err(e) = sent {
            tracing::warn!(error = %e, "forwarding a cancel request to the server failed");
        }
    }
}

impl CancelSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Two plain fields, consistent after any panic: keep going rather than poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the client now runs on this server.
    pub fn bind(&self, target: CancelTarget) {
        self.lock().target = Some(target);
    }

    /// Ends the binding unless a cancel is being delivered to it (then false, binding left).
    fn try_unbind(&self) -> bool {
        let mut st = self.lock();
        if st.in_flight {
            return false;
        }
        st.target = None;
        true
    }

    /// The client's transaction is over: cancels no longer reach that server. Waits first
    /// for a cancel being delivered to it right now, so the server cannot serve anyone else
    /// before PostgreSQL has taken that cancel. Without one (every
    /// transaction but a cancelled one) this takes the slot's lock once and never waits.
    pub async fn unbind(&self) {
        if self.try_unbind() {
            return;
        }
        // Boxed: the wait's state would otherwise widen the future of every session loop
        // that awaits this.
        Box::pin(self.unbind_after_delivery()).await;
    }

    async fn unbind_after_delivery(&self) {
        loop {
            let delivered = self.delivered.notified();
            tokio::pin!(delivered);
            // Register before checking, so a delivery finishing in between is not missed.
            delivered.as_mut().enable();
            if self.try_unbind() {
                return;
            }
            delivered.await;
        }
    }
}

fn constant_time_eq(a: i32, b: i32) -> bool {
    // A data-independent comparison: no early exit on the first differing bit.
    (a ^ b) == 0
}

async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&*target.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(target.pid, target.secret, &mut buf);
    stream.write_all(&buf).await?;
    // Wait for PostgreSQL to close the connection: by then the backend has been signalled.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_with_wrong_secret_or_no_binding_is_dropped() {
        let reg = CancelRegistry::default();
        let slot = reg.register(42, 7).unwrap();
        assert!(reg.register(42, 8).is_none());
        // Unbound: nothing to forward (would otherwise try to connect).
        reg.cancel(42, 7).await;
        slot.bind(CancelTarget {
            addr: Arc::from("127.0.0.1:1"),
            pid: 1,
            secret: 1,
        });
        // Wrong secret: returns without connecting anywhere.
        reg.cancel(42, 8).await;
        assert!(slot.try_unbind());
        reg.unregister(42);
        assert!(reg.register(42, 9).is_some());
    }
}
