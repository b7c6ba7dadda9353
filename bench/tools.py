#!/usr/bin/env python3
"""Helpers for bench/run: free ports, pgbench result parsing, the idle-clients memory test and
the report. Python 3.11 standard library only.

Subcommands (all print to stdout; errors go to stderr with exit status 1):
  free-port                          a free TCP port on 127.0.0.1
  summary OUT LOG_PREFIX             parse one pgbench run: tps, p50, p99, samples, error
  record CSV OUT LOG_PREFIX k=v...   the same, appended as a row to CSV; prints one line
  idle --pid PID --port PORT ...     open N idle clients, report the proxy's RSS growth
  report DIR                         runs.csv -> results.csv + results.md (and print it)
  seed-report DIR                    seed.csv -> seed.md (and print it)

Passwords and tokens are read from environment variables named on the command line, never
passed as arguments, and never printed.
"""

import argparse
import asyncio
import base64
import csv
import glob
import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import socket
import statistics
import struct
import sys
import time


# --------------------------------------------------------------------------------------------
# free-port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# summary: one pgbench run


TPS_RE = re.compile(r"^tps = ([0-9.]+)", re.M)
CONN_RE = re.compile(r"^initial connection time = ([0-9.]+) ms", re.M)


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_latencies_us(prefix):
    """Per-transaction latencies (microseconds) from pgbench --log files PREFIX.<pid>[.<thread>].

    Line format (pgbench 15): client_id transaction_no time script_no time_epoch time_us [...];
    `time` is the transaction's elapsed time in microseconds, or "failed"/"skipped".
    """
    values = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    values.append(int(fields[2]))
    values.sort()
    return values


def summarize(out_path, log_prefix):
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    tps_match = TPS_RE.search(text)
    tps = float(tps_match.group(1)) if tps_match else None
    lat = read_latencies_us(log_prefix)
    p50 = percentile(lat, 50)
    p99 = percentile(lat, 99)
    # pgbench reports a failing client as "pgbench: error: client N script 0 aborted in
    # command ..." followed by the server's message; the first such line is the reason.
    error = ""
    for line in text.splitlines():
        lowered = line.lower()
        if "error" in lowered or "fatal" in lowered:
            error = line.strip()
            break
    if tps is None and not error:
        error = "no transaction completed within the run"
    failed = bool(error) or tps is None
    conn = CONN_RE.search(text)
    return {
        "tps": f"{tps:.1f}" if tps is not None else "",
        "p50_ms": f"{p50 / 1000:.3f}" if p50 is not None else "",
        "p99_ms": f"{p99 / 1000:.3f}" if p99 is not None else "",
        "samples": str(len(lat)),
        "login_ms": conn.group(1) if conn else "",
        "status": "failed" if failed else "ok",
        "error": error[:300],
    }


def record(csv_path, out_path, log_prefix, fields, with_mean):
    """Summarizes one run, appends it to csv_path with the given key=value fields first, and
    prints a one-line summary."""
    result = summarize(out_path, log_prefix)
    if with_mean:
        lat = read_latencies_us(log_prefix)
        result["mean_ms"] = f"{statistics.fmean(lat) / 1000:.3f}" if lat else ""
    row = dict(fields)
    row.update(result)
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    line = f"{result['tps'] or '-':>9} tps  p50 {result['p50_ms'] or '-'} ms  p99 {result['p99_ms'] or '-'} ms"
    if result["status"] != "ok":
        line += f"  FAILED: {result['error'][:160]}"
    print(line)


# --------------------------------------------------------------------------------------------
# idle: N logged-in idle clients, RSS of the proxy before/after


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ScramCache:
    """Caches SaltedPassword per (salt, iterations): every login of the idle test uses the same
    secret, and the client's PBKDF2 cost is not what we measure."""

    def __init__(self, password: bytes):
        self.password = password
        self.keys = {}

    def client_key(self, salt: bytes, iterations: int) -> bytes:
        key = (salt, iterations)
        if key not in self.keys:
            salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
            self.keys[key] = hmac.new(salted, b"Client Key", "sha256").digest()
        return self.keys[key]


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


