//! The Filter Out app's `regex` operators run `new RegExp(value).test(x)`:
//! a JavaScript pattern with no flags. This rewrites such a pattern for the
//! `regex` crate so it matches what JavaScript matches: `\d`, `\w`, `\b`
//! are ASCII-only, `\s` is JavaScript's white space, `.` stops at every
//! line terminator, `{` and `]` that do not form syntax are literals,
//! `[]` matches nothing and `[^]` anything. What the crate cannot do
//! (lookaround, backreferences) is refused with the reason, at start-up.

/// JavaScript's `\s` as the body of a character class.
const JS_SPACE: &str = r"\t\n\x0B\x0C\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}";
const DIGIT: &str = "0-9";
const WORD: &str = "0-9A-Za-z_";

/// Compiles a JavaScript pattern (no flags).
pub(super) fn compile(pattern: &str) -> Result<regex::Regex, String> {
    let translated = translate(pattern)?;
    regex::Regex::new(&translated).map_err(|e| {
        // The crate's message draws the translated pattern; its last line
        // is the reason.
        let text = e.to_string();
        let reason = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid pattern")
            .trim()
            .trim_start_matches("error: ")
            .to_owned();
        format!("the pattern {pattern:?} is not supported: {reason}")
    })
}

/// The pattern rewritten for the `regex` crate.
pub(super) fn translate(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut i = 0;
    let mut in_class = false;
    let mut class_prev_dash = false;
    // 0: after anything else; 1: after a quantifier (a lazy `?` may
    // follow); 2: after a lazy `?`. JavaScript refuses a quantifier on a
    // quantifier ("nothing to repeat"); the crate would accept `a**`.
    let mut quantified = 0u8;
    while i < chars.len() {
        let c = chars[i];
        if !in_class {
            let quantifier = match c {
                '*' | '+' | '?' => Some(1),
                '{' => quantifier_len(&chars, i),
                _ => None,
            };
            match (quantifier, quantified) {
                (None, _) => quantified = 0,
                (Some(_), 1) if c == '?' => quantified = 2,
                (Some(_), 1 | 2) => {
                    return Err(format!(
                        "the pattern {pattern:?} repeats a quantifier at character {} (JavaScript: nothing to repeat)",
                        i + 1
                    ))
                }
                (Some(_), _) => quantified = 1,
            }
        }
        if in_class {
            match c {
                ']' => {
                    out.push(']');
                    in_class = false;
                }
                '\\' => {
                    let (piece, used) = class_escape(&chars, i)?;
                    out.push_str(&piece);
                    i += used;
                    class_prev_dash = false;
                    continue;
                }
                '-' if class_prev_dash => out.push_str(r"\-"),
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
            class_prev_dash = c == '-';
            i += 1;
            continue;
        }
        match c {
            '\\' => {
                let (piece, used) = escape(&chars, i)?;
                out.push_str(&piece);
                i += used;
                continue;
            }
            '.' => out.push_str(r"[^\n\r\x{2028}\x{2029}]"),
            '[' => {
                let negated = chars.get(i + 1) == Some(&'^');
                let body = i + 1 + usize::from(negated);
                if chars.get(body) == Some(&']') {
                    // `[]` matches nothing, `[^]` any character.
                    out.push_str(if negated { r"[\s\S]" } else { r"[^\s\S]" });
                    i = body + 1;
                    continue;
                }
                out.push_str(if negated { "[^" } else { "[" });
                in_class = true;
                class_prev_dash = false;
                i = body;
                continue;
            }
            '(' if chars.get(i + 1) == Some(&'?') => {
                match (chars.get(i + 2), chars.get(i + 3)) {
                    (Some(':'), _) => out.push_str("(?:"),
                    (Some('=' | '!'), _) | (Some('<'), Some('=' | '!')) => {
                        return Err(format!(
                            "the pattern {pattern:?} uses a lookahead or lookbehind (at character {}), which is not supported",
                            i + 1
                        ))
                    }
                    (Some('<'), _) => out.push_str("(?<"),
                    _ => {
                        return Err(format!(
                            "the pattern {pattern:?} has an invalid group at character {}",
                            i + 1
                        ))
                    }
                }
                i += 3;
                continue;
            }
            '{' => match quantifier_len(&chars, i) {
                Some(len) => {
                    out.extend(&chars[i..i + len]);
                    i += len;
                    continue;
                }
                None => out.push_str(r"\{"),
            },
            '}' => out.push_str(r"\}"),
            ']' => out.push_str(r"\]"),
            _ => out.push(c),
        }
        i += 1;
    }
    if in_class {
        return Err(format!(
            "the pattern {pattern:?} has an unterminated character class"
        ));
    }
    Ok(out)
}

/// `{n}`, `{n,}` or `{n,m}` at `i`: its length in characters.
fn quantifier_len(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let digits = |j: &mut usize| {
        let start = *j;
        while chars.get(*j).is_some_and(char::is_ascii_digit) {
            *j += 1;
        }
        *j > start
    };
    if !digits(&mut j) {
        return None;
    }
    if chars.get(j) == Some(&',') {
        j += 1;
        digits(&mut j);
    }
    (chars.get(j) == Some(&'}')).then_some(j + 1 - i)
}

fn literal(c: char) -> String {
    regex::escape(c.encode_utf8(&mut [0; 4]))
}

fn code_point(c: u32) -> String {
    format!(r"\x{{{c:X}}}")
}

/// An escape outside a class at `i` (the backslash): its translation and
/// how many characters it took.
fn escape(chars: &[char], i: usize) -> Result<(String, usize), String> {
    let Some(&c) = chars.get(i + 1) else {
        return Err("the pattern ends with a lone backslash".to_owned());
    };
    Ok(match c {
        'd' => (format!("[{DIGIT}]"), 2),
        'D' => (format!("[^{DIGIT}]"), 2),
        'w' => (format!("[{WORD}]"), 2),
        'W' => (format!("[^{WORD}]"), 2),
        's' => (format!("[{JS_SPACE}]"), 2),
        'S' => (format!("[^{JS_SPACE}]"), 2),
        'b' => (r"(?-u:\b)".to_owned(), 2),
        'B' => (r"(?-u:\B)".to_owned(), 2),
        _ => common_escape(chars, i)?,
    })
}

/// An escape inside a class.
fn class_escape(chars: &[char], i: usize) -> Result<(String, usize), String> {
    let Some(&c) = chars.get(i + 1) else {
        return Err("the pattern ends with a lone backslash".to_owned());
    };
    Ok(match c {
        'd' => (DIGIT.to_owned(), 2),
        'D' => (format!("[^{DIGIT}]"), 2),
        'w' => (WORD.to_owned(), 2),
        'W' => (format!("[^{WORD}]"), 2),
        's' => (JS_SPACE.to_owned(), 2),
        'S' => (format!("[^{JS_SPACE}]"), 2),
        // In a class, \b is a backspace.
        'b' => (code_point(8), 2),
        '-' => (r"\-".to_owned(), 2),
        _ => common_escape(chars, i)?,
    })
}

/// Escapes that mean the same inside and outside classes.
fn common_escape(chars: &[char], i: usize) -> Result<(String, usize), String> {
    let c = chars[i + 1];
    let hex = |from: usize, len: usize| -> Option<u32> {
        let digits: String = chars.get(from..from + len)?.iter().collect();
        if digits.chars().all(|d| d.is_ascii_hexdigit()) {
            u32::from_str_radix(&digits, 16).ok()
        } else {
            None
        }
    };
    Ok(match c {
        't' => (code_point(9), 2),
        'n' => (code_point(10), 2),
        'v' => (code_point(11), 2),
        'f' => (code_point(12), 2),
        'r' => (code_point(13), 2),
        '0' if !chars.get(i + 2).is_some_and(char::is_ascii_digit) => (code_point(0), 2),
        '0'..='9' => {
            return Err(format!(
                "\\{c} (a backreference or octal escape) at character {} is not supported",
                i + 1
            ))
        }
        'k' => {
            return Err(format!(
                "\\k (a named backreference) at character {} is not supported",
                i + 1
            ))
        }
        'c' => match chars.get(i + 2) {
            Some(l) if l.is_ascii_alphabetic() => (code_point(*l as u32 % 32), 3),
            // Annex B: a backslash and a `c` taken literally.
            _ => (r"\\c".to_owned(), 2),
        },
        'x' => match hex(i + 2, 2) {
            Some(v) => (code_point(v), 4),
            None => (literal('x'), 2),
        },
        'u' => match hex(i + 2, 4) {
            Some(high @ 0xD800..=0xDBFF) => {
                let low = (chars.get(i + 6) == Some(&'\\') && chars.get(i + 7) == Some(&'u'))
                    .then(|| hex(i + 8, 4))
                    .flatten();
                match low {
                    Some(low @ 0xDC00..=0xDFFF) => {
                        let cp = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        (code_point(cp), 12)
                    }
                    _ => return Err(lone_surrogate(i)),
                }
            }
            Some(0xDC00..=0xDFFF) => return Err(lone_surrogate(i)),
            Some(v) => (code_point(v), 6),
            None => (literal('u'), 2),
        },
        // Any other escaped character stands for itself.
        other => (literal(other), 2),
    })
}

fn lone_surrogate(i: usize) -> String {
    format!(
        "a lone UTF-16 surrogate escape at character {} never matches text and is not supported",
        i + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, text, what `new RegExp(pattern).test(text)` gives in node 20)
    const CASES: &[(&str, &str, bool)] = &[
        ("^localhost", "localhost:8000", true),
        ("^localhost", "my.localhost", false),
        (r"\d+", "abc123", true),
        (r"^\d+$", "١٢٣", false),
        (r"^\w+$", "héllo", false),
        (r"^\w+$", "hello_1", true),
        (r"\bfoo\b", "a foo b", true),
        (r"\bé", "é", false),
        (r"^\s$", "\u{FEFF}", true),
        (r"^\s$", "\u{85}", false),
        ("^.$", "\u{2028}", false),
        ("^.$", "\u{85}", true),
        ("a{", "a{", true),
        ("a{1,2}b", "aab", true),
        ("x{a}", "x{a}", true),
        ("]", "]", true),
        ("a}", "a}", true),
        ("[]", "anything", false),
        ("[^]", "\n", true),
        (r"[\d-]", "-", true),
        (r"[\w]", "_", true),
        (r"[\b]", "\u{8}", true),
        (r"[^\s]", " ", false),
        ("[a-c]", "b", true),
        ("[&&]", "&", true),
        (r"\/path\/", "/path/", true),
        (r"\a", "a", true),
        (r"\x41", "A", true),
        (r"\u00e9", "é", true),
        (r"\ud83d\ude00", "😀", true),
        (r"\cJ", "\n", true),
        (r"\0", "\0", true),
        ("(?:ab)+$", "abab", true),
        ("a+?b", "aab", true),
        ("a??", "", true),
        ("a{1,}?", "aa", true),
        ("(?<year>\\d{4})", "in 2024", true),
        ("A|b", "b", true),
        ("case", "CASE", false),
    ];

    #[test]
    fn patterns_match_what_javascript_matches() {
        for (pattern, text, expected) in CASES {
            let regex = compile(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(regex.is_match(text), *expected, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn what_the_crate_cannot_do_is_refused_with_the_reason() {
        for (pattern, reason) in [
            ("a(?=b)", "lookahead"),
            ("(?<!a)b", "lookbehind"),
            (r"(a)\1", "backreference"),
            (r"\k<x>", "named backreference"),
            ("(?i)a", "invalid group"),
            ("[abc", "unterminated"),
            ("a\\", "lone backslash"),
            (r"\ud800", "surrogate"),
            ("a**", "nothing to repeat"),
            ("a+*", "nothing to repeat"),
            ("a{2}{3}", "nothing to repeat"),
            ("*a", "not supported"),
        ] {
            let error = compile(pattern).expect_err(pattern);
            assert!(error.contains(reason), "{pattern}: {error}");
        }
    }
}
