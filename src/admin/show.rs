//! The `SHOW` commands of the admin console, with PgBouncer's column names wherever the
//! meaning is the same, so dashboards and `pgbouncer_exporter`-style scrapers that read
//! `SHOW POOLS`, `SHOW STATS`, `SHOW DATABASES`, `SHOW LISTS` and `SHOW CONFIG` work.
//!
//! This module owns how [`super::snapshot`] rows become result sets; it reads only, and
//! where pgtenant does not track something PgBouncer reports (cancel requests in flight,
//! the longest current wait) it reports 0 rather than invent a number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::reply::{Cell, ColumnType, Reply, ResultSet};
use super::snapshot::{self, PoolSnapshot};
use crate::state::Shared;
use crate::stats::ClientState;

use ColumnType::{Int, Text};

/// The only pool mode pgtenant serves.
const POOL_MODE: &str = "transaction";

/// `SHOW <what>`; `None` when `what` is not a SHOW command this console knows.
pub fn run(shared: &Shared, what: &str) -> Option<Reply> {
    let set = match what {
        "POOLS" => pools(shared),
        "STATS" => stats(shared),
        "DATABASES" => databases(shared),
        "CLIENTS" => clients(shared),
        "SERVERS" => servers(shared),
        "TENANTS" => tenants(shared),
        "LISTS" => lists(shared),
        "VERSION" => version(),
        "CONFIG" => super::show_config::config(shared),
        "HELP" => return Some(help()),
        _ => return None,
    };
    Some(Reply::Rows(set, "SHOW"))
}

/// PgBouncer's SHOW POOLS columns, with PgBouncer's client counts: `cl_active` is logged-in
/// clients of the database not waiting for a server (idle ones included), `cl_waiting` those
/// waiting (queued for a server, or held by PAUSE or KILL). `/metrics` reports the same two
/// numbers (`pgtenant_pool_active_clients`, `pgtenant_pool_waiting_clients`).
fn pools(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("database", Text),
        ("user", Text),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("cl_active_cancel_req", Int),
        ("cl_waiting_cancel_req", Int),
        ("sv_active", Int),
        ("sv_active_cancel", Int),
        ("sv_being_canceled", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
        ("pool_mode", Text),
    ]);
    for p in snapshot::pools(shared) {
        set.push(vec![
            p.database.into(),
            p.user.into(),
            p.clients_active.into(),
            p.clients_waiting.into(),
            0u64.into(),
            0u64.into(),
            p.servers_active.into(),
            0u64.into(),
            0u64.into(),
            p.servers_idle.into(),
            0u64.into(),
            0u64.into(),
            0u64.into(),
            0u64.into(),
            0u64.into(),
            POOL_MODE.into(),
        ]);
    }
    set
}

/// PgBouncer's SHOW STATS columns. Totals are since start; times are microseconds.
/// `avg_*_count`, `avg_recv` and `avg_sent` are per second since start (PgBouncer: over its
/// last stats period), `avg_xact_time` is the mean transaction duration and `avg_wait_time`
/// the mean wait per server assignment, as in PgBouncer. pgtenant does not time queries, so
/// `total_query_time` and `avg_query_time` are 0.
fn stats(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("database", Text),
        ("total_server_assignment_count", Int),
        ("total_xact_count", Int),
        ("total_query_count", Int),
        ("total_received", Int),
        ("total_sent", Int),
        ("total_xact_time", Int),
        ("total_query_time", Int),
        ("total_wait_time", Int),
        ("avg_server_assignment_count", Int),
        ("avg_xact_count", Int),
        ("avg_query_count", Int),
        ("avg_recv", Int),
        ("avg_sent", Int),
        ("avg_xact_time", Int),
        ("avg_query_time", Int),
        ("avg_wait_time", Int),
    ]);
    let uptime = snapshot::uptime(shared);
    for p in snapshot::pools(shared) {
        let per_sec = |n: u64| per_second(n, uptime);
        set.push(vec![
            p.database.clone().into(),
            p.assignments.into(),
            p.xacts.into(),
            p.queries.into(),
            p.bytes_received.into(),
            p.bytes_sent.into(),
            p.xact_time_us.into(),
            0u64.into(),
            p.wait_time_us.into(),
            per_sec(p.assignments).into(),
            per_sec(p.xacts).into(),
            per_sec(p.queries).into(),
            per_sec(p.bytes_received).into(),
            per_sec(p.bytes_sent).into(),
            mean(p.xact_time_us, p.xacts).into(),
            0u64.into(),
            mean(p.wait_time_us, p.assignments).into(),
        ]);
    }
    set
}

