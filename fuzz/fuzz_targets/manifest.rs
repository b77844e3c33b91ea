//! Manifests and indexes from registries: a blob with the right digest but
//! any content goes through parsing and classification.
#![no_main]
use insitu_runtime::image::{BlobStore, LayoutSource, Puller, sha256_digest};
use std::sync::OnceLock;

struct World {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    puller: Puller,
}

static WORLD: OnceLock<World> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("layout/blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("layout/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("layout/index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let puller = Puller::new(BlobStore::open(dir.path().join("store")).unwrap());
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            dir,
            puller,
        }
    });
    let digest = sha256_digest(data);
    let blob = w
        .dir
        .path()
        .join("layout/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(&blob, data).unwrap();
    let source = LayoutSource {
        dir: w.dir.path().join("layout"),
    };
    let _ = w.rt.block_on(w.puller.pull(&source, &digest));
    let _ = std::fs::remove_file(blob);
});
