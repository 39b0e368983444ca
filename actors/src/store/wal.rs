//! An append-only write-ahead log in segment files: the raft log's storage.
//!
//! Raft only ever appends at the end, cuts the uncommitted tail (truncate) and drops a
//! committed prefix (purge). A B-tree pays for random updates that never come: every
//! commit rewrote a chain of pages (a follower spent a third of its CPU there under the
//! scheduling bench). Here a batch of records is one `write` at the end of the current
//! segment and one `fdatasync`; truncations and purges are records too, and a purge
//! unlinks whole segments once nothing in them is still wanted.
//!
//! A record on disk: `len: u32 LE` (of the body), `crc32(body): u32 LE`, body. Body: a
//! kind byte, then for an entry its index (u64 LE) and bytes; for a metadata value its
//! key byte and bytes; for a truncation or purge the index (u64 LE). Opening replays
//! every segment in order. A torn or corrupt record at the end of the last segment is a
//! write that never completed (nobody was told it was durable): the segment is cut back
//! to the last whole record. Anywhere else it is corruption, and opening fails.
//!
//! Each new segment starts with the metadata then current (vote, committed, purged)
//! and the purge point, so older segments can be deleted without losing them.
//!
//! One writer at a time: the log holds an exclusive `flock` on `LOCK` in its folder for
//! as long as it is open, so a second member started on the same data folder is refused,
//! and a replica reopening after a restart waits for the last writes of its previous
//! incarnation's writer thread to finish rather than interleave with them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long opening waits for the log's previous writer to let go of it.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A segment is closed and a new one begun once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The frame around each record's body: its length and its CRC-32.
const FRAME: usize = 8;
/// No record body is larger (a raft entry is one batch of client writes).
const MAX_BODY: usize = 1 << 30;

const ENTRY: u8 = 1;
const META: u8 = 2;
const TRUNCATE: u8 = 3;
const PURGE: u8 = 4;

/// The metadata values the log keeps beside its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum MetaKey {
    Vote = 1,
    Committed = 2,
    Purged = 3,
}

impl MetaKey {
    const ALL: [MetaKey; 3] = [MetaKey::Vote, MetaKey::Committed, MetaKey::Purged];

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// One change to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Entry {
        index: u64,
        bytes: &'a [u8],
    },
    Meta {
        key: MetaKey,
        bytes: &'a [u8],
    },
    /// Drops the entries from `since` on.
    Truncate {
        since: u64,
    },
    /// Drops the entries up to `upto`, inclusive.
    Purge {
        upto: u64,
    },
}

impl Record<'_> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME]);
        match self {
            Record::Entry { index, bytes } => {
                out.push(ENTRY);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Record::Meta { key, bytes } => {
                out.push(META);
                out.push(*key as u8);
                out.extend_from_slice(bytes);
            }
            Record::Truncate { since } => {
                out.push(TRUNCATE);
                out.extend_from_slice(&since.to_le_bytes());
            }
            Record::Purge { upto } => {
                out.push(PURGE);
                out.extend_from_slice(&upto.to_le_bytes());
            }
        }
        let body = &out[start + FRAME..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    }

    /// Where an entry's bytes begin within its encoded record.
    const ENTRY_BYTES_AT: usize = FRAME + 1 + 8;
}

/// Where one entry's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

/// What readers see of the log: where each durable entry is, and the metadata. The
/// writer updates it after each durable write.
#[derive(Default)]
struct Index {
    entries: BTreeMap<u64, Loc>,
    files: BTreeMap<u64, Arc<File>>,
    meta: BTreeMap<MetaKey, Vec<u8>>,
    purged: Option<u64>,
}

impl Index {
    /// Applies `record`, whose frame starts at byte `at` of segment `segment`; gives the
    /// index of the entry it adds, if it is one.
    fn apply(&mut self, segment: u64, record: &Record, at: u64) -> Option<u64> {
        match record {
            Record::Entry { index, bytes } => {
                let offset = at + Record::ENTRY_BYTES_AT as u64;
                self.entries.insert(*index, Loc { segment, offset, len: bytes.len() as u32 });
                return Some(*index);
            }
            Record::Meta { key, bytes } => {
                self.meta.insert(*key, bytes.to_vec());
            }
            Record::Truncate { since } => {
                self.entries.split_off(since);
            }
            Record::Purge { upto } => {
                self.entries = self.entries.split_off(&(upto + 1));
                self.purged = self.purged.max(Some(*upto));
            }
        }
        None
    }
}

/// Reads the log's durable entries and metadata; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct WalReader {
    index: Arc<RwLock<Index>>,
}

