//! The `insitu` command line as users run it: one JSON line on stdout, exit
//! codes, clear errors on stderr.

mod api;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("in")).unwrap();
        std::fs::write(
            tmp.path().join("in/a.txt"),
            "one two two three three three\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("word-count.wasm"),
            insitu_tests::WORD_COUNT_P1,
        )
        .unwrap();
        std::fs::write(tmp.path().join("hostile.wasm"), insitu_tests::HOSTILE_P1).unwrap();
        Env { tmp }
    }

    fn p(&self, rel: &str) -> String {
        self.tmp.path().join(rel).display().to_string()
    }

    fn insitu(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args(args)
            .env("XDG_CACHE_HOME", self.tmp.path().join("cache"))
            .output()
            .unwrap()
    }
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one line on stdout: {stdout:?}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_prints_one_json_line_and_writes_the_output() {
    let e = Env::new();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("word-count.wasm"),
        "--input",
        &e.p("in"),
        "--output",
        &e.p("out"),
        "--logs",
        &e.p("logs"),
        "--",
        "--top",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["outcome"], "exited");
    assert_eq!(r["exit_code"], 0);
    assert!(r["duration_ms"].is_u64());
    assert!(r["module_digest"].as_str().unwrap().starts_with("sha256:"));
    let counts: Value =
        serde_json::from_slice(&std::fs::read(e.tmp.path().join("out/counts.json")).unwrap())
            .unwrap();
    assert_eq!(
        counts["top"],
        serde_json::json!([["three", 3]]),
        "extra args after -- reach the guest"
    );
    assert_eq!(
        r["output_bytes"],
        std::fs::metadata(e.tmp.path().join("out/counts.json"))
            .unwrap()
            .len()
    );
    assert!(Path::new(&e.p("logs/stderr.log")).exists());
}

#[test]
fn guest_stdout_never_reaches_our_stdout() {
    let e = Env::new();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("out"),
        "--",
        "stdout-flood",
    ]);
    // Without --logs the logs go to a temp dir; the flood ends at the log quota.
    let r = report(&out);
    assert_eq!(r["outcome"], "log_quota_exceeded");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: log quota of 16MiB exceeded"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn limits_come_from_flags() {
    let e = Env::new();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("out"),
        "--timeout",
        "300ms",
        "--",
        "loop",
    ]);
    let r = report(&out);
    assert_eq!(
        (r["status"].as_str(), r["outcome"].as_str()),
        (Some("failed"), Some("timed_out"))
    );
    assert_eq!(r["exit_code"], Value::Null);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: time limit of 300ms reached"),
        "{}",
        stderr(&out)
    );

    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("out2"),
        "--memory",
        "32MiB",
        "--",
        "memory-bomb",
    ]);
    assert_eq!(report(&out)["outcome"], "memory_exceeded");
    assert!(
        stderr(&out).contains("guest stderr"),
        "the temp logs' tail is shown: {}",
        stderr(&out)
    );
}

#[test]
fn a_rejected_module_is_a_report_not_a_crash() {
    let e = Env::new();
    std::fs::write(e.tmp.path().join("notes.txt"), "hello").unwrap();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("notes.txt"),
        "--output",
        &e.p("out"),
    ]);
    let r = report(&out);
    assert_eq!(
        (r["status"].as_str(), r["outcome"].as_str()),
        (Some("failed"), Some("rejected"))
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a WebAssembly binary"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_invocations_fail_with_one_clear_line() {
    let e = Env::new();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("missing.wasm"),
        "--output",
        &e.p("out"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).starts_with(&format!(
            "error: cannot read the module {}",
            e.p("missing.wasm")
        )),
        "{}",
        stderr(&out)
    );

    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("out"),
        "--memory",
        "12XB",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid size `12XB`"),
        "{}",
        stderr(&out)
    );

    std::fs::create_dir_all(e.tmp.path().join("used")).unwrap();
    std::fs::write(e.tmp.path().join("used/old.json"), "{}").unwrap();
    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("used"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not empty; give each run a new or empty directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(e.tmp.path().join("used/old.json")).unwrap(),
        "{}"
    );

    let out = e.insitu(&[
        "run",
        "--module",
        &e.p("hostile.wasm"),
        "--output",
        &e.p("o"),
        "--memory",
        "64GiB",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("memory of 64GiB is above the provider's maximum of 4GiB"),
        "{}",
        stderr(&out)
    );

    // A keystore without its password; a keystore opened with a wrong one.
    let out = e.insitu(&["key", "new", "--keystore", &e.p("k.json")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: set the keystore's password in INSITU_KEYSTORE_PASSWORD\n"
    );
    assert!(!e.tmp.path().join("k.json").exists());
    let with = |password: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args(args)
            .env("INSITU_KEYSTORE_PASSWORD", password)
            .output()
            .unwrap()
    };
    let made = with("pw", &["key", "new", "--keystore", &e.p("k.json")]);
    assert!(made.status.success(), "{}", stderr(&made));
    let address = String::from_utf8(made.stdout).unwrap();
    let back = with("pw", &["key", "address", &e.p("k.json")]);
    assert_eq!(String::from_utf8(back.stdout).unwrap(), address);
    let wrong = with("nope", &["key", "address", &e.p("k.json")]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        stderr(&wrong).starts_with(&format!(
            "error: keystore {}: wrong password",
            e.p("k.json")
        )),
        "{}",
        stderr(&wrong)
    );
}

