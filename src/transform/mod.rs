//! What leaves PostHog (issue #23): the operator's rules, in the words of
//! PostHog's own apps, applied to each decoded event before the webhook
//! sees it. Pure: bytes in, bytes out, no I/O.
//!
//! - Property removal, as the **Property Filter** app: dotted paths into
//!   `properties` (`email`, `$set.email`, `address.city`); `$ip` also sets
//!   the event's top-level `ip` to null. Or a keep-list: only the listed
//!   properties leave.
//! - Hashing, as the **PII Data Hashing** transformation: listed values
//!   become `sha256_hex(value + salt)` (`hash.rs`); `distinct_id` hashes
//!   the event's own `distinct_id` too.
//! - Event filters, as the **Filter Out** and **Drop Events on Property**
//!   apps, with their own JSON (`filter.rs`).
//!
//! `$set`, `$set_once`, `person` and `elements_chain` are also top-level
//! fields of a delivered event (PostHog merges a top-level `$set` into
//! `properties.$set` before storing it): a path starting with one of these
//! names applies to the property and to the top-level field alike, so the
//! two copies never disagree. `uuid`, `event`, `distinct_id`, `team_id` and
//! `timestamp` always leave (the receiver's contract; `uuid` is its
//! deduplication key: no rule may remove or hash it).
//!
//! Order, per event: filters decide on the event as it came (a filter
//! reads the value before it is removed or hashed), then removal or
//! keeping, then hashing. Where the apps disagree, or left an event
//! unfiltered on an error, each file says which way this goes and why.
//!
//! The event is never parsed into a tree: `scan.rs` walks the top level
//! and `properties` once (and nested objects only along listed paths),
//! copying every untouched value's bytes as they are.

mod apply;
mod filter;
mod hash;
mod js;
mod jsregex;
mod path;
pub(crate) mod scan;
#[cfg(test)]
mod tests;

use secrecy::SecretString;

use self::filter::Filters;
use self::hash::Hasher;
use self::path::{Entry, Lists, Tree};

/// The option names errors and the start-up summary use.
pub mod options {
    pub const REMOVE: &str = "REMOVE_PROPERTIES";
    pub const KEEP: &str = "KEEP_PROPERTIES";
    pub const HASH: &str = "HASH_PROPERTIES";
    pub const SALT: &str = "HASH_SALT";
    pub const FILTERS: &str = "EVENT_FILTERS";
}

/// A rule that cannot be used: which option, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {}{reason}", .at.as_ref().map(|at| format!("{at}: ")).unwrap_or_default())]
pub struct RuleError {
    pub option: &'static str,
    /// "column 7", "line 3, column 14", "group 2, condition 1"...
    pub at: Option<String>,
    pub reason: String,
}

impl RuleError {
    fn new(option: &'static str, reason: String) -> Self {
        RuleError {
            option,
            at: None,
            reason,
        }
    }

    fn at(option: &'static str, at: String, reason: String) -> Self {
        RuleError {
            option,
            at: Some(at),
            reason,
        }
    }
}

/// Why an event does not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its name is in the Filter Out app's `eventsToDrop`.
    EventName,
    /// It satisfies none of the Filter Out groups.
    NoGroupMatched,
    /// A Drop Events on Property rule (1-based, in configuration order).
    OnProperty { rule: usize },
    /// The bytes are not an event object (the connector never writes
    /// such): dropped rather than sent unfiltered.
    Unreadable,
}

impl DropReason {
    /// A metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            DropReason::EventName => "events_to_drop",
            DropReason::NoGroupMatched => "filter_groups",
            DropReason::OnProperty { .. } => "drop_on_property",
            DropReason::Unreadable => "unreadable",
        }
    }
}

/// A Filter Out condition, 1-based as a person counts them in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionRef {
    pub group: usize,
    pub condition: usize,
}

/// What [`Rules::apply`] did to one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// `Some`: the event does not leave (the output is empty).
    pub dropped: Option<DropReason>,
    /// Values removed (each key at each place, and `ip` set to null).
    pub removed: u32,
    /// Values replaced by their hash.
    pub hashed: u32,
    /// A condition JavaScript would have thrown on (`contains` on a
    /// number, null or object): the Filter Out app failed on such an event
    /// and PostHog passed it on, so it is kept here too.
    pub filter_error: Option<ConditionRef>,
}