/// `n` per second over `uptime`, rounded down; 0 before a whole second has passed or when
/// the start time is unknown.
fn per_second(n: u64, uptime: Option<Duration>) -> u64 {
    match uptime.map(|d| d.as_secs()) {
        Some(secs) if secs > 0 => n / secs,
        _ => 0,
    }
}

fn mean(total: u64, count: u64) -> u64 {
    total.checked_div(count).unwrap_or(0)
}

/// PgBouncer's SHOW DATABASES columns (those with a meaning here), plus `tenant_seal`.
fn databases(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("name", Text),
        ("host", Text),
        ("port", Int),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int),
        ("min_pool_size", Int),
        ("reserve_pool", Int),
        ("server_lifetime", Int),
        ("pool_mode", Text),
        ("max_connections", Int),
        ("current_connections", Int),
        ("paused", Int),
        ("disabled", Int),
        ("tenant_seal", Int),
    ]);
    for p in snapshot::pools(shared) {
        set.push(vec![
            p.database.clone().into(),
            p.host.clone().into(),
            p.port.into(),
            p.dbname.clone().into(),
            p.user.clone().into(),
            p.pool_size.into(),
            p.min_pool_size.into(),
            p.reserve_pool_size.into(),
            p.server_lifetime_secs.into(),
            POOL_MODE.into(),
            (p.pool_size + p.reserve_pool_size).into(),
            p.servers_total.into(),
            p.paused.into(),
            false.into(),
            p.tenant_seal.into(),
        ]);
    }
    set
}

/// One row per logged-in tenant client, PgBouncer's columns where the meaning is the same:
/// `state` is `active` (logged in, idle or in a transaction) or `waiting` (for a server),
/// `id` is what KILL_CLIENT takes. pgtenant adds `tenant` and `in_transaction` (bound to a
/// server now). Admin console sessions and connections still logging in are not listed
/// (SHOW LISTS counts them as `login_clients`).
fn clients(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("type", Text),
        ("user", Text),
        ("database", Text),
        ("state", Text),
        ("addr", Text),
        ("port", Int),
        ("connect_time", Text),
        ("tenant", Text),
        ("in_transaction", Int),
        ("id", Int),
    ]);
    for c in shared.logged_in.list() {
        let state = c.state();
        set.push(vec![
            "C".into(),
            c.user.to_string().into(),
            c.database.to_string().into(),
            match state {
                ClientState::Waiting => "waiting",
                ClientState::Idle | ClientState::Active => "active",
            }
            .into(),
            c.peer.ip().to_string().into(),
            c.peer.port().into(),
            utc_text(c.connected_at).into(),
            c.tenant.to_string().into(),
            (state == ClientState::Active).into(),
            c.id.into(),
        ]);
    }
    set
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_text(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The calendar date `days` after 1970-01-01 (proleptic Gregorian).
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    loop {
        let length = if leap(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for length in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    (year, month, days + 1)
}

/// Server connections by pool and state (counts: the pool keeps no per-server listing that
/// can be read from outside it). `active` includes connections being opened.
fn servers(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("type", Text),
        ("user", Text),
        ("database", Text),
        ("state", Text),
        ("addr", Text),
        ("port", Int),
        ("count", Int),
    ]);
    for p in snapshot::pools(shared) {
        let PoolSnapshot {
            user,
            database,
            host,
            port,
            servers_active,
            servers_idle,
            ..
        } = p;
        for (state, n) in [("active", servers_active), ("idle", servers_idle)] {
            set.push(vec![
                "S".into(),
                user.clone().into(),
                database.clone().into(),
                state.into(),
                host.clone().into(),
                port.into(),
                n.into(),
            ]);
        }
    }
    set
}

