fn main() {
    insitu_wasm_build::build(
        "wasm32-wasip1",
        &[
            ("word-count", "examples/word-count"),
            ("csv-stats", "examples/csv-stats"),
            ("linreg-train", "examples/linreg-train"),
            ("report", "examples/report"),
        ],
    );
}
