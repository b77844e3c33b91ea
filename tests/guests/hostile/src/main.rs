//! A hostile guest. The first extra argument (after the contract's) selects
//! the attack. Attacks that probe the sandbox print one line per attempt,
//! `ALLOWED ...` or `denied ...`, and exit 3 if anything was allowed, so the
//! host test fails loudly. Attacks that exhaust a resource never return.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let extra: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let case = extra.first().copied().unwrap_or("");
    let mut probe = Probe::default();
    match case {
        "escape" => escape(&mut probe),
        "read" => {
            for path in &extra[1..] {
                probe.attempt(&format!("read {path}"), || fs::read(path).map(|_| ()));
            }
        }
        "symlinks" => symlinks(&mut probe),
        "modify-input" => modify_input(&mut probe),
        "loop" => loop {
            std::hint::black_box(0u64);
        },
        "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
        "memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 8 << 20]);
            }
        }
        // Not an attack: a federated participant whose update has as many
        // values as asked (the global model + 1, or 0.5s in round 0), for
        // tests and benchmarks of federated rounds of any model size.
        "fl-update" => return fl_update(&args, extra.get(1).and_then(|n| n.parse().ok())),
        "recursion" => {
            println!("{}", recurse(std::hint::black_box(1)));
        }
        "output-flood" => {
            let chunk = vec![b'x'; 1 << 20];
            let mut f = File::create("/data/outputs/flood").expect("create");
            loop {
                f.write_all(&chunk).expect("write");
            }
        }
        "stdout-flood" => loop {
            println!("{}", "y".repeat(1000));
        },
        "sparse" => {
            let f = File::create("/data/outputs/sparse").expect("create");
            f.set_len(1 << 40).expect("set_len");
            fs::write("/data/outputs/after", b"should not get here").ok();
        }
        "many-files" => {
            for i in 0.. {
                File::create(format!("/data/outputs/f{i}")).expect("create");
            }
        }
        "args" => println!(
            "{} {}",
            args.len(),
            args.iter().map(|a| a.len()).sum::<usize>()
        ),
        "env" => println!("{}", std::env::vars().count()),
        // Leaks its input: copies it to a result and prints it to the logs.
        "leak" => {
            let data = fs::read("/data/inputs/1/data.txt").expect("read input");
            fs::write("/data/outputs/rows.csv", &data).expect("write output");
            std::io::stdout().write_all(&data).expect("print");
        }
        "write-ok" => {
            let data = fs::read("/data/inputs/1/data.txt").expect("read input");
            fs::write("/data/outputs/copy.txt", &data).expect("write output");
            println!("copied {} bytes", data.len());
        }
        // What deterministic mode fixes: random, clocks, listing order and
        // file metadata of input 1, written to /data/outputs/observed.txt.
        "observe" => {
            use std::hash::{BuildHasher, Hasher};
            let mut out = String::new();
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            out.push_str(&format!("random {random}\n"));
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let started = std::time::Instant::now();
            out.push_str(&format!("wall {wall} elapsed {:?}\n", started.elapsed()));
            for entry in fs::read_dir("/data/inputs/1").expect("list input") {
                let entry = entry.expect("entry");
                let m = entry.metadata().expect("metadata");
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                out.push_str(&format!(
                    "{} mtime {mtime} size {}\n",
                    entry.file_name().to_string_lossy(),
                    m.len()
                ));
            }
            fs::write("/data/outputs/observed.txt", out).expect("write output");
        }
        "exit" => std::process::exit(extra.get(1).and_then(|c| c.parse().ok()).unwrap_or(0)),
        other => {
            eprintln!("unknown case `{other}`");
            return ExitCode::from(64);
        }
    }
    probe.finish()
}

#[derive(Default)]
struct Probe {
    allowed: Vec<String>,
}

impl Probe {
    fn attempt(&mut self, what: &str, f: impl FnOnce() -> std::io::Result<()>) {
        match f() {
            Ok(()) => {
                println!("ALLOWED {what}");
                self.allowed.push(what.to_string());
            }
            Err(e) => println!("denied {what}: {e}"),
        }
    }

    fn finish(self) -> ExitCode {
        if self.allowed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        }
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let big = std::hint::black_box([n; 64]);
    recurse(big[(n % 64) as usize] + 1) + big[0]
}

const MOUNTS: [&str; 3] = ["/data/inputs/1", "/data/outputs", "/data/logs"];

fn escape(p: &mut Probe) {
    for m in MOUNTS {
        for rel in [
            "..",
            "../..",
            "../../..",
            "../../../etc/passwd",
            "../inputs/1/data.txt",
            "../outputs",
        ] {
            let path = format!("{m}/{rel}");
            p.attempt(&format!("read {path}"), || fs::read(&path).map(|_| ()));
            p.attempt(&format!("list {path}"), || fs::read_dir(&path).map(|_| ()));
        }
        p.attempt(&format!("create {m}/../escape.txt"), || {
            fs::write(format!("{m}/../escape.txt"), b"x")
        });
    }
    for path in [
        "/",
        "/etc/passwd",
        "/proc/self/environ",
        "/proc/self/mem",
        "/proc/self/fd/0",
        "/tmp",
        "/data",
        "/data/inputs",
    ] {
        p.attempt(&format!("read {path}"), || fs::read(path).map(|_| ()));
        p.attempt(&format!("list {path}"), || fs::read_dir(path).map(|_| ()));
    }
    p.attempt("create /escape.txt", || fs::write("/escape.txt", b"x"));
    p.attempt("create /tmp/escape.txt", || {
        fs::write("/tmp/escape.txt", b"x")
    });
}

