//! Threads with a runtime of their own: executions, settlement and chain
//! work never share the HTTP runtime.

/// A current-thread tokio runtime on a thread of its own; the thread ends
/// when this is dropped.
pub struct RuntimeThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RuntimeThread {
    /// Starts the thread `name` and its runtime.
    ///
    /// # Errors
    /// When the runtime or the thread cannot be created.
    pub fn start(name: &str) -> std::io::Result<RuntimeThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })?;
        Ok(RuntimeThread {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn tasks onto this thread.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// Runs `task` to its end on a new thread named `name`, on a current-thread
/// runtime of its own.
///
/// # Errors
/// When the thread cannot be started (a runtime that cannot be built is
/// logged, and the task does not run).
pub fn on_thread(
    name: String,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(task),
            Err(e) => tracing::error!(error = %e, "cannot start a thread's runtime"),
        }
    })?;
    Ok(())
}
