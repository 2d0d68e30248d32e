//! Ranged reads of a local repository's files into reused buffers.
//!
//! `object_store`'s local store allocates and zero-fills a new buffer for
//! every ranged read: for a restore's 8 MiB reads, a fresh mapping faulted in
//! page by page and then overwritten. Here a read fills a buffer from a
//! small pool, handed out as [`Bytes`] that give the buffer back when the last
//! view of it drops; a buffer is zeroed once, when it first grows.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{StoreError, StoreErrorKind};

/// Buffers kept for reuse: one per ranged read a restore has in flight.
const KEPT: usize = 4;
/// Larger buffers are not kept.
const KEPT_MAX: usize = 16 << 20;

/// Free buffers, shared by a store's clones.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// A buffer on loan from a [`Pool`]; its first `len` bytes are the data.
struct Loan {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= KEPT_MAX {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < KEPT {
                free.push(buf);
            }
        }
    }
}

/// Reads `range` of the file at `path` (the object `key`) into a pooled buffer.
/// A file shorter than the range is a transient error, as a short answer
/// from any store is.
pub(crate) fn read_range(
    pool: &Arc<Pool>,
    path: &std::path::Path,
    key: &str,
    range: std::ops::Range<u64>,
) -> Result<Bytes, StoreError> {
    let io = |e: std::io::Error| StoreError {
        kind: match e.kind() {
            std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            std::io::ErrorKind::UnexpectedEof => StoreErrorKind::Transient,
            _ => StoreErrorKind::Permanent,
        },
        operation: "reading",
        key: key.to_string(),
        message: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!(
                "asked for bytes {}..{} and the object ends before (shorter than expected?)",
                range.start, range.end
            )
        } else {
            e.to_string()
        },
    };
    let want = range
        .end
        .checked_sub(range.start)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| StoreError {
            kind: StoreErrorKind::Permanent,
            operation: "reading",
            key: key.to_string(),
            message: format!("range {}..{} cannot be read", range.start, range.end),
        })?;
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = pool
        .free
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut loan = Loan {
        len: want,
        buf,
        pool: pool.clone(),
    };
    file.read_exact_at(&mut loan.buf[..want], range.start)
        .map_err(io)?;
    Ok(Bytes::from_owner(loan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reuse_buffers_and_short_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let pool = Arc::new(Pool::default());
        let a = read_range(&pool, &path, "obj", 10..60_010).unwrap();
        assert_eq!(&a[..], &data[10..60_010]);
        let ptr = a.as_ptr();
        drop(a);
        // The same buffer, longer than this read: only the range is seen.
        let b = read_range(&pool, &path, "obj", 50_000..50_100).unwrap();
        assert_eq!(&b[..], &data[50_000..50_100]);
        assert_eq!(b.as_ptr(), ptr, "the buffer was reused");
        // Two loans at once: two buffers.
        let c = read_range(&pool, &path, "obj", 0..10).unwrap();
        assert_ne!(c.as_ptr(), b.as_ptr());
        assert_eq!(&c[..], &data[..10]);

        let e = read_range(&pool, &path, "obj", 99_990..100_010).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Transient);
        assert!(e.message.contains("99990..100010"), "{e}");
        #[allow(clippy::reversed_empty_ranges)]
        let e = read_range(&pool, &path, "obj", 20..10).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        let e = read_range(&pool, &dir.path().join("gone"), "gone", 0..1).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::NotFound);
        assert_eq!(e.key, "gone");
    }
}
