//! A scanner over the event JSON the connector itself wrote: it finds the
//! members of an object and the extent of each value without building
//! anything, so untouched values are copied byte for byte. Strings are
//! skipped with `memchr`, containers by counting brackets outside strings
//! (no recursion: any depth is fine).
//!
//! The input is trusted to be valid JSON (the decoder wrote it); the scanner
//! still never panics or reads out of bounds on anything else, it answers
//! [`Malformed`] where it cannot make sense of the bytes.

use std::borrow::Cow;

/// A 256-bit summary of a set of key names, from each name's length and
/// last two bytes: a key whose bit is clear is in no set, which rejects
/// nearly every key of an event with one test.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KeySet([u64; 4]);

impl KeySet {
    #[inline]
    fn bit(name: &[u8]) -> usize {
        let n = name.len();
        let last = name.last().copied().unwrap_or(0) as usize;
        let before = if n >= 2 { name[n - 2] as usize } else { 0 };
        (n.wrapping_mul(31) ^ last.wrapping_mul(7) ^ before) & 255
    }

    pub(super) fn insert(&mut self, name: &[u8]) {
        let bit = Self::bit(name);
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    /// Whether `name` may be in the set.
    #[inline]
    pub(super) fn may_hold(&self, name: &[u8]) -> bool {
        let bit = Self::bit(name);
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    pub(super) fn union(self, other: KeySet) -> KeySet {
        let mut out = self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        out
    }
}

/// A byte range `[start, end)` of the input.
pub(super) type Span = (usize, usize);

/// The bytes are not the JSON the scanner expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A word with the high bit set in the lowest byte of `x` that is zero
/// (higher bytes may be flagged wrongly; only the lowest flag is used).
#[inline]
fn zero_byte(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// `i` is at an opening quote; returns the index just after the closing
/// one, and whether the string holds an escape. Eight bytes at a time:
/// most of an event's bytes are in strings.
#[inline]
pub(super) fn string_end(b: &[u8], i: usize) -> Result<(usize, bool), Malformed> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        let stop = match b.get(j..j + 8) {
            Some(chunk) => {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let x = u64::from_le_bytes(word);
                let found = zero_byte(x ^ (ONES * u64::from(b'"')))
                    | zero_byte(x ^ (ONES * u64::from(b'\\')));
                if found == 0 {
                    j += 8;
                    continue;
                }
                j + (found.trailing_zeros() / 8) as usize
            }
            None => {
                j + memchr::memchr2(b'"', b'\\', b.get(j..).ok_or(Malformed)?).ok_or(Malformed)?
            }
        };
        if b[stop] == b'"' {
            return Ok((stop + 1, escaped));
        }
        // A backslash: it and the byte it escapes (for \uXXXX the four
        // hex digits hold no quote or backslash).
        escaped = true;
        j = stop + 2;
    }
}

/// `i` is at an opening quote; returns the index just after the closing one.
pub(super) fn skip_string(b: &[u8], i: usize) -> Result<usize, Malformed> {
    string_end(b, i).map(|(end, _)| end)
}

/// `i` is at the first byte of a value; returns the index just after it.
#[inline]
pub(crate) fn skip_value(b: &[u8], i: usize) -> Result<usize, Malformed> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => skip_container(b, i),
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            if j == i {
                Err(Malformed)
            } else {
                Ok(j)
            }
        }
        None => Err(Malformed),
    }
}

fn skip_container(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = skip_string(b, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1).ok_or(Malformed)?;
                if depth == 0 {
                    return Ok(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    Err(Malformed)
}

/// One object member: the key with its quotes, and the value.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    pub key: Span,
    pub value: Span,
}

/// A key found by [`Members::next_key`]: the value starts at `value`; its
/// end is for the caller to find ([`Members::pass`]) or to tell
/// ([`Members::resume`]) when it read the value itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    pub key: Span,
    pub escaped: bool,
    pub value: usize,
}

/// The members of the object whose `{` is at `start`, in order (repeated
/// keys included: the caller decides, as `JSON.parse` does, that the last
/// value counts).
pub(super) struct Members<'a> {
    b: &'a [u8],
    i: usize,
    first: bool,
    done: bool,
}

impl<'a> Members<'a> {
    pub(super) fn new(b: &'a [u8], start: usize) -> Result<Self, Malformed> {
        if b.get(start) != Some(&b'{') {
            return Err(Malformed);
        }
        Ok(Members {
            b,
            i: start + 1,
            first: true,
            done: false,
        })
    }

