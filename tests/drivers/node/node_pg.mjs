// node-postgres (`pg`) through pgtenant, in pg's own idiom: `client.query(text)` (simple
// protocol), `client.query(text, values)` (extended protocol, unnamed statement),
// `client.query({ name, text, values })` (named prepared statement, parsed once per client and
// then only bound), `pipeline: true` clients, BEGIN/COMMIT/ROLLBACK, pg-copy-streams for COPY,
// and `Client#cancel(client, query)`, which opens a new connection and sends a protocol
// CancelRequest with the key the proxy gave the client.

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';

import {
  ACME_INVOICES,
  GLOBEX_INVOICES,
  TENANT_SETTING,
  activeStatementsWith,
  check,
  directClient,
  endAll,
  env,
  onAnotherServer,
  pgClient,
  pgConfig,
  rejectsWithCode,
  waitFor,
} from './harness.mjs';

const WHO_AM_I = `SELECT current_setting('${TENANT_SETTING}') AS tenant, pg_backend_pid() AS pid`;

/** A named statement reading the tenant, its invoice count and the server it ran on. */
const NAMED_COUNT = {
  name: 'invoice_count',
  text:
    `SELECT count(*)::int AS n, current_setting('${TENANT_SETTING}') AS tenant, ` +
    'pg_backend_pid() AS pid, $1::int AS round FROM invoices',
};

async function namedCount(client, round) {
  const { rows } = await client.query({ ...NAMED_COUNT, values: [round] });
  return rows[0];
}

/** Collects a readable stream into one Buffer. */
async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function sinkRows(client, labelPrefix) {
  const { rows } = await client.query(
    'SELECT tenant_id::text AS tenant, n, label FROM node_copy_sink WHERE label LIKE $1 ORDER BY n',
    [`${labelPrefix}%`],
  );
  return rows;
}

