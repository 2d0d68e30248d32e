//! File workers: each reads one file in windows and cuts it into
//! content-defined chunks; all-zero chunks become holes, the others go to the
//! hasher and dedup ([`super::dedup`]).
//!
//! A large file uses every core: each window is split into segments that are
//! chunked in parallel, each from its nominal start; a serial stitch then
//! follows the true boundaries from the file's start and adopts a segment's cut
//! points as soon as one of them is a true boundary (FastCDC boundaries depend
//! only on the chunk's start, so from there on they coincide), cutting serially
//! until they do. The result is identical to chunking the file in one pass.
//! Hashing, compression and encryption of the window's chunks run in parallel too.

use std::io::Read;
use std::path::Path;

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::chunker::{is_zero, Chunker};
use coffer_repo_format::tree::{ContentRef, Node};

use super::dedup::BlobWriter;
use super::source::{FileAt, FileJob, FileOutcome};
use super::{Monitor, ReadSetup, Sink, SourceError};
use crate::error::{Error, Result};

/// One file worker: runs until the job queue closes.
pub(crate) fn run_worker(
    read: &ReadSetup,
    sink: &Sink,
    monitor: &Monitor,
    jobs: crossbeam_channel::Receiver<FileJob>,
) -> Result<()> {
    let mut w = Worker::new(read, sink, monitor);
    for job in jobs {
        if monitor.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if monitor.wants_progress() {
            if let Ok(mut c) = monitor.current.lock() {
                *c = Some(job.path.clone());
            }
        }
        let outcome: FileOutcome = match w.back_up_file(&job.at, &job.path, job.node, job.opened) {
            Ok(node) => Ok(node),
            Err(FileError::Source(e)) => Err(e),
            // The tree builder sees the closed reply channel; the error is the pipeline's.
            Err(FileError::Fatal(e)) => return Err(e),
        };
        let _ = job.reply.send(outcome);
    }
    Ok(())
}

pub(crate) enum FileError {
    /// The file could not be read: report it and go on.
    Source(SourceError),
    /// The backup cannot go on (repository side).
    Fatal(Error),
}

pub(crate) struct Worker<'a> {
    read: &'a ReadSetup,
    sink: &'a Sink,
    monitor: &'a Monitor,
    sealers: Vec<BlobWriter>,
    buf: Vec<u8>,
}

