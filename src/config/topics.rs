//! `KAFKA_TOPIC`: the topics to read, as a comma-separated list or as one
//! pattern (`^regex`, librdkafka's regex subscription, which also picks up
//! matching topics created later).
//!
//! librdkafka matches patterns with POSIX extended regular expressions; the
//! connector checks them (the dead-letter topic must not match, metrics and
//! the missing-topic check) with Rust's `regex`. Only the syntax the two
//! read alike is accepted: anything else would make the connector believe
//! it reads topics librdkafka does not, or the reverse.

use std::fmt;

use super::{topic_name, ConfigError};

/// The topics `KAFKA_TOPIC` names.
#[derive(Clone)]
pub enum Topics {
    /// Topics named one by one, in the order given, without duplicates.
    List(Vec<String>),
    /// One pattern; its source starts with `^`.
    Pattern { source: String, regex: regex::Regex },
}

impl Topics {
    pub fn parse(option: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let raw = raw.trim();
        if raw.starts_with('^') {
            check_pattern(raw).map_err(|problem| super::bad(option, problem))?;
            let regex = regex::Regex::new(raw)
                .map_err(|e| super::bad(option, format!("expected a valid pattern: {e}")))?;
            return Ok(Topics::Pattern {
                source: raw.to_owned(),
                regex,
            });
        }
        let mut names: Vec<String> = Vec::new();
        for entry in raw.split(',') {
            if raw.contains(',') && entry.trim().is_empty() {
                return Err(super::bad(
                    option,
                    format!("expected comma-separated topic names, got an empty entry in {raw:?}"),
                ));
            }
            let name = topic_name(option, entry)?;
            if names.contains(&name) {
                return Err(super::bad(
                    option,
                    format!("topic {name:?} is listed twice"),
                ));
            }
            names.push(name);
        }
        Ok(Topics::List(names))
    }

    /// What `consumer.subscribe` takes: the names, or the one pattern.
    pub fn subscription(&self) -> Vec<String> {
        match self {
            Topics::List(names) => names.clone(),
            Topics::Pattern { source, .. } => vec![source.clone()],
        }
    }

    /// Whether the consumer reads `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Topics::List(names) => names.iter().any(|n| n == topic),
            Topics::Pattern { regex, .. } => regex.is_match(topic),
        }
    }

    /// The listed names; `None` for a pattern.
    pub fn listed(&self) -> Option<&[String]> {
        match self {
            Topics::List(names) => Some(names),
            Topics::Pattern { .. } => None,
        }
    }
}

impl fmt::Display for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topics::List(names) => f.write_str(&names.join(",")),
            Topics::Pattern { source, .. } => f.write_str(source),
        }
    }
}

