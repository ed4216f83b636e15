//! Borrowed JSON for the hot path: objects parsed one level deep into
//! `key -> raw value` maps that point into the input, so a 2 KB PostHog event
//! is read once and written out mostly by copying slices, with no tree of
//! owned values. Nested values are passed through byte for byte.
//!
//! serde_json checks the syntax of a raw value but not everything a full
//! parse would reject: [`check`] adds the rest (nesting depth, lone UTF-16
//! surrogate escapes, numbers out of range), so what the decoder accepts is
//! exactly what `serde_json::Value` would accept.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Visitor};
use serde_json::value::RawValue;

/// An object key, borrowed from the input unless it held escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key<'a>(pub Cow<'a, str>);

impl Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON object, one level deep. Sorted by key; a repeated key keeps its
/// last value, as `JSON.parse` and PostHog do.
pub type Object<'a> = BTreeMap<Key<'a>, &'a RawValue>;

/// Parses an object from text that outlives the result.
pub fn object(text: &str) -> serde_json::Result<Object<'_>> {
    serde_json::from_str(text)
}

/// Parses an object from bytes that outlive the result.
pub fn object_from_slice(bytes: &[u8]) -> serde_json::Result<Object<'_>> {
    serde_json::from_slice(bytes)
}

/// The JSON type of a raw value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

pub fn kind(raw: &RawValue) -> Kind {
    match raw.get().as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// The string a raw value holds, borrowed when it has no escapes.
pub fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if kind(raw) != Kind::String {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

pub fn as_f64(raw: &RawValue) -> Option<f64> {
    (kind(raw) == Kind::Number)
        .then(|| raw.get().parse().ok())
        .flatten()
}

pub fn as_i64(raw: &RawValue) -> Option<i64> {
    (kind(raw) == Kind::Number)
        .then(|| raw.get().parse().ok())
        .flatten()
}

pub fn as_bool(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing a string to a Vec cannot fail");
}

/// Appends an object: `{"k":v,...}` in key order.
pub fn write_object<'a, V>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a Key<'a>, V)>,
    mut write_value: impl FnMut(&mut Vec<u8>, V),
) {
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &key.0);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// The deepest nesting serde_json accepts (its recursion limit is 128); deeper input is refused
/// here too, so the webhook never receives what common parsers reject.
pub const MAX_DEPTH: usize = 127;

/// What [`check`] refuses in syntactically valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("a string holds a lone UTF-16 surrogate escape")]
    LoneSurrogate,
    #[error("a number is out of range")]
    NumberOutOfRange,
}

/// Checks valid JSON text for what serde_json's raw values let through.
/// One pass over the bytes; the input must already be syntactically valid.
pub fn check(json: &[u8]) -> Result<(), CheckError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(CheckError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                i = check_string(json, i + 1)?;
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let end = json[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(json.len(), |n| i + n);
                let number = &json[i..end];
                // Integers of any length and plain decimals parse to finite
                // f64s; only an exponent can push a number out of range.
                if number.iter().any(|b| matches!(b, b'e' | b'E')) {
                    let text =
                        std::str::from_utf8(number).map_err(|_| CheckError::NumberOutOfRange)?;
                    if !text.parse::<f64>().is_ok_and(f64::is_finite) {
                        return Err(CheckError::NumberOutOfRange);
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Scans a string body from `i` (just after the opening quote); returns the
/// index just after the closing quote.
fn check_string(json: &[u8], mut i: usize) -> Result<usize, CheckError> {
    while i < json.len() {
        match json[i] {
            b'"' => return Ok(i + 1),
            b'\\' if json.get(i + 1) == Some(&b'u') => {
                let unit = hex4(json, i + 2);
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        let low = (json.get(i + 6) == Some(&b'\\')
                            && json.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(json, i + 8))
                        .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(CheckError::LoneSurrogate);
                        }
                        i += 12;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(CheckError::LoneSurrogate),
                    _ => i += 6,
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

fn hex4(json: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(json.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_borrow_keys_and_values_and_keep_the_last_duplicate() {
        let text = r#"{"b":{"x":[1, 2]},"a":"s","a":"t","k\"q":null}"#;
        let object = object(text).expect("valid");
        let keys: Vec<&str> = object.keys().map(|k| k.0.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "k\"q"]);
        assert!(matches!(
            object.keys().next().map(|k| &k.0),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(object["b"].get(), r#"{"x":[1, 2]}"#);
        assert_eq!(as_str(object["a"]).as_deref(), Some("t"));
        assert_eq!(kind(object["k\"q"]), Kind::Null);
    }

    #[test]
    fn scalars_read_from_raw_values() {
        let object = object(r#"{"s":"a\nb","n":-12,"f":1.5,"t":true,"o":{}}"#).expect("valid");
        assert_eq!(as_str(object["s"]).as_deref(), Some("a\nb"));
        assert_eq!(as_str(object["n"]), None);
        assert_eq!(as_i64(object["n"]), Some(-12));
        assert_eq!(as_i64(object["f"]), None);
        assert_eq!(as_f64(object["f"]), Some(1.5));
        assert_eq!(as_bool(object["t"]), Some(true));
        assert_eq!(as_bool(object["o"]), None);
        assert_eq!(kind(object["o"]), Kind::Object);
    }

    #[test]
    fn written_objects_parse_back_to_the_same_value() {
        let text = r#"{"z":1,"a\u00e9":"q\"uote","m":[{"x":null}]}"#;
        let object = object(text).expect("valid");
        let mut out = Vec::new();
        write_object(&mut out, &object, |out, raw| {
            out.extend_from_slice(raw.get().as_bytes())
        });
        let back: serde_json::Value = serde_json::from_slice(&out).expect("valid output");
        let original: serde_json::Value = serde_json::from_str(text).expect("valid");
        assert_eq!(back, original);
    }

    #[test]
    fn check_accepts_what_serde_json_accepts() {
        for ok in [
            r#"{"a":[1,-2.5e3,0.1,12345678901234567890123],"s":"\ud83d\ude00 \\ud800 \"[[[\""}"#,
            "[]",
            r#""\u00e9""#,
            &format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)),
        ] {
            assert_eq!(check(ok.as_bytes()), Ok(()), "{ok}");
            serde_json::from_str::<serde_json::Value>(ok).expect("serde_json agrees");
        }
    }

    #[test]
    fn check_refuses_what_serde_json_refuses() {
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        for (bad, error) in [
            (deep.as_str(), CheckError::TooDeep),
            (r#"{"a":"\ud800"}"#, CheckError::LoneSurrogate),
            (r#"{"a":"\udc00x"}"#, CheckError::LoneSurrogate),
            (r#"{"a":"\ud800\u0041"}"#, CheckError::LoneSurrogate),
            (r#"{"a":1e999}"#, CheckError::NumberOutOfRange),
            (r#"[-1E+400]"#, CheckError::NumberOutOfRange),
        ] {
            assert_eq!(check(bad.as_bytes()), Err(error), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "serde_json agrees: {bad}"
            );
            serde_json::from_str::<Box<RawValue>>(bad).expect("raw values let it through");
        }
    }
}