/// Reads until `buf` holds `want` bytes or the file ends; true at the end.
/// Reads into the vector's spare capacity: nothing is zeroed first.
fn fill(file: &mut (dyn Read + Send), buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
    while buf.len() < want {
        let need = (want - buf.len()) as u64;
        match file.take(need).read_to_end(buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

impl<'a> Worker<'a> {
    pub(crate) fn new(read: &'a ReadSetup, sink: &'a Sink, monitor: &'a Monitor) -> Self {
        Worker {
            read,
            sink,
            monitor,
            sealers: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn sealers(&mut self, n: usize) -> Result<&mut [BlobWriter]> {
        while self.sealers.len() < n {
            let s = BlobWriter::new(self.sink)?;
            self.sealers.push(s);
        }
        Ok(&mut self.sealers[..n])
    }

    /// Opens the file where the walker listed it (never through a symlink,
    /// never anything but a regular file), unless the prefetch stage did
    /// (`opened`), and reads it. A file replaced by another regular file since
    /// it was listed is read as it is now, with its metadata.
    fn back_up_file(
        &mut self,
        at: &FileAt,
        path: &Path,
        mut node: Node,
        opened: Option<(std::fs::File, crate::fsmeta::Meta)>,
    ) -> Result<Node, FileError> {
        let (mut file, md) = match opened {
            Some(o) => o,
            None => at
                .at()
                .open_regular(self.read.untrusted_source)
                .map_err(|e| source_error(path, e))?,
        };
        if let FileAt::Dir(..) = at {
            if (md.dev, md.ino) != (node.device, node.inode) {
                tracing::debug!(
                    "{} was replaced since it was listed; reading the new file",
                    path.display()
                );
                crate::fsmeta::set_stat(&mut node, &md, &mut crate::fsmeta::Owners::default());
                node.size = md.size;
                if let Ok(fd) = file.try_clone().map(std::os::fd::OwnedFd::from) {
                    node.xattrs = crate::fsmeta::read_xattrs(crate::fsmeta::At::Open(&fd));
                }
            }
        }
        let extents = match sparse_extents(&file, node.size) {
            Some(e) => e,
            None => return self.back_up_reader(path, &mut file, node),
        };
        // A sparse file: holes become zero runs without being read. Extents
        // too short to be chunked on several threads are read a window at a
        // time and their chunks sealed in parallel; a hole ends a chunk, so
        // the chunks are those of each extent on its own either way.
        let mut out = Sparse::default();
        let read = self.read;
        let max = read.chunker.params().max_size as usize;
        let seg = read.segment_size.max(2 * max) as u64;
        let window = read.threads.max(1) as u64 * seg;
        let mut group: Vec<(u64, u64)> = Vec::new();
        let mut group_bytes = 0u64;
        let mut shrank = false;
        for (start, end) in extents {
            let len = end - start;
            if len < 2 * seg {
                group.push((start, end));
                group_bytes += len;
                if group_bytes >= window {
                    shrank = self.back_up_extents(path, &file, &group, &mut out)?;
                    group.clear();
                    group_bytes = 0;
                    if shrank {
                        break;
                    }
                }
                continue;
            }
            if !group.is_empty() {
                shrank = self.back_up_extents(path, &file, &group, &mut out)?;
                group.clear();
                group_bytes = 0;
                if shrank {
                    break;
                }
            }
            out.hole_to(start, self.monitor);
            use std::io::{Seek, SeekFrom};
            file.seek(SeekFrom::Start(start))
                .map_err(|e| source_error(path, e))?;
            let mut part = Node::new(node.name.clone(), node.kind);
            part.size = len;
            let part = self.back_up_reader(path, &mut (&mut file).take(len), part)?;
            for r in part.content {
                push_ref(&mut out.content, r);
            }
            out.total += part.size;
            out.pos = start + part.size;
            if part.size < len {
                shrank = true;
                break; // the file shrank while it was read
            }
        }
        if !shrank && !group.is_empty() {
            self.back_up_extents(path, &file, &group, &mut out)?;
        }
        let Sparse {
            mut content,
            pos,
            mut total,
        } = out;
        if pos < node.size && total == pos {
            push_ref(
                &mut content,
                ContentRef {
                    id: None,
                    len: node.size - pos,
                },
            );
            self.monitor.stats.add_bytes(node.size - pos);
            total += node.size - pos;
        }
        node.size = total;
        node.content = content;
        Ok(node)
    }

    /// Reads the data extents `group` of a sparse file (each shorter than two
    /// segments), cuts each into chunks on its own, and seals them all on
    /// `threads` threads; appends the holes before each extent and its chunks
    /// to `out`. True when the file shrank while it was read (the rest is
    /// not read).
    fn back_up_extents(
        &mut self,
        path: &Path,
        file: &std::fs::File,
        group: &[(u64, u64)],
        out: &mut Sparse,
    ) -> Result<bool, FileError> {
        use std::os::unix::fs::FileExt;
        let (read, sink, monitor) = (self.read, self.sink, self.monitor);
        if monitor.cancel.is_cancelled() {
            return Err(FileError::Fatal(Error::Cancelled));
        }
        let len: u64 = group.iter().map(|(s, e)| e - s).sum();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(len as usize, 0);
        // (start in the file, start in buf, bytes read) of each extent.
        let mut spans: Vec<(u64, usize, usize)> = Vec::with_capacity(group.len());
        let mut at = 0usize;
        let mut shrank = false;
        for &(start, end) in group {
            let want = (end - start) as usize;
            let mut got = 0usize;
            while got < want {
                match file.read_at(&mut buf[at + got..at + want], start + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf = buf;
                        return Err(source_error(path, e));
                    }
                }
            }
            spans.push((start, at, got));
            at += got;
            if got < want {
                shrank = true;
                break;
            }
        }
        // Start reading what the next group will read while this one is
        // chunked and sealed (holes in the range cost nothing).
        if let (false, Some(&(_, end))) = (shrank, group.last()) {
            let ahead = 2 * len.max(1) as nix::libc::off_t;
            let _ = nix::fcntl::posix_fadvise(
                file,
                end as nix::libc::off_t,
                ahead,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut per_span: Vec<usize> = Vec::with_capacity(spans.len());
        for &(_, off, got) in &spans {
            let before = chunks.len();
            let mut p = off;
            while p < off + got {
                let l = read.chunker.cut(&buf[p..off + got]);
                chunks.push((p, l));
                p += l;
            }
            per_span.push(chunks.len() - before);
        }
        let sealed = self
            .sealers(read.threads.max(1))
            .and_then(|sealers| process_chunks(sink, monitor, sealers, &buf, &chunks));
        let max = read.chunker.params().max_size as usize;
        let seg = read.segment_size.max(2 * max);
        if buf.capacity() <= 2 * (seg + max) {
            self.buf = buf;
        }
        let mut refs = sealed.map_err(FileError::Fatal)?.into_iter();
        for (&(start, _, got), n) in spans.iter().zip(per_span) {
            out.hole_to(start, monitor);
            for r in refs.by_ref().take(n) {
                push_ref(&mut out.content, r);
            }
            out.total += got as u64;
            out.pos = start + got as u64;
        }
        monitor.stats.add_read(at as u64);
        if let Some(pacer) = &read.pacer {
            pacer.pace(at as u64, &monitor.cancel);
        }
        Ok(shrank)
    }

    /// Chunks and stores everything `reader` yields as the content of `node`;
    /// `path` names the source in errors. A large source is read ahead on its
    /// own thread, so the disk and the chunking threads work at the same time.
    pub(crate) fn back_up_reader(
        &mut self,
        path: &Path,
        reader: &mut (dyn Read + Send),
        mut node: Node,
    ) -> Result<Node, FileError> {
        let read = self.read;
        let max = read.chunker.params().max_size as usize;
        let seg = read.segment_size.max(2 * max);
        let big = node.size >= 2 * seg as u64;
        let par = if big { read.threads.max(1) } else { 1 };
        let (content, total) = if big {
            std::thread::scope(|s| {
                // Reads of a quarter segment (2 MiB at the default), two
                // queued: enough to keep the disk busy while the window is
                // chunked (the kernel reads ahead too), little memory.
                let (blocks_tx, blocks) = crossbeam_channel::bounded(2);
                let (recycle, recycled) = crossbeam_channel::bounded(3);
                let block = (seg / 4).clamp(READ_AHEAD_MIN, READ_AHEAD_MAX);
                s.spawn(move || read_ahead(reader, block, blocks_tx, recycled));
                let mut feed = Feed::Ahead {
                    blocks,
                    recycle,
                    block: Vec::new(),
                    pos: 0,
                };
                self.chunk_stream(path, &mut feed, node.size, seg, par)
            })?
        } else {
            self.chunk_stream(path, &mut Feed::Direct(reader), node.size, seg, par)?
        };
        // The file may have changed size since it was listed: record what was read.
        node.size = total;
        node.content = content;
        Ok(node)
    }

    fn chunk_stream(
        &mut self,
        path: &Path,
        feed: &mut Feed<'_>,
        size_hint: u64,
        seg: usize,
        par: usize,
    ) -> Result<(Vec<ContentRef>, u64), FileError> {
        let source_err = |e: std::io::Error| source_error(path, e);
        let (read, sink, monitor) = (self.read, self.sink, self.monitor);
        let max = read.chunker.params().max_size as usize;
        let window = par * seg;
        let mut content: Vec<ContentRef> = Vec::new();
        let mut total: u64 = 0;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // Room for the whole file when it is small, for one window otherwise.
        buf.reserve((size_hint as usize).min(window + max) + 1);
        let result = loop {
            if monitor.cancel.is_cancelled() {
                break Err(FileError::Fatal(Error::Cancelled));
            }
            // `buf` starts at a true chunk boundary (what the last window left).
            let eof = match feed.fill(&mut buf, window + max) {
                Ok(eof) => eof,
                Err(e) => break Err(source_err(e)),
            };
            if buf.is_empty() {
                break Ok(());
            }
            let limit = if eof { buf.len() } else { buf.len() - max };
            let chunks = plan_chunks(&read.chunker, &buf, limit, seg, par);
            let consumed = chunks.last().map_or(0, |(s, l)| s + l);
            let sealers = match self.sealers(par) {
                Ok(s) => s,
                Err(e) => break Err(FileError::Fatal(e)),
            };
            match process_chunks(sink, monitor, sealers, &buf, &chunks) {
                Ok(refs) => {
                    for r in refs {
                        push_ref(&mut content, r);
                    }
                }
                Err(e) => break Err(FileError::Fatal(e)),
            }
            total += consumed as u64;
            monitor.stats.add_read(consumed as u64);
            if let Some(pacer) = &read.pacer {
                // A cancel during the wait ends the loop at its top.
                pacer.pace(consumed as u64, &monitor.cancel);
            }
            buf.drain(..consumed);
            if eof && buf.is_empty() {
                break Ok(());
            }
        };
        // Keep a normal-sized buffer for the next file, not a big file's window.
        if buf.capacity() <= 2 * (seg + max) {
            self.buf = buf;
        }
        result.map(|()| (content, total))
    }
}

/// The content of a sparse file as it is built: references so far, the
/// file offset they reach, and the bytes they cover.
#[derive(Default)]
struct Sparse {
    content: Vec<ContentRef>,
    pos: u64,
    total: u64,
}

impl Sparse {
    /// Records the hole from where the content reaches to `start`.
    fn hole_to(&mut self, start: u64, monitor: &Monitor) {
        if start > self.pos {
            push_ref(
                &mut self.content,
                ContentRef {
                    id: None,
                    len: start - self.pos,
                },
            );
            monitor.stats.add_bytes(start - self.pos);
            self.total += start - self.pos;
            self.pos = start;
        }
    }
}

/// Where a file's bytes come from: the reader itself, or blocks that a
/// read-ahead thread filled.
enum Feed<'r> {
    Direct(&'r mut (dyn Read + Send)),
    Ahead {
        blocks: crossbeam_channel::Receiver<std::io::Result<Vec<u8>>>,
        recycle: crossbeam_channel::Sender<Vec<u8>>,
        block: Vec<u8>,
        pos: usize,
    },
}

impl Feed<'_> {
    /// Appends to `buf` until it holds `want` bytes; true at the end of the source.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
        match self {
            Feed::Direct(r) => fill(*r, buf, want),
            Feed::Ahead {
                blocks,
                recycle,
                block,
                pos,
            } => {
                while buf.len() < want {
                    if *pos == block.len() {
                        let used = std::mem::take(block);
                        if used.capacity() > 0 {
                            let _ = recycle.try_send(used);
                        }
                        *pos = 0;
                        match blocks.recv() {
                            Ok(Ok(b)) if b.is_empty() => return Ok(true),
                            Ok(Ok(b)) => *block = b,
                            Ok(Err(e)) => return Err(e),
                            // The reader ended without an end marker: it failed.
                            Err(_) => {
                                return Err(std::io::Error::other("the read-ahead thread stopped"))
                            }
                        }
                    }
                    let n = (want - buf.len()).min(block.len() - *pos);
                    buf.extend_from_slice(&block[*pos..*pos + n]);
                    *pos += n;
                }
                Ok(false)
            }
        }
    }
}

/// Largest block of the read-ahead thread (a quarter of the default segment).
const READ_AHEAD_MAX: usize = 2 * 1024 * 1024;
/// Smallest block of the read-ahead thread.
const READ_AHEAD_MIN: usize = 256 * 1024;

/// Reads `r` in blocks of `size` bytes and sends them, ending with an empty
/// block; reuses the blocks the consumer sends back. Large plain `read` calls
/// into blocks that are already initialized: no zeroing, no small reads.
fn read_ahead(
    r: &mut (dyn Read + Send),
    size: usize,
    out: crossbeam_channel::Sender<std::io::Result<Vec<u8>>>,
    recycled: crossbeam_channel::Receiver<Vec<u8>>,
) {
    loop {
        let mut b = recycled.try_recv().unwrap_or_default();
        if b.capacity() < size {
            b = vec![0u8; size];
        }
        // Within the capacity, already initialized once: no memset per block.
        b.resize(size, 0);
        let mut filled = 0;
        let mut eof = false;
        while filled < size {
            match r.read(&mut b[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = out.send(Err(e));
                    return;
                }
            }
        }
        b.truncate(filled);
        if !b.is_empty() && out.send(Ok(b)).is_err() {
            return;
        }
        if eof {
            let _ = out.send(Ok(Vec::new()));
            return;
        }
    }
}

/// The data extents `(start, end)` of a sparse regular file, found with
/// `SEEK_DATA`/`SEEK_HOLE`; `None` for a file that is not sparse (or where the
/// filesystem cannot tell), which is then read in full.
fn sparse_extents(file: &std::fs::File, size: u64) -> Option<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().ok()?;
    if !md.is_file() || md.blocks() * 512 >= size || size < 1024 * 1024 {
        return None;
    }
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            // ENXIO: no data after pos; the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        if data >= end {
            break;
        }
        let hole = lseek(file, data, Whence::SeekHole).ok()?.min(end);
        extents.push((data as u64, hole as u64));
        pos = hole;
    }
    Some(extents)
}

fn source_error(path: &Path, e: std::io::Error) -> FileError {
    FileError::Source(SourceError {
        path: path.to_path_buf(),
        message: e.to_string(),
        kind: Some(e.kind()),
    })
}

fn push_ref(content: &mut Vec<ContentRef>, r: ContentRef) {
    if r.id.is_none() {
        if let Some(ContentRef { id: None, len }) = content.last_mut() {
            *len += r.len;
            return;
        }
    }
    content.push(r);
}

/// The cut points `(start, len)` of every chunk that starts in `buf[start..end)`,
/// chunking from `start` as if it were a chunk boundary.
fn cuts_from(chunker: &Chunker, buf: &[u8], start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let len = chunker.cut(&buf[pos..]);
        out.push((pos, len));
        pos += len;
    }
    out
}

