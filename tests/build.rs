fn main() {
    insitu_wasm_build::build(
        "wasm32-wasip1",
        &[
            ("hostile", "tests/guests/hostile"),
            ("word-count", "examples/word-count"),
        ],
    );
    insitu_wasm_build::build(
        "wasm32-wasip2",
        &[
            ("hostile", "tests/guests/hostile"),
            ("word-count", "examples/word-count"),
            ("net-probe", "tests/guests/net-probe"),
        ],
    );
}
