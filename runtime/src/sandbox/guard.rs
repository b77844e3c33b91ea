//! Quota guards around WASI preview 1.
//!
//! The linker for core modules is wasmtime's preview 1 implementation with the
//! functions that can put bytes on disk shadowed by wrappers. A wrapper charges
//! the operation to the budget of the directory the descriptor belongs to
//! ([`super::quota::Budget::charge`]), traps the guest when the quota would be
//! exceeded, and otherwise calls the original function. To know which
//! directory a descriptor belongs to, the wrappers follow descriptors from the
//! preopens through `path_open`, `fd_renumber` and `fd_close`.
//!
//! `fd_sync` and `fd_datasync` on those descriptors succeed without syncing:
//! the host syncs what it publishes.
//!
//! The original is called the way wasmtime-wasi's own linker glue calls it:
//! the generated `wasi_snapshot_preview1::<function>` with the guest's memory.

use super::JobState;
use super::quota::{ENTRY_COST, SharedBudget, lock};
use std::collections::HashMap;
use wasmtime::{AsContextMut, Caller, Extern, Linker, Result, format_err};
use wasmtime_wasi::p1::{self, wasi_snapshot_preview1 as wasi};
use wiggle::GuestMemory;

const P1: &str = "wasi_snapshot_preview1";
/// `oflags::creat` of WASI preview 1.
const OFLAGS_CREAT: i32 = 1;

/// Per-store state of the guards.
#[derive(Default)]
pub struct Guard {
    /// Descriptor → the budget of the writable directory it lives in.
    fds: HashMap<i32, SharedBudget>,
}

impl Guard {
    /// A guard whose preopened writable directories have the given descriptors.
    pub fn new(preopens: impl IntoIterator<Item = (i32, SharedBudget)>) -> Guard {
        Guard {
            fds: preopens.into_iter().collect(),
        }
    }

    fn budget(&self, fd: i32) -> Option<SharedBudget> {
        self.fds.get(&fd).cloned()
    }
}

/// Charges `bytes` to the budget of `fd`, if it is in a writable directory.
fn charge(caller: &mut Caller<'_, JobState>, fd: i32, bytes: u64) -> Result<()> {
    if let Some(budget) = caller.data().guard.budget(fd) {
        lock(&budget)
            .charge(bytes)
            .map_err(|why| format_err!(why))?;
    }
    Ok(())
}

/// Total length of the `iovs` array the guest passed, 0 if it is out of bounds
/// (the original function then reports the fault).
fn iovec_total(caller: &mut Caller<'_, JobState>, iovs: i32, count: i32) -> u64 {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return 0;
    };
    let data = memory.data(&caller);
    let (start, count) = (iovs as u32 as usize, count as u32 as usize);
    let Some(bytes) = count
        .checked_mul(8)
        .and_then(|len| data.get(start..start.checked_add(len)?))
    else {
        return 0;
    };
    bytes
        .chunks_exact(8)
        .map(|iov| u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as u64)
        .sum()
}

