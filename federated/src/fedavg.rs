//! Weighted federated averaging (McMahan et al., "Communication-Efficient
//! Learning of Deep Networks from Decentralized Data", AISTATS 2017) on top
//! of [`crate::secagg`]: each participant contributes `w · θ` and `w` (its
//! sample count) in one fixed-point vector, so the aggregator learns only
//! `Σ w·θ` and `Σ w`, and the new global model is their quotient.

use crate::secagg::{decode, encode};

/// Why an aggregate cannot be averaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the aggregate has no weight slot (an empty vector)")]
    Empty,
    #[error("the aggregate's total weight is {0}; no participant contributed samples")]
    NoWeight(String),
}

/// The vector a participant masks: `weight · params`, then `weight`, in
/// fixed point (length `params.len() + 1`).
pub fn contribution(params: &[f64], weight: u64) -> Vec<u64> {
    let w = weight as f64;
    params
        .iter()
        .map(|p| encode(w * p))
        .chain(std::iter::once(encode(w)))
        .collect()
}

/// The weighted average from the (unmasked) sum of contributions.
///
/// # Errors
/// [`Error::Empty`]; [`Error::NoWeight`] when the total weight is not positive.
pub fn average(sum: &[u64]) -> Result<Vec<f64>, Error> {
    let (&last, rest) = sum.split_last().ok_or(Error::Empty)?;
    let total = decode(last);
    if total <= 0.0 {
        return Err(Error::NoWeight(total.to_string()));
    }
    Ok(rest.iter().map(|v| decode(*v) / total).collect())
}

/// Plain FedAvg in floating point, for comparison: Σ wᵢθᵢ / Σ wᵢ.
pub fn plain(updates: &[(Vec<f64>, u64)]) -> Vec<f64> {
    let len = updates.first().map_or(0, |(p, _)| p.len());
    let total: f64 = updates.iter().map(|(_, w)| *w as f64).sum();
    (0..len)
        .map(|i| updates.iter().map(|(p, w)| p[i] * *w as f64).sum::<f64>() / total)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::{Advertised, Aggregator, Participant, Revealed, reveal};
    use std::collections::{BTreeMap, BTreeSet};

    /// Secure aggregation of three weighted updates equals plain FedAvg
    /// within the fixed-point error.
    #[test]
    fn secure_fedavg_matches_plain_fedavg() {
        let updates: Vec<(Vec<f64>, u64)> = vec![
            (vec![0.5, -1.25, 3.0, 1e-3], 120),
            (vec![0.25, -1.0, 2.5, 2e-3], 300),
            (vec![1.0, -2.0, 4.0, 0.0], 80),
        ];
        let ids = [1u32, 2, 3];
        let parts: Vec<Participant> = ids.iter().map(|&i| Participant::new(i).unwrap()).collect();
        let keys: BTreeMap<u32, Advertised> = parts.iter().map(|p| (p.id, p.advertise())).collect();
        let mut held = BTreeMap::<u32, Vec<_>>::new();
        for p in &parts {
            for s in p.share(&ids, 2).unwrap() {
                held.entry(s.holder).or_default().push(s);
            }
        }
        let mut agg = Aggregator::new(b"fedavg", 5, 2, keys.clone());
        for (p, (params, w)) in parts.iter().zip(&updates) {
            agg.add(p.id, p.mask(b"fedavg", &contribution(params, *w), &keys))
                .unwrap();
        }
        let (survivors, dropped) = (agg.survivors(), BTreeSet::new());
        let mut seeds = BTreeMap::<u32, Vec<_>>::new();
        for h in &survivors {
            for (owner, r) in reveal(&held[h], &survivors, &dropped, 2).unwrap() {
                if let Revealed::Seed(s) = r {
                    seeds.entry(owner).or_default().push(s.clone());
                }
            }
        }
        let secure = average(&agg.unmask(&seeds, &BTreeMap::new()).unwrap()).unwrap();
        for (a, b) in secure.iter().zip(plain(&updates)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(average(&[]).unwrap_err(), Error::Empty);
        assert!(matches!(average(&[0]), Err(Error::NoWeight(_))));
    }
}
