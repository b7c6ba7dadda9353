// The suite's environment (PGT_* variables set by tests/driver_node.rs), the check runner with
// its pass/fail counters, and helpers shared by the node-postgres and postgres.js checks: a
// superuser connection straight to PostgreSQL for ground truth, and a way to force a client's
// next transaction onto a different pooled server. Nothing here knows the expected results of
// a check; each check asserts them itself.

import assert from 'node:assert/strict';
import pg from 'pg';

/** How long one check may run before it is reported as failed (guards against a hung proxy). */
const CHECK_DEADLINE_MS = 60_000;

function requireEnv(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`environment variable ${name} is not set (run this suite via tests/driver_node.rs)`);
  }
  return value;
}

export const env = {
  host: requireEnv('PGT_HOST'),
  port: Number(requireEnv('PGT_PORT')),
  database: requireEnv('PGT_DB'),
  user: requireEnv('PGT_USER'),
  tokenA: requireEnv('PGT_TOKEN_A'),
  tokenB: requireEnv('PGT_TOKEN_B'),
  tenantA: requireEnv('PGT_TENANT_A'),
  tenantB: requireEnv('PGT_TENANT_B'),
  directDsn: requireEnv('PGT_DIRECT_DSN'),
  // default_pool_size of the proxy under test; driver_node.rs configures 2.
  poolSize: Number(process.env.PGT_POOL_SIZE ?? '2'),
};

/** What the demo data holds per tenant (config/demo_data.sql): the suite's ground truth. */
export const ACME_INVOICES = 3;
export const GLOBEX_INVOICES = 2;
export const TENANT_SETTING = 'app.current_tenant_id';

/**
 * Parses a libpq key/value connection string (`host=… port=… dbname='…'`) into node-postgres
 * client settings. Values may be single-quoted with backslash escapes, as libpq allows.
 */
export function parseKeyValueDsn(dsn) {
  const settings = {};
  let i = 0;
  const skipSpaces = () => {
    while (i < dsn.length && /\s/.test(dsn[i])) i += 1;
  };
  for (skipSpaces(); i < dsn.length; skipSpaces()) {
    const eq = dsn.indexOf('=', i);
    if (eq < 0) throw new Error('malformed PGT_DIRECT_DSN: a key without "="');
    const key = dsn.slice(i, eq).trim();
    i = eq + 1;
    let value = '';
    if (dsn[i] === "'") {
      i += 1;
      while (i < dsn.length && dsn[i] !== "'") {
        if (dsn[i] === '\\' && i + 1 < dsn.length) i += 1;
        value += dsn[i];
        i += 1;
      }
      if (dsn[i] !== "'") throw new Error('malformed PGT_DIRECT_DSN: unterminated quote');
      i += 1;
    } else {
      while (i < dsn.length && !/\s/.test(dsn[i])) {
        value += dsn[i];
        i += 1;
      }
    }
    settings[key] = value;
  }
  return {
    host: settings.host,
    port: settings.port === undefined ? undefined : Number(settings.port),
    user: settings.user,
    password: settings.password,
    database: settings.dbname,
  };
}

/** A connected superuser client straight to PostgreSQL (RLS does not apply to it). */
export async function directClient() {
  const client = new pg.Client(parseKeyValueDsn(env.directDsn));
  await client.connect();
  return client;
}

/** node-postgres settings for a client of the proxy whose password is `token`. */
export function pgConfig(token, extra = {}) {
  return {
    host: env.host,
    port: env.port,
    database: env.database,
    user: env.user,
    password: token,
    ...extra,
  };
}

