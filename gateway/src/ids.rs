//! Identifiers are one value however a client spells them.
//!
//! Nevermined's clients strip or keep `0x` prefixes as they please (the
//! JavaScript SDK sends agreement ids without `0x` in paths but signs them
//! with it), DIDs come as `did:nv:…` or as the bare 32-byte hex, and hex
//! digits come in any case. Every identifier taken from a path, a body or a
//! token's claims goes through one of these functions before it is compared
//! or looked up; stored identifiers are already in this form.

/// An agreement id as `0x` + lowercase hex.
pub fn agreement(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    if lower.starts_with("0x") {
        lower
    } else {
        format!("0x{lower}")
    }
}

/// A DID as `did:nv:` + lowercase hex: `did:nv:HEX`, `0xHEX` and `HEX`
/// (64 digits, any case) are the same DID. Anything else is returned
/// lowercased, for the lookup to refuse with its own message.
pub fn did(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    if lower.starts_with("did:") {
        return lower;
    }
    let hex = lower.strip_prefix("0x").unwrap_or(&lower);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("did:nv:{hex}")
    } else {
        lower
    }
}

/// An execution id (`nv-` + 32 lowercase hex digits) in any case, with or
/// without a `0x` a client put in front.
pub fn execution(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    match lower.strip_prefix("0x") {
        Some(rest) if rest.starts_with("nv-") => rest.to_string(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spellings_are_one_value() {
        let a = "0x043751b8ebf1e4f04ad00e24899144321dc90b0221dfeef030b593e42603e76e";
        for s in [
            a,
            &a[2..],
            &a.to_ascii_uppercase().replacen("0X", "0x", 1),
            &a[2..].to_ascii_uppercase(),
        ] {
            assert_eq!(super::agreement(s), a, "{s}");
        }
        let d = "did:nv:e7ec19c7feea0acf6d3a270127ce5fcfce110963a4892c8a41c698d6784971fd";
        let hex = &d[7..];
        for s in [
            d.to_string(),
            hex.to_string(),
            format!("0x{hex}"),
            hex.to_ascii_uppercase(),
            d.to_ascii_uppercase(),
        ] {
            assert_eq!(super::did(&s), d, "{s}");
        }
        assert_eq!(super::did("did:nv:short"), "did:nv:short");
        assert_eq!(super::did("nonsense"), "nonsense");
        let e = "nv-0123456789abcdef0123456789abcdef";
        for s in [e.to_string(), e.to_ascii_uppercase(), format!("0x{e}")] {
            assert_eq!(super::execution(&s), e, "{s}");
        }
    }
}
