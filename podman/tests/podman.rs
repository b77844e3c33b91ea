//! The Podman backend with real containers (issue #19): a tiny static native
//! probe (C, `gcc -static`) imported into Podman, pushed to a real registry
//! (Debian's `docker-registry`) with `skopeo`, pulled back by digest and run
//! through [`PodmanBackend`] with the guest contract. Never skipped: a
//! missing `podman`, `gcc`, `skopeo` or `docker-registry` fails the test
//! (`scripts/setup` installs them).

use insitu_podman::{PodmanBackend, Settings};
use insitu_runtime::Status;
use insitu_runtime::backend::{Backend, StageCode, StageJob};
use insitu_runtime::outcome::Outcome;
use insitu_runtime::sandbox::{JobSpec, Limits, StopHandle};
use insitu_tests::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The probe: one binary, one behaviour per first argument after the contract's.
const PROBE: &str = r#"
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *arg(int argc, char **argv, const char *key) {
    size_t n = strlen(key);
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0) return argv[i] + n;
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[argc - 1] : "";
    const char *in = arg(argc, argv, "--input1=");
    const char *out = arg(argc, argv, "--output=");
    if (strcmp(mode, "count") == 0) {
        char path[4096]; snprintf(path, sizeof path, "%s/a.txt", in);
        FILE *f = fopen(path, "r"); if (!f) { perror(path); return 3; }
        long words = 0; int c, inword = 0;
        while ((c = fgetc(f)) != EOF) {
            if (c == ' ' || c == '\n' || c == '\t') inword = 0;
            else if (!inword) { inword = 1; words++; }
        }
        snprintf(path, sizeof path, "%s/words.txt", out);
        FILE *o = fopen(path, "w"); if (!o) { perror(path); return 4; }
        fprintf(o, "%ld\n", words); fclose(o);
        printf("counted %ld words\n", words);
        extern char **environ;
        for (int n = 0; environ && environ[n]; n++) printf("env %s\n", environ[n]);
        return 0;
    }
    if (strcmp(mode, "write-input") == 0) {
        char path[4096]; snprintf(path, sizeof path, "%s/a.txt", in);
        int fd = open(path, O_WRONLY | O_APPEND);
        if (fd >= 0) { printf("opened the input for writing\n"); return 0; }
        printf("write refused: %s\n", strerror(errno));
        snprintf(path, sizeof path, "%s/new.txt", in);
        fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0) { printf("created a file in the input\n"); return 0; }
        printf("create refused: %s\n", strerror(errno));
        return 7;
    }
    if (strcmp(mode, "net") == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(80);
        inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
        if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0) { printf("connected\n"); return 0; }
        printf("no network: %s\n", strerror(errno));
        return 8;
    }
    if (strcmp(mode, "sleep") == 0) { sleep(3600); return 0; }
    if (strcmp(mode, "memory") == 0) {
        for (size_t total = 0;; total += 1 << 20) {
            char *p = malloc(1 << 20); if (!p) return 9;
            memset(p, 1, 1 << 20);
        }
    }
    if (strcmp(mode, "flood") == 0) {
        char line[1024]; memset(line, 'x', sizeof line - 1); line[sizeof line - 1] = '\n';
        for (;;) fwrite(line, 1, sizeof line, stdout);
    }
    return 2;
}
"#;

fn run(cmd: &mut Command) -> String {
    if cmd.get_program() == "podman" {
        cmd.env("CONTAINERS_CONF", containers_conf());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; run scripts/setup"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// This machine class runs insitu in a sandbox without CAP_SYS_RESOURCE:
/// containers get no default ulimits, and runc (crun cannot use the host's
/// cgroup v1 hierarchy here).
fn containers_conf() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers.conf");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "[containers]\ndefault_ulimits = []\n").unwrap();
    path
}

fn settings(registry: &Registry) -> Settings {
    Settings {
        runtime: Some("runc".into()),
        insecure_registries: vec![registry.host()],
        containers_conf: Some(containers_conf()),
        ..Settings::default()
    }
}

/// The probe image pushed to `registry`: (`host/probe@sha256:…`, digest).
fn image(registry: &Registry) -> (String, String) {
    {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("probe.c"), PROBE).unwrap();
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.join("rootfs/probe"))
            .arg(dir.join("probe.c")));
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.join("rootfs"))
            .arg("-cf")
            .arg(dir.join("rootfs.tar"))
            .arg("."));
        let tag = format!("localhost/insitu-probe:{}", std::process::id());
        run(Command::new("podman")
            .args(["import", "--change", "ENTRYPOINT [\"/probe\"]"])
            .arg(dir.join("rootfs.tar"))
            .arg(&tag));
        let remote = format!("{}/probe:1", registry.host());
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("containers-storage:{tag}"),
            &format!("docker://{remote}"),
        ]));
        let digest = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{remote}"),
        ]));
        run(Command::new("podman").args(["rmi", "-f", &tag]));
        (format!("{}/probe@{digest}", registry.host()), digest)
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
    let img = image(&registry);
    let backend = PodmanBackend::new(settings(&registry));
    backend.check().await.expect("podman answers");
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

    // A container as a killed gateway leaves it, created and running: the
    // next start removes it.
    let s = stage(&img, "sleep", Limits::default());
    let args = backend.create_args(&s.job, "insitu-crashed-stage-0");
    let id = run(Command::new("podman")
        .args(["--runtime", "runc"])
        .args(&args));
    run(Command::new("podman").args(["--runtime", "runc", "start", &id]));
    assert!(leftovers().contains("insitu-crashed-stage-0"));
    assert_eq!(backend.reconcile(&[]).await.unwrap(), 1);
    assert_eq!(leftovers(), "");
}
