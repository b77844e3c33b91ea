//! Copied-input detection: fingerprints of the inputs, and how much of a
//! result they cover.
//!
//! Two kinds of fingerprint:
//! - **lines**: the hash of every line of at least [`MIN_LINE`] bytes (a
//!   copied CSV row, a printed record);
//! - **64-byte runs**: a gear hash (as in FastCDC: `h = (h << 1) + G[b]`,
//!   which depends on exactly the last 64 bytes) at every byte, *winnowed*
//!   as in MOSS — Schleimer, Wilkerson, Aiken, "Winnowing: Local Algorithms
//!   for Document Fingerprinting", SIGMOD 2003: of every [`WINDOW`]
//!   consecutive hashes the smallest is kept, which guarantees that any run
//!   of `WINDOW + 63` (127) bytes shared with a result is found while keeping
//!   about `2 / (WINDOW + 1)` of the hashes.
//!
//! An [`Index`] of the inputs is built once per dataset version (callers
//! cache it); a result is then scanned at every byte: each 64-byte run whose
//! hash the index holds, and each indexed line, counts as copied bytes.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::path::Path;

/// Bytes a run fingerprint covers (the gear hash's reach).
pub const RUN: usize = 64;
/// Hashes per winnowing window.
pub const WINDOW: usize = 64;
/// The shortest line (without its line ending) fingerprinted.
pub const MIN_LINE: usize = 8;
/// Bytes read at a time.
const CHUNK: usize = 1 << 20;
/// Files are fingerprinted in segments of this size, in parallel.
const SEGMENT: u64 = 16 << 20;

/// The gear table: 256 pseudo-random words (SplitMix64 of 0..256, fixed so
/// indexes are comparable across processes).
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Fingerprints are hashes already, but a gear hash's low bits depend only
/// on the last few bytes: one multiply-xorshift spreads them over the bits a
/// hash table indexes by.
#[derive(Default, Clone, Copy)]
pub struct Mix(u64);

impl Mix {
    fn mixed(self, v: u64) -> u64 {
        let x = (v ^ (v >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
}

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = self.mixed(v);
    }
}

type Set = HashSet<u64, BuildHasherDefault<Mix>>;

/// Partitions of a fingerprint set.
const PARTS: usize = 256;

/// A set of fingerprints built in two steps, so that building touches
/// memory in order: values are appended to one buffer per partition, then
/// each partition (small enough for the caches) becomes a hash set.
#[derive(Debug, Clone)]
struct Parts {
    pending: Vec<Vec<u64>>,
    sets: Vec<Set>,
}

impl Default for Parts {
    fn default() -> Parts {
        Parts {
            pending: vec![Vec::new(); PARTS],
            sets: vec![Set::default(); PARTS],
        }
    }
}

impl Parts {
    /// Bits 48–55 of the mixed value: not the low bits a table indexes by,
    /// nor the top 7 it tags entries with (a partition sharing those would
    /// make every probe a match).
    fn part(v: u64) -> usize {
        ((Mix::default().mixed(v) >> 48) & 0xff) as usize
    }

    fn push(&mut self, v: u64) {
        self.pending[Self::part(v)].push(v);
    }

    /// Moves what was pushed into the sets.
    fn seal(&mut self) {
        for (set, pending) in self.sets.iter_mut().zip(&mut self.pending) {
            set.extend(pending.drain(..));
            pending.shrink_to_fit();
        }
    }

    /// Fills the sets from what `from` (one per thread) pushed, each
    /// partition at once, the partitions shared among `threads`.
    fn seal_from(&mut self, from: &[Parts], threads: usize) {
        let per = PARTS.div_ceil(threads.max(1));
        std::thread::scope(|scope| {
            for (c, sets) in self.sets.chunks_mut(per).enumerate() {
                scope.spawn(move || {
                    for (k, set) in sets.iter_mut().enumerate() {
                        let p = c * per + k;
                        set.reserve(from.iter().map(|f| f.pending[p].len()).sum());
                        for f in from {
                            set.extend(f.pending[p].iter().copied());
                        }
                    }
                });
            }
        });
    }

