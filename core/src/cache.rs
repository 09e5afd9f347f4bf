//! The cell cache under `runs/cache/`: what a run, `status` and `gc` need of each committed
//! cell (its stage, content digest and files' stat memo), read from a few files instead of a
//! manifest and a memo per cell.
//!
//! It is derived and never trusted over the store: an entry also holds the stat of the cell's
//! manifest when it was taken, and is used only while `stat(manifest.json)` still matches (size,
//! mtime, ctime, inode: a write or a replacement changes the ctime, which no user can set back;
//! a removed cell has no manifest). A file whose stat differs from its memo is re-hashed as
//! before. A cell without a usable entry is read from its own files, and its entry recorded.
//!
//! Each process that records entries appends them to its own segment `<pid>.<nanos>.cells`,
//! holding the segment's lock while it lives; [`merge`] (when a run ends with more than
//! [`MERGE_AT`] segments, and at every `gc`) rewrites the readable entries of every unlocked
//! segment, for cells still in the store, into one `merged-<nanos>-<pid>.cells`, then removes the
//! files it read. Every record carries its length and a CRC-32; a file is read up to its first
//! bad record (a torn append, damage), and whatever is lost is read from the cells again. No
//! write here is fsynced: losing any of it costs time, never a wrong answer.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::memo::Stamp;

/// Unlocked segments past which a run merges the cache when it ends.
pub const MERGE_AT: usize = 16;

const MAGIC: &[u8] = b"spo-pipe cell cache v1\n";
const EXT: &str = "cells";
const MERGED: &str = "merged-";

/// A committed cell as the cache records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The stat of `manifest.json` when the entry was taken.
    pub manifest: Stamp,
    pub stage: String,
    /// The cell's content digest, hex.
    pub digest: String,
    /// Each file of the manifest, with its stat when its bytes last matched.
    pub files: Vec<(String, Stamp)>,
}

/// The cache of one store: loaded on first use, appended to as cells are read or committed.
#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    loaded: OnceLock<Loaded>,
    segment: Mutex<Option<Segment>>,
}

/// The readable records of every file, and where each key's latest one starts.
#[derive(Debug, Default)]
struct Loaded {
    files: Vec<Vec<u8>>,
    /// key → where its payload lies: file, offset in it, length.
    index: HashMap<[u8; 32], Span, BuildHasherDefault<KeyHasher>>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    file: u32,
    at: u32,
    len: u32,
}

impl Loaded {
    fn payload(&self, s: Span) -> &[u8] {
        let (at, len) = (s.at as usize, s.len as usize);
        &self.files[s.file as usize][at..at + len]
    }
}

/// Keys are SHA-256 digests, so their first eight bytes hash them well enough.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
}

impl Cache {
    pub(crate) fn new(dir: PathBuf) -> Cache {
        Cache {
            dir,
            loaded: OnceLock::new(),
            segment: Mutex::new(None),
        }
    }

    /// Reads the cache's files now rather than at the first [`Cache::get`].
    pub(crate) fn load(&self) {
        self.loaded();
    }

    /// The cache's files, read at the first call.
    fn loaded(&self) -> &Loaded {
        self.loaded.get_or_init(|| Loaded::read(&self.dir))
    }

