//! Federated learning for insitu: model updates leave a provider only
//! masked, and only their sum is ever revealed.
//!
//! [`secagg`] is the masking protocol of Bonawitz et al., "Practical Secure
//! Aggregation for Privacy-Preserving Machine Learning" (CCS 2017), in its
//! semi-honest form: fixed-point vectors in the ring Z/2^64, pairwise masks
//! from X25519 key agreement expanded with ChaCha20, self masks, and Shamir
//! shares of both secrets so that the sum is recovered when participants drop
//! out after sharing, while fewer than the threshold reveal nothing.

//!
//! [`participant`] is a provider's side of one round (advertise, share, mask,
//! reveal); [`coordinator`] drives a job's rounds across providers through
//! the [`coordinator::Peer`] seam, with the aggregator that only ever sees
//! masked vectors; [`wire`] is what they send each other; [`fedavg`] turns
//! the unmasked sum into the next global model.

pub mod coordinator;
pub mod fedavg;
pub mod participant;
pub mod secagg;
pub mod wire;