fn symlinks(p: &mut Probe) {
    for dir in ["/data/outputs", "/data/logs"] {
        let links = [
            ("abs", "/etc/passwd"),
            ("rel", "../../../../../etc/passwd"),
            ("trail", "/etc/"),
            ("trail-rel", "../../../etc/"),
            ("to-input", "../inputs/1/data.txt"),
            ("dotdot", ".."),
        ];
        for (name, target) in links {
            let link = format!("{dir}/{name}");
            // Creating a dangling or absolute link may be refused or allowed;
            // what matters is that nothing reads or writes through it.
            let _ = symlink(target, &link);
            p.attempt(&format!("read through {link} -> {target}"), || {
                let mut s = String::new();
                File::open(&link)?.read_to_string(&mut s).map(|_| ())
            });
            p.attempt(&format!("list through {link}/"), || {
                fs::read_dir(format!("{link}/")).map(|_| ())
            });
            p.attempt(&format!("write through {link}"), || {
                OpenOptions::new()
                    .write(true)
                    .open(&link)?
                    .write_all(b"pwned")
            });
            p.attempt(&format!("create through {link}/x"), || {
                fs::write(format!("{link}/x"), b"pwned")
            });
        }
    }
    fs::write("/data/outputs/real.txt", b"12345").expect("a normal output still works");
}

fn modify_input(p: &mut Probe) {
    let f = "/data/inputs/1/data.txt";
    p.attempt("open for write", || {
        OpenOptions::new().write(true).open(f).map(|_| ())
    });
    p.attempt("write", || {
        OpenOptions::new().write(true).open(f)?.write_all(b"pwned")
    });
    p.attempt("append", || {
        OpenOptions::new().append(true).open(f)?.write_all(b"pwned")
    });
    p.attempt("truncate on open", || {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(f)
            .map(|_| ())
    });
    p.attempt("create (truncate) existing", || File::create(f).map(|_| ()));
    p.attempt("set_len via read handle", || File::open(f)?.set_len(0));
    p.attempt("allocate (set_len up)", || File::open(f)?.set_len(1 << 20));
    p.attempt("set times", || {
        File::open(f)?.set_times(fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH))
    });
    p.attempt("set modified", || {
        File::open(f)?.set_modified(std::time::UNIX_EPOCH)
    });
    p.attempt("unlink", || fs::remove_file(f));
    p.attempt("rename within input", || {
        fs::rename(f, "/data/inputs/1/moved.txt")
    });
    p.attempt("rename into output", || {
        fs::rename(f, "/data/outputs/moved.txt")
    });
    p.attempt("mkdir", || fs::create_dir("/data/inputs/1/newdir"));
    p.attempt("rmdir", || fs::remove_dir("/data/inputs/1/sub"));
    p.attempt("create new file", || {
        fs::write("/data/inputs/1/new.txt", b"x")
    });
    p.attempt("symlink in input", || {
        symlink("data.txt", "/data/inputs/1/l")
    });
    p.attempt("hard link into output", || {
        fs::hard_link(f, "/data/outputs/hard.txt")
    });
    // If the link was made anyway, writing through it must not reach the input.
    p.attempt("write through hard link", || {
        OpenOptions::new()
            .write(true)
            .open("/data/outputs/hard.txt")?
            .write_all(b"pwned")
    });
    p.attempt("set permissions", || {
        let perms = fs::metadata(f)?.permissions();
        fs::set_permissions(f, perms)
    });
}

/// `symlink(2)`: through wasi-libc in the sandbox (std's WASI version is unstable).
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(not(unix))]
    {
        use std::ffi::{CString, c_char, c_int};
        unsafe extern "C" {
            fn symlink(target: *const c_char, link: *const c_char) -> c_int;
        }
        let (t, l) = (CString::new(target)?, CString::new(link)?);
        // SAFETY: both are valid NUL-terminated strings for the call's duration.
        if unsafe { symlink(t.as_ptr(), l.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Writes `update.f64` and `update.json` (weight 10) of `len` values.
fn fl_update(args: &[String], len: Option<usize>) -> ExitCode {
    let Some(len) = len else {
        eprintln!("fl-update needs the number of values");
        return ExitCode::from(2);
    };
    let value = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(name).map(str::to_string))
    };
    let output = value("--output=").unwrap_or_default();
    let inputs: Vec<String> = args
        .iter()
        .filter(|a| a.starts_with("--input"))
        .filter_map(|a| a.split_once('=').map(|(_, v)| v.to_string()))
        .collect();
    let model = inputs
        .last()
        .and_then(|m| fs::read(format!("{m}/model.f64")).ok())
        .unwrap_or_default();
    let mut update = Vec::with_capacity(8 * len);
    for i in 0..len {
        let x = model
            .get(8 * i..8 * i + 8)
            .map_or(0.5, |b| f64::from_le_bytes(b.try_into().unwrap()) + 1.0);
        update.extend_from_slice(&x.to_le_bytes());
    }
    let written = fs::write(format!("{output}/update.f64"), &update).and_then(|()| {
        fs::write(
            format!("{output}/update.json"),
            format!("{{\"weight\": 10, \"len\": {len}}}"),
        )
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fl-update: {e}");
            ExitCode::from(1)
        }
    }
}