async def read_message(reader):
    header = await reader.readexactly(5)
    tag = header[:1]
    (length,) = struct.unpack("!I", header[1:])
    body = await reader.readexactly(length - 4)
    return tag, body


async def login(host, port, user, database, password, scram, timeout):
    """Opens one connection and logs in (cleartext, MD5 or SCRAM-SHA-256); returns the streams."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    writer.write(struct.pack("!I", len(body) + 4) + body)
    client_nonce = client_first_bare = None
    while True:
        tag, body = await asyncio.wait_for(read_message(reader), timeout)
        if tag == b"E":
            fields = dict(
                (f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f
            )
            raise RuntimeError(f"{fields.get(b'C', '?')}: {fields.get(b'M', '?')}")
        if tag == b"Z":
            return reader, writer
        if tag != b"R":
            continue
        (code,) = struct.unpack("!I", body[:4])
        if code == 0:
            continue
        if code == 3:  # cleartext
            writer.write(message(b"p", password + b"\0"))
        elif code == 5:  # md5
            salt = body[4:8]
            inner = hashlib.md5(password + user.encode()).hexdigest().encode()
            outer = hashlib.md5(inner + salt).hexdigest().encode()
            writer.write(message(b"p", b"md5" + outer + b"\0"))
        elif code == 10:  # SASL: start SCRAM-SHA-256
            client_nonce = base64.b64encode(secrets.token_bytes(18))
            client_first_bare = b"n=,r=" + client_nonce
            first = b"n,," + client_first_bare
            writer.write(
                message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            )
        elif code == 11:  # SASL continue: server-first-message
            server_first = body[4:]
            attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
            nonce, salt, iterations = attrs[b"r"], base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
            if not nonce.startswith(client_nonce):
                raise RuntimeError("SCRAM server nonce does not extend ours")
            client_key = scram.client_key(salt, iterations)
            stored_key = hashlib.sha256(client_key).digest()
            without_proof = b"c=biws,r=" + nonce
            auth_message = client_first_bare + b"," + server_first + b"," + without_proof
            signature = hmac.new(stored_key, auth_message, "sha256").digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            writer.write(message(b"p", without_proof + b",p=" + base64.b64encode(proof)))
        elif code == 12:  # SASL final; the server signature is not checked (benchmark only)
            continue
        else:
            raise RuntimeError(f"unsupported authentication request {code}")
        await writer.drain()


async def idle_clients(args):
    password = os.environ.get(args.password_env, "").encode()
    scram = ScramCache(password)
    gate = asyncio.Semaphore(args.concurrency)
    held = []
    errors = {}

    async def one():
        async with gate:
            # After many failures the proxy is refusing or stalling: stop trying.
            if sum(errors.values()) >= 100:
                errors["not attempted after 100 failures"] = (
                    errors.get("not attempted after 100 failures", 0) + 1
                )
                return
            try:
                held.append(
                    await login(args.host, args.port, args.user, args.dbname, password, scram, 10)
                )
            except Exception as err:  # noqa: BLE001 - counted and reported by kind
                key = str(err)[:200] or type(err).__name__
                errors[key] = errors.get(key, 0) + 1

    # One warm-up client first, so the proxy's pool/server-side state exists in "before".
    await one()
    for _, writer in held:
        writer.close()
    held.clear()
    await asyncio.sleep(1.0)
    before = vm_rss_kib(args.pid)
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.clients)))
    connect_seconds = time.monotonic() - started
    await asyncio.sleep(args.settle)
    after = vm_rss_kib(args.pid)
    connected = len(held)
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.5)
    per_client = (after - before) / connected if connected else None
    print(
        json.dumps(
            {
                "clients": args.clients,
                "connected": connected,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "per_client_kib": round(per_client, 3) if per_client is not None else None,
                "connect_seconds": round(connect_seconds, 2),
                "errors": errors,
            }
        )
    )


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------------------------
# report


SYSTEM_LABELS = {
    "pgbouncer_seed": "PgBouncer + SET LOCAL by the app",
    "pgtenant_bare": "pgtenant, bare statement",
    "direct": "PostgreSQL direct",
    "pgbouncer": "PgBouncer",
    "pgbouncer_md5": "PgBouncer (md5)",
    "pgtenant": "pgtenant",
}


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(value):
    return float(value) if value not in ("", None) else None


def fmt(value, digits=0):
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def aggregate(rows):
    """{(comparison, scenario, system): {tps, p50, p99, failed, error, rounds}} (medians)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["comparison"], row["scenario"], row["system"]), []).append(row)
    result = {}
    for key, group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        errors = [r["error"] for r in group if r["status"] != "ok" and r["error"]]
        result[key] = {
            "tps": median_or_none([num(r["tps"]) for r in ok]),
            "p50": median_or_none([num(r["p50_ms"]) for r in ok]),
            "p99": median_or_none([num(r["p99_ms"]) for r in ok]),
            "rounds": len(group),
            "failed": len(group) - len(ok),
            "error": errors[0] if errors else "",
        }
    return result