impl WalReader {
    /// The bytes of the durable entries with indexes in `range`, in order; `take` says,
    /// for each entry's size, whether to go on (the entry is then included).
    pub fn entries(
        &self,
        range: (std::ops::Bound<u64>, std::ops::Bound<u64>),
        mut take: impl FnMut(usize) -> bool,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let places: Vec<(u64, Loc, Arc<File>)> = {
            let index = self.index.read().unwrap();
            let mut places = Vec::new();
            for (i, loc) in index.entries.range(range) {
                if !take(loc.len as usize) {
                    break;
                }
                let file = index.files.get(&loc.segment).ok_or_else(|| corrupt("an entry's segment is gone"))?;
                places.push((*i, *loc, file.clone()));
            }
            places
        };
        places
            .into_iter()
            .map(|(i, loc, file)| {
                let mut bytes = vec![0; loc.len as usize];
                file.read_exact_at(&mut bytes, loc.offset)?;
                Ok((i, bytes))
            })
            .collect()
    }

    /// The index of the last durable entry.
    pub fn last_index(&self) -> Option<u64> {
        self.index.read().unwrap().entries.last_key_value().map(|(i, _)| *i)
    }

    pub fn meta(&self, key: MetaKey) -> Option<Vec<u8>> {
        self.index.read().unwrap().meta.get(&key).cloned()
    }
}

/// The writing end: one per log, owned by its writer thread.
pub struct Wal {
    dir: PathBuf,
    /// The segment being appended to: its number, file and length.
    current: (u64, Arc<File>, u64),
    /// The highest entry index each segment (the current one too) holds.
    highest: BTreeMap<u64, Option<u64>>,
    index: Arc<RwLock<Index>>,
    buf: Vec<u8>,
    /// `SEGMENT_BYTES`, smaller in tests.
    segment_bytes: u64,
    /// Holds the folder's lock while open.
    _lock: File,
}

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.wal"))
}

/// The numbers of the segments in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else { continue };
        if let Ok(n) = stem.parse() {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Takes the exclusive lock on `dir`'s `LOCK` file, waiting up to `wait` for whoever holds it.
fn lock(dir: &Path, wait: Duration) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("LOCK"))?;
    let since = Instant::now();
    loop {
        // SAFETY: flock(2) on a descriptor this function holds open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if since.elapsed() >= wait {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the raft log in {} is in use (another member on this data folder?)", dir.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Creates segment `n`, empty, and makes its name durable.
fn create_segment(dir: &Path, n: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, n))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Decodes the records of one segment's bytes, calling `each` with every record and the
/// offset of its frame; returns where the last whole record ends.
fn replay_segment(bytes: &[u8], mut each: impl FnMut(Record, u64)) -> Result<u64, (u64, &'static str)> {
    let mut at = 0usize;
    while at < bytes.len() {
        let fail = |why| Err((at as u64, why));
        let Some(frame) = bytes.get(at..at + FRAME) else { return fail("a torn frame") };
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().unwrap());
        let Some(body) = bytes.get(at + FRAME..at + FRAME + len) else { return fail("a torn record") };
        if len == 0 || crc32fast::hash(body) != crc {
            return fail("a record whose checksum does not match");
        }
        let index = |b: &[u8]| b.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let record = match (body[0], &body[1..]) {
            (ENTRY, rest) if rest.len() >= 8 => Record::Entry { index: index(rest).unwrap(), bytes: &rest[8..] },
            (META, [key, rest @ ..]) => match MetaKey::from_byte(*key) {
                Some(key) => Record::Meta { key, bytes: rest },
                None => return fail("an unknown metadata key"),
            },
            (TRUNCATE, rest) if rest.len() == 8 => Record::Truncate { since: index(rest).unwrap() },
            (PURGE, rest) if rest.len() == 8 => Record::Purge { upto: index(rest).unwrap() },
            _ => return fail("an unknown record"),
        };
        each(record, at as u64);
        at += FRAME + len;
    }
    Ok(at as u64)
}

