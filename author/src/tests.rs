//! The templates, project detection, tool lookup errors and the pins.

use super::*;
use std::path::Path;

#[test]
fn new_projects_have_their_language_marker_and_refuse_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in Lang::ALL {
        let dir = new_project(tmp.path(), &format!("algo-{}", lang.name()), lang).unwrap();
        assert_eq!(build::detect(&dir).unwrap(), lang);
        assert!(dir.join(".gitignore").is_file());
    }
    let rust = tmp.path().join("algo-rust");
    let manifest = std::fs::read_to_string(rust.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"algo-rust\""), "{manifest}");
    assert!(manifest.contains("[workspace]"), "{manifest}");
    assert!(rust.join("insitu-guest/src/lib.rs").is_file());
    assert!(rust.join("insitu-guest/src/fl.rs").is_file());

    for bad in ["", "Algo", "1algo", "a b", "../x", "a/b"] {
        let e = new_project(tmp.path(), bad, Lang::Python).unwrap_err();
        assert!(matches!(e, Error::BadName(_)), "{bad}: {e}");
    }
    let before = std::fs::read_to_string(tmp.path().join("algo-python/app.py")).unwrap();
    let e = new_project(tmp.path(), "algo-python", Lang::Js).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} already exists and is not empty; pick another name or --dir",
            tmp.path().join("algo-python").display()
        )
    );
    assert!(!tmp.path().join("algo-python/app.js").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("algo-python/app.py")).unwrap(),
        before
    );
    assert_eq!(
        "cobol".parse::<Lang>().unwrap_err().to_string(),
        "unknown language `cobol`; use rust, python or js"
    );
}

#[test]
fn building_something_that_is_not_a_project_says_how_to_start_one() {
    let tmp = tempfile::tempdir().unwrap();
    let e = build(tmp.path(), None).unwrap_err().to_string();
    assert!(
        e.ends_with("has no Cargo.toml, app.py or app.js (create one with `insitu new NAME --lang rust|python|js`)"),
        "{e}"
    );
}

#[test]
fn a_missing_or_mismatched_compiler_names_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("python/bin/componentize-py");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(&fake, "#!/bin/sh\necho componentize-py 0.1.0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = tmp.path().join("empty");
    let lookup = |tool: tools::Tool| tool.find_in(tmp.path(), Some(empty.as_os_str()));
    let e = lookup(tools::PY).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{} is componentize-py 0.1.0, but insitu build needs componentize-py 0.25.1; run scripts/setup, or `pip install componentize-py==0.25.1` into a virtualenv on the PATH",
            fake.display()
        )
    );
    let e = lookup(tools::JS).unwrap_err().to_string();
    assert!(
        e.starts_with("componentize-js 0.23.0 was not found (looked in "),
        "{e}"
    );
    assert!(e.contains("run scripts/setup"), "{e}");
}

#[test]
fn the_pins_match_what_scripts_setup_installs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let setup = std::fs::read_to_string(root.join("scripts/setup")).unwrap();
    assert!(
        setup.contains(&format!(
            "componentize_py_version={}",
            tools::COMPONENTIZE_PY
        )),
        "scripts/setup installs another componentize-py"
    );
    let lock = std::fs::read_to_string(root.join("guest-sdk/js/tools/package-lock.json")).unwrap();
    let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(
        lock["packages"]["node_modules/@bytecodealliance/componentize-js"]["version"],
        tools::COMPONENTIZE_JS
    );
}

/// The Python SDK's own unit tests, under the machine's CPython.
#[test]
fn the_python_sdk_passes_its_unit_tests() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/python");
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(&sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs (scripts/setup checks it is installed)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Ran 6 tests"), "{text}");
}
