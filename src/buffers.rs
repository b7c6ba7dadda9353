//! Spare I/O buffers, kept per worker thread between transactions.
//!
//! A session frees its read and write buffers whenever its client goes idle (thousands of
//! idle clients must cost little), which for a busy client is after every transaction. This
//! module keeps a few of those buffers per thread for the next transaction on that thread,
//! so the hot path takes one from a thread-local list instead of a malloc and a free per
//! buffer per transaction (hand-written: a pool crate would add a lock or an `Arc` per take).
//! It bounds what it keeps; it never hands out a buffer with content.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread: enough for the clients one worker serves at once.
const SPARE_PER_THREAD: usize = 64;
/// Only buffers of about transaction size are kept: a grown one goes back to the allocator,
/// and so does one too small for what sessions take (1,000 bytes), which would only be
/// reallocated.
const LARGEST_KEPT: usize = 64 * 1024;
const SMALLEST_KEPT: usize = 1000;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `at_least` bytes.
pub fn take(at_least: usize) -> BytesMut {
    let spare = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
    match spare {
        Some(mut buf) => {
            buf.reserve(at_least);
            buf
        }
        None => BytesMut::with_capacity(at_least),
    }
}

/// Gives back `buf`'s memory (leaving `buf` empty, holding none) if it has nothing in it.
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let buf = std::mem::take(buf);
    if !(SMALLEST_KEPT..=LARGEST_KEPT).contains(&buf.capacity()) {
        return;
    }
    // During thread teardown the list is gone: the buffer is simply freed.
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_PER_THREAD {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_empty_with_room() {
        let mut buf = BytesMut::with_capacity(2000);
        let ptr = buf.as_ptr();
        give(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let again = take(1000);
        assert!(again.is_empty() && again.capacity() >= 1000);
        assert_eq!(again.as_ptr(), ptr);
    }

    #[test]
    fn buffers_with_content_or_of_unusual_size_are_not_kept() {
        let mut full = BytesMut::from(&b"unsent"[..]);
        give(&mut full);
        assert_eq!(&full[..], b"unsent");
        for size in [SMALLEST_KEPT - 1, LARGEST_KEPT + 1] {
            let mut buf = BytesMut::with_capacity(size);
            give(&mut buf);
            assert_eq!(buf.capacity(), 0);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
    }

    #[test]
    fn at_most_a_bounded_number_are_kept_per_thread() {
        std::thread::spawn(|| {
            for _ in 0..SPARE_PER_THREAD + 10 {
                give(&mut BytesMut::with_capacity(SMALLEST_KEPT));
            }
            assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_PER_THREAD);
        })
        .join()
        .unwrap();
    }
}
