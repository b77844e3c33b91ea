//! A dataset's output policy: how results computed from it may leave.

use crate::Error;
use serde::{Deserialize, Serialize};

/// When results that pass the automatic checks are released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Release {
    /// At once (default).
    #[default]
    Auto,
    /// Only once a reviewer releases them (`insitu review release`).
    Review,
}

impl Release {
    /// `auto` or `review`.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Auto => "auto",
            Release::Review => "review",
        }
    }
}

/// A dataset's output policy (default: release at once, nothing checked).
/// Checks apply to the result files and to every stage's logs (logs reach
/// the consumer too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputPolicy {
    /// `auto` or `review`.
    pub release: Release,
    /// The most bytes results and logs may hold together.
    pub max_result_bytes: Option<u64>,
    /// The file name extensions (lowercase, no dot) results may have; empty:
    /// any. Logs' own `log` and `jsonl` files are always allowed.
    pub file_types: Vec<String>,
    /// Integer cells `0 < v < K` in CSV or JSON results fail (small counts
    /// identify people).
    pub min_count: Option<u64>,
    /// The largest share (0 to 1) of result and log bytes that may be copied
    /// from the inputs (same lines, or same 64-byte runs).
    pub max_copied_share: Option<f64>,
    /// Who may release or reject held results. Results failing a check are
    /// held for them when there are any, and fail otherwise.
    pub reviewers: Vec<String>,
}

impl OutputPolicy {
    /// Whether it checks or holds anything at all.
    pub fn is_open(&self) -> bool {
        *self == OutputPolicy::default()
    }

    /// Whether anything must be checked after a run.
    pub fn checks(&self) -> bool {
        self.max_result_bytes.is_some()
            || !self.file_types.is_empty()
            || self.min_count.is_some()
            || self.max_copied_share.is_some()
    }

    /// Checks the values and normalises the file types (lowercase, no dot).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting and how to fix it.
    pub fn validated(mut self) -> Result<OutputPolicy, Error> {
        if let Some(s) = self.max_copied_share
            && !(0.0..=1.0).contains(&s)
        {
            return Err(Error::Invalid {
                what: "max_copied_share",
                value: s.to_string(),
                reason: "a share of the result's bytes, from 0 to 1 (e.g. 0.05)",
            });
        }
        if self.min_count == Some(0) {
            return Err(Error::Invalid {
                what: "min_count",
                value: "0".into(),
                reason: "the smallest count results may show, at least 1 (e.g. 10)",
            });
        }
        for t in &mut self.file_types {
            *t = t.trim().trim_start_matches('.').to_ascii_lowercase();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Error::Invalid {
                    what: "file type",
                    value: t.clone(),
                    reason: "a file name extension of letters and digits (csv, json, txt)",
                });
            }
        }
        if self.release == Release::Review && self.reviewers.is_empty() {
            return Err(Error::Invalid {
                what: "release",
                value: "review".into(),
                reason: "held results need someone to release them: name at least one reviewer",
            });
        }
        Ok(self)
    }

    /// The strictest combination of `policies` (a stage reading several
    /// datasets answers to all of them): the smallest limits, the file
    /// types every policy allows, review when any asks for it, every
    /// reviewer.
    pub fn strictest<'a>(policies: impl IntoIterator<Item = &'a OutputPolicy>) -> OutputPolicy {
        let mut out = OutputPolicy::default();
        let mut types: Option<Vec<String>> = None;
        for p in policies {
            if p.release == Release::Review {
                out.release = Release::Review;
            }
            out.max_result_bytes = min_some(out.max_result_bytes, p.max_result_bytes);
            out.min_count = match (out.min_count, p.min_count) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            out.max_copied_share = match (out.max_copied_share, p.max_copied_share) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !p.file_types.is_empty() {
                types = Some(match types {
                    None => p.file_types.clone(),
                    Some(t) => t.into_iter().filter(|x| p.file_types.contains(x)).collect(),
                });
            }
            for r in &p.reviewers {
                if !out.reviewers.contains(r) {
                    out.reviewers.push(r.clone());
                }
            }
        }
        if let Some(mut t) = types {
            // Every policy restricts types and none overlaps: nothing passes.
            if t.is_empty() {
                t.push("(none)".into());
            }
            out.file_types = t;
        }
        out
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_policy_wins() {
        let a = OutputPolicy {
            max_result_bytes: Some(100),
            file_types: vec!["csv".into(), "json".into()],
            min_count: Some(5),
            ..Default::default()
        };
        let b = OutputPolicy {
            release: Release::Review,
            max_result_bytes: Some(50),
            file_types: vec!["json".into()],
            min_count: Some(10),
            max_copied_share: Some(0.1),
            reviewers: vec!["ann".into()],
        };
        let s = OutputPolicy::strictest([&a, &b]);
        assert_eq!(s.release, Release::Review);
        assert_eq!(s.max_result_bytes, Some(50));
        assert_eq!(s.file_types, vec!["json".to_string()]);
        assert_eq!(s.min_count, Some(10));
        assert_eq!(s.max_copied_share, Some(0.1));
        assert_eq!(s.reviewers, vec!["ann".to_string()]);
        assert!(OutputPolicy::strictest([]).is_open());
    }

    #[test]
    fn bad_settings_are_refused_with_how_to_fix_them() {
        let e = OutputPolicy {
            max_copied_share: Some(1.5),
            ..Default::default()
        }
        .validated()
        .unwrap_err();
        assert!(e.to_string().contains("from 0 to 1"), "{e}");
        let e = OutputPolicy {
            release: Release::Review,
            ..Default::default()
        }
        .validated()
        .unwrap_err();
        assert!(e.to_string().contains("name at least one reviewer"), "{e}");
        let p = OutputPolicy {
            file_types: vec![".CSV".into()],
            ..Default::default()
        }
        .validated()
        .unwrap();
        assert_eq!(p.file_types, vec!["csv".to_string()]);
    }
}
