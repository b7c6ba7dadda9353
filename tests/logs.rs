//! Logs: `log_format = "json"` writes one JSON object per line, lines about a client carry
//! its id and tenant, and no token ever appears.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn json_logs_name_client_and_tenant_and_never_a_token() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("log_format", "json"));
    let token = token_for(TENANT_ACME);
    let client = proxy.connect(&token).await.unwrap();
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    drop(client);
    let bad = expired_token(TENANT_GLOBEX);
    assert!(proxy.connect(&bad).await.is_err());

    // Disconnects are logged asynchronously: wait (bounded) for the line.
    let mut log = String::new();
    for _ in 0..50 {
        log = proxy.log();
        if log.contains("\"disconnect\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {log}"))
            .clone()
    };
    let login = about("login");
    assert_eq!(login["fields"]["tenant"], TENANT_ACME);
    assert!(login["fields"]["client"].is_u64());
    let disconnect = about("disconnect");
    assert_eq!(disconnect["fields"]["tenant"], TENANT_ACME);
    assert_eq!(disconnect["fields"]["client"], login["fields"]["client"]);
    let refused = about("login refused");
    assert_eq!(refused["fields"]["reason"], "expired");
    for secret in [&token, &bad] {
        assert!(!log.contains(secret.as_str()), "a token appears in the log");
    }
}
