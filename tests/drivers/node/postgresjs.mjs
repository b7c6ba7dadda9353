// postgres.js (`postgres`) through pgtenant, in its own idiom: tagged-template queries, which it
// runs as named prepared statements by default and pipelines on a connection (describing a
// statement with unknown parameter types first, with Parse/Describe/Flush and no Sync),
// `sql.begin`/`sql.savepoint`, `sql.unsafe`, `.cursor(n)` (Execute with a row limit,
// PortalSuspended), COPY through `.writable()`/`.readable()`, and `query.cancel()`, which
// opens a new connection and sends a protocol CancelRequest with the key the proxy gave.

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import postgres from 'postgres';

import {
  ACME_INVOICES,
  GLOBEX_INVOICES,
  TENANT_SETTING,
  activeStatementsWith,
  check,
  directClient,
  env,
  onAnotherServer,
  rejectsWithCode,
  waitFor,
} from './harness.mjs';

/** A postgres.js instance connected to the proxy with `token` as the password. */
function connect(token, options = {}) {
  return postgres({
    host: env.host,
    port: env.port,
    database: env.database,
    username: env.user,
    password: token,
    max: 1,
    connect_timeout: 10,
    onnotice: () => {},
    ...options,
  });
}

async function endAll(...instances) {
  await Promise.all(instances.filter(Boolean).map((sql) => sql.end({ timeout: 1 }).catch(() => {})));
}

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** The tenant, the invoice count and the server of the current statement. */
function whoAmI(sql, round = 0) {
  return sql`
    SELECT count(*)::int AS n, current_setting(${TENANT_SETTING}) AS tenant,
           pg_backend_pid() AS pid, ${round}::int AS round
    FROM invoices`;
}

