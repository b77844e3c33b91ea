//! `insitu-bench secagg`: the cost of secure aggregation against a plain
//! sum, per round, in one process (no network): every participant shares its
//! secrets, seals and opens the shares, and masks its vector; the aggregator
//! sums and unmasks. Sizes: 3, 5 and 10 participants × 10^3, 10^5 and 10^6
//! parameters, threshold ⌈2n/3⌉, no dropouts, and one dropout.

use insitu_federated::secagg::{Advertised, Aggregator, Participant, Revealed, SharesFor, reveal};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

struct Timing {
    /// Per participant: share + seal + open + mask.
    participant: Duration,
    /// Aggregator: add every vector and unmask.
    aggregator: Duration,
}

fn round(n: u32, len: usize, drop: bool) -> anyhow::Result<Timing> {
    let ids: Vec<u32> = (1..=n).collect();
    let threshold = (2 * n as usize).div_ceil(3).max(2);
    let parts: Vec<Participant> = ids
        .iter()
        .map(|&i| Participant::new(i))
        .collect::<Result<_, _>>()?;
    let keys: BTreeMap<u32, Advertised> = parts.iter().map(|p| (p.id, p.advertise())).collect();
    let transport: BTreeMap<u32, _> = parts.iter().map(|p| (p.id, p.transport_key())).collect();
    let input: Vec<u64> = (0..len as u64).collect();
    let tag = b"bench";
    let t = Instant::now();
    let mut sealed = Vec::new();
    for p in &parts {
        let shares = p.share(&ids, threshold)?;
        sealed.extend(p.seal(tag, &shares, &transport)?);
    }
    let mut held: BTreeMap<u32, Vec<SharesFor>> = BTreeMap::new();
    for p in &parts {
        let mine: Vec<_> = sealed
            .iter()
            .filter(|s| s.holder == p.id)
            .cloned()
            .collect();
        held.insert(p.id, p.open(tag, &mine, &transport)?);
    }
    let mut masked = Vec::new();
    for p in parts.iter().skip(usize::from(drop)) {
        masked.push((p.id, p.mask(tag, &input, &keys)));
    }
    let participant = t.elapsed() / n;
    let t = Instant::now();
    let mut agg = Aggregator::new(tag, len, threshold, keys);
    for (id, y) in masked {
        agg.add(id, y)?;
    }
    let (survivors, dropped): (BTreeSet<u32>, BTreeSet<u32>) = (agg.survivors(), agg.dropped());
    let (mut seeds, mut mask_keys) = (
        BTreeMap::<u32, Vec<_>>::new(),
        BTreeMap::<u32, Vec<_>>::new(),
    );
    for h in &survivors {
        for (owner, r) in reveal(&held[h], &survivors, &dropped, threshold)? {
            match r {
                Revealed::Seed(s) => seeds.entry(owner).or_default().push(s.clone()),
                Revealed::Key(s) => mask_keys.entry(owner).or_default().push(s.clone()),
            }
        }
    }
    let sum = agg.unmask(&seeds, &mask_keys)?;
    let aggregator = t.elapsed();
    let survivors = n as u64 - u64::from(drop);
    anyhow::ensure!(
        sum.iter()
            .enumerate()
            .all(|(i, s)| *s == i as u64 * survivors),
        "wrong sum"
    );
    Ok(Timing {
        participant,
        aggregator,
    })
}

/// A plain sum of `n` vectors of `len` values, for comparison.
fn plain(n: u32, len: usize) -> Duration {
    let vectors: Vec<Vec<u64>> = (0..n).map(|_| (0..len as u64).collect()).collect();
    let t = Instant::now();
    let mut sum = vec![0u64; len];
    for v in &vectors {
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
    }
    std::hint::black_box(&sum);
    t.elapsed()
}

pub fn secagg() -> anyhow::Result<()> {
    println!("== secagg: secure aggregation per round, one process ==");
    println!("participants  parameters  dropout  per participant  aggregator  plain sum");
    for n in [3u32, 5, 10] {
        for len in [1_000usize, 100_000, 1_000_000] {
            for drop in [false, true] {
                let t = round(n, len, drop)?;
                println!(
                    "{n:>12}  {len:>10}  {:>7}  {:>12.2} ms  {:>8.2} ms  {:>7.3} ms",
                    if drop { "1" } else { "0" },
                    t.participant.as_secs_f64() * 1e3,
                    t.aggregator.as_secs_f64() * 1e3,
                    plain(n, len).as_secs_f64() * 1e3
                );
            }
        }
    }
    println!();
    Ok(())
}
