//! Secure aggregation: the masking protocol of Bonawitz et al., "Practical
//! Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017,
//! §4, semi-honest variant), for vectors of fixed-point numbers in Z/2^64.
//!
//! Each participant `u` has an X25519 key pair (`s_u`) and a random self-mask
//! seed `b_u`. Before sending anything it Shamir-shares both secrets among
//! all participants (threshold `t`). Its masked input is
//!
//! ```text
//! y_u = x_u + PRG(b_u) + Σ_{v > u} PRG(s_uv) − Σ_{v < u} PRG(s_uv)   (mod 2^64)
//! ```
//!
//! with `s_uv = SHA-256("insitu-secagg-v1" ‖ round ‖ X25519(s_u, pk_v))` and
//! `PRG` = the ChaCha20 stream of a seed read as little-endian `u64`s. The
//! pairwise masks of two participants who both send cancel in the sum. For
//! the survivors the aggregator removes the self masks from `t` shares of
//! each `b_u`; for participants who dropped after sharing it rebuilds `s_v`
//! from `t` shares and removes the masks it left in the survivors' inputs.
//! A participant reveals, for each peer, either the share of `b` (the peer
//! survived) or the share of `s` (the peer dropped), never both; with fewer
//! than `t` survivors nothing is revealed and the round aborts.
//!
//! Shamir's scheme runs over the prime field GF(2^61 − 1); a 32-byte secret
//! is shared as five 56-bit chunks. Shares travel through the coordinator
//! sealed for their holder ([`Participant::seal`]): ChaCha20-Poly1305
//! (RFC 8439) under `SHA-256("insitu-secagg-v1 share" ‖ round ‖ X25519(c_u, c_v))`
//! of the two participants' transport keys, the owner and holder ids as
//! nonce and associated data — the relay learns nothing from them.

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use x25519_dalek::{PublicKey, StaticSecret};

/// Fractional bits of the fixed-point encoding: `x` is sent as
/// `round(x · 2^FRACTION_BITS)` in two's complement mod 2^64. Sums of up to
/// 2^(63 − 24 − k) values of magnitude below 2^k decode exactly.
pub const FRACTION_BITS: u32 = 24;

/// Why a secure-aggregation step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("participant {id} sent a vector of {found} values; the model has {expected}")]
    WrongLength {
        id: u32,
        expected: usize,
        found: usize,
    },
    #[error("participant {0} is not part of this round")]
    Unknown(u32),
    #[error("participant {0} sent its masked input twice")]
    Duplicate(u32),
    #[error(
        "only {survivors} participants sent masked inputs, fewer than the threshold {threshold}: the round is aborted and nothing is revealed"
    )]
    BelowThreshold { survivors: usize, threshold: usize },
    #[error("{found} shares of participant {owner}'s {what}, {needed} needed")]
    NotEnoughShares {
        owner: u32,
        what: &'static str,
        found: usize,
        needed: usize,
    },
    #[error(
        "participant {0} is listed both as a survivor and as dropped; refusing to reveal both of its secrets"
    )]
    BothSecrets(u32),
    #[error("the threshold must be between 2 and the {n} participants, not {threshold}")]
    BadThreshold { threshold: usize, n: usize },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error(
        "the shares from participant {0} do not open: not sealed for this participant by it, or changed on the way"
    )]
    Sealing(u32),
}

/// `x` in fixed point (see [`FRACTION_BITS`]).
pub fn encode(x: f64) -> u64 {
    ((x * (1u64 << FRACTION_BITS) as f64).round() as i64) as u64
}

/// The number a fixed-point ring element (or a sum of them) stands for.
pub fn decode(v: u64) -> f64 {
    (v as i64) as f64 / (1u64 << FRACTION_BITS) as f64
}

fn random32() -> Result<[u8; 32], Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b)
}

