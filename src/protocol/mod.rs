//! Wire framing for the PostgreSQL v3 protocol: the 5-byte message header, size limits and
//! the few byte-level accessors the hot path needs.
//!
//! This module owns *finding* message boundaries in a buffer without allocating or decoding
//! (protocol docs, "Message Formats"). It never interprets a payload beyond what a caller
//! asks for, and it never trusts a length field: every length is checked against the buffer
//! and against the configured cap before anything is sliced.

pub mod messages;
pub mod startup;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A complete message sitting at the front of a buffer: its tag and total length
/// (tag byte + 4-byte length + payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub total_len: usize,
}

/// Why a byte stream is not a valid message sequence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Checks whether `buf` starts with a complete message. Returns `Ok(None)` when more bytes
/// are needed. Does not consume anything.
#[inline]
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: i64::from(len),
        });
    }
    let total_len = len as usize + 1;
    if total_len > max_len {
        return Err(FrameError::TooLarge {
            len: total_len,
            max: max_len,
        });
    }
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(Frame { tag, total_len }))
}

/// The payload of a complete message (after tag and length).
#[inline]
pub fn payload(msg: &[u8]) -> &[u8] {
    msg.get(5..).unwrap_or(&[])
}

/// Reads a NUL-terminated string from the front of `data`; returns it and the rest.
#[inline]
pub fn read_cstr(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = data.iter().position(|&b| b == 0)?;
    Some((&data[..nul], &data[nul + 1..]))
}

/// Appends a message with `tag` whose payload is written by `body`, fixing up the length.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string.
#[inline]
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Splits one complete frame off the front of `buf`.
#[inline]
pub fn take_frame(buf: &mut BytesMut, frame: Frame) -> Bytes {
    buf.split_to(frame.total_len).freeze()
}

/// Skips `n` bytes of a buffer (used when a message is consumed without being copied).
#[inline]
pub fn skip(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_header_needs_more_bytes() {
        assert_eq!(peek_frame(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn incomplete_body_needs_more_bytes() {
        assert_eq!(peek_frame(b"Q\0\0\0\x09SEL", 100), Ok(None));
    }

    #[test]
    fn complete_message_is_found_without_consuming() {
        let msg = b"Q\0\0\0\x0dSELECT 1\0rest";
        let f = peek_frame(msg, 100).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                tag: b'Q',
                total_len: 14
            }
        );
    }

    #[test]
    fn negative_or_short_length_is_rejected() {
        assert!(matches!(
            peek_frame(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            peek_frame(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn oversized_message_is_rejected_before_it_is_buffered() {
        assert!(matches!(
            peek_frame(b"Q\x10\0\0\0", 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn put_message_writes_correct_length() {
        let mut out = BytesMut::new();
        put_message(&mut out, b'Q', |b| put_cstr(b, b"SELECT 1"));
        assert_eq!(&out[..], b"Q\0\0\0\x0dSELECT 1\0");
    }
}
