//! report: renders the JSON results of an earlier stage as a Markdown report,
//! the second stage of the demo's workflow (`csv-stats` → `report`).
//!
//! Reads every `*.json` file of every input. Objects whose values are all
//! objects of numbers (like `csv-stats`' `columns`) become tables, one row per
//! key; other values are listed as `key: value`. Writes `report.md`.

use insitu_guest::{Error, Job};
use serde_json::{Map, Value};
use std::fmt::Write;

fn main() -> std::process::ExitCode {
    insitu_guest::run(report)
}

fn report(job: &Job) -> Result<(), Error> {
    let mut out = String::from("# Report\n");
    let mut n = 0;
    for path in job.input_files()? {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let name = path
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned());
        let _ = write!(out, "\n## {name}\n\n");
        render(&doc, &mut out);
        n += 1;
    }
    if n == 0 {
        return Err("no .json file in the inputs; run this after a stage that writes JSON".into());
    }
    job.write_output("report.md", out.as_bytes())?;
    job.log(&format!("{n} JSON files rendered"));
    Ok(())
}

fn render(v: &Value, out: &mut String) {
    let Value::Object(map) = v else {
        let _ = writeln!(out, "{}", scalar(v));
        return;
    };
    let mut tables = Vec::new();
    for (key, value) in map {
        match value {
            Value::Object(rows) if is_table(rows) => tables.push((key, rows)),
            Value::Object(_) | Value::Array(_) => {
                let _ = writeln!(out, "- {key}: `{value}`");
            }
            _ => {
                let _ = writeln!(out, "- {key}: {}", scalar(value));
            }
        }
    }
    for (key, rows) in tables {
        table(key, rows, out);
    }
}

/// Every value is an object whose values are numbers or null.
fn is_table(rows: &Map<String, Value>) -> bool {
    !rows.is_empty()
        && rows.values().all(|r| {
            r.as_object()
                .is_some_and(|o| o.values().all(|c| c.is_number() || c.is_null()))
        })
}

fn table(name: &str, rows: &Map<String, Value>, out: &mut String) {
    let mut columns: Vec<&String> = Vec::new();
    for row in rows.values().filter_map(Value::as_object) {
        for c in row.keys() {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
    }
    let _ = write!(out, "\n### {name}\n\n| {name} |");
    for c in &columns {
        let _ = write!(out, " {c} |");
    }
    let _ = write!(out, "\n|---|");
    for _ in &columns {
        out.push_str("---:|");
    }
    out.push('\n');
    for (key, row) in rows {
        let _ = write!(out, "| {key} |");
        for c in &columns {
            let _ = write!(out, " {} |", scalar(&row[c.as_str()]));
        }
        out.push('\n');
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