/// Adds `sign ·` the ChaCha20 stream of `seed` (read as little-endian
/// `u64`s) to `acc` (mod 2^64). The stream is drawn a block run at a time,
/// so the cipher's SIMD backend does the work.
fn add_prg(acc: &mut [u64], seed: [u8; 32], negate: bool) {
    const WORDS: usize = 1024;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut buf = [0u8; 8 * WORDS];
    for chunk in acc.chunks_mut(WORDS) {
        let bytes = &mut buf[..8 * chunk.len()];
        rng.fill_bytes(bytes);
        let stream = bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if negate {
            chunk
                .iter_mut()
                .zip(stream)
                .for_each(|(a, m)| *a = a.wrapping_sub(m));
        } else {
            chunk
                .iter_mut()
                .zip(stream)
                .for_each(|(a, m)| *a = a.wrapping_add(m));
        }
    }
}

fn pair_seed(round: &[u8], shared: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"insitu-secagg-v1");
    h.update((round.len() as u64).to_le_bytes());
    h.update(round);
    h.update(shared);
    h.finalize().into()
}

/// Shamir's secret sharing over GF(2^61 − 1).
pub mod shamir {
    use super::Error;

    /// The field's prime, 2^61 − 1.
    pub const P: u64 = (1 << 61) - 1;
    /// Bytes of a secret per field element.
    const CHUNK: usize = 7;
    const CHUNKS: usize = Share::CHUNKS;

    fn mul(a: u64, b: u64) -> u64 {
        let p = a as u128 * b as u128;
        let r = (p & P as u128) as u64 + (p >> 61) as u64;
        if r >= P { r - P } else { r }
    }

    fn add(a: u64, b: u64) -> u64 {
        let r = a + b;
        if r >= P { r - P } else { r }
    }

    fn sub(a: u64, b: u64) -> u64 {
        if a >= b { a - b } else { a + P - b }
    }

    fn pow(mut a: u64, mut e: u64) -> u64 {
        let mut r = 1;
        while e > 0 {
            if e & 1 == 1 {
                r = mul(r, a);
            }
            a = mul(a, a);
            e >>= 1;
        }
        r
    }

    fn inv(a: u64) -> u64 {
        pow(a, P - 2)
    }

    /// One share: the evaluation point `x` (1-based) and the polynomials'
    /// values there, one per chunk of the secret.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Share {
        pub x: u64,
        pub y: [u64; Share::CHUNKS],
    }

    impl Share {
        /// Field elements per secret: 32 bytes in 7-byte chunks.
        pub const CHUNKS: usize = 32usize.div_ceil(CHUNK);
    }

    /// Shares `secret` among `n` holders (points 1..=n) so that any
    /// `threshold` of them recover it and fewer learn nothing; `random`
    /// supplies the polynomials' coefficients.
    pub fn split(
        secret: &[u8; 32],
        threshold: usize,
        n: usize,
        mut random: impl FnMut() -> u64,
    ) -> Vec<Share> {
        let mut coeffs = [[0u64; CHUNKS]; 64];
        let degree = threshold.saturating_sub(1).min(63);
        for (c, chunk) in secret.chunks(CHUNK).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            coeffs[0][c] = u64::from_le_bytes(b);
            for row in coeffs.iter_mut().take(degree + 1).skip(1) {
                // Uniform in the field: rejection of the (rare) values ≥ P.
                row[c] = loop {
                    let r = random() & ((1 << 61) - 1);
                    if r < P {
                        break r;
                    }
                };
            }
        }
        (1..=n as u64)
            .map(|x| {
                let mut y = [0u64; CHUNKS];
                for (c, yc) in y.iter_mut().enumerate() {
                    // Horner.
                    let mut acc = 0;
                    for row in coeffs[..=degree].iter().rev() {
                        acc = add(mul(acc, x), row[c]);
                    }
                    *yc = acc;
                }
                Share { x, y }
            })
            .collect()
    }

    /// The secret `threshold` or more distinct shares of it were made from
    /// (Lagrange interpolation at 0).
    ///
    /// # Errors
    /// [`Error::NotEnoughShares`] with fewer than `threshold` distinct points.
    pub fn combine(
        shares: &[Share],
        threshold: usize,
        owner: u32,
        what: &'static str,
    ) -> Result<[u8; 32], Error> {
        let mut points: Vec<&Share> = Vec::new();
        for s in shares {
            if s.x != 0 && !points.iter().any(|p| p.x == s.x) {
                points.push(s);
            }
        }
        if points.len() < threshold.max(1) {
            return Err(Error::NotEnoughShares {
                owner,
                what,
                found: points.len(),
                needed: threshold,
            });
        }
        let points = &points[..threshold.max(1)];
        let mut secret = [0u8; 32];
        for c in 0..CHUNKS {
            let mut acc = 0;
            for (i, pi) in points.iter().enumerate() {
                let (mut num, mut den) = (1, 1);
                for (j, pj) in points.iter().enumerate() {
                    if i != j {
                        num = mul(num, pj.x);
                        den = mul(den, sub(pj.x, pi.x));
                    }
                }
                acc = add(acc, mul(pi.y[c], mul(num, inv(den))));
            }
            let bytes = acc.to_le_bytes();
            let start = c * CHUNK;
            let end = (start + CHUNK).min(32);
            secret[start..end].copy_from_slice(&bytes[..end - start]);
        }
        Ok(secret)
    }
}

