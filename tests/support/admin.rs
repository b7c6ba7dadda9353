//! The admin console from a test: a proxy config with an admin user and an admin claim, a
//! logged-in console, and `SHOW` results read by column name.

use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};
use toml::Value;

use super::{Proxy, ProxyConfig, TestDb, connect};

pub const ADMIN: &str = "ops";
pub const ADMIN_PASSWORD: &str = "admin-pw-4f1c9e7b2d";
pub const ADMIN_CLAIM: &str = "pgtenant_admin";

/// [`ProxyConfig::for_db`] with the admin user [`ADMIN`] and the admin claim [`ADMIN_CLAIM`].
pub fn admin_config(db: &TestDb) -> ProxyConfig {
    let mut entry = toml::Table::new();
    entry.insert("user".into(), ADMIN.into());
    entry.insert("password".into(), ADMIN_PASSWORD.into());
    ProxyConfig::for_db(db)
        .general("admin_users", Value::Array(vec![Value::Table(entry)]))
        .auth("admin_claim", ADMIN_CLAIM)
}

/// Settings for the console database `dbname` as `user` with `password`.
pub fn console_config(
    proxy: &Proxy,
    dbname: &str,
    user: &str,
    password: &str,
) -> tokio_postgres::Config {
    let mut config = proxy.client_config(password);
    config.dbname(dbname).user(user);
    config
}

/// A console logged in as [`ADMIN`].
pub async fn admin(proxy: &Proxy) -> Client {
    connect(&console_config(proxy, "pgtenant", ADMIN, ADMIN_PASSWORD))
        .await
        .unwrap()
}

/// A SHOW result: its column names and its rows.
pub struct Shown {
    pub columns: Vec<String>,
    pub rows: Vec<SimpleQueryRow>,
}

impl Shown {
    pub fn row_where(&self, column: &str, value: &str) -> &SimpleQueryRow {
        self.rows
            .iter()
            .find(|r| r.get(column) == Some(value))
            .unwrap_or_else(|| panic!("no row with {column} = {value}"))
    }
}

/// An integer column of a row.
pub fn int(row: &SimpleQueryRow, column: &str) -> i64 {
    row.get(column)
        .unwrap_or_else(|| panic!("{column} is NULL"))
        .parse()
        .unwrap_or_else(|e| panic!("{column}: {e}"))
}

pub async fn show(client: &Client, what: &str) -> Shown {
    let messages = client.simple_query(&format!("SHOW {what}")).await.unwrap();
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(desc) => {
                columns = desc.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => rows.push(row),
            _ => {}
        }
    }
    Shown { columns, rows }
}

pub fn names(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| (*c).to_owned()).collect()
}
