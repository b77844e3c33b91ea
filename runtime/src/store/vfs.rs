//! `insitu-unix`: SQLite's own `unix` VFS, except that the writer can make
//! the next sync of the WAL a `syncfs(2)` of its filesystem.
//!
//! A commit that publishes results must not be visible before the result
//! files are on disk, nor before its own WAL frames are. Done separately
//! that is two flushes per group commit: `syncfs` of the results' filesystem,
//! then SQLite's fsync of the WAL. When the results and the database share a
//! filesystem one flush does both: the writer thread asks for it
//! ([`syncfs_next`]) and commits with `synchronous=FULL`; SQLite writes the
//! frames, calls the WAL's `xSync` — here a `syncfs` of the WAL's
//! filesystem, which writes back every dirty file on it, the results
//! included — and only then publishes the commit in the wal-index. The
//! request is taken by the first WAL sync of the thread (a restarted WAL
//! syncs its header before its frames: that sync is after the result files
//! were written, so it covers them, and the frames' own sync follows as an
//! fsync); every other sync is SQLite's own.
//!
//! Files are opened by the `unix` VFS itself: this one only swaps a WAL
//! file's method table for a copy whose `xSync` and `xClose` come first,
//! and keeps one more descriptor of the WAL after SQLite's file (SQLite's
//! `unixFile` is opaque here) for `syncfs`. Reference: SQLite's "The OS
//! Interface Object" (<https://sqlite.org/c3ref/vfs.html>) and "Write-Ahead
//! Logging" (<https://sqlite.org/wal.html>).

use rusqlite::ffi;
use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub(crate) const NAME: &CStr = c"insitu-unix";

thread_local! {
    /// The next WAL sync on this thread is a `syncfs`.
    static WANTED: Cell<bool> = const { Cell::new(false) };
    /// WAL syncs done as `syncfs` on this thread.
    static DONE: Cell<u64> = const { Cell::new(0) };
}

/// Asks that the next WAL sync on this thread flush the WAL's whole
/// filesystem (false withdraws an unused request).
pub(crate) fn syncfs_next(wanted: bool) {
    WANTED.with(|w| w.set(wanted));
}

/// WAL syncs done as `syncfs` on this thread so far.
pub(crate) fn syncfs_done() -> u64 {
    DONE.with(Cell::get)
}

/// What this VFS keeps after the `unix` VFS's own file object.
#[repr(C)]
struct Extra {
    /// A descriptor of the WAL file, for `syncfs`; -1 when not a WAL.
    fd: c_int,
}

struct Registered {
    /// The `unix` VFS.
    base: *mut ffi::sqlite3_vfs,
    /// Offset of [`Extra`] in a file object.
    extra: usize,
    /// The `unix` method table WAL files get, and this VFS's copy of it.
    methods: OnceLock<(usize, Box<ffi::sqlite3_io_methods>)>,
}

// SAFETY: the pointers are to SQLite's static VFS and a leaked table, both
// immutable once registered.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, c_int>> = OnceLock::new();

/// Registers the VFS (once per process; not as the default).
///
/// # Errors
/// SQLite's code when there is no `unix` VFS or registration failed.
pub(crate) fn register() -> Result<(), c_int> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find/register are thread-safe; the copy of
            // the unix VFS is leaked, so it lives as long as SQLite uses it.
            unsafe {
                let base = ffi::sqlite3_vfs_find(c"unix".as_ptr());
                if base.is_null() {
                    return Err(ffi::SQLITE_ERROR);
                }
                let mut vfs: ffi::sqlite3_vfs = std::ptr::read(base);
                let extra = ((*base).szOsFile as usize).next_multiple_of(8);
                vfs.szOsFile = (extra + std::mem::size_of::<Extra>()) as c_int;
                vfs.zName = NAME.as_ptr();
                vfs.pNext = std::ptr::null_mut();
                vfs.xOpen = Some(open);
                let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0);
                if rc != ffi::SQLITE_OK {
                    return Err(rc);
                }
                Ok(Registered {
                    base,
                    extra,
                    methods: OnceLock::new(),
                })
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(|c| *c)
}

fn registered() -> &'static Registered {
    match REGISTERED.get() {
        Some(Ok(r)) => r,
        _ => unreachable!("files are only opened through a registered VFS"),
    }
}

/// # Safety
/// `file` is a file object of this VFS (`szOsFile` bytes).
unsafe fn extra(file: *mut ffi::sqlite3_file) -> *mut Extra {
    // SAFETY: the object is szOsFile bytes, Extra at `extra`, 8-aligned.
    unsafe { file.cast::<u8>().add(registered().extra).cast::<Extra>() }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let r = registered();
    // SAFETY: SQLite hands a file object of our szOsFile bytes; the unix
    // VFS fills its first szOsFile bytes.
    unsafe {
        (*extra(file)).fd = -1;
        let Some(base_open) = (*r.base).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        let rc = base_open(r.base, name, file, flags, out_flags);
        if rc != ffi::SQLITE_OK || flags & ffi::SQLITE_OPEN_WAL == 0 || name.is_null() {
            return rc;
        }
        let methods = (*file).pMethods;
        if methods.is_null() {
            return rc;
        }
        let (original, ours) = r.methods.get_or_init(|| {
            let mut copy: ffi::sqlite3_io_methods = std::ptr::read(methods);
            copy.xSync = Some(sync);
            copy.xClose = Some(close);
            (methods as usize, Box::new(copy))
        });
        // Another locking style's table: leave the file as SQLite made it.
        if *original != methods as usize {
            return rc;
        }
        let fd = libc::open(name, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            (*extra(file)).fd = fd;
            (*file).pMethods = &raw const **ours;
        }
        rc
    }
}

fn original() -> &'static ffi::sqlite3_io_methods {
    // SAFETY: set before any file gets our table; SQLite's tables are static.
    unsafe { &*(registered().methods.get().expect("patched").0 as *const ffi::sqlite3_io_methods) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: only WAL files of this VFS have this method, with Extra set.
    unsafe {
        let fd = (*extra(file)).fd;
        if WANTED.with(|w| w.replace(false)) {
            if libc::syncfs(fd) == 0 {
                DONE.with(|d| d.set(d.get() + 1));
                return ffi::SQLITE_OK;
            }
            return ffi::SQLITE_IOERR_FSYNC;
        }
        match original().xSync {
            Some(f) => f(file, flags),
            None => ffi::SQLITE_OK,
        }
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as `sync`; the descriptor is ours and closed once.
    unsafe {
        let e = extra(file);
        if (*e).fd >= 0 {
            libc::close((*e).fd);
            (*e).fd = -1;
        }
        match original().xClose {
            Some(f) => f(file),
            None => ffi::SQLITE_OK,
        }
    }
}
