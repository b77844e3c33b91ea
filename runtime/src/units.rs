//! Sizes (`512MiB`, `1GiB`, `4096`) and durations (`250ms`, `30s`, `5m`, `1h`)
//! as users type them on the command line and in configuration.

use crate::Error;
use std::time::Duration;

const SIZE_HINT: &str = "use a whole number with an optional unit B, KiB, MiB or GiB (e.g. 512MiB)";
const DURATION_HINT: &str = "use a whole number with a unit ms, s, m or h (e.g. 30s)";

/// Parses a byte size: a whole number with an optional binary unit
/// (`B`, `KiB`, `MiB`, `GiB`; `K`/`M`/`G` accepted as the same binary units).
///
/// # Errors
/// [`Error::Parse`] when the number or the unit is not understood, or it overflows.
pub fn parse_size(input: &str) -> Result<u64, Error> {
    let err = || Error::Parse {
        what: "size",
        input: input.to_string(),
        hint: SIZE_HINT,
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m` or `h`.
///
/// # Errors
/// [`Error::Parse`] when the number or the unit is missing or not understood.
pub fn parse_duration(input: &str) -> Result<Duration, Error> {
    let err = || Error::Parse {
        what: "duration",
        input: input.to_string(),
        hint: DURATION_HINT,
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

/// Formats a byte count with the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, div) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(div) {
            return format!("{}{unit}", ms / div);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        for bad in ["", "MiB", "1.5GiB", "12XB", "-1", "99999999999999999999GiB"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid size `{bad}`")), "{e}");
        }
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["30", "s", "1.5s", "10d"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("use a whole number with a unit"), "{e}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