/// The true chunks of `buf` (which starts at a boundary) that start before
/// `limit`, in order. With `par > 1`, segments of `seg` bytes are chunked in
/// parallel and stitched; the result is the same as one serial pass.
pub(crate) fn plan_chunks(
    chunker: &Chunker,
    buf: &[u8],
    limit: usize,
    seg: usize,
    par: usize,
) -> Vec<(usize, usize)> {
    if limit == 0 {
        return Vec::new();
    }
    let nseg = limit.div_ceil(seg);
    if par <= 1 || nseg <= 1 {
        return cuts_from(chunker, buf, 0, limit);
    }
    let lists: Vec<Vec<(usize, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..nseg)
            .map(|j| s.spawn(move || cuts_from(chunker, buf, j * seg, ((j + 1) * seg).min(limit))))
            .collect();
        let mut lists = vec![cuts_from(chunker, buf, 0, seg.min(limit))];
        for h in handles {
            // A panicking segment thread would be a bug in the chunker; fall
            // back to cutting that segment serially during the stitch.
            lists.push(h.join().unwrap_or_default());
        }
        lists
    });
    let mut out = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    let mut p = 0usize;
    for (j, list) in lists.iter().enumerate() {
        let end = ((j + 1) * seg).min(limit);
        let mut i = 0;
        while p < end {
            while i < list.len() && list[i].0 < p {
                i += 1;
            }
            let chunk = if i < list.len() && list[i].0 == p {
                i += 1;
                list[i - 1]
            } else {
                (p, chunker.cut(&buf[p..]))
            };
            out.push(chunk);
            p += chunk.1;
        }
    }
    out
}

