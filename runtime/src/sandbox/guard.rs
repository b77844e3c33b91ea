//! Quota guards around WASI preview 1.
//!
//! The linker for core modules is wasmtime's preview 1 implementation with the
//! functions that can put bytes on disk shadowed by wrappers. A wrapper charges
//! the operation to the budget of the directory the descriptor belongs to
//! ([`super::quota::Budget::charge`]), traps the guest when the quota would be
//! exceeded, and otherwise calls the original function. To know which
//! directory a descriptor belongs to, the wrappers follow descriptors from the
//! preopens through `path_open`, `fd_renumber` and `fd_close`.

use super::JobState;
use super::quota::{ENTRY_COST, SharedBudget, lock};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::{Caller, Func, Linker, Result, WasmParams, WasmResults, format_err};
use wasmtime_wasi::p1;

const P1: &str = "wasi_snapshot_preview1";
/// `oflags::creat` of WASI preview 1.
const OFLAGS_CREAT: i32 = 1;

/// Per-store state of the guards.
#[derive(Default)]
pub struct Guard {
    /// Descriptor → the budget of the writable directory it lives in.
    fds: HashMap<i32, SharedBudget>,
    /// The original functions, instantiated in this store on first use.
    originals: HashMap<&'static str, Func>,
}

impl Guard {
    /// A guard whose preopened writable directories have the given descriptors.
    pub fn new(preopens: impl IntoIterator<Item = (i32, SharedBudget)>) -> Guard {
        Guard {
            fds: preopens.into_iter().collect(),
            originals: HashMap::new(),
        }
    }

    fn budget(&self, fd: i32) -> Option<SharedBudget> {
        self.fds.get(&fd).cloned()
    }
}

/// Charges `bytes` to the budget of `fd`, if it is in a writable directory.
fn charge(caller: &mut Caller<'_, JobState>, fd: i32, bytes: u64) -> Result<()> {
    if let Some(budget) = caller.data().guard.budget(fd) {
        lock(&budget).charge(bytes).map_err(|why| format_err!(why))?;
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

/// Calls the original preview 1 function `name` in this store.
async fn original<P, R>(
    caller: &mut Caller<'_, JobState>,
    raw: &Linker<JobState>,
    name: &'static str,
    params: P,
) -> Result<R>
where
    P: WasmParams + Send + Sync,
    R: WasmResults + Send + Sync,
{
    let func = match caller.data().guard.originals.get(name) {
        Some(f) => *f,
        None => {
            let f = raw
                .get(&mut *caller, P1, name)?
                .into_func()
                .ok_or_else(|| format_err!("WASI function {name} is not a function"))?;
            caller.data_mut().guard.originals.insert(name, f);
            f
        }
    };
    func.typed::<P, R>(&*caller)?.call_async(&mut *caller, params).await
}

/// The linker for core modules: preview 1 with quota guards.
pub fn core_linker(engine: &wasmtime::Engine) -> Result<Linker<JobState>> {
    let mut raw: Linker<JobState> = Linker::new(engine);
    p1::add_to_linker_async(&mut raw, |s: &mut JobState| s.wasi.p1())?;
    let mut linker = raw.clone();
    linker.allow_shadowing(true);
    let raw = Arc::new(raw);

    let r = raw.clone();
    linker.func_wrap_async(P1, "fd_write", move |mut c, (fd, iovs, n, out): (i32, i32, i32, i32)| {
        let r = r.clone();
        Box::new(async move {
            let total = iovec_total(&mut c, iovs, n);
            charge(&mut c, fd, total)?;
            original::<_, i32>(&mut c, &r, "fd_write", (fd, iovs, n, out)).await
        })
    })?;

    let r = raw.clone();
    linker.func_wrap_async(
        P1,
        "fd_pwrite",
        move |mut c, (fd, iovs, n, off, out): (i32, i32, i32, i64, i32)| {
            let r = r.clone();
            Box::new(async move {
                let total = iovec_total(&mut c, iovs, n);
                charge(&mut c, fd, total)?;
                if let Some(budget) = c.data().guard.budget(fd) {
                    lock(&budget)
                        .check_size((off as u64).saturating_add(total))
                        .map_err(|why| format_err!(why))?;
                }
                original::<_, i32>(&mut c, &r, "fd_pwrite", (fd, iovs, n, off, out)).await
            })
        },
    )?;

    let r = raw.clone();
    linker.func_wrap_async(P1, "fd_filestat_set_size", move |mut c, (fd, size): (i32, i64)| {
        let r = r.clone();
        Box::new(async move {
            if let Some(budget) = c.data().guard.budget(fd) {
                lock(&budget).check_size(size as u64).map_err(|why| format_err!(why))?;
            }
            original::<_, i32>(&mut c, &r, "fd_filestat_set_size", (fd, size)).await
        })
    })?;

    let r = raw.clone();
    linker.func_wrap_async(
        P1,
        "path_open",
        move |mut c, args: (i32, i32, i32, i32, i32, i64, i64, i32, i32)| {
            let r = r.clone();
            Box::new(async move {
                let (dirfd, oflags, opened) = (args.0, args.4, args.8);
                if oflags & OFLAGS_CREAT != 0 {
                    charge(&mut c, dirfd, ENTRY_COST)?;
                }
                let errno = original::<_, i32>(&mut c, &r, "path_open", args).await?;
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

    let r = raw.clone();
    linker.func_wrap_async(P1, "fd_renumber", move |mut c, (from, to): (i32, i32)| {
        let r = r.clone();
        Box::new(async move {
            let errno = original::<_, i32>(&mut c, &r, "fd_renumber", (from, to)).await?;
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

    let r = raw.clone();
    linker.func_wrap_async(P1, "fd_close", move |mut c, (fd,): (i32,)| {
        let r = r.clone();
        Box::new(async move {
            let errno = original::<_, i32>(&mut c, &r, "fd_close", (fd,)).await?;
            if errno == 0 {
                c.data_mut().guard.fds.remove(&fd);
            }
            Ok(errno)
        })
    })?;

    let r = raw.clone();
    linker.func_wrap_async(P1, "path_create_directory", move |mut c, args: (i32, i32, i32)| {
        let r = r.clone();
        Box::new(async move {
            charge(&mut c, args.0, ENTRY_COST)?;
            original::<_, i32>(&mut c, &r, "path_create_directory", args).await
        })
    })?;

    let r = raw.clone();
    linker.func_wrap_async(P1, "path_symlink", move |mut c, args: (i32, i32, i32, i32, i32)| {
        let r = r.clone();
        Box::new(async move {
            charge(&mut c, args.2, ENTRY_COST)?;
            original::<_, i32>(&mut c, &r, "path_symlink", args).await
        })
    })?;

    let r = raw;
    linker.func_wrap_async(
        P1,
        "path_link",
        move |mut c, args: (i32, i32, i32, i32, i32, i32, i32)| {
            let r = r.clone();
            Box::new(async move {
                charge(&mut c, args.4, ENTRY_COST)?;
                original::<_, i32>(&mut c, &r, "path_link", args).await
            })
        },
    )?;

    Ok(linker)
}
