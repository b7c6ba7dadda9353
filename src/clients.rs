//! The registry of logged-in tenant clients: who each one is (id, database, tenant, peer),
//! whether it is waiting for a server, and the handle that ends it.
//!
//! A session registers once, at login, and leaves when it ends (the [`Registration`] guard,
//! held by [`crate::stats::ClientTracker`]); the admin console reads the registry for `SHOW
//! CLIENTS`, uses it for `KILL` and `KILL_CLIENT`, and the drain tells every session through
//! it. Nothing here runs per message: the state is one atomic store when a transaction gets
//! or gives back its server. Stopping a client here only sends it a notice; closing the
//! connection, its server and any open transaction is the session's job (see
//! `Session::run`), so this module never touches a socket. The notice is a oneshot channel
//! because a session polls it on every turn of its loop, and polling a oneshot receiver takes
//! no lock (a shared cancellation token would be one lock for all clients).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::stats::ClientState;
use crate::tenant::TenantId;

/// Every logged-in tenant client, by the id SHOW CLIENTS shows and KILL_CLIENT takes.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: DashMap<u64, Arc<ClientInfo>>,
    /// Set by [`ClientRegistry::shutdown_all`].
    shutting_down: AtomicBool,
}

/// One logged-in client. The database and tenant are shared with the pool and the
/// tenant's other clients, not copied per client.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    /// The `[databases.NAME]` entry it logged in to.
    pub database: Arc<str>,
    /// The user name from its startup packet (pgtenant ignores it; the token decides).
    pub user: Box<str>,
    pub tenant: TenantId,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    state: AtomicU8,
    /// Set before the stop notice is sent: the session loop reads this flag on every turn
    /// and polls its stop signal only when it is set or before it waits.
    stop_sent: AtomicBool,
    /// Taken and fired by KILL/KILL_CLIENT.
    kill: Mutex<Option<oneshot::Sender<Stop>>>,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub(crate) fn set_state(&self, state: ClientState) {
        let n = match state {
            ClientState::Idle => 0,
            ClientState::Waiting => 1,
            ClientState::Active => 2,
        };
        self.state.store(n, Ordering::Relaxed);
    }

    /// Tells the session to stop. Returns false if it was told already (a client is told
    /// once: a kill after a shutdown notice finds it already leaving).
    fn stop(&self, why: Stop) -> bool {
        let sender = self.kill.lock().unwrap_or_else(|p| p.into_inner()).take();
        if sender.is_some() {
            self.stop_sent.store(true, Ordering::Release);
        }
        // A session that already ended has dropped its receiver: nothing to tell.
        sender.is_some_and(|s| s.send(why).is_ok())
    }
}

/// Why a session is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// KILL / KILL_CLIENT: end now, even mid-transaction.
    Kill,
    /// The proxy is draining: end when no transaction is open.
    Shutdown,
}

/// Resolves once when the client is told to stop, then stays pending. Polling it takes no
/// lock: it is part of every turn of the session loop, and it also carries the shutdown
/// notice, so an idle session waits on nothing shared by all clients.
#[derive(Debug)]
pub struct StopSignal(Option<oneshot::Receiver<Stop>>);

impl Future for StopSignal {
    type Output = Stop;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stop> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let got = std::task::ready!(Pin::new(rx).poll(cx));
        self.0 = None;
        // A dropped sender also ends the wait: the registry no longer knows the client.
        Poll::Ready(got.unwrap_or(Stop::Kill))
    }
}

/// Who a newly logged-in client is.
#[derive(Debug)]
pub struct NewClient {
    pub id: u64,
    pub database: Arc<str>,
    pub user: Box<str>,
    pub tenant: TenantId,
    pub peer: SocketAddr,
}

/// A client's place in the registry, with its stop signal; dropping it removes the client.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ClientRegistry>,
    info: Arc<ClientInfo>,
    stop: StopSignal,
}

impl Registration {
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }

    /// Resolves once when this client is told to stop: KILL/KILL_CLIENT or the drain.
    pub fn stop_signal(&mut self) -> &mut StopSignal {
        &mut self.stop
    }

    /// Whether a stop notice was sent (or is being sent): then [`Self::stop_signal`] is
    /// ready or about to be. One atomic load, where polling the signal costs a channel poll.
    pub fn stop_sent(&self) -> bool {
        self.info.stop_sent.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.info.id);
    }
}

