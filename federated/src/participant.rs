//! A participant's side of one secure-aggregation round, as a provider runs
//! it for a coordinator (the steps of Bonawitz et al. 2017, §4):
//!
//! 1. [`RoundSecrets::new`] — fresh mask and transport keys; their public
//!    halves are advertised (round 0, *AdvertiseKeys*).
//! 2. [`RoundSecrets::share`] — given the roster of everyone who advertised
//!    (U1), Shamir shares of both secrets, sealed for their holders (round 1,
//!    *ShareKeys*).
//! 3. [`RoundSecrets::prepare`] — given the sealed shares addressed to it
//!    (whose owners are U2), opens and keeps them and computes its mask over
//!    U2 (while the training runs); [`RoundSecrets::finish`] adds the update
//!    (round 2, *MaskedInputCollection*). The unmasked update is the caller's
//!    to delete; only the masked vector leaves.
//! 4. [`RoundSecrets::reveal`] — given who sent masked inputs (U3) and who
//!    did not (U2 \ U3), the share of each survivor's self-mask seed or each
//!    dropped participant's mask key, never both (round 4, *Unmasking*).
//!    The secrets are consumed.
//!
//! Each step may happen once and in order; anything else is refused with a
//! reason, and nothing is revealed for a roster smaller than the threshold.

use crate::fedavg;
use crate::secagg::{self, Advertised, Error, Participant, Revealed, Sealed, SharesFor};
use crate::wire::{Keys, RevealedShare};
use std::collections::{BTreeMap, BTreeSet};

/// Where a round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Advertised,
    Shared,
    Prepared,
    Masked,
    Revealed,
}

/// One participant's secrets and progress in one round.
pub struct RoundSecrets {
    me: Participant,
    tag: Vec<u8>,
    threshold: usize,
    parameters: usize,
    step: Step,
    /// U1: mask keys and transport keys of everyone who advertised.
    roster: BTreeMap<u32, Keys>,
    /// The shares others made for this participant (after masking).
    held: Vec<SharesFor>,
    /// U2: the participants this one masked over.
    masked_over: BTreeSet<u32>,
    /// The mask over U2, once prepared.
    mask: Vec<u64>,
}

/// Why a participant refuses a step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Protocol(#[from] Error),
    #[error("step out of order: {0}")]
    Order(&'static str),
    #[error("the roster {0}")]
    Roster(String),
    #[error(
        "the update has {found} parameters; the plan's model has {expected} (the training stage wrote a model of another shape)"
    )]
    UpdateLength { found: usize, expected: usize },
    #[error("the update is not finite: parameter {0} is {1}")]
    NotFinite(usize, f64),
    #[error("the update's weight is 0: the participant trained on no samples")]
    NoWeight,
}