use shamir::Share;

/// What a participant sends before the round: its mask key's public half.
pub type Advertised = PublicKey;

/// Shares for one holder, sealed so that only it can open them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub owner: u32,
    pub holder: u32,
    pub ciphertext: Vec<u8>,
}

/// The two shares participant `owner` made for one holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharesFor {
    pub owner: u32,
    pub holder: u32,
    /// Of the self-mask seed `b`.
    pub seed: Share,
    /// Of the mask key `s`.
    pub key: Share,
}

/// The nonce (owner, holder, zeros) and associated data of a sealed share:
/// each (round key, owner, holder) seals exactly one message.
fn nonce_and_aad(owner: u32, holder: u32) -> ([u8; 12], [u8; 8]) {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&owner.to_le_bytes());
    nonce[4..8].copy_from_slice(&holder.to_le_bytes());
    let mut aad = [0u8; 8];
    aad.copy_from_slice(&nonce[..8]);
    (nonce, aad)
}

fn encode_shares(s: &SharesFor) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    for share in [&s.seed, &s.key] {
        out.extend_from_slice(&share.x.to_le_bytes());
        for y in share.y {
            out.extend_from_slice(&y.to_le_bytes());
        }
    }
    out
}

fn decode_shares(owner: u32, holder: u32, bytes: &[u8]) -> Option<SharesFor> {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let per = 1 + Share::CHUNKS;
    if !bytes.len().is_multiple_of(8) || words.len() != 2 * per {
        return None;
    }
    let share = |w: &[u64]| Share {
        x: w[0],
        y: w[1..].try_into().expect("CHUNKS values"),
    };
    Some(SharesFor {
        owner,
        holder,
        seed: share(&words[..per]),
        key: share(&words[per..]),
    })
}

/// One participant's secrets for one round.
pub struct Participant {
    pub id: u32,
    key: StaticSecret,
    /// Seals and opens shares (not the mask key: a dropped participant's
    /// mask key is revealed, its transport key never is).
    transport: StaticSecret,
    seed: [u8; 32],
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Participant({})", self.id)
    }
}

impl Participant {
    /// Fresh secrets from the OS's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`].
    pub fn new(id: u32) -> Result<Participant, Error> {
        Ok(Participant {
            id,
            key: StaticSecret::from(random32()?),
            transport: StaticSecret::from(random32()?),
            seed: random32()?,
        })
    }

    /// The public half of the mask key, sent to everyone first.
    pub fn advertise(&self) -> Advertised {
        PublicKey::from(&self.key)
    }

    /// The public half of the transport key, sent with [`Participant::advertise`].
    pub fn transport_key(&self) -> PublicKey {
        PublicKey::from(&self.transport)
    }

