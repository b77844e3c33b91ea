//! `insitu-bench guest-io`: a guest reading a 1 GiB dataset file
//! sequentially (1 MiB `fd_read`s through WASI preview 1, in the provider's
//! sandbox) vs a native reader doing the same on the same file, alternated,
//! the file in the page cache for both (`TMPDIR` picks the file system).
//! Target (#28): guest ≥ 0.8× native.

use crate::ms;
use insitu_runtime::sandbox::{JobSpec, Sandbox, SandboxConfig, StopHandle};
use std::io::Read;
use std::time::{Duration, Instant};

const SIZE: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;
const RUNS: usize = 5;

/// Opens `data.bin` in the first input (descriptor 3), reads it to the end in
/// 1 MiB `fd_read`s and writes the byte count (u64, little-endian) to stdout.
const READER: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 32)
  (data (i32.const 0) "data.bin")
  ;; 16: opened fd; 24: iovec {65536, 1 MiB}; 32: nread; 40: total; 48: iovec {40, 8}
  (func (export "_start")
    (local $n i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 8)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16))
      (then unreachable))
    (i32.store (i32.const 24) (i32.const 65536))
    (i32.store (i32.const 28) (i32.const 1048576))
    (loop $more
      (if (call $fd_read (i32.load (i32.const 16)) (i32.const 24) (i32.const 1) (i32.const 32))
        (then unreachable))
      (local.set $n (i32.load (i32.const 32)))
      (i64.store (i32.const 40)
        (i64.add (i64.load (i32.const 40)) (i64.extend_i32_u (local.get $n))))
      (br_if $more (local.get $n)))
    (i32.store (i32.const 48) (i32.const 40))
    (i32.store (i32.const 52) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 48) (i32.const 1) (i32.const 32)))))"#;

pub fn guest_io() -> anyhow::Result<()> {
    println!("## guest I/O: a 1 GiB dataset read sequentially, guest vs native");
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("input");
    std::fs::create_dir(&input)?;
    let file = input.join("data.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(&file)?);
        let block: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
        for _ in 0..SIZE / CHUNK as u64 {
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    println!("file on {}", crate::fs_type(tmp.path()));
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let module = sandbox.prepare(&wat::parse_str(READER)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut fresh = crate::fresh_dirs(tmp.path());
    let mut guest = || -> anyhow::Result<Duration> {
        let (o, l) = fresh()?;
        let spec = JobSpec::new("reader", o, l.clone()).input(input.clone());
        let t = Instant::now();
        let r = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
        let d = t.elapsed();
        anyhow::ensure!(r.status.as_str() == "succeeded", "guest reader: {r:?}");
        let out = std::fs::read(l.join("stdout.log"))?;
        let total = u64::from_le_bytes(out.as_slice().try_into()?);
        anyhow::ensure!(total == SIZE, "the guest read {total} bytes");
        Ok(d)
    };
    let native = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut f = std::fs::File::open(&file)?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            total += k as u64;
        }
        std::hint::black_box(&buf);
        anyhow::ensure!(total == SIZE, "the native reader read {total} bytes");
        Ok(t.elapsed())
    };
    native()?;
    guest()?;
    let (mut g, mut nat) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        g.push(guest()?);
        nat.push(native()?);
    }
    g.sort();
    nat.sort();
    let rate = |d: Duration| SIZE as f64 / d.as_secs_f64() / 1e9;
    let (gm, nm) = (g[RUNS / 2], nat[RUNS / 2]);
    println!(
        "median of {RUNS}: guest {} ({:.2} GB/s) vs native {} ({:.2} GB/s): guest/native throughput {:.2}",
        ms(gm),
        rate(gm),
        ms(nm),
        rate(nm),
        rate(gm) / rate(nm)
    );
    Ok(())
}
