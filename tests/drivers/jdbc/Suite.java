// Shared pieces of the JDBC driver suite: the environment of the driver conventions
// (notes/DRIVERS.md), connections through the proxy and straight to PostgreSQL, the check
// runner that counts passes and failures, and small assertion helpers.
//
// Nothing here checks the proxy; JdbcSuite does, in JDBC's idiom. The superuser connection
// (PGT_DIRECT_DSN) only inspects what landed in the tables and what runs on PostgreSQL.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

final class Suite {
    static final String HOST = env("PGT_HOST");
    static final int PORT = Integer.parseInt(env("PGT_PORT"));
    static final String DB = env("PGT_DB");
    static final String USER = env("PGT_USER");
    static final String TOKEN_A = env("PGT_TOKEN_A");
    static final String TOKEN_B = env("PGT_TOKEN_B");
    static final String TENANT_A = env("PGT_TENANT_A");
    static final String TENANT_B = env("PGT_TENANT_B");
    static final String DIRECT_DSN = env("PGT_DIRECT_DSN");
    static final int POOL_SIZE = Integer.parseInt(System.getenv().getOrDefault("PGT_POOL_SIZE", "2"));

    // The demo data (config/demo_data.sql).
    static final long INVOICES_A = 3;
    static final long INVOICES_B = 2;

    // A check that takes longer than this is stuck: it fails (its thread's stack is printed)
    // and the suite goes on, so a hang names the check instead of running into the Rust
    // test's deadline.
    static final long CHECK_DEADLINE_SECS = 90;

    private final String name;
    private int passed;
    private final List<String> failed = new ArrayList<>();

    Suite(String name) {
        this.name = name;
    }

    interface Check {
        void run() throws Exception;
    }

    /** Runs `check`; an exception (assertion or driver error) or a timeout fails it. */
    void run(String checkName, Check check) {
        System.out.println("[" + name + "] " + checkName + " ...");
        long started = System.nanoTime();
        ExecutorService executor = Executors.newSingleThreadExecutor(runnable -> {
            Thread thread = new Thread(runnable, "check");
            thread.setDaemon(true);
            return thread;
        });
        Future<?> future = executor.submit(() -> {
            check.run();
            return null;
        });
        Throwable failure = null;
        try {
            future.get(CHECK_DEADLINE_SECS, TimeUnit.SECONDS);
        } catch (TimeoutException err) {
            failure = new AssertionError("the check did not finish within " + CHECK_DEADLINE_SECS + " s");
            for (Map.Entry<Thread, StackTraceElement[]> entry : Thread.getAllStackTraces().entrySet()) {
                if (entry.getKey().getName().equals("check")) {
                    for (StackTraceElement frame : entry.getValue()) {
                        System.out.println("    at " + frame);
                    }
                }
            }
            future.cancel(true);
        } catch (java.util.concurrent.ExecutionException err) {
            failure = err.getCause();
        } catch (InterruptedException err) {
            failure = err;
        } finally {
            executor.shutdownNow();
        }
        double secs = (System.nanoTime() - started) / 1e9;
        if (failure == null) {
            passed++;
            System.out.printf("ok   %s (%.1fs)%n", checkName, secs);
        } else {
            failed.add(checkName);
            System.out.printf("FAIL %s (%.1fs)%n", checkName, secs);
            failure.printStackTrace(System.out);
            for (Throwable next = failure instanceof SQLException sql ? sql.getNextException() : null;
                    next != null;
                    next = next instanceof SQLException sql ? sql.getNextException() : null) {
                System.out.println("next exception: " + next);
            }
        }
        System.out.flush();
    }

    /** Prints `N passed, M failed` and exits non-zero when a check failed. */
    void finish() {
        if (!failed.isEmpty()) {
            System.out.println("[" + name + "] failed checks: " + String.join(", ", failed));
        }
        System.out.println(passed + " passed, " + failed.size() + " failed");
        System.out.flush();
        System.exit(failed.isEmpty() ? 0 : 1);
    }

    // --- connections -----------------------------------------------------------------------

    /** The JDBC URL of the proxy: the token is the password, no TLS. */
    static String proxyUrl(String token, String extra) {
        return "jdbc:postgresql://" + HOST + ":" + PORT + "/" + DB + "?user=" + USER + "&password=" + token
                + "&sslmode=disable&connectTimeout=30" + (extra.isEmpty() ? "" : "&" + extra);
    }

    /** A connection through the proxy with extra URL parameters (e.g. `prepareThreshold=1`). */
    static Connection connect(String token, String extra) throws SQLException {
        return DriverManager.getConnection(proxyUrl(token, extra));
    }

    static Connection connect(String token) throws SQLException {
        return connect(token, "");
    }