    /// The entry recorded for `key`, if any (not yet checked against the store).
    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        let l = self.loaded();
        let span = *l.index.get(&raw_key(key)?)?;
        decode(l.payload(span))
    }

    /// Appends an entry for `key` to this process's segment. The cache is a hint, so a failure
    /// is logged, not returned.
    pub(crate) fn record(&self, key: &str, entry: &Entry) {
        let Some(raw) = raw_key(key) else { return };
        let Some(payload) = encode(&raw, entry) else {
            return;
        };
        let mut g = self.segment.lock().unwrap_or_else(|p| p.into_inner());
        let r = match &mut *g {
            Some(s) => s.append(&payload),
            None => Segment::create(&self.dir).and_then(|mut s| {
                s.append(&payload)?;
                *g = Some(s);
                Ok(())
            }),
        };
        if let Err(e) = r {
            tracing::debug!("could not record a cell-cache entry: {e}");
        }
    }

    /// Merges the cache when more than [`MERGE_AT`] segments are unlocked. `store` is the
    /// directory of committed cells.
    pub(crate) fn merge_if_due(&self, store: &Path) -> Result<usize, Error> {
        self.close_segment();
        let segments = files(&self.dir)?;
        if segments.iter().filter(|p| !is_merged(p)).count() > MERGE_AT {
            self.merge(store)
        } else {
            Ok(0)
        }
    }

    /// Merges every unlocked file into one, keeping the latest entry of each cell still in
    /// `store`; returns how many files it replaced (0 if another process is merging).
    pub(crate) fn merge(&self, store: &Path) -> Result<usize, Error> {
        self.close_segment();
        let lock_path = self.dir.join(".merge.lock");
        let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(0),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let mut taken = Vec::new();
        let mut all = Loaded::default();
        for path in files(&self.dir)? {
            // A live process's segment is still growing: leave it.
            let Ok(f) = File::open(&path) else { continue };
            if f.try_lock().is_err() {
                continue;
            }
            if let Ok(b) = fs::read(&path) {
                all.add_file(b);
            }
            taken.push((path, f));
        }
        if taken.len() < 2 {
            return Ok(0);
        }
        let live: HashSet<[u8; 32]> = fs::read_dir(store)
            .map_err(|e| Error::io(store, e))?
            .filter_map(|e| raw_key(&e.ok()?.file_name().to_string_lossy()))
            .collect();
        let mut out = MAGIC.to_vec();
        for (k, &span) in &all.index {
            let b = all.payload(span);
            if live.contains(k) && decode(b).is_some() {
                frame(&mut out, b);
            }
        }
        let nanos = unix_nanos();
        let name = format!("{MERGED}{nanos}-{}.{EXT}", std::process::id());
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(name);
        fs::write(&tmp, &out).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        for (p, _) in &taken {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(p, e)),
            }
        }
        Ok(taken.len())
    }

    /// Ends this process's segment, so a merge may take it.
    fn close_segment(&self) {
        *self.segment.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Segment {
    fn create(dir: &Path) -> io::Result<Segment> {
        let path = dir.join(format!("{}.{}.{EXT}", std::process::id(), unix_nanos()));
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.lock()?;
        file.write_all(MAGIC)?;
        Ok(Segment { path, file })
    }

    fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut rec = Vec::with_capacity(payload.len() + 8);
        frame(&mut rec, payload);
        self.file
            .write_all(&rec)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

impl Loaded {
    /// Every readable record of every file in `dir`. Nothing readable: empty.
    fn read(dir: &Path) -> Loaded {
        let mut l = Loaded::default();
        for path in files(dir).unwrap_or_default() {
            // A file merged away meanwhile: its entries are in the merged file, or are read
            // from the cells.
            if let Ok(b) = fs::read(&path) {
                l.add_file(b);
            }
        }
        l
    }

    /// The whole records of one file, up to its first bad one (none without the magic line);
    /// each replaces any earlier record of its key. Payloads are decoded when used.
    fn add_file(&mut self, file: Vec<u8>) {
        let Some(body) = file.strip_prefix(MAGIC) else {
            return;
        };
        let Ok(n) = u32::try_from(self.files.len()) else {
            return;
        };
        let mut at = MAGIC.len();
        let mut rest = body;
        while let Some((payload, next)) = unframe(rest) {
            let (Some(key), Ok(start), Ok(len)) = (
                payload.get(..32).and_then(|k| <[u8; 32]>::try_from(k).ok()),
                u32::try_from(at + 8),
                u32::try_from(payload.len()),
            ) else {
                break;
            };
            self.index.insert(
                key,
                Span {
                    file: n,
                    at: start,
                    len,
                },
            );
            at += 8 + payload.len();
            rest = next;
        }
        self.files.push(file);
    }
}

/// `len (u32 LE) | crc32 (u32 LE) | payload`.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of the record at the start of `b` if it is whole and its checksum holds, and
/// what follows it.
fn unframe(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let payload = b.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload, &b[8 + len..]))
}

/// `key | manifest stamp | digest | stage | file count | (path, stamp) per file`; strings are
/// a u16 LE length and UTF-8, the count a u32 LE. None for what it cannot hold.
fn encode(key: &[u8; 32], e: &Entry) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128 + e.files.len() * 64);
    out.extend_from_slice(key);
    put_stamp(&mut out, &e.manifest);
    out.extend_from_slice(&raw_key(&e.digest)?);
    put_str(&mut out, &e.stage)?;
    out.extend_from_slice(&u32::try_from(e.files.len()).ok()?.to_le_bytes());
    for (path, s) in &e.files {
        put_str(&mut out, path)?;
        put_stamp(&mut out, s);
    }
    Some(out)
}

