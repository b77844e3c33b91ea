//! Safe reading of tar (optionally gzip) layers of "compat" wasm images.
//!
//! Every entry of a layer is checked before anything is taken from it: no
//! absolute paths, no `..`, no links pointing outside the root, no device
//! files or FIFOs; at most [`MAX_ENTRIES`] entries; the decompressed size is
//! capped by the provider's blob maximum and by [`MAX_RATIO`] times the
//! compressed size (gzip bombs). Nothing is written to disk: the one file
//! insitu needs is read into memory.

use crate::Error;
use std::io::Read;
use std::path::{Component, Path};

/// Most entries a layer may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest decompressed/compressed size ratio accepted.
pub const MAX_RATIO: u64 = 100;

/// Reads up to `cap` bytes and fails if there are more.
struct Capped<R> {
    inner: R,
    left: u64,
    why: String,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(self.why.clone()));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn unsafe_entry(layer: &str, entry: &str, reason: &str) -> Error {
    Error::UnsafeArchive {
        layer: layer.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

fn normal(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Walks every entry of `layer`, checking it; calls `take` with each regular
/// file's normalised path until `take` returns `Some`.
fn walk<T>(
    bytes: &[u8],
    layer: &str,
    max: u64,
    take: impl FnMut(&str, &mut dyn Read) -> std::io::Result<Option<T>>,
) -> Result<Option<T>, Error> {
    walk_reader(
        bytes,
        Some(bytes.len() as u64),
        &format!("layer {layer}"),
        max,
        |_| Ok(()),
        take,
    )
}

/// As [`walk`] over any reader; `compressed_len` enables the ratio cap;
/// `dir` is called for each directory entry.
fn walk_reader<T>(
    mut input: impl Read,
    compressed_len: Option<u64>,
    layer: &str,
    max: u64,
    mut dir: impl FnMut(&str) -> std::io::Result<()>,
    mut take: impl FnMut(&str, &mut dyn Read) -> std::io::Result<Option<T>>,
) -> Result<Option<T>, Error> {
    let io = |e: std::io::Error| Error::BadImage {
        digest: layer.to_string(),
        reason: format!("unreadable tar: {e}"),
    };
    let mut magic = [0u8; 2];
    let n = input.read(&mut magic).map_err(io)?;
    let input = std::io::Cursor::new(magic[..n].to_vec()).chain(input);
    let gz = n == 2 && magic == [0x1f, 0x8b];
    let cap = match compressed_len {
        Some(len) if gz => max.min(len.saturating_mul(MAX_RATIO)),
        _ => max,
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let why = if gz {
        format!(
            "decompresses to more than {cap} bytes ({MAX_RATIO}x its size or the provider's maximum); refusing a possible gzip bomb"
        )
    } else {
        format!("more than {cap} bytes")
    };
    let capped = Capped {
        inner: reader,
        left: cap,
        why,
    };
    let mut archive = tar::Archive::new(capped);
    let mut found = None;
    for (n, entry) in archive.entries().map_err(io)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(unsafe_entry(
                layer,
                "",
                &format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let mut entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.into_owned();
        let name = path.display().to_string();
        if path.is_absolute() || !normal(&path) {
            return Err(unsafe_entry(
                layer,
                &name,
                "absolute path or `..` component",
            ));
        }
        let clean: std::path::PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let clean = clean.display().to_string();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(io)?
                .unwrap_or_default()
                .into_owned();
            let base = if kind.is_symlink() {
                path.parent().unwrap_or(Path::new(""))
            } else {
                Path::new("")
            };
            if target.is_absolute() || escapes(base, &target) {
                return Err(unsafe_entry(
                    layer,
                    &name,
                    &format!("link to `{}` points outside the layer", target.display()),
                ));
            }
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(unsafe_entry(
                layer,
                &name,
                "device files and FIFOs are not allowed",
            ));
        } else if kind.is_dir() {
            if !clean.is_empty() {
                dir(&clean).map_err(io)?;
            }
        } else if kind.is_file() && found.is_none() {
            found = take(&clean, &mut entry).map_err(io)?;
        }
    }
    Ok(found)
}

/// Unpacks the regular files and directories of the tar (optionally gzip)
/// archive `path` under `dest`, with every check of this module; links are
/// refused when they escape and otherwise skipped.
///
/// # Errors
/// As [`contains`], and [`Error::Io`] when writing fails.
pub fn unpack(path: &Path, dest: &Path, max: u64) -> Result<(), Error> {
    let name = format!("archive {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::io("open archive", path, e))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let found: Option<()> = walk_reader(
        std::io::BufReader::with_capacity(1 << 20, file),
        len,
        &name,
        max,
        |d| std::fs::create_dir_all(dest.join(d)),
        |p, r| {
            let out = dest.join(p);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::io::copy(r, &mut std::fs::File::create(out)?)?;
            Ok(None)
        },
    )?;
    debug_assert!(found.is_none());
    Ok(())
}

/// True if joining `target` to `base` climbs above the root.
fn escapes(base: &Path, target: &Path) -> bool {
    let mut depth: i64 = base
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Whether the layer holds the regular file `path`; checks every entry.
///
/// # Errors
/// [`Error::UnsafeArchive`] / [`Error::BadImage`] as described in the module docs.
pub fn contains(bytes: &[u8], layer: &str, path: &str, max: u64) -> Result<bool, Error> {
    Ok(walk(bytes, layer, max, |p, _| Ok((p == path).then_some(())))?.is_some())
}

/// The content of the regular file `path` in the layer; checks every entry.
///
/// # Errors
/// As [`contains`], and [`Error::BadImage`] when the file is absent.
pub fn extract_file(bytes: &[u8], layer: &str, path: &str, max: u64) -> Result<Vec<u8>, Error> {
    walk(bytes, layer, max, |p, r| {
        if p != path {
            return Ok(None);
        }
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(Some(out))
    })?
    .ok_or_else(|| Error::BadImage {
        digest: layer.to_string(),
        reason: format!("the layer has no file `{path}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Write names raw so hostile paths are not normalised away.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn extracts_the_named_file() {
        let t = tar_with(&[
            ("app/", tar::EntryType::Directory, b"", None),
            ("app/mod.wasm", tar::EntryType::Regular, b"\0asm", None),
            ("app/link", tar::EntryType::Symlink, b"", Some("mod.wasm")),
        ]);
        assert_eq!(
            extract_file(&t, "L", "app/mod.wasm", 1 << 20).unwrap(),
            b"\0asm"
        );
        assert!(!contains(&t, "L", "other.wasm", 1 << 20).unwrap());
    }

    #[test]
    fn refuses_hostile_entries() {
        for (entries, expect) in [
            (
                vec![("../evil", tar::EntryType::Regular, &b"x"[..], None)],
                "absolute path or `..` component",
            ),
            (
                vec![("/etc/x", tar::EntryType::Regular, &b"x"[..], None)],
                "absolute path or `..` component",
            ),
            (
                vec![(
                    "a/l",
                    tar::EntryType::Symlink,
                    &b""[..],
                    Some("../../etc/passwd"),
                )],
                "points outside the layer",
            ),
            (
                vec![("l", tar::EntryType::Symlink, &b""[..], Some("/etc/passwd"))],
                "points outside the layer",
            ),
            (
                vec![("h", tar::EntryType::Link, &b""[..], Some("../x"))],
                "points outside the layer",
            ),
            (
                vec![("dev", tar::EntryType::Char, &b""[..], None)],
                "device files and FIFOs are not allowed",
            ),
        ] {
            let t = tar_with(&entries);
            let e = contains(&t, "sha256:l", "x", 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("layer sha256:l: refusing unsafe entry") && e.contains(expect),
                "{e}"
            );
        }
    }

    #[test]
    fn refuses_gzip_bombs() {
        let t = tar_with(&[("zeros", tar::EntryType::Regular, &vec![0u8; 8 << 20], None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < (8 << 20) / 100, "{}", gz.len());
        let e = contains(&gz, "sha256:b", "x", 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing a possible gzip bomb"), "{e}");
    }
}
