// pgJDBC (Debian's libpostgresql-jdbc-java) through pgtenant, in JDBC's own idiom: autocommit
// and setAutoCommit(false) transactions, PreparedStatements that pgJDBC turns into server-side
// named statements (after prepareThreshold executions; 5 by default, 1 here too) reused across
// transactions, servers and concurrent connections, batches, savepoints, setTransactionIsolation,
// fetch-size cursors, CopyManager, Statement.cancel(), large objects (FunctionCall messages) and
// session settings that follow their connection and no other.
//
// The proxy pools two servers (PGT_POOL_SIZE). Where a check must run on both of them, it holds
// one server with another connection's open transaction, so the next transaction has to use the
// other one (onTwoServers). The Rust side (tests/driver_jdbc.rs) creates the fixtures first:
// jdbc_import, a table without RLS whose tenant_id defaults to the tenant setting (PostgreSQL
// refuses COPY FROM into a table with RLS), and jdbc_marker views in public and jdbc_alt.

import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.fastpath.Fastpath;
import org.postgresql.fastpath.FastpathArg;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;

public final class JdbcSuite {
    static final String CURRENT_TENANT = "SELECT current_setting('app.current_tenant_id')";
    static final String BACKEND_PID = "SELECT pg_backend_pid()";
    // The demo rows (config/demo_data.sql) among the tenant's invoices; checks add 'jdbc-...' ones.
    static final String COUNT_DEMO_ROWS = "SELECT count(*) FROM invoices WHERE status IN ('paid', 'sent', 'draft')";
    // Longer than any check may wait for a cancel to land.
    static final int SLEEP_SECS = 10;
    // A cancelled query must end well before its sleep would have.
    static final long CANCEL_DEADLINE_MILLIS = 5_000;
    // OID of set_config(text, text, boolean) in pg_proc: not a large-object function.
    static final int SET_CONFIG_OID = 2078;

    interface ServerWork {
        /** Runs one transaction and returns the backend pid it ran on. */
        int run() throws Exception;
    }

    // --- helpers ---------------------------------------------------------------------------

    static Connection connect(String token) throws SQLException {
        return Suite.connect(token);
    }

    static Connection connect(String token, String extra) throws SQLException {
        return Suite.connect(token, extra);
    }

    static String scalar(Connection conn, String sql) throws SQLException {
        return Suite.scalar(conn, sql);
    }

    static long scalarLong(Connection conn, String sql) throws SQLException {
        return Suite.scalarLong(conn, sql);
    }

    static void expect(Object actual, Object expected, String what) {
        Suite.expect(actual, expected, what);
    }

    static void expectTrue(boolean condition, String what) {
        Suite.expectTrue(condition, what);
    }

    static int pid(Connection conn) throws SQLException {
        return Integer.parseInt(scalar(conn, BACKEND_PID));
    }

    /** Rows with `status` of `tenant`, counted by the superuser (no RLS). */
    static long directInvoices(String status, String tenant) throws SQLException {
        return Long.parseLong(Suite.directScalar(
                "SELECT count(*) FROM invoices WHERE status = ? AND tenant_id = ?::uuid", status, tenant));
    }

    /** A connection keeping one pooled server busy with an open transaction. */
    static Connection holdServer() throws SQLException {
        Connection holder = connect(Suite.TOKEN_B);
        holder.setAutoCommit(false);
        return holder;
    }

    /**
     * Calls `work` twice, the second time with the first call's server held by another client,
     * so the calls run on different servers. Returns both pids.
     */
    static int[] onTwoServers(ServerWork work) throws Exception {
        expect(Suite.POOL_SIZE, 2, "onTwoServers needs a pool of 2");
        int first;
        int second;
        try (Connection holder1 = holdServer()) {
            int held1 = pid(holder1);
            first = work.run();
            expectTrue(first != held1, "work ran on the held server " + held1);
            try (Connection holder2 = holdServer()) {
                expect(pid(holder2), first, "the second holder's server (the only free one)");
                holder1.rollback();
                second = work.run();
                // Rolled back first: a client vanishing inside a transaction gets its server closed.
                holder2.rollback();
            }
        }
        expectTrue(first != second, "both calls ran on server " + first);
        return new int[] {first, second};
    }

    static void expectNoWarnings(Connection conn, String who) throws SQLException {
        SQLWarning warning = conn.getWarnings();
        expectTrue(warning == null, who + " received a notice: " + warning);
    }

    // --- tenant isolation ------------------------------------------------------------------

