//! JWT grants and access tokens as strangers send them: verification must
//! refuse garbage without panicking.
#![no_main]
use std::sync::OnceLock;

static TOKENS: OnceLock<insitu_gateway::auth::Tokens> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = insitu_gateway::auth::verify_grant(text, 1_800_000_000);
    let tokens = TOKENS.get_or_init(|| insitu_gateway::auth::Tokens::new(b"fuzz".to_vec()));
    let _ = tokens.check(text, insitu_gateway::auth::AUD_EXECUTE, 1_800_000_000);
});