impl Wal {
    /// Opens (creating) the log in `dir`, replaying what is there.
    pub fn open(dir: &Path) -> io::Result<(Self, WalReader)> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    fn open_waiting(dir: &Path, wait: Duration) -> io::Result<(Self, WalReader)> {
        std::fs::create_dir_all(dir)?;
        let lock = lock(dir, wait)?;
        let mut index = Index::default();
        let mut highest = BTreeMap::new();
        let found = segments(dir)?;
        let mut current = None;
        for (i, &n) in found.iter().enumerate() {
            let path = segment_path(dir, n);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let bytes = std::fs::read(&path)?;
            let mut high = None;
            let replayed = replay_segment(&bytes, |record, at| {
                high = high.max(index.apply(n, &record, at));
            });
            let end = match replayed {
                Ok(end) => end,
                // The last segment's tail: a write nobody was told was durable.
                Err((at, why)) if i + 1 == found.len() => {
                    tracing::warn!(segment = %path.display(), at, why, "cutting off an unfinished write");
                    file.set_len(at)?;
                    file.sync_all()?;
                    at
                }
                Err((at, why)) => {
                    return Err(corrupt(format!("the raft log segment {} has {why} at byte {at}", path.display())))
                }
            };
            let file = Arc::new(file);
            index.files.insert(n, file.clone());
            highest.insert(n, high);
            current = Some((n, file, end));
        }
        let current = match current {
            Some(current) => current,
            None => {
                let file = Arc::new(create_segment(dir, 0)?);
                index.files.insert(0, file.clone());
                highest.insert(0, None);
                (0, file, 0)
            }
        };
        let purged = index.purged;
        let index = Arc::new(RwLock::new(index));
        let reader = WalReader { index: index.clone() };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            current,
            highest,
            index,
            buf: Vec::new(),
            segment_bytes: SEGMENT_BYTES,
            _lock: lock,
        };
        // Segments a purge left behind when the process stopped before deleting them.
        if let Some(upto) = purged {
            wal.drop_segments(upto)?;
        }
        Ok((wal, reader))
    }

    /// Starts segment `n` with the metadata and purge point as they are now, durably.
    fn begin_segment(&mut self, n: u64) -> io::Result<()> {
        let file = create_segment(&self.dir, n)?;
        let mut head = Vec::new();
        {
            let index = self.index.read().unwrap();
            for (key, bytes) in &index.meta {
                Record::Meta { key: *key, bytes }.encode_into(&mut head);
            }
            if let Some(upto) = index.purged {
                Record::Purge { upto }.encode_into(&mut head);
            }
        }
        file.write_all_at(&head, 0)?;
        file.sync_data()?;
        let file = Arc::new(file);
        self.index.write().unwrap().files.insert(n, file.clone());
        self.highest.insert(n, None);
        self.current = (n, file, head.len() as u64);
        Ok(())
    }

    /// Appends `records` in order with one write, then, if `sync`, makes them durable
    /// before returning. Readers see them once this returns.
    pub fn write(&mut self, records: &[Record], sync: bool) -> io::Result<()> {
        if self.current.2 >= self.segment_bytes {
            self.begin_segment(self.current.0 + 1)?;
        }
        let (n, file, start) = self.current.clone();
        self.buf.clear();
        let mut places = Vec::with_capacity(records.len());
        for record in records {
            let at = self.buf.len();
            record.encode_into(&mut self.buf);
            if self.buf.len() - at - FRAME > MAX_BODY {
                return Err(corrupt(format!("a raft log record of {} bytes", self.buf.len() - at)));
            }
            places.push(start + at as u64);
        }
        if let Err(e) = file.write_all_at(&self.buf, start).and_then(|()| if sync { file.sync_data() } else { Ok(()) })
        {
            // Nothing of this write counts: cut it off so the next one follows whole records.
            let _ = file.set_len(start);
            return Err(e);
        }
        self.current.2 = start + self.buf.len() as u64;
        let mut purged = None;
        {
            let mut index = self.index.write().unwrap();
            let high = self.highest.entry(n).or_default();
            for (record, at) in records.iter().zip(places) {
                *high = (*high).max(index.apply(n, record, at));
                if let Record::Purge { upto } = record {
                    purged = Some(*upto);
                }
            }
        }
        if let Some(upto) = purged {
            self.drop_segments(upto)?;
        }
        Ok(())
    }

    /// Deletes the oldest segments while every entry they hold is purged (never the
    /// current one, which holds the metadata's latest values).
    fn drop_segments(&mut self, upto: u64) -> io::Result<()> {
        while let Some((&n, &high)) = self.highest.first_key_value() {
            if n == self.current.0 || high.is_some_and(|h| h > upto) {
                break;
            }
            std::fs::remove_file(segment_path(&self.dir, n))?;
            self.highest.remove(&n);
            self.index.write().unwrap().files.remove(&n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound::Unbounded;

    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("keelson-wal-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn all(reader: &WalReader) -> Vec<(u64, Vec<u8>)> {
        reader.entries((Unbounded, Unbounded), |_| true).unwrap()
    }

    fn entry(index: u64, bytes: &[u8]) -> Record<'_> {
        Record::Entry { index, bytes }
    }

    #[test]
    fn what_was_written_is_read_back_after_reopening() {
        let scratch = Scratch::new("reopen");
        {
            let (mut wal, reader) = Wal::open(&scratch.0).unwrap();
            wal.write(&[entry(1, b"one"), entry(2, b"two"), Record::Meta { key: MetaKey::Vote, bytes: b"v1" }], true)
                .unwrap();
            wal.write(&[entry(3, b"three"), entry(4, b"four")], true).unwrap();
            wal.write(&[Record::Truncate { since: 3 }, entry(3, b"THREE")], true).unwrap();
            wal.write(&[Record::Meta { key: MetaKey::Purged, bytes: b"p1" }, Record::Purge { upto: 1 }], true).unwrap();
            wal.write(&[Record::Meta { key: MetaKey::Vote, bytes: b"v2" }], true).unwrap();
            assert_eq!(all(&reader), [(2, b"two".to_vec()), (3, b"THREE".to_vec())]);
        }
        let (_, reader) = Wal::open(&scratch.0).unwrap();
        assert_eq!(all(&reader), [(2, b"two".to_vec()), (3, b"THREE".to_vec())]);
        assert_eq!(reader.last_index(), Some(3));
        assert_eq!(reader.meta(MetaKey::Vote).as_deref(), Some(&b"v2"[..]));
        assert_eq!(reader.meta(MetaKey::Purged).as_deref(), Some(&b"p1"[..]));
        assert_eq!(reader.meta(MetaKey::Committed), None);
        let mut sizes = Vec::new();
        let some = reader.entries((Unbounded, Unbounded), |n| {
            sizes.push(n);
            sizes.len() < 2
        });
        assert_eq!(some.unwrap(), [(2, b"two".to_vec())], "the reader stops where it is told");
    }

    #[test]
    fn an_unfinished_write_at_the_end_is_cut_off_and_corruption_before_it_is_refused() {
        let scratch = Scratch::new("torn");
        {
            let (mut wal, _) = Wal::open(&scratch.0).unwrap();
            wal.write(&[entry(1, b"one"), entry(2, b"two")], true).unwrap();
        }
        let path = segment_path(&scratch.0, 0);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = Vec::new();
        entry(3, b"three").encode_into(&mut torn);
        std::fs::write(&path, [&whole[..], &torn[..torn.len() - 2]].concat()).unwrap();
        {
            let (mut wal, reader) = Wal::open(&scratch.0).unwrap();
            assert_eq!(reader.last_index(), Some(2), "the torn record is gone");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole.len() as u64);
            wal.write(&[entry(3, b"three")], true).unwrap();
        }
        assert_eq!(all(&Wal::open(&scratch.0).unwrap().1).len(), 3, "writes after the cut are whole");

        // A flipped bit in a segment that is not the last is corruption, not a torn write.
        {
            let (mut wal, _) = Wal::open(&scratch.0).unwrap();
            wal.segment_bytes = 1;
            wal.write(&[entry(4, b"four")], true).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FRAME + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = Wal::open(&scratch.0).err().expect("a corrupt segment is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn one_writer_at_a_time() {
        let scratch = Scratch::new("lock");
        let (first, _) = Wal::open(&scratch.0).unwrap();
        let err = Wal::open_waiting(&scratch.0, Duration::from_millis(50)).err().expect("a second writer is refused");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        Wal::open_waiting(&scratch.0, Duration::from_millis(50)).expect("free once the first is closed");
    }

    #[test]
    fn purged_segments_are_deleted_and_the_metadata_outlives_them() {
        let scratch = Scratch::new("segments");
        let (mut wal, reader) = Wal::open(&scratch.0).unwrap();
        wal.segment_bytes = 100;
        wal.write(&[Record::Meta { key: MetaKey::Vote, bytes: b"vote" }], true).unwrap();
        for i in 1..=20 {
            wal.write(&[entry(i, &[i as u8; 40])], true).unwrap();
        }
        let before = wal.highest.len();
        assert!(before >= 8, "{before} segments");
        wal.write(&[Record::Meta { key: MetaKey::Purged, bytes: b"10" }, Record::Purge { upto: 10 }], true).unwrap();
        let after = wal.highest.len();
        assert!(after < before && after >= 2, "{before} → {after} segments");
        assert_eq!(segments(&scratch.0).unwrap().len(), after, "the files are gone too");
        drop((wal, reader));
        let (_, reader) = Wal::open(&scratch.0).unwrap();
        assert_eq!(all(&reader).iter().map(|(i, _)| *i).collect::<Vec<_>>(), (11..=20).collect::<Vec<_>>());
        assert_eq!(all(&reader)[0].1, [11; 40]);
        assert_eq!(reader.meta(MetaKey::Vote).as_deref(), Some(&b"vote"[..]));
        assert_eq!(reader.meta(MetaKey::Purged).as_deref(), Some(&b"10"[..]));
    }
}