    fn cipher(&self, round: &[u8], peer: &PublicKey) -> ChaCha20Poly1305 {
        let shared = self.transport.diffie_hellman(peer);
        let mut h = Sha256::new();
        h.update(b"insitu-secagg-v1 share");
        h.update((round.len() as u64).to_le_bytes());
        h.update(round);
        h.update(shared.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        ChaCha20Poly1305::new(&key.into())
    }

    /// Seals `shares` (made by this participant) for their holders, whose
    /// transport keys are in `transport`.
    ///
    /// # Errors
    /// [`Error::Unknown`] for a holder without a transport key.
    pub fn seal(
        &self,
        round: &[u8],
        shares: &[SharesFor],
        transport: &BTreeMap<u32, PublicKey>,
    ) -> Result<Vec<Sealed>, Error> {
        shares
            .iter()
            .map(|s| {
                let peer = transport.get(&s.holder).ok_or(Error::Unknown(s.holder))?;
                let (nonce, aad) = nonce_and_aad(s.owner, s.holder);
                let plain = encode_shares(s);
                let ciphertext = self
                    .cipher(round, peer)
                    .encrypt(
                        &nonce.into(),
                        Payload {
                            msg: &plain,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::Sealing(s.owner))?;
                Ok(Sealed {
                    owner: s.owner,
                    holder: s.holder,
                    ciphertext,
                })
            })
            .collect()
    }

    /// Opens shares sealed for this participant.
    ///
    /// # Errors
    /// [`Error::Unknown`] for an owner without a transport key;
    /// [`Error::Sealing`] for one not sealed for this participant by its
    /// owner, or changed on the way.
    pub fn open(
        &self,
        round: &[u8],
        sealed: &[Sealed],
        transport: &BTreeMap<u32, PublicKey>,
    ) -> Result<Vec<SharesFor>, Error> {
        sealed
            .iter()
            .map(|s| {
                if s.holder != self.id {
                    return Err(Error::Sealing(s.owner));
                }
                let peer = transport.get(&s.owner).ok_or(Error::Unknown(s.owner))?;
                let (nonce, aad) = nonce_and_aad(s.owner, s.holder);
                let plain = self
                    .cipher(round, peer)
                    .decrypt(
                        &nonce.into(),
                        Payload {
                            msg: &s.ciphertext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::Sealing(s.owner))?;
                decode_shares(s.owner, s.holder, &plain).ok_or(Error::Sealing(s.owner))
            })
            .collect()
    }

    /// Shamir shares of both secrets for every participant of `ids` (in
    /// ascending order; holder `ids[i]` gets point `i + 1`), any
    /// `threshold` of which recover them.
    ///
    /// # Errors
    /// [`Error::BadThreshold`]; [`Error::Random`].
    pub fn share(&self, ids: &[u32], threshold: usize) -> Result<Vec<SharesFor>, Error> {
        if threshold < 2 || threshold > ids.len() {
            return Err(Error::BadThreshold {
                threshold,
                n: ids.len(),
            });
        }
        let mut pool = ChaCha20Rng::from_seed(random32()?);
        let mut random = || pool.next_u64();
        let seed = shamir::split(&self.seed, threshold, ids.len(), &mut random);
        let key = shamir::split(&self.key.to_bytes(), threshold, ids.len(), &mut random);
        Ok(ids
            .iter()
            .zip(seed.into_iter().zip(key))
            .map(|(&holder, (seed, key))| SharesFor {
                owner: self.id,
                holder,
                seed,
                key,
            })
            .collect())
    }

    /// `input` masked for `round`: self mask plus the pairwise masks with
    /// every other participant of `keys`.
    pub fn mask(&self, round: &[u8], input: &[u64], keys: &BTreeMap<u32, Advertised>) -> Vec<u64> {
        let mut y = input.to_vec();
        add_prg(&mut y, self.seed, false);
        for (&v, pk) in keys {
            if v == self.id {
                continue;
            }
            let shared = self.key.diffie_hellman(pk);
            add_prg(&mut y, pair_seed(round, shared.as_bytes()), v < self.id);
        }
        y
    }
}

/// What one holder reveals to unmask the sum: for each survivor the share of
/// its self-mask seed, for each dropped participant the share of its mask key.
///
/// # Errors
/// [`Error::BothSecrets`] when a participant is in both lists;
/// [`Error::BelowThreshold`] when fewer than `threshold` survived.
pub fn reveal<'a>(
    held: &'a [SharesFor],
    survivors: &BTreeSet<u32>,
    dropped: &BTreeSet<u32>,
    threshold: usize,
) -> Result<Vec<(u32, Revealed<'a>)>, Error> {
    if let Some(both) = survivors.intersection(dropped).next() {
        return Err(Error::BothSecrets(*both));
    }
    if survivors.len() < threshold {
        return Err(Error::BelowThreshold {
            survivors: survivors.len(),
            threshold,
        });
    }
    Ok(held
        .iter()
        .filter_map(|s| {
            if survivors.contains(&s.owner) {
                Some((s.owner, Revealed::Seed(&s.seed)))
            } else if dropped.contains(&s.owner) {
                Some((s.owner, Revealed::Key(&s.key)))
            } else {
                None
            }
        })
        .collect())
}

/// One revealed share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revealed<'a> {
    Seed(&'a Share),
    Key(&'a Share),
}

/// The aggregator of one round: sees only masked vectors, then the shares it
/// needs to remove the masks from their sum.
#[derive(Debug)]
pub struct Aggregator {
    round: Vec<u8>,
    len: usize,
    threshold: usize,
    keys: BTreeMap<u32, Advertised>,
    masked: BTreeMap<u32, Vec<u64>>,
}

impl Aggregator {
    /// A round over vectors of `len` values among the participants of `keys`.
    pub fn new(
        round: &[u8],
        len: usize,
        threshold: usize,
        keys: BTreeMap<u32, Advertised>,
    ) -> Aggregator {
        Aggregator {
            round: round.to_vec(),
            len,
            threshold,
            keys,
            masked: BTreeMap::new(),
        }
    }

    /// Accepts participant `id`'s masked input.
    ///
    /// # Errors
    /// [`Error::Unknown`], [`Error::Duplicate`], [`Error::WrongLength`]; the
    /// input is not kept.
    pub fn add(&mut self, id: u32, masked: Vec<u64>) -> Result<(), Error> {
        if !self.keys.contains_key(&id) {
            return Err(Error::Unknown(id));
        }
        if masked.len() != self.len {
            return Err(Error::WrongLength {
                id,
                expected: self.len,
                found: masked.len(),
            });
        }
        if self.masked.contains_key(&id) {
            return Err(Error::Duplicate(id));
        }
        self.masked.insert(id, masked);
        Ok(())
    }

    /// Who sent a masked input.
    pub fn survivors(&self) -> BTreeSet<u32> {
        self.masked.keys().copied().collect()
    }

    /// Who shared keys but sent no masked input.
    pub fn dropped(&self) -> BTreeSet<u32> {
        self.keys
            .keys()
            .filter(|id| !self.masked.contains_key(id))
            .copied()
            .collect()
    }

    /// The sum of the survivors' inputs, from the revealed shares
    /// (owner → shares).
    ///
    /// # Errors
    /// [`Error::BelowThreshold`]; [`Error::NotEnoughShares`].
    pub fn unmask(
        &self,
        seed_shares: &BTreeMap<u32, Vec<Share>>,
        key_shares: &BTreeMap<u32, Vec<Share>>,
    ) -> Result<Vec<u64>, Error> {
        let survivors = self.survivors();
        if survivors.len() < self.threshold {
            return Err(Error::BelowThreshold {
                survivors: survivors.len(),
                threshold: self.threshold,
            });
        }
        let mut sum = vec![0u64; self.len];
        for y in self.masked.values() {
            for (s, v) in sum.iter_mut().zip(y) {
                *s = s.wrapping_add(*v);
            }
        }
        let none = Vec::new();
        for &u in &survivors {
            let shares = seed_shares.get(&u).unwrap_or(&none);
            let seed = shamir::combine(shares, self.threshold, u, "self-mask seed")?;
            add_prg(&mut sum, seed, true);
        }
        for v in self.dropped() {
            let shares = key_shares.get(&v).unwrap_or(&none);
            let key = StaticSecret::from(shamir::combine(shares, self.threshold, v, "mask key")?);
            for &u in &survivors {
                let shared = key.diffie_hellman(&self.keys[&u]);
                // u added +PRG when v > u, −PRG when v < u: take it out.
                add_prg(&mut sum, pair_seed(&self.round, shared.as_bytes()), v > u);
            }
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated round: the inputs of those who stayed, the unmasked sum
    /// (or why there is none), and what the aggregator received.
    struct Outcome {
        kept: Vec<Vec<u64>>,
        sum: Result<Vec<u64>, Error>,
        masked: Vec<Vec<u64>>,
    }

    fn round(n: u32, threshold: usize, len: usize, drop: &[u32]) -> Outcome {
        let ids: Vec<u32> = (1..=n).collect();
        let parts: Vec<Participant> = ids.iter().map(|&i| Participant::new(i).unwrap()).collect();
        let keys: BTreeMap<u32, Advertised> = parts.iter().map(|p| (p.id, p.advertise())).collect();
        // Every participant's shares, by holder.
        let mut held: BTreeMap<u32, Vec<SharesFor>> = BTreeMap::new();
        for p in &parts {
            for s in p.share(&ids, threshold).unwrap() {
                held.entry(s.holder).or_default().push(s);
            }
        }
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let inputs: Vec<Vec<u64>> = parts
            .iter()
            .map(|_| {
                (0..len)
                    .map(|_| encode((rng.next_u64() % 2000) as f64 / 1000.0 - 1.0))
                    .collect()
            })
            .collect();
        let mut agg = Aggregator::new(b"job-1/round-0", len, threshold, keys.clone());
        let mut masked = Vec::new();
        for (p, x) in parts.iter().zip(&inputs) {
            if drop.contains(&p.id) {
                continue;
            }
            let y = p.mask(b"job-1/round-0", x, &keys);
            masked.push(y.clone());
            agg.add(p.id, y).unwrap();
        }
        let (survivors, dropped) = (agg.survivors(), agg.dropped());
        let (mut seeds, mut mask_keys) = (
            BTreeMap::<u32, Vec<Share>>::new(),
            BTreeMap::<u32, Vec<Share>>::new(),
        );
        let mut refused = None;
        for holder in &survivors {
            match reveal(&held[holder], &survivors, &dropped, threshold) {
                Ok(revealed) => {
                    for (owner, r) in revealed {
                        match r {
                            Revealed::Seed(s) => seeds.entry(owner).or_default().push(s.clone()),
                            Revealed::Key(s) => mask_keys.entry(owner).or_default().push(s.clone()),
                        }
                    }
                }
                Err(e) => refused = Some(e),
            }
        }
        let sum = match refused {
            Some(e) => Err(e),
            None => agg.unmask(&seeds, &mask_keys),
        };
        let kept: Vec<Vec<u64>> = parts
            .iter()
            .zip(&inputs)
            .filter(|(p, _)| !drop.contains(&p.id))
            .map(|(_, x)| x.clone())
            .collect();
        Outcome { kept, sum, masked }
    }

    fn plain_sum(inputs: &[Vec<u64>]) -> Vec<u64> {
        let mut s = vec![0u64; inputs[0].len()];
        for x in inputs {
            for (a, b) in s.iter_mut().zip(x) {
                *a = a.wrapping_add(*b);
            }
        }
        s
    }

    #[test]
    fn the_sum_is_exact_with_and_without_dropouts() {
        for drop in [&[][..], &[2], &[1, 4]] {
            let Outcome { kept, sum, masked } = round(5, 3, 1000, drop);
            assert_eq!(sum.unwrap(), plain_sum(&kept), "dropped {drop:?}");
            for (y, x) in masked.iter().zip(&kept) {
                assert_ne!(y, x);
            }
        }
    }

    #[test]
    fn below_the_threshold_nothing_is_revealed() {
        let sum = round(5, 4, 10, &[1, 2]).sum;
        assert_eq!(
            sum.unwrap_err().to_string(),
            "only 3 participants sent masked inputs, fewer than the threshold 4: the round is aborted and nothing is revealed"
        );
    }

    /// Each masked value is uniform in Z/2^64: a chi-square test on the top
    /// 4 bits of 5 × 20,000 masked values of tiny, highly structured inputs.
    #[test]
    fn masked_vectors_look_uniform() {
        let masked = round(5, 3, 20_000, &[]).masked;
        let mut counts = [0u64; 16];
        for y in masked.iter().flatten() {
            counts[(y >> 60) as usize] += 1;
        }
        let n: u64 = counts.iter().sum();
        let e = n as f64 / 16.0;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
        // 15 degrees of freedom: p = 0.001 at 37.7.
        assert!(chi2 < 37.7, "chi2 {chi2}: {counts:?}");
    }

    #[test]
    fn malformed_inputs_are_refused_with_reasons() {
        let p = Participant::new(1).unwrap();
        let keys = BTreeMap::from([
            (1, p.advertise()),
            (2, Participant::new(2).unwrap().advertise()),
        ]);
        let mut agg = Aggregator::new(b"r", 3, 2, keys);
        assert_eq!(
            agg.add(1, vec![1, 2]).unwrap_err().to_string(),
            "participant 1 sent a vector of 2 values; the model has 3"
        );
        assert_eq!(agg.add(9, vec![0; 3]).unwrap_err(), Error::Unknown(9));
        agg.add(1, vec![0; 3]).unwrap();
        assert_eq!(agg.add(1, vec![0; 3]).unwrap_err(), Error::Duplicate(1));
        assert!(matches!(
            p.share(&[1, 2], 3),
            Err(Error::BadThreshold { .. })
        ));
        let held = p.share(&[1, 2], 2).unwrap();
        let both = BTreeSet::from([2]);
        assert_eq!(
            reveal(&held, &both, &both, 1).unwrap_err(),
            Error::BothSecrets(2)
        );
    }

    #[test]
    fn sealed_shares_open_only_for_their_holder_and_unchanged() {
        let ids = [1u32, 2, 3];
        let parts: Vec<Participant> = ids.iter().map(|&i| Participant::new(i).unwrap()).collect();
        let transport: BTreeMap<u32, PublicKey> =
            parts.iter().map(|p| (p.id, p.transport_key())).collect();
        let shares = parts[0].share(&ids, 2).unwrap();
        let sealed = parts[0].seal(b"r1", &shares, &transport).unwrap();
        let for2: Vec<Sealed> = sealed.iter().filter(|s| s.holder == 2).cloned().collect();
        let opened = parts[1].open(b"r1", &for2, &transport).unwrap();
        assert_eq!(
            opened,
            shares
                .iter()
                .filter(|s| s.holder == 2)
                .cloned()
                .collect::<Vec<_>>()
        );
        // Not for participant 3; another round; a flipped bit: refused.
        assert_eq!(
            parts[2].open(b"r1", &for2, &transport).unwrap_err(),
            Error::Sealing(1)
        );
        assert_eq!(
            parts[1].open(b"r2", &for2, &transport).unwrap_err(),
            Error::Sealing(1)
        );
        let mut changed = for2.clone();
        changed[0].ciphertext[5] ^= 1;
        assert_eq!(
            parts[1]
                .open(b"r1", &changed, &transport)
                .unwrap_err()
                .to_string(),
            "the shares from participant 1 do not open: not sealed for this participant by it, or changed on the way"
        );
        // The ciphertext does not hold the shares in the clear.
        let plain = encode_shares(&shares[1]);
        assert!(
            !for2[0]
                .ciphertext
                .windows(16)
                .any(|w| plain.windows(16).any(|p| p == w))
        );
    }

    #[test]
    fn shamir_recovers_from_any_threshold_subset_only() {
        let secret = [0xa5u8; 32];
        let mut r = ChaCha20Rng::from_seed([1; 32]);
        let shares = shamir::split(&secret, 3, 5, || r.next_u64());
        for subset in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let pick: Vec<Share> = subset.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(shamir::combine(&pick, 3, 1, "s").unwrap(), secret);
        }
        let two = [shares[0].clone(), shares[1].clone()];
        assert!(shamir::combine(&two, 3, 1, "s").is_err());
        // Two shares with a forged third point give something else.
        let mut forged = shares[2].clone();
        forged.y[0] ^= 1;
        assert_ne!(
            shamir::combine(&[shares[0].clone(), shares[1].clone(), forged], 3, 1, "s").unwrap(),
            secret
        );
    }

    #[test]
    fn fixed_point_round_trips() {
        for x in [0.0, 1.5, -2.25, 1e-6, -123456.789] {
            assert!((decode(encode(x)) - x).abs() < 1e-7, "{x}");
        }
        let sum = [0.5, -1.25, 2.0]
            .iter()
            .fold(0u64, |a, x| a.wrapping_add(encode(*x)));
        assert_eq!(decode(sum), 1.25);
    }
}