export async function postgresJsChecks() {
  await check('postgres.js: prepared tagged-template queries see only the own tenant', async () => {
    const [acme, globex] = [connect(env.tokenA), connect(env.tokenB)];
    try {
      for (const [sql, tenant, invoices, slug] of [
        [acme, env.tenantA, ACME_INVOICES, 'acme'],
        [globex, env.tenantB, GLOBEX_INVOICES, 'globex'],
      ]) {
        const [row] = await whoAmI(sql);
        assert.deepEqual([row.n, row.tenant], [invoices, tenant]);
        assert.deepEqual([...(await sql`SELECT slug FROM tenants`)], [{ slug }]);
        const [foreign] = await sql`SELECT count(*)::int AS n FROM invoices WHERE tenant_id <> ${tenant}::uuid`;
        assert.equal(foreign.n, 0, 'rows of another tenant are visible');
        const [startup] = await sql`SELECT current_setting('application_name') AS an`;
        assert.equal(startup.an, 'postgres.js', 'the startup application_name is not in force');
      }
    } finally {
      await endAll(acme, globex);
    }
  });

  await check('postgres.js: 400 concurrent pipelined queries on 4 connections and a pool of 2', async () => {
    const instances = [connect(env.tokenA, { max: 2 }), connect(env.tokenB, { max: 2 })];
    try {
      const pids = new Set();
      const work = [];
      for (let round = 0; round < 100; round += 1) {
        for (const [sql, tenant, invoices] of [
          [instances[0], env.tenantA, ACME_INVOICES],
          [instances[1], env.tenantB, GLOBEX_INVOICES],
        ]) {
          work.push(
            whoAmI(sql, round).then(([row]) => {
              pids.add(row.pid);
              assert.deepEqual([row.n, row.tenant, row.round], [invoices, tenant, round]);
            }),
          );
          work.push(
            sql`SELECT ${`text ${round}`}::text AS echo, ${round * 2}::int AS twice`.then(([row]) =>
              assert.deepEqual(row, { echo: `text ${round}`, twice: round * 2 }),
            ),
          );
        }
      }
      await Promise.all(work);
      assert.ok(pids.size >= 2, `every query ran on one server (${[...pids]})`);
    } finally {
      await endAll(...instances);
    }
  });

  await check('postgres.js: an error in a pipeline fails only its own query', async () => {
    const sql = connect(env.tokenA);
    try {
      const pending = [];
      for (let round = 0; round < 30; round += 1) {
        pending.push(whoAmI(sql, round));
        if (round === 10) pending.push(sql`SELECT 1 / ${0}::int AS boom`);
      }
      const settled = await Promise.allSettled(pending);
      const failed = settled.filter((outcome) => outcome.status === 'rejected');
      assert.equal(failed.length, 1, `failures: ${failed.map((f) => f.reason.message)}`);
      assert.equal(failed[0].reason.code, '22012');
      const rounds = settled.filter((o) => o.status === 'fulfilled').map((o) => o.value[0]);
      rounds.forEach((row, round) =>
        assert.deepEqual([row.n, row.tenant, row.round], [ACME_INVOICES, env.tenantA, round]),
      );
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: a statement prepared on one server executes on another', async () => {
    const sql = connect(env.tokenA);
    try {
      const [first] = await whoAmI(sql, 1);
      // postgres.js now only binds its named statement: the proxy must prepare it there.
      const { result: moved } = await onAnotherServer(first.pid, async () => (await whoAmI(sql, 2))[0]);
      assert.notEqual(moved.pid, first.pid, 'the statement did not move to another server');
      assert.deepEqual([moved.n, moved.tenant, moved.round], [ACME_INVOICES, env.tenantA, 2]);
      const { result: inTransaction } = await onAnotherServer(moved.pid, () =>
        sql.begin(async (tx) => (await whoAmI(tx, 3))[0]),
      );
      assert.notEqual(inTransaction.pid, moved.pid);
      assert.deepEqual([inTransaction.n, inTransaction.tenant], [ACME_INVOICES, env.tenantA]);
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: sql.begin commits, rolls back on a throw, savepoints, isolation level', async () => {
    const [acme, globex] = [connect(env.tokenA), connect(env.tokenB)];
    try {
      const insertedIds = await acme.begin(async (tx) => {
        const [who] = await whoAmI(tx);
        assert.equal(who.tenant, env.tenantA);
        const rows = await tx`
          INSERT INTO invoices (tenant_id, amount, status)
          VALUES (${env.tenantA}, 1, 'postgres.js'), (${env.tenantA}, 2, 'postgres.js')
          RETURNING id`;
        return rows.map((row) => row.id);
      });
      const [afterCommit] = await acme`SELECT count(*)::int AS n FROM invoices`;
      assert.equal(afterCommit.n, ACME_INVOICES + 2, 'the committed INSERT is missing');
      const [seenByGlobex] = await globex`SELECT count(*)::int AS n FROM invoices WHERE status = 'postgres.js'`;
      assert.equal(seenByGlobex.n, 0, "Globex sees Acme's new invoices");

      await assert.rejects(
        acme.begin(async (tx) => {
          await tx`UPDATE invoices SET status = 'void'`;
          throw new Error('roll it back');
        }),
        /roll it back/,
      );
      const [voided] = await acme`SELECT count(*)::int AS n FROM invoices WHERE status = 'void'`;
      assert.equal(voided.n, 0, 'the thrown transaction was not rolled back');

      const kept = await acme.begin(async (tx) => {
        await tx`DELETE FROM invoices WHERE id = ${insertedIds[0]}`;
        await tx
          .savepoint(async (sp) => {
            await sp`DELETE FROM invoices WHERE id = ${insertedIds[1]}`;
            throw new Error('undo the savepoint');
          })
          .catch(() => {});
        return (await tx`SELECT count(*)::int AS n FROM invoices WHERE status = 'postgres.js'`)[0].n;
      });
      assert.equal(kept, 1, 'ROLLBACK TO SAVEPOINT did not undo the second DELETE');
      await acme`DELETE FROM invoices WHERE id = ${insertedIds[1]}`;

      const level = await acme.begin('isolation level serializable', async (tx) => {
        const [row] = await tx`SELECT current_setting('transaction_isolation') AS level, current_setting(${TENANT_SETTING}) AS tenant`;
        return row;
      });
      assert.deepEqual(level, { level: 'serializable', tenant: env.tenantA });

      await rejectsWithCode(
        acme.begin(async (tx) => {
          await tx`INSERT INTO invoices (tenant_id, amount) VALUES (${env.tenantB}, 1)`;
        }),
        '42501',
      );
      const [finalCount] = await acme`SELECT count(*)::int AS n FROM invoices`;
      assert.equal(finalCount.n, ACME_INVOICES);
    } finally {
      await endAll(acme, globex);
    }
  });

  await check('postgres.js: sql.unsafe (multi-statement simple query, parameters, prepare: true)', async () => {
    const sql = connect(env.tokenB);
    try {
      const results = await sql.unsafe(
        `SELECT current_setting('${TENANT_SETTING}') AS tenant; SELECT count(*)::int AS n FROM invoices`,
      );
      assert.equal(results.length, 2);
      assert.equal(results[0][0].tenant, env.tenantB);
      assert.equal(results[1][0].n, GLOBEX_INVOICES);
      const [withParams] = await sql.unsafe('SELECT $1::int + 1 AS x, current_setting($2) AS tenant', [41, TENANT_SETTING]);
      assert.deepEqual(withParams, { x: 42, tenant: env.tenantB });
      for (let round = 0; round < 5; round += 1) {
        const [prepared] = await sql.unsafe('SELECT count(*)::int AS n FROM invoices WHERE amount > $1', [round], {
          prepare: true,
        });
        assert.equal(prepared.n, GLOBEX_INVOICES);
      }
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: .cursor(3) fetches in batches (Execute with a row limit)', async () => {
    const sql = connect(env.tokenA);
    try {
      const batches = [];
      for await (const rows of sql`
        SELECT n, current_setting(${TENANT_SETTING}) AS tenant FROM generate_series(1, 10) AS n`.cursor(3)) {
        batches.push(rows.map((row) => row.n));
        rows.forEach((row) => assert.equal(row.tenant, env.tenantA));
      }
      assert.deepEqual(batches, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]);
      const [after] = await whoAmI(sql);
      assert.equal(after.n, ACME_INVOICES);
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: COPY FROM STDIN via .writable() runs with the tenant in force', async () => {
    const sql = connect(env.tokenB);
    try {
      const writable = await sql`COPY node_copy_sink (n, label) FROM STDIN`.writable();
      await pipeline(Readable.from(['1\tpgjs-a\n', '2\tpgjs-b\n']), writable);
      const csv = await sql`COPY node_copy_sink (n, label) FROM STDIN (FORMAT csv)`.writable();
      await pipeline(Readable.from(['3,"pgjs-c, quoted"\n']), csv);
      const rows = await sql`
        SELECT tenant_id::text AS tenant, n, label FROM node_copy_sink WHERE label LIKE 'pgjs-%' ORDER BY n`;
      assert.deepEqual([...rows], [
        { tenant: env.tenantB, n: 1, label: 'pgjs-a' },
        { tenant: env.tenantB, n: 2, label: 'pgjs-b' },
        { tenant: env.tenantB, n: 3, label: 'pgjs-c, quoted' },
      ]);
      // No rejected COPY here: postgres.js 3.4 never settles the writable of a COPY the
      // server rejects (its `final` waits for a CommandComplete that never comes; the same
      // against PostgreSQL directly). The pg checks cover COPY errors.
      const [who] = await whoAmI(sql);
      assert.equal(who.tenant, env.tenantB, 'the connection is unusable after a failed COPY');
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: COPY TO STDOUT via .readable() returns only the own rows', async () => {
    const sql = connect(env.tokenA);
    try {
      const readable = await sql`COPY invoices (tenant_id, amount) TO STDOUT`.readable();
      const lines = (await collect(readable)).toString().trim().split('\n').sort();
      assert.deepEqual(lines, [`${env.tenantA}\t500.00`, `${env.tenantA}\t500.00`, `${env.tenantA}\t750.00`]);
      const csv = await sql`COPY (SELECT amount FROM invoices ORDER BY amount DESC) TO STDOUT (FORMAT csv)`.readable();
      assert.equal((await collect(csv)).toString(), '750.00\n500.00\n500.00\n');
    } finally {
      await endAll(sql);
    }
  });

  await check('postgres.js: query.cancel() (CancelRequest) stops pg_sleep(10) with 57014', async () => {
    const direct = await directClient();
    const [sql, bystander] = [connect(env.tokenA), connect(env.tokenB)];
    try {
      const marker = 'pgjs_cancel_marker';
      const sleeping = sql.unsafe(`SELECT pg_sleep(10) AS ${marker}`);
      const outcome = sleeping.then(
        () => null,
        (error) => error,
      );
      const bystanderSleep = bystander`SELECT pg_sleep(0.5) AS bystander, current_setting(${TENANT_SETTING}) AS tenant`;
      await waitFor('pg_sleep(10) to run on a server', async () => (await activeStatementsWith(direct, marker)) === 1);
      const cancelledAt = Date.now();
      await sleeping.cancel();
      const error = await outcome;
      assert.ok(error, 'pg_sleep(10) was not cancelled');
      assert.equal(error.code, '57014', error.message);
      assert.ok(Date.now() - cancelledAt < 5000, `the cancel took ${Date.now() - cancelledAt} ms`);
      // postgres.js rejects a query it has not sent yet by itself; the server must have stopped.
      // PostgreSQL marks the backend idle just after sending the error: poll briefly (far less
      // than the 10 s pg_sleep would still run) instead of racing it.
      await waitFor('the cancelled pg_sleep(10) to stop on its server', async () => (await activeStatementsWith(direct, marker)) === 0, 40);
      const [other] = await bystanderSleep;
      assert.equal(other.tenant, env.tenantB, "the cancel hit another client's query");
      const [who] = await whoAmI(sql);
      assert.equal(who.tenant, env.tenantA);
    } finally {
      await endAll(sql, bystander);
      await direct.end();
    }
  });

  await check('postgres.js: session SET persists on the connection across servers and never reaches others', async () => {
    const [sql, other] = [connect(env.tokenA), connect(env.tokenA)];
    const settings = (db) => db`
      SELECT current_setting('statement_timeout') AS st, current_setting('search_path') AS sp,
             current_setting(${TENANT_SETTING}) AS tenant, pg_backend_pid() AS pid`;
    try {
      const [baseline] = await settings(other);
      await sql.unsafe("SET statement_timeout = '2345ms'");
      await sql`SET search_path = pg_catalog, public`;
      let lastPid = null;
      for (let round = 0; round < 6; round += 1) {
        const [row] = round % 2 ? await sql.begin((tx) => settings(tx)) : await settings(sql);
        assert.deepEqual([row.st, row.sp, row.tenant], ['2345ms', 'pg_catalog, public', env.tenantA], `round ${round}`);
        const [seen] = await settings(other);
        assert.deepEqual([seen.st, seen.sp], [baseline.st, baseline.sp], 'session state leaked to another connection');
        lastPid = row.pid;
      }
      const { result: moved } = await onAnotherServer(lastPid, async () => (await settings(sql))[0]);
      assert.notEqual(moved.pid, lastPid);
      assert.deepEqual([moved.st, moved.sp], ['2345ms', 'pg_catalog, public'], 'the settings did not follow');
      await sql.unsafe('RESET ALL');
      const [reset] = await settings(sql);
      assert.deepEqual([reset.st, reset.sp], [baseline.st, baseline.sp]);
    } finally {
      await endAll(sql, other);
    }
  });
}
