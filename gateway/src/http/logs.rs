//! Execution logs as the routes serve them: each stage's stdout and stderr
//! ([`read`]), the guest SDK's progress ([`latest_progress`]) and following
//! both as server-sent events until the execution ends ([`follow`]).

use crate::http::state::Gateway;
use axum::response::sse::{Event, KeepAlive, Sse};
use insitu_runtime::store::StageRecord;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The log files of each stage's logs dir, in the order they are shown.
pub(crate) const LOG_FILES: [&str; 2] = ["stdout.log", "stderr.log"];

/// Each started stage's logs, stdout then stderr:
/// `[{"stage", "podName", "content"}]`.
pub(crate) fn read(g: &Gateway, id: &str) -> Vec<Value> {
    (0..stage_dirs(g, id))
        .map(|n| {
            let dir = g.pipeline.logs(id, n);
            let content: String = LOG_FILES
                .iter()
                .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
                .collect();
            json!({"stage": n, "podName": format!("{id}-stage-{n}"), "content": content})
        })
        .collect()
}

/// The guest SDK's progress file in each stage's logs dir: JSON lines
/// `{"fraction": 0.0..1.0, "message": "…"}`.
const PROGRESS_FILE: &str = "progress.jsonl";
/// The longest progress message passed on (longer ones are cut).
const PROGRESS_MESSAGE: usize = 512;

/// A progress line as the API shows it (`{"stage", "fraction", "message"}`),
/// or `None` for a line that is not the SDK's shape (a guest may write
/// anything there).
fn progress_event(stage: u32, line: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let fraction = v["fraction"]
        .as_f64()
        .filter(|f| f.is_finite())?
        .clamp(0.0, 1.0);
    let mut message = v["message"].as_str().unwrap_or_default().to_string();
    if message.len() > PROGRESS_MESSAGE {
        let mut cut = PROGRESS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Some(json!({"stage": stage, "fraction": fraction, "message": message}))
}

/// The last progress line of the latest stage of execution `id` that
/// reported any, or null. Only the stages its record names (`stages`) and
/// the one after (running, or ended without a record) are looked at: a
/// status poll stats no directories.
pub(crate) fn latest_progress(g: &Gateway, id: &str, stages: &[StageRecord]) -> Value {
    use std::io::{Read, Seek, SeekFrom};
    let recorded = stages.last().map_or(0, |s| s.index + 1);
    for n in (0..=recorded).rev() {
        let Ok(mut f) = std::fs::File::open(g.pipeline.logs(id, n).join(PROGRESS_FILE)) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(4096);
        let mut tail = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.take(4096).read_to_end(&mut tail).is_err() {
            continue;
        }
        if let Some(p) = tail
            .split(|b| *b == b'\n')
            .rev()
            .find_map(|line| progress_event(n, line))
        {
            return p;
        }
    }
    Value::Null
}

/// How many stages of execution `id` have started (have a working directory).
pub(crate) fn stage_dirs(g: &Gateway, id: &str) -> u32 {
    (0..)
        .take_while(|n| g.pipeline.logs(id, *n).is_dir())
        .count() as u32
}

/// Where a follower is in each stage's log files.
struct Tail {
    g: Arc<Gateway>,
    id: String,
    /// (stage, file index) → bytes sent, plus bytes held back (an incomplete UTF-8 sequence).
    offsets: HashMap<(u32, usize), (u64, Vec<u8>)>,
    /// Stage → bytes of its progress file read, plus an incomplete last line.
    progress: HashMap<u32, (u64, Vec<u8>)>,
    pending: std::collections::VecDeque<Event>,
    done: bool,
}

impl Tail {
    /// Reads what was appended since the last poll into `pending`.
    fn poll(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        for n in 0..stage_dirs(&self.g, &self.id) {
            let dir = self.g.pipeline.logs(&self.id, n);
            for (i, name) in LOG_FILES.iter().enumerate() {
                let (offset, held) = self.offsets.entry((n, i)).or_default();
                let Ok(mut f) = std::fs::File::open(dir.join(name)) else {
                    continue;
                };
                let mut buf = std::mem::take(held);
                if f.seek(SeekFrom::Start(*offset)).is_err() {
                    continue;
                }
                let read = f.take(1 << 20).read_to_end(&mut buf).unwrap_or(0);
                *offset += read as u64;
                let valid = match std::str::from_utf8(&buf) {
                    Ok(_) => buf.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => buf.len(),
                };
                *held = buf.split_off(valid);
                if buf.is_empty() {
                    continue;
                }
                let content = String::from_utf8_lossy(&buf);
                self.pending.push_back(
                    Event::default().event("log").data(
                        json!({"stage": n, "podName": format!("{}-stage-{n}", self.id),
                               "stream": name.trim_end_matches(".log"), "content": content})
                        .to_string(),
                    ),
                );
            }
            // Progress is a level, not a log: of what was appended since the
            // last poll, only the newest complete line is sent.
            let (offset, held) = self.progress.entry(n).or_default();
            let Ok(mut f) = std::fs::File::open(dir.join(PROGRESS_FILE)) else {
                continue;
            };
            let mut buf = std::mem::take(held);
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            *offset += f.take(1 << 20).read_to_end(&mut buf).unwrap_or(0) as u64;
            let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            *held = buf.split_off(complete);
            if held.len() > 64 << 10 {
                held.clear(); // a "line" that never ends is no progress
            }
            if let Some(p) = buf
                .split(|b| *b == b'\n')
                .rev()
                .find_map(|line| progress_event(n, line))
            {
                self.pending
                    .push_back(Event::default().event("progress").data(p.to_string()));
            }
        }
    }
}

/// Server-sent events: `log` events (`{"stage", "podName", "stream",
/// "content"}`) as the guest writes, `progress` events (`{"stage",
/// "fraction", "message"}`, the newest line of the guest SDK's
/// `progress.jsonl` at each poll), then one `end` event (`{"status",
/// "reason", "did"}`, `did` the result asset or `null`) once the execution is over and everything was sent.
pub(crate) fn follow(
    g: Arc<Gateway>,
    id: String,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let tail = Tail {
        g,
        id,
        offsets: HashMap::new(),
        progress: HashMap::new(),
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        loop {
            if let Some(e) = t.pending.pop_front() {
                return Some((Ok(e), t));
            }
            if t.done {
                return None;
            }
            // The status is read before the files, so a terminal status means
            // everything the guest wrote is on disk when they are read.
            let execution = t.g.store.execution(&t.id).ok();
            t.poll();
            match execution {
                Some(e) if e.status.is_terminal() => {
                    t.pending.push_back(
                        Event::default().event("end").data(
                            json!({"status": e.status, "reason": e.reason, "did": e.result})
                                .to_string(),
                        ),
                    );
                    t.done = true;
                }
                None => t.done = true,
                Some(_) if t.pending.is_empty() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(_) => {}
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