fn read_u32(caller: &mut Caller<'_, JobState>, ptr: i32) -> Option<i32> {
    let memory = caller.get_export("memory")?.into_memory()?;
    let start = ptr as u32 as usize;
    let b = memory.data(&caller).get(start..start + 4)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Calls the original preview 1 function `$func` with the guest's memory.
macro_rules! original {
    ($caller:expr, $func:ident ( $($arg:expr),* )) => {{
        let caller: &mut Caller<'_, JobState> = $caller;
        let fuel = caller.as_context_mut().hostcall_fuel();
        match caller.get_export("memory") {
            Some(Extern::Memory(memory)) => {
                let (bytes, state) = memory.data_and_store_mut(&mut *caller);
                let ctx = state.wasi.p1();
                wasi::WasiSnapshotPreview1::set_hostcall_fuel(ctx, fuel);
                wasi::$func(ctx, &mut GuestMemory::Unshared(bytes), $($arg),*).await
            }
            _ => Err(format_err!("missing required memory export")),
        }
    }};
}

/// The linker for core modules: preview 1 with quota guards.
pub fn core_linker(engine: &wasmtime::Engine) -> Result<Linker<JobState>> {
    let mut linker: Linker<JobState> = Linker::new(engine);
    p1::add_to_linker_async(&mut linker, |s: &mut JobState| s.wasi.p1())?;
    linker.allow_shadowing(true);

    linker.func_wrap_async(
        P1,
        "fd_write",
        move |mut c, (fd, iovs, n, out): (i32, i32, i32, i32)| {
            Box::new(async move {
                let total = iovec_total(&mut c, iovs, n);
                charge(&mut c, fd, total)?;
                original!(&mut c, fd_write(fd, iovs, n, out))
            })
        },
    )?;

    linker.func_wrap_async(
        P1,
        "fd_pwrite",
        move |mut c, (fd, iovs, n, off, out): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                let total = iovec_total(&mut c, iovs, n);
                charge(&mut c, fd, total)?;
                if let Some(budget) = c.data().guard.budget(fd) {
                    lock(&budget)
                        .check_size((off as u64).saturating_add(total))
                        .map_err(|why| format_err!(why))?;
                }
                original!(&mut c, fd_pwrite(fd, iovs, n, off, out))
            })
        },
    )?;

    linker.func_wrap_async(
        P1,
        "fd_filestat_set_size",
        move |mut c, (fd, size): (i32, i64)| {
            Box::new(async move {
                if let Some(budget) = c.data().guard.budget(fd) {
                    lock(&budget)
                        .check_size(size as u64)
                        .map_err(|why| format_err!(why))?;
                }
                original!(&mut c, fd_filestat_set_size(fd, size))
            })
        },
    )?;

    linker.func_wrap_async(
        P1,
        "path_open",
        move |mut c, args: (i32, i32, i32, i32, i32, i64, i64, i32, i32)| {
            Box::new(async move {
                let (dirfd, oflags, opened) = (args.0, args.4, args.8);
                if oflags & OFLAGS_CREAT != 0 {
                    charge(&mut c, dirfd, ENTRY_COST)?;
                }
                let errno = original!(
                    &mut c,
                    path_open(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7, args.8
                    )
                )?;
                if errno == 0
                    && let Some(fd) = read_u32(&mut c, opened)
                {
                    let budget = c.data().guard.budget(dirfd);
                    let fds = &mut c.data_mut().guard.fds;
                    match budget {
                        Some(b) => fds.insert(fd, b),
                        None => fds.remove(&fd),
                    };
                }
                Ok(errno)
            })
        },
    )?;

    linker.func_wrap_async(P1, "fd_renumber", move |mut c, (from, to): (i32, i32)| {
        Box::new(async move {
            let errno = original!(&mut c, fd_renumber(from, to))?;
            if errno == 0 {
                let fds = &mut c.data_mut().guard.fds;
                match fds.remove(&from) {
                    Some(b) => fds.insert(to, b),
                    None => fds.remove(&to),
                };
            }
            Ok(errno)
        })
    })?;

    linker.func_wrap_async(P1, "fd_close", move |mut c, (fd,): (i32,)| {
        Box::new(async move {
            let errno = original!(&mut c, fd_close(fd))?;
            if errno == 0 {
                c.data_mut().guard.fds.remove(&fd);
            }
            Ok(errno)
        })
    })?;

    linker.func_wrap_async(
        P1,
        "path_create_directory",
        move |mut c, args: (i32, i32, i32)| {
            Box::new(async move {
                charge(&mut c, args.0, ENTRY_COST)?;
                original!(&mut c, path_create_directory(args.0, args.1, args.2))
            })
        },
    )?;

    linker.func_wrap_async(
        P1,
        "path_symlink",
        move |mut c, args: (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                charge(&mut c, args.2, ENTRY_COST)?;
                original!(&mut c, path_symlink(args.0, args.1, args.2, args.3, args.4))
            })
        },
    )?;

    linker.func_wrap_async(
        P1,
        "path_link",
        move |mut c, args: (i32, i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                charge(&mut c, args.4, ENTRY_COST)?;
                original!(
                    &mut c,
                    path_link(args.0, args.1, args.2, args.3, args.4, args.5, args.6)
                )
            })
        },
    )?;

    // A lone relative sleep: wasmtime-wasi would block the thread in
    // `std::thread::sleep`, which no deadline can interrupt; sleep
    // asynchronously instead so the job's deadline and stop requests cut it.
    linker.func_wrap_async(
        P1,
        "poll_oneoff",
        |mut c, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                if n == 1
                    && let Some((userdata, nanos)) = relative_sleep(&mut c, subs)
                {
                    tokio::time::sleep(std::time::Duration::from_nanos(nanos)).await;
                    if write_clock_event(&mut c, events, userdata, nevents) {
                        return Ok(0);
                    }
                }
                original!(&mut c, poll_oneoff(subs, events, n, nevents))
            })
        },
    )?;

    // Deterministic mode: listings in name order, and file metadata that
    // does not depend on the host (no device, inode or times).
    linker.func_wrap_async(
        P1,
        "fd_readdir",
        |mut c, (fd, buf, len, cookie, out): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                if !c.data().deterministic {
                    return original!(&mut c, fd_readdir(fd, buf, len, cookie, out));
                }
                sorted_readdir(&mut c, fd, buf, len, cookie, out).await
            })
        },
    )?;

    linker.func_wrap_async(P1, "fd_filestat_get", |mut c, (fd, stat): (i32, i32)| {
        Box::new(async move {
            let errno = original!(&mut c, fd_filestat_get(fd, stat))?;
            if errno == 0 && c.data().deterministic {
                neutral_filestat(&mut c, stat);
            }
            Ok(errno)
        })
    })?;

    linker.func_wrap_async(
        P1,
        "path_filestat_get",
        |mut c, (fd, flags, path, len, stat): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let errno = original!(&mut c, path_filestat_get(fd, flags, path, len, stat))?;
                if errno == 0 && c.data().deterministic {
                    neutral_filestat(&mut c, stat);
                }
                Ok(errno)
            })
        },
    )?;

    // A guest's fsync of its output or logs is answered at once: the host
    // makes the outputs durable when it publishes them (one `syncfs` per
    // group of executions, see `store::writer`), and a guest calling fsync in
    // a loop must not stall the provider's disk. Other descriptors (inputs,
    // stdio, unknown ones) get the original call and its errors.
    for name in ["fd_sync", "fd_datasync"] {
        linker.func_wrap_async(P1, name, move |mut c, (fd,): (i32,)| {
            Box::new(async move {
                if c.data().guard.budget(fd).is_some() {
                    return Ok(0);
                }
                if name == "fd_sync" {
                    original!(&mut c, fd_sync(fd))
                } else {
                    original!(&mut c, fd_datasync(fd))
                }
            })
        })?;
    }

    Ok(linker)
}

