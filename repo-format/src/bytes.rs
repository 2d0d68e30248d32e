//! A bounds-checked little-endian reader for the binary objects.

use crate::error::{FormatError, Result};

pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Reader { what, buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: (self.pos as u64).saturating_add(n as u64),
                available: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn id(&mut self) -> Result<[u8; 32]> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    /// Checks that `count` records of `size` bytes can still follow.
    pub(crate) fn expect_records(&self, count: u32, size: usize) -> Result<()> {
        let need = (count as u64).saturating_mul(size as u64);
        if need > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: (self.pos as u64).saturating_add(need),
                available: self.buf.len() as u64,
            });
        }
        Ok(())
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(FormatError::malformed(
                self.what,
                format!("{} unexpected bytes at the end", self.remaining()),
            ));
        }
        Ok(())
    }
}
