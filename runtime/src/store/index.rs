//! The catalog's search index: an in-memory inverted index over every
//! asset's name, description, tags and author, ranked by BM25F with the
//! weights name 10, tags 5, author 3, description 1 (Robertson & Zaragoza,
//! "The Probabilistic Relevance Framework: BM25 and Beyond", 2009; k1 = 1.2,
//! b = 0.75 per field, as SQLite FTS5's `bm25()` computes it).
//!
//! The `assets` table is append-only, so the index is derived from it and
//! never persisted: each search first indexes the rows added since the last
//! one (by any process: the CLI's catalog verbs write while a server runs).
//! A query scores only the postings of its words (each word a prefix, all
//! must match), filters, counts and cuts its page in memory; SQLite is
//! read for the page's DDOs alone. Tokens are maximal runs of alphanumeric
//! characters, lowercased, in documents and queries alike.

use super::{Search, Sort};
use serde_json::Value;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

/// The documents in both `a` and `b` (each in document order), their
/// scores summed: a merge.
fn intersect(a: &[(u32, f64)], b: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let (mut i, mut out) = (0, Vec::with_capacity(a.len().min(b.len())));
    for (d, s) in a {
        while i < b.len() && b[i].0 < *d {
            i += 1;
        }
        if i < b.len() && b[i].0 == *d {
            out.push((*d, s + b[i].1));
        }
    }
    out
}

/// A query's filters, prepared once (lowercased, coded) for every document.
struct Filter<'a> {
    viewer: String,
    kind: Option<u8>,
    owner: Option<String>,
    /// Service bit (see [`Doc::services`]); 0 when none is asked for.
    service: u8,
    q: &'a Search,
}

impl<'a> Filter<'a> {
    fn new(q: &'a Search) -> Filter<'a> {
        Filter {
            viewer: q.viewer.clone().unwrap_or_default().to_ascii_lowercase(),
            kind: q.kind.as_deref().map(kind_code),
            owner: q.owner.as_ref().map(|o| o.to_ascii_lowercase()),
            service: match q.service.as_deref() {
                Some("compute") => 1,
                Some("access") => 2,
                Some(_) => 4, // no document offers it
                None => 0,
            },
            q,
        }
    }

    /// Whether `d` passes: results only to their owner, then each filter.
    fn admits(&self, d: &Doc) -> bool {
        (d.kind != 3 || d.owner == self.viewer)
            && self.kind.is_none_or(|k| d.kind == k)
            && self.owner.as_ref().is_none_or(|o| d.owner == *o)
            && (self.service == 0 || d.services & self.service != 0)
            && self.q.tags.iter().all(|t| d.tags.contains(t))
            && self
                .q
                .price_min
                .is_none_or(|min| d.price.is_some_and(|p| p >= min))
            && self
                .q
                .price_max
                .is_none_or(|max| d.price.is_some_and(|p| p <= max))
    }
}

/// Fields in scoring order: name, description, tags, author.
const FIELDS: usize = 4;
const WEIGHTS: [f64; FIELDS] = [10.0, 1.0, 5.0, 3.0];
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// An asset as the index keeps it.
#[derive(Debug)]
struct Doc {
    did: String,
    kind: u8,
    /// `main.owner`, lowercase; empty for none.
    owner: String,
    tags: Vec<String>,
    /// The compute service's price.
    price: Option<f64>,
    /// Offers a `compute` (1) / `access` (2) service.
    services: u8,
    name_lower: String,
    lens: [u16; FIELDS],
}

#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    tf: [u8; FIELDS],
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The last `assets` rowid indexed.
    pub(super) last_rowid: i64,
    docs: Vec<Doc>,
    /// Token → postings in document order.
    terms: BTreeMap<String, Vec<Posting>>,
    /// Sum of each field's length over all documents.
    totals: [u64; FIELDS],
    /// Word → its matches with their scores, as [`Index::word`] computes
    /// them: kept until the next document is added (scores depend on the
    /// document count and the average field lengths), at most
    /// [`CACHED_MATCHES`] in all.
    scored: HashMap<String, Arc<Vec<(u32, f64)>>>,
    /// Matches held in `scored`.
    cached: usize,
}

/// The most (document, score) pairs the word cache holds (16 bytes each).
const CACHED_MATCHES: usize = 1 << 20;

