//! PostHog's "PII Data Hashing" transformation (template-pii-hashing):
//! a value is replaced by `sha256Hex(concat(toString(value), salt))`, the
//! lowercase hex SHA-256 of the UTF-8 text of the value followed by the
//! salt. Only values Hog calls `notEmpty` are hashed: null, "" and empty
//! arrays and objects stay as they are; numbers and booleans (0 and false
//! too) are hashed from their printed form.
//!
//! `toString` is Hog's: a string is itself; a number prints as JavaScript
//! prints it; true/false; arrays and objects in Hog's own literal syntax,
//! `[1, 'a']` and `{'k': 'v'}`, strings inside them single-quoted with
//! `\b \f \r \n \t \0 \v \\ \'` escaped, object keys in JavaScript's
//! property order (integer-like keys first, ascending, then the others as
//! they came).
//!
//! For strings (what these apps are used on: emails, names, ids) every
//! PostHog hashing app agrees, so a hash made here equals the one the app
//! made for the same salt.

use std::borrow::Cow;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::js;
use super::scan::{self, Malformed, Span};

/// Deeper than this (the decoder refuses it anyway), a nested value is
/// printed as its JSON text: still hashed, never sent in the clear.
const MAX_DEPTH: usize = 128;

#[derive(Debug)]
pub(super) struct Hasher {
    salt: SecretString,
}

impl Hasher {
    pub(super) fn new(salt: SecretString) -> Self {
        Hasher { salt }
    }

    pub(super) fn salt_is_empty(&self) -> bool {
        self.salt.expose_secret().is_empty()
    }

    /// Appends the hash of `text` as a JSON string.
    pub(super) fn write_hash(&self, text: &str, out: &mut Vec<u8>) {
        let digest = Sha256::new()
            .chain_update(text.as_bytes())
            .chain_update(self.salt.expose_secret().as_bytes())
            .finalize();
        let mut hex = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        if hex::encode_to_slice(digest, &mut hex).is_ok() {
            out.push(b'"');
            out.extend_from_slice(&hex);
            out.push(b'"');
        }
    }

    /// Appends the hash of the value at `span`, if Hog would hash it;
    /// `false` if it is empty (and nothing was written).
    pub(super) fn write_value_hash(
        &self,
        b: &[u8],
        span: Span,
        out: &mut Vec<u8>,
    ) -> Result<bool, Malformed> {
        match hog_string(b, span)? {
            Some(text) => {
                self.write_hash(&text, out);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// `toString(value)` if `notEmpty(value)`.
pub(super) fn hog_string(b: &[u8], span: Span) -> Result<Option<Cow<'_, str>>, Malformed> {
    let raw = b.get(span.0..span.1).ok_or(Malformed)?;
    Ok(match raw.first() {
        Some(b'"') => {
            let s = scan::string_value(b, span)?;
            (!s.is_empty()).then_some(s)
        }
        Some(b'n') => None,
        Some(b't') => Some(Cow::Borrowed("true")),
        Some(b'f') => Some(Cow::Borrowed("false")),
        Some(b'{' | b'[') => {
            let mut out = String::new();
            let empty = print(b, span, 0, &mut out)?;
            (!empty).then_some(Cow::Owned(out))
        }
        Some(_) => Some(Cow::Owned(js::number_to_string(number(raw)?))),
        None => return Err(Malformed),
    })
}

fn number(raw: &[u8]) -> Result<f64, Malformed> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Malformed)
}

/// Hog's `printHogValue`. Returns whether the container was empty.
fn print(b: &[u8], span: Span, depth: usize, out: &mut String) -> Result<bool, Malformed> {
    let raw = b.get(span.0..span.1).ok_or(Malformed)?;
    if depth > MAX_DEPTH {
        out.push_str(std::str::from_utf8(raw).map_err(|_| Malformed)?);
        return Ok(false);
    }
    match raw.first() {
        Some(b'"') => quote(&scan::string_value(b, span)?, out),
        Some(b'n') => out.push_str("null"),
        Some(b't') => out.push_str("true"),
        Some(b'f') => out.push_str("false"),
        Some(b'[') => {
            let items = scan::elements(b, span.0)?;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(b, *item, depth + 1, out)?;
            }
            out.push(']');
            return Ok(items.is_empty());
        }
        Some(b'{') => {
            let members = js_order(b, span)?;
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quote(key, out);
                out.push_str(": ");
                print(b, *value, depth + 1, out)?;
            }
            out.push('}');
            return Ok(members.is_empty());
        }
        Some(_) => out.push_str(&js::number_to_string(number(raw)?)),
        None => return Err(Malformed),
    }
    Ok(false)
}

/// An object's members as a JavaScript object holds them after
/// `JSON.parse`: a repeated key at its first place with its last value;
/// array-index keys first in numeric order, then the rest in order.
fn js_order(b: &[u8], span: Span) -> Result<Vec<(String, Span)>, Malformed> {
    let mut members: Vec<(String, Span)> = Vec::new();
    for m in scan::Members::new(b, span.0)? {
        let m = m?;
        let key =
            String::from_utf8(scan::key_bytes(b, m.key)?.into_owned()).map_err(|_| Malformed)?;
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = m.value,
            None => members.push((key, m.value)),
        }
    }
    let index = |k: &str| -> Option<u32> {
        // A canonical array index: 0..=2^32-2, no leading zero.
        if k.is_empty() || (k.len() > 1 && k.starts_with('0')) {
            return None;
        }
        k.parse::<u32>().ok().filter(|n| *n != u32::MAX)
    };
    // Stable: the non-index keys keep their order.
    members.sort_by_key(|(k, _)| index(k).map_or((1, 0), |n| (0, n)));
    Ok(members)
}

/// Hog's `escapeString`: single quotes, a few escapes, nothing else changed.
fn quote(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{C}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            '\u{B}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            other => out.push(other),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hog(text: &str) -> Option<String> {
        hog_string(text.as_bytes(), (0, text.len()))
            .expect("valid")
            .map(Cow::into_owned)
    }

    #[test]
    fn values_print_as_hog_to_string_prints_them() {
        for (json, printed) in [
            (r#""alice@example.com""#, Some("alice@example.com")),
            (r#""a\"b""#, Some("a\"b")),
            (r#""""#, None),
            ("null", None),
            ("[]", None),
            ("{}", None),
            ("0", Some("0")),
            ("false", Some("false")),
            ("42", Some("42")),
            ("-1.50", Some("-1.5")),
            ("1e21", Some("1e+21")),
            (
                r#"[1, "a", null, true, []]"#,
                Some("[1, 'a', null, true, []]"),
            ),
            (
                r#"{"b": "it's", "2": 1, "a": {"x": [1.0]}, "10": "\n", "01": 0}"#,
                Some(r"{'2': 1, '10': '\n', 'b': 'it\'s', 'a': {'x': [1]}, '01': 0}"),
            ),
            (r#"{"k": 1, "k": 2}"#, Some("{'k': 2}")),
        ] {
            assert_eq!(hog(json).as_deref(), printed, "{json}");
        }
    }

    #[test]
    fn deep_values_are_still_hashed_never_passed_in_the_clear() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let printed = hog(&deep).expect("not empty");
        assert!(printed.starts_with("[[[") && printed.len() > 300);
    }
}