def cell_tps(stat):
    if stat is None:
        return "—"
    if stat["tps"] is None:
        return "fails"
    text = fmt(stat["tps"])
    if stat["failed"]:
        text += f" ({stat['failed']}/{stat['rounds']} failed)"
    return text


def cell_lat(stats):
    parts = []
    for stat in stats:
        if stat is None or stat["p50"] is None:
            parts.append("—")
        else:
            parts.append(f"{stat['p50']:.2f}/{stat['p99']:.2f}")
    return " · ".join(parts)


def cell_ratio(a, b):
    if a is None or b is None:
        return "—"
    value = ratio(a["tps"], b["tps"])
    return "—" if value is None else f"{value:.2f}×"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def scenario_order(rows, comparison):
    seen = []
    for row in rows:
        if row["comparison"] == comparison and row["scenario"] not in seen:
            seen.append(row["scenario"])
    return seen


def report(directory):
    rows = []
    runs_path = os.path.join(directory, "runs.csv")
    if os.path.exists(runs_path):
        with open(runs_path, newline="") as f:
            rows = list(csv.DictReader(f))
    meta = {}
    meta_path = os.path.join(directory, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    stats = aggregate(rows)
    out_rows = []
    md = []
    md.append(f"# pgtenant benchmark — {meta.get('date', '?')}")
    md.append("")
    md.append(
        f"Machine: {meta.get('machine', '?')}. PostgreSQL {meta.get('postgres', '?')}, "
        f"PgBouncer {meta.get('pgbouncer', '?')}, pgtenant {meta.get('pgtenant', '?')}. "
        f"pgbench -T {meta.get('duration', '?')} s, -j {meta.get('jobs', '?')}, "
        f"{meta.get('rounds', '?')} round(s), median of rounds; mode: {meta.get('mode', '?')}."
    )
    md.append("TPS = transactions per second (pgbench, excluding initial connection time); "
              "latency p50/p99 in ms from pgbench's per-transaction log.")
    md.append("")

    def record(comparison, scenario, system, stat, **ratios):
        out_rows.append(
            {
                "comparison": comparison,
                "scenario": scenario,
                "system": system,
                "rounds": stat["rounds"] if stat else 0,
                "failed_rounds": stat["failed"] if stat else 0,
                "median_tps": "" if not stat or stat["tps"] is None else f"{stat['tps']:.1f}",
                "median_p50_ms": "" if not stat or stat["p50"] is None else f"{stat['p50']:.3f}",
                "median_p99_ms": "" if not stat or stat["p99"] is None else f"{stat['p99']:.3f}",
                "ratio_pgtenant_pgbouncer": ratios.get("vs_pgb", ""),
                "ratio_pgtenant_direct": ratios.get("vs_direct", ""),
                "ratio_pgtenant_pgbouncer_md5": ratios.get("vs_md5", ""),
                "error": stat["error"] if stat else "",
            }
        )

    def ratio_text(a, b):
        value = ratio(a["tps"] if a else None, b["tps"] if b else None)
        return "" if value is None else f"{value:.3f}"

    footnotes = []

    def note_errors(comparison, scenario, systems):
        for system in systems:
            stat = stats.get((comparison, scenario, system))
            if stat and stat["error"]:
                footnotes.append(f"- {comparison} {scenario}, {SYSTEM_LABELS.get(system, system)}: "
                                 f"`{stat['error']}`")

    # (a) the seed's way vs pgtenant
    scen = scenario_order(rows, "a")
    if scen:
        md.append("## (a) The seed's way vs pgtenant (pgbench tables with RLS)")
        md.append("")
        md.append("PgBouncer runs `BEGIN; SET LOCAL app.current_tenant_id = '…'; <statements>; "
                  "COMMIT;` sent by the client; pgtenant runs the bare statements under a tenant "
                  "token.")
        md.append("")
        body = []
        for s in scen:
            pgb = stats.get(("a", s, "pgbouncer_seed"))
            pgt = stats.get(("a", s, "pgtenant_bare"))
            body.append([f"`{s}`", cell_tps(pgb), cell_tps(pgt), cell_ratio(pgt, pgb),
                         cell_lat([pgb, pgt])])
            record("a", s, "pgbouncer_seed", pgb)
            record("a", s, "pgtenant_bare", pgt, vs_pgb=ratio_text(pgt, pgb))
            note_errors("a", s, ["pgbouncer_seed", "pgtenant_bare"])
        md.append(table(["scenario", "PgBouncer + app SET LOCAL", "pgtenant bare",
                         "pgtenant / PgBouncer", "p50/p99 ms (PgB · pgt)"], body))
        md.append("")

    # (b) proxy overhead
    scen = scenario_order(rows, "b")
    if scen:
        md.append("## (b) Proxy overhead (stock pgbench tables and scripts, no RLS)")
        md.append("")
        md.append("pgtenant still injects the tenant into every transaction; PgBouncer does not.")
        md.append("")
        body = []
        for s in scen:
            d = stats.get(("b", s, "direct"))
            pgb = stats.get(("b", s, "pgbouncer"))
            pgt = stats.get(("b", s, "pgtenant"))
            body.append([f"`{s}`", cell_tps(d), cell_tps(pgb), cell_tps(pgt),
                         cell_ratio(pgt, pgb), cell_ratio(pgt, d), cell_lat([d, pgb, pgt])])
            record("b", s, "direct", d)
            record("b", s, "pgbouncer", pgb)
            record("b", s, "pgtenant", pgt, vs_pgb=ratio_text(pgt, pgb),
                   vs_direct=ratio_text(pgt, d))
            note_errors("b", s, ["direct", "pgbouncer", "pgtenant"])
        md.append(table(["scenario", "direct", "PgBouncer", "pgtenant", "pgtenant / PgBouncer",
                         "pgtenant / direct", "p50/p99 ms (direct · PgB · pgt)"], body))
        md.append("")

    # (c) connection rate
    scen = scenario_order(rows, "c")
    if scen:
        md.append("## (c) Connection rate: connect + authenticate + transaction + close (`pgbench -C`)")
        md.append("")
        md.append("direct and PgBouncer authenticate with SCRAM-SHA-256 (PgBouncer md5: a second "
                  "user with auth method md5); pgtenant verifies a JWT sent as the password.")
        md.append("")
        body = []
        for s in scen:
            d = stats.get(("c", s, "direct"))
            pgb = stats.get(("c", s, "pgbouncer"))
            md5 = stats.get(("c", s, "pgbouncer_md5"))
            pgt = stats.get(("c", s, "pgtenant"))
            body.append([f"`{s}`", cell_tps(d), cell_tps(pgb), cell_tps(md5), cell_tps(pgt),
                         cell_ratio(pgt, pgb), cell_ratio(pgt, md5), cell_ratio(pgt, d),
                         cell_lat([d, pgb, md5, pgt])])
            record("c", s, "direct", d)
            record("c", s, "pgbouncer", pgb)
            record("c", s, "pgbouncer_md5", md5)
            record("c", s, "pgtenant", pgt, vs_pgb=ratio_text(pgt, pgb),
                   vs_direct=ratio_text(pgt, d), vs_md5=ratio_text(pgt, md5))
            note_errors("c", s, ["direct", "pgbouncer", "pgbouncer_md5", "pgtenant"])
        md.append(table(["scenario", "direct (SCRAM)", "PgBouncer (SCRAM)", "PgBouncer (md5)",
                         "pgtenant (JWT)", "pgt / PgB SCRAM", "pgt / PgB md5", "pgt / direct",
                         "p50/p99 ms (d · PgB · md5 · pgt)"], body))
        md.append("")

    # noisy neighbour
    noisy_variants = [
        ("noisy", ("pgbouncer", "pgtenant"),
         "Noisy neighbour (stock tables, select-only, simple protocol)",
         "A big tenant with 500 busy clients and a small tenant with 5 run at the same time "
         "through one pool, both with the stock select-only script (equal client work through "
         "both proxies; to PgBouncer the two tenants are just two groups of clients)."),
        ("noisy_seed", ("pgbouncer_seed", "pgtenant_bare"),
         "Noisy neighbour, the seed's way vs pgtenant (RLS tables, select-only)",
         "As above on the RLS tables: PgBouncer clients send BEGIN; SET LOCAL; SELECT; COMMIT, "
         "pgtenant clients the bare SELECT. The big pgbench does four times the client work "
         "per transaction in the PgBouncer case, which limits its load on a small machine."),
    ]
    for comparison, systems, title, text in noisy_variants:
        if not any(r["comparison"] == comparison for r in rows):
            continue
        md.append(f"## {title}")
        md.append("")
        md.append(text)
        md.append("")
        body = []
        small = {}
        for system in systems:
            s_small = stats.get((comparison, "small_tenant_c5", system))
            s_big = stats.get((comparison, "big_tenant_c500", system))
            small[system] = s_small
            if s_small is None:
                continue
            body.append([SYSTEM_LABELS[system], cell_tps(s_small),
                         fmt(s_small["p50"], 2), fmt(s_small["p99"], 2), cell_tps(s_big),
                         "—" if not s_big else fmt(s_big["p99"], 2)])
            record(comparison, "small_tenant_c5", system, s_small)
            record(comparison, "big_tenant_c500", system, s_big)
            note_errors(comparison, "small_tenant_c5", [system])
            note_errors(comparison, "big_tenant_c500", [system])
        md.append(table(["system", "small tenant TPS", "small p50 ms", "small p99 ms",
                         "big tenant TPS", "big p99 ms"], body))
        b_stat, a_stat = small.get(systems[0]), small.get(systems[1])
        if a_stat and b_stat and a_stat["p99"] and b_stat["p99"]:
            md.append("")
            md.append(f"Small tenant's p99, pgtenant / PgBouncer: {a_stat['p99'] / b_stat['p99']:.2f}× "
                      "(lower is better).")
        md.append("")

    # idle memory
    idle_path = os.path.join(directory, "idle.jsonl")
    if os.path.exists(idle_path):
        with open(idle_path) as f:
            idle = [json.loads(line) for line in f if line.strip()]
        md.append("## Idle clients: memory")
        md.append("")
        md.append("Logged-in idle clients held open; growth of the proxy's VmRSS divided by the "
                  "clients connected.")
        md.append("")
        body = []
        for item in idle:
            per = item.get("per_client_kib")
            body.append([SYSTEM_LABELS.get(item["system"], item["system"]),
                         f"{item['connected']}/{item['clients']}",
                         fmt(item["rss_before_kib"] / 1024, 1), fmt(item["rss_after_kib"] / 1024, 1),
                         "—" if per is None else f"{per:.2f}",
                         f"{item['connect_seconds']:.1f}",
                         "; ".join(f"{k} ×{v}" for k, v in item.get("errors", {}).items()) or ""])
            out_rows.append({
                "comparison": "idle", "scenario": f"idle_clients_{item['clients']}",
                "system": item["system"], "rounds": 1, "failed_rounds": 0,
                "median_tps": "", "median_p50_ms": "", "median_p99_ms": "",
                "ratio_pgtenant_pgbouncer": "", "ratio_pgtenant_direct": "",
                "ratio_pgtenant_pgbouncer_md5": "",
                "rss_per_client_kib": "" if per is None else f"{per:.3f}",
                "error": "; ".join(item.get("errors", {}).keys()),
            })
        md.append(table(["system", "connected", "RSS before MiB", "RSS after MiB",
                         "KiB per client", "connect s", "errors"], body))
        md.append("")

    if footnotes:
        md.append("## Errors")
        md.append("")
        md.extend(footnotes)
        md.append("")

    text = "\n".join(md)
    with open(os.path.join(directory, "results.md"), "w") as f:
        f.write(text)
    fields = ["comparison", "scenario", "system", "rounds", "failed_rounds", "median_tps",
              "median_p50_ms", "median_p99_ms", "ratio_pgtenant_pgbouncer",
              "ratio_pgtenant_direct", "ratio_pgtenant_pgbouncer_md5", "rss_per_client_kib",
              "error"]
    with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(out_rows)
    print(text)


def seed_report(directory):
    with open(os.path.join(directory, "seed.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    meta = {}
    meta_path = os.path.join(directory, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    by = {(r["query"], r["system"]): r for r in rows}
    queries = []
    for r in rows:
        if r["query"] not in queries:
            queries.append(r["query"])
    md = [f"# The seed's table through pgtenant — {meta.get('date', '?')}", ""]
    md.append(f"Machine: {meta.get('machine', '?')}. PostgreSQL {meta.get('postgres', '?')}. "
              f"`invoices`: {meta.get('seed_rows', '?')} rows over {meta.get('seed_tenants', '?')} "
              f"tenants; one client, pgbench -T {meta.get('seed_duration', '?')} s per cell; "
              "latency in ms (mean / p50 / p99).")
    md.append("")
    labels = {
        "no_rls_direct": "without RLS (direct, owner, WHERE tenant_id)",
        "rls_direct_set_local": "with RLS (direct, app SET LOCAL)",
        "rls_pgtenant": "with RLS through pgtenant",
    }
    body = []
    for q in queries:
        cells = []
        for system in labels:
            r = by.get((q, system))
            if not r or r["status"] != "ok":
                cells.append("fails" if r else "—")
            else:
                cells.append(f"{float(r['mean_ms']):.3f} / {float(r['p50_ms']):.3f} / "
                             f"{float(r['p99_ms']):.3f}")
        base, ours = by.get((q, "no_rls_direct")), by.get((q, "rls_pgtenant"))
        if base and ours and base["status"] == ours["status"] == "ok":
            overhead = float(ours["mean_ms"]) / float(base["mean_ms"]) - 1
            cells.append(f"{overhead * 100:+.0f}%")
        else:
            cells.append("—")
        body.append([f"`{q}`"] + cells)
    md.append(table(["query"] + list(labels.values()) + ["pgtenant+RLS vs no RLS (mean)"], body))
    md.append("")
    errors = [f"- {r['query']} {r['system']}: `{r['error']}`" for r in rows if r["error"]]
    if errors:
        md += ["## Errors", ""] + errors + [""]
    text = "\n".join(md)
    with open(os.path.join(directory, "seed.md"), "w") as f:
        f.write(text)
    print(text)


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("free-port")
    p = sub.add_parser("summary")
    p.add_argument("out")
    p.add_argument("log_prefix")
    p.add_argument("--mean", action="store_true", help="also print the mean latency")
    p = sub.add_parser("record")
    p.add_argument("csv")
    p.add_argument("out")
    p.add_argument("log_prefix")
    p.add_argument("fields", nargs="*", help="key=value columns written before the results")
    p.add_argument("--mean", action="store_true", help="also record the mean latency")
    p = sub.add_parser("idle")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--dbname", required=True)
    p.add_argument("--password-env", required=True)
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--settle", type=float, default=2.0)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p = sub.add_parser("seed-report")
    p.add_argument("dir")
    args = parser.parse_args()

    if args.command == "free-port":
        print(free_port())
    elif args.command == "summary":
        result = summarize(args.out, args.log_prefix)
        if args.mean:
            lat = read_latencies_us(args.log_prefix)
            result["mean_ms"] = f"{statistics.fmean(lat) / 1000:.3f}" if lat else ""
        print(json.dumps(result))
    elif args.command == "record":
        fields = [f.split("=", 1) for f in args.fields]
        record(args.csv, args.out, args.log_prefix, fields, args.mean)
    elif args.command == "idle":
        raise_nofile()
        asyncio.run(idle_clients(args))
    elif args.command == "report":
        report(args.dir)
    elif args.command == "seed-report":
        seed_report(args.dir)


if __name__ == "__main__":
    try:
        main()
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        print(f"tools.py: {err}", file=sys.stderr)
        sys.exit(1)
