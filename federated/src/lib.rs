//! Federated learning for insitu (issue #14, in progress): model updates
//! leave a provider only masked, and only their sum is ever revealed.
//!
//! [`secagg`] is the masking protocol of Bonawitz et al., "Practical Secure
//! Aggregation for Privacy-Preserving Machine Learning" (CCS 2017), in its
//! semi-honest form: fixed-point vectors in the ring Z/2^64, pairwise masks
//! from X25519 key agreement expanded with ChaCha20, self masks, and Shamir
//! shares of both secrets so that the sum is recovered when participants drop
//! out after sharing, while fewer than the threshold reveal nothing.

pub mod fedavg;
pub mod secagg;