    fn contains(&self, v: u64) -> bool {
        self.sets[Self::part(v)].contains(&v)
    }

    fn len(&self) -> usize {
        self.sets.iter().map(HashSet::len).sum()
    }

    fn merge(&mut self, other: &Parts) {
        for (a, b) in self.sets.iter_mut().zip(&other.sets) {
            a.extend(b.iter().copied());
        }
    }
}

/// The hash of one line (foldhash, fixed seed).
fn line_hash(line: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x0001_a517_u64).hash_one(line)
}

/// A line without its `\r\n` / `\n` ending and surrounding spaces.
fn trim(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

/// The fingerprints of some inputs.
#[derive(Debug, Default, Clone)]
pub struct Index {
    lines: Parts,
    runs: Parts,
    /// Bytes indexed.
    pub bytes: u64,
}

impl Index {
    /// Fingerprints of every regular file under `dirs` (links are not
    /// followed).
    ///
    /// # Errors
    /// When a directory cannot be listed or a file read.
    pub fn build(dirs: &[&Path]) -> std::io::Result<Index> {
        Index::build_in(dirs, SEGMENT)
    }

    /// [`Index::build`] with files cut into `segment`-byte segments,
    /// fingerprinted on every core.
    fn build_in(dirs: &[&Path], segment: u64) -> std::io::Result<Index> {
        let mut jobs = Vec::new();
        for dir in dirs {
            for file in files_under(dir)? {
                let len = file.metadata()?.len();
                let mut start = 0;
                loop {
                    let end = (start + segment).min(len);
                    jobs.push((file.clone(), start, end, len));
                    if end >= len {
                        break;
                    }
                    start = end;
                }
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len())
            .max(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let parts: Vec<std::io::Result<Index>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut index = Index::default();
                        let mut buf = vec![0u8; CHUNK];
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((file, start, end, len)) = jobs.get(i) else {
                                return Ok(index);
                            };
                            index.add_segment(file, *start, *end, *len, &mut buf)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("a fingerprinting thread panicked"))
                    })
                })
                .collect()
        });
        let parts = parts.into_iter().collect::<std::io::Result<Vec<Index>>>()?;
        let mut index = Index {
            bytes: parts.iter().map(|p| p.bytes).sum(),
            ..Index::default()
        };
        let (lines, runs): (Vec<Parts>, Vec<Parts>) =
            parts.into_iter().map(|p| (p.lines, p.runs)).unzip();
        index.lines.seal_from(&lines, threads);
        index.runs.seal_from(&runs, threads);
        Ok(index)
    }

    /// Fingerprints bytes `start..end` of `file` (`len` bytes long): its runs
    /// (reading the 126 bytes before `start` too, so the windows that cross
    /// into the segment are kept) and the lines that begin in it (reading
    /// past `end` to finish the last one).
    fn add_segment(
        &mut self,
        file: &Path,
        start: u64,
        end: u64,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(file)?;
        let read = |at: u64, upto: u64, buf: &mut [u8]| -> std::io::Result<usize> {
            let want = (upto - at).min(buf.len() as u64) as usize;
            let n = f.read_at(&mut buf[..want], at)?;
            if n == 0 && want > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while it was fingerprinted", file.display()),
                ));
            }
            Ok(n)
        };
        let mut state = Scan::default();
        let mut at = start.saturating_sub((RUN - 1 + WINDOW - 1) as u64);
        // The lead-in: runs only; a line it ends inside belongs to the
        // segment before.
        while at < start {
            let n = read(at, start, buf)?;
            state.runs(&buf[..n], &mut self.runs);
            state.skip_line = buf[n - 1] != b'\n';
            at += n as u64;
        }
        while at < end {
            let n = read(at, end, buf)?;
            self.bytes += n as u64;
            state.runs(&buf[..n], &mut self.runs);
            state.lines(&buf[..n], &mut self.lines);
            at += n as u64;
        }
        state.winnow.finish(&mut self.runs);
        // The line the segment ends in, read to its end (lines only).
        let open_line = !state.partial.is_empty() || state.skip_line;
        if end < len && open_line {
            while at < len {
                let n = read(at, len, buf)?;
                let upto = memchr::memchr(b'\n', &buf[..n]).map_or(n, |i| i + 1);
                at += n as u64;
                if state.lines(&buf[..upto], &mut self.lines) {
                    break;
                }
            }
        }
        let line = std::mem::take(&mut state.partial);
        add_line(&line, &mut self.lines);
        Ok(())
    }

    /// Fingerprints `bytes` as one file (tests, benchmarks).
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        let mut state = Scan::default();
        state.feed(bytes, self);
        state.end(self);
        self.seal();
    }

    fn seal(&mut self) {
        self.lines.seal();
        self.runs.seal();
    }

    /// Adds `other`'s fingerprints.
    pub fn merge(&mut self, other: &Index) {
        self.lines.merge(&other.lines);
        self.runs.merge(&other.runs);
        self.bytes += other.bytes;
    }

    /// How many fingerprints it holds (lines, runs).
    pub fn len(&self) -> (usize, usize) {
        (self.lines.len(), self.runs.len())
    }

    /// Whether it holds no fingerprint.
    pub fn is_empty(&self) -> bool {
        self.lines.len() == 0 && self.runs.len() == 0
    }

    /// How much of `data` (one result file) is copied: the bytes covered by
    /// an indexed line or 64-byte run, and the 1-based numbers of up to
    /// `keep` lines holding copied bytes.
    pub fn covered(&self, data: &[u8], keep: usize) -> Coverage {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        // Runs: every position whose last 64 bytes hash to an indexed run.
        let mut h = 0u64;
        for (i, b) in data.iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[*b as usize]);
            if i + 1 >= RUN && self.runs.contains(h) {
                push_span(&mut spans, (i + 1 - RUN, i + 1));
            }
        }
        let mut line_spans = Vec::new();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', data).chain(std::iter::once(data.len())) {
            let line = trim(&data[start..end]);
            if line.len() >= MIN_LINE && self.lines.contains(line_hash(line)) {
                line_spans.push((start, end));
            }
            start = end + 1;
        }
        for s in line_spans {
            push_span(&mut spans, s);
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for s in spans {
            match merged.last_mut() {
                Some(last) if s.0 <= last.1 => last.1 = last.1.max(s.1),
                _ => merged.push(s),
            }
        }
        let bytes = merged.iter().map(|(a, b)| (b - a) as u64).sum();
        let newlines = |d: &[u8]| memchr::memchr_iter(b'\n', d).count() as u64;
        let mut lines: Vec<u64> = Vec::new();
        let (mut line, mut pos) = (1u64, 0usize);
        'spans: for (a, b) in &merged {
            if lines.len() >= keep {
                break;
            }
            // `pos` is where `line` was counted up to; b - 1 is the span's last byte.
            line += newlines(&data[pos..*a]);
            let last = line + newlines(&data[*a..b - 1]);
            for l in line..=last {
                if lines.last() != Some(&l) {
                    lines.push(l);
                    if lines.len() >= keep {
                        break 'spans;
                    }
                }
            }
            (line, pos) = (last, b - 1);
        }
        Coverage { bytes, lines }
    }
}

