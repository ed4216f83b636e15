//! One pass over an event: the top level and `properties` are walked once
//! (nested objects only along listed paths). Runs of untouched members are
//! copied as one slice; a member a rule names is left out, hashed, or
//! walked into. The values the filters read are noted on the way and
//! decided on at the end.
//!
//! A listed path that meets a value which is not an object (`$set.email`
//! when `$set` is a string) finds nothing there: the value is left as it
//! is (under a keep-list, it is left out), the event's other rules still
//! apply. The Property Filter app threw on such an event and PostHog then
//! passed it on with nothing removed at all.

use super::filter::Props;
use super::path::{Node, ROOT};
use super::scan::{self, Key, Malformed, Members, Span};
use super::{Applied, Rules};

/// Top-level fields that are also properties' names (see the module doc).
const MIRRORS: [&[u8]; 4] = [b"$set", b"$set_once", b"person", b"elements_chain"];

/// Where the filters' properties were found, by slot.
type Values = [Option<Span>];

/// Writes one object's members with their commas, copying runs of
/// untouched members (separators included) as single slices.
struct Writer<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
    run: Option<Span>,
}

impl<'o> Writer<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Writer {
            out,
            first: true,
            run: None,
        }
    }

    /// The member `span` leaves as it is: it joins the run if it follows
    /// it directly (only separators between), else starts a new one.
    #[inline]
    fn keep(&mut self, b: &[u8], span: Span) {
        if let Some((start, end)) = self.run {
            if b[end..span.0]
                .iter()
                .all(|c| matches!(c, b',' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                self.run = Some((start, span.1));
                return;
            }
            self.flush(b);
        }
        self.run = Some(span);
    }

    fn flush(&mut self, b: &[u8]) {
        if let Some((start, end)) = self.run.take() {
            if !self.first {
                self.out.push(b',');
            }
            self.first = false;
            self.out.extend_from_slice(&b[start..end]);
        }
    }

    /// Starts a member written here: its key and colon; the caller writes
    /// the value.
    fn key(&mut self, b: &[u8], key: Span) -> &mut Vec<u8> {
        self.flush(b);
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(&b[key.0..key.1]);
        self.out.push(b':');
        self.out
    }

    fn close(mut self, b: &[u8]) {
        self.flush(b);
        self.out.push(b'}');
    }
}

impl Rules {
    pub(super) fn transform(&self, b: &[u8], out: &mut Vec<u8>) -> Result<Applied, Malformed> {
        let slots = self.filters.slot_count();
        let mut few = [None; 8];
        let mut many = Vec::new();
        let values: &mut Values = if slots <= few.len() {
            &mut few[..slots]
        } else {
            many.resize(slots, None);
            &mut many
        };
        let mut applied = Applied::default();
        let mut event_name = None;
        let mut props = Props::Absent;
        let start = scan::skip_ws(b, 0);
        let mut members = Members::new(b, start)?;
        let mut w = Writer::open(out);
        while let Some(k) = members.next_key()? {
            let name = scan::key_name(b, k.key, k.escaped)?;
            match name.as_ref() {
                b"properties" => {
                    if b[k.value] == b'{' {
                        props = Props::Object;
                        let out = w.key(b, k.key);
                        let end = self.object(
                            b,
                            k.value,
                            ROOT,
                            self.tree.keep_mode,
                            Some(values),
                            out,
                            &mut applied,
                        )?;
                        members.resume(end);
                    } else {
                        props = Props::Other;
                        let end = members.pass(k.value)?;
                        w.keep(b, (k.key.0, end));
                    }
                }
                b"event" => {
                    let end = members.pass(k.value)?;
                    event_name = Some((k.value, end));
                    w.keep(b, (k.key.0, end));
                }
                b"ip" => self.ip(b, k, &mut members, &mut w, &mut applied)?,
                b"distinct_id" if self.hash_distinct_id => {
                    let end = members.pass(k.value)?;
                    self.hash_member(b, k.key, (k.value, end), &mut w, &mut applied)?;
                }
                n if MIRRORS.contains(&n) => {
                    let child = self.tree.child(ROOT, n);
                    self.member(
                        b,
                        k,
                        &mut members,
                        child,
                        self.tree.keep_mode,
                        &mut w,
                        &mut applied,
                    )?;
                }
                _ => {
                    let end = members.pass(k.value)?;
                    w.keep(b, (k.key.0, end));
                }
            }
        }
        if scan::skip_ws(b, members.end()) != b.len() {
            return Err(Malformed);
        }
        w.close(b);
        let (dropped, filter_error) = self.filters.decide(b, event_name, props, values)?;
        applied.dropped = dropped;
        applied.filter_error = filter_error;
        Ok(applied)
    }