/// The entry whose payload is exactly `b`.
fn decode(b: &[u8]) -> Option<Entry> {
    let mut r = Reader(b, 0);
    r.take(32)?;
    let manifest = r.stamp()?;
    let digest = crate::key::to_hex(r.take(32)?);
    let stage = r.str()?;
    let n = r.u32()?;
    let mut files = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        files.push((r.str()?, r.stamp()?));
    }
    (r.1 == b.len()).then_some(Entry {
        manifest,
        stage,
        digest,
        files,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

fn put_stamp(out: &mut Vec<u8>, s: &Stamp) {
    for v in [s.bytes, s.ino] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [s.mtime.0, s.mtime.1, s.ctime.0, s.ctime.1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8], usize);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.0.get(self.1..self.1.checked_add(n)?)?;
        self.1 += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(n))?.to_vec()).ok()
    }
    fn stamp(&mut self) -> Option<Stamp> {
        Some(Stamp {
            bytes: self.u64()?,
            ino: self.u64()?,
            mtime: (self.i64()?, self.i64()?),
            ctime: (self.i64()?, self.i64()?),
        })
    }
}

/// A 64-digit lowercase hex key (or digest) as bytes; None for anything else (never cached).
/// One pass over the digits (a run decodes a few per cell).
pub(crate) fn raw_key(key: &str) -> Option<[u8; 32]> {
    let b = key.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The cache's files in `dir`, oldest first (merged files by their merge time, segments by
/// their creation time).
fn files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out: Vec<(u128, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = e.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let nanos = match name.strip_prefix(MERGED) {
            Some(m) => m.split('-').next(),
            None => name.split('.').nth(1),
        };
        out.push((nanos.and_then(|n| n.parse().ok()).unwrap_or(0), path));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

fn is_merged(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(MERGED))
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest_byte: char, files: usize) -> Entry {
        let stamp = |n: u64| Stamp {
            bytes: n,
            mtime: (n as i64, 1),
            ctime: (2, n as i64),
            ino: n + 7,
        };
        Entry {
            manifest: stamp(1),
            stage: "train".into(),
            digest: digest_byte.to_string().repeat(64),
            files: (0..files)
                .map(|i| (format!("f{i}.bin"), stamp(i as u64)))
                .collect(),
        }
    }

    fn key(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn file(records: &[(&str, &Entry)]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (k, e) in records {
            frame(&mut out, &encode(&raw_key(k).unwrap(), e).unwrap());
        }
        out
    }

    fn loaded(files: Vec<Vec<u8>>) -> Loaded {
        let mut l = Loaded::default();
        for f in files {
            l.add_file(f);
        }
        l
    }

    fn get(l: &Loaded, k: &str) -> Option<Entry> {
        decode(l.payload(*l.index.get(&raw_key(k).unwrap())?))
    }

    #[test]
    fn entries_read_back_and_the_latest_record_of_a_key_wins() {
        let (a, b, a2) = (entry('a', 2), entry('b', 0), entry('c', 1));
        let l = loaded(vec![
            file(&[(&key('1'), &a), (&key('2'), &b)]),
            file(&[(&key('1'), &a2)]),
        ]);
        assert_eq!(get(&l, &key('1')), Some(a2));
        assert_eq!(get(&l, &key('2')), Some(b));
        assert_eq!(get(&l, &key('3')), None);
    }

    #[test]
    fn a_file_is_read_up_to_its_first_bad_record() {
        let (a, b) = (entry('a', 1), entry('b', 1));
        let whole = file(&[(&key('1'), &a), (&key('2'), &b)]);
        let torn = whole[..whole.len() - 3].to_vec();
        let l = loaded(vec![torn]);
        assert_eq!(get(&l, &key('1')), Some(a.clone()));
        assert_eq!(get(&l, &key('2')), None);

        let mut flipped = whole.clone();
        let at = MAGIC.len() + 8 + 40;
        flipped[at] ^= 1;
        assert!(loaded(vec![flipped]).index.is_empty(), "CRC catches it");

        let mut no_magic = whole;
        no_magic[0] = b'S';
        assert!(loaded(vec![no_magic]).index.is_empty());
    }

    #[test]
    fn a_payload_with_bytes_to_spare_or_missing_is_no_entry() {
        let e = entry('a', 1);
        let mut p = encode(&raw_key(&key('1')).unwrap(), &e).unwrap();
        assert_eq!(decode(&p), Some(e));
        p.push(0);
        assert_eq!(decode(&p), None);
        p.truncate(p.len() - 2);
        assert_eq!(decode(&p), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn only_hex_sha256_keys_are_cached() {
        assert!(raw_key(&key('f')).is_some());
        assert!(raw_key(&key('F')).is_none());
        assert!(raw_key("abc").is_none());
        let k = "0123456789abcdef".repeat(4);
        assert_eq!(raw_key(&k).map(hex::encode), Some(k.clone()));
        assert!(raw_key(&k.replace('9', "g")).is_none());
        assert!(raw_key(&format!("{}é", &k[..62])).is_none());
    }
}
