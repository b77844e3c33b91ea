//! One way to take a lock: a mutex poisoned by a panic elsewhere still
//! yields its data (every lock of insitu guards data that stays consistent
//! between statements, so the panic's half-done work is not a hazard).

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data of a poisoned mutex.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
