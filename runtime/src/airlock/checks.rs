//! The automatic checks of an [`OutputPolicy`] over one execution's results
//! and logs. A [`Report`] names files, rows and columns — never content.

use super::policy::OutputPolicy;
use super::winnow::{Index, files_under};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Findings kept per check and file (the rest are counted).
const KEEP: usize = 20;
/// Copied line numbers named per file.
const KEEP_LINES: usize = 10;

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `max_result_bytes`, `file_types`, `min_count` or `copied_input`.
    pub check: String,
    /// The file, as `outputs/…` or `logs/stage-N/…`.
    pub file: String,
    /// Where in it (`row 3, column 2`; for JSON, the positions of the
    /// members and elements leading to it: `/1/0`), if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub detail: String,
}

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The policy checked against (the strictest of the inputs' datasets).
    pub policy: OutputPolicy,
    /// No finding.
    pub passed: bool,
    /// Files and bytes checked (results and logs).
    pub files: u64,
    pub bytes: u64,
    /// The share of those bytes copied from the inputs, when checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_share: Option<f64>,
    pub findings: Vec<Finding>,
    /// Findings beyond those listed.
    pub more: u64,
}

impl Report {
    /// One line for the consumer (a status reason): how many findings, of
    /// which checks, in which files — no values, no locations.
    pub fn summary(&self) -> String {
        if self.passed {
            return "every output check passed".into();
        }
        let mut checks: Vec<&str> = self.findings.iter().map(|f| f.check.as_str()).collect();
        checks.sort_unstable();
        checks.dedup();
        let mut files: Vec<&str> = self
            .findings
            .iter()
            .map(|f| f.file.as_str())
            .filter(|f| *f != "(all)")
            .collect();
        files.dedup();
        let more = files.len().saturating_sub(3);
        files.truncate(3);
        format!(
            "{} finding(s) of {}{}{}",
            self.findings.len() as u64 + self.more,
            checks.join(", "),
            if files.is_empty() {
                String::new()
            } else {
                format!(" in {}", files.join(", "))
            },
            if more > 0 {
                format!(" and {more} more file(s)")
            } else {
                String::new()
            }
        )
    }
}

/// The files a run leaves for the consumer: the result stage's outputs and
/// every stage's logs.
#[derive(Debug, Clone)]
pub struct Results {
    pub outputs: PathBuf,
    /// (stage index, its logs directory).
    pub logs: Vec<(u32, PathBuf)>,
}