/// A match's rank, greater first: an exact name first, then `primary`
/// (the score, or the document number for newest/oldest first), then the
/// older document.
#[derive(Debug, Clone, Copy)]
struct Rank {
    exact: bool,
    primary: f64,
    doc: u32,
}

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Rank {}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.exact
            .cmp(&other.exact)
            .then(self.primary.total_cmp(&other.primary))
            .then(other.doc.cmp(&self.doc))
    }
}

fn kind_code(kind: &str) -> u8 {
    match kind {
        "dataset" => 0,
        "workflow" => 1,
        "algorithm" => 2,
        _ => 3,
    }
}

/// The tokens of `text` (see the module documentation).
pub(super) fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl Index {
    /// Adds asset `did` of `kind` with DDO text `ddo` (the next rowid).
    pub(super) fn add(&mut self, rowid: i64, did: &str, kind: &str, ddo: &str) {
        self.last_rowid = rowid;
        if self.cached > 0 {
            self.scored.clear();
            self.cached = 0;
        }
        let ddo: Value = serde_json::from_str(ddo).unwrap_or(Value::Null);
        let main = &ddo["service"][0]["attributes"]["main"];
        let info = &ddo["service"][0]["attributes"]["additionalInformation"];
        let name = main["name"].as_str().unwrap_or_default();
        let tags: Vec<String> = info["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let fields = [
            name.to_string(),
            info["description"].as_str().unwrap_or_default().to_string(),
            tags.join(" "),
            main["author"].as_str().unwrap_or_default().to_string(),
        ];
        let services = ddo["service"].as_array().map_or(0, |s| {
            s.iter().fold(0, |m, s| match s["type"].as_str() {
                Some("compute") => m | 1,
                Some("access") => m | 2,
                _ => m,
            })
        });
        let price = match &ddo["service"][1]["attributes"]["main"]["price"] {
            Value::String(p) => p.parse().ok(),
            Value::Number(n) => n.as_f64(),
            _ => None,
        };
        let doc = self.docs.len() as u32;
        let mut counts: HashMap<String, [u8; FIELDS]> = HashMap::new();
        let mut lens = [0u16; FIELDS];
        for (f, text) in fields.iter().enumerate() {
            for t in tokens(text) {
                lens[f] = lens[f].saturating_add(1);
                let tf = &mut counts.entry(t).or_default()[f];
                *tf = tf.saturating_add(1);
            }
            self.totals[f] += u64::from(lens[f]);
        }
        for (t, tf) in counts {
            self.terms.entry(t).or_default().push(Posting { doc, tf });
        }
        self.docs.push(Doc {
            did: did.to_string(),
            kind: kind_code(kind),
            owner: main["owner"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            tags,
            price,
            services,
            name_lower: name.to_lowercase(),
            lens,
        });
    }

    /// The documents matching word `w` as a prefix, each with its BM25F
    /// score for it, in document order.
    fn word(&self, w: &str) -> Vec<(u32, f64)> {
        let lists: Vec<&Vec<Posting>> = self
            .terms
            .range(w.to_string()..)
            .take_while(|(t, _)| t.starts_with(w))
            .map(|(_, p)| p)
            .collect();
        // Every token with the prefix counts, as FTS5's prefix queries do:
        // their frequencies summed per document. One token (the usual case)
        // is already in document order.
        let merged: Vec<(u32, [u32; FIELDS])> = match lists.as_slice() {
            [one] => one.iter().map(|p| (p.doc, p.tf.map(u32::from))).collect(),
            many if many.iter().map(|l| l.len()).sum::<usize>() > self.docs.len() / 16 => {
                // Many postings: add them up in a dense (calloc'd) array and
                // read it back in document order, instead of sorting them.
                let mut acc = vec![[0u32; FIELDS]; self.docs.len()];
                for l in many {
                    for p in l.iter() {
                        for (a, t) in acc[p.doc as usize].iter_mut().zip(p.tf) {
                            *a += u32::from(t);
                        }
                    }
                }
                acc.into_iter()
                    .enumerate()
                    .filter(|(_, tf)| *tf != [0; FIELDS])
                    .map(|(d, tf)| (d as u32, tf))
                    .collect()
            }
            many => {
                let mut all: Vec<(u32, [u32; FIELDS])> = many
                    .iter()
                    .flat_map(|l| l.iter().map(|p| (p.doc, p.tf.map(u32::from))))
                    .collect();
                all.sort_unstable_by_key(|(d, _)| *d);
                let mut out: Vec<(u32, [u32; FIELDS])> = Vec::with_capacity(all.len());
                for (d, tf) in all {
                    match out.last_mut() {
                        Some((last, acc)) if *last == d => {
                            for (a, t) in acc.iter_mut().zip(tf) {
                                *a += t;
                            }
                        }
                        _ => out.push((d, tf)),
                    }
                }
                out
            }
        };
        let n = self.docs.len() as f64;
        let df = merged.len() as f64;
        let idf = ((n - df + 0.5) / (df + 0.5)).ln().max(1e-6);
        let avg = self.totals.map(|t| (t as f64 / n.max(1.0)).max(1e-9));
        merged
            .into_iter()
            .map(|(doc, tf)| {
                let d = &self.docs[doc as usize];
                let mut s = 0.0;
                for f in 0..FIELDS {
                    if tf[f] > 0 {
                        let tf = f64::from(tf[f]);
                        let norm = K1 * (1.0 - B + B * f64::from(d.lens[f]) / avg[f]);
                        s += WEIGHTS[f] * idf * tf * (K1 + 1.0) / (tf + norm);
                    }
                }
                (doc, s)
            })
            .collect()
    }

    /// [`Index::word`], from the cache when the index has not changed.
    fn scored(&mut self, w: &str) -> Arc<Vec<(u32, f64)>> {
        if let Some(v) = self.scored.get(w) {
            return v.clone();
        }
        let v = Arc::new(self.word(w));
        if self.cached + v.len() > CACHED_MATCHES {
            self.scored.clear();
            self.cached = 0;
        }
        if v.len() <= CACHED_MATCHES {
            self.cached += v.len();
            self.scored.insert(w.to_string(), v.clone());
        }
        v
    }

    /// One page of `q`: the DIDs in order, and the number of matches.
    ///
    /// One pass over the matches filters and counts them and keeps the best
    /// `page × size` in a bounded heap (sorted by name: all of them, then a
    /// partial sort); the words' scored matches are cached (see `scored`).
    pub(super) fn search(&mut self, q: &Search) -> (Vec<String>, u64) {
        let words: Vec<String> = tokens(&q.text).take(16).collect();
        if words.is_empty() && !q.text.trim().is_empty() {
            return (Vec::new(), 0); // only punctuation: nothing matches it
        }
        let mut lists: Vec<Arc<Vec<(u32, f64)>>> = words.iter().map(|w| self.scored(w)).collect();
        lists.sort_by_key(|l| l.len());
        // (doc, score) of the matches, in document order.
        let intersected: Vec<(u32, f64)>;
        let matches: &[(u32, f64)] = match lists.as_slice() {
            [] => &[],
            [one] => one,
            [first, second, rest @ ..] => {
                let mut acc = intersect(first, second);
                for l in rest {
                    acc = intersect(&acc, l);
                }
                intersected = acc;
                &intersected
            }
        };
        let filter = Filter::new(q);
        let exact_name = q.text.trim().to_lowercase();
        let exact = |d: u32| !words.is_empty() && self.docs[d as usize].name_lower == exact_name;
        let size = q.page_size.clamp(1, Search::MAX_PAGE_SIZE);
        let skip = q.page.saturating_sub(1).saturating_mul(size);
        let want = skip.saturating_add(size);
        let every: Box<dyn Iterator<Item = (u32, f64)>> = if words.is_empty() {
            Box::new((0..self.docs.len() as u32).map(|d| (d, 0.0)))
        } else {
            Box::new(matches.iter().copied())
        };
        let admitted = every.filter(|(d, _)| filter.admits(&self.docs[*d as usize]));
        let mut total = 0u64;
        let ranked: Vec<u32> = if q.sort == Sort::Name {
            let mut hits: Vec<(u32, bool)> = admitted.map(|(d, _)| (d, exact(d))).collect();
            total = hits.len() as u64;
            let order = |a: &(u32, bool), b: &(u32, bool)| {
                b.1.cmp(&a.1).then_with(|| {
                    self.docs[a.0 as usize]
                        .name_lower
                        .cmp(&self.docs[b.0 as usize].name_lower)
                        .then(a.0.cmp(&b.0))
                })
            };
            let want = want.min(hits.len());
            if want == 0 {
                return (Vec::new(), total);
            }
            if want < hits.len() {
                hits.select_nth_unstable_by(want - 1, order);
                hits.truncate(want);
            }
            hits.sort_unstable_by(order);
            hits.into_iter().map(|(d, _)| d).collect()
        } else {
            let primary = |d: u32, score: f64| match (q.sort, words.is_empty()) {
                (Sort::Relevance, false) => score,
                (Sort::Oldest, _) => -f64::from(d),
                _ => f64::from(d),
            };
            // The best `want` so far, the worst on top.
            let mut best: BinaryHeap<std::cmp::Reverse<Rank>> =
                BinaryHeap::with_capacity(want.min(1 << 16) + 1);
            for (d, score) in admitted {
                total += 1;
                let rank = Rank {
                    exact: exact(d),
                    primary: primary(d, score),
                    doc: d,
                };
                if best.len() < want {
                    best.push(std::cmp::Reverse(rank));
                } else if best.peek().is_some_and(|w| rank > w.0) {
                    best.pop();
                    best.push(std::cmp::Reverse(rank));
                }
            }
            best.into_sorted_vec()
                .into_iter()
                .map(|r| r.0.doc)
                .collect()
        };
        let page = ranked
            .iter()
            .skip(skip)
            .map(|d| self.docs[*d as usize].did.clone())
            .collect();
        (page, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DDO as the catalog stores it, with `name`, `description`, `tags`.
    fn ddo(name: &str, description: &str, tags: &[&str]) -> String {
        serde_json::json!({"service": [{"attributes": {
            "main": {"name": name, "owner": "0xabc"},
            "additionalInformation": {"description": description, "tags": tags},
        }}]})
        .to_string()
    }

    /// Every page in every order equals a full sort of every match.
    #[test]
    fn pages_equal_a_full_sort_of_every_match() {
        let words = ["alpha", "beta", "gamma", "alps", "delta"];
        let mut index = Index::default();
        let mut x = 7u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for i in 0..300 {
            let name: Vec<&str> = (0..1 + next(3)).map(|_| words[next(5)]).collect();
            let text: Vec<&str> = (0..next(6)).map(|_| words[next(5)]).collect();
            let name = if i % 50 == 0 {
                "alpha".to_string()
            } else {
                name.join(" ")
            };
            index.add(
                i + 1,
                &format!("did:{i}"),
                "dataset",
                &ddo(&name, &text.join(" "), &[words[next(5)]]),
            );
        }
        for text in ["alpha", "al", "alpha beta", "gamma delta", "", "zeta"] {
            for sort in [Sort::Relevance, Sort::Newest, Sort::Oldest, Sort::Name] {
                let q = |page| Search {
                    text: text.to_string(),
                    sort,
                    page_size: 7,
                    page,
                    ..Search::default()
                };
                // The reference: every match scored, sorted in full.
                let (all, total) = {
                    let mut big = q(1);
                    big.page_size = Search::MAX_PAGE_SIZE;
                    index.search(&big)
                };
                assert!(total <= 300);
                if total < Search::MAX_PAGE_SIZE as u64 {
                    assert_eq!(all.len() as u64, total, "{text} {sort:?}");
                }
                let mut reference: Vec<(u32, f64, bool)> = Vec::new();
                let words: Vec<String> = tokens(text).collect();
                for d in 0..index.docs.len() as u32 {
                    let mut score = 0.0;
                    let mut all_match = true;
                    for w in &words {
                        match index.word(w).iter().find(|(m, _)| *m == d) {
                            Some((_, s)) => score += s,
                            None => all_match = false,
                        }
                    }
                    if all_match {
                        let exact = !words.is_empty() && index.docs[d as usize].name_lower == text;
                        reference.push((d, score, exact));
                    }
                }
                reference.sort_by(|a, b| {
                    b.2.cmp(&a.2).then_with(|| match (sort, words.is_empty()) {
                        (Sort::Relevance, false) => b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)),
                        (Sort::Relevance | Sort::Newest, _) => b.0.cmp(&a.0),
                        (Sort::Oldest, _) => a.0.cmp(&b.0),
                        (Sort::Name, _) => index.docs[a.0 as usize]
                            .name_lower
                            .cmp(&index.docs[b.0 as usize].name_lower)
                            .then(a.0.cmp(&b.0)),
                    })
                });
                assert_eq!(total, reference.len() as u64, "{text} {sort:?}");
                for page in 1..=4 {
                    let (got, n) = index.search(&q(page));
                    assert_eq!(n, total);
                    let want: Vec<String> = reference
                        .iter()
                        .skip((page - 1) * 7)
                        .take(7)
                        .map(|(d, _, _)| format!("did:{d}"))
                        .collect();
                    assert_eq!(got, want, "{text:?} {sort:?} page {page}");
                }
            }
        }
    }
}