/// How much of one result is copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Bytes in copied lines or runs.
    pub bytes: u64,
    /// 1-based numbers of the first lines holding copied bytes.
    pub lines: Vec<u64>,
}

/// Adds `s` to `spans`, merging with the last one when they touch (runs come
/// in order).
fn push_span(spans: &mut Vec<(usize, usize)>, s: (usize, usize)) {
    if let Some(last) = spans.last_mut()
        && s.0 >= last.0
        && s.0 <= last.1
    {
        last.1 = last.1.max(s.1);
        return;
    }
    spans.push(s);
}

/// The state of fingerprinting one file, fed in chunks.
#[derive(Default)]
struct Scan {
    /// The gear hash of the last 64 bytes.
    h: u64,
    /// Bytes seen.
    seen: u64,
    winnow: Winnower,
    /// The part of a line the previous chunk ended in.
    partial: Vec<u8>,
    /// The current line began in the previous segment (its owner).
    skip_line: bool,
}

impl Scan {
    fn feed(&mut self, bytes: &[u8], index: &mut Index) {
        index.bytes += bytes.len() as u64;
        self.runs(bytes, &mut index.runs);
        self.lines(bytes, &mut index.lines);
    }

    /// Runs: the hash of every full 64-byte run, winnowed.
    fn runs(&mut self, bytes: &[u8], runs: &mut Parts) {
        let mut h = self.h;
        let full_from = ((RUN as u64 - 1).saturating_sub(self.seen) as usize).min(bytes.len());
        for b in &bytes[..full_from] {
            h = (h << 1).wrapping_add(GEAR[*b as usize]);
        }
        // From here every byte ends a full run: hashes go straight into the
        // winnower's block, a block at a time.
        let w = &mut self.winnow;
        let mut rest = &bytes[full_from..];
        while !rest.is_empty() {
            let take = (WINDOW - w.len).min(rest.len());
            for (slot, b) in w.block[w.len..w.len + take].iter_mut().zip(&rest[..take]) {
                h = (h << 1).wrapping_add(GEAR[*b as usize]);
                *slot = h;
            }
            w.len += take;
            rest = &rest[take..];
            if w.len == WINDOW {
                w.complete(runs);
            }
        }
        self.h = h;
        self.seen += bytes.len() as u64;
    }

