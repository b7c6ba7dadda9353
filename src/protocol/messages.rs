//! Messages pgtenant originates towards clients (and the few it sends to servers on the
//! control path), encoded with `pgwire`.
//!
//! Everything here is off the hot path: login replies, errors, synthesized replies. Pass-
//! through traffic never comes through this module.

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};

/// Appends `AuthenticationCleartextPassword`.
pub fn auth_cleartext_password(out: &mut BytesMut) {
    encode(&Authentication::CleartextPassword, out);
}

/// Appends `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    encode(&Authentication::Ok, out);
}

/// Appends a `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(
        &ParameterStatus::new(name.to_owned(), value.to_owned()),
        out,
    );
}

/// Appends `BackendKeyData` (protocol 3.0: a 4-byte secret).
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

/// Appends `ReadyForQuery` with the given status byte (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status), out);
}

/// Severity of an error we originate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an `ErrorResponse` (protocol docs, "Error and Notice Message Fields": S, V, C, M
/// are always present, as PostgreSQL sends them).
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    sqlstate: &str,
    message: &str,
    hint: Option<&str>,
) {
    let mut fields = vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_owned()));
    }
    encode(&ErrorResponse::new(fields), out);
}

/// Appends a `NoticeResponse` with severity WARNING.
pub fn warning(out: &mut BytesMut, sqlstate: &str, message: &str) {
    let fields = vec![
        (b'S', "WARNING".to_owned()),
        (b'V', "WARNING".to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(&NoticeResponse::new(fields), out);
}

/// Appends a single-byte reply with no payload (`1` ParseComplete, `2` BindComplete,
/// `3` CloseComplete, `n` NoData).
pub fn empty_reply(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

fn encode<M: Message>(msg: &M, out: &mut BytesMut) {
    // Encoding into a BytesMut only fails when a message exceeds pgwire's size cap, which
    // our own short control messages never do; a failure would leave `out` unchanged.
    if let Err(e) = msg.encode(out) {
        tracing::error!(error = %e, "could not encode a control message");
    }
}

/// Reads the SQLSTATE (`C` field) out of an ErrorResponse/NoticeResponse payload.
pub fn error_sqlstate(payload: &[u8]) -> Option<&[u8]> {
    error_field(payload, b'C')
}

/// Reads one field out of an ErrorResponse/NoticeResponse payload.
pub fn error_field(mut payload: &[u8], code: u8) -> Option<&[u8]> {
    while let Some((&field, rest)) = payload.split_first() {
        if field == 0 {
            return None;
        }
        let (value, rest) = super::read_cstr(rest)?;
        if field == code {
            return Some(value);
        }
        payload = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_sqlstate_and_message() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, "28P01", "token expired", None);
        assert_eq!(out[0], b'E');
        let payload = crate::protocol::payload(&out);
        assert_eq!(error_sqlstate(payload), Some(&b"28P01"[..]));
        assert_eq!(error_field(payload, b'M'), Some(&b"token expired"[..]));
        assert_eq!(error_field(payload, b'S'), Some(&b"FATAL"[..]));
    }

    #[test]
    fn ready_for_query_encodes_status() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'E');
        assert_eq!(&out[..], b"Z\0\0\0\x05E");
    }
}
