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
        let num = |x: f64| if self.count > 0 { serde_json::json!(x) } else { serde_json::Value::Null };
        let sd = if self.count > 1 { (self.m2 / (self.count - 1) as f64).sqrt() } else { 0.0 };
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

/// Splits one CSV record (RFC 4180 quoting, no embedded newlines) into `out`.
fn split_record<'a>(line: &'a str, out: &mut Vec<std::borrow::Cow<'a, str>>) {
    out.clear();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if quoted[i + 1..].starts_with('"') {
                        value.push('"');
                        chars.next();
                    } else {
                        end = i + 1;
                        break;
                    }
                } else {
                    value.push(c);
                }
            }
            out.push(value.into());
            rest = &quoted[end..];
            match rest.find(',') {
                Some(i) => rest = &rest[i + 1..],
                None => return,
            }
        } else {
            match rest.find(',') {
                Some(i) => {
                    out.push(rest[..i].into());
                    rest = &rest[i + 1..];
                }
                None => {
                    out.push(rest.into());
                    return;
                }
            }
        }
    }
}

fn csv_stats(job: &Job) -> Result<(), Error> {
    let files = job.input_files()?;
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Column> = Vec::new();
    let mut rows = 0u64;
    let mut fields = Vec::new();
    let mut line = String::new();
    for path in &files {
        let mut reader = BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            continue;
        }
        split_record(line.trim_end_matches(['\r', '\n']), &mut fields);
        let map: Vec<usize> = fields
            .iter()
            .map(|name| match names.iter().position(|n| n == name.trim()) {
                Some(i) => i,
                None => {
                    names.push(name.trim().to_string());
                    columns.push(Column::default());
                    names.len() - 1
                }
            })
            .collect();
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
            split_record(record, &mut fields);
            for (field, &col) in fields.iter().zip(&map) {
                columns[col].push(field);
            }
        }
    }
    let stats: serde_json::Map<String, serde_json::Value> =
        names.iter().zip(&columns).map(|(n, c)| (n.clone(), c.json())).collect();
    let result = serde_json::json!({ "files": files.len(), "rows": rows, "columns": stats });
    job.write_output("stats.json", serde_json::to_string_pretty(&result)?.as_bytes())?;
    job.log(&format!("{} files, {rows} rows, {} columns", files.len(), names.len()));
    Ok(())
}
