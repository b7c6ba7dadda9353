//! Micro-benchmark of the SQL guard (`pgtenant::guard`): nanoseconds per check for ordinary
//! statements (the pre-scan alone) and for suspect ones (pre-scan + PostgreSQL grammar).
//! For scale, it also times `pgtenant::sql::shape`, the scan the session already runs on
//! every Query.
//!
//!     cargo run --release --example guard_bench

use std::hint::black_box;
use std::time::Instant;

use pgtenant::guard::{Guard, Verdict};

const ORDINARY: &[&str] = &[
    "SELECT 1",
    "SELECT id, amount, status FROM invoices WHERE id = $1",
    "INSERT INTO invoices (tenant_id, customer_id, amount_cents, status) VALUES ($1, $2, $3, $4) RETURNING id",
    "UPDATE invoices SET status = $1, updated_at = now() WHERE id = $2",
    "SELECT i.id, i.amount_cents, c.name, u.email FROM invoices i JOIN customers c ON c.id = i.customer_id \
     JOIN users u ON u.id = c.owner_id WHERE i.status = 'open' AND i.created_at > now() - interval '30 days' \
     ORDER BY i.created_at DESC LIMIT 50",
    "INSERT INTO events (tenant_id, kind, payload) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, kind) DO UPDATE SET payload = excluded.payload",
];

const SUSPECT: &[&str] = &[
    "SET LOCAL statement_timeout = 5000",
    "SELECT set_config('app.current_tenant_id', $1, true)",
    "SET app.current_tenant_id = 'b'",
];

fn time_per_op(iterations: u32, mut f: impl FnMut()) -> f64 {
    // Warm up caches and branch predictors first.
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn label(sql: &str) -> String {
    let mut s: String = sql.chars().take(60).collect();
    if sql.len() > 60 {
        s.push('…');
    }
    s
}

fn main() {
    let guard = Guard::default();
    println!(
        "{:>10} {:>10} {:>6}  statement",
        "guard ns", "shape ns", "bytes"
    );
    for sql in ORDINARY {
        assert_eq!(guard.check(sql), Verdict::Allow, "{sql}");
        let guard_ns = time_per_op(2_000_000, || {
            black_box(guard.check(black_box(sql)));
        });
        let shape_ns = time_per_op(2_000_000, || {
            black_box(pgtenant::sql::shape(black_box(sql)));
        });
        println!(
            "{guard_ns:>10.1} {shape_ns:>10.1} {:>6}  {}",
            sql.len(),
            label(sql)
        );
    }
    println!("suspect statements (pre-scan + pg_query parse + tree walk):");
    for sql in SUSPECT {
        let guard_ns = time_per_op(20_000, || {
            black_box(guard.check(black_box(sql)));
        });
        println!(
            "{guard_ns:>10.0} {:>10} {:>6}  {}",
            "",
            sql.len(),
            label(sql)
        );
    }
}
