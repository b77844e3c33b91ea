//! Deterministic mode for components: what a `wasi:filesystem` guest sees of
//! the host's file system, made independent of the host, as the preview 1
//! guard does for core modules (see [`crate::job::Determinism`]).
//!
//! The component linker's `wasi:filesystem/types` functions below are
//! shadowed by wrappers that call wasmtime-wasi's own implementation and,
//! in deterministic mode only, change its answer:
//! - `read-directory`: the whole listing is read at once and served in name
//!   (byte) order by `read-directory-entry`;
//! - `stat`, `stat-at`: no times (`none`), a link count of 1;
//! - `metadata-hash`, `metadata-hash-at`: 0 (what wasi-libc reports as the
//!   inode; core modules see 0 there too).
//!
//! Outside deterministic mode each wrapper is one branch, then the original.

use super::JobState;
use std::collections::{HashMap, VecDeque};
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorStat, DirectoryEntry, DirectoryEntryStream, ErrorCode, HostDescriptor,
    HostDirectoryEntryStream, MetadataHashValue, PathFlags,
};

/// The interface whose functions are shadowed (any 0.2.x import links to it).
const TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Sorted listings waiting to be read, by directory-entry-stream handle.
pub type Listings = HashMap<u32, VecDeque<DirectoryEntry>>;

/// wasmtime-wasi's error as the guest receives it (a trap if it is not a
/// file-system error code).
fn code(e: FsError) -> wasmtime::Result<ErrorCode> {
    e.downcast()
}

fn neutral(mut stat: DescriptorStat) -> DescriptorStat {
    stat.link_count = 1;
    stat.data_access_timestamp = None;
    stat.data_modification_timestamp = None;
    stat.status_change_timestamp = None;
    stat
}

fn no_hash(_: MetadataHashValue) -> MetadataHashValue {
    MetadataHashValue { lower: 0, upper: 0 }
}

/// What the guest receives from a wrapped call: wasmtime-wasi's answer `r`,
/// passed through `neutral` in deterministic mode.
fn answer<T>(
    r: Result<T, FsError>,
    deterministic: bool,
    neutral: impl FnOnce(T) -> T,
) -> wasmtime::Result<(Result<T, ErrorCode>,)> {
    match r {
        Ok(v) if deterministic => Ok((Ok(neutral(v)),)),
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(code(e)?),)),
    }
}

/// Shadows the file-system functions listed in the module docs in `linker`
/// (which already holds wasmtime-wasi's).
pub(super) fn shadow(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deterministic = state.deterministic;
                let mut fs = state.filesystem();
                let stream = match fs.read_directory(fd).await {
                    Ok(s) => s,
                    Err(e) => return Ok((Err(code(e)?),)),
                };
                if !deterministic {
                    return Ok((Ok(stream),));
                }
                let rep = stream.rep();
                let mut all = Vec::new();
                loop {
                    match fs.read_directory_entry(Resource::new_borrow(rep)).await {
                        Ok(Some(e)) => all.push(e),
                        Ok(None) => break,
                        Err(e) => return Ok((Err(code(e)?),)),
                    }
                }
                all.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                store.data_mut().listings.insert(rep, all.into());
                Ok((Ok(stream),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store, (stream,): (Resource<DirectoryEntryStream>,)| {
            Box::new(async move {
                let state = store.data_mut();
                if state.deterministic
                    && let Some(listing) = state.listings.get_mut(&stream.rep())
                {
                    return Ok((Ok(listing.pop_front()),));
                }
                let r = state.filesystem().read_directory_entry(stream).await;
                answer(r, false, |e| e)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.stat",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deterministic = state.deterministic;
                let r = state.filesystem().stat(fd).await;
                answer(r, deterministic, neutral)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.stat-at",
        |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let deterministic = state.deterministic;
                let r = state.filesystem().stat_at(fd, flags, path).await;
                answer(r, deterministic, neutral)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.metadata-hash",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deterministic = state.deterministic;
                let r = state.filesystem().metadata_hash(fd).await;
                answer(r, deterministic, no_hash)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.metadata-hash-at",
        |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let deterministic = state.deterministic;
                let r = state.filesystem().metadata_hash_at(fd, flags, path).await;
                answer(r, deterministic, no_hash)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