impl std::fmt::Debug for RoundSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets or the shares held.
        f.debug_struct("RoundSecrets")
            .field("id", &self.me.id)
            .field("step", &self.step)
            .field("roster", &self.roster.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RoundSecrets {
    /// Fresh secrets for participant `id` in the round tagged `tag`
    /// (unique per job, round and attempt), whose models have `parameters`
    /// values and which needs `threshold` survivors; returns them and the
    /// public keys to advertise.
    ///
    /// # Errors
    /// [`Error::Random`]; [`Error::BadThreshold`] for a threshold below 2.
    pub fn new(
        id: u32,
        tag: &[u8],
        threshold: usize,
        parameters: usize,
    ) -> Result<(RoundSecrets, Keys), StepError> {
        if threshold < 2 {
            return Err(Error::BadThreshold { threshold, n: 0 }.into());
        }
        let me = Participant::new(id)?;
        let keys = Keys {
            mask: me.advertise(),
            transport: me.transport_key(),
        };
        Ok((
            RoundSecrets {
                me,
                tag: tag.to_vec(),
                threshold,
                parameters,
                step: Step::Advertised,
                roster: BTreeMap::new(),
                held: Vec::new(),
                masked_over: BTreeSet::new(),
                mask: Vec::new(),
            },
            keys,
        ))
    }

    /// This participant's id.
    pub fn id(&self) -> u32 {
        self.me.id
    }

    /// Shares for everyone in `roster` (U1), sealed for each holder.
    ///
    /// # Errors
    /// [`StepError::Order`] unless keys were just advertised;
    /// [`StepError::Roster`] when the roster leaves this participant out or
    /// lists other keys for it; [`Error::BadThreshold`] when the roster is
    /// smaller than the threshold.
    pub fn share(&mut self, roster: BTreeMap<u32, Keys>) -> Result<Vec<Sealed>, StepError> {
        if self.step != Step::Advertised {
            return Err(StepError::Order("shares are made once, after advertising"));
        }
        match roster.get(&self.me.id) {
            None => {
                return Err(StepError::Roster(format!(
                    "leaves out this participant ({})",
                    self.me.id
                )));
            }
            Some(k) if k.mask != self.me.advertise() || k.transport != self.me.transport_key() => {
                return Err(StepError::Roster(format!(
                    "lists other keys for this participant ({})",
                    self.me.id
                )));
            }
            Some(_) => {}
        }
        let ids: Vec<u32> = roster.keys().copied().collect();
        let shares = self.me.share(&ids, self.threshold)?;
        let transport = roster.iter().map(|(&i, k)| (i, k.transport)).collect();
        let sealed = self.me.seal(&self.tag, &shares, &transport)?;
        self.roster = roster;
        self.step = Step::Shared;
        Ok(sealed)
    }

    /// Opens the shares addressed to this participant (their owners are U2,
    /// which must include it) and computes its mask over U2 — the costly
    /// part, done while the training still runs. Again with the same owners
    /// it does nothing.
    ///
    /// # Errors
    /// [`StepError::Order`] unless it shared (or prepared for the same
    /// owners); [`Error::Unknown`] / [`Error::Sealing`] for shares from
    /// outside U1 or that do not open; [`StepError::Roster`];
    /// [`Error::BelowThreshold`] when U2 is too small.
    pub fn prepare(&mut self, sealed: &[Sealed]) -> Result<(), StepError> {
        let owners: BTreeSet<u32> = sealed.iter().map(|s| s.owner).collect();
        match self.step {
            Step::Shared => {}
            Step::Prepared if owners == self.masked_over => return Ok(()),
            _ => {
                return Err(StepError::Order(
                    "an update is masked once, after sharing, over one set of participants",
                ));
            }
        }
        let transport: BTreeMap<u32, _> =
            self.roster.iter().map(|(&i, k)| (i, k.transport)).collect();
        let held = self.me.open(&self.tag, sealed, &transport)?;
        if owners.len() != held.len() {
            return Err(StepError::Roster("sent two shares of one owner".into()));
        }
        if !owners.contains(&self.me.id) {
            return Err(StepError::Roster(format!(
                "sent no share of this participant's own ({}); it is not among those who shared",
                self.me.id
            )));
        }
        if owners.len() < self.threshold {
            return Err(Error::BelowThreshold {
                survivors: owners.len(),
                threshold: self.threshold,
            }
            .into());
        }
        let keys: BTreeMap<u32, Advertised> =
            owners.iter().map(|i| (*i, self.roster[i].mask)).collect();
        self.mask = self
            .me
            .mask(&self.tag, &vec![0; self.parameters + 1], &keys);
        self.held = held;
        self.masked_over = owners;
        self.step = Step::Prepared;
        Ok(())
    }

    /// The update `params` of `weight` samples (FedAvg's contribution),
    /// masked with the prepared mask. Once.
    ///
    /// # Errors
    /// [`StepError::Order`] unless prepared; [`StepError::UpdateLength`],
    /// [`StepError::NotFinite`], [`StepError::NoWeight`] for an update that
    /// cannot be aggregated (the participant stays prepared).
    pub fn finish(&mut self, params: &[f64], weight: u64) -> Result<Vec<u64>, StepError> {
        if self.step != Step::Prepared {
            return Err(StepError::Order("an update is masked once, after sharing"));
        }
        if params.len() != self.parameters {
            return Err(StepError::UpdateLength {
                found: params.len(),
                expected: self.parameters,
            });
        }
        if let Some((i, p)) = params.iter().enumerate().find(|(_, p)| !p.is_finite()) {
            return Err(StepError::NotFinite(i, *p));
        }
        if weight == 0 {
            return Err(StepError::NoWeight);
        }
        let mut masked = std::mem::take(&mut self.mask);
        for (m, x) in masked.iter_mut().zip(fedavg::contribution(params, weight)) {
            *m = m.wrapping_add(x);
        }
        self.step = Step::Masked;
        Ok(masked)
    }

    /// [`RoundSecrets::prepare`] then [`RoundSecrets::finish`].
    ///
    /// # Errors
    /// As theirs.
    pub fn mask(
        &mut self,
        sealed: &[Sealed],
        params: &[f64],
        weight: u64,
    ) -> Result<Vec<u64>, StepError> {
        self.prepare(sealed)?;
        self.finish(params, weight)
    }

    /// What this participant reveals for the survivors (U3) and the dropped
    /// (U2 \ U3). Once: the shares held are forgotten after, so no second
    /// call can reveal the other secret of anyone. A refused call reveals
    /// nothing and forgets nothing.
    ///
    /// # Errors
    /// [`StepError::Order`] before masking or after revealing;
    /// [`StepError::Roster`] when the two sets are not a partition of U2;
    /// [`Error::BelowThreshold`].
    pub fn reveal(
        &mut self,
        survivors: &BTreeSet<u32>,
        dropped: &BTreeSet<u32>,
    ) -> Result<Vec<RevealedShare>, StepError> {
        if self.step != Step::Masked {
            return Err(StepError::Order("shares are revealed once, after masking"));
        }
        let all: BTreeSet<u32> = survivors.union(dropped).copied().collect();
        if all != self.masked_over || survivors.len() + dropped.len() != all.len() {
            return Err(StepError::Roster(format!(
                "to unmask must split the {} participants that shared ({:?}) into survivors and dropped",
                self.masked_over.len(),
                self.masked_over
            )));
        }
        let shares = secagg::reveal(&self.held, survivors, dropped, self.threshold)?
            .into_iter()
            .map(|(owner, r)| match r {
                Revealed::Seed(s) => RevealedShare::seed(owner, s),
                Revealed::Key(s) => RevealedShare::key(owner, s),
            })
            .collect();
        self.held.clear();
        self.step = Step::Revealed;
        Ok(shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three participants through share and mask; returns them.
    fn masked_round() -> Vec<RoundSecrets> {
        let mut parts = Vec::new();
        let mut roster = BTreeMap::new();
        for id in 1..=3 {
            let (s, keys) = RoundSecrets::new(id, b"job/0/a", 2, 2).unwrap();
            roster.insert(id, keys);
            parts.push(s);
        }
        let mut inbox: BTreeMap<u32, Vec<Sealed>> = BTreeMap::new();
        for p in &mut parts {
            for s in p.share(roster.clone()).unwrap() {
                inbox.entry(s.holder).or_default().push(s);
            }
        }
        for p in &mut parts {
            let id = p.id();
            p.mask(&inbox[&id], &[1.0, 2.0], 3).unwrap();
        }
        parts
    }

    #[test]
    fn steps_happen_once_and_in_order() {
        let (mut s, keys) = RoundSecrets::new(1, b"t", 2, 2).unwrap();
        assert_eq!(
            s.mask(&[], &[0.0, 0.0], 1).unwrap_err().to_string(),
            "step out of order: an update is masked once, after sharing, over one set of participants"
        );
        let e = s
            .share(BTreeMap::from([(2, keys)]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the roster leaves out this participant (1)");
        let other = RoundSecrets::new(1, b"t", 2, 2).unwrap().1;
        let e = s
            .share(BTreeMap::from([(1, other), (2, keys)]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the roster lists other keys for this participant (1)");
    }

    #[test]
    fn updates_of_the_wrong_shape_are_refused() {
        let (mut a, ka) = RoundSecrets::new(1, b"t", 2, 2).unwrap();
        let (mut b, kb) = RoundSecrets::new(2, b"t", 2, 2).unwrap();
        let roster = BTreeMap::from([(1, ka), (2, kb)]);
        let mine: Vec<Sealed> = a
            .share(roster.clone())
            .unwrap()
            .into_iter()
            .chain(b.share(roster).unwrap())
            .filter(|s| s.holder == 1)
            .collect();
        assert_eq!(
            a.finish(&[1.0, 2.0], 5).unwrap_err().to_string(),
            "step out of order: an update is masked once, after sharing"
        );
        a.prepare(&mine).unwrap();
        // Again with the same owners (a retried request): nothing changes.
        a.prepare(&mine).unwrap();
        let e = a.finish(&[1.0, 2.0, 3.0], 5).unwrap_err().to_string();
        assert_eq!(
            e,
            "the update has 3 parameters; the plan's model has 2 (the training stage wrote a model of another shape)"
        );
        let e = a.finish(&[1.0, f64::NAN], 5).unwrap_err().to_string();
        assert_eq!(e, "the update is not finite: parameter 1 is NaN");
        assert_eq!(a.finish(&[1.0, 2.0], 0).unwrap_err(), StepError::NoWeight);
        // A refused update leaves it prepared: a good one still goes out, once.
        assert_eq!(a.finish(&[1.0, 2.0], 5).unwrap().len(), 3);
        assert!(a.finish(&[1.0, 2.0], 5).is_err());
    }

    #[test]
    fn shares_are_revealed_once_and_a_refused_call_reveals_nothing() {
        let mut parts = masked_round();
        let p = &mut parts[0];
        let (survivors, dropped) = (BTreeSet::from([1, 2]), BTreeSet::from([3]));
        // Not a partition of those who shared: refused, nothing lost.
        let e = p
            .reveal(&BTreeSet::from([1, 2]), &BTreeSet::new())
            .unwrap_err();
        assert!(matches!(e, StepError::Roster(_)), "{e}");
        let shares = p.reveal(&survivors, &dropped).unwrap();
        let kinds: Vec<(u32, crate::wire::Secret)> =
            shares.iter().map(|s| (s.owner, s.secret)).collect();
        use crate::wire::Secret::{Key, Seed};
        assert_eq!(kinds, vec![(1, Seed), (2, Seed), (3, Key)]);
        // A second call, with the sets swapped, would reveal 3's seed: refused.
        let e = p
            .reveal(&BTreeSet::from([1, 3]), &BTreeSet::from([2]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "step out of order: shares are revealed once, after masking"
        );
    }
}