impl fmt::Debug for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Refuses what POSIX extended regular expressions and Rust's `regex` read
/// differently (or POSIX does not have): escapes of letters and digits
/// (`\d`, `\w`, `\b`, back-references), groups with `(?`, lazy quantifiers,
/// escapes and nested classes inside brackets.
fn check_pattern(pattern: &str) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "expected a pattern in the syntax librdkafka (POSIX) and the connector read alike; {what} is not (got {pattern:?})"
        ))
    };
    let bytes = pattern.as_bytes();
    let mut in_class = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_class {
            match b {
                b'\\' => return refuse("a backslash inside [...]"),
                b'[' if bytes.get(i + 1) != Some(&b':') => {
                    return refuse("a nested [ inside [...]")
                }
                b'[' => {
                    // A POSIX class such as [:alpha:], read alike by both.
                    match pattern[i..].find(":]") {
                        Some(end) => i += end + 1,
                        None => return refuse("an unclosed [: class"),
                    }
                }
                b'&' | b'-' | b'~' if bytes.get(i + 1) == Some(&b) => {
                    return refuse("a class operator (&&, --, ~~)")
                }
                b']' => in_class = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'\\' => match bytes.get(i + 1) {
                Some(c) if c.is_ascii_alphanumeric() => {
                    return refuse(&format!("the escape \\{}", *c as char))
                }
                Some(_) => i += 1,
                None => return refuse("a trailing backslash"),
            },
            b'(' if bytes.get(i + 1) == Some(&b'?') => return refuse("a (? group"),
            b'*' | b'+' | b'?' | b'}' if i > 0 && bytes.get(i + 1) == Some(&b'?') => {
                return refuse("a lazy quantifier")
            }
            b'[' => {
                in_class = true;
                // A ']' right after '[' or '[^' is a literal in both.
                if bytes.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if bytes.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if in_class {
        return refuse("an unclosed [");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &str) -> Vec<String> {
        match Topics::parse("KAFKA_TOPIC", raw).expect("valid") {
            Topics::List(names) => names,
            Topics::Pattern { .. } => panic!("a list"),
        }
    }

    fn refused(raw: &str) -> String {
        Topics::parse("KAFKA_TOPIC", raw)
            .map(|t| t.to_string())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_list_is_split_on_commas_and_trimmed() {
        assert_eq!(list("events_plugin_ingestion"), ["events_plugin_ingestion"]);
        assert_eq!(
            list(" a , b.c,d-e "),
            ["a".to_owned(), "b.c".to_owned(), "d-e".to_owned()]
        );
        let topics = Topics::parse("KAFKA_TOPIC", "a,b").expect("valid");
        assert!(topics.matches("a") && topics.matches("b") && !topics.matches("ab"));
        assert_eq!(topics.subscription(), ["a", "b"]);
        assert_eq!(topics.to_string(), "a,b");
    }

    #[test]
    fn empty_entries_duplicates_and_bad_names_are_refused_naming_the_option() {
        for (raw, says) in [
            ("a,,b", "empty entry"),
            ("a,", "empty entry"),
            ("a,b,a", "listed twice"),
            ("a,b c", "topic name"),
            ("  ", "empty"),
        ] {
            let err = refused(raw);
            assert!(
                err.contains("KAFKA_TOPIC") && err.contains(says),
                "{raw:?}: {err}"
            );
        }
    }

    #[test]
    fn a_pattern_matches_like_librdkafka_and_picks_any_matching_name() {
        let topics =
            Topics::parse("KAFKA_TOPIC", "^events_plugin_ingestion(_historical)?$").expect("valid");
        assert!(topics.matches("events_plugin_ingestion"));
        assert!(topics.matches("events_plugin_ingestion_historical"));
        assert!(!topics.matches("events_plugin_ingestion_overflow"));
        assert_eq!(topics.listed(), None);
        assert_eq!(
            topics.subscription(),
            ["^events_plugin_ingestion(_historical)?$"]
        );
        // Unanchored at the end, as POSIX regexec is.
        let prefix = Topics::parse("KAFKA_TOPIC", "^prod_.*").expect("valid");
        assert!(prefix.matches("prod_events") && !prefix.matches("dev_prod_events"));
        assert!(Topics::parse("KAFKA_TOPIC", "^[[:alnum:]_]+[.]v[0-9]{1,2}$").is_ok());
        assert!(Topics::parse("KAFKA_TOPIC", r"^a\.b[]x]").is_ok());
    }

    #[test]
    fn pattern_syntax_that_posix_reads_differently_is_refused_with_the_reason() {
        for (raw, says) in [
            (r"^events_\d+", r"\d"),
            (r"^\w+", r"\w"),
            (r"^(a)\1", r"\1"),
            ("^(?i)events", "(?"),
            ("^a.*?b", "lazy"),
            (r"^[\d]", "backslash inside"),
            ("^[a[b]]", "nested"),
            ("^[a&&b]", "class operator"),
            ("^[abc", "unclosed"),
            ("^(", "valid pattern"),
        ] {
            let err = refused(raw);
            assert!(
                err.contains("KAFKA_TOPIC") && err.contains(says),
                "{raw:?}: {err}"
            );
        }
    }
}
