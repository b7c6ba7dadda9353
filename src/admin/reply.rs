//! What an admin command answers, and its encoding as simple-protocol replies
//! (RowDescription, DataRow, CommandComplete, NoticeResponse, ErrorResponse).
//!
//! This module owns the wire shape of admin results: every value in text format, integers
//! typed `int8` and everything else `text`, as PgBouncer's console does. It never decides
//! what a command means.

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, NoticeResponse};

use crate::protocol::messages::{self, Severity};

const TEXT_OID: u32 = 25;
const INT8_OID: u32 = 20;

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i128),
    Null,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

macro_rules! int_cell {
    ($($t:ty),*) => {$(
        impl From<$t> for Cell {
            fn from(n: $t) -> Cell {
                Cell::Int(i128::from(n))
            }
        }
    )*};
}
int_cell!(u8, u16, u32, u64, i32, i64);

impl From<usize> for Cell {
    fn from(n: usize) -> Cell {
        Cell::Int(i128::try_from(n).unwrap_or(i128::MAX))
    }
}

impl From<bool> for Cell {
    /// PgBouncer shows flags such as `paused` as 0/1.
    fn from(b: bool) -> Cell {
        Cell::Int(i128::from(b))
    }
}

/// Column type of a result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int,
}

/// Rows under named, typed columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<(&'static str, ColumnType)>,
    pub rows: Vec<Vec<Cell>>,
}

impl ResultSet {
    pub fn new(columns: &[(&'static str, ColumnType)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column (a bug otherwise, logged and padded).
    pub fn push(&mut self, mut row: Vec<Cell>) {
        if row.len() != self.columns.len() {
            tracing::error!(
                expected = self.columns.len(),
                got = row.len(),
                "admin result row has the wrong width"
            );
            row.resize(self.columns.len(), Cell::Null);
        }
        self.rows.push(row);
    }

    /// The column index of `name` (tests and callers that read their own results).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| *n == name)
    }
}

/// What one admin command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A result set and its command tag (`SHOW`).
    Rows(ResultSet, &'static str),
    /// Notices, then a command tag.
    Notices(Vec<String>, &'static str),
    Error {
        sqlstate: &'static str,
        message: String,
    },
}

impl Reply {
    pub fn error(sqlstate: &'static str, message: impl Into<String>) -> Reply {
        Reply::Error {
            sqlstate,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error { .. })
    }

    /// Appends the reply's messages (not the ReadyForQuery).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Rows(set, tag) => {
                let fields = set
                    .columns
                    .iter()
                    .map(|(name, ty)| {
                        let (oid, size) = match ty {
                            ColumnType::Text => (TEXT_OID, -1),
                            ColumnType::Int => (INT8_OID, 8),
                        };
                        FieldDescription::new((*name).to_owned(), 0, 0, oid, size, -1, 0)
                    })
                    .collect();
                encode(&RowDescription::new(fields), out);
                for row in &set.rows {
                    encode(&data_row(row), out);
                }
                let tag = if *tag == "SELECT" {
                    format!("SELECT {}", set.rows.len())
                } else {
                    (*tag).to_owned()
                };
                encode(&CommandComplete::new(tag), out);
            }
            Reply::Notices(lines, tag) => {
                for line in lines {
                    let fields = vec![
                        (b'S', "NOTICE".to_owned()),
                        (b'V', "NOTICE".to_owned()),
                        (b'C', "00000".to_owned()),
                        (b'M', line.clone()),
                    ];
                    encode(&NoticeResponse::new(fields), out);
                }
                encode(&CommandComplete::new((*tag).to_owned()), out);
            }
            Reply::Error { sqlstate, message } => {
                messages::error_response(out, Severity::Error, sqlstate, message, None);
            }
        }
    }
}

fn data_row(row: &[Cell]) -> DataRow {
    let mut data = BytesMut::new();
    for cell in row {
        let text = match cell {
            Cell::Text(s) => Some(s.clone()),
            Cell::Int(n) => Some(n.to_string()),
            Cell::Null => None,
        };
        match text {
            Some(t) => {
                data.put_i32(i32::try_from(t.len()).unwrap_or(i32::MAX));
                data.put_slice(t.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    DataRow::new(data, i16::try_from(row.len()).unwrap_or(i16::MAX))
}

fn encode<M: Message>(msg: &M, out: &mut BytesMut) {
    // Admin replies are small; pgwire refuses only messages above its size caps.
    if let Err(e) = msg.encode(out) {
        tracing::error!(error = %e, "could not encode an admin reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_encode_as_description_rows_and_show_tag() {
        let mut set = ResultSet::new(&[("database", ColumnType::Text), ("n", ColumnType::Int)]);
        set.push(vec!["app".into(), 7u64.into()]);
        set.push(vec![Cell::Null, 0u64.into()]);
        let mut out = BytesMut::new();
        Reply::Rows(set, "SHOW").encode(&mut out);
        let tags: Vec<u8> = frames(&out).iter().map(|f| f[0]).collect();
        assert_eq!(tags, b"TDDC");
        let f = frames(&out);
        // First DataRow: 2 fields, "app" (len 3), "7" (len 1).
        assert_eq!(&f[1][5..], b"\0\x02\0\0\0\x03app\0\0\0\x017");
        assert_eq!(&f[2][5..], b"\0\x02\xff\xff\xff\xff\0\0\0\x010");
        assert_eq!(&f[3][5..], b"SHOW\0");
    }

    #[test]
    fn short_rows_are_padded_with_null() {
        let mut set = ResultSet::new(&[("a", ColumnType::Text), ("b", ColumnType::Text)]);
        set.push(vec!["x".into()]);
        assert_eq!(set.rows[0], vec![Cell::from("x"), Cell::Null]);
    }

    fn frames(mut buf: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while let Ok(Some(f)) = crate::protocol::peek_frame(buf, 1 << 20) {
            out.push(&buf[..f.total_len]);
            buf = &buf[f.total_len..];
        }
        out
    }
}