/// Zero check, hash, dedup and seal each chunk; in parallel when there are
/// several sealers. Returns the content references in order.
fn process_chunks(
    sink: &Sink,
    monitor: &Monitor,
    sealers: &mut [BlobWriter],
    buf: &[u8],
    chunks: &[(usize, usize)],
) -> Result<Vec<ContentRef>> {
    let one = |sealer: &mut BlobWriter, (start, len): (usize, usize)| -> Result<ContentRef> {
        let chunk = &buf[start..start + len];
        monitor.stats.add_bytes(len as u64);
        // Progress while a large file is read, not only when it ends.
        monitor.report_progress(false);
        if is_zero(chunk) {
            return Ok(ContentRef {
                id: None,
                len: len as u64,
            });
        }
        let id = sink.dedup_and_store(sealer, BlobType::Data, chunk)?;
        Ok(ContentRef {
            id: Some(id),
            len: len as u64,
        })
    };
    if sealers.len() <= 1 || chunks.len() <= 1 {
        let Some(sealer) = sealers.first_mut() else {
            return Err(Error::InvalidArgument("no sealer".into()));
        };
        return chunks.iter().map(|c| one(sealer, *c)).collect();
    }
    // Split into contiguous groups of about equal bytes, one per sealer.
    let total: usize = chunks.iter().map(|c| c.1).sum();
    let per = total.div_ceil(sealers.len());
    let mut groups: Vec<&[(usize, usize)]> = Vec::new();
    let (mut from, mut acc) = (0, 0);
    for (i, c) in chunks.iter().enumerate() {
        acc += c.1;
        if acc >= per && groups.len() + 1 < sealers.len() {
            groups.push(&chunks[from..=i]);
            from = i + 1;
            acc = 0;
        }
    }
    groups.push(&chunks[from..]);
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .zip(sealers.iter_mut())
            .map(|(group, sealer)| {
                s.spawn(move || {
                    group
                        .iter()
                        .map(|c| one(sealer, *c))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(chunks.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| Error::Internal("a chunk worker panicked".into()))??,
            );
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_repo_format::chunker::ChunkerParams;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        // Zero runs and repeats, where boundaries behave differently.
        let z = (len / 4).min(70_000);
        out[len / 3..len / 3 + z].fill(0);
        let copy = out[..len / 5].to_vec();
        out[len / 2..len / 2 + copy.len()].copy_from_slice(&copy);
        out
    }

    #[test]
    fn parallel_segments_give_the_same_chunks_as_one_pass() {
        let params = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        };
        let chunker = Chunker::new(&[9; 32], params).unwrap();
        for (len, seed) in [
            (1_000_000, 1u8),
            (777_777, 2),
            (40_000, 3),
            (16_384 * 3 + 5, 4),
        ] {
            let buf = data(len, seed);
            let serial = cuts_from(&chunker, &buf, 0, buf.len());
            for seg in [32_768, 50_000, 100_003, 400_000] {
                for par in [2, 3, 8] {
                    let got = plan_chunks(&chunker, &buf, buf.len(), seg, par);
                    assert_eq!(got, serial, "len {len} seg {seg} par {par}");
                }
            }
        }
    }
}
