//! The few JavaScript semantics the PostHog apps' conditions rely on, so a
//! filter behaves here as it did in PostHog: strict equality (`===`), the
//! relational operators (`<`, `>`, `<=`, `>=` with their conversions),
//! `ToString` (for `includes`, `RegExp.test` and array joins) and
//! `ToNumber`. Only what JSON values can reach is covered (no `undefined`
//! inside values, no symbols, no BigInt).

use std::borrow::Cow;
use std::cmp::Ordering;

use super::scan::{self, Malformed, Span};

/// A JSON value as JavaScript sees it after `JSON.parse`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Js<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Js<'a>>),
    /// Members in `JSON.parse` order; only their number and values matter
    /// to the conditions (an object is never `===` another, and its string
    /// form is `[object Object]`).
    Obj(Vec<(String, Js<'a>)>),
}

/// Deeper than this, an event's value is not read (the decoder refuses
/// events nested deeper than `rawjson::MAX_DEPTH` anyway).
const MAX_DEPTH: usize = 128;

impl<'a> Js<'a> {
    /// Reads the value at `span` of trusted JSON.
    pub(super) fn read(b: &'a [u8], span: Span) -> Result<Js<'a>, Malformed> {
        Self::read_at(b, span, 0)
    }

    fn read_at(b: &'a [u8], span: Span, depth: usize) -> Result<Js<'a>, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        let raw = b.get(span.0..span.1).ok_or(Malformed)?;
        Ok(match raw.first() {
            Some(b'"') => Js::Str(scan::string_value(b, span)?),
            Some(b'{') => {
                let mut members: Vec<(String, Js<'a>)> = Vec::new();
                for m in scan::Members::new(b, span.0)? {
                    let m = m?;
                    let key = scan::key_bytes(b, m.key)?;
                    let key = String::from_utf8(key.into_owned()).map_err(|_| Malformed)?;
                    let value = Self::read_at(b, m.value, depth + 1)?;
                    // JSON.parse: a repeated key keeps its first place, last value.
                    match members.iter_mut().find(|(k, _)| *k == key) {
                        Some(existing) => existing.1 = value,
                        None => members.push((key, value)),
                    }
                }
                Js::Obj(members)
            }
            Some(b'[') => Js::Arr(
                scan::elements(b, span.0)?
                    .into_iter()
                    .map(|e| Self::read_at(b, e, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Some(b't') => Js::Bool(true),
            Some(b'f') => Js::Bool(false),
            Some(b'n') => Js::Null,
            Some(_) => Js::Num(
                std::str::from_utf8(raw)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or(Malformed)?,
            ),
            None => return Err(Malformed),
        })
    }

    /// From a configuration value (the `value` of a condition).
    pub(super) fn from_json(value: &serde_json::Value) -> Js<'static> {
        match value {
            serde_json::Value::Null => Js::Null,
            serde_json::Value::Bool(b) => Js::Bool(*b),
            serde_json::Value::Number(n) => Js::Num(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Js::Str(Cow::Owned(s.clone())),
            serde_json::Value::Array(a) => Js::Arr(a.iter().map(Js::from_json).collect()),
            serde_json::Value::Object(o) => Js::Obj(
                o.iter()
                    .map(|(k, v)| (k.clone(), Js::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// `a === b`. Two objects or arrays are never the same object here: one
/// comes from the event, the other from the configuration.
pub(super) fn strict_eq(a: &Js<'_>, b: &Js<'_>) -> bool {
    match (a, b) {
        (Js::Null, Js::Null) => true,
        (Js::Bool(x), Js::Bool(y)) => x == y,
        (Js::Num(x), Js::Num(y)) => x == y,
        (Js::Str(x), Js::Str(y)) => x == y,
        _ => false,
    }
}

/// `String(v)`.
pub(super) fn to_string<'b>(v: &'b Js<'_>) -> Cow<'b, str> {
    match v {
        Js::Null => Cow::Borrowed("null"),
        Js::Bool(true) => Cow::Borrowed("true"),
        Js::Bool(false) => Cow::Borrowed("false"),
        Js::Num(n) => Cow::Owned(number_to_string(*n)),
        Js::Str(s) => Cow::Borrowed(s.as_ref()),
        Js::Obj(_) => Cow::Borrowed("[object Object]"),
        // Array.prototype.join: null and undefined elements become "".
        Js::Arr(items) => Cow::Owned(
            items
                .iter()
                .map(|item| match item {
                    Js::Null => Cow::Borrowed(""),
                    other => to_string(other),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// A primitive as `ToPrimitive` leaves it (hint "number"; plain objects and
/// arrays have no useful `valueOf`, so they become their string).
enum Prim<'b> {
    Str(Cow<'b, str>),
    Num(f64),
}

fn to_primitive<'b>(v: &'b Js<'_>) -> Prim<'b> {
    match v {
        Js::Null => Prim::Num(0.0),
        Js::Bool(b) => Prim::Num(if *b { 1.0 } else { 0.0 }),
        Js::Num(n) => Prim::Num(*n),
        Js::Str(s) => Prim::Str(Cow::Borrowed(s.as_ref())),
        Js::Arr(_) | Js::Obj(_) => Prim::Str(to_string(v)),
    }
}

fn prim_to_number(p: &Prim<'_>) -> f64 {
    match p {
        Prim::Num(n) => *n,
        Prim::Str(s) => string_to_number(s),
    }
}

/// The abstract relational comparison `x < y`: `None` is JavaScript's
/// `undefined` (a NaN on either side), which every operator reads as false.
fn less_than(x: &Js<'_>, y: &Js<'_>) -> Option<bool> {
    let (px, py) = (to_primitive(x), to_primitive(y));
    if let (Prim::Str(a), Prim::Str(b)) = (&px, &py) {
        // Strings compare by UTF-16 code units, not by code points.
        return Some(a.encode_utf16().cmp(b.encode_utf16()) == Ordering::Less);
    }
    let (nx, ny) = (prim_to_number(&px), prim_to_number(&py));
    if nx.is_nan() || ny.is_nan() {
        None
    } else {
        Some(nx < ny)
    }
}

/// `a > b`
pub(super) fn gt(a: &Js<'_>, b: &Js<'_>) -> bool {
    less_than(b, a) == Some(true)
}

/// `a < b`
pub(super) fn lt(a: &Js<'_>, b: &Js<'_>) -> bool {
    less_than(a, b) == Some(true)
}

/// `a >= b`: true when `a < b` is false (not when it is undefined).
pub(super) fn gte(a: &Js<'_>, b: &Js<'_>) -> bool {
    less_than(a, b) == Some(false)
}

/// `a <= b`
pub(super) fn lte(a: &Js<'_>, b: &Js<'_>) -> bool {
    less_than(b, a) == Some(false)
}

/// JavaScript's white space and line terminators, which `Number("…")` trims.
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// `Number(s)`: NaN for anything that is not a whole numeric literal.
pub(super) fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_space);
    match t {
        "" => return 0.0,
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let bytes = t.as_bytes();
    if bytes.len() > 2 && bytes[0] == b'0' {
        let radix = match bytes[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            let mut value = 0f64;
            for c in t[2..].chars() {
                match c.to_digit(radix) {
                    Some(d) => value = value * f64::from(radix) + f64::from(d),
                    None => return f64::NAN,
                }
            }
            return value;
        }
    }
    if is_decimal_literal(bytes) {
        t.parse().unwrap_or(f64::NAN)
    } else {
        f64::NAN
    }
}

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`
fn is_decimal_literal(b: &[u8]) -> bool {
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// `Number.prototype.toString()`: the shortest digits that read back as the
/// same double (what Rust's `{:e}` prints), laid out by ECMAScript's rules.
pub(super) fn number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    // The value is 0.d1d2... × 10^n.
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    let mut out = String::with_capacity(k as usize + 8);
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&"0".repeat((n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        out.push('e');
        out.push(if e >= 0 { '+' } else { '-' });
        out.push_str(&e.abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        // Expected strings: `String(x)` in node 20 for each literal.
        for (x, js) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (100.0, "100"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (12345678901234567890.0, "12345678901234567000"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.000123, "0.000123"),
            (123.456, "123.456"),
            (2.5e25, "2.5e+25"),
        ] {
            assert_eq!(number_to_string(x), js, "{x:e}");
        }
    }

    #[test]
    fn strings_convert_to_numbers_as_number_does() {
        // Expected values: `Number(s)` in node 20.
        for (s, n) in [
            ("", 0.0),
            ("  \n", 0.0),
            ("12", 12.0),
            (" 12 ", 12.0),
            ("\u{A0}7\u{FEFF}", 7.0),
            ("1.", 1.0),
            (".5", 0.5),
            ("+3", 3.0),
            ("-3e2", -300.0),
            ("1E+2", 100.0),
            ("0x1f", 31.0),
            ("0b101", 5.0),
            ("0o17", 15.0),
            ("Infinity", f64::INFINITY),
            ("-Infinity", f64::NEG_INFINITY),
            ("00012", 12.0),
        ] {
            assert_eq!(string_to_number(s), n, "{s:?}");
        }
        for s in [
            "abc", "1a", "1e", ".", "+", "-0x10", "0x", "inf", "NaN", "infinity", "1_000", "1,5",
            "e5",
        ] {
            assert!(string_to_number(s).is_nan(), "{s:?}");
        }
    }

    #[test]
    fn relational_operators_convert_as_javascript_does() {
        let s = |t: &str| Js::Str(Cow::Owned(t.to_owned()));
        let n = Js::Num;
        // Expected: node 20 evaluating the same expressions.
        assert!(gt(&s("20"), &n(10.0)), "'20' > 10");
        assert!(gt(&s("9"), &s("10")), "'9' > '10' compares strings");
        assert!(
            !gt(&s("abc"), &n(1.0)) && !lte(&s("abc"), &n(1.0)),
            "NaN: all false"
        );
        assert!(gt(&Js::Bool(true), &n(0.5)), "true > 0.5");
        assert!(
            gte(&Js::Null, &n(0.0)) && !gt(&Js::Null, &n(0.0)),
            "null >= 0, not > 0"
        );
        assert!(gt(&Js::Arr(vec![n(5.0)]), &n(4.0)), "[5] > 4");
        assert!(
            !gt(&Js::Arr(vec![n(5.0), n(6.0)]), &n(4.0)),
            "[5,6] > 4 is NaN"
        );
        assert!(!gt(&Js::Obj(vec![]), &n(0.0)) && !lt(&Js::Obj(vec![]), &n(0.0)));
        assert!(
            gt(&s("\u{FF61}"), &s("\u{1F600}")),
            "UTF-16 order: U+FF61 > U+1F600 (its surrogate D83D)"
        );
        assert!(lte(&n(3.0), &n(3.0)) && gte(&n(3.0), &n(3.0)));
    }
}
