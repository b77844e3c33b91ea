//! Image layers from registries: tar (optionally gzip) archives are searched
//! for a module and unpacked; hostile entries must be refused, never written
//! outside the destination, and nothing may panic.
#![no_main]
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use insitu_runtime::image::archive;
    let _ = archive::extract_file(data, "layer sha256:fuzz", "app/module.wasm", 1 << 20);
    let _ = archive::contains(data, "layer sha256:fuzz", "app/module.wasm", 1 << 20);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let (file, dest) = (dir.path().join("layer.tar"), dir.path().join("out"));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::write(&file, data).unwrap();
    let _ = archive::unpack(&file, &dest, 1 << 20);
    // Whatever was unpacked stays under `dest`.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(name == "layer.tar" || name == "out", "{name:?} escaped");
    }
});
