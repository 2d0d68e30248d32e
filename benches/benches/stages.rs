//! One benchmark per pipeline stage, reported in MiB/s.

use coffer_repo_format::blob::{BlobSealer, BlobType, Compression};
use coffer_repo_format::chunker::{is_zero, ChunkerParams};
use coffer_repo_format::envelope::Context;
use coffer_repo_format::keys::MasterKey;
use coffer_repo_format::pack::{self, PackEntry};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const SIZE: usize = 16 << 20;

fn stages(c: &mut Criterion) {
    let data = coffer_benches::volume_like(SIZE);
    let key = MasterKey::generate().unwrap();
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);

    let chunker = key.chunker(ChunkerParams::default()).unwrap();
    g.bench_function("chunk (FastCDC, 1 MiB avg)", |b| {
        b.iter(|| black_box(chunker.chunks(&data).count()))
    });
    g.bench_function("zero check", |b| b.iter(|| black_box(is_zero(&data))));
    g.bench_function("hash (keyed BLAKE3)", |b| {
        b.iter(|| black_box(key.blob_id(&data)))
    });
    for level in [1, 3] {
        let mut comp = zstd::bulk::Compressor::new(level).unwrap();
        g.bench_function(format!("compress (zstd {level})"), |b| {
            b.iter(|| black_box(comp.compress(&data).unwrap().len()))
        });
    }
    let compressed = zstd::bulk::compress(&data, 3).unwrap();
    g.bench_function("decompress (zstd)", |b| {
        b.iter(|| black_box(zstd::bulk::decompress(&compressed, SIZE).unwrap().len()))
    });
    let mut sealer = key.sealer().unwrap();
    g.bench_function("encrypt (AES-256-GCM envelope)", |b| {
        b.iter(|| black_box(sealer.seal(Context::Index, &data).unwrap().len()))
    });
    // Packing: seal every 1 MiB chunk as a blob and build a pack.
    let mut blob_sealer = BlobSealer::new(&key, Compression::Zstd(3)).unwrap();
    let mut header_sealer = key.sealer().unwrap();
    g.bench_function("seal blobs and pack (zstd 3 + AES-GCM)", |b| {
        b.iter(|| {
            let mut bytes = Vec::with_capacity(SIZE);
            let mut entries = Vec::new();
            for chunk in data.chunks(1 << 20) {
                let id = key.blob_id(chunk);
                let s = blob_sealer.seal(BlobType::Data, id, chunk).unwrap();
                entries.push(PackEntry {
                    blob_type: BlobType::Data,
                    id,
                    offset: bytes.len() as u32,
                    stored_len: s.bytes.len() as u32,
                    raw_len: s.raw_len,
                });
                bytes.extend_from_slice(&s.bytes);
            }
            pack::finish_pack(&mut header_sealer, &mut bytes, &entries).unwrap();
            black_box(bytes.len())
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