    static void checkIsolation() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            expect(scalarLong(acme, "SELECT count(*) FROM invoices"), Suite.INVOICES_A, "Acme's invoices");
            expect(scalarLong(globex, "SELECT count(*) FROM invoices"), Suite.INVOICES_B, "Globex's invoices");
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "Acme's tenant setting");
            expect(scalar(globex, CURRENT_TENANT), Suite.TENANT_B, "Globex's tenant setting");
            try (Statement stmt = acme.createStatement();
                    ResultSet rs = stmt.executeQuery("SELECT DISTINCT tenant_id FROM invoices")) {
                expectTrue(rs.next(), "Acme sees no invoice");
                expect(rs.getObject(1), UUID.fromString(Suite.TENANT_A), "tenant of Acme's invoices");
                expectTrue(!rs.next(), "Acme sees invoices of a second tenant");
            }
            expect(scalarLong(globex, "SELECT count(*) FROM tenants WHERE slug = 'acme'"), 0L,
                    "Acme's tenant row seen by Globex");
            expectNoWarnings(acme, "Acme");
            expectNoWarnings(globex, "Globex");
        }
    }

    static void checkRlsRefusesOtherTenantInsert() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A);
                PreparedStatement insert = acme.prepareStatement(
                        "INSERT INTO invoices (tenant_id, amount, status) VALUES (?, 1, 'jdbc-foreign')")) {
            insert.setObject(1, UUID.fromString(Suite.TENANT_B));
            Suite.expectSqlState("42501", "Acme inserting a Globex invoice", insert::executeUpdate);
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the refusal");
        }
        expect(directInvoices("jdbc-foreign", Suite.TENANT_B), 0L, "Globex rows Acme inserted");
    }

    // --- prepared statements ---------------------------------------------------------------

    /** The default prepareThreshold (5): after five executions pgJDBC uses a named statement. */
    static void checkPreparedDefaultThresholdAcrossTransactionsAndServers() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            try (PreparedStatement stmt = acme.prepareStatement(
                    "SELECT pg_backend_pid(), count(*), current_setting('app.current_tenant_id') "
                            + "FROM invoices WHERE amount >= ? AND status IN ('paid', 'sent', 'draft')")) {
                expect(stmt.unwrap(PGStatement.class).getPrepareThreshold(), 5, "default prepareThreshold");
                ServerWork work = () -> {
                    stmt.setBigDecimal(1, new BigDecimal("600.00"));
                    int pid;
                    try (ResultSet rs = stmt.executeQuery()) {
                        expectTrue(rs.next(), "no row");
                        pid = rs.getInt(1);
                        expect(rs.getLong(2), 1L, "Acme's invoices of at least 600");
                        expect(rs.getString(3), Suite.TENANT_A, "tenant of the prepared statement");
                    }
                    acme.commit();
                    return pid;
                };
                for (int i = 0; i < 12; i++) {
                    work.run();
                }
                expectTrue(stmt.unwrap(PGStatement.class).isUseServerPrepare(),
                        "pgJDBC did not switch to a server-side prepared statement");
                onTwoServers(work);
                onTwoServers(work);
            }
            expectNoWarnings(acme, "Acme");
        }
    }

    /**
     * prepareThreshold=1: every PreparedStatement is a named server-side statement from its
     * first execution. Four connections of two tenants run transactions concurrently on a pool
     * of two servers, each reusing its statements; every result is its own tenant's.
     */
    static void checkPreparedThresholdOneConcurrent() throws Exception {
        int clients = 4;
        int transactions = 30;
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        ConcurrentLinkedQueue<Integer> pids = new ConcurrentLinkedQueue<>();
        try {
            List<Future<?>> futures = new ArrayList<>();
            for (int c = 0; c < clients; c++) {
                boolean isAcme = c % 2 == 0;
                futures.add(pool.submit(() -> {
                    String tenant = isAcme ? Suite.TENANT_A : Suite.TENANT_B;
                    long invoices = isAcme ? Suite.INVOICES_A : Suite.INVOICES_B;
                    try (Connection conn = connect(isAcme ? Suite.TOKEN_A : Suite.TOKEN_B, "prepareThreshold=1")) {
                        conn.setAutoCommit(false);
                        try (PreparedStatement count = conn.prepareStatement(
                                "SELECT count(*), current_setting('app.current_tenant_id') FROM invoices "
                                        + "WHERE amount > ? AND status IN ('paid', 'sent', 'draft')");
                                PreparedStatement users = conn.prepareStatement(
                                        "SELECT count(*), pg_backend_pid() FROM users WHERE email LIKE ?")) {
                            for (int i = 0; i < transactions; i++) {
                                count.setInt(1, 0);
                                try (ResultSet rs = count.executeQuery()) {
                                    expectTrue(rs.next(), "no row");
                                    expect(rs.getLong(1), invoices, "invoices in transaction " + i);
                                    expect(rs.getString(2), tenant, "tenant in transaction " + i);
                                }
                                users.setString(1, "%@%");
                                try (ResultSet rs = users.executeQuery()) {
                                    expectTrue(rs.next(), "no row");
                                    expect(rs.getLong(1), 1L, "users in transaction " + i);
                                    pids.add(rs.getInt(2));
                                }
                                if (i % 3 == 2) {
                                    conn.rollback();
                                } else {
                                    conn.commit();
                                }
                            }
                            expectTrue(count.unwrap(PGStatement.class).isUseServerPrepare(),
                                    "prepareThreshold=1 did not use a server-side statement");
                        }
                        expectNoWarnings(conn, tenant);
                    }
                    return null;
                }));
            }
            for (Future<?> future : futures) {
                future.get(60, TimeUnit.SECONDS);
            }
        } finally {
            pool.shutdownNow();
        }
        System.out.println("    backends used: " + new HashSet<>(pids));
    }

    /** Many distinct statements (more than pgJDBC's and the proxy's caches hold) and reuse. */
    static void checkManyDistinctPreparedStatements() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A, "prepareThreshold=1&preparedStatementCacheQueries=16")) {
            acme.setAutoCommit(false);
            for (int round = 0; round < 3; round++) {
                for (int i = 0; i < 60; i++) {
                    try (PreparedStatement stmt = acme.prepareStatement(
                            "SELECT ?::int + " + i + ", current_setting('app.current_tenant_id')")) {
                        stmt.setInt(1, round);
                        try (ResultSet rs = stmt.executeQuery()) {
                            expectTrue(rs.next(), "no row");
                            expect(rs.getInt(1), round + i, "statement " + i + " of round " + round);
                            expect(rs.getString(2), Suite.TENANT_A, "tenant of statement " + i);
                        }
                    }
                    if (i % 7 == 0) {
                        acme.commit();
                    }
                }
                acme.commit();
            }
        }
    }

    // --- batches ---------------------------------------------------------------------------

    static void checkBatchInserts() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            acme.setAutoCommit(false);
            try (PreparedStatement insert = acme.prepareStatement(
                    "INSERT INTO invoices (tenant_id, amount, status) VALUES (?, ?, 'jdbc-batch')")) {
                for (int i = 0; i < 50; i++) {
                    insert.setObject(1, UUID.fromString(Suite.TENANT_A));
                    insert.setBigDecimal(2, BigDecimal.valueOf(i + 1));
                    insert.addBatch();
                }
                int[] counts = insert.executeBatch();
                expect(counts.length, 50, "update counts of the batch");
                for (int count : counts) {
                    expect(count, 1, "rows of one batch entry");
                }
                expect(scalarLong(acme, "SELECT count(*) FROM invoices WHERE status = 'jdbc-batch'"), 50L,
                        "batch rows inside the transaction");
                acme.commit();
            }
            expect(directInvoices("jdbc-batch", Suite.TENANT_A), 50L, "committed batch rows of Acme");
            expect(Suite.directScalar("SELECT count(*) FROM invoices WHERE status = 'jdbc-batch'"), "50",
                    "batch rows of any tenant");
            expect(scalarLong(globex, "SELECT count(*) FROM invoices WHERE status = 'jdbc-batch'"), 0L,
                    "Acme's batch rows seen by Globex");

            // Autocommit: the whole batch is one implicit transaction, so a row RLS refuses
            // (another tenant's) undoes the rows before it.
            acme.setAutoCommit(true);
            try (PreparedStatement insert = acme.prepareStatement(
                    "INSERT INTO invoices (tenant_id, amount, status) VALUES (?, 1, 'jdbc-batch-bad')")) {
                for (String tenant : new String[] {Suite.TENANT_A, Suite.TENANT_A, Suite.TENANT_B, Suite.TENANT_A}) {
                    insert.setObject(1, UUID.fromString(tenant));
                    insert.addBatch();
                }
                try {
                    insert.executeBatch();
                    throw new AssertionError("a batch with another tenant's row succeeded");
                } catch (BatchUpdateException err) {
                    SQLException cause = err.getNextException();
                    String state = cause != null ? cause.getSQLState() : err.getSQLState();
                    expect(state, "42501", "SQLSTATE of the refused batch row (" + err.getMessage() + ")");
                }
            }
            expect(Suite.directScalar("SELECT count(*) FROM invoices WHERE status = 'jdbc-batch-bad'"), "0",
                    "rows of the refused batch");
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the refused batch");

            // A batch of plain statements (Statement.addBatch) in autocommit.
            try (Statement stmt = acme.createStatement()) {
                for (int i = 0; i < 5; i++) {
                    stmt.addBatch("INSERT INTO invoices (tenant_id, amount, status) VALUES ('" + Suite.TENANT_A
                            + "', " + (i + 1) + ", 'jdbc-batch-plain')");
                }
                expect(Arrays.stream(stmt.executeBatch()).sum(), 5, "rows of the plain batch");
            }
            expect(directInvoices("jdbc-batch-plain", Suite.TENANT_A), 5L, "rows of the plain batch");
        }
    }

    // --- transactions ----------------------------------------------------------------------

    static void checkTransactionRollbackAndSavepoints() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            try (PreparedStatement insert = acme.prepareStatement(
                    "INSERT INTO invoices (tenant_id, amount, status) VALUES (?, 1, ?)")) {
                insert.setObject(1, UUID.fromString(Suite.TENANT_A));
                insert.setString(2, "jdbc-rollback");
                insert.executeUpdate();
                expect(scalarLong(acme, "SELECT count(*) FROM invoices WHERE status = 'jdbc-rollback'"), 1L,
                        "own insert inside the transaction");
                acme.rollback();
                expect(scalarLong(acme, "SELECT count(*) FROM invoices WHERE status = 'jdbc-rollback'"), 0L,
                        "rolled-back insert");
                acme.commit();

                insert.setString(2, "jdbc-sp-1");
                insert.executeUpdate();
                Savepoint savepoint = acme.setSavepoint("before_two");
                insert.setString(2, "jdbc-sp-2");
                insert.executeUpdate();
                acme.rollback(savepoint);
                insert.setString(2, "jdbc-sp-3");
                insert.executeUpdate();
                Savepoint unnamed = acme.setSavepoint();
                Suite.expectSqlState("22012", "division by zero", () -> scalar(acme, "SELECT 1/0"));
                acme.rollback(unnamed);
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after ROLLBACK TO SAVEPOINT");
                acme.commit();
            }
            expect(directInvoices("jdbc-rollback", Suite.TENANT_A), 0L, "rolled-back rows");
            expect(directInvoices("jdbc-sp-1", Suite.TENANT_A), 1L, "row before the savepoint");
            expect(directInvoices("jdbc-sp-2", Suite.TENANT_A), 0L, "row rolled back to the savepoint");
            expect(directInvoices("jdbc-sp-3", Suite.TENANT_A), 1L, "row after the savepoint");

            // An error aborts the transaction until rollback(); then all is well again.
            Suite.expectSqlState("22012", "division by zero", () -> scalar(acme, "SELECT 1/0"));
            Suite.expectSqlState("25P02", "statement in an aborted transaction", () -> scalar(acme, "SELECT 1"));
            acme.rollback();
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after rollback()");
            expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "invoices after rollback()");
            acme.commit();
        }
    }

    /** autosave=always: pgJDBC wraps each statement in a savepoint, in the same batch. */
    static void checkAutosaveSavepoints() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A, "autosave=always")) {
            acme.setAutoCommit(false);
            try (Statement stmt = acme.createStatement()) {
                stmt.executeUpdate("INSERT INTO invoices (tenant_id, amount, status) VALUES ('" + Suite.TENANT_A
                        + "', 1, 'jdbc-autosave')");
                Suite.expectSqlState("22012", "division by zero", () -> scalar(acme, "SELECT 1/0"));
                // Without autosave this would be 25P02.
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after an autosaved error");
                stmt.executeUpdate("INSERT INTO invoices (tenant_id, amount, status) VALUES ('" + Suite.TENANT_A
                        + "', 2, 'jdbc-autosave')");
            }
            acme.commit();
        }
        expect(directInvoices("jdbc-autosave", Suite.TENANT_A), 2L, "rows around the autosaved error");
    }

    /**
     * setTransactionIsolation(SERIALIZABLE) is a session-level SET SESSION CHARACTERISTICS; every
     * later transaction of the connection is serializable (on either server), and no other.
     */
    static void checkSetTransactionIsolationSerializable() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection other = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            acme.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            expect(acme.getTransactionIsolation(), Connection.TRANSACTION_SERIALIZABLE, "getTransactionIsolation");
            acme.commit();
            ServerWork work = () -> {
                expect(scalar(acme, "SHOW transaction_isolation"), "serializable", "Acme's isolation level");
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant of a serializable transaction");
                expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "invoices in a serializable transaction");
                int pid = pid(acme);
                acme.commit();
                return pid;
            };
            for (int i = 0; i < 3; i++) {
                work.run();
            }
            onTwoServers(work);
            for (int i = 0; i < 4; i++) {
                expect(scalar(other, "SHOW transaction_isolation"), "read committed", "another connection's level");
            }
            acme.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            expect(scalar(acme, "SHOW transaction_isolation"), "read committed", "after READ_COMMITTED");
            acme.commit();
            expectNoWarnings(acme, "Acme");
        }
    }

    /** Two serializable transactions of one tenant that read and write each other's rows. */
    static void checkSerializationFailure() throws Exception {
        try (Connection one = connect(Suite.TOKEN_A); Connection two = connect(Suite.TOKEN_A)) {
            for (Connection conn : new Connection[] {one, two}) {
                conn.setAutoCommit(false);
                conn.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            }
            String sum = "SELECT coalesce(sum(amount), 0) FROM invoices WHERE status = 'jdbc-ssi'";
            String insert = "INSERT INTO invoices (tenant_id, amount, status) VALUES ('" + Suite.TENANT_A
                    + "', 1, 'jdbc-ssi')";
            scalar(one, sum);
            scalar(two, sum);
            try (Statement s1 = one.createStatement(); Statement s2 = two.createStatement()) {
                s1.executeUpdate(insert);
                s2.executeUpdate(insert);
                one.commit();
                Suite.expectSqlState("40001", "the second serializable commit", two::commit);
            }
        }
        expect(directInvoices("jdbc-ssi", Suite.TENANT_A), 1L, "rows of the serializable transactions");
    }

    /** setFetchSize in a transaction: a portal read in chunks (Execute with a row limit). */
    static void checkFetchSizeCursor() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            try (PreparedStatement stmt = acme.prepareStatement(
                    "SELECT n, current_setting('app.current_tenant_id') FROM generate_series(1, ?) AS n")) {
                stmt.setFetchSize(7);
                stmt.setInt(1, 100);
                long total = 0;
                int rows = 0;
                try (ResultSet rs = stmt.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                        total += rs.getInt(1);
                        expect(rs.getString(2), Suite.TENANT_A, "tenant of row " + rows);
                        if (rows == 50) {
                            // Another statement while the portal is open.
                            expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "invoices mid-cursor");
                        }
                    }
                }
                expect(rows, 100, "rows read in chunks of 7");
                expect(total, 5050L, "sum of the rows");
            }
            acme.commit();
        }
    }

    // --- COPY ------------------------------------------------------------------------------

    static long copyIn(Connection conn, String sql, String data) throws Exception {
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        return copy.copyIn(sql, new StringReader(data));
    }

    static String copyOut(Connection conn, String sql) throws Exception {
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        StringWriter out = new StringWriter();
        copy.copyOut(sql, out);
        return out.toString();
    }

    static long importRows(String label, String tenant) throws SQLException {
        return Long.parseLong(Suite.directScalar(
                "SELECT count(*) FROM jdbc_import WHERE label = ? AND tenant_id = ?::uuid", label, tenant));
    }

    static long importRowsAnyTenant(String label) throws SQLException {
        return Long.parseLong(Suite.directScalar("SELECT count(*) FROM jdbc_import WHERE label = ?", label));
    }

    static void checkCopyInOwnTenant() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            StringBuilder rowsA = new StringBuilder();
            for (int i = 0; i < 20_000; i++) {
                rowsA.append(i).append("\tjdbc-copy-a\n");
            }
            expect(copyIn(acme, "COPY jdbc_import (n, label) FROM STDIN", rowsA.toString()), 20_000L,
                    "rows Acme copied in");
            StringBuilder rowsB = new StringBuilder();
            for (int i = 0; i < 500; i++) {
                rowsB.append(i).append(",jdbc-copy-b\n");
            }
            expect(copyIn(globex, "COPY jdbc_import (n, label) FROM STDIN WITH (FORMAT csv)", rowsB.toString()),
                    500L, "rows Globex copied in (CSV)");
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "Acme's tenant after COPY");
            expect(scalar(globex, CURRENT_TENANT), Suite.TENANT_B, "Globex's tenant after COPY");
        }
        expect(importRows("jdbc-copy-a", Suite.TENANT_A), 20_000L, "Acme's copied rows with Acme's tenant");
        expect(importRowsAnyTenant("jdbc-copy-a"), 20_000L, "Acme's copied rows of any tenant");
        expect(importRows("jdbc-copy-b", Suite.TENANT_B), 500L, "Globex's copied rows with Globex's tenant");
        expect(importRowsAnyTenant("jdbc-copy-b"), 500L, "Globex's copied rows of any tenant");
    }

    static void checkCopyInTransactionRolledBack() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant before COPY in the transaction");
            expect(copyIn(acme, "COPY jdbc_import (n, label) FROM STDIN", "1\tjdbc-copy-rb\n2\tjdbc-copy-rb\n"),
                    2L, "rows copied in the transaction");
            acme.rollback();
            expect(copyIn(acme, "COPY jdbc_import (n, label) FROM STDIN", "3\tjdbc-copy-commit\n"), 1L,
                    "rows copied in the next transaction");
            acme.commit();
        }
        expect(importRowsAnyTenant("jdbc-copy-rb"), 0L, "rows of the rolled-back COPY");
        expect(importRows("jdbc-copy-commit", Suite.TENANT_A), 1L, "row of the committed COPY");
    }

    static void checkCopyInIntoRlsTableRefused() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            Suite.expectSqlState("0A000", "COPY FROM into invoices (RLS)",
                    () -> copyIn(acme, "COPY invoices (tenant_id, amount) FROM STDIN", Suite.TENANT_A + "\t1\n"));
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the refused COPY");
        }
    }

    static void checkCopyOutOnlyOwnRows() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            String a = copyOut(acme, "COPY invoices (tenant_id, status) TO STDOUT");
            List<String> linesA = Arrays.asList(a.split("\n"));
            long demoA = linesA.stream().filter(line -> line.matches(".*\t(paid|sent|draft)$")).count();
            expect(demoA, Suite.INVOICES_A, "Acme's demo invoices copied out");
            for (String line : linesA) {
                expectTrue(line.startsWith(Suite.TENANT_A + "\t"), "a row Acme copied out: " + line);
            }
            String b = copyOut(globex, "COPY (SELECT tenant_id, amount FROM invoices ORDER BY amount) TO STDOUT "
                    + "WITH (FORMAT csv, HEADER)");
            List<String> linesB = Arrays.asList(b.split("\n"));
            expect(linesB.get(0), "tenant_id,amount", "CSV header");
            expect(linesB.subList(1, linesB.size()),
                    List.of(Suite.TENANT_B + ",4900.00", Suite.TENANT_B + ",5000.00"), "Globex's invoices as CSV");
            String big = copyOut(acme, "COPY (SELECT n, md5(n::text) FROM generate_series(1, 50000) AS n) TO STDOUT");
            expect(big.split("\n").length, 50_000, "lines of a large COPY TO");
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after COPY TO");
        }
    }

    // --- cancel ----------------------------------------------------------------------------

    /** Runs `query` on `stmt`, cancels it with Statement.cancel() once it runs; 57014. */
    static void cancelRunning(Statement stmt, String marker) throws Exception {
        ExecutorService canceller = Executors.newSingleThreadExecutor();
        try {
            Future<?> cancelled = canceller.submit(() -> {
                Suite.waitForActive(marker);
                stmt.cancel();
                return null;
            });
            long started = System.nanoTime();
            Suite.expectSqlState("57014", "a cancelled pg_sleep",
                    () -> stmt.executeQuery("SELECT '" + marker + "', pg_sleep(" + SLEEP_SECS + ")"));
            long millis = (System.nanoTime() - started) / 1_000_000;
            cancelled.get(30, TimeUnit.SECONDS);
            expectTrue(millis < CANCEL_DEADLINE_MILLIS, "the cancelled query took " + millis + " ms");
        } finally {
            canceller.shutdownNow();
        }
    }

    static void checkCancel() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            try (Statement stmt = acme.createStatement()) {
                cancelRunning(stmt, "jdbc-cancel-autocommit");
            }
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the cancel");
            expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "invoices after the cancel");

            acme.setAutoCommit(false);
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant in the transaction");
            try (Statement stmt = acme.createStatement()) {
                cancelRunning(stmt, "jdbc-cancel-transaction");
            }
            Suite.expectSqlState("25P02", "a statement after the cancel", () -> scalar(acme, "SELECT 1"));
            acme.rollback();
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after rollback()");
            acme.commit();
            // Globex's connection was idle throughout and is unaffected.
            expect(scalar(globex, CURRENT_TENANT), Suite.TENANT_B, "Globex's tenant");
        }
    }

    /** setQueryTimeout: pgJDBC cancels the statement itself when the timeout expires. */
    static void checkQueryTimeout() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A, "prepareThreshold=1");
                PreparedStatement stmt = acme.prepareStatement("SELECT pg_sleep(?)")) {
            stmt.setQueryTimeout(1);
            stmt.setInt(1, SLEEP_SECS);
            long started = System.nanoTime();
            Suite.expectSqlState("57014", "pg_sleep past setQueryTimeout(1)", stmt::executeQuery);
            long millis = (System.nanoTime() - started) / 1_000_000;
            expectTrue(millis < CANCEL_DEADLINE_MILLIS, "the timed-out query took " + millis + " ms");
            stmt.setQueryTimeout(0);
            stmt.setInt(1, 0);
            stmt.executeQuery().close();
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the timeout");
        }
    }

    // --- large objects (FunctionCall messages) ---------------------------------------------

    static void checkLargeObjects() throws Exception {
        byte[] data = new byte[300_000];
        new Random(42).nextBytes(data);
        long oid;
        try (Connection acme = connect(Suite.TOKEN_A)) {
            acme.setAutoCommit(false);
            LargeObjectManager lom = acme.unwrap(PGConnection.class).getLargeObjectAPI();
            oid = lom.createLO(LargeObjectManager.READWRITE);
            try (LargeObject lo = lom.open(oid, LargeObjectManager.WRITE)) {
                lo.write(data, 0, 100_000);
                lo.write(data, 100_000, data.length - 100_000);
                expect(lo.tell64(), (long) data.length, "position after writing");
            }
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant in the large-object transaction");
            acme.commit();

            // A later transaction (possibly another server) reads it back.
            try (LargeObject lo = lom.open(oid, LargeObjectManager.READ)) {
                expect(lo.size64(), (long) data.length, "size of the large object");
                ByteArrayOutputStream read = new ByteArrayOutputStream();
                byte[] chunk;
                while ((chunk = lo.read(65_536)).length > 0) {
                    read.write(chunk);
                }
                expectTrue(Arrays.equals(read.toByteArray(), data), "the large object read back differs");
                lo.seek(1234);
                expect(lo.read(4).length, 4, "bytes read after a seek");
                expectTrue(Arrays.equals(lo.read(3), Arrays.copyOfRange(data, 1238, 1241)), "bytes after a seek");
            }
            acme.commit();

            try (LargeObject lo = lom.open(oid, LargeObjectManager.READWRITE)) {
                lo.truncate(10);
                expect(lo.size(), 10, "size after truncate");
            }
            acme.rollback();
            try (LargeObject lo = lom.open(oid, LargeObjectManager.READ)) {
                expect(lo.size64(), (long) data.length, "size after a rolled-back truncate");
            }
            acme.commit();
            expect(Suite.directScalar("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = ?::oid",
                    Long.toString(oid)), "1", "the large object exists");
            lom.delete(oid);
            acme.commit();
            expect(Suite.directScalar("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = ?::oid",
                    Long.toString(oid)), "0", "the large object was unlinked");
            expectNoWarnings(acme, "Acme");
        }
    }

    /** A FunctionCall of anything but a large-object function (set_config) is refused. */
    @SuppressWarnings("deprecation") // Fastpath is deprecated for applications; it is what sends FunctionCall.
    static void checkFunctionCallOfSetConfigRefused() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A)) {
            Fastpath fastpath = acme.unwrap(PGConnection.class).getFastpathAPI();
            SQLException err = Suite.expectSqlState("42501", "FunctionCall of set_config", () -> fastpath.fastpath(
                    SET_CONFIG_OID,
                    new FastpathArg[] {
                        new FastpathArg("app.current_tenant_id"), new FastpathArg(Suite.TENANT_B),
                        new FastpathArg(new byte[] {0}),
                    }));
            expectTrue(err.getMessage().contains("large-object"), "refusal message: " + err.getMessage());
            expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after the refused FunctionCall");
            expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "Acme's invoices");
        }
    }

    // --- session settings ------------------------------------------------------------------

    static void checkSessionSearchPath() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A);
                Connection other = connect(Suite.TOKEN_A);
                Connection globex = connect(Suite.TOKEN_B)) {
            try (Statement stmt = acme.createStatement()) {
                stmt.execute("SET search_path = jdbc_alt, public");
            }
            acme.setAutoCommit(false);
            ServerWork work = () -> {
                expect(scalar(acme, "SELECT label FROM jdbc_marker"), "alt", "Acme's jdbc_marker");
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after a session SET");
                expect(scalarLong(acme, COUNT_DEMO_ROWS), Suite.INVOICES_A, "invoices after a session SET");
                int pid = pid(acme);
                acme.commit();
                return pid;
            };
            for (int i = 0; i < 3; i++) {
                work.run();
            }
            onTwoServers(work);
            for (Connection conn : new Connection[] {other, globex}) {
                for (int i = 0; i < 4; i++) {
                    expect(scalar(conn, "SELECT label FROM jdbc_marker"), "public", "another connection's marker");
                    expect(scalar(conn, "SHOW search_path"), "\"$user\", public", "another connection's path");
                }
            }
            expect(scalar(acme, "SHOW search_path"), "jdbc_alt, public", "Acme's search_path");
            acme.commit();

            // Connection.setSchema is pgJDBC's session SET of search_path.
            other.setSchema("jdbc_alt");
            for (int i = 0; i < 4; i++) {
                expect(other.getSchema(), "jdbc_alt", "getSchema after setSchema");
                expect(scalar(other, "SELECT label FROM jdbc_marker"), "alt", "marker after setSchema");
                expect(scalar(globex, "SELECT label FROM jdbc_marker"), "public", "Globex's marker");
            }
        }
    }

    static void checkSessionStatementTimeout() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            try (Statement stmt = acme.createStatement()) {
                stmt.execute("SET statement_timeout = '300ms'");
            }
            ServerWork work = () -> {
                acme.setAutoCommit(false);
                expect(scalar(acme, "SHOW statement_timeout"), "300ms", "Acme's statement_timeout");
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after a session SET");
                int pid = pid(acme);
                acme.commit();
                acme.setAutoCommit(true);
                SQLException err = Suite.expectSqlState("57014", "pg_sleep past statement_timeout",
                        () -> scalar(acme, "SELECT pg_sleep(" + SLEEP_SECS + ")"));
                expectTrue(err.getMessage().contains("statement timeout"), "not a timeout: " + err.getMessage());
                return pid;
            };
            work.run();
            onTwoServers(work);
            for (int i = 0; i < 4; i++) {
                expect(scalar(globex, "SHOW statement_timeout"), "0", "Globex's statement_timeout");
            }
            expect(scalar(globex, "SELECT pg_sleep(0.5)::text"), "", "Globex's short sleep");
            try (Connection other = connect(Suite.TOKEN_A)) {
                expect(scalar(other, "SHOW statement_timeout"), "0", "Acme's other connection");
            }
        }
    }

    /** SET in a rolled-back transaction is undone; SET LOCAL ends with its transaction. */
    static void checkSessionSetInTransactions() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A); Connection globex = connect(Suite.TOKEN_B)) {
            String defaultWorkMem = scalar(globex, "SHOW work_mem");
            expectTrue(!defaultWorkMem.equals("6666kB"), "work_mem's default is the test value");
            acme.setAutoCommit(false);
            try (Statement stmt = acme.createStatement()) {
                stmt.execute("SET work_mem = '6666kB'");
                acme.rollback();
                expect(scalar(acme, "SHOW work_mem"), defaultWorkMem, "work_mem after a rolled-back SET");
                acme.commit();
                stmt.execute("SET LOCAL work_mem = '5555kB'");
                expect(scalar(acme, "SHOW work_mem"), "5555kB", "SET LOCAL inside its transaction");
                acme.commit();
                expect(scalar(acme, "SHOW work_mem"), defaultWorkMem, "SET LOCAL after commit");
                acme.commit();
                stmt.execute("SET work_mem = '6666kB'");
                acme.commit();
            }
            for (int i = 0; i < 4; i++) {
                expect(scalar(acme, "SHOW work_mem"), "6666kB", "committed SET in transaction " + i);
                expect(scalar(acme, CURRENT_TENANT), Suite.TENANT_A, "tenant after a session SET");
                acme.commit();
                expect(scalar(globex, "SHOW work_mem"), defaultWorkMem, "Globex's work_mem");
            }
        }
    }

    /** preferQueryMode=simple: pgJDBC inlines the parameters and sends simple Query messages. */
    static void checkSimpleQueryMode() throws Exception {
        try (Connection acme = connect(Suite.TOKEN_A, "preferQueryMode=simple");
                Connection globex = connect(Suite.TOKEN_B, "preferQueryMode=simple")) {
            acme.setAutoCommit(false);
            try (PreparedStatement stmt = acme.prepareStatement(
                    "SELECT count(*), current_setting('app.current_tenant_id') FROM invoices "
                            + "WHERE amount >= ? AND status IN ('paid', 'sent', 'draft')")) {
                for (int i = 0; i < 5; i++) {
                    stmt.setInt(1, 0);
                    try (ResultSet rs = stmt.executeQuery()) {
                        expectTrue(rs.next(), "no row");
                        expect(rs.getLong(1), Suite.INVOICES_A, "Acme's invoices (simple mode)");
                        expect(rs.getString(2), Suite.TENANT_A, "Acme's tenant (simple mode)");
                    }
                    acme.rollback();
                }
            }
            try (Statement stmt = acme.createStatement()) {
                stmt.executeUpdate("INSERT INTO invoices (tenant_id, amount, status) VALUES ('" + Suite.TENANT_A
                        + "', 1, 'jdbc-simple')");
            }
            acme.rollback();
            expect(directInvoices("jdbc-simple", Suite.TENANT_A), 0L, "rolled-back row (simple mode)");
            expect(scalarLong(globex, COUNT_DEMO_ROWS), Suite.INVOICES_B, "Globex (simple mode)");
            expect(scalar(globex, CURRENT_TENANT), Suite.TENANT_B, "Globex's tenant (simple mode)");
        }
    }

    public static void main(String[] args) throws Exception {
        Class.forName("org.postgresql.Driver");
        System.out.println("pgJDBC " + org.postgresql.util.DriverInfo.DRIVER_FULL_NAME + ", Java "
                + System.getProperty("java.version"));
        Suite suite = new Suite("jdbc");
        suite.run("tenant isolation: Acme sees 3 invoices, Globex 2, each its own tenant", JdbcSuite::checkIsolation);
        suite.run("RLS refuses an insert of another tenant's row (42501)", JdbcSuite::checkRlsRefusesOtherTenantInsert);
        suite.run("PreparedStatement (prepareThreshold 5) reused across transactions and both servers",
                JdbcSuite::checkPreparedDefaultThresholdAcrossTransactionsAndServers);
        suite.run("prepareThreshold=1: 4 concurrent connections of 2 tenants on a pool of 2",
                JdbcSuite::checkPreparedThresholdOneConcurrent);
        suite.run("many distinct server-side statements (past pgJDBC's statement cache)",
                JdbcSuite::checkManyDistinctPreparedStatements);
        suite.run("addBatch/executeBatch in a transaction and in autocommit; a refused row undoes its batch",
                JdbcSuite::checkBatchInserts);
        suite.run("rollback(), savepoints, an aborted transaction (25P02) until rollback()",
                JdbcSuite::checkTransactionRollbackAndSavepoints);
        suite.run("autosave=always recovers from an error inside a transaction", JdbcSuite::checkAutosaveSavepoints);
        suite.run("setTransactionIsolation(SERIALIZABLE) holds for later transactions on both servers, no other",
                JdbcSuite::checkSetTransactionIsolationSerializable);
        suite.run("two conflicting serializable transactions: the second commit fails with 40001",
                JdbcSuite::checkSerializationFailure);
        suite.run("setFetchSize: a cursor read in chunks inside a transaction", JdbcSuite::checkFetchSizeCursor);
        suite.run("CopyManager.copyIn (text, CSV): every row gets its own tenant", JdbcSuite::checkCopyInOwnTenant);
        suite.run("copyIn inside a rolled-back transaction leaves nothing", JdbcSuite::checkCopyInTransactionRolledBack);
        suite.run("copyIn into an RLS table is refused by PostgreSQL (0A000)",
                JdbcSuite::checkCopyInIntoRlsTableRefused);
        suite.run("CopyManager.copyOut: own rows only, CSV with header, 50000 lines",
                JdbcSuite::checkCopyOutOnlyOwnRows);
        suite.run("Statement.cancel() of pg_sleep: 57014 quickly, in autocommit and in a transaction",
                JdbcSuite::checkCancel);
        suite.run("setQueryTimeout(1) cancels pg_sleep with 57014", JdbcSuite::checkQueryTimeout);
        suite.run("LargeObjectManager: create, write, read, seek, truncate, unlink (FunctionCall)",
                JdbcSuite::checkLargeObjects);
        suite.run("a FunctionCall of set_config is refused (42501), the tenant unchanged",
                JdbcSuite::checkFunctionCallOfSetConfigRefused);
        suite.run("SET search_path / setSchema persist on the connection (both servers), no other",
                JdbcSuite::checkSessionSearchPath);
        suite.run("SET statement_timeout persists on the connection (both servers), no other",
                JdbcSuite::checkSessionStatementTimeout);
        suite.run("SET undone by rollback(), SET LOCAL ends with commit(), committed SET stays",
                JdbcSuite::checkSessionSetInTransactions);
        suite.run("preferQueryMode=simple: isolation, binds inlined, rollback", JdbcSuite::checkSimpleQueryMode);
        suite.finish();
    }
}
