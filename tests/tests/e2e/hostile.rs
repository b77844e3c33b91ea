//! Hostile guests: every attack ends with the expected outcome, and the host
//! and the input data are untouched (fingerprints before and after).

use super::{Dirs, run, sandbox};
use insitu_runtime::sandbox::{JobSpec, Limits, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::{Outcome, RunReport, Status};
use insitu_tests::{HOSTILE_P1, fingerprint};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Runs `case` of the hostile guest and asserts the input, the secret next to
/// the mounts and the temp dir's other files are unchanged.
async fn attack(d: &Dirs, spec: &JobSpec) -> RunReport {
    let before = fingerprint(&d.input);
    let secret = std::fs::read(d.tmp.path().join("secret.txt")).unwrap();
    let r = run(HOSTILE_P1, spec).await;
    assert_eq!(fingerprint(&d.input), before, "the input changed");
    assert_eq!(
        std::fs::read(d.tmp.path().join("secret.txt")).unwrap(),
        secret
    );
    let names: Vec<_> = std::fs::read_dir(d.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        4,
        "nothing appeared next to the mounts: {names:?}"
    );
    r
}

fn disk_usage(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        total += m.blocks() * 512;
    }
    total
}

#[tokio::test]
async fn no_path_escapes_any_mount() {
    let d = Dirs::new();
    let r = attack(&d, &d.spec("hostile", &["escape"])).await;
    let out = d.stdout();
    assert_eq!(
        r.status,
        Status::Succeeded,
        "something was allowed:\n{}",
        out.lines()
            .filter(|l| l.starts_with("ALLOWED"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.lines().count(), 57, "every attempt reported:\n{out}");
    assert!(!out.contains("ALLOWED"));
}

#[tokio::test]
async fn symlinks_in_an_input_do_not_lead_outside() {
    let d = Dirs::new();
    std::os::unix::fs::symlink(d.tmp.path().join("secret.txt"), d.input.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", d.input.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc", d.input.join("dir-link")).unwrap();
    let spec = d.spec(
        "hostile",
        &[
            "read",
            "/data/inputs/1/abs-link",
            "/data/inputs/1/rel-link",
            "/data/inputs/1/dir-link/passwd",
            "/data/inputs/1/dir-link/",
        ],
    );
    let r = attack(&d, &spec).await;
    assert_eq!(r.status, Status::Succeeded, "{}", d.stdout());
    assert_eq!(d.stdout().matches("denied").count(), 4, "{}", d.stdout());
}

#[tokio::test]
async fn symlinks_a_guest_creates_lead_nowhere_and_are_not_counted() {
    let d = Dirs::new();
    let r = attack(&d, &d.spec("hostile", &["symlinks"])).await;
    assert_eq!(r.status, Status::Succeeded, "{}", d.stdout());
    // Only real.txt counts; the links are not followed by the host either.
    assert_eq!(r.output_bytes, 5);
    for e in std::fs::read_dir(&d.output).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        assert!(m.is_file() || m.file_type().is_symlink(), "{:?}", e.path());
    }
    assert_eq!(std::fs::read(d.output.join("real.txt")).unwrap(), b"12345");
}

#[tokio::test]
async fn inputs_cannot_be_modified_in_any_way() {
    let d = Dirs::new();
    let r = attack(&d, &d.spec("hostile", &["modify-input"])).await;
    let out = d.stdout();
    assert_eq!(
        r.status,
        Status::Succeeded,
        "allowed:\n{}",
        out.lines()
            .filter(|l| l.starts_with("ALLOWED"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.matches("denied").count(), 19, "{out}");
    assert!(!d.output.join("hard.txt").exists() && !d.output.join("moved.txt").exists());
}

#[tokio::test]
async fn infinite_loop_times_out() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["loop"]);
    spec.limits.timeout = Duration::from_millis(1000);
    let r = attack(&d, &spec).await;
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Failed, Outcome::TimedOut, None),
        "{r:?}"
    );
    assert_eq!(r.error.as_deref(), Some("time limit of 1s reached"));
    assert!((1000..3000).contains(&r.duration_ms), "{}", r.duration_ms);
}

#[tokio::test]
async fn hour_long_sleep_times_out() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["sleep"]);
    spec.limits.timeout = Duration::from_millis(500);
    let r = attack(&d, &spec).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::TimedOut),
        "{r:?}"
    );
    assert!((500..3000).contains(&r.duration_ms), "{}", r.duration_ms);
}

#[tokio::test]
async fn allocation_bomb_hits_the_memory_limit() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["memory-bomb"]);
    spec.limits.memory = 64 << 20;
    let r = attack(&d, &spec).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::MemoryExceeded),
        "{r:?}"
    );
    assert!(
        r.error
            .unwrap()
            .starts_with("memory limit of 64MiB reached")
    );
}

const GROW_BOMB: &str = r#"(module
  (memory 1)
  (func (export "_start")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))"#;

const TABLE_BOMB: &str = r#"(module
  (table 1 funcref)
  (func (export "_start")
    (loop $l (br_if $l (i32.ne (table.grow (ref.null func) (i32.const 10000)) (i32.const -1))))
    unreachable))"#;

#[tokio::test]
async fn memory_grow_and_table_grow_bombs_are_refused() {
    for (wat, limit) in [
        (GROW_BOMB, "memory limit of 32MiB reached"),
        (TABLE_BOMB, "table limit of 100000 elements reached"),
    ] {
        let d = Dirs::new();
        let mut spec = d.spec("bomb", &[]);
        spec.limits.memory = 32 << 20;
        let r = run(&wat::parse_str(wat).unwrap(), &spec).await;
        assert_eq!(
            (r.status, r.outcome),
            (Status::Failed, Outcome::MemoryExceeded),
            "{r:?}"
        );
        assert!(r.error.as_deref().unwrap().starts_with(limit), "{r:?}");
    }
}