impl ClientRegistry {
    /// Adds a client that just logged in.
    pub fn register(self: &Arc<Self>, client: NewClient) -> Registration {
        let (kill, killed) = oneshot::channel();
        let info = Arc::new(ClientInfo {
            id: client.id,
            database: client.database,
            user: client.user,
            tenant: client.tenant,
            peer: client.peer,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(0),
            stop_sent: AtomicBool::new(false),
            kill: Mutex::new(Some(kill)),
        });
        self.clients.insert(info.id, Arc::clone(&info));
        // Logged in while the drain began: told like everyone else (whichever of this and
        // `shutdown_all` comes second finds the notice already sent).
        if self.shutting_down.load(Ordering::Acquire) {
            info.stop(Stop::Shutdown);
        }
        Registration {
            registry: Arc::clone(self),
            info,
            stop: StopSignal(Some(killed)),
        }
    }

    /// The drain began: every client ends as soon as it has no transaction open, and so
    /// does every client that logs in from now on.
    pub fn shutdown_all(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.stop_where(|_| true, Stop::Shutdown);
    }

    /// Every logged-in client, by id.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<Arc<ClientInfo>> =
            self.clients.iter().map(|e| Arc::clone(e.value())).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Ends one client; false when no logged-in client has that id.
    pub fn kill(&self, id: u64) -> bool {
        // Cloned out first: the session may leave (and unregister) as soon as it is told.
        let client = self.clients.get(&id).map(|c| Arc::clone(c.value()));
        client.is_some_and(|c| c.stop(Stop::Kill))
    }

    /// Ends every client of `database` (all clients with `None`); returns how many.
    pub fn kill_database(&self, database: Option<&str>) -> usize {
        self.stop_where(|c| database.is_none_or(|d| d == &*c.database), Stop::Kill)
    }

    /// Tells every client `which` selects to stop; returns how many were told now. The
    /// clients are cloned out first: a session may leave (and unregister) as soon as it is
    /// told, which must not happen under the map's shard lock.
    fn stop_where(&self, which: impl Fn(&ClientInfo) -> bool, why: Stop) -> usize {
        let targets: Vec<Arc<ClientInfo>> = self
            .clients
            .iter()
            .filter(|c| which(c.value()))
            .map(|c| Arc::clone(c.value()))
            .collect();
        targets.iter().filter(|c| c.stop(why)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u64, database: &str) -> NewClient {
        NewClient {
            id,
            database: database.into(),
            user: "u".into(),
            tenant: crate::tenant::TenantId::parse(
                "aaaaaaaa-0000-0000-0000-000000000001",
                &crate::config::TenantFormat::Uuid,
            )
            .unwrap(),
            peer: "127.0.0.1:5000".parse().unwrap(),
        }
    }

    /// Whether the kill signal fired, without waiting.
    fn fired(r: &mut Registration) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(r.stop_signal()).poll(&mut cx).is_ready()
    }

    #[test]
    fn kill_reaches_only_the_named_client_or_database_and_leaving_unregisters() {
        let registry = Arc::new(ClientRegistry::default());
        let mut a = registry.register(client(1, "app"));
        let mut b = registry.register(client(2, "app"));
        let mut c = registry.register(client(3, "other"));
        assert!(registry.kill(2));
        assert!(!registry.kill(2), "told twice");
        assert!(!registry.kill(99));
        assert!(fired(&mut b));
        assert!(!fired(&mut a));
        assert_eq!(registry.kill_database(Some("other")), 1);
        assert!(fired(&mut c));
        assert!(!fired(&mut a));
        drop(b);
        let ids: Vec<u64> = registry.list().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(!registry.kill(2), "a client that left cannot be killed");
    }

    #[test]
    fn state_round_trips() {
        let registry = Arc::new(ClientRegistry::default());
        let a = registry.register(client(1, "app"));
        for s in [ClientState::Waiting, ClientState::Active, ClientState::Idle] {
            a.info().set_state(s);
            assert_eq!(a.info().state(), s);
        }
    }
}