    /// The next key, or `None` after the closing `}`.
    #[inline]
    pub(super) fn next_key(&mut self) -> Result<Option<Key>, Malformed> {
        if self.done {
            return Ok(None);
        }
        let b = self.b;
        let mut j = skip_ws(b, self.i);
        match b.get(j) {
            Some(b'}') => {
                self.i = j + 1;
                self.done = true;
                return Ok(None);
            }
            Some(b',') if !self.first => j = skip_ws(b, j + 1),
            Some(_) if self.first => {}
            _ => return Err(Malformed),
        }
        if b.get(j) != Some(&b'"') {
            return Err(Malformed);
        }
        let (key_end, escaped) = string_end(b, j)?;
        let colon = skip_ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return Err(Malformed);
        }
        let value = skip_ws(b, colon + 1);
        if value >= b.len() {
            return Err(Malformed);
        }
        self.first = false;
        self.i = value;
        Ok(Some(Key {
            key: (j, key_end),
            escaped,
            value,
        }))
    }

    /// Skips the value of the last key; returns its end.
    #[inline]
    pub(super) fn pass(&mut self, value: usize) -> Result<usize, Malformed> {
        let end = skip_value(self.b, value)?;
        self.i = end;
        Ok(end)
    }

    /// The caller read the last key's value up to `end`.
    pub(super) fn resume(&mut self, end: usize) {
        self.i = end;
    }

    /// Where the object ends (just after its `}`), once iteration is over.
    pub(super) fn end(&self) -> usize {
        self.i
    }
}

impl Iterator for Members<'_> {
    type Item = Result<Member, Malformed>;
    fn next(&mut self) -> Option<Self::Item> {
        let step = self.next_key().and_then(|k| match k {
            Some(k) => self.pass(k.value).map(|end| {
                Some(Member {
                    key: k.key,
                    value: (k.value, end),
                })
            }),
            None => Ok(None),
        });
        match step {
            Ok(Some(member)) => Some(Ok(member)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The elements of the array whose `[` is at `start`.
pub(super) fn elements(b: &[u8], start: usize) -> Result<Vec<Span>, Malformed> {
    if b.get(start) != Some(&b'[') {
        return Err(Malformed);
    }
    let mut out = Vec::new();
    let mut j = skip_ws(b, start + 1);
    if b.get(j) == Some(&b']') {
        return Ok(out);
    }
    loop {
        let end = skip_value(b, j)?;
        out.push((j, end));
        j = skip_ws(b, end);
        match b.get(j) {
            Some(b',') => j = skip_ws(b, j + 1),
            Some(b']') => return Ok(out),
            _ => return Err(Malformed),
        }
    }
}

/// A key's name (the span includes the quotes), unescaped only if it
/// holds an escape. Not checked for UTF-8: keys are compared as bytes.
#[inline]
pub(super) fn key_name(b: &[u8], key: Span, escaped: bool) -> Result<Cow<'_, [u8]>, Malformed> {
    let inner = b.get(key.0 + 1..key.1.saturating_sub(1)).ok_or(Malformed)?;
    if !escaped {
        return Ok(Cow::Borrowed(inner));
    }
    let text: String = serde_json::from_slice(&b[key.0..key.1]).map_err(|_| Malformed)?;
    Ok(Cow::Owned(text.into_bytes()))
}

/// [`key_name`] for a key not known to be free of escapes.
pub(super) fn key_bytes(b: &[u8], key: Span) -> Result<Cow<'_, [u8]>, Malformed> {
    let inner = b.get(key.0 + 1..key.1.saturating_sub(1)).ok_or(Malformed)?;
    key_name(b, key, memchr::memchr(b'\\', inner).is_some())
}

/// A JSON string value's text, unescaped only if it holds an escape.
pub(super) fn string_value(b: &[u8], value: Span) -> Result<Cow<'_, str>, Malformed> {
    let raw = b.get(value.0..value.1).ok_or(Malformed)?;
    if raw.len() < 2 || raw[0] != b'"' {
        return Err(Malformed);
    }
    let inner = &raw[1..raw.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner)
            .map(Cow::Borrowed)
            .map_err(|_| Malformed);
    }
    serde_json::from_slice::<String>(raw)
        .map(Cow::Owned)
        .map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Vec<(String, String)> {
        let b = text.as_bytes();
        Members::new(b, 0)
            .expect("an object")
            .map(|m| {
                let m = m.expect("valid");
                let key = key_bytes(b, m.key).expect("a key");
                (
                    String::from_utf8(key.into_owned()).expect("utf-8"),
                    text[m.value.0..m.value.1].to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn members_and_values_are_found_with_any_spacing_and_escapes() {
        let text = r#"{ "a" : 1 , "b\"c":"x}\"]" ,"n":{"d":[1,{"e":"]"}]},"t":true,"z":null }"#;
        assert_eq!(
            members(text),
            [
                ("a", "1"),
                ("b\"c", r#""x}\"]""#),
                ("n", r#"{"d":[1,{"e":"]"}]}"#),
                ("t", "true"),
                ("z", "null"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(members("{}").is_empty());
        assert_eq!(
            elements(b"[1, \"a,b\" ,[2]]", 0).expect("valid"),
            [(1, 2), (4, 9), (11, 14)]
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        for bad in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":\"x",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1,}",
            "{\"a\":[1}",
            "[1]",
            "{\"a\":\"\\",
            "{,\"a\":1}",
            "{\"a\":}",
        ] {
            let b = bad.as_bytes();
            let result: Result<Vec<Member>, Malformed> = match Members::new(b, 0) {
                Ok(members) => members.collect(),
                Err(e) => Err(e),
            };
            assert!(result.is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let depth = 200_000;
        let text = format!(
            "{{\"a\":{}1{},\"b\":2}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let found = members(&text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1], ("b".to_owned(), "2".to_owned()));
    }
}