/// Size of a preview 1 `dirent` header (the name follows it).
const DIRENT: usize = 24;

/// `fd_readdir` in name order (`.` and `..` first): the whole listing is read
/// through wasmtime's own `fd_readdir` into the guest's buffer, sorted, its
/// cookies renumbered, and the part from `cookie` written back with the same
/// truncation rules (a full buffer tells the guest to grow it). Inode numbers
/// become a hash of the name. When one entry does not fit the guest's buffer
/// the unsorted answer is returned, so the guest grows its buffer and asks again.
async fn sorted_readdir(
    c: &mut Caller<'_, JobState>,
    fd: i32,
    buf: i32,
    len: i32,
    cookie: i64,
    out: i32,
) -> Result<i32> {
    let cap = len as u32 as usize;
    let mut entries: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut next: i64 = 0;
    loop {
        let errno = original!(&mut *c, fd_readdir(fd, buf, len, next, out))?;
        if errno != 0 {
            return Ok(errno);
        }
        let used = read_u32(c, out).unwrap_or(0) as u32 as usize;
        let Some(bytes) = guest_bytes(c, buf, used) else {
            return Ok(0);
        };
        let (mut at, before) = (0, entries.len());
        while at + DIRENT <= used {
            let d_next = i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let namlen =
                u32::from_le_bytes(bytes[at + 16..at + 20].try_into().expect("4")) as usize;
            let Some(name) = bytes.get(at + DIRENT..at + DIRENT + namlen) else {
                break;
            };
            entries.push((bytes[at + 20], name.to_vec()));
            next = d_next;
            at += DIRENT + namlen;
        }
        if used < cap {
            break; // the listing ended within this answer
        }
        if entries.len() == before {
            // Not even one entry fits: the guest must grow its buffer first.
            return original!(&mut *c, fd_readdir(fd, buf, len, cookie, out));
        }
    }
    let dots = entries
        .iter()
        .take_while(|(_, n)| n.as_slice() == b"." || n.as_slice() == b"..")
        .count();
    entries[dots..].sort_by(|a, b| a.1.cmp(&b.1));
    let mut written = Vec::with_capacity(cap);
    for (i, (kind, name)) in entries.iter().enumerate().skip(cookie.max(0) as usize) {
        let mut head = [0u8; DIRENT];
        head[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        head[8..16].copy_from_slice(&name_inode(name).to_le_bytes());
        head[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
        head[20] = *kind;
        written.extend_from_slice(&head);
        written.extend_from_slice(name);
        if written.len() >= cap {
            break;
        }
    }
    written.truncate(cap);
    let n = written.len() as u32;
    if let Some(dst) = guest_bytes(c, buf, written.len()) {
        dst.copy_from_slice(&written);
    }
    if let Some(dst) = guest_bytes(c, out, 4) {
        dst.copy_from_slice(&n.to_le_bytes());
    }
    Ok(0)
}

/// A stable, non-zero inode number for a directory entry named `name`.
fn name_inode(name: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(name);
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) | 1
}

/// Clears what a preview 1 `filestat` at `stat` says of the host: device,
/// inode, link count (1) and the three times (0, the Unix epoch).
fn neutral_filestat(c: &mut Caller<'_, JobState>, stat: i32) {
    if let Some(s) = guest_bytes(c, stat, 64) {
        s[0..16].fill(0);
        s[24..32].copy_from_slice(&1u64.to_le_bytes());
        s[40..64].fill(0);
    }
}

fn guest_bytes<'a>(
    caller: &'a mut Caller<'_, JobState>,
    ptr: i32,
    len: usize,
) -> Option<&'a mut [u8]> {
    let memory = caller.get_export("memory")?.into_memory()?;
    let start = ptr as u32 as usize;
    memory
        .data_mut(caller)
        .get_mut(start..start.checked_add(len)?)
}