/** A connected node-postgres client of the proxy. */
export async function pgClient(token, extra = {}) {
  const client = new pg.Client(pgConfig(token, extra));
  // An error on an idle client (e.g. the proxy closing it) must not crash the whole suite.
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** Ends clients, ignoring clients that are already closed. */
export async function endAll(...clients) {
  await Promise.all(clients.filter(Boolean).map((client) => client.end().catch(() => {})));
}

/**
 * Holds every server of the proxy's pool (`env.poolSize` of them) in open transactions of
 * fresh node-postgres clients, then frees exactly one server other than `avoidPid` and runs
 * `run()`. Whatever `run()` sends through the proxy must therefore execute on a server whose
 * backend pid differs from `avoidPid` — the way to prove that state set up on one pooled
 * server (a prepared statement, a session SET) is carried to another one.
 * Returns `run()`'s result and the pid of the freed server.
 */
export async function onAnotherServer(avoidPid, run) {
  const poolSize = env.poolSize;
  const holders = [];
  try {
    const pids = [];
    for (let i = 0; i < poolSize; i += 1) {
      const holder = await pgClient(env.tokenB);
      holders.push(holder);
      await holder.query('BEGIN');
      pids.push((await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
    }
    assert.equal(new Set(pids).size, poolSize, `the ${poolSize} holders share a server: ${pids}`);
    const freeIndex = pids.findIndex((pid) => pid !== avoidPid);
    const [freed] = holders.splice(freeIndex, 1);
    await freed.query('COMMIT');
    await freed.end();
    const result = await run();
    return { result, freedPid: pids[freeIndex] };
  } finally {
    for (const holder of holders) {
      await holder.query('ROLLBACK').catch(() => {});
    }
    await endAll(...holders);
  }
}

/** Polls `condition()` every 50 ms until it is true; fails after `attempts` tries. */
export async function waitFor(what, condition, attempts = 200) {
  for (let i = 0; i < attempts; i += 1) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`gave up waiting for ${what}`);
}

/** Number of backends (other than the asking one) running a statement containing `marker`. */
export async function activeStatementsWith(direct, marker) {
  const { rows } = await direct.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' " +
      'AND pid <> pg_backend_pid() AND position($1 in query) > 0',
    [marker],
  );
  return rows[0].n;
}

/** Asserts that `promise` rejects with SQLSTATE `code`; returns the error. */
export async function rejectsWithCode(promise, code, messagePattern) {
  let error = null;
  try {
    await promise;
  } catch (caught) {
    error = caught;
  }
  assert.ok(error, `expected an error with SQLSTATE ${code}, but it succeeded`);
  assert.equal(error.code, code, `expected SQLSTATE ${code}, got ${error.code}: ${error.message}`);
  if (messagePattern) assert.match(error.message, messagePattern);
  return error;
}

const counters = { passed: 0, failed: 0 };
const failures = [];

function describe(error) {
  if (!(error instanceof Error)) return String(error);
  if (error instanceof assert.AssertionError) {
    return error.message.split('\n').join('\n       ');
  }
  const code = error.code ? ` [SQLSTATE ${error.code}]` : '';
  const detail = error.detail ? `\n       detail: ${error.detail}` : '';
  return `${error.message}${code}${detail}\n       ${(error.stack ?? '').split('\n').slice(1, 4).join('\n       ')}`;
}

/** Runs one named check, counting it as passed when `body()` resolves within the deadline. */
export async function check(name, body) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`did not finish within ${CHECK_DEADLINE_MS / 1000} s`)),
      CHECK_DEADLINE_MS,
    );
  });
  try {
    await Promise.race([body(), deadline]);
    counters.passed += 1;
    console.log(`ok   ${name}`);
  } catch (error) {
    counters.failed += 1;
    failures.push(name);
    console.log(`FAIL ${name}\n       ${describe(error)}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Prints the one-line summary and exits non-zero when any check failed. */
export function finish() {
  if (failures.length > 0) {
    console.log(`failed checks:\n  ${failures.join('\n  ')}`);
  }
  console.log(`${counters.passed} passed, ${counters.failed} failed`);
  process.exit(counters.failed === 0 && counters.passed > 0 ? 0 : 1);
}