    /// Lines; returns whether `bytes` ends a line.
    fn lines(&mut self, bytes: &[u8], lines: &mut Parts) -> bool {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            if self.skip_line {
                self.skip_line = false;
            } else if self.partial.is_empty() {
                add_line(&bytes[start..end], lines);
            } else {
                self.partial.extend_from_slice(&bytes[start..end]);
                let line = std::mem::take(&mut self.partial);
                add_line(&line, lines);
            }
            start = end + 1;
        }
        // A "line" longer than a chunk is no row: only its runs count.
        if !self.skip_line && self.partial.len() < CHUNK {
            self.partial.extend_from_slice(&bytes[start..]);
        }
        start == bytes.len()
    }

    fn end(&mut self, index: &mut Index) {
        self.winnow.finish(&mut index.runs);
        let line = std::mem::take(&mut self.partial);
        add_line(&line, &mut index.lines);
    }
}

fn add_line(line: &[u8], lines: &mut Parts) {
    let line = trim(line);
    if line.len() >= MIN_LINE {
        lines.push(line_hash(line));
    }
}

/// Where winnowed fingerprints go.
trait Sink {
    fn put(&mut self, v: u64);
}

impl Sink for Parts {
    fn put(&mut self, v: u64) {
        self.push(v);
    }
}

impl Sink for Vec<u64> {
    fn put(&mut self, v: u64) {
        self.push(v);
    }
}

/// Streaming winnowing: the minimum of every [`WINDOW`] consecutive
/// hashes, in order, consecutive repeats dropped (van Herk / Gil–Werman:
/// per block of `WINDOW` hashes a suffix minimum, and a running prefix
/// minimum of the next block; a few comparisons per hash, all in L1).
struct Winnower {
    /// The block being filled.
    block: [u64; WINDOW],
    len: usize,
    /// Suffix minima of the previous complete block.
    prev: [u64; WINDOW],
    has_prev: bool,
    last: Option<u64>,
}

