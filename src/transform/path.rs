//! Property paths, as the Property Filter and PII Data Hashing apps write
//! them: a comma-separated list of names, each a dotted path into
//! `properties` (`email`, `$set.email`, `address.city`). Entries are
//! trimmed and empty ones skipped (the apps' "without spaces" advice
//! becomes unnecessary); a name cannot itself contain a dot, as in the apps.
//!
//! The three lists (remove, keep, hash) are merged into one tree, so an
//! event's keys are looked up once, whatever the number of rules.

use super::scan::KeySet;
use super::RuleError;

/// What the rules say about one path.
#[derive(Debug, Default, Clone)]
pub(super) struct Node {
    /// Children by name; a small list (lookups compare lengths first).
    pub children: Vec<(Box<[u8]>, usize)>,
    /// The children's names, summarized: most keys are rejected by one test.
    pub names: KeySet,
    pub remove: bool,
    pub hash: bool,
    /// The keep-list names this path: the value is kept whole.
    pub keep_all: bool,
    /// The keep-list names a path below this one: inside, only kept paths stay.
    pub keep_some: bool,
}

impl Node {
    /// Whether a keep-list lets this value through (wholly or in part).
    pub(super) fn kept(&self) -> bool {
        self.keep_all || self.keep_some
    }
}

/// The rule tree; node 0 is `properties` itself.
#[derive(Debug, Clone)]
pub(super) struct Tree {
    pub nodes: Vec<Node>,
    /// Whether a keep-list is in force.
    pub keep_mode: bool,
}

pub(super) const ROOT: usize = 0;

impl Tree {
    pub(super) fn child(&self, node: usize, key: &[u8]) -> Option<usize> {
        let n = &self.nodes[node];
        if !n.names.may_hold(key) {
            return None;
        }
        n.children
            .iter()
            .find(|(name, _)| name.as_ref() == key)
            .map(|(_, c)| *c)
    }

    fn insert(&mut self, path: &[String]) -> usize {
        let mut node = ROOT;
        for segment in path {
            let key = segment.as_bytes();
            node = match self.child(node, key) {
                Some(c) => c,
                None => {
                    let c = self.nodes.len();
                    self.nodes.push(Node::default());
                    let parent = &mut self.nodes[node];
                    parent.children.push((key.into(), c));
                    parent.names.insert(key);
                    c
                }
            };
        }
        node
    }

    /// Whether the tree holds any rule.
    pub(super) fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && !self.keep_mode
    }
}

/// One entry of a list: its dotted path and where it starts (1-based
/// character column in the option's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub path: Vec<String>,
    pub column: usize,
}

impl Entry {
    pub(super) fn text(&self) -> String {
        self.path.join(".")
    }
}

/// Splits an option's text into paths.
pub(super) fn parse_list(option: &'static str, text: &str) -> Result<Vec<Entry>, RuleError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut offset = 0;
    for piece in text.split(',') {
        let leading = piece.len() - piece.trim_start().len();
        let name = piece.trim();
        let column = text[..offset + leading].chars().count() + 1;
        offset += piece.len() + 1;
        if name.is_empty() {
            continue;
        }
        let path: Vec<String> = name.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(RuleError::at(
                option,
                format!("column {column}"),
                format!("{name:?} has an empty name before or after a dot"),
            ));
        }
        let entry = Entry { path, column };
        if !entries.iter().any(|e| e.path == entry.path) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The three lists, checked against each other.
pub(super) struct Lists<'a> {
    pub remove: (&'static str, &'a [Entry]),
    pub keep: (&'static str, &'a [Entry]),
    pub hash: (&'static str, &'a [Entry]),
}

/// Builds the tree. Refused: `uuid` removed or hashed (the receiver
/// deduplicates on it); one path both removed and hashed, or both removed
/// and kept; any path inside a path that is removed or hashed whole (it
/// would never apply).
pub(super) fn build(lists: &Lists<'_>) -> Result<Tree, RuleError> {
    for (option, entries) in [lists.remove, lists.hash] {
        if let Some(e) = entries.iter().find(|e| e.path == ["uuid"]) {
            return Err(RuleError::at(
                option,
                format!("column {}", e.column),
                "uuid is the receiver's deduplication key: it always leaves as it is".to_owned(),
            ));
        }
    }
    let keep_mode = !lists.keep.1.is_empty();
    let mut tree = Tree {
        nodes: vec![Node::default()],
        keep_mode,
    };
    // Whole-value actions first, so nested paths can be checked against them.
    let whole: Vec<(&'static str, &Entry, bool)> = lists
        .remove
        .1
        .iter()
        .map(|e| (lists.remove.0, e, true))
        .chain(lists.hash.1.iter().map(|e| (lists.hash.0, e, false)))
        .collect();
    for (option, entry, remove) in &whole {
        for (other_option, other, other_removes) in &whole {
            let inside = other.path.len() < entry.path.len()
                && entry.path[..other.path.len()] == other.path[..];
            if inside {
                return Err(RuleError::at(
                    option,
                    format!("column {}", entry.column),
                    format!(
                        "{} is inside {}, which {} already {} whole",
                        entry.text(),
                        other.text(),
                        other_option,
                        if *other_removes { "removes" } else { "hashes" }
                    ),
                ));
            }
        }
        let node = tree.insert(&entry.path);
        let n = &mut tree.nodes[node];
        if (*remove && n.hash) || (!*remove && n.remove) {
            return Err(RuleError::at(
                option,
                format!("column {}", entry.column),
                format!(
                    "{} is both removed ({}) and hashed ({})",
                    entry.text(),
                    lists.remove.0,
                    lists.hash.0
                ),
            ));
        }
        if *remove {
            n.remove = true;
        } else {
            n.hash = true;
        }
    }
    // Kept paths; a hashed path is kept too (it leaves, hashed).
    let kept = lists
        .keep
        .1
        .iter()
        .map(|e| (lists.keep.0, e))
        .chain(lists.hash.1.iter().map(|e| (lists.hash.0, e)));
    for (option, entry) in kept.filter(|_| keep_mode) {
        if let Some(removed) =
            lists.remove.1.iter().find(|r| {
                r.path.len() <= entry.path.len() && entry.path[..r.path.len()] == r.path[..]
            })
        {
            return Err(RuleError::at(
                option,
                format!("column {}", entry.column),
                format!(
                    "{} is kept, but {} removes {}",
                    entry.text(),
                    lists.remove.0,
                    removed.text()
                ),
            ));
        }
        // Its ancestors keep some (only the kept paths inside them stay),
        // the node itself keeps all.
        for depth in 1..=entry.path.len() {
            let node = tree.insert(&entry.path[..depth]);
            if depth == entry.path.len() {
                tree.nodes[node].keep_all = true;
            } else {
                tree.nodes[node].keep_some = true;
            }
        }
    }
    Ok(tree)
}