    /** A superuser connection straight to PostgreSQL (RLS does not apply). */
    static Connection direct() throws SQLException {
        Map<String, String> dsn = parseDsn(DIRECT_DSN);
        Properties props = new Properties();
        props.setProperty("user", dsn.get("user"));
        props.setProperty("password", dsn.get("password"));
        props.setProperty("sslmode", "disable");
        String url = "jdbc:postgresql://" + dsn.get("host") + ":" + dsn.get("port") + "/" + dsn.get("dbname");
        return DriverManager.getConnection(url, props);
    }

    /** The key=value pairs of a libpq keyword DSN (values optionally single-quoted). */
    static Map<String, String> parseDsn(String dsn) {
        Map<String, String> out = new LinkedHashMap<>();
        int i = 0;
        while (i < dsn.length()) {
            while (i < dsn.length() && dsn.charAt(i) == ' ') {
                i++;
            }
            int eq = dsn.indexOf('=', i);
            if (eq < 0) {
                break;
            }
            String key = dsn.substring(i, eq).trim();
            i = eq + 1;
            StringBuilder value = new StringBuilder();
            if (i < dsn.length() && dsn.charAt(i) == '\'') {
                i++;
                while (i < dsn.length() && dsn.charAt(i) != '\'') {
                    if (dsn.charAt(i) == '\\' && i + 1 < dsn.length()) {
                        i++;
                    }
                    value.append(dsn.charAt(i++));
                }
                i++;
            } else {
                while (i < dsn.length() && dsn.charAt(i) != ' ') {
                    value.append(dsn.charAt(i++));
                }
            }
            out.put(key, value.toString());
        }
        return out;
    }

    // --- queries ---------------------------------------------------------------------------

    /** The first column of the first row of `sql` (a plain Statement), as a String. */
    static String scalar(Connection conn, String sql) throws SQLException {
        try (Statement stmt = conn.createStatement(); ResultSet rs = stmt.executeQuery(sql)) {
            expectTrue(rs.next(), "no row from " + sql);
            return rs.getString(1);
        }
    }

    static long scalarLong(Connection conn, String sql) throws SQLException {
        return Long.parseLong(scalar(conn, sql));
    }

    /** The first column of the first row of an executed PreparedStatement. */
    static String scalar(PreparedStatement stmt) throws SQLException {
        try (ResultSet rs = stmt.executeQuery()) {
            expectTrue(rs.next(), "no row from a prepared statement");
            return rs.getString(1);
        }
    }

    /** `sql` run as the superuser straight on PostgreSQL with string parameters. */
    static String directScalar(String sql, String... params) throws SQLException {
        try (Connection conn = direct(); PreparedStatement stmt = conn.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) {
                stmt.setString(i + 1, params[i]);
            }
            return scalar(stmt);
        }
    }

    /** Polls `condition` every 100 ms until it is true; fails naming `what` after 10 s. */
    static void waitUntil(String what, Check condition) throws Exception {
        for (int attempt = 0; attempt < 100; attempt++) {
            try {
                condition.run();
                return;
            } catch (AssertionError notYet) {
                Thread.sleep(100);
            }
        }
        throw new AssertionError("timed out waiting until " + what);
    }

    /** Waits until a query containing `marker` is running on PostgreSQL. */
    static void waitForActive(String marker) throws Exception {
        waitUntil("a query containing '" + marker + "' runs", () -> expectTrue(
                Long.parseLong(directScalar("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        + "AND query LIKE ? AND pid <> pg_backend_pid()", "%" + marker + "%")) >= 1,
                "not yet"));
    }

    // --- assertions ------------------------------------------------------------------------

    static void expect(Object actual, Object expected, String what) {
        if (!Objects.equals(actual, expected)) {
            throw new AssertionError(what + ": expected " + expected + ", got " + actual);
        }
    }

    static void expectTrue(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    interface Failing {
        void run() throws Exception;
    }

    /** Runs `work`, which must throw an SQLException with SQLSTATE `sqlstate`; returns it. */
    static SQLException expectSqlState(String sqlstate, String what, Failing work) throws Exception {
        try {
            work.run();
        } catch (SQLException err) {
            if (!sqlstate.equals(err.getSQLState())) {
                throw new AssertionError(what + ": expected SQLSTATE " + sqlstate + ", got " + err.getSQLState()
                        + " (" + err.getMessage() + ")", err);
            }
            return err;
        }
        throw new AssertionError(what + ": expected SQLSTATE " + sqlstate + ", but it succeeded");
    }

    private static String env(String key) {
        String value = System.getenv(key);
        if (value == null || value.isEmpty()) {
            throw new IllegalStateException("environment variable " + key + " is not set");
        }
        return value;
    }
}