export async function nodePostgresChecks() {
  await check('pg: simple-protocol queries see only the own tenant', async () => {
    const [acme, globex] = [await pgClient(env.tokenA), await pgClient(env.tokenB)];
    try {
      for (const [client, tenant, invoices, slug] of [
        [acme, env.tenantA, ACME_INVOICES, 'acme'],
        [globex, env.tenantB, GLOBEX_INVOICES, 'globex'],
      ]) {
        const count = await client.query('SELECT count(*)::int AS n FROM invoices');
        assert.equal(count.rows[0].n, invoices);
        const who = await client.query(WHO_AM_I);
        assert.equal(who.rows[0].tenant, tenant);
        const tenants = await client.query('SELECT slug FROM tenants');
        assert.deepEqual(tenants.rows, [{ slug }]);
        const foreign = await client.query('SELECT count(*)::int AS n FROM invoices WHERE tenant_id <> $1', [
          tenant,
        ]);
        assert.equal(foreign.rows[0].n, 0, 'rows of another tenant are visible');
      }
    } finally {
      await endAll(acme, globex);
    }
  });

  await check('pg: a multi-statement simple query runs every statement with the tenant', async () => {
    const client = await pgClient(env.tokenA);
    try {
      const results = await client.query(
        `SELECT current_setting('${TENANT_SETTING}') AS tenant; SELECT count(*)::int AS n FROM invoices; ` +
          `BEGIN; SELECT count(*)::int AS n FROM users; COMMIT; SELECT current_setting('${TENANT_SETTING}') AS tenant`,
      );
      assert.equal(results.length, 6);
      assert.equal(results[0].rows[0].tenant, env.tenantA);
      assert.equal(results[1].rows[0].n, ACME_INVOICES);
      assert.equal(results[3].rows[0].n, 1);
      assert.equal(results[5].rows[0].tenant, env.tenantA, 'after COMMIT inside the query');
    } finally {
      await endAll(client);
    }
  });

  await check('pg: parameterised queries (unnamed extended protocol) bind values and keep the tenant', async () => {
    const [acme, globex] = [await pgClient(env.tokenA), await pgClient(env.tokenB)];
    try {
      const sql = `SELECT count(*)::int AS n, current_setting('${TENANT_SETTING}') AS tenant FROM invoices WHERE amount >= $1 AND status = ANY($2)`;
      const a = await acme.query(sql, [600, ['paid', 'sent', 'draft']]);
      assert.deepEqual(a.rows[0], { n: 1, tenant: env.tenantA });
      const b = await globex.query(sql, [600, ['paid', 'sent', 'draft']]);
      assert.deepEqual(b.rows[0], { n: 2, tenant: env.tenantB });
      const echo = await acme.query('SELECT $1::text AS s, $2::numeric AS x, $3::uuid AS u', [
        "it's \\ 'quoted'",
        '12.50',
        env.tenantB,
      ]);
      assert.deepEqual(echo.rows[0], { s: "it's \\ 'quoted'", x: '12.50', u: env.tenantB });
      await rejectsWithCode(acme.query('SELECT $1::int', ['not a number']), '22P02');
      const after = await acme.query('SELECT count(*)::int AS n FROM invoices WHERE status = $1', ['paid']);
      assert.equal(after.rows[0].n, 1, 'the client works after an error');
    } finally {
      await endAll(acme, globex);
    }
  });

  await check("pg: row-level security refuses writing another tenant's row (42501)", async () => {
    const client = await pgClient(env.tokenA);
    try {
      await rejectsWithCode(
        client.query('INSERT INTO invoices (tenant_id, amount) VALUES ($1, 1)', [env.tenantB]),
        '42501',
        /row-level security/,
      );
      const updated = await client.query("UPDATE invoices SET status = 'void' WHERE tenant_id = $1", [env.tenantB]);
      assert.equal(updated.rowCount, 0, "an UPDATE reached another tenant's rows");
    } finally {
      await endAll(client);
    }
  });

  await check('pg: named prepared statements reused across many transactions by 6 clients on a pool of 2', async () => {
    const clients = [];
    try {
      for (let i = 0; i < 6; i += 1) clients.push(await pgClient(i % 2 === 0 ? env.tokenA : env.tokenB));
      const pidsSeen = new Set();
      await Promise.all(
        clients.map(async (client, i) => {
          const [tenant, invoices] = i % 2 === 0 ? [env.tenantA, ACME_INVOICES] : [env.tenantB, GLOBEX_INVOICES];
          // The same statement name with a different text on every client: names are per client.
          const own = { name: 'per_client', text: `SELECT $1::int * ${i + 1} AS v` };
          for (let round = 0; round < 15; round += 1) {
            const inTransaction = round % 3 !== 0;
            if (inTransaction) await client.query('BEGIN');
            const row = await namedCount(client, round);
            assert.deepEqual([row.n, row.tenant, row.round], [invoices, tenant, round], `client ${i} round ${round}`);
            pidsSeen.add(row.pid);
            const mine = await client.query({ ...own, values: [round] });
            assert.equal(mine.rows[0].v, round * (i + 1), `client ${i} got another client's "per_client"`);
            if (inTransaction) await client.query(round % 3 === 1 ? 'COMMIT' : 'ROLLBACK');
          }
        }),
      );
      assert.ok(pidsSeen.size >= 2, `all statements ran on one server (${[...pidsSeen]})`);
    } finally {
      await endAll(...clients);
    }
  });

  await check('pg: a named statement prepared on one server executes on another', async () => {
    const client = await pgClient(env.tokenA);
    try {
      const first = await namedCount(client, 1);
      assert.equal(first.n, ACME_INVOICES);
      // pg now only sends Bind/Execute for "invoice_count": the proxy must prepare it there.
      const { result: moved } = await onAnotherServer(first.pid, async () => {
        await client.query('BEGIN');
        const row = await namedCount(client, 2);
        await client.query('COMMIT');
        return row;
      });
      assert.notEqual(moved.pid, first.pid, 'the statement did not move to another server');
      assert.deepEqual([moved.n, moved.tenant, moved.round], [ACME_INVOICES, env.tenantA, 2]);
    } finally {
      await endAll(client);
    }
  });

  await check('pg: pipeline mode (many queries written before any reply), error mid-pipeline', async () => {
    const client = await pgClient(env.tokenB, { pipeline: true });
    try {
      const pending = [];
      for (let round = 0; round < 20; round += 1) {
        pending.push(client.query({ ...NAMED_COUNT, values: [round] }));
        pending.push(client.query('SELECT $1::text AS echo', [`r${round}`]));
        if (round === 7) pending.push(client.query('SELECT 1 / $1::int AS boom', [0]));
      }
      pending.push(client.query('BEGIN'));
      pending.push(client.query("UPDATE invoices SET status = 'void' WHERE status = 'paid'"));
      pending.push(client.query("SELECT count(*)::int AS n FROM invoices WHERE status = 'void'"));
      pending.push(client.query('ROLLBACK'));
      const settled = await Promise.allSettled(pending);
      const failed = settled.filter((outcome) => outcome.status === 'rejected');
      assert.equal(failed.length, 1, `failures: ${failed.map((f) => f.reason.message)}`);
      assert.equal(failed[0].reason.code, '22012');
      const values = settled.filter((o) => o.status === 'fulfilled').map((o) => o.value);
      const counts = values.filter((r) => r.rows[0]?.round !== undefined);
      assert.equal(counts.length, 20);
      counts.forEach((r, round) =>
        assert.deepEqual([r.rows[0].n, r.rows[0].tenant, r.rows[0].round], [GLOBEX_INVOICES, env.tenantB, round]),
      );
      const echoes = values.filter((r) => r.rows[0]?.echo !== undefined).map((r) => r.rows[0].echo);
      assert.deepEqual(echoes, Array.from({ length: 20 }, (_, round) => `r${round}`));
      assert.equal(settled.at(-2).value.rows[0].n, 1, 'the UPDATE inside the pipelined transaction');
      const { rows } = await client.query("SELECT count(*)::int AS n FROM invoices WHERE status = 'void'");
      assert.equal(rows[0].n, 0, 'the pipelined ROLLBACK did not undo the UPDATE');
    } finally {
      await endAll(client);
    }
  });

  await check('pg: explicit transactions commit, roll back, and recover from an aborted transaction', async () => {
    const [acme, globex] = [await pgClient(env.tokenA), await pgClient(env.tokenB)];
    try {
      await acme.query('BEGIN');
      await acme.query("UPDATE invoices SET status = 'void'");
      const inside = await acme.query("SELECT count(*)::int AS n FROM invoices WHERE status = 'void'");
      assert.equal(inside.rows[0].n, ACME_INVOICES);
      await acme.query('ROLLBACK');
      const afterRollback = await acme.query("SELECT count(*)::int AS n FROM invoices WHERE status = 'void'");
      assert.equal(afterRollback.rows[0].n, 0, 'ROLLBACK did not undo the UPDATE');

      await acme.query('BEGIN');
      const inserted = await acme.query(
        `INSERT INTO invoices (tenant_id, amount, status) VALUES (current_setting('${TENANT_SETTING}')::uuid, $1, 'node-pg') RETURNING id`,
        [42],
      );
      await acme.query('COMMIT');
      const acmeCount = await acme.query('SELECT count(*)::int AS n FROM invoices');
      assert.equal(acmeCount.rows[0].n, ACME_INVOICES + 1, 'the committed INSERT is missing');
      const globexCount = await globex.query("SELECT count(*)::int AS n FROM invoices WHERE status = 'node-pg'");
      assert.equal(globexCount.rows[0].n, 0, "Globex sees Acme's new invoice");
      await acme.query('DELETE FROM invoices WHERE id = $1', [inserted.rows[0].id]);

      await acme.query('BEGIN');
      await rejectsWithCode(acme.query('SELECT 1 / 0'), '22012');
      await rejectsWithCode(acme.query('SELECT 1'), '25P02');
      await acme.query('ROLLBACK');
      const recovered = await acme.query(WHO_AM_I);
      assert.equal(recovered.rows[0].tenant, env.tenantA);

      await acme.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const level = await acme.query("SELECT current_setting('transaction_isolation') AS level, count(*)::int AS n FROM invoices");
      await acme.query('COMMIT');
      assert.deepEqual(level.rows[0], { level: 'repeatable read', n: ACME_INVOICES });
    } finally {
      await endAll(acme, globex);
    }
  });

  await check('pg: transactions raise exactly the notices PostgreSQL raises for the client', async () => {
    const client = await pgClient(env.tokenA);
    const notices = [];
    client.on('notice', (notice) => notices.push(`${notice.severity}: ${notice.message}`));
    try {
      for (const begin of ['BEGIN', 'START TRANSACTION', 'BEGIN ISOLATION LEVEL SERIALIZABLE', 'BEGIN READ ONLY']) {
        await client.query(begin);
        const { rows } = await client.query('SELECT count(*)::int AS n FROM invoices');
        assert.equal(rows[0].n, ACME_INVOICES, begin);
        await client.query('COMMIT');
      }
      await client.query('BEGIN; SELECT 1; COMMIT');
      await client.query({ name: 'notice_free', text: 'SELECT $1::int AS v', values: [1] });
      assert.deepEqual(notices, [], 'notices the client did not cause');
      // The positive control: a notice the client did cause arrives.
      await client.query('ROLLBACK');
      assert.deepEqual(notices, ['WARNING: there is no transaction in progress']);
    } finally {
      await endAll(client);
    }
  });

  await check('pg: COPY FROM STDIN (text, CSV, binary, 20000 rows) runs with the tenant in force', async () => {
    const client = await pgClient(env.tokenA);
    try {
      await pipeline(
        Readable.from(['1\tpg-text-a\n', '2\tpg-text-b\n']),
        client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN')),
      );
      await pipeline(
        Readable.from(['n,label\n3,"pg-csv, quoted"\n']),
        client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN (FORMAT csv, HEADER true)')),
      );
      const rows = await sinkRows(client, 'pg-');
      assert.deepEqual(rows, [
        { tenant: env.tenantA, n: 1, label: 'pg-text-a' },
        { tenant: env.tenantA, n: 2, label: 'pg-text-b' },
        { tenant: env.tenantA, n: 3, label: 'pg-csv, quoted' },
      ]);

      const binary = await collect(
        client.query(copyTo("COPY (SELECT n, label || '-bin' FROM node_copy_sink WHERE label LIKE 'pg-%') TO STDOUT (FORMAT binary)")),
      );
      assert.equal(binary.subarray(0, 11).toString('latin1'), 'PGCOPY\n\xff\r\n\0');
      await pipeline(Readable.from([binary]), client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN (FORMAT binary)')));
      assert.equal((await sinkRows(client, 'pg-text-a-bin')).length, 1);

      function* bulk() {
        for (let start = 0; start < 20000; start += 1000) {
          let chunk = '';
          for (let n = start; n < start + 1000; n += 1) chunk += `${n}\tpgbulk-${n}\n`;
          yield chunk;
        }
      }
      await pipeline(Readable.from(bulk()), client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN')));
      const { rows: bulkRows } = await client.query(
        "SELECT count(*)::int AS n, count(DISTINCT tenant_id)::int AS tenants, min(tenant_id::text) AS tenant FROM node_copy_sink WHERE label LIKE 'pgbulk-%'",
      );
      assert.deepEqual(bulkRows[0], { n: 20000, tenants: 1, tenant: env.tenantA });
    } finally {
      await endAll(client);
    }
  });

  await check('pg: COPY FROM STDIN errors (bad row, CopyFail, RLS table) leave the client usable', async () => {
    const client = await pgClient(env.tokenA);
    try {
      await rejectsWithCode(
        pipeline(Readable.from(['1\tpg-bad-ok\n', 'x\tpg-bad-row\n']), client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN'))),
        '22P02',
      );
      const stream = client.query(copyFrom('COPY node_copy_sink (n, label) FROM STDIN'));
      const failed = new Promise((resolve) => stream.on('error', resolve));
      stream.write('1\tpg-copyfail\n');
      stream.destroy(new Error('client gave up'));
      const copyFailError = await failed;
      // pg-copy-streams reports its own error to the stream; PostgreSQL's reply to CopyFail
      // (57014 "COPY from stdin failed") arrives on the connection before the next query runs.
      assert.ok(copyFailError);
      const { rows } = await client.query("SELECT count(*)::int AS n FROM node_copy_sink WHERE label IN ('pg-bad-ok', 'pg-copyfail')");
      assert.equal(rows[0].n, 0, 'rows of a failed COPY were kept');
      await rejectsWithCode(
        pipeline(Readable.from(['1\t2\n']), client.query(copyFrom('COPY invoices (amount, status) FROM STDIN'))),
        '0A000',
        /row-level security/,
      );
      const who = await client.query(WHO_AM_I);
      assert.equal(who.rows[0].tenant, env.tenantA);
    } finally {
      await endAll(client);
    }
  });

  await check('pg: COPY TO STDOUT (table with RLS, query, CSV) returns only the own rows', async () => {
    const [acme, globex] = [await pgClient(env.tokenA), await pgClient(env.tokenB)];
    try {
      const table = (await collect(acme.query(copyTo('COPY invoices (tenant_id, amount) TO STDOUT')))).toString();
      const lines = table.trim().split('\n').sort();
      assert.deepEqual(lines, [`${env.tenantA}\t500.00`, `${env.tenantA}\t500.00`, `${env.tenantA}\t750.00`]);
      const csv = (
        await collect(globex.query(copyTo('COPY (SELECT amount, status FROM invoices ORDER BY amount) TO STDOUT (FORMAT csv, HEADER true)')))
      ).toString();
      assert.equal(csv, 'amount,status\n4900.00,paid\n5000.00,sent\n');
    } finally {
      await endAll(acme, globex);
    }
  });

  await check('pg: Client#cancel (CancelRequest) stops pg_sleep(10) with 57014 and the client stays usable', async () => {
    const direct = await directClient();
    const [victim, bystander] = [await pgClient(env.tokenA), await pgClient(env.tokenB)];
    try {
      const marker = 'node_pg_cancel_marker';
      const sleeping = new pg.Query(`SELECT pg_sleep(10) AS ${marker}`);
      const outcome = new Promise((resolve) => {
        sleeping.on('error', (error) => resolve(error));
        sleeping.on('end', () => resolve(null));
      });
      victim.query(sleeping);
      const bystanderSleep = bystander.query('SELECT pg_sleep(0.5) AS bystander, current_setting($1) AS tenant', [
        TENANT_SETTING,
      ]);
      // Awaited below; should an assertion fail first, its rejection must not crash the suite.
      bystanderSleep.catch(() => {});
      await waitFor('pg_sleep(10) to run on a server', async () => (await activeStatementsWith(direct, marker)) === 1);
      const cancelledAt = Date.now();
      new pg.Client(pgConfig(env.tokenA)).cancel(victim, sleeping);
      const error = await outcome;
      assert.ok(error, 'pg_sleep(10) was not cancelled');
      assert.equal(error.code, '57014', error.message);
      assert.match(error.message, /user request/);
      assert.ok(Date.now() - cancelledAt < 5000, `the cancel took ${Date.now() - cancelledAt} ms`);
      // PostgreSQL marks the backend idle just after sending the error: poll briefly (far less
      // than the 10 s pg_sleep would still run) instead of racing it.
      await waitFor('the cancelled pg_sleep(10) to stop on its server', async () => (await activeStatementsWith(direct, marker)) === 0, 40);
      const other = await bystanderSleep;
      assert.equal(other.rows[0].tenant, env.tenantB, "the cancel hit another client's query");
      const who = await victim.query(WHO_AM_I);
      assert.equal(who.rows[0].tenant, env.tenantA);
    } finally {
      await endAll(victim, bystander, direct);
    }
  });

  await check('pg: session SET persists on the connection across servers and never reaches others', async () => {
    const baselineClient = await pgClient(env.tokenA);
    const client = await pgClient(env.tokenA);
    const others = [];
    const settings =
      "SELECT current_setting('statement_timeout') AS st, current_setting('search_path') AS sp, " +
      `current_setting('application_name') AS an, current_setting('${TENANT_SETTING}') AS tenant, pg_backend_pid() AS pid`;
    try {
      const baseline = (await baselineClient.query(settings)).rows[0];
      await client.query("SET statement_timeout = '4321ms'");
      await client.query('SET search_path = pg_catalog, public');
      await client.query("SELECT set_config('application_name', 'node-pg-session', false)");
      const expected = { st: '4321ms', sp: 'pg_catalog, public', an: 'node-pg-session', tenant: env.tenantA };
      const strip = ({ pid, ...rest }) => rest;
      // Busy neighbours keep both servers changing hands between the client's transactions.
      for (let i = 0; i < 4; i += 1) others.push(await pgClient(i % 2 ? env.tokenA : env.tokenB));
      const churn = Promise.all(
        others.map(async (other) => {
          for (let round = 0; round < 10; round += 1) {
            const row = (await other.query(settings)).rows[0];
            assert.deepEqual([row.st, row.sp, row.an], [baseline.st, baseline.sp, baseline.an], 'session state leaked');
          }
        }),
      );
      let lastPid = null;
      for (let round = 0; round < 10; round += 1) {
        if (round % 2) await client.query('BEGIN');
        const row = (await client.query(settings)).rows[0];
        if (round % 2) await client.query('COMMIT');
        assert.deepEqual(strip(row), expected, `round ${round}`);
        lastPid = row.pid;
      }
      await churn;
      const { result: moved } = await onAnotherServer(lastPid, async () => (await client.query(settings)).rows[0]);
      assert.notEqual(moved.pid, lastPid);
      assert.deepEqual(strip(moved), expected, 'the session settings did not follow to another server');

      await client.query('BEGIN');
      await client.query("SET statement_timeout = '9999ms'");
      await client.query('ROLLBACK');
      await client.query('BEGIN');
      await client.query("SET LOCAL statement_timeout = '7777ms'");
      assert.equal((await client.query(settings)).rows[0].st, '7777ms');
      await client.query('COMMIT');
      assert.equal((await client.query(settings)).rows[0].st, '4321ms', 'a rolled-back SET or a SET LOCAL stuck');

      await client.query("SET statement_timeout = '100ms'");
      await rejectsWithCode(client.query('SELECT pg_sleep(5)'), '57014', /statement timeout/);
      await client.query('RESET statement_timeout');
      await client.query('RESET ALL');
      const reset = (await client.query(settings)).rows[0];
      assert.deepEqual([reset.st, reset.sp], [baseline.st, baseline.sp]);

      const fresh = (await baselineClient.query(settings)).rows[0];
      assert.deepEqual(strip(fresh), strip(baseline), "another connection saw this connection's SET");
    } finally {
      await endAll(baselineClient, client, ...others);
    }
  });
}