/// If the subscription at `subs` is a relative clock timeout, its userdata
/// and timeout in nanoseconds (WASI preview 1 `subscription` layout).
fn relative_sleep(caller: &mut Caller<'_, JobState>, subs: i32) -> Option<(u64, u64)> {
    let sub = guest_bytes(caller, subs, 48)?;
    let u64_at = |at: usize| u64::from_le_bytes(sub[at..at + 8].try_into().expect("8 bytes"));
    let (tag, flags) = (sub[8], u16::from_le_bytes([sub[40], sub[41]]));
    const ABSTIME: u16 = 1;
    (tag == 0 && flags & ABSTIME == 0).then(|| (u64_at(0), u64_at(24)))
}

/// Writes one clock `event` and the event count; false if out of bounds.
fn write_clock_event(
    caller: &mut Caller<'_, JobState>,
    events: i32,
    userdata: u64,
    nevents: i32,
) -> bool {
    let Some(event) = guest_bytes(caller, events, 32) else {
        return false;
    };
    event.fill(0);
    event[0..8].copy_from_slice(&userdata.to_le_bytes());
    // error = success (0), type = clock (0), fd_readwrite.nbytes = 1
    event[16..24].copy_from_slice(&1u64.to_le_bytes());
    let Some(count) = guest_bytes(caller, nevents, 4) else {
        return false;
    };
    count.copy_from_slice(&1u32.to_le_bytes());
    true
}
