//! The Podman backend with real containers (issue #19): a tiny static native
//! probe (C, `gcc -static`) imported into Podman, pushed to a real registry
//! (Debian's `docker-registry`) with `skopeo`, pulled back by digest and run
//! through [`PodmanBackend`] with the guest contract. Never skipped: a
//! missing `podman`, `gcc`, `skopeo` or `docker-registry` fails the test
//! (`scripts/setup` installs them).

use insitu_podman::{PodmanBackend, Settings};
use insitu_runtime::Status;
use insitu_runtime::backend::{Backend, StageCode, StageJob};
use insitu_runtime::backend::{JobSpec, Limits, StopHandle};
use insitu_runtime::outcome::Outcome;
use insitu_tests::native::{containers_conf, probe_image, run};
use insitu_tests::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn settings(registry: &Registry) -> Settings {
    Settings {
        runtime: Some("runc".into()),
        insecure_registries: vec![registry.host()],
        containers_conf: Some(containers_conf()),
        ..Settings::default()
    }
}

struct Stage {
    _tmp: tempfile::TempDir,
    job: StageJob,
}

fn stage(image: &(String, String), mode: &str, limits: Limits) -> Stage {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s);
    for d in ["input", "out", "logs"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    std::fs::write(p("input/a.txt"), "the cat saw the other cat\n").unwrap();
    let (image, digest) = image.clone();
    let job = StageJob {
        execution: format!("nv-test{}", std::process::id()),
        agreement: "0x00".into(),
        stage: 0,
        image,
        checksum: digest,
        code: StageCode::Native,
        spec: JobSpec {
            name: "stage-0".into(),
            inputs: vec![p("input")],
            output: p("out"),
            logs: p("logs"),
            args: vec![mode.into()],
            env: Vec::new(),
            limits,
            deterministic: None,
        },
        datasets: vec![None],
    };
    Stage { _tmp: tmp, job }
}

fn logs(job: &StageJob) -> String {
    std::fs::read_to_string(job.spec.logs.join("stdout.log")).unwrap_or_default()
}

fn leftovers() -> String {
    run(Command::new("podman").args([
        "ps",
        "-a",
        "--filter",
        "label=insitu.execution",
        "--format",
        "{{.Names}}",
    ]))
}

fn input_of(job: &StageJob) -> &Path {
    &job.spec.inputs[0]
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn native_images_run_contained_in_podman() {
    let registry = Registry::start();
    let img = probe_image(&registry);
    let backend = PodmanBackend::new(settings(&registry));
    backend.check().expect("podman answers");
    let stop = StopHandle::default();

    // Success: reads its input, writes its output, no environment.
    let s = stage(&img, "count", Limits::default());
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Succeeded, Outcome::Exited, Some(0)),
        "{r:?} {}",
        logs(&s.job)
    );
    assert_eq!(
        std::fs::read_to_string(s.job.spec.output.join("words.txt")).unwrap(),
        "6\n"
    );
    // Nothing of the host's environment: only what the runtime sets itself.
    let env: Vec<&str> = logs(&s.job)
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .map(str::to_string)
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    let mut env = env;
    env.sort();
    assert_eq!(env, ["HOME=/", "HOSTNAME=insitu"], "{}", logs(&s.job));
    assert_eq!(r.module_digest, s.job.checksum);

    // The input is read-only: neither changed nor added to.
    let s = stage(&img, "write-input", Limits::default());
    let before = fingerprint(input_of(&s.job));
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(r.exit_code, Some(7), "{r:?} {}", logs(&s.job));
    assert!(
        logs(&s.job).contains("Read-only file system"),
        "{}",
        logs(&s.job)
    );
    assert_eq!(fingerprint(input_of(&s.job)), before);

    // No network.
    let s = stage(&img, "net", Limits::default());
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(r.exit_code, Some(8), "{r:?} {}", logs(&s.job));
    assert!(logs(&s.job).contains("no network"), "{}", logs(&s.job));

    // Memory limit → memory_exceeded.
    let s = stage(
        &img,
        "memory",
        Limits {
            memory: 64 << 20,
            ..Limits::default()
        },
    );
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::MemoryExceeded),
        "{r:?}"
    );

    // Deadline → timed_out, enforced by the backend.
    let s = stage(
        &img,
        "sleep",
        Limits {
            timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    );
    let t = std::time::Instant::now();
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(
        (r.status, r.outcome),
        (Status::Failed, Outcome::TimedOut),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // Flooded logs → log_quota_exceeded, the log kept within its quota.
    let s = stage(
        &img,
        "flood",
        Limits {
            log_quota: 1 << 20,
            ..Limits::default()
        },
    );
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(r.outcome, Outcome::LogQuotaExceeded, "{r:?}");
    assert!(r.log_bytes <= 1 << 20, "{r:?}");

    // Stop mid-run.
    let s = stage(&img, "sleep", Limits::default());
    let stopping = StopHandle::default();
    let stopper = stopping.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stopper.stop();
    });
    let r = backend.run(&s.job, &stopping).await.unwrap();
    assert_eq!(
        (r.status, r.outcome),
        (Status::Stopped, Outcome::Stopped),
        "{r:?}"
    );

    // A digest that is not the image's is refused before anything runs.
    let mut s = stage(&img, "count", Limits::default());
    let wrong = format!("sha256:{}", "0".repeat(64));
    s.job.image = format!("{}@{wrong}", s.job.image.split('@').next().unwrap());
    s.job.checksum = wrong;
    let r = backend.run(&s.job, &stop).await.unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(!s.job.spec.output.join("words.txt").exists());

    // Every container is gone.
    assert_eq!(leftovers(), "", "containers left behind");

    // Rootless Podman where it cannot enforce limits (this host's cgroup v1)
    // is refused, not used without them: Podman run as an ordinary user.
    let user = "insitu-rootless-test";
    if Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        run(Command::new("useradd").args(["--create-home", user]));
    }
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("podman-as-user");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec runuser -u {user} -- env HOME=/home/{user} podman \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rootless = PodmanBackend::new(Settings {
        binary: wrapper.clone(),
        ..settings(&registry)
    });
    let cgroups =
        run(Command::new("podman").args(["info", "--format", "{{.Host.CgroupsVersion}}"]));
    match rootless.check() {
        Err(e) => {
            assert_eq!(cgroups, "v1", "{e}");
            assert!(
                e.to_string().contains("ignores memory and pids limits"),
                "{e}"
            );
        }
        Ok(mode) => {
            assert_eq!(cgroups, "v2", "{mode}");
            assert!(mode.contains("rootless"), "{mode}");
        }
    }

    // A container as a killed gateway leaves it, created and running: the
    // next start removes it.
    let s = stage(&img, "sleep", Limits::default());
    let args = backend.container_args(&s.job, "insitu-crashed-stage-0");
    let id = run(Command::new("podman")
        .args(["--runtime", "runc", "create"])
        .args(&args));
    run(Command::new("podman").args(["--runtime", "runc", "start", &id]));
    assert!(leftovers().contains("insitu-crashed-stage-0"));
    assert_eq!(backend.reconcile(&[]).unwrap(), 1);
    assert_eq!(leftovers(), "");
}
