//! csv-stats: streaming per-column statistics over every CSV file of every input.
//!
//! Every file must start with a header row; columns are matched by name across
//! files. For each column: `count` (numeric values), `non_numeric`, `mean`,
//! `stddev` (sample, Welford's algorithm), `min`, `max`. Writes `stats.json`.
//! Memory use is independent of the input size.

use insitu_guest::{Error, Job};
use std::io::{BufRead, BufReader};

fn main() -> std::process::ExitCode {
    insitu_guest::run(csv_stats)
}

#[derive(Default, Clone)]
struct Column {
    count: u64,
    non_numeric: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Column {
    fn push(&mut self, field: &str) {
        let field = field.trim();
        if field.is_empty() {
            return;
        }
        match field.parse::<f64>() {
            Ok(x) if x.is_finite() => {
                if self.count == 0 {
                    self.min = x;
                    self.max = x;
                }
                self.count += 1;
                let d = x - self.mean;
                self.mean += d / self.count as f64;
                self.m2 += d * (x - self.mean);
                self.min = self.min.min(x);
                self.max = self.max.max(x);
            }
            _ => self.non_numeric += 1,
        }
    }

    fn json(&self) -> serde_json::Value {
        let num = |x: f64| {
            if self.count > 0 {
                serde_json::json!(x)
            } else {
                serde_json::Value::Null
            }
        };
        let sd = if self.count > 1 {
            (self.m2 / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        };
        serde_json::json!({
            "count": self.count,
            "non_numeric": self.non_numeric,
            "mean": num(self.mean),
            "stddev": num(sd),
            "min": num(self.min),
            "max": num(self.max),
        })
    }
}

/// Calls `f(index, field)` for each field of one CSV record (RFC 4180
/// quoting, no embedded newlines). `scratch` holds unescaped quoted fields.
fn each_field(line: &str, scratch: &mut String, mut f: impl FnMut(usize, &str)) {
    let mut rest = line;
    let mut i = 0;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            scratch.clear();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                if c != '"' {
                    scratch.push(c);
                } else if quoted[at + 1..].starts_with('"') {
                    scratch.push('"');
                    chars.next();
                } else {
                    end = at + 1;
                    break;
                }
            }
            f(i, scratch);
            rest = &quoted[end..];
            match rest.find(',') {
                Some(at) => rest = &rest[at + 1..],
                None => return,
            }
        } else {
            match rest.find(',') {
                Some(at) => {
                    f(i, &rest[..at]);
                    rest = &rest[at + 1..];
                }
                None => return f(i, rest),
            }
        }
        i += 1;
    }
}

fn csv_stats(job: &Job) -> Result<(), Error> {
    let files = job.input_files()?;
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Column> = Vec::new();
    let mut rows = 0u64;
    let mut scratch = String::new();
    let mut line = String::new();
    for path in &files {
        let mut reader = BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            continue;
        }
        let mut map: Vec<usize> = Vec::new();
        each_field(
            line.trim_end_matches(['\r', '\n']),
            &mut scratch,
            |_, name| {
                let col = match names.iter().position(|n| n == name.trim()) {
                    Some(i) => i,
                    None => {
                        names.push(name.trim().to_string());
                        columns.push(Column::default());
                        names.len() - 1
                    }
                };
                map.push(col);
            },
        );
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let record = line.trim_end_matches(['\r', '\n']);
            if record.is_empty() {
                continue;
            }
            rows += 1;
            each_field(record, &mut scratch, |i, field| {
                if let Some(&col) = map.get(i) {
                    columns[col].push(field);
                }
            });
        }
    }
    let stats: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&columns)
        .map(|(n, c)| (n.clone(), c.json()))
        .collect();
    let result = serde_json::json!({ "files": files.len(), "rows": rows, "columns": stats });
    job.write_output(
        "stats.json",
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    job.log(&format!(
        "{} files, {rows} rows, {} columns",
        files.len(),
        names.len()
    ));
    Ok(())
}
