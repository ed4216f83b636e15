//! Borrowed JSON for the hot path: objects parsed one level deep into
//! `key -> raw value` maps that point into the input, so a 2 KB PostHog event
//! is read once and written out mostly by copying slices, with no tree of
//! owned values. Nested values are passed through byte for byte.
//!
//! serde_json checks the syntax of a raw value but not everything a full
//! parse would reject: [`check`] adds the rest (nesting depth, lone UTF-16
//! surrogate escapes, numbers out of range), so what the decoder accepts is
//! exactly what `serde_json::Value` would accept.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// An object key, borrowed from the input unless it held escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key<'a>(pub Cow<'a, str>);

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

/// Object fields in their original order. A repeated key keeps its first
/// position and its last value, as `JSON.parse` does. Lookups are linear over
/// key hashes: PostHog objects have tens of fields, where this beats a tree.
#[derive(Debug, Clone)]
pub struct Fields<'a, V> {
    entries: Vec<(u64, Key<'a>, V)>,
}

impl<V> Default for Fields<'_, V> {
    fn default() -> Self {
        Fields {
            entries: Vec::new(),
        }
    }
}

/// FNV-1a: short keys, no allocation, good enough to skip most comparisons.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<'a, V> Fields<'a, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, key: &str) -> Option<usize> {
        let hash = key_hash(key);
        self.entries
            .iter()
            .position(|(h, k, _)| *h == hash && k.0 == key)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].2)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key`, in place if it is already there.
    pub fn insert(&mut self, key: Key<'a>, value: V) {
        let hash = key_hash(&key.0);
        match self
            .entries
            .iter_mut()
            .find(|(h, k, _)| *h == hash && *k == key)
        {
            Some(entry) => entry.2 = value,
            None => self.entries.push((hash, key, value)),
        }
    }

    /// Appends without looking for `key`: call [`Fields::dedup`] after a run of these.
    fn push(&mut self, key: Key<'a>, value: V) {
        self.entries.push((key_hash(&key.0), key, value));
    }

    /// Restores "one entry per key" after [`Fields::push`]es, as inserting
    /// each in turn would (first position, last value), in O(n log n): the
    /// message's author chooses how many keys an object has, and merging
    /// by repeated inserts took 0.6 s for one repeat among 40,000 keys.
    fn dedup(&mut self) {
        let mut hashes: Vec<u64> = self.entries.iter().map(|(h, _, _)| *h).collect();
        hashes.sort_unstable();
        if hashes.windows(2).all(|w| w[0] != w[1]) {
            return;
        }
        // A repeat (rare): group equal keys by sorting on the keys themselves,
        // not on their hashes, which an author can make collide at will.
        // Each group's first entry takes its last entry's value; the rest go.
        let key = |i: usize| self.entries[i].1 .0.as_ref();
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)).then(a.cmp(&b)));
        let mut value_from: Vec<usize> = (0..self.entries.len()).collect();
        let mut dropped = vec![false; self.entries.len()];
        for group in order.chunk_by(|&a, &b| key(a) == key(b)) {
            let (first, rest) = group.split_first().expect("chunks are not empty");
            if let Some(&last) = rest.last() {
                value_from[*first] = last;
            }
            for &later in rest {
                dropped[later] = true;
            }
        }
        let mut values: Vec<Option<V>> = Vec::with_capacity(self.entries.len());
        let mut kept = Vec::with_capacity(self.entries.len());
        for (i, (hash, key, value)) in std::mem::take(&mut self.entries).into_iter().enumerate() {
            values.push(Some(value));
            if !dropped[i] {
                kept.push((hash, key));
            }
        }
        let kept_at = (0..dropped.len()).filter(|&i| !dropped[i]);
        self.entries = kept
            .into_iter()
            .zip(kept_at)
            .map(|((hash, key), i)| {
                let value = values[value_from[i]]
                    .take()
                    .expect("each value is taken once");
                (hash, key, value)
            })
            .collect();
    }

    /// The same fields with their values mapped.
    pub fn map_values<W>(self, mut f: impl FnMut(V) -> W) -> Fields<'a, W> {
        Fields {
            entries: self
                .entries
                .into_iter()
                .map(|(h, k, v)| (h, k, f(v)))
                .collect(),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.position(key).map(|i| self.entries.remove(i).2)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key<'a>, &V)> {
        self.entries.iter().map(|(_, k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, _, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a, V> Extend<(Key<'a>, V)> for Fields<'a, V> {
    /// As inserting each in turn, without comparing every key with every other.
    fn extend<I: IntoIterator<Item = (Key<'a>, V)>>(&mut self, iter: I) {
        for (key, value) in iter {
            self.push(key, value);
        }
        self.dedup();
    }
}

impl<'a, V> IntoIterator for Fields<'a, V> {
    type Item = (Key<'a>, V);
    type IntoIter = std::iter::Map<
        std::vec::IntoIter<(u64, Key<'a>, V)>,
        fn((u64, Key<'a>, V)) -> (Key<'a>, V),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter().map(|(_, k, v)| (k, v))
    }
}

impl<'a, V> FromIterator<(Key<'a>, V)> for Fields<'a, V> {
    fn from_iter<I: IntoIterator<Item = (Key<'a>, V)>>(iter: I) -> Self {
        let mut fields = Fields::new();
        fields.extend(iter);
        fields
    }
}

impl<V> std::ops::Index<&str> for Fields<'_, V> {
    type Output = V;
    /// The value of `key`; panics if it is missing (for tests and checked keys).
    fn index(&self, key: &str) -> &V {
        self.get(key).expect("the key is present")
    }
}

/// A JSON object, one level deep, its values left as raw JSON.
pub type Object<'a> = Fields<'a, &'a RawValue>;

/// Reads a JSON object's fields into `rest`, except the one named `special`
/// (if any), which is deserialized as `F` in the same pass.
fn read_fields<'de, A: MapAccess<'de>, F: Deserialize<'de>>(
    mut map: A,
    special: Option<&str>,
) -> Result<WithField<'de, F>, A::Error> {
    // Sized for a typical PostHog object up front: growing from empty cost
    // about five reallocations per object (callgrind, issue #15).
    let mut object = WithField {
        field: None,
        rest: Fields {
            entries: Vec::with_capacity(32),
        },
    };
    while let Some(key) = map.next_key::<Key<'de>>()? {
        if Some(key.0.as_ref()) == special {
            object.field = Some(map.next_value()?);
        } else {
            object.rest.push(key, map.next_value()?);
        }
    }
    object.rest.dedup();
    Ok(object)
}

/// Deserializes a JSON object with [`read_fields`].
struct FieldsVisitor<F> {
    special: Option<&'static str>,
    field: std::marker::PhantomData<F>,
}

impl<'de, F: Deserialize<'de>> Visitor<'de> for FieldsVisitor<F> {
    type Value = WithField<'de, F>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_fields(map, self.special)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = FieldsVisitor::<IgnoredAny> {
            special: None,
            field: std::marker::PhantomData,
        };
        Ok(deserializer.deserialize_map(visitor)?.rest)
    }
}

/// An object with one field, named by [`Special::NAME`], read as `F` in the
/// same pass as the others (which stay raw).
#[derive(Debug)]
pub struct WithField<'a, F> {
    pub field: Option<F>,
    pub rest: Object<'a>,
}

/// The field a [`WithField`] reads specially.
pub trait Special {
    const NAME: &'static str;
}

impl<'de, F: Deserialize<'de> + Special> Deserialize<'de> for WithField<'de, F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor::<F> {
            special: Some(F::NAME),
            field: std::marker::PhantomData,
        })
    }
}

/// A captured event (the `data` document): its `properties` parsed in the
/// same pass, since they are most of the event; the other fields raw.
pub type EventDoc<'a> = WithField<'a, Properties<'a>>;

/// A message envelope: its `data` field, when it is a string, is read and
/// unescaped in the same pass (it holds a whole JSON document).
pub type Envelope<'a> = WithField<'a, Data>;

/// Visits that a value of any other type ends in `$value`, skipping it.
macro_rules! any_other_type {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// What an event's `properties` field holds.
#[derive(Debug)]
pub enum Properties<'a> {
    Object(Object<'a>),
    Null,
    /// Another type: not a valid event.
    Other,
}

impl Special for Properties<'_> {
    const NAME: &'static str = "properties";
}

impl<'a> Properties<'a> {
    /// From a raw value (a field that was not parsed in the first pass).
    pub fn from_raw(raw: &'a RawValue) -> Self {
        match kind(raw) {
            Kind::Object => {
                Properties::Object(object(raw.get()).expect("a raw object parses as one"))
            }
            Kind::Null => Properties::Null,
            _ => Properties::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Properties<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropertiesVisitor;
        impl<'de> Visitor<'de> for PropertiesVisitor {
            type Value = Properties<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(Properties::Object(
                    read_fields::<_, IgnoredAny>(map, None)?.rest,
                ))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Properties::Null)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Properties::Other)
            }
            any_other_type!(Properties::Other);
        }
        deserializer.deserialize_any(PropertiesVisitor)
    }
}

/// The `data` field: `Ok(text)` if it is a string, `Err(())` for another type.
#[derive(Debug)]
pub struct Data(pub Result<String, ()>);

impl Special for Data {
    const NAME: &'static str = "data";
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Data(Ok(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Data(Ok(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Data(Err(())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Data(Err(())))
            }
            any_other_type!(Data(Err(())));
        }
        deserializer.deserialize_any(DataVisitor)
    }
}

/// Parses an object from text that outlives the result.
pub fn object(text: &str) -> serde_json::Result<Object<'_>> {
    serde_json::from_str(text)
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

/// Appends a key as a JSON string. A borrowed key had no escapes in valid
/// JSON, so its bytes go out as they came in.
pub fn write_key(out: &mut Vec<u8>, key: &Key<'_>) {
    match &key.0 {
        Cow::Borrowed(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(text) => write_str(out, text),
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
        write_key(out, key);
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
    check_at(json, 0)
}

/// [`check`] for a value found `depth` levels deep in a document.
pub fn check_at(json: &[u8], depth: usize) -> Result<(), CheckError> {
    let mut depth = depth;
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
        // Only quotes and escapes matter inside a string; skip to the next.
        i = match memchr::memchr2(b'"', b'\\', &json[i..]) {
            Some(n) => i + n,
            None => return Ok(json.len()),
        };
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
        // First position, last value: what JSON.parse gives.
        let keys: Vec<&str> = object.iter().map(|(k, _)| k.0.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "k\"q"]);
        let cows: Vec<bool> = object
            .iter()
            .map(|(k, _)| matches!(k.0, Cow::Borrowed(_)))
            .collect();
        assert_eq!(
            cows,
            [true, true, false],
            "keys with escapes are unescaped copies"
        );
        assert_eq!(object["b"].get(), r#"{"x":[1, 2]}"#);
        assert_eq!(as_str(object["a"]).as_deref(), Some("t"));
        assert_eq!(kind(object["k\"q"]), Kind::Null);
    }

    #[test]
    fn fields_insert_in_place_remove_and_dedup_many_keys() {
        let mut text = String::from("{");
        for i in 0..200 {
            text.push_str(&format!("\"k{}\":{i},", i % 150));
        }
        text.push_str("\"last\":true}");
        let mut object = object(&text).expect("valid");
        assert_eq!(object.len(), 151);
        assert_eq!(
            object["k10"].get(),
            "160",
            "the last value of a repeated key"
        );
        assert_eq!(object.iter().next().map(|(k, _)| k.0.as_ref()), Some("k0"));
        object.insert(Key(Cow::Borrowed("k0")), object["last"]);
        assert_eq!(object.iter().next().map(|(_, v)| v.get()), Some("true"));
        assert_eq!(object.remove("k1").map(RawValue::get), Some("151"));
        assert!(!object.contains_key("k1") && object.len() == 150);
    }

    #[test]
    fn extend_and_dedup_give_what_inserting_each_in_turn_gives() {
        // Keys drawn with many repeats, in a scrambled order.
        let keys: Vec<String> = (0..5_000u64)
            .map(|i| format!("k{}", i.wrapping_mul(2_654_435_761) % 700))
            .collect();
        let mut one_by_one: Fields<'_, usize> = Fields::new();
        one_by_one.insert(Key(Cow::Borrowed("k3")), usize::MAX);
        let mut extended = one_by_one.clone();
        for (i, key) in keys.iter().enumerate() {
            one_by_one.insert(Key(Cow::Borrowed(key)), i);
        }
        extended.extend(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (Key(Cow::Borrowed(k.as_str())), i)),
        );
        let pairs = |f: &Fields<'_, usize>| -> Vec<(String, usize)> {
            f.iter().map(|(k, v)| (k.0.to_string(), *v)).collect()
        };
        assert_eq!(pairs(&extended), pairs(&one_by_one));
        assert_eq!(extended.len(), 700);
    }

    #[test]
    fn envelopes_read_data_in_the_same_pass() {
        let text = r#"{"ip":"1.2.3.4","data":"{\"event\":\"e\",\"properties\":{\"a\":1}}","n":1}"#;
        let envelope: Envelope = serde_json::from_str(text).expect("valid");
        let data = envelope.field.expect("present").0.expect("a string");
        assert_eq!(data, r#"{"event":"e","properties":{"a":1}}"#);
        assert_eq!(envelope.rest.len(), 2);
        let event: EventDoc = serde_json::from_str(&data).expect("valid");
        assert!(matches!(&event.field, Some(Properties::Object(p)) if p["a"].get() == "1"));
        assert_eq!(event.rest["event"].get(), r#""e""#);
        for (data, expected) in [
            ("5", Err(())),
            ("[1,[2]]", Err(())),
            ("{\"a\":{}}", Err(())),
        ] {
            let text = format!(r#"{{"data":{data}}}"#);
            let envelope: Envelope = serde_json::from_str(&text).expect("valid");
            assert_eq!(envelope.field.map(|Data(d)| d), Some(expected), "{data}");
        }
        for (properties, null, other) in [
            ("null", true, false),
            ("[1]", false, true),
            ("\"s\"", false, true),
        ] {
            let text = format!(r#"{{"properties":{properties}}}"#);
            let event: EventDoc = serde_json::from_str(&text).expect("valid");
            assert_eq!(matches!(event.field, Some(Properties::Null)), null);
            assert_eq!(matches!(event.field, Some(Properties::Other)), other);
        }
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
        write_object(&mut out, object.iter(), |out, raw| {
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
