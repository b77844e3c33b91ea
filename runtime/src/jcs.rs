//! The JSON Canonicalization Scheme (JCS, [RFC 8785]): the bytes receipts
//! are hashed and signed over, so a verifier in any language that implements
//! the RFC reproduces them exactly.
//!
//! - Objects: members sorted by their names' UTF-16 code units (§3.2.3),
//!   no whitespace anywhere.
//! - Strings: only `"`, `\` and the C0 controls are escaped, the controls
//!   with their short forms (`\b \t \n \f \r`) or `\u00xx` in lowercase hex
//!   (§3.2.2.2); everything else is written as UTF-8.
//! - Numbers: as ECMAScript's `Number.prototype.toString` writes the IEEE 754
//!   double (§3.2.2.3): shortest round-trip digits, plain notation for
//!   exponents −7 … 20, else `d.ddde±x`; `-0` is `0`. Integers beyond 2^53
//!   therefore lose precision, as in every JCS implementation: receipts carry
//!   only integers below it.
//!
//! [RFC 8785]: https://www.rfc-editor.org/rfc/rfc8785

use serde_json::Value;
use std::fmt::Write;

/// The canonical form of `v`.
pub fn canonicalize(v: &Value) -> String {
    let mut out = String::new();
    write_value(v, &mut out);
    out
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            // Exact integers print as they are while a double holds them.
            (Some(u), _) if u <= 1 << 53 => {
                let _ = write!(out, "{u}");
            }
            (_, Some(i)) if i >= -(1 << 53) => {
                let _ = write!(out, "{i}");
            }
            _ => write_number(n.as_f64().unwrap_or(f64::NAN), out),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_by(|a, b| key_order(a.0, b.0));
            out.push('{');
            for (i, (k, x)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(x, out);
            }
            out.push('}');
        }
    }
}

/// Member names in the order of their UTF-16 code units. UTF-8 bytes sort
/// the same way unless a name holds a character from U+E000 up (lead bytes
/// 0xEE and above), where surrogate pairs sort before the rest of the BMP.
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.bytes().chain(b.bytes()).all(|x| x < 0xEE) {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Runs without anything to escape are copied as they are.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// ECMAScript's Number::toString(x) for finite `x` (JSON has no others).
fn write_number(x: f64, out: &mut String) {
    if x == 0.0 || !x.is_finite() {
        // -0 is 0; NaN and infinities cannot come from JSON text.
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` writes the shortest digits that round-trip: "d.ddde±x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Two shortest candidates equally close to x: ECMAScript takes the even
    // one, Rust the upper. A tie means x's exact expansion is the lower
    // candidate followed by a single 5 (767 significant digits hold any double).
    let exact = format!("{:.780e}", x.abs());
    let exact: String = exact
        .split_once('e')
        .map_or("", |(m, _)| m)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let k = digits.len();
    if exact.len() > k
        && exact.as_bytes()[k] == b'5'
        && exact.as_bytes()[k + 1..].iter().all(|&b| b == b'0')
        && (exact.as_bytes()[k - 1] - b'0').is_multiple_of(2)
        && exact[..k] != digits
    {
        digits = exact[..k].trim_end_matches('0').to_string();
    }
    let k = digits.len() as i32;
    // x = 0.digits × 10^n
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(bits: u64) -> String {
        let mut s = String::new();
        write_number(f64::from_bits(bits), &mut s);
        s
    }

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
    #[test]
    fn numbers_match_the_rfc_appendix() {
        for (bits, text) in [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ] {
            assert_eq!(num(bits), text, "{bits:#x}");
        }
    }

    /// RFC 8785 §3.2.2 and §3.2.3 examples.
    #[test]
    fn strings_and_member_order_match_the_rfc() {
        let v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals": [null, true, false]}"#,
        )
        .unwrap();
        assert_eq!(
            canonicalize(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Sorted by UTF-16 code units: U+10000 (D800 DC00) sorts before U+FB33.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let order = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ];
        let text = canonicalize(&v);
        let mut at = 0;
        for name in order {
            at += text[at..]
                .find(name)
                .unwrap_or_else(|| panic!("{name} out of order in {text}"));
        }
        assert_eq!(
            canonicalize(
                &json!({"b": [1, {"z": 1, "a": 2}], "a": "x", "big": 18446744073709551615u64})
            ),
            r#"{"a":"x","b":[1,{"a":2,"z":1}],"big":18446744073709552000}"#
        );
    }
}
