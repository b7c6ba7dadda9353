// Entry point of the Node.js driver suite (issue 4 item 6), run by tests/driver_node.rs
// against PostgreSQL behind pgtenant: node-postgres checks, then postgres.js checks, one at a
// time (several checks hold every pooled server on purpose). Prints `N passed, M failed` and
// exits non-zero when any check failed.

import { directClient, finish } from './harness.mjs';
import { nodePostgresChecks } from './node_pg.mjs';
import { postgresJsChecks } from './postgresjs.mjs';

/**
 * The COPY FROM target. PostgreSQL refuses COPY FROM into a table with row-level security, so
 * this table has none; its tenant_id defaults to the transaction's tenant setting, which makes
 * every copied row record the tenant that was in force during the COPY.
 */
async function createCopySink() {
  const direct = await directClient();
  try {
    await direct.query(`
      DROP TABLE IF EXISTS node_copy_sink;
      CREATE TABLE node_copy_sink (
          tenant_id UUID NOT NULL DEFAULT current_setting('app.current_tenant_id')::uuid,
          n         INT NOT NULL,
          label     TEXT NOT NULL
      );
      GRANT SELECT, INSERT, DELETE ON node_copy_sink TO api_user;`);
  } finally {
    await direct.end();
  }
}

await createCopySink();
await nodePostgresChecks();
await postgresJsChecks();
finish();
