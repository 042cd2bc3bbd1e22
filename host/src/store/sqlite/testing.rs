//! Damage for the integrity tests of a SQLite store file (the store's own, and the service's end to end).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Writes garbage over the last quarter of the file's pages (where the runs last enqueued are), leaving the header
/// page and the schema's pages at the front as they were. In place, as a failing disk would, so a store that keeps
/// the file open sees it. Returns how many pages were overwritten.
pub fn corrupt_tail_pages(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        size => usize::from(size),
    };
    let pages = bytes.len() / page_size;
    assert!(pages > 40, "the file has only {pages} pages");
    let first = pages - pages / 4;
    let garbage: Vec<u8> =
        (0..bytes.len() - first * page_size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(0x5a)).collect();
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start((first * page_size) as u64)).unwrap();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
    pages - first
}