#[tokio::test]
async fn unbounded_recursion_traps() {
    let d = Dirs::new();
    let r = attack(&d, &d.spec("hostile", &["recursion"])).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::Trapped),
        "{r:?}"
    );
    assert!(r.error.unwrap().starts_with("the guest trapped"));
}

#[tokio::test]
async fn output_flood_is_stopped_at_the_quota() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["output-flood"]);
    spec.limits.output_quota = 8 << 20;
    let r = attack(&d, &spec).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::OutputQuotaExceeded),
        "{r:?}"
    );
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .starts_with("output quota of 8MiB exceeded"),
        "{r:?}"
    );
    assert!(r.output_bytes <= 8 << 20, "{}", r.output_bytes);
    assert!(
        disk_usage(&d.output) <= 8 << 20,
        "{}",
        disk_usage(&d.output)
    );
}

#[tokio::test]
async fn stdout_flood_is_stopped_at_the_log_quota() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["stdout-flood"]);
    spec.limits.log_quota = 1 << 20;
    let r = attack(&d, &spec).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::LogQuotaExceeded),
        "{r:?}"
    );
    assert!(r.log_bytes <= 1 << 20, "{}", r.log_bytes);
    assert!(std::fs::metadata(d.logs.join("stdout.log")).unwrap().len() > 900 << 10);
}

#[tokio::test]
async fn sparse_files_and_file_floods_hit_the_output_quota() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["sparse"]);
    spec.limits.output_quota = 1 << 20;
    let r = attack(&d, &spec).await;
    assert_eq!(r.outcome, Outcome::OutputQuotaExceeded, "{r:?}");
    assert!(!d.output.join("after").exists());
    assert_eq!(r.output_bytes, 0);

    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["many-files"]);
    spec.limits.output_quota = 1 << 20;
    let r = attack(&d, &spec).await;
    assert_eq!(r.outcome, Outcome::OutputQuotaExceeded, "{r:?}");
    let files = std::fs::read_dir(&d.output).unwrap().count();
    assert!(
        files <= 256 && files > 200,
        "{files} files for 1 MiB at 4 KiB each"
    );
}

/// A module that fails if its memory is not zero, then dirties it.
const DIRTY: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory 1)
  (table 4 funcref)
  (global $g (mut i32) (i32.const 0))
  (func (export "_start")
    (if (i32.ne (memory.grow (i32.const 16)) (i32.const 1)) (then (call $exit (i32.const 9))))
    (if (i32.load (i32.const 1048000)) (then (call $exit (i32.const 7))))
    (if (i32.load (i32.const 1024)) (then (call $exit (i32.const 8))))
    (if (i32.eqz (ref.is_null (table.get (i32.const 0)))) (then (call $exit (i32.const 6))))
    (i32.store (i32.const 1048000) (i32.const 0xdeadbeef))
    (i32.store (i32.const 1024) (i32.const 0xdeadbeef))
    (table.set (i32.const 0) (ref.func $f))
    (global.set $g (i32.const 1)))
  (func $f)
  (elem declare func $f))"#;

#[tokio::test]
async fn a_pooled_slot_reads_as_zero_for_the_next_job() {
    // One slot, so every job reuses the same memory and table.
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        ..SandboxConfig::default()
    })
    .unwrap();
    let dirty = sandbox.prepare(&wat::parse_str(DIRTY).unwrap()).unwrap();
    let other = sandbox
        .prepare(
            &wat::parse_str(DIRTY.replace(
                "(global $g",
                "(global $h (mut i32) (i32.const 5)) (global $g",
            ))
            .unwrap(),
        )
        .unwrap();
    for module in [&dirty, &dirty, &other, &dirty] {
        let d = Dirs::new();
        let r = sandbox
            .run(module, &d.spec("dirty", &[]), &StopHandle::default())
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.exit_code),
            (Status::Succeeded, Some(0)),
            "state leaked between jobs: {r:?}"
        );
    }
}

#[tokio::test]
async fn limits_default_to_the_documented_values() {
    assert_eq!(
        Limits::default(),
        Limits {
            timeout: Duration::from_secs(30),
            memory: 512 << 20,
            output_quota: 1 << 30,
            log_quota: 16 << 20
        }
    );
    // The shared sandbox keeps working after every attack above.
    let d = Dirs::new();
    let r = run(HOSTILE_P1, &d.spec("hostile", &["write-ok"])).await;
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(
        std::fs::read_to_string(d.output.join("copy.txt")).unwrap(),
        "hello world\nHello insitu\n"
    );
    let _ = sandbox();
}

#[tokio::test]
async fn component_output_flood_is_stopped_near_the_quota() {
    // Components' file writes are caught by the per-tick rescan, not charged
    // per write: the disk may briefly hold more than the quota, never more than
    // the quota plus 16 MiB.
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["output-flood"]);
    spec.limits.output_quota = 8 << 20;
    let r = run(insitu_tests::HOSTILE_P2, &spec).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::OutputQuotaExceeded),
        "{r:?}"
    );
    assert!(
        disk_usage(&d.output) <= (8 << 20) + (16 << 20),
        "{}",
        disk_usage(&d.output)
    );
}