/// Every tenant seen since start, most transactions first. `wait_us` is the total time its
/// clients waited for a server.
fn tenants(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("tenant", Text),
        ("clients", Int),
        ("active", Int),
        ("xacts", Int),
        ("queries", Int),
        ("wait_us", Int),
    ]);
    for t in snapshot::tenants(shared) {
        set.push(vec![
            t.tenant.into(),
            t.clients.into(),
            t.active.into(),
            t.xacts.into(),
            t.queries.into(),
            t.wait_us.into(),
        ]);
    }
    set
}

/// PgBouncer's SHOW LISTS rows (`list`, `items`) where pgtenant has the number; DNS rows
/// are 0 (upstream names are resolved at each connect).
fn lists(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[("list", Text), ("items", Int)]);
    let pools = snapshot::pools(shared);
    let c = snapshot::clients(shared);
    let users: std::collections::BTreeSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let used_servers: usize = pools.iter().map(|p| p.servers_active).sum();
    let free_servers: usize = pools.iter().map(|p| p.servers_idle).sum();
    let rows: [(&str, Cell); 12] = [
        ("databases", pools.len().into()),
        ("users", users.len().into()),
        ("pools", pools.len().into()),
        ("free_clients", 0u64.into()),
        ("used_clients", (c.idle + c.active + c.waiting).into()),
        ("login_clients", c.other().into()),
        ("free_servers", free_servers.into()),
        ("used_servers", used_servers.into()),
        ("dns_names", 0u64.into()),
        ("dns_zones", 0u64.into()),
        ("dns_queries", 0u64.into()),
        ("dns_pending", 0u64.into()),
    ];
    for (list, items) in rows {
        set.push(vec![list.into(), items]);
    }
    set
}

fn version() -> ResultSet {
    let mut set = ResultSet::new(&[("version", Text)]);
    set.push(vec![
        format!("pgtenant {}", env!("CARGO_PKG_VERSION")).into(),
    ]);
    set
}

fn help() -> Reply {
    Reply::Notices(
        vec![
            "Console usage".to_owned(),
            "\tSHOW HELP|POOLS|STATS|DATABASES|CLIENTS|SERVERS|TENANTS|LISTS|CONFIG|VERSION"
                .to_owned(),
            "\tPAUSE [<db>]        hold new transactions; returns when running ones are done"
                .to_owned(),
            "\tRESUME [<db>]       let held transactions go on".to_owned(),
            "\tRECONNECT [<db>]    replace server connections as they come free".to_owned(),
            "\tKILL [<db>]         close the database's clients now; new ones wait for RESUME"
                .to_owned(),
            "\tKILL_CLIENT <id>    close one client (the id column of SHOW CLIENTS)".to_owned(),
            "\tRELOAD              read the configuration file again".to_owned(),
            "\tSHUTDOWN            stop: close idle clients, let transactions finish".to_owned(),
            "\tSHUTDOWN WAIT_FOR_CLIENTS   stop accepting; exit when the last client leaves"
                .to_owned(),
            "\tnot supported: SUSPEND, DISABLE, ENABLE, WAIT_CLOSE, SET".to_owned(),
        ],
        "SHOW",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_needs_a_whole_second_and_a_known_start() {
        assert_eq!(per_second(100, None), 0);
        assert_eq!(per_second(100, Some(Duration::from_millis(400))), 0);
        assert_eq!(per_second(100, Some(Duration::from_secs(4))), 25);
    }

    #[test]
    fn connect_times_are_calendar_dates_in_utc() {
        let at = |secs: u64| utc_text(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(951_868_799), "2000-02-29 23:59:59 UTC");
        assert_eq!(at(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(at(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(at(1_704_067_199), "2023-12-31 23:59:59 UTC");
    }

    #[test]
    fn mean_of_nothing_is_zero() {
        assert_eq!(mean(500, 0), 0);
        assert_eq!(mean(500, 4), 125);
    }
}