impl Default for Winnower {
    fn default() -> Winnower {
        Winnower {
            block: [0; WINDOW],
            len: 0,
            prev: [0; WINDOW],
            has_prev: false,
            last: None,
        }
    }
}

impl Winnower {
    #[cfg(test)]
    fn push(&mut self, h: u64, out: &mut impl Sink) {
        self.block[self.len] = h;
        self.len += 1;
        if self.len == WINDOW {
            self.complete(out);
        }
    }

    fn emit(&mut self, m: u64, out: &mut impl Sink) {
        if self.last != Some(m) {
            out.put(m);
            self.last = Some(m);
        }
    }

    /// The windows starting in the previous block, now that this one is
    /// complete; then this block's suffix minima.
    fn complete(&mut self, out: &mut impl Sink) {
        self.windows_from_prev(WINDOW - 1, out);
        suffix_minima(&self.block, &mut self.prev);
        self.has_prev = true;
        self.len = 0;
    }

    /// The windows starting at offsets `0..=upto` of the previous block
    /// (the one at offset `s > 0` ends in this block at offset `s - 1`).
    fn windows_from_prev(&mut self, upto: usize, out: &mut impl Sink) {
        if !self.has_prev {
            return;
        }
        self.emit(self.prev[0], out);
        if upto == 0 {
            return;
        }
        let mut pre = [0u64; WINDOW];
        prefix_minima(&self.block, &mut pre, upto);
        // Locals, so the loop runs in registers; the minimum rarely changes.
        let prev = &self.prev;
        let mut last = self.last.unwrap_or(u64::MAX);
        for s in 1..=upto {
            let m = prev[s].min(pre[s - 1]);
            if m != last {
                out.put(m);
                last = m;
            }
        }
        self.last = Some(last);
    }

    fn finish(&mut self, out: &mut impl Sink) {
        if self.has_prev {
            self.windows_from_prev(self.len, out);
        } else if let Some(m) = self.block[..self.len].iter().min() {
            // Fewer hashes than one window: their minimum still counts.
            let m = *m;
            self.emit(m, out);
        }
        self.has_prev = false;
        self.len = 0;
    }
}

/// Lanes of the minima scans: independent chains the CPU runs side by side
/// (a single running minimum waits on the previous comparison at every
/// step).
const LANES: usize = 4;
const LANE: usize = WINDOW / LANES;

/// `out[i] = min(block[i..])`.
fn suffix_minima(block: &[u64; WINDOW], out: &mut [u64; WINDOW]) {
    let mut m = [u64::MAX; LANES];
    for i in (0..LANE).rev() {
        for (l, m) in m.iter_mut().enumerate() {
            *m = (*m).min(block[l * LANE + i]);
            out[l * LANE + i] = *m;
        }
    }
    // Each lane's suffix also covers the lanes after it.
    let mut carry = u64::MAX;
    for l in (0..LANES - 1).rev() {
        carry = carry.min(m[l + 1]);
        for v in &mut out[l * LANE..(l + 1) * LANE] {
            *v = (*v).min(carry);
        }
    }
}

/// `out[i] = min(block[..=i])` for `i < upto`.
fn prefix_minima(block: &[u64; WINDOW], out: &mut [u64; WINDOW], upto: usize) {
    let mut m = [u64::MAX; LANES];
    for i in 0..LANE {
        for (l, m) in m.iter_mut().enumerate() {
            *m = (*m).min(block[l * LANE + i]);
            out[l * LANE + i] = *m;
        }
    }
    // Each lane's prefix also covers the lanes before it.
    let mut carry = u64::MAX;
    for l in 1..LANES {
        if l * LANE >= upto {
            break;
        }
        carry = carry.min(m[l - 1]);
        for v in &mut out[l * LANE..(l + 1) * LANE] {
            *v = (*v).min(carry);
        }
    }
}