    /// The object at `start`, under rule `node`; returns where it ends.
    /// `filtering`: a keep-list is in force at this level. `values`: note
    /// the filters' properties.
    #[allow(clippy::too_many_arguments)]
    fn object(
        &self,
        b: &[u8],
        start: usize,
        node: usize,
        filtering: bool,
        mut values: Option<&mut Values>,
        out: &mut Vec<u8>,
        applied: &mut Applied,
    ) -> Result<usize, Malformed> {
        let n = &self.tree.nodes[node];
        let reads = values.as_ref().is_some_and(|v| !v.is_empty());
        if !filtering && n.children.is_empty() && !reads {
            let end = scan::skip_value(b, start)?;
            out.extend_from_slice(&b[start..end]);
            return Ok(end);
        }
        // Keys that no rule or filter names are passed over at once.
        let names = if reads {
            n.names.union(self.filters.names())
        } else {
            n.names
        };
        let mut members = Members::new(b, start)?;
        let mut w = Writer::open(out);
        while let Some(k) = members.next_key()? {
            if !filtering && !k.escaped && !names.may_hold(&b[k.key.0 + 1..k.key.1 - 1]) {
                let end = members.pass(k.value)?;
                w.keep(b, (k.key.0, end));
                continue;
            }
            let name = scan::key_name(b, k.key, k.escaped)?;
            let slot = match values.as_deref_mut() {
                Some(values) if reads => self.filters.slot(&name).map(|s| (values, s)),
                _ => None,
            };
            let child = self.tree.child(node, &name);
            if let Some((values, slot)) = slot {
                // Its end is needed now; the last of repeated keys counts,
                // as in JSON.parse.
                let end = members.pass(k.value)?;
                values[slot] = Some((k.value, end));
                members.resume(k.value);
            }
            self.member(b, k, &mut members, child, filtering, &mut w, applied)?;
        }
        w.close(b);
        Ok(members.end())
    }

    /// One member under rule `child` (if any names it).
    #[allow(clippy::too_many_arguments)]
    fn member(
        &self,
        b: &[u8],
        k: Key,
        members: &mut Members<'_>,
        child: Option<usize>,
        filtering: bool,
        w: &mut Writer<'_>,
        applied: &mut Applied,
    ) -> Result<(), Malformed> {
        let node = child.map(|c| (c, &self.tree.nodes[c]));
        let Some((c, n)) = node.filter(|(_, n)| !filtering || n.kept()) else {
            let end = members.pass(k.value)?;
            if filtering {
                applied.removed += 1;
            } else {
                w.keep(b, (k.key.0, end));
            }
            return Ok(());
        };
        if n.remove {
            members.pass(k.value)?;
            applied.removed += 1;
            return Ok(());
        }
        if n.hash {
            let end = members.pass(k.value)?;
            return self.hash_member(b, k.key, (k.value, end), w, applied);
        }
        if !n.children.is_empty() {
            let inner_filtering = filtering && !n.keep_all;
            if b[k.value] == b'{' {
                let out = w.key(b, k.key);
                let end = self.object(b, k.value, c, inner_filtering, None, out, applied)?;
                members.resume(end);
                return Ok(());
            }
            if inner_filtering {
                // Only paths inside it were kept, and it has no inside.
                members.pass(k.value)?;
                applied.removed += 1;
                return Ok(());
            }
        }
        let end = members.pass(k.value)?;
        w.keep(b, (k.key.0, end));
        Ok(())
    }

    fn hash_member(
        &self,
        b: &[u8],
        key: Span,
        value: Span,
        w: &mut Writer<'_>,
        applied: &mut Applied,
    ) -> Result<(), Malformed> {
        let Some(hasher) = &self.hasher else {
            w.keep(b, (key.0, value.1));
            return Ok(());
        };
        let out = w.key(b, key);
        if hasher.write_value_hash(b, value, out)? {
            applied.hashed += 1;
        } else {
            // null, "", [] or {}: nothing to hide, left as it is.
            out.extend_from_slice(&b[value.0..value.1]);
        }
        Ok(())
    }

    /// The top-level `ip` follows `$ip`: removed (or not kept) makes it
    /// null, as the Property Filter app did; hashed hashes it too.
    fn ip(
        &self,
        b: &[u8],
        k: Key,
        members: &mut Members<'_>,
        w: &mut Writer<'_>,
        applied: &mut Applied,
    ) -> Result<(), Malformed> {
        let end = members.pass(k.value)?;
        let node: Option<&Node> = self.tree.child(ROOT, b"$ip").map(|c| &self.tree.nodes[c]);
        let cleared = node.is_some_and(|n| n.remove)
            || (self.tree.keep_mode && !node.is_some_and(Node::kept));
        if cleared {
            if b[k.value] != b'n' {
                applied.removed += 1;
            }
            w.key(b, k.key).extend_from_slice(b"null");
            return Ok(());
        }
        if node.is_some_and(|n| n.hash) {
            return self.hash_member(b, k.key, (k.value, end), w, applied);
        }
        w.keep(b, (k.key.0, end));
        Ok(())
    }
}
