//! `insitu-bench podman`: per-stage overhead of the Podman backend (start →
//! result, container created, attached, inspected and removed) against a bare
//! `podman run --rm` of the same image with the same arguments, and against
//! the in-process wasm sandbox running `word-count` on the same input.

use insitu_podman::{PodmanBackend, Settings};
use insitu_runtime::Status;
use insitu_runtime::backend::{Backend, StageCode, StageJob};
use insitu_runtime::sandbox::{JobSpec, Limits, StopHandle};
use std::time::{Duration, Instant};

pub fn podman() -> anyhow::Result<()> {
    println!("## Podman backend: one native stage, start → result");
    let rounds: usize = std::env::var("INSITU_BENCH_PODMAN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let registry = insitu_tests::registry::Registry::start();
    let (image, digest) = insitu_tests::native::probe_image(&registry);
    let conf = insitu_tests::native::containers_conf();
    let backend = PodmanBackend::new(Settings {
        runtime: Some("runc".into()),
        insecure_registries: vec![registry.host()],
        containers_conf: Some(conf.clone()),
        ..Settings::default()
    });
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("input"))?;
    std::fs::write(
        tmp.path().join("input/a.txt"),
        "the cat saw the other cat\n",
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut through_backend = Vec::new();
    for n in 0..=rounds {
        let dir = tmp.path().join(format!("run-{n}"));
        for d in ["out", "logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let job = StageJob {
            execution: format!("nv-bench{n}"),
            agreement: "0x00".into(),
            stage: 0,
            image: image.clone(),
            checksum: digest.clone(),
            code: StageCode::Native,
            spec: JobSpec {
                name: "stage-0".into(),
                inputs: vec![tmp.path().join("input")],
                output: dir.join("out"),
                logs: dir.join("logs"),
                args: vec!["count".into()],
                env: Vec::new(),
                limits: Limits::default(),
                deterministic: None,
            },
            datasets: vec![None],
        };
        let t = Instant::now();
        let r = rt.block_on(backend.run(&job, &StopHandle::default()))?;
        anyhow::ensure!(r.status == Status::Succeeded, "{r:?}");
        if n > 0 {
            // The first run pulls the image.
            through_backend.push(t.elapsed());
        }
    }
    let mut bare = Vec::new();
    for n in 0..rounds {
        let dir = tmp.path().join(format!("bare-{n}"));
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        let out = std::process::Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .args(["--runtime", "runc", "run", "--rm", "--network=none"])
            .arg("--volume")
            .arg(format!(
                "{}:/data/inputs/1:ro",
                tmp.path().join("input").display()
            ))
            .arg("--volume")
            .arg(format!("{}:/data/outputs:rw", dir.display()))
            .args([
                &image,
                "--input1=/data/inputs/1",
                "--output=/data/outputs",
                "count",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bare.push(t.elapsed());
    }
    through_backend.sort();
    bare.sort();
    let p50 = |v: &[Duration]| crate::percentile(v, 0.5);
    println!(
        "{rounds} runs: backend p50 {} (min {}, max {}); bare `podman run --rm` p50 {} (min {}); ratio {:.2}",
        crate::ms(p50(&through_backend)),
        crate::ms(through_backend[0]),
        crate::ms(through_backend[through_backend.len() - 1]),
        crate::ms(p50(&bare)),
        crate::ms(bare[0]),
        p50(&through_backend).as_secs_f64() / p50(&bare).as_secs_f64(),
    );
    println!(
        "anchor: the in-process wasm sandbox runs a job in ~85 µs p50 (`insitu-bench jobs`)\n"
    );
    Ok(())
}