impl Results {
    /// (name in the report, path, whether it is a log the platform writes).
    fn files(&self) -> Result<Vec<(String, PathBuf, bool)>, Error> {
        let mut out = Vec::new();
        let list = |dir: &Path| files_under(dir).map_err(|e| Error::io("list", dir, e));
        if self.outputs.is_dir() {
            for f in list(&self.outputs)? {
                let rel = f
                    .strip_prefix(&self.outputs)
                    .unwrap_or(&f)
                    .display()
                    .to_string();
                out.push((format!("outputs/{rel}"), f, false));
            }
        }
        for (n, dir) in &self.logs {
            if !dir.is_dir() {
                continue;
            }
            for f in list(dir)? {
                let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
                let own = matches!(extension(&f).as_deref(), Some("log" | "jsonl"));
                out.push((format!("logs/stage-{n}/{rel}"), f, own));
            }
        }
        Ok(out)
    }
}

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Checks `results` against `policy`; `inputs` is the inputs' index (needed
/// when the policy limits copied bytes).
///
/// # Errors
/// [`Error::Io`] when a result cannot be listed or read.
pub fn check(
    policy: &OutputPolicy,
    results: &Results,
    inputs: Option<&Index>,
) -> Result<Report, Error> {
    let files = results.files()?;
    let mut report = Report {
        policy: policy.clone(),
        passed: true,
        files: files.len() as u64,
        bytes: 0,
        copied_share: None,
        findings: Vec::new(),
        more: 0,
    };
    let mut copied = 0u64;
    for (name, path, own_log) in &files {
        // Contents are read only for the checks that look at them.
        let counted = policy.min_count.is_some()
            && matches!(extension(path).as_deref(), Some("csv" | "tsv" | "json"));
        let compared = policy.max_copied_share.is_some() && inputs.is_some();
        let data = if counted || compared {
            std::fs::read(path).map_err(|e| Error::io("read result", path, e))?
        } else {
            Vec::new()
        };
        report.bytes += if counted || compared {
            data.len() as u64
        } else {
            std::fs::symlink_metadata(path)
                .map_err(|e| Error::io("stat result", path, e))?
                .len()
        };
        if !policy.file_types.is_empty() && !own_log {
            let ext = extension(path).unwrap_or_default();
            if !policy.file_types.contains(&ext) {
                push(
                    &mut report,
                    "file_types",
                    name,
                    None,
                    format!(
                        "type `{}` is not one of {} the dataset allows",
                        if ext.is_empty() { "(none)" } else { &ext },
                        policy.file_types.join(", ")
                    ),
                );
            }
        }
        if let Some(k) = policy.min_count {
            small_counts(&mut report, name, path, &data, k);
        }
        if let (Some(_), Some(index)) = (policy.max_copied_share, inputs) {
            let c = index.covered(&data, KEEP_LINES);
            if c.bytes > 0 {
                copied += c.bytes;
                let lines: Vec<String> = c.lines.iter().map(u64::to_string).collect();
                push(
                    &mut report,
                    "copied_input",
                    name,
                    (!lines.is_empty()).then(|| format!("lines {}", lines.join(", "))),
                    format!("{} of {} bytes match the inputs", c.bytes, data.len()),
                );
            }
        }
    }
    if let Some(max) = policy.max_copied_share {
        let share = if report.bytes == 0 {
            0.0
        } else {
            copied as f64 / report.bytes as f64
        };
        report.copied_share = Some(share);
        // Copied bytes are findings only beyond the allowed share.
        if share <= max {
            report.findings.retain(|f| f.check != "copied_input");
        } else {
            report.findings.push(Finding {
                check: "copied_input".into(),
                file: "(all)".into(),
                location: None,
                detail: format!(
                    "{:.1} % of the results' bytes match the inputs; the dataset allows {:.1} %",
                    share * 100.0,
                    max * 100.0
                ),
            });
        }
    }
    if let Some(max) = policy.max_result_bytes
        && report.bytes > max
    {
        report.findings.insert(
            0,
            Finding {
                check: "max_result_bytes".into(),
                file: "(all)".into(),
                location: None,
                detail: format!(
                    "results and logs hold {} bytes; the dataset allows {max}",
                    report.bytes
                ),
            },
        );
    }
    report.passed = report.findings.is_empty() && report.more == 0;
    Ok(report)
}

fn push(report: &mut Report, check: &str, file: &str, location: Option<String>, detail: String) {
    let same = report
        .findings
        .iter()
        .filter(|f| f.check == check && f.file == file)
        .count();
    if same >= KEEP {
        report.more += 1;
        return;
    }
    report.findings.push(Finding {
        check: check.into(),
        file: file.into(),
        location,
        detail,
    });
}