#[test]
fn the_cache_makes_the_second_run_skip_compilation() {
    let e = Env::new();
    for out in ["o1", "o2"] {
        let o = e.insitu(&[
            "run",
            "--module",
            &e.p("word-count.wasm"),
            "--input",
            &e.p("in"),
            "--output",
            &e.p(out),
        ]);
        assert!(o.status.success());
    }
    let cached: Vec<_> = walk(&e.tmp.path().join("cache/insitu/modules"));
    assert_eq!(cached.len(), 1, "{cached:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn demo_runs_the_examples_and_the_whole_gateway_flow() {
    let out = Command::new(env!("CARGO_BIN_EXE_insitu"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for name in ["word-count", "csv-stats", "linreg-train"] {
        assert!(text.contains(&format!("{name:<13} succeeded")), "{text}");
    }
    assert!(text.contains("\"r2\""), "{text}");
    for line in [
        "  stage 0  succeeded exited exit 0",
        "  stage 1  succeeded exited exit 0",
        "| temperature | 5000 |",
        "  ok   signature: signed by 0x",
        "  ok   provider: ",
        "  ok   file report.md: ",
        "gateway     shut down",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    assert!(text.contains("succeeded (2/2 stages done)"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("demo complete: every step succeeded")
    );
}

#[test]
fn push_inspect_and_run_an_image_from_a_real_registry() {
    let e = Env::new();
    let reg = insitu_tests::registry::Registry::start();
    let host = reg.host();
    let repo = format!("{host}/algos/word-count");
    let out = e.insitu(&[
        "push",
        &e.p("word-count.wasm"),
        &format!("{repo}:v1"),
        "--insecure-registry",
        &host,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    // skopeo, an independent client, sees the same manifest digest.
    let raw = insitu_tests::registry::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{repo}:v1"),
    ]);
    assert_eq!(
        insitu_tests::sha256_hex(&raw),
        digest.trim_start_matches("sha256:")
    );

    let out = e.insitu(&[
        "inspect",
        &format!("{repo}:v1"),
        "--insecure-registry",
        &host,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (info["digest"].as_str(), info["kind"].as_str()),
        (Some(digest.as_str()), Some("wasm"))
    );
    assert_eq!(info["module_kind"], "core");

    let out = e.insitu(&[
        "run",
        "--image",
        &format!("{repo}:v1@{digest}"),
        "--insecure-registry",
        &host,
        "--input",
        &e.p("in"),
        "--output",
        &e.p("out"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(report(&out)["status"], "succeeded");
    assert!(
        std::fs::read_to_string(e.tmp.path().join("out/counts.json"))
            .unwrap()
            .contains("\"three\": 3")
    );

    // A tag alone is refused: images run pinned by checksum.
    let out = e.insitu(&[
        "run",
        "--image",
        &format!("{repo}:v1"),
        "--insecure-registry",
        &host,
        "--output",
        &e.p("o2"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("a tag without a checksum is refused"),
        "{}",
        stderr(&out)
    );

    // Cached: the same image runs with the registry gone.
    drop(reg);
    let out = e.insitu(&[
        "run",
        "--image",
        &format!("{repo}:v1@{digest}"),
        "--insecure-registry",
        &host,
        "--input",
        &e.p("in"),
        "--output",
        &e.p("o3"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn layouts_written_by_push_run_locally_and_through_skopeo() {
    let e = Env::new();
    let layout = format!("{}:v2", e.p("layout"));
    let out = e.insitu(&["push", &e.p("word-count.wasm"), "--layout", &layout]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = e.insitu(&[
        "run",
        "--image-layout",
        &layout,
        "--input",
        &e.p("in"),
        "--output",
        &e.p("out"),
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let reg = insitu_tests::registry::Registry::start();
    let host = reg.host();
    insitu_tests::registry::skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{layout}"),
        &format!("docker://{host}/copied/wc:1"),
    ]);
    let out = e.insitu(&[
        "run",
        "--image",
        &format!("{host}/copied/wc@{digest}"),
        "--insecure-registry",
        &host,
        "--input",
        &e.p("in"),
        "--output",
        &e.p("o2"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = e.insitu(&[
        "run",
        "--image-layout",
        &format!("{}:nope", e.p("layout")),
        "--output",
        &e.p("o3"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no image tagged `nope`; tags: [\"v2\"]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_foreign_layout_pushed_by_skopeo_runs_through_run_image() {
    use insitu_tests::sha256_hex;
    let e = Env::new();
    // Written by hand, not by insitu: older layer media type, its own config.
    let dir = e.tmp.path().join("foreign");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let wasm = insitu_tests::WORD_COUNT_P1;
    let config = br#"{"architecture": "wasm", "os": "wasip1"}"#;
    let manifest = format!(
        r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {{"mediaType": "application/vnd.wasm.config.v0+json", "digest": "sha256:{}", "size": {}}},
  "layers": [{{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": "sha256:{}", "size": {}}}]}}"#,
        sha256_hex(config),
        config.len(),
        sha256_hex(wasm),
        wasm.len()
    );
    for blob in [&config[..], wasm, manifest.as_bytes()] {
        std::fs::write(dir.join("blobs/sha256").join(sha256_hex(blob)), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let digest = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{digest}", "size": {}, "annotations": {{"org.opencontainers.image.ref.name": "x"}}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    let reg = insitu_tests::registry::Registry::start();
    let host = reg.host();
    insitu_tests::registry::skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:x", dir.display()),
        &format!("docker://{host}/foreign/wc:x"),
    ]);
    let out = e.insitu(&[
        "run",
        "--image",
        &format!("{host}/foreign/wc:x@{digest}"),
        "--insecure-registry",
        &host,
        "--input",
        &e.p("in"),
        "--output",
        &e.p("out"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        report(&out)["module_digest"],
        format!("sha256:{}", sha256_hex(wasm))
    );
}

fn last_word(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

#[test]
fn catalog_verbs_register_datasets_workflows_and_agreements() {
    let e = Env::new();
    let data = e.p("data");
    let sum = format!("sha256:{}", "cb".repeat(32));
    let ds = last_word(&e.insitu(&[
        "asset",
        "add",
        "--data-dir",
        &data,
        "--path",
        &e.p("in"),
        "--name",
        "words",
        "--allow-image",
        &format!("r.example/wc:1@{sum}"),
    ]));
    assert!(ds.starts_with("did:nv:") && ds.len() == 71, "{ds}");
    let workflow = serde_json::json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "r.example/wc", "tag": "1", "checksum": sum}},
         "input": [{"index": 0, "id": ds}]}]}}});
    std::fs::write(e.tmp.path().join("wf.json"), workflow.to_string()).unwrap();
    let wf = last_word(&e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &data,
        "--file",
        &e.p("wf.json"),
    ]));
    assert!(wf.starts_with("did:nv:") && wf != ds);
    let consumer = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4";
    let id = last_word(&e.insitu(&[
        "agreement",
        "grant",
        "--data-dir",
        &data,
        "--consumer",
        consumer,
        "--dataset",
        &ds,
        "--workflow",
        &wf,
        "--timeout",
        "60",
    ]));
    assert!(id.starts_with("0x") && id.len() == 66, "{id}");
    // An algorithm asset; a stage naming it must run its checksum.
    let algo = last_word(&e.insitu(&[
        "algorithm",
        "add",
        "--data-dir",
        &data,
        "--image",
        &format!("r.example/wc:1@{sum}"),
        "--name",
        "word count",
    ]));
    assert!(algo.starts_with("did:nv:") && algo.len() == 71, "{algo}");
    let mut named = workflow.clone();
    named["main"]["workflow"]["stages"][0]["transformation"] = serde_json::json!({"id": algo});
    std::fs::write(e.tmp.path().join("named.json"), named.to_string()).unwrap();
    last_word(&e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &data,
        "--file",
        &e.p("named.json"),
    ]));
    let other = format!("sha256:{}", "dd".repeat(32));
    named["main"]["workflow"]["stages"][0]["requirements"]["container"]["checksum"] =
        other.clone().into();
    std::fs::write(e.tmp.path().join("named.json"), named.to_string()).unwrap();
    let out = e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &data,
        "--file",
        &e.p("named.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: workflow $.main.workflow.stages[0].transformation.id: algorithm {algo} is the image {sum}, but the stage runs {other}; use the algorithm's checksum or another algorithm"
        )
    );
    // Description, tags and author go into the DDO the catalog searches.
    let described = last_word(&e.insitu(&[
        "asset",
        "add",
        "--data-dir",
        &data,
        "--path",
        &e.p("in"),
        "--name",
        "more words",
        "--description",
        "words counted by hand",
        "--tags",
        "text, words",
        "--author",
        "Ada",
    ]));
    let store = insitu_runtime::store::Store::open(Path::new(&data).join("insitu.db")).unwrap();
    let (_, ddo) = store
        .ddo(&insitu_runtime::workflow::Did::parse(&described).unwrap())
        .unwrap();
    let meta = &ddo["service"][0]["attributes"];
    assert_eq!(meta["main"]["author"], "Ada");
    assert_eq!(
        meta["additionalInformation"],
        serde_json::json!({"description": "words counted by hand", "tags": ["text", "words"]})
    );
    let found = store
        .search(&insitu_runtime::store::Search {
            text: "hand".into(),
            page_size: 10,
            page: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.0[0]["id"], serde_json::json!(described));

    // Refusals: one clear line, exit 2, nothing registered.
    let mut bad = workflow.clone();
    bad["main"]["workflow"]["stages"][0]["input"][0]["id"] = "did:nv:12345".into();
    std::fs::write(e.tmp.path().join("bad.json"), bad.to_string()).unwrap();
    let out = e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &data,
        "--file",
        &e.p("bad.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: workflow $.main.workflow.stages[0].input[0].id: `did:nv:12345` is not a DID: expected did:nv: followed by 64 hex digits"
    );
    std::fs::write(e.tmp.path().join("broken.json"), "{\"main\": ").unwrap();
    let out = e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &data,
        "--file",
        &e.p("broken.json"),
    ]);
    assert!(
        stderr(&out).starts_with(&format!(
            "error: workflow {}: not valid JSON: EOF",
            e.p("broken.json")
        )),
        "{}",
        stderr(&out)
    );
    let ghost = format!("did:nv:{}", "ab".repeat(32));
    let out = e.insitu(&[
        "agreement",
        "grant",
        "--data-dir",
        &data,
        "--consumer",
        consumer,
        "--dataset",
        &ghost,
        "--workflow",
        &wf,
    ]);
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: unknown DID `{ghost}`; register it first (insitu asset add / insitu workflow add)"
        )
    );
    let out = e.insitu(&[
        "agreement",
        "grant",
        "--data-dir",
        &data,
        "--consumer",
        "alice",
        "--dataset",
        &ds,
        "--workflow",
        &wf,
    ]);
    assert_eq!(
        stderr(&out).trim(),
        "error: invalid address `alice`: expected 0x followed by 40 hex digits"
    );
}

/// The README's shell block after `<!-- MARKER -->`.
fn readme_block(marker: &str) -> &'static str {
    include_str!("../../README.md")
        .split(&format!("<!-- {marker} -->\n```sh\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap_or_else(|| panic!("README has no {marker} block"))
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a README block in `dir` with bash, `insitu` first on the PATH,
/// `cargo` a no-op (the tests built what it would) and `envs` set.
fn run_block(block: &str, dir: &Path, envs: &[(&str, String)]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_insitu")).parent().unwrap();
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            // Background jobs die with the script, whatever happens, so no
            // orphan keeps our output pipes open.
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\ncargo() {{ :; }}\n{block}\n"
        ))
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// The README's curl walkthrough, run as written (on a free port; the user's
/// `cargo build … -p word-count` step is replaced by the module the tests built).
#[test]
fn the_readme_walkthrough_runs_as_written() {
    let e = Env::new();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    let out = run_block(
        readme_block("walkthrough"),
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "event: log",
        "event: progress\ndata: {\"fraction\":1.0,",
        "1 files, 6 words, 4 distinct",
        "event: end\ndata: {\"did\":\"did:nv:",
        "\"reason\":null,\"status\":\"succeeded\"}",
        "\"signature\":\"0x",
        "\"words\": 6",
        "ok   hash: the body hashes to 0x",
        "ok   provider: ",
        "ok   file counts.json: ",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    assert!(stderr(&out).contains("gateway stopped"), "{}", stderr(&out));
}

/// The README's Python and JavaScript walkthrough, run as written with the
/// pinned compilers `scripts/setup` installs: `insitu new` and `insitu
/// build` (a template, the two examples), `insitu run`, `push`, `serve`
/// (which compiles each image when its workflow is registered), `exec
/// --verify`. The Python csv-stats and the JavaScript word-count write,
/// byte for byte, what the Rust examples write on the same data.
#[test]
fn the_readme_languages_walkthrough_runs_as_written() {
    let e = Env::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::os::unix::fs::symlink(repo.join("examples"), e.tmp.path().join("examples")).unwrap();
    let out = run_block(
        readme_block("languages walkthrough"),
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let lang = e.tmp.path().join("lang");
    let read = |p: &Path| {
        std::fs::read_to_string(p).unwrap_or_else(|err| panic!("{}: {err}", p.display()))
    };
    assert_eq!(
        read(&lang.join("lines/lines.json")),
        "{\"files\": 1, \"lines\": 4}\n"
    );
    // What the Rust examples write on the same data, in the same sandbox.
    let rust = |name: &str, wasm: &[u8], file: &str| {
        std::fs::write(lang.join(format!("{name}.rust.wasm")), wasm).unwrap();
        let dir = lang.join(format!("{name}-rust"));
        let out = e.insitu(&[
            "run",
            "--module",
            &lang.join(format!("{name}.rust.wasm")).display().to_string(),
            "--input",
            &lang.join("sales").display().to_string(),
            "--output",
            &dir.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        read(&dir.join(file))
    };
    let stats = rust("csv-stats", insitu_examples::CSV_STATS.wasm, "stats.json");
    let counts = rust(
        "word-count",
        insitu_examples::WORD_COUNT.wasm,
        "counts.json",
    );
    assert!(stats.contains("\"mean\": 8.25"), "{stats}");
    assert_eq!(
        read(&lang.join("stats/stats.json")),
        stats,
        "python csv-stats, insitu run"
    );
    let downloaded = |file: &str| {
        let dirs: Vec<_> = std::fs::read_dir(&lang)
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with("out-")
                    && p.join(file).is_file()
            })
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        read(&dirs[0].join(file))
    };
    assert_eq!(
        downloaded("stats.json"),
        stats,
        "python csv-stats through the gateway"
    );
    assert_eq!(
        downloaded("counts.json"),
        counts,
        "javascript word-count through the gateway"
    );
    // exec --verify, then verify --reproduce: the deterministic re-run gives
    // the same outputs for the Python and the JavaScript component.
    assert_eq!(text.matches("ok   file ").count(), 4, "{text}");
    for want in ["ok   output stats.json: ", "ok   output counts.json: "] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    // Each image compiled once, when its workflow was registered.
    let log = read(&lang.join("serve.log"));
    assert_eq!(log.matches("image warmed").count(), 2, "{log}");
    // Nothing but the output was written into the examples.
    for f in ["examples/python/csv-stats", "examples/js/word-count"] {
        let names: Vec<_> = std::fs::read_dir(repo.join(f))
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{f}: {names:?}");
    }
}

/// `insitu new` in each language gives a project that `insitu build`
/// builds and `insitu run` runs as created, with the same result; bad input
/// to both is one clear line and writes nothing.
#[test]
fn new_projects_build_and_run_in_every_language() {
    let e = Env::new();
    for lang in ["rust", "python", "js"] {
        let name = format!("lines-{lang}");
        let out = e.insitu(&["new", &name, "--lang", lang, "--dir", &e.p("")]);
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        let dir = e.tmp.path().join(&name);
        let out = e.insitu(&["build", &dir.display().to_string()]);
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        let module = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(module, dir.join("app.wasm").display().to_string());
        let kind = if lang == "rust" {
            "module"
        } else {
            "component"
        };
        assert!(
            stderr(&out).contains(&format!("built the {lang} {kind} ")),
            "{}",
            stderr(&out)
        );
        let result = e.p(&format!("out-{lang}"));
        let out = e.insitu(&[
            "run",
            "--module",
            &module,
            "--input",
            &e.p("in"),
            "--output",
            &result,
        ]);
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(format!("{result}/lines.json")).unwrap(),
            "{\"files\": 1, \"lines\": 1}\n",
            "{lang}"
        );
    }
    let out = e.insitu(&["new", "lines-js", "--lang", "js", "--dir", &e.p("")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already exists and is not empty"),
        "{}",
        stderr(&out)
    );
    let out = e.insitu(&["build", &e.p("in")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not an algorithm project"),
        "{}",
        stderr(&out)
    );
    // A Python syntax error: componentize-py's own message, nothing written.
    std::fs::write(e.tmp.path().join("lines-python/app.py"), "def broken(:\n").unwrap();
    let out = e.insitu(&["build", &e.p("lines-python"), "-o", &e.p("broken.wasm")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("componentize-py failed building"),
        "{}",
        stderr(&out)
    );
    assert!(!e.tmp.path().join("broken.wasm").exists());
}

/// The README's `insitu exec` walkthrough, run as written.
#[test]
fn the_readme_exec_walkthrough_runs_as_written() {
    let e = Env::new();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    let out = run_block(
        readme_block("exec walkthrough"),
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "1 files, 6 words, 4 distinct",
        "succeeded: result did:nv:",
        "ok   signature: ",
        "ok   provider: ",
        "ok   file counts.json: ",
        "\"words\": 6",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    assert!(
        stderr(&out).contains("progress: stage 0 100%"),
        "{}",
        stderr(&out)
    );
}

/// The README's output-control walkthrough, run as written: results held
/// for a reviewer, released with `insitu review`, downloaded and verified by
/// the consumer's `insitu exec`, which waited through the review.
#[test]
fn the_readme_airlock_walkthrough_runs_as_written() {
    let e = Env::new();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    let out = run_block(
        readme_block("airlock walkthrough"),
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "\"passed\": true",
        "released by ann",
        "succeeded: result did:nv:",
        "ok   signature: ",
        "\"words\": 6",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
}

/// The README's data-sharing walkthrough, run as written: a download under
/// an access agreement, a consumer's own workflow executed, the provider's
/// record of the download.
#[test]
fn the_readme_sharing_walkthrough_runs_as_written() {
    let e = Env::new();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    let out = run_block(
        readme_block("sharing walkthrough"),
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#""files":[{"contentLength":"26","contentType":"application/octet-stream","index":0,"name":"a.txt"}]"#,
        "{text}"
    );
    assert_eq!(lines[1], "the cat saw the other cat", "{text}");
    let accepted: serde_json::Value = serde_json::from_str(lines[2]).expect(&text);
    assert!(
        accepted["workflowId"].as_str().unwrap().starts_with("nv-")
            && accepted["access_token"].is_string(),
        "{text}"
    );
    assert!(lines[3].starts_with("STARTED (UTC)"), "{text}");
    assert!(
        lines[4].contains("/a.txt") && lines[4].contains(" 26 yes "),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
}

/// The README's federated walkthrough, run as written: three `insitu serve`
/// providers on free ports, `insitu fl run`, the published model downloaded
/// (the user's `cargo build … -p linreg-train` step is replaced by the module
/// the build script made).
#[test]
fn the_readme_federated_walkthrough_runs_as_written() {
    let e = Env::new();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(
        release.join("linreg-train.wasm"),
        insitu_examples::LINREG_TRAIN.wasm,
    )
    .unwrap();
    // Held together, so the three ports differ.
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect();
    drop(held);
    let out = run_block(
        readme_block("federated walkthrough"),
        e.tmp.path(),
        &[("INSITU_FL_PORTS", ports.join(" "))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    for (round, line) in lines[..10].iter().enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["round"], round as u64, "{line}");
        assert_eq!(line["participants"], serde_json::json!([0, 1, 2]));
    }
    let last: Value = serde_json::from_str(lines[10]).unwrap();
    let digest = last["digest"].as_str().unwrap().to_string();
    let results: Value = serde_json::from_str(lines[11]).unwrap();
    assert_eq!(results["receipt"]["body"]["federated"]["model"], digest);
    assert!(
        results["receipt"]["signature"]
            .as_str()
            .unwrap()
            .starts_with("0x")
    );
    // sha256sum of the downloaded model is the coordinator's digest.
    assert!(
        lines[12].starts_with(digest.trim_start_matches("sha256:")),
        "{}",
        lines[12]
    );
}

/// The README's chain-mode walkthrough, run as written against anvil
/// restored from the `testchain/` fixture (built by `scripts/setup`).
#[test]
fn the_readme_chain_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for needed in [
        "testchain/out/state.json",
        "testchain/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
    ] {
        assert!(
            root.join(needed).exists(),
            "{needed} is missing: run scripts/setup (it builds the chain fixture)"
        );
    }
    let e = Env::new();
    std::os::unix::fs::symlink(root.join("testchain"), e.tmp.path().join("testchain")).unwrap();
    let release = e.tmp.path().join("target/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    let out = run_block(
        readme_block("chain walkthrough"),
        e.tmp.path(),
        &[
            ("INSITU_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("INSITU_CHAIN_ADDR", format!("127.0.0.1:{}", free_port())),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "event: end\ndata: {\"did\":\"did:nv:",
        "\"reason\":null,\"status\":\"succeeded\"}",
        "\"settlement\":{\"receipt_hash\":\"0x",
        "\"release_tx\":\"0x",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    // The provider's key and the keystore's password are never printed.
    let all = format!("{text}{}", stderr(&out));
    for secret in [
        "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        "correct-horse-battery-staple",
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    let keystore = std::fs::read_to_string(e.tmp.path().join("chainwalk/provider.json")).unwrap();
    assert!(keystore.contains("\"kdf\":\"scrypt\"") && !keystore.contains("59c6995e"));
}

/// `insitu k8s manifests`: the objects a stage would create, for review.
#[test]
fn k8s_manifests_print_the_objects_of_a_stage() {
    let e = Env::new();
    let checksum = format!("sha256:{}", "4".repeat(64));
    let dataset = format!("did:nv:{}", "5".repeat(64));
    std::fs::write(
        e.tmp.path().join("wf.json"),
        serde_json::json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "reg.example:5000/algos/tool", "tag": "2", "checksum": checksum}},
             "input": [{"index": 0, "id": dataset}]},
            {"index": 1, "requirements": {"container": {"image": "reg.example:5000/algos/report", "tag": "", "checksum": checksum}},
             "input": [{"index": 0, "previousStage": 0}]}]}}})
        .to_string(),
    )
    .unwrap();
    let out = e.insitu(&[
        "k8s",
        "manifests",
        "--workflow",
        &e.p("wf.json"),
        "--stage",
        "0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    for want in [
        "kind: NetworkPolicy",
        "kind: Pod",
        &format!("image: reg.example:5000/algos/tool@{checksum}"),
        "name: unresolved-dataset-1",
        "readOnlyRootFilesystem: true",
        "- --input1=/data/inputs/1",
    ] {
        assert!(yaml.contains(want), "no `{want}` in\n{yaml}");
    }
    // Stage 1 reads stage 0's output from the data volume, read-only.
    let out = e.insitu(&[
        "k8s",
        "manifests",
        "--workflow",
        &e.p("wf.json"),
        "--stage",
        "1",
    ]);
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("subPath: executions/nv-00000000000000000000000000000000/stage-0/outputs"),
        "{yaml}"
    );
    let out = e.insitu(&[
        "k8s",
        "manifests",
        "--workflow",
        &e.p("wf.json"),
        "--stage",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: the workflow has no stage 7 (its stages: [0, 1])\n"
    );
}

/// `insitu serve` killed with SIGKILL at many points of its executions, then
/// restarted, over and over: every execution ends in a terminal state (the
/// interrupted ones `failed`, saying in which status they were cut), every
/// published result is intact (each file's sha256 as recorded), and no
/// temporary files are left in the blob store or the module cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_leaves_consistent_state() {
    use insitu_gateway::client::Consumer;
    use insitu_runtime::image::package;
    use insitu_runtime::receipt::ProviderKey;
    use insitu_runtime::store::Store;
    let e = Env::new();
    let (data, layout, input) = (
        e.tmp.path().join("data"),
        e.tmp.path().join("layout"),
        e.tmp.path().join("books"),
    );
    let wc = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&layout, "wc", &wc).unwrap();
    std::fs::create_dir_all(&input).unwrap();
    // Big enough that running takes a while, so kills land in every status.
    std::fs::write(
        input.join("a.txt"),
        "the quick brown fox jumps over the lazy dog\n".repeat(400_000),
    )
    .unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let consumer = ProviderKey::random();
    let (agreement, workflow) = {
        let store = Store::open(data.join("insitu.db")).unwrap();
        let ds = store
            .add_dataset(
                "books",
                &input,
                std::slice::from_ref(&wc.manifest_digest),
                86_400,
            )
            .unwrap();
        let wf = store
            .add_workflow(&serde_json::json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": wc.manifest_digest}},
                 "input": [{"index": 0, "id": ds}]}]}}}))
            .unwrap();
        (
            store.grant(&consumer.address(), &ds, &wf, 86_400).unwrap(),
            wf.to_string(),
        )
    };
    let serve = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args([
                "serve",
                "--workers",
                "2",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--layout")
            .arg(&layout)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    };
    let mut ids = Vec::new();
    // Kill delays after the burst: at once, then a fixed pseudo-random
    // sequence up to 1.2 s (compiling, running, publishing, done).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..10 {
        let (mut child, base) = serve();
        let c = Consumer::new(base.clone(), consumer.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let token = loop {
            match c.token(&c.claims(&agreement, &workflow, None)).await {
                Ok(t) => break t,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("the server did not come up: {e}"),
            }
        };
        for _ in 0..4 {
            ids.push(c.execute(&token, &agreement, &workflow).await.unwrap());
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = if round == 0 { 0 } else { seed % 1200 };
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // One last start recovers what the last kill interrupted.
    let (mut child, base) = serve();
    let c = Consumer::new(base, consumer.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c
        .token(&c.claims(&agreement, &workflow, None))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And it still works: one more execution, waited for.
    let token = c
        .token(&c.claims(&agreement, &workflow, None))
        .await
        .unwrap();
    let last = c.execute(&token, &agreement, &workflow).await.unwrap();
    let token = c
        .token(&c.claims(&agreement, &workflow, Some(&last)))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = c.get(&token, &format!("status/{last}")).await.unwrap();
        match s["workflowStatus"]["status"].as_str().unwrap() {
            "succeeded" => break,
            "failed" | "stopped" => panic!("{s}"),
            _ => {
                assert!(std::time::Instant::now() < deadline, "{s}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    ids.push(last);
    let mut cut = std::collections::BTreeMap::<String, usize>::new();
    let mut succeeded = 0;
    for id in &ids {
        let token = c
            .token(&c.claims(&agreement, &workflow, Some(id)))
            .await
            .unwrap();
        let s = c.get(&token, &format!("status/{id}")).await.unwrap();
        match s["workflowStatus"]["status"].as_str().unwrap() {
            "succeeded" => {
                succeeded += 1;
                let results = c.get(&token, &format!("results/{id}")).await.unwrap();
                for f in results["files"].as_array().unwrap() {
                    let bytes = c
                        .download(&token, id, f["path"].as_str().unwrap())
                        .await
                        .unwrap();
                    assert_eq!(
                        format!("sha256:{}", insitu_tests::sha256_hex(&bytes)),
                        f["sha256"].as_str().unwrap(),
                        "{id}: {} intact",
                        f["path"]
                    );
                }
            }
            "failed" => {
                let reason = s["execution"]["reason"].as_str().unwrap_or_default();
                let status = reason
                    .strip_prefix("insitu stopped while the execution was ")
                    .and_then(|r| r.split(';').next())
                    .unwrap_or_else(|| panic!("{id}: unexpected failure: {reason}"));
                *cut.entry(status.to_string()).or_default() += 1;
            }
            other => panic!("{id} is {other} after the restart: {s}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} executions: {succeeded} succeeded, cut while {cut:?}",
        ids.len()
    );
    assert!(!cut.is_empty(), "some executions were interrupted");
    let left: Vec<_> = std::fs::read_dir(data.join("blobs/tmp")).unwrap().collect();
    assert!(left.is_empty(), "blobs/tmp holds {left:?}");
    for f in walk(&data.join("modules")) {
        assert!(
            f.extension().is_some_and(|x| x == "cwasm"),
            "a temporary file in the module cache: {}",
            f.display()
        );
    }
    let store = Store::open(data.join("insitu.db")).unwrap();
    store.check_integrity().unwrap();
}

/// Group commit under a kill -9 (issue #17): the data dir on a real disk (not
/// tmpfs), 16 consumers executing at once so many executions share each
/// commit. Whatever a consumer was answered before the kill — an execution's
/// id, a status, a result — is on disk after the restart: no acknowledged
/// execution is missing, none is behind the status its consumer saw, and
/// every result seen `succeeded` downloads intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_on_a_real_disk_keeps_every_acknowledged_change() {
    use insitu_gateway::client::Consumer;
    use insitu_runtime::image::package;
    use insitu_runtime::receipt::ProviderKey;
    use insitu_runtime::store::Store;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let tmp = tempfile::tempdir_in(root).unwrap();
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_string();
    assert!(
        fs != "tmpfs" && fs != "ramfs",
        "{} is on {fs}: this test needs a real disk (CARGO_TARGET_TMPDIR on one)",
        tmp.path().display()
    );
    let (data, layout, input) = (
        tmp.path().join("data"),
        tmp.path().join("layout"),
        tmp.path().join("books"),
    );
    let wc = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&layout, "wc", &wc).unwrap();
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "one two two three three three\n").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let consumer = ProviderKey::random();
    let (agreement, workflow) = {
        let store = Store::open(data.join("insitu.db")).unwrap();
        let ds = store
            .add_dataset(
                "books",
                &input,
                std::slice::from_ref(&wc.manifest_digest),
                86_400,
            )
            .unwrap();
        let wf = store
            .add_workflow(&serde_json::json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": wc.manifest_digest}},
                 "input": [{"index": 0, "id": ds}]}]}}}))
            .unwrap();
        (
            store.grant(&consumer.address(), &ds, &wf, 86_400).unwrap(),
            wf.to_string(),
        )
    };
    let serve = || {
        insitu_tests::serve(
            Path::new(env!("CARGO_BIN_EXE_insitu")),
            [
                "--workers".as_ref(),
                "2".as_ref(),
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--layout".as_ref(),
                layout.as_os_str(),
            ],
        )
    };
    let up = |c: Consumer| {
        let (agreement, workflow) = (agreement.clone(), workflow.clone());
        async move {
            c.token(&c.claims(&agreement, &workflow, None))
                .await
                .unwrap()
        }
    };
    // Execution id → the last status its consumer was answered.
    let seen: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (mut writes, mut commits) = (0u64, 0u64);
    for round in 0..3u64 {
        let (mut child, base) = serve();
        let c = Consumer::new(base.clone(), consumer.clone());
        let token = up(c.clone()).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let (c, token, seen, stop) = (c.clone(), token.clone(), seen.clone(), stop.clone());
                let (agreement, workflow) = (agreement.clone(), workflow.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let Ok(id) = c.execute(&token, &agreement, &workflow).await else {
                            return;
                        };
                        seen.lock().unwrap().insert(id.clone(), "pending".into());
                        let Ok(t) = c.token(&c.claims(&agreement, &workflow, Some(&id))).await
                        else {
                            return;
                        };
                        loop {
                            let Ok(s) = c.get(&t, &format!("status/{id}")).await else {
                                return;
                            };
                            let status =
                                s["workflowStatus"]["status"].as_str().unwrap().to_string();
                            seen.lock().unwrap().insert(id.clone(), status.clone());
                            if ["succeeded", "failed", "stopped"].contains(&status.as_str()) {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(1500 + 400 * round)).await;
        if let Ok(r) = insitu_runtime::tls::http_client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            && let Ok(text) = r.text().await
        {
            let counter = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            writes += counter("insitu_store_writes_total");
            commits += counter("insitu_store_commits_total");
        }
        child.kill().unwrap(); // SIGKILL, with requests in flight
        child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in clients {
            t.await.unwrap();
        }
    }
    eprintln!("group commit before the kills: {writes} writes in {commits} commits");
    assert!(
        commits > 0 && writes > commits,
        "executions shared commits: {writes} writes in {commits} commits"
    );
    let (mut child, base) = serve();
    let c = Consumer::new(base, consumer.clone());
    up(c.clone()).await;
    let rank = |s: &str| {
        ["pending", "configuring", "running", "publishing"]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(4)
    };
    let seen = seen.lock().unwrap().clone();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (id, before) in &seen {
        let token = c
            .token(&c.claims(&agreement, &workflow, Some(id)))
            .await
            .unwrap();
        let s = c
            .get(&token, &format!("status/{id}"))
            .await
            .unwrap_or_else(|e| panic!("{id}, answered {before} before the kill, is gone: {e}"));
        let after = s["workflowStatus"]["status"].as_str().unwrap();
        let reason = s["execution"]["reason"].as_str().unwrap_or_default();
        if rank(before) == 4 {
            assert_eq!(after, before, "{id} was {before} before the kill: {s}");
        }
        match after {
            "succeeded" => {
                let results = c.get(&token, &format!("results/{id}")).await.unwrap();
                let files = results["files"].as_array().unwrap();
                assert!(!files.is_empty(), "{id}: {results}");
                for f in files {
                    let bytes = c
                        .download(&token, id, f["path"].as_str().unwrap())
                        .await
                        .unwrap();
                    assert_eq!(
                        format!("sha256:{}", insitu_tests::sha256_hex(&bytes)),
                        f["sha256"].as_str().unwrap(),
                        "{id}: {} intact",
                        f["path"]
                    );
                }
            }
            "failed" => {
                let cut = reason
                    .strip_prefix("insitu stopped while the execution was ")
                    .and_then(|r| r.split(';').next())
                    .unwrap_or_else(|| panic!("{id}: unexpected failure: {reason}"));
                assert!(
                    rank(cut) >= rank(before),
                    "{id} was {before} before the kill but is stored as cut while {cut}"
                );
            }
            other => panic!("{id} is {other} after the restart: {s}"),
        }
        *tally.entry(format!("{before} -> {after}")).or_default() += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{} executions: {tally:?}", seen.len());
    assert!(seen.len() > 100, "only {} executions ran", seen.len());
    assert!(
        tally.keys().any(|k| !k.starts_with("succeeded")),
        "some executions were interrupted: {tally:?}"
    );
    Store::open(data.join("insitu.db"))
        .unwrap()
        .check_integrity()
        .unwrap();
}

/// A native image end to end on one machine (issue #19): `insitu serve` with
/// `[podman]` pulls the probe image by digest from a real registry, runs it
/// in a real container under the guest contract, and the consumer downloads
/// the result over HTTP; a kill -9 mid-run leaves no container once the
/// gateway is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_image_runs_in_podman_end_to_end() {
    use insitu_gateway::client::Consumer;
    use insitu_runtime::receipt::ProviderKey;
    use insitu_runtime::store::Store;
    let registry = insitu_tests::registry::Registry::start();
    let (image, digest) = insitu_tests::native::probe_image(&registry);
    let e = Env::new();
    let (data, input) = (e.tmp.path().join("data"), e.tmp.path().join("books"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "the cat saw the other cat\n").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let config = e.tmp.path().join("insitu.toml");
    std::fs::write(
        &config,
        format!(
            "[podman]\nruntime = \"runc\"\ninsecure_registries = [\"{}\"]\ncontainers_conf = \"{}\"\n",
            registry.host(),
            insitu_tests::native::containers_conf().display()
        ),
    )
    .unwrap();
    let repository = image.split('@').next().unwrap().to_string();
    let consumer = ProviderKey::random();
    let workflow_of = |store: &Store, ds: &insitu_runtime::workflow::Did, mode: &str| {
        store
            .add_workflow(&serde_json::json!({"main": {"type": "workflow", "name": mode, "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": repository, "tag": "1", "checksum": digest}},
                 "input": [{"index": 0, "id": ds}], "arguments": [mode]}]}}}))
            .unwrap()
    };
    let (count, slow) = {
        let store = Store::open(data.join("insitu.db")).unwrap();
        let ds = store
            .add_dataset("books", &input, std::slice::from_ref(&digest), 86_400)
            .unwrap();
        let (count, slow) = (
            workflow_of(&store, &ds, "count"),
            workflow_of(&store, &ds, "sleep"),
        );
        (
            (
                store
                    .grant(&consumer.address(), &ds, &count, 86_400)
                    .unwrap(),
                count.to_string(),
            ),
            (
                store
                    .grant(&consumer.address(), &ds, &slow, 86_400)
                    .unwrap(),
                slow.to_string(),
            ),
        )
    };
    let host = registry.host();
    let serve = || {
        insitu_tests::serve(
            Path::new(env!("CARGO_BIN_EXE_insitu")),
            [
                "--config".as_ref(),
                config.as_os_str(),
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--insecure-registry".as_ref(),
                std::ffi::OsStr::new(&host),
            ],
        )
    };
    let up = |c: &Consumer, (agreement, workflow): &(String, String)| {
        let (c, agreement, workflow) = (c.clone(), agreement.clone(), workflow.clone());
        async move {
            c.token(&c.claims(&agreement, &workflow, None))
                .await
                .unwrap()
        }
    };
    let (mut child, base) = serve();
    let c = Consumer::new(base, consumer.clone());
    let token = up(&c, &count).await;
    let id = c.execute(&token, &count.0, &count.1).await.unwrap();
    let token = c
        .token(&c.claims(&count.0, &count.1, Some(&id)))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let s = c.get(&token, &format!("status/{id}")).await.unwrap();
        match s["workflowStatus"]["status"].as_str().unwrap() {
            "succeeded" | "failed" | "stopped" => break s,
            _ => {
                assert!(std::time::Instant::now() < deadline, "{s}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
        }
    };
    assert_eq!(status["workflowStatus"]["status"], "succeeded", "{status}");
    assert_eq!(
        status["execution"]["stages"][0]["backend"], "podman",
        "{status}"
    );
    let words = c.download(&token, &id, "words.txt").await.unwrap();
    assert_eq!(words, b"6\n");

    // kill -9 while a container runs; the restarted gateway removes it.
    let token = c.token(&c.claims(&slow.0, &slow.1, None)).await.unwrap();
    let id = c.execute(&token, &slow.0, &slow.1).await.unwrap();
    let running = || {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", insitu_tests::native::containers_conf())
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=insitu.execution={id}"),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !running().is_empty(),
        "the container outlives the killed gateway"
    );
    let (mut child, base) = serve();
    let c = Consumer::new(base, consumer.clone());
    up(&c, &slow).await;
    assert_eq!(running(), "", "the restarted gateway removed the leftover");
    let token = c
        .token(&c.claims(&slow.0, &slow.1, Some(&id)))
        .await
        .unwrap();
    let s = c.get(&token, &format!("status/{id}")).await.unwrap();
    assert_eq!(s["workflowStatus"]["status"], "failed", "{s}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The Kubernetes backend's Pod, exactly as `insitu k8s manifests` prints
/// it, executed by `podman kube play` on a real native image (issue #19): it
/// runs to completion, reads its input, cannot write it, and (with the
/// NetworkPolicy's deny-all as `--network none`) has no network.
#[test]
fn the_printed_pod_runs_under_podman_kube_play() {
    let registry = insitu_tests::registry::Registry::start();
    let (image, digest) = insitu_tests::native::probe_image(&registry);
    let conf = insitu_tests::native::containers_conf();
    let e = Env::new();
    let p = |s: &str| e.tmp.path().join(s);
    std::fs::create_dir_all(p("notes")).unwrap();
    std::fs::write(p("notes/a.txt"), "the cat saw the other cat\n").unwrap();
    let insitu = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "insitu {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let data = p("data").display().to_string();
    let ds = insitu(&[
        "asset",
        "add",
        "--data-dir",
        &data,
        "--path",
        &p("notes").display().to_string(),
        "--name",
        "notes",
        "--allow-image",
        &digest,
    ]);
    let ds = ds.split_whitespace().last().unwrap();
    std::fs::write(p("insitu.toml"), "[kubernetes]\nnamespace = \"insitu\"\n").unwrap();
    let repository = image.split('@').next().unwrap();
    let podman = |args: &[&str]| {
        Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .args(["--runtime", "runc"])
            .args(args)
            .output()
            .unwrap()
    };
    for (mode, want) in [("count", 0), ("write-input", 7), ("net", 8)] {
        std::fs::write(
            p("wf.json"),
            serde_json::json!({"main": {"type": "workflow", "name": mode, "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": repository, "tag": "1", "checksum": digest}},
                 "input": [{"index": 0, "id": ds}], "arguments": [mode]}]}}})
            .to_string(),
        )
        .unwrap();
        let yaml = insitu(&[
            "k8s",
            "manifests",
            "--workflow",
            &p("wf.json").display().to_string(),
            "--stage",
            "0",
            "--data-dir",
            &data,
            "--config",
            &p("insitu.toml").display().to_string(),
        ]);
        // The Pod (podman has no NetworkPolicy; `--network none` stands for its deny-all).
        let pod = yaml
            .split("\n---")
            .find(|d| d.contains("\nkind: Pod\n"))
            .expect("a Pod document");
        assert!(
            pod.contains(&format!("- {mode}")),
            "the stage's arguments are in the Pod: {pod}"
        );
        // Two adaptations to Podman 4.3, nothing that governs the run: its
        // `kube play` refuses annotation values over 63 characters (a label's
        // limit; Kubernetes allows 256 KiB), and ignores `subPath` on
        // hostPath volumes (it would mount the whole data dir), so each
        // sub-path mount becomes a hostPath volume of that directory — what
        // the kubelet does with it.
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(pod).unwrap();
        doc["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("annotations");
        let data_path = doc["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .map(|v| v["hostPath"]["path"].as_str().unwrap().to_string())
            .unwrap();
        let mut extra = Vec::new();
        for (n, m) in doc["spec"]["containers"][0]["volumeMounts"]
            .as_sequence_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            if let Some(sub) = m["subPath"].as_str().map(str::to_string) {
                let name = format!("sub-{n}");
                extra.push(serde_yaml_ng::to_value(serde_json::json!({
                    "name": name, "hostPath": {"path": format!("{data_path}/{sub}"), "type": "Directory"}
                })).unwrap());
                let m = m.as_mapping_mut().unwrap();
                m.remove("subPath");
                m.insert("name".into(), name.into());
            }
        }
        doc["spec"]["volumes"]
            .as_sequence_mut()
            .unwrap()
            .extend(extra);
        std::fs::write(p("pod.yaml"), serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        // The directories the pipeline would have made, writable by the pod's user.
        let stage = p("data/executions/nv-00000000000000000000000000000000/stage-0");
        let _ = std::fs::remove_dir_all(&stage);
        for d in ["outputs", "logs"] {
            std::fs::create_dir_all(stage.join(d)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(stage.join(d), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let played = podman(&[
            "kube",
            "play",
            "--network",
            "none",
            "--tls-verify=false",
            &p("pod.yaml").display().to_string(),
        ]);
        assert!(
            played.status.success(),
            "kube play: {}",
            String::from_utf8_lossy(&played.stderr)
        );
        let container = "insitu-nv-00000000000000000000000000000000-s0-stage";
        let waited = podman(&["wait", container]);
        let code: i32 = String::from_utf8_lossy(&waited.stdout)
            .trim()
            .parse()
            .unwrap_or(-1);
        let logs = String::from_utf8_lossy(&podman(&["logs", container]).stdout).to_string();
        let down = podman(&["kube", "down", &p("pod.yaml").display().to_string()]);
        assert!(
            down.status.success(),
            "kube down: {}",
            String::from_utf8_lossy(&down.stderr)
        );
        assert_eq!(code, want, "{mode}: {logs}");
        match mode {
            "count" => assert_eq!(
                std::fs::read_to_string(stage.join("outputs/words.txt")).unwrap(),
                "6\n"
            ),
            "write-input" => {
                assert!(logs.contains("Read-only file system"), "{logs}");
                assert_eq!(std::fs::read_dir(p("notes")).unwrap().count(), 1);
                assert_eq!(
                    std::fs::read_to_string(p("notes/a.txt")).unwrap(),
                    "the cat saw the other cat\n"
                );
            }
            _ => assert!(logs.contains("no network"), "{logs}"),
        }
    }
}

/// The chain fixture `scripts/setup` builds: (anvil binary, state snapshot,
/// contract addresses). A missing part fails the test, it never skips it.
fn chain_fixture() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testchain");
    let parts = [
        "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
        "out/state.json",
        "out/addresses.json",
    ]
    .map(|p| dir.join(p));
    for p in &parts {
        assert!(
            p.exists(),
            "{} is missing: run scripts/setup (it builds the chain fixture)",
            p.display()
        );
    }
    let [anvil, state, addresses] = parts;
    (anvil, state, addresses)
}

/// One JSON-RPC call; panics on an error answer.
async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let answer: Value = insitu_runtime::tls::http_client()
        .post(url)
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

fn quantity(v: &Value) -> u128 {
    u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// `insitu serve` in chain mode killed with SIGKILL while its release
/// transaction waits in the mempool, restarted before that transaction is
/// mined: the provider is paid exactly once, nothing is sent twice, every
/// provider transaction succeeds, and the execution ends `succeeded` with
/// its receipt hash committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_releasing_the_payment_pays_once() {
    use insitu_gateway::client::Consumer;
    use insitu_runtime::image::package;
    use insitu_runtime::receipt::ProviderKey;
    use serde_json::json;
    use std::time::{Duration, Instant};
    const PROVIDER: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    const CONSUMER: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
    const PRICE: u128 = 1_000_000_000_000_000;
    let (anvil, state, contracts) = chain_fixture();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let chain_port = port();
    let _anvil = Killed(
        Command::new(anvil)
            .args(["--host", "127.0.0.1", "--port", &chain_port.to_string()])
            .arg("--silent")
            .arg("--load-state")
            .arg(state)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let chain = format!("http://127.0.0.1:{chain_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while insitu_runtime::tls::http_client()
        .post(&chain)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "anvil did not answer on {chain}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let e = Env::new();
    let data = e.tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("provider.key"), PROVIDER).unwrap();
    std::fs::write(e.tmp.path().join("consumer.key"), CONSUMER).unwrap();
    let provider = ProviderKey::from_hex(PROVIDER).unwrap().address();
    let layout = e.tmp.path().join("layout");
    let wc = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&layout, "wc", &wc).unwrap();
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.split_whitespace().last().unwrap().to_string()
    };
    let dataset = ok(e.insitu(&[
        "asset",
        "add",
        "--data-dir",
        &e.p("data"),
        "--path",
        &e.p("in"),
        "--name",
        "notes",
        "--allow-image",
        &wc.manifest_digest,
        "--chain-rpc",
        &chain,
        "--contracts",
        contracts.to_str().unwrap(),
        "--price",
        &PRICE.to_string(),
    ]));
    std::fs::write(
        e.tmp.path().join("wf.json"),
        json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": wc.manifest_digest}},
             "input": [{"index": 0, "id": dataset}]}]}}})
        .to_string(),
    )
    .unwrap();
    let workflow = ok(e.insitu(&[
        "workflow",
        "add",
        "--data-dir",
        &e.p("data"),
        "--file",
        &e.p("wf.json"),
    ]));
    let nonce = |tag: &'static str| {
        let (chain, provider) = (chain.clone(), provider.clone());
        async move { quantity(&rpc(&chain, "eth_getTransactionCount", json!([provider, tag])).await) }
    };
    let registered = nonce("latest").await;
    let first_block = quantity(&rpc(&chain, "eth_blockNumber", json!([])).await);
    let balance_before =
        quantity(&rpc(&chain, "eth_getBalance", json!([provider, "latest"])).await);

    let serve = || {
        let port = port();
        let child = Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", &e.p("data"), "--layout", &e.p("layout")])
            .args([
                "--chain-rpc",
                &chain,
                "--contracts",
                contracts.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (Killed(child), format!("http://127.0.0.1:{port}"))
    };
    let (mut gateway, base) = serve();
    let agreement = ok(e.insitu(&[
        "agreement",
        "create",
        "--chain-rpc",
        &chain,
        "--contracts",
        contracts.to_str().unwrap(),
        "--key",
        &e.p("consumer.key"),
        "--dataset",
        &dataset,
        "--provider",
        &provider,
        "--price",
        &PRICE.to_string(),
    ]));
    // The gateway's payment watcher grants compute once the payment is locked.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nonce("latest").await < registered + 1 {
        assert!(Instant::now() < deadline, "compute was not granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From here on transactions wait in the mempool until the test mines.
    rpc(&chain, "evm_setAutomine", json!([false])).await;
    let c = Consumer::new(base, ProviderKey::from_hex(CONSUMER).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        match c.token(&c.claims(&agreement, &workflow, None)).await {
            Ok(t) => break t,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the gateway did not come up: {e}"),
        }
    };
    let id = c.execute(&token, &agreement, &workflow).await.unwrap();
    // The release is sent, unmined: kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nonce("pending").await < registered + 2 {
        assert!(Instant::now() < deadline, "the release was not sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();

    // Restarted while the release still waits to be mined; blocks come
    // slowly, as on a real chain.
    let (_gateway, base) = serve();
    let c = Consumer::new(base, ProviderKey::from_hex(CONSUMER).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(token) = c.token(&c.claims(&agreement, &workflow, Some(&id))).await {
            let s = c.get(&token, &format!("status/{id}")).await.unwrap();
            let settlement = &s["execution"]["settlement"];
            if settlement.get("receipt_tx").is_some() || settlement.get("error").is_some() {
                break s;
            }
            assert!(Instant::now() < deadline, "not settled: {s}");
        }
        rpc(&chain, "evm_mine", json!([])).await;
    };
    assert_eq!(status["workflowStatus"]["status"], "succeeded", "{status}");
    let settlement = &status["execution"]["settlement"];
    assert!(settlement.get("error").is_none(), "{settlement}");
    assert_eq!(
        settlement["receipt_hash"], status["execution"]["receipt"]["hash"],
        "{status}"
    );
    rpc(&chain, "evm_mine", json!([])).await;
    // Exactly three provider transactions since the registration: grant
    // compute, release, commit the receipt. All succeeded; the provider got
    // the price once, less its gas.
    assert_eq!(nonce("pending").await, registered + 3, "{settlement}");
    let last_block = quantity(&rpc(&chain, "eth_blockNumber", json!([])).await);
    let mut fees = 0;
    for n in first_block + 1..=last_block {
        let block = rpc(
            &chain,
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        for tx in block["transactions"].as_array().unwrap() {
            let r = rpc(&chain, "eth_getTransactionReceipt", json!([tx])).await;
            if r["from"].as_str().unwrap().eq_ignore_ascii_case(&provider) {
                assert_eq!(r["status"], "0x1", "a provider transaction failed: {r}");
                fees += quantity(&r["gasUsed"]) * quantity(&r["effectiveGasPrice"]);
            }
        }
    }
    let balance_after = quantity(&rpc(&chain, "eth_getBalance", json!([provider, "latest"])).await);
    assert_eq!(balance_after + fees, balance_before + PRICE);
}

/// `insitu exec` and `insitu executions` against a real `insitu serve`
/// child, every exit code: 0 (followed, downloaded, verified), 1 (the
/// execution failed), 2 (another consumer's agreement; a corrupt partial
/// download); a resumed download; list, status, logs, stop.
#[test]
fn the_consumer_client_executes_follows_downloads_and_verifies() {
    let e = Env::new();
    let script = r#"
ADDR=$INSITU_LISTEN
IMAGE=$(insitu push word-count.wasm --layout ./x/images:word-count)
mkdir -p x/notes && echo "the cat saw the other cat" > x/notes/a.txt
insitu serve --data-dir x/p --layout x/images --listen "$ADDR" 2> x/serve.log &
until curl -sf "http://$ADDR/healthz" >/dev/null; do sleep 0.1; done
DATASET=$(insitu asset add --data-dir x/p --path x/notes --name notes --allow-image "$IMAGE" | awk '{print $NF}')
wf() {
cat > x/$1.json <<EOF
{"main": {"type": "workflow", "name": "$1", "workflow": {"stages": [
  {"index": 0, "requirements": {"container": {"image": "local/word-count", "tag": "1", "checksum": "$IMAGE"}},
   "input": [{"index": 0, "id": "$DATASET"}], "arguments": $2}]}}}
EOF
insitu workflow add --data-dir x/p --file x/$1.json | awk '{print $NF}'
}
GOOD=$(wf good '[]')
BAD=$(wf bad '["--top=many"]')
CONSUMER=$(insitu key new x/c.key)
insitu key new x/other.key > /dev/null
AG=$(insitu agreement grant --data-dir x/p --consumer "$CONSUMER" --dataset "$DATASET" --workflow "$GOOD" | awk '{print $NF}')
AGBAD=$(insitu agreement grant --data-dir x/p --consumer "$CONSUMER" --dataset "$DATASET" --workflow "$BAD" | awk '{print $NF}')
PROVIDER=$(insitu key address x/p/provider.key)
run() { name=$1; shift; insitu "$@" > x/$name.out 2> x/$name.err && echo "$name exit=0" || echo "$name exit=$?"; }
run ok exec --gateway "http://$ADDR" --key x/c.key --agreement "$AG" --workflow "$GOOD" \
    --follow --download x/out --verify --provider "$PROVIDER"
run failed exec --gateway "http://$ADDR" --key x/c.key --agreement "$AGBAD" --workflow "$BAD"
run stranger exec --gateway "http://$ADDR" --key x/other.key --agreement "$AG" --workflow "$GOOD"
mkdir -p x/resume && head -c 7 x/out/counts.json > x/resume/counts.json.part
run resume exec --gateway "http://$ADDR" --key x/c.key --agreement "$AG" --workflow "$GOOD" --download x/resume
mkdir -p x/corrupt && printf 'XXXXXXX' > x/corrupt/counts.json.part
run corrupt exec --gateway "http://$ADDR" --key x/c.key --agreement "$AG" --workflow "$GOOD" --download x/corrupt
ID=$(sed -nE 's/^execution (nv-[0-9a-f]+) succeeded.*/\1/p' x/ok.out)
run list executions list --gateway "http://$ADDR" --key x/c.key --agreement "$AG" --workflow "$GOOD"
run status executions status --gateway "http://$ADDR" --key x/c.key --agreement "$AG" "$ID"
run logs executions logs --gateway "http://$ADDR" --key x/c.key --agreement "$AG" "$ID"
run stop executions stop --gateway "http://$ADDR" --key x/c.key --agreement "$AG" "$ID"
cmp x/out/counts.json x/resume/counts.json && echo "resumed file identical"
echo "ID=$ID"
"#;
    let out = run_block(
        script,
        e.tmp.path(),
        &[("INSITU_LISTEN", format!("127.0.0.1:{}", free_port()))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let read = |f: &str| std::fs::read_to_string(e.tmp.path().join("x").join(f)).unwrap();
    for want in [
        "ok exit=0",
        "failed exit=1",
        "stranger exit=2",
        "resume exit=0",
        "corrupt exit=2",
        "list exit=0",
        "status exit=0",
        "logs exit=0",
        "stop exit=0",
        "resumed file identical",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    let (ok_out, ok_err) = (read("ok.out"), read("ok.err"));
    assert!(
        ok_out.contains("1 files, 6 words, 4 distinct"),
        "the followed log:\n{ok_out}"
    );
    assert!(ok_out.contains("succeeded: result did:nv:"), "{ok_out}");
    assert!(ok_out.contains("ok   file counts.json: "), "{ok_out}");
    assert!(ok_out.contains("ok   provider: "), "{ok_out}");
    assert!(ok_err.contains("progress: stage 0 100% "), "{ok_err}");
    assert!(ok_err.contains("status: succeeded"), "{ok_err}");
    assert!(ok_err.contains("counts.json: "), "{ok_err}");
    let counts: Value = serde_json::from_str(&read("out/counts.json")).unwrap();
    assert_eq!(counts["words"], 6);
    let receipt: Value = serde_json::from_str(&read("out.receipt.json")).unwrap();
    assert!(receipt["receipt"]["signature"].is_string(), "{receipt}");
    assert!(
        read("failed.err").contains("failed:"),
        "{}",
        read("failed.err")
    );
    assert!(
        read("stranger.err").contains("refused (403)")
            && read("stranger.err").contains("belongs to another consumer"),
        "{}",
        read("stranger.err")
    );
    assert!(
        read("resume.err").contains("resuming at byte 7"),
        "{}",
        read("resume.err")
    );
    assert!(
        read("corrupt.err").contains("the receipt lists sha256:"),
        "{}",
        read("corrupt.err")
    );
    assert!(!e.tmp.path().join("x/corrupt/counts.json.part").exists());
    let id = text.lines().find_map(|l| l.strip_prefix("ID=")).unwrap();
    assert!(read("list.out").contains(id), "{}", read("list.out"));
    let status: Value = serde_json::from_str(&read("status.out")).unwrap();
    assert_eq!(status["workflowStatus"]["status"], "succeeded");
    assert!(
        read("logs.out").contains("1 files, 6 words"),
        "{}",
        read("logs.out")
    );
    assert!(
        read("stop.out").contains("already ended succeeded"),
        "{}",
        read("stop.out")
    );
}

/// The provider's dashboard in a real browser (headless Debian Chromium and
/// chromedriver, driven by Selenium from `.venv`, all installed by
/// `scripts/setup`): a gateway with a real execution shows it, its charts
/// render, its logs arrive live, and a browser on another address without
/// a token is refused. Screenshots land in `target/screenshots/`.
#[test]
fn the_dashboard_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = insitu_tests::browser_python();
    let lan = {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("192.0.2.255:9")
            .or_else(|_| s.connect("8.8.8.8:53"))
            .expect("a non-loopback address for the refused browser");
        s.local_addr().unwrap().ip()
    };
    assert!(!lan.is_loopback());
    let e = Env::new();
    let shots = root.join("target/screenshots");
    let script = format!(
        r#"
ADDR=$INSITU_LISTEN
IMAGE=$(insitu push word-count.wasm --layout ./x/images:word-count)
mkdir -p x/notes && echo "the cat saw the other cat" > x/notes/a.txt
insitu serve --data-dir x/p --layout x/images --listen "$ADDR" 2> x/serve.log &
insitu serve --data-dir x/q --listen "{lan}:$OTHER_PORT" 2> x/serve2.log &
until curl -sf "http://$ADDR/healthz" >/dev/null && curl -sf "http://{lan}:$OTHER_PORT/healthz" >/dev/null; do sleep 0.1; done
DATASET=$(insitu asset add --data-dir x/p --path x/notes --name notes --allow-image "$IMAGE" --description "field notes" | awk '{{print $NF}}')
cat > x/wf.json <<EOF
{{"main": {{"type": "workflow", "name": "count words", "workflow": {{"stages": [
  {{"index": 0, "requirements": {{"container": {{"image": "local/word-count", "tag": "1", "checksum": "$IMAGE"}}}},
   "input": [{{"index": 0, "id": "$DATASET"}}]}}]}}}}}}
EOF
WORKFLOW=$(insitu workflow add --data-dir x/p --file x/wf.json | awk '{{print $NF}}')
CONSUMER=$(insitu key new x/c.key)
AG=$(insitu agreement grant --data-dir x/p --consumer "$CONSUMER" --dataset "$DATASET" --workflow "$WORKFLOW" | awk '{{print $NF}}')
insitu exec --gateway "http://$ADDR" --key x/c.key --agreement "$AG" --workflow "$WORKFLOW" > x/exec.out 2> x/exec.err
ID=$(sed -nE 's/^execution (nv-[0-9a-f]+) succeeded.*/\1/p' x/exec.out)
"$PYTHON" "$BROWSER_TEST" "http://$ADDR" "$ID" "$SHOTS" "http://{lan}:$OTHER_PORT"
"#
    );
    let out = run_block(
        &script,
        e.tmp.path(),
        &[
            ("INSITU_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("OTHER_PORT", free_port().to_string()),
            ("PYTHON", python.display().to_string()),
            (
                "BROWSER_TEST",
                root.join("tests/browser/dashboard.py")
                    .display()
                    .to_string(),
            ),
            ("SHOTS", shots.display().to_string()),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("dashboard: ok"), "{text}");
    for shot in ["dashboard.png", "execution.png", "refused.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2_000, "{shot}");
    }
}