/// The operator's rules, parsed once at start-up.
#[derive(Debug)]
pub struct Rules {
    tree: Tree,
    remove: Vec<Entry>,
    keep: Vec<Entry>,
    hash: Vec<Entry>,
    hasher: Option<Hasher>,
    /// `distinct_id` is in the hash list: the event's own is hashed too.
    hash_distinct_id: bool,
    filters: Filters,
}

impl Rules {
    /// `remove`, `keep`, `hash`: comma-separated dotted paths (empty: no
    /// rule). `salt`: required when `hash` names anything (an empty one
    /// hashes unsalted, as the app did without a salt). `filters_json`:
    /// the Filter Out app's JSON, see `filter.rs`.
    pub fn parse(
        remove: &str,
        keep: &str,
        hash: &str,
        salt: Option<SecretString>,
        filters_json: Option<&str>,
    ) -> Result<Rules, RuleError> {
        let remove = path::parse_list(options::REMOVE, remove)?;
        let keep = path::parse_list(options::KEEP, keep)?;
        let hash = path::parse_list(options::HASH, hash)?;
        let tree = path::build(&Lists {
            remove: (options::REMOVE, &remove),
            keep: (options::KEEP, &keep),
            hash: (options::HASH, &hash),
        })?;
        let hasher = match (hash.is_empty(), salt) {
            (true, _) => None,
            (false, Some(salt)) => Some(Hasher::new(salt)),
            (false, None) => {
                return Err(RuleError::new(
                    options::SALT,
                    format!(
                        "{} names properties to hash, so a salt is required: use your PostHog \
                         app's salt to get the same hashes (an empty salt hashes unsalted, which \
                         anyone can reverse for guessable values such as emails)",
                        options::HASH
                    ),
                ))
            }
        };
        let filters = match filters_json.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) => filter::parse(options::FILTERS, text)?,
            None => Filters::default(),
        };
        let hash_distinct_id = hash.iter().any(|e| e.path == ["distinct_id"]);
        Ok(Rules {
            tree,
            remove,
            keep,
            hash,
            hasher,
            hash_distinct_id,
            filters,
        })
    }

    /// No rule at all: the caller can skip [`Rules::apply`].
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty() && self.filters.is_empty()
    }

    /// Applies the rules to one event (the JSON object the connector
    /// writes); `out` is cleared, then holds the event to send, or nothing
    /// if it is dropped.
    pub fn apply(&self, event: &[u8], out: &mut Vec<u8>) -> Applied {
        out.clear();
        match self.transform(event, out) {
            Ok(applied) if applied.dropped.is_none() => applied,
            Ok(applied) => {
                out.clear();
                Applied {
                    dropped: applied.dropped,
                    filter_error: applied.filter_error,
                    ..Applied::default()
                }
            }
            Err(scan::Malformed) => {
                out.clear();
                Applied {
                    dropped: Some(DropReason::Unreadable),
                    ..Applied::default()
                }
            }
        }
    }

    /// For the start-up summary; the salt is never shown.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let list = |entries: &[Entry]| {
            entries
                .iter()
                .map(Entry::text)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.remove.is_empty() {
            out.push(("remove".to_owned(), list(&self.remove)));
        }
        if !self.keep.is_empty() {
            out.push((
                "keep".to_owned(),
                format!(
                    "{} (and always uuid, event, distinct_id, team_id, timestamp)",
                    list(&self.keep)
                ),
            ));
        }
        if let Some(hasher) = &self.hasher {
            out.push((
                "hash".to_owned(),
                format!("{} (sha256 hex of value + salt)", list(&self.hash)),
            ));
            out.push((
                "hash salt".to_owned(),
                if hasher.salt_is_empty() {
                    "empty: values are hashed unsalted".to_owned()
                } else {
                    "set (redacted)".to_owned()
                },
            ));
        }
        self.filters.describe(&mut out);
        out
    }
}