/// Integer cells `0 < v < k` of a CSV/TSV (by row and column) or JSON (by
/// pointer) result.
fn small_counts(report: &mut Report, name: &str, path: &Path, data: &[u8], k: u64) {
    let small = |v: i64| v > 0 && (v as u64) < k;
    // The value itself is not reported: a small count is what it protects.
    let detail = |_: i64| format!("a count below the dataset's minimum {k}");
    match extension(path).as_deref() {
        Some(ext @ ("csv" | "tsv")) => {
            let sep = if ext == "tsv" { b'\t' } else { b',' };
            for (r, line) in data.split(|b| *b == b'\n').enumerate() {
                for (c, cell) in cells(line, sep).enumerate() {
                    if let Some(v) = integer(cell)
                        && small(v)
                    {
                        push(
                            report,
                            "min_count",
                            name,
                            Some(format!("row {}, column {}", r + 1, c + 1)),
                            detail(v),
                        );
                    }
                }
            }
        }
        Some("json") => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
                return;
            };
            let mut stack = vec![(String::new(), &v)];
            while let Some((at, v)) = stack.pop() {
                match v {
                    serde_json::Value::Number(n) => {
                        if let Some(x) = n.as_i64()
                            && small(x)
                        {
                            let at = if at.is_empty() { "/".into() } else { at };
                            push(report, "min_count", name, Some(at), detail(x));
                        }
                    }
                    serde_json::Value::Array(a) => {
                        for (i, x) in a.iter().enumerate().rev() {
                            stack.push((format!("{at}/{i}"), x));
                        }
                    }
                    // Members by position: keys can be data (a map of
                    // counts keyed by name).
                    serde_json::Value::Object(o) => {
                        for (i, x) in o.values().enumerate().rev() {
                            stack.push((format!("{at}/{i}"), x));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The cells of one CSV line (quotes honoured, `""` inside quotes).
fn cells(line: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut quoted = false;
    let mut out = Vec::new();
    for (i, b) in line.iter().enumerate() {
        if *b == b'"' {
            quoted = !quoted;
        } else if *b == sep && !quoted {
            out.push(&line[start..i]);
            start = i + 1;
        }
    }
    out.push(&line[start..]);
    out.into_iter()
}

/// A cell that is an integer as written (`12`, `"12"`, ` -3 `).
fn integer(cell: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(cell).ok()?.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .trim();
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(files: &[(&str, &str)], logs: &[(&str, &str)]) -> (tempfile::TempDir, Results) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let log = dir.path().join("logs");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        for (n, c) in files {
            std::fs::write(out.join(n), c).unwrap();
        }
        for (n, c) in logs {
            std::fs::write(log.join(n), c).unwrap();
        }
        (
            dir,
            Results {
                outputs: out,
                logs: vec![(0, log)],
            },
        )
    }

    #[test]
    fn small_counts_are_found_by_row_and_column_and_pointer() {
        let (_d, r) = results(
            &[
                ("counts.csv", "town,people\nA,120\nB,3\n\"C\",\"4\"\n"),
                (
                    "stats.json",
                    r#"{"rows": [{"n": 50}, {"n": 2}], "mean": 1.5}"#,
                ),
            ],
            &[("stdout.log", "done\n")],
        );
        let policy = OutputPolicy {
            min_count: Some(10),
            ..Default::default()
        };
        let rep = check(&policy, &r, None).unwrap();
        assert!(!rep.passed);
        let at: Vec<(String, Option<String>)> = rep
            .findings
            .iter()
            .map(|f| (f.file.clone(), f.location.clone()))
            .collect();
        assert_eq!(
            at,
            vec![
                ("outputs/counts.csv".into(), Some("row 3, column 2".into())),
                ("outputs/counts.csv".into(), Some("row 4, column 2".into())),
                ("outputs/stats.json".into(), Some("/1/1/0".into())),
            ]
        );
        // The report says where, never what else is there.
        assert!(!serde_json::to_string(&rep).unwrap().contains("town"));
        assert!(rep.summary().contains("min_count"), "{}", rep.summary());
    }

    #[test]
    fn sizes_types_and_copies_are_checked_in_results_and_logs() {
        let rows: String = (0..100)
            .map(|i| format!("{i},patient-{i:05},diagnosis-{}\n", i % 7))
            .collect();
        let mut index = Index::default();
        index.add_bytes(rows.as_bytes());
        let (_d, r) = results(
            &[("mean.txt", "42.1\n"), ("dump.bin", "x")],
            &[("stdout.log", &rows)],
        );
        let policy = OutputPolicy {
            max_result_bytes: Some(100),
            file_types: vec!["txt".into()],
            max_copied_share: Some(0.05),
            ..Default::default()
        };
        let rep = check(&policy, &r, Some(&index)).unwrap();
        let checks: Vec<&str> = rep.findings.iter().map(|f| f.check.as_str()).collect();
        assert_eq!(
            checks,
            vec![
                "max_result_bytes",
                "file_types",
                "copied_input",
                "copied_input"
            ]
        );
        assert_eq!(rep.findings[2].file, "logs/stage-0/stdout.log");
        assert!(rep.copied_share.unwrap() > 0.9);
        // Within the allowed share, copies are not findings.
        let text = format!("{}\n{}", "fresh text, ".repeat(300), &rows[..56]);
        let (_d, r) = results(&[("mean.txt", &text)], &[]);
        let rep = check(
            &OutputPolicy {
                max_copied_share: Some(0.05),
                ..Default::default()
            },
            &r,
            Some(&index),
        )
        .unwrap();
        assert!(rep.passed, "{rep:?}");
        assert!(rep.copied_share.unwrap() > 0.0);
    }
}