/// Every regular file under `dir`, sorted (links are not followed).
///
/// # Errors
/// When a directory cannot be listed.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let t = entry.file_type()?;
            if t.is_dir() {
                stack.push(entry.path());
            } else if t.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random text: `n` lines of CSV.
    fn rows(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::new();
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("{i},person-{:x},{}\n", x >> 20, x % 97).as_bytes());
        }
        out
    }

    #[test]
    fn winnowing_keeps_the_minimum_of_every_window() {
        let v: Vec<u64> = (0..1000u64).map(|i| (i * 7919 + 13) % 1009).collect();
        for n in [0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW, 1000] {
            let mut w = Winnower::default();
            let mut got = Vec::new();
            for h in &v[..n] {
                w.push(*h, &mut got);
            }
            w.finish(&mut got);
            let mut want: Vec<u64> = if n < WINDOW {
                v[..n].iter().min().copied().into_iter().collect()
            } else {
                v[..n]
                    .windows(WINDOW)
                    .map(|s| *s.iter().min().unwrap())
                    .collect()
            };
            want.dedup();
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn copied_rows_and_runs_are_found_fresh_text_is_not() {
        let input = rows(1, 2000);
        let mut index = Index::default();
        index.add_bytes(&input);
        // Rows copied verbatim, in another order.
        let mut copied = Vec::new();
        for line in input.split(|b| *b == b'\n').rev().take(50) {
            copied.extend_from_slice(line);
            copied.push(b'\n');
        }
        let c = index.covered(&copied, 5);
        assert!(c.bytes as f64 >= 0.95 * copied.len() as f64, "{c:?}");
        assert_eq!(c.lines.len(), 5);
        // A long run copied from the middle of a line, reflowed.
        let run = &input[1000..1400];
        let c = index.covered(run, 0);
        assert!(c.bytes >= 300, "{c:?}");
        // Other text of the same shape.
        let fresh = rows(2, 200);
        let c = index.covered(&fresh, 3);
        assert!(c.bytes < fresh.len() as u64 / 50, "{c:?}");
    }

    #[test]
    fn chunking_does_not_change_the_index() {
        let input = rows(3, 80_000);
        let mut whole = Index::default();
        whole.add_bytes(&input);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), &input).unwrap();
        let built = Index::build(&[dir.path()]).unwrap();
        assert!(input.len() > CHUNK, "the file spans chunks");
        assert_eq!(built.len(), whole.len());
        assert_eq!(built.runs.sets, whole.runs.sets);
    }

    /// `cargo test --release -p insitu-runtime --lib index_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn index_speed() {
        let input = rows(9, 12_000_000);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), &input).unwrap();
        let t = std::time::Instant::now();
        let index = Index::build(&[dir.path()]).unwrap();
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{} MB in {s:.3} s: {:.0} MB/s; {:?}",
            input.len() / 1_000_000,
            input.len() as f64 / s / 1e6,
            index.len()
        );
    }

    #[test]
    fn segments_fingerprint_as_the_whole_file_does() {
        let mut input = rows(4, 40_000);
        // A line longer than a segment, and no line end at the end.
        input.extend_from_slice(&[b'y'; 300_000]);
        input.extend_from_slice(b"\nlast line, unterminated");
        let mut whole = Index::default();
        whole.add_bytes(&input);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), &input).unwrap();
        for segment in [100_000, 4096, 1 << 30] {
            let built = Index::build_in(&[dir.path()], segment).unwrap();
            assert_eq!(built.lines.sets, whole.lines.sets, "segment {segment}");
            assert_eq!(built.runs.sets, whole.runs.sets, "segment {segment}");
            assert_eq!(built.bytes, input.len() as u64);
        }
    }

    #[test]
    fn small_files_still_have_a_run_fingerprint() {
        let mut index = Index::default();
        index.add_bytes(&[b'x'; 70]);
        assert_eq!(index.len().1, 1);
        index.add_bytes(b"short");
        assert!(index.covered(b"short", 1).bytes == 0);
    }
}
