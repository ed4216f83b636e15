//! The hot path for capture's messages: one hand-written pass over the
//! envelope that validates it, finds `data` and unescapes it (a `memchr`-driven
//! loop) into a buffer reused across events, one pass over `data` that
//! validates it and records its fields and its properties' fields as byte
//! ranges, then the webhook event written straight into the output.
//!
//! It handles the common shape only, and is exact where it answers: anything
//! unusual (escaped keys, duplicate keys, control characters, deep nesting,
//! lone surrogates, out-of-range exponents, any error) makes it answer
//! [`Unsure`], and the general decoder ([`crate::event::decode`]) decides, so
//! what is accepted, what is refused (with which error) and the output bytes
//! are the general decoder's. Its validation is a strict subset of
//! serde_json's grammar plus `rawjson::check`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;

use chrono::{DateTime, Utc};

use crate::event::rawjson;
use crate::event::timestamp::{self, TimestampInputs};
use crate::event::EventMeta;

/// The fast path cannot vouch for the result: the general decoder decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure;

type Fast<T> = Result<T, Unsure>;

/// Deeper input goes to the general decoder (which refuses past 127 levels).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Envelope,
    Data,
}

/// One object field: its key (inside the quotes, never escaped) and its raw
/// value, as byte ranges of the text `src` names.
#[derive(Debug, Clone, Copy)]
struct Field {
    src: Src,
    key: (usize, usize),
    value: (usize, usize),
}

/// The buffers one thread reuses from event to event.
#[derive(Default)]
struct Scratch {
    data: Vec<u8>,
    envelope: Vec<Field>,
    event: Vec<Field>,
    properties: Vec<Field>,
    objects: [Vec<Field>; 4],
    hashes: Vec<u64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Decodes a captured message (`events_plugin_ingestion`) and appends the
/// webhook event to `out`, or answers [`Unsure`] with `out` as it was.
pub fn decode_captured(
    payload: &[u8],
    wall_clock: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, Unsure> {
    let start = out.len();
    let result = SCRATCH.with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().map_err(|_| Unsure)?;
        decode(payload, wall_clock, &mut scratch, out)
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// The two texts fields point into: the envelope and the unescaped `data`.
#[derive(Clone, Copy)]
struct Texts<'a> {
    envelope: &'a [u8],
    data: &'a [u8],
}

impl<'a> Texts<'a> {
    #[inline]
    fn text(&self, src: Src) -> &'a [u8] {
        match src {
            Src::Envelope => self.envelope,
            Src::Data => self.data,
        }
    }
    #[inline]
    fn key(&self, field: &Field) -> &'a [u8] {
        &self.text(field.src)[field.key.0..field.key.1]
    }
    #[inline]
    fn raw(&self, field: &Field) -> &'a [u8] {
        &self.text(field.src)[field.value.0..field.value.1]
    }
}

#[inline]
fn find<'f>(texts: Texts<'_>, fields: &'f [Field], key: &[u8]) -> Option<&'f Field> {
    fields.iter().find(|f| texts.key(f) == key)
}

fn decode(
    payload: &[u8],
    wall_clock: DateTime<Utc>,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Fast<EventMeta> {
    // Without control bytes, whitespace can only be spaces and no string can
    // hold a raw control character, so strings are scanned for `"` and `\` only.
    match scan_bytes(payload) {
        Bytes::Control => return Err(Unsure),
        Bytes::Ascii => {}
        Bytes::NonAscii => {
            std::str::from_utf8(payload).map_err(|_| Unsure)?;
        }
    }
    let Scratch {
        data,
        envelope: envelope_fields,
        event,
        properties,
        objects,
        hashes,
    } = scratch;
    envelope_fields.clear();
    event.clear();
    properties.clear();

    let mut parser = Parser::new(payload, Src::Envelope);
    parser.space();
    let mut data_len = 0;
    let found = parser.object(
        1,
        envelope_fields,
        Special::Unescape(b"data", &mut *data, &mut data_len),
    )?;
    parser.end()?;
    if found != Found::Once {
        return Err(Unsure);
    }
    // Valid UTF-8 by construction: runs of the (checked) envelope between
    // escapes, and the characters the escapes stand for.
    let data = &data[..data_len];
    let texts = Texts {
        envelope: payload,
        data,
    };

    let mut parser = Parser::new(data, Src::Data);
    parser.space();
    // A `null` or missing `properties` leaves no fields: the same as `{}`.
    parser.object(1, event, Special::Nested(b"properties", &mut *properties))?;
    parser.end()?;
    no_repeated_keys(texts, envelope_fields, hashes)?;
    no_repeated_keys(texts, event, hashes)?;
    no_repeated_keys(texts, properties, hashes)?;
    let properties: &[Field] = properties;

    // The envelope wins over the SDK's fields; its `timestamp` is the event
    // time as is, and an envelope `properties` is left to the general decoder.
    let mut envelope_time = None;
    for field in envelope_fields.iter() {
        match texts.key(field) {
            b"properties" => return Err(Unsure),
            b"timestamp" => {
                envelope_time = as_str(texts.raw(field))
                    .filter(|s| !s.is_empty())
                    .and_then(|s| timestamp::parse_iso(&s));
            }
            key => match event.iter_mut().find(|f| texts.key(f) == key) {
                Some(existing) => *existing = *field,
                None => event.push(*field),
            },
        }
    }

    let event: &[Field] = event;
    let mut keys = EventKeys::default();
    for (i, field) in event.iter().enumerate() {
        keys.see(texts.key(field), i);
    }
    let get = |slot: Option<usize>| slot.map(|i| texts.raw(&event[i]));
    let uuid_raw = get(keys.uuid).ok_or(Unsure)?;
    let uuid = as_str(uuid_raw).filter(|s| !s.is_empty()).ok_or(Unsure)?;
    let name_raw = get(keys.event).ok_or(Unsure)?;
    let name = as_str(name_raw).filter(|s| !s.is_empty()).ok_or(Unsure)?;
    let distinct_id_raw = get(keys.distinct_id).ok_or(Unsure)?;
    let string_field = |slot| get(slot).and_then(as_str).filter(|s| !s.is_empty());
    let ip = string_field(keys.ip);
    let sent_at = string_field(keys.sent_at);

    let mut prop = PropertyKeys::default();
    for (i, field) in properties.iter().enumerate() {
        prop.see(texts.key(field), i);
    }
    let prop_raw = |i: Option<usize>| i.map(|i| texts.raw(&properties[i]));

    let time = match envelope_time {
        Some(time) => time,
        None => {
            let timestamp = string_field(keys.timestamp);
            let now = string_field(keys.now);
            timestamp::event_time(
                &TimestampInputs {
                    timestamp: timestamp.as_deref(),
                    sent_at: sent_at.as_deref(),
                    now: now.as_deref(),
                    offset_ms: get(keys.offset).and_then(as_f64),
                    ignore_sent_at: prop_raw(prop.ignore_sent_at)
                        .and_then(as_bool)
                        .unwrap_or(false),
                },
                wall_clock,
            )
        }
    };
    let token = get(keys.token)
        .or_else(|| prop_raw(prop.token))
        .and_then(as_str)
        .filter(|t| !t.is_empty())
        .map(Cow::into_owned);
    let team_id = get(keys.team_id).and_then(as_i64);

    // Top-level `$set`/`$set_once` objects, and the properties' own, as fields.
    let [set_top, set_once_top, set_base, set_once_base] = objects;
    let top = |slot: Option<usize>, fields: &mut Vec<Field>, hashes: &mut Vec<u64>| {
        fields.clear();
        match slot.map(|i| &event[i]) {
            Some(field) if texts.raw(field).starts_with(b"{") => {
                object_fields(texts, field, fields, hashes)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let has_set = top(keys.set, set_top, hashes)?;
    let has_set_once = top(keys.set_once, set_once_top, hashes)?;
    for (has, at, base) in [
        (has_set, prop.set, &mut *set_base),
        (has_set_once, prop.set_once, &mut *set_once_base),
    ] {
        base.clear();
        if let Some(field) = at.filter(|_| has).map(|i| &properties[i]) {
            if texts.raw(field).starts_with(b"{") {
                object_fields(texts, field, base, hashes)?;
            }
        }
    }
    // `write_merged` compares each key of one with each of the other: large
    // objects on both sides go to the general decoder, which sorts instead.
    if set_base.len() * set_top.len() > MANY_KEYS * MANY_KEYS
        || set_once_base.len() * set_once_top.len() > MANY_KEYS * MANY_KEYS
    {
        return Err(Unsure);
    }

    // Everything is known to be valid: from here on, only writing.
    out.extend_from_slice(b"{\"uuid\":");
    write_str(out, uuid_raw, &uuid);
    out.extend_from_slice(b",\"event\":");
    write_str(out, name_raw, &name);
    out.extend_from_slice(b",\"distinct_id\":");
    match distinct_id_raw.first() {
        Some(b'"') => {
            let id = as_str(distinct_id_raw).ok_or(Unsure)?;
            write_str(out, distinct_id_raw, &id);
        }
        Some(b'-' | b'0'..=b'9') => {
            out.push(b'"');
            out.extend_from_slice(distinct_id_raw);
            out.push(b'"');
        }
        _ => return Err(Unsure),
    }
    out.extend_from_slice(b",\"team_id\":");
    match team_id {
        Some(id) => {
            let _ = write!(out, "{id}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ip\":");
    match &ip {
        Some(ip) => write_str(out, get(keys.ip).unwrap_or_default(), ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp\":\"");
    timestamp::write_iso(out, time);
    out.push(b'"');
    if has_set {
        out.extend_from_slice(b",\"$set\":");
        write_merged(out, texts, &[], set_top);
    }
    if has_set_once {
        out.extend_from_slice(b",\"$set_once\":");
        write_merged(out, texts, &[], set_once_top);
    }

    out.extend_from_slice(b",\"properties\":{");
    let sent_at_raw = get(keys.sent_at).unwrap_or_default();
    for (i, field) in properties.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, texts.key(field));
        if has_set && prop.set == Some(i) {
            write_merged(out, texts, set_base, set_top);
        } else if has_set_once && prop.set_once == Some(i) {
            write_merged(out, texts, set_once_base, set_once_top);
        } else if let (Some(sent_at), true) = (&sent_at, prop.sent_at == Some(i)) {
            write_str(out, sent_at_raw, sent_at);
        } else {
            out.extend_from_slice(texts.raw(field));
        }
    }
    let mut first = properties.is_empty();
    let mut append = |out: &mut Vec<u8>, key: &[u8]| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_key(out, key);
    };
    if has_set && prop.set.is_none() {
        append(out, b"$set");
        write_merged(out, texts, &[], set_top);
    }
    if has_set_once && prop.set_once.is_none() {
        append(out, b"$set_once");
        write_merged(out, texts, &[], set_once_top);
    }
    if let (Some(ip), None) = (&ip, prop.ip) {
        append(out, b"$ip");
        write_str(out, get(keys.ip).unwrap_or_default(), ip);
    }
    if let (Some(sent_at), None) = (&sent_at, prop.sent_at) {
        append(out, b"$sent_at");
        write_str(out, sent_at_raw, sent_at);
    }
    out.extend_from_slice(b"}}");

    Ok(EventMeta {
        uuid: uuid.into_owned(),
        event: name.into_owned(),
        token,
        team_id,
    })
}

/// Where the event's fields hold the keys the decoder reads.
#[derive(Default)]
struct EventKeys {
    uuid: Option<usize>,
    event: Option<usize>,
    distinct_id: Option<usize>,
    ip: Option<usize>,
    sent_at: Option<usize>,
    timestamp: Option<usize>,
    now: Option<usize>,
    offset: Option<usize>,
    token: Option<usize>,
    team_id: Option<usize>,
    set: Option<usize>,
    set_once: Option<usize>,
}

impl EventKeys {
    fn see(&mut self, key: &[u8], i: usize) {
        let slot = match key {
            b"uuid" => &mut self.uuid,
            b"event" => &mut self.event,
            b"distinct_id" => &mut self.distinct_id,
            b"ip" => &mut self.ip,
            b"sent_at" => &mut self.sent_at,
            b"timestamp" => &mut self.timestamp,
            b"now" => &mut self.now,
            b"offset" => &mut self.offset,
            b"token" => &mut self.token,
            b"team_id" => &mut self.team_id,
            b"$set" => &mut self.set,
            b"$set_once" => &mut self.set_once,
            _ => return,
        };
        *slot = Some(i);
    }
}

/// Where the properties hold the keys the decoder reads or replaces.
#[derive(Default)]
struct PropertyKeys {
    set: Option<usize>,
    set_once: Option<usize>,
    ip: Option<usize>,
    sent_at: Option<usize>,
    ignore_sent_at: Option<usize>,
    token: Option<usize>,
}

impl PropertyKeys {
    fn see(&mut self, key: &[u8], i: usize) {
        let slot = match key {
            b"$set" => &mut self.set,
            b"$set_once" => &mut self.set_once,
            b"$ip" => &mut self.ip,
            b"$sent_at" => &mut self.sent_at,
            b"$ignore_sent_at" => &mut self.ignore_sent_at,
            b"token" => &mut self.token,
            _ => return,
        };
        *slot = Some(i);
    }
}

/// The fields of an object value (already validated), checked for repeats.
fn object_fields(
    texts: Texts<'_>,
    field: &Field,
    fields: &mut Vec<Field>,
    hashes: &mut Vec<u64>,
) -> Fast<()> {
    let text = texts.text(field.src);
    let mut parser = Parser::new(&text[..field.value.1], field.src);
    parser.i = field.value.0;
    parser.object(1, fields, Special::None)?;
    no_repeated_keys(texts, fields, hashes)
}

/// Writes `base` with `top` merged in (top wins; new keys after), as the
/// general decoder's `Fields::extend` orders them.
fn write_merged(out: &mut Vec<u8>, texts: Texts<'_>, base: &[Field], top: &[Field]) {
    out.push(b'{');
    let mut first = true;
    for field in base {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        let key = texts.key(field);
        write_key(out, key);
        let value = find(texts, top, key).unwrap_or(field);
        out.extend_from_slice(texts.raw(value));
    }
    for field in top {
        let key = texts.key(field);
        if find(texts, base, key).is_some() {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_key(out, key);
        out.extend_from_slice(texts.raw(field));
    }
    out.push(b'}');
}

/// Writes `"key":`.
#[inline]
fn write_key(out: &mut Vec<u8>, key: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(key);
    out.extend_from_slice(b"\":");
}

/// Writes the string `value` read from `raw`: the raw text itself when it
/// had no escapes (what serde_json would write for it), else re-encoded as
/// the general decoder does. Unescaping always shortens, so equal lengths
/// mean no escapes.
fn write_str(out: &mut Vec<u8>, raw: &[u8], value: &str) {
    if raw.len() == value.len() + 2 {
        out.extend_from_slice(raw);
    } else {
        rawjson::write_str(out, value);
    }
}

/// As `rawjson::as_str`, on raw text.
fn as_str(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

fn is_number(raw: &[u8]) -> bool {
    !matches!(raw.first(), Some(b'{' | b'[' | b'"' | b't' | b'f' | b'n'))
}

fn as_f64(raw: &[u8]) -> Option<f64> {
    is_number(raw)
        .then(|| std::str::from_utf8(raw).ok()?.parse().ok())
        .flatten()
}

fn as_i64(raw: &[u8]) -> Option<i64> {
    is_number(raw)
        .then(|| std::str::from_utf8(raw).ok()?.parse().ok())
        .flatten()
}

fn as_bool(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// Objects with more keys are checked for repeats by sorting their hashes.
const MANY_KEYS: usize = 64;

/// Fails on a key that appears twice (or whose cheap hash repeats: rare, and
/// the general decoder then merges repeated keys exactly).
fn no_repeated_keys(texts: Texts<'_>, fields: &[Field], hashes: &mut Vec<u64>) -> Fast<()> {
    hashes.clear();
    if fields.len() > MANY_KEYS {
        // Past a few dozen keys every bit of `seen` is set and the scan below
        // would compare each key with all before it: sort instead.
        hashes.extend(fields.iter().map(|f| key_hash(texts.key(f))));
        hashes.sort_unstable();
        return match hashes.windows(2).any(|w| w[0] == w[1]) {
            true => Err(Unsure),
            false => Ok(()),
        };
    }
    let mut seen = [0u64; 4];
    for field in fields {
        let hash = key_hash(texts.key(field));
        let bit = (hash >> 56) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if seen[word] & mask != 0 && hashes.contains(&hash) {
            return Err(Unsure);
        }
        seen[word] |= mask;
        hashes.push(hash);
    }
    Ok(())
}

/// A cheap hash of a key from its length and up to three words of it
/// (first, middle, last): PostHog's keys are short, and two different keys
/// sharing all of these only send the event to the general decoder.
#[inline]
fn key_hash(key: &[u8]) -> u64 {
    let word = |at: usize| -> u64 {
        let mut bytes = [0u8; 8];
        let end = (at + 8).min(key.len());
        bytes[..end - at].copy_from_slice(&key[at..end]);
        u64::from_le_bytes(bytes)
    };
    let n = key.len();
    let (first, middle, last) = if n <= 8 {
        (word(0), 0, 0)
    } else {
        (word(0), word((n / 2).saturating_sub(4)), word(n - 8))
    };
    let mut h = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for w in [first, middle, last] {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    h
}

/// What a payload's bytes are, as far as the reader cares.
#[derive(Debug, PartialEq, Eq)]
enum Bytes {
    /// Some byte is below 0x20 (a control character).
    Control,
    /// Printable ASCII only: valid UTF-8 without checking further.
    Ascii,
    NonAscii,
}

/// One pass, in blocks the compiler vectorizes.
fn scan_bytes(bytes: &[u8]) -> Bytes {
    let mut non_ascii = false;
    for block in bytes.chunks(64) {
        let (control, high) = block.iter().fold((false, false), |(c, h), &b| {
            (c | (b < 0x20), h | (b >= 0x80))
        });
        if control {
            return Bytes::Control;
        }
        non_ascii |= high;
    }
    if non_ascii {
        Bytes::NonAscii
    } else {
        Bytes::Ascii
    }
}

/// What an object's special field turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Never,
    Once,
    /// The nested object's field was `null`.
    Null,
}

/// One field of an object read in the same pass, instead of being recorded.
enum Special<'b> {
    None,
    /// A string field, unescaped into the start of the buffer (the unescaped
    /// length goes into the `usize`; the buffer's own length stays larger,
    /// so it is not zeroed again for every event).
    Unescape(&'static [u8], &'b mut Vec<u8>, &'b mut usize),
    /// An object (or null) field, its own fields recorded into the vector.
    Nested(&'static [u8], &'b mut Vec<Field>),
}

/// A strict validating JSON reader over bytes with no control characters:
/// whitespace is spaces only; everything it does not recognise is [`Unsure`].
struct Parser<'s> {
    s: &'s [u8],
    i: usize,
    src: Src,
}

impl<'s> Parser<'s> {
    fn new(s: &'s [u8], src: Src) -> Self {
        Parser { s, i: 0, src }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline]
    fn space(&mut self) {
        while self.s.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }

    fn end(&mut self) -> Fast<()> {
        self.space();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Fast<()> {
        self.space();
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// An object at `depth` (1 for a document's top level): its fields
    /// recorded into `fields` but for the special one, read in place.
    fn object(
        &mut self,
        depth: usize,
        fields: &mut Vec<Field>,
        mut special: Special<'_>,
    ) -> Fast<Found> {
        self.expect(b'{')?;
        let mut found = Found::Never;
        self.space();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(found);
        }
        loop {
            self.space();
            if self.peek() != Some(b'"') {
                return Err(Unsure);
            }
            let key_start = self.i + 1;
            if self.string()? {
                return Err(Unsure);
            }
            let key = (key_start, self.i - 1);
            self.expect(b':')?;
            self.space();
            let name = &self.s[key.0..key.1];
            let handled = match &mut special {
                Special::Unescape(special, buffer, len) if name == *special => {
                    if found != Found::Never || self.peek() != Some(b'"') {
                        return Err(Unsure);
                    }
                    **len = self.unescape_string(buffer)?;
                    found = Found::Once;
                    true
                }
                Special::Nested(special, nested) if name == *special => {
                    if found != Found::Never {
                        return Err(Unsure);
                    }
                    match self.peek() {
                        Some(b'{') => {
                            self.object(depth + 1, nested, Special::None)?;
                            found = Found::Once;
                        }
                        Some(b'n') => {
                            self.literal(b"null")?;
                            found = Found::Null;
                        }
                        _ => return Err(Unsure),
                    }
                    true
                }
                _ => false,
            };
            if !handled {
                let start = self.i;
                self.value(depth)?;
                fields.push(Field {
                    src: self.src,
                    key,
                    value: (start, self.i),
                });
            }
            self.space();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(found);
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// Skips one value inside `depth` containers, validating it.
    fn value(&mut self, depth: usize) -> Fast<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => self.skip_container(depth, b'}', true),
            Some(b'[') => self.skip_container(depth, b']', false),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Unsure),
        }
    }

    fn skip_container(&mut self, depth: usize, close: u8, object: bool) -> Fast<()> {
        if depth + 1 > MAX_DEPTH {
            return Err(Unsure);
        }
        self.i += 1;
        self.space();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.space();
            if object {
                if self.peek() != Some(b'"') {
                    return Err(Unsure);
                }
                self.string()?;
                self.expect(b':')?;
                self.space();
            }
            self.value(depth + 1)?;
            self.space();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Unsure),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Fast<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    /// JSON's number grammar; an exponent must keep the number finite, as
    /// `rawjson::check` requires.
    fn number(&mut self) -> Fast<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Unsure),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Unsure);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Unsure);
            }
            let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| Unsure)?;
            if !text.parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(Unsure);
            }
        }
        Ok(())
    }

    /// A string from its opening quote, validated; true if it holds escapes.
    fn string(&mut self) -> Fast<bool> {
        let mut i = self.i + 1;
        let mut escaped = false;
        loop {
            i = find_quote_or_backslash(self.s, i).ok_or(Unsure)?;
            if self.s[i] == b'"' {
                self.i = i + 1;
                return Ok(escaped);
            }
            escaped = true;
            i = match self.s.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i + 2,
                Some(b'u') => match hex4(self.s, i + 2)? {
                    0xD800..=0xDBFF => {
                        low_surrogate(self.s, i + 6)?;
                        i + 12
                    }
                    0xDC00..=0xDFFF => return Err(Unsure),
                    _ => i + 6,
                },
                _ => return Err(Unsure),
            };
        }
    }

    /// A string from its opening quote, unescaped into `buffer`. An escape
    /// that makes a control character is [`Unsure`], so the unescaped text
    /// has none either.
    ///
    /// `data` is escaped at every quote of the event, every few bytes: the
    /// scan goes 8 bytes at a time and copies whole words into a buffer
    /// sized for them, rather than calling `memchr` and `memcpy` per run.
    fn unescape_string(&mut self, buffer: &mut Vec<u8>) -> Fast<usize> {
        let s = self.s;
        let mut i = self.i + 1;
        let mut w = 0;
        // Unescaping never lengthens; 8 spare bytes for the last word.
        let need = (s.len() - i) + 8;
        if buffer.len() < need {
            buffer.resize(need, 0);
        }
        loop {
            match word_at(s, i) {
                Some(word) => {
                    buffer[w..w + 8].copy_from_slice(&word);
                    let found = quote_or_backslash(u64::from_le_bytes(word));
                    if found == 0 {
                        i += 8;
                        w += 8;
                        continue;
                    }
                    let n = (found.trailing_zeros() / 8) as usize;
                    i += n;
                    w += n;
                }
                None => {
                    let &byte = s.get(i).ok_or(Unsure)?;
                    if byte != b'"' && byte != b'\\' {
                        buffer[w] = byte;
                        i += 1;
                        w += 1;
                        continue;
                    }
                }
            }
            if s[i] == b'"' {
                self.i = i + 1;
                return Ok(w);
            }
            let byte = match s.get(i + 1) {
                Some(b'"') => b'"',
                Some(b'\\') => b'\\',
                Some(b'/') => b'/',
                Some(b'u') => {
                    let unit = hex4(s, i + 2)?;
                    let (code, len) = match unit {
                        0xD800..=0xDBFF => {
                            let low = low_surrogate(s, i + 6)?;
                            let high = u32::from(unit - 0xD800) << 10;
                            (0x10000 + high + u32::from(low - 0xDC00), 12)
                        }
                        0xDC00..=0xDFFF | 0..=0x1F => return Err(Unsure),
                        _ => (u32::from(unit), 6),
                    };
                    let c = char::from_u32(code).ok_or(Unsure)?;
                    let bytes = c.encode_utf8(&mut [0; 4]).len();
                    c.encode_utf8(&mut buffer[w..w + bytes]);
                    w += bytes;
                    i += len;
                    continue;
                }
                _ => return Err(Unsure),
            };
            buffer[w] = byte;
            w += 1;
            i += 2;
        }
    }
}

/// The 8 bytes at `i`, if there are 8.
#[inline]
fn word_at(s: &[u8], i: usize) -> Option<[u8; 8]> {
    s.get(i..i + 8)?.try_into().ok()
}

/// A word with the high bit set in each byte that is `"` or `\`; the
/// lowest set bit marks the first such byte exactly (a borrow only carries
/// upwards from a matching byte).
#[inline]
fn quote_or_backslash(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash)) & HIGH
}

/// The first `"` or `\` at or after `i`: 8 bytes at a time (most strings
/// here are short, where `memchr`'s set-up costs more than it saves), then
/// `memchr` once a string proves long.
#[inline]
fn find_quote_or_backslash(s: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..4 {
        let Some(word) = word_at(s, i) else {
            return s
                .get(i..)?
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|n| i + n);
        };
        let found = quote_or_backslash(u64::from_le_bytes(word));
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', s.get(i..)?).map(|n| i + n)
}

/// Four hex digits at `at`.
fn hex4(s: &[u8], at: usize) -> Fast<u16> {
    let digits = s.get(at..at + 4).ok_or(Unsure)?;
    digits.iter().try_fold(0u16, |acc, &b| {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(Unsure),
        };
        Ok(acc << 4 | u16::from(v))
    })
}

/// A `\uDC00`..`\uDFFF` escape at `at`, completing a surrogate pair.
fn low_surrogate(s: &[u8], at: usize) -> Fast<u16> {
    if s.get(at..at + 2) != Some(b"\\u") {
        return Err(Unsure);
    }
    match hex4(s, at + 2)? {
        low @ 0xDC00..=0xDFFF => Ok(low),
        _ => Err(Unsure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Fast<()> {
        let mut parser = Parser::new(text.as_bytes(), Src::Data);
        parser.space();
        parser.value(0)?;
        parser.end()
    }

    #[test]
    fn the_reader_accepts_only_what_serde_json_and_check_accept() {
        for text in [
            r#"{"a":[1,-2.5e3,0.1,-0,12345678901234567890123],"s":"\ud83d\ude00 \\ud800 \"[[[\""}"#,
            "[]",
            " { } ",
            r#""\u00e9\/\b\f\n\r\t""#,
            "[true,false,null,{\"a\":[]}]",
        ] {
            assert_eq!(parse(text), Ok(()), "{text}");
            serde_json::from_str::<serde_json::Value>(text).expect("serde_json agrees");
        }
        for text in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e999",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\"}",
            "tru",
            "nul",
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\x""#,
            r#""\u12g4""#,
            "\"open",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "[1]]",
        ] {
            assert_eq!(parse(text), Err(Unsure), "{text}");
        }
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(&deep), Err(Unsure));
    }

    #[test]
    fn an_object_of_many_keys_is_checked_for_repeats_by_sorting() {
        let message = |keys: &[String]| {
            let props: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
            let data = format!(r#"{{"event":"e","properties":{{{}}}}}"#, props.join(","));
            serde_json::json!({"uuid": "u", "distinct_id": "d", "data": data}).to_string()
        };
        let now = chrono::Utc::now();
        let mut keys: Vec<String> = (0..5_000).map(|n| format!("k{n}")).collect();
        let mut out = Vec::new();
        assert!(decode_captured(message(&keys).as_bytes(), now, &mut out).is_ok());
        keys.push("k17".to_owned());
        out.clear();
        assert_eq!(
            decode_captured(message(&keys).as_bytes(), now, &mut out).map(|_| ()),
            Err(Unsure),
            "a repeated key among many goes to the general decoder"
        );
    }

    #[test]
    fn unescaping_matches_serde_json_and_refuses_control_characters() {
        for text in [
            r#""plain""#,
            r#""{\"a\":\"\\\"q\\\"\"}""#,
            r#""\u00e9\ud83d\ude00\/\\""#,
            r#""""#,
            r#""a long string, longer than a word or two: \"quoted\" \\ and \u00e9 at the end""#,
        ] {
            let mut parser = Parser::new(text.as_bytes(), Src::Envelope);
            let mut buffer = vec![b'x'; 3];
            let len = parser.unescape_string(&mut buffer).expect("unescapes");
            let expected: String = serde_json::from_str(text).expect("valid");
            assert_eq!(&buffer[..len], expected.as_bytes(), "{text}");
        }
        for text in [r#""a\nb""#, r#""\u001f""#, r#""\ud800""#, r#""\q""#, "\"x"] {
            let mut parser = Parser::new(text.as_bytes(), Src::Envelope);
            assert_eq!(
                parser.unescape_string(&mut Vec::new()),
                Err(Unsure),
                "{text}"
            );
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_quote_or_backslash() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for len in 0..80 {
            for _ in 0..50 {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        *[b'a', b'"', b'\\', b'!', b']', 0xff, 0x80, b'#']
                            .get((rng % 40) as usize)
                            .unwrap_or(&b'x')
                    })
                    .collect();
                for start in 0..=len {
                    let expected = text[start..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\')
                        .map(|n| start + n);
                    assert_eq!(
                        find_quote_or_backslash(&text, start),
                        expected,
                        "{text:?} {start}"
                    );
                }
            }
        }
    }

    #[test]
    fn control_and_non_ascii_bytes_are_found_anywhere() {
        let mut bytes = vec![b'a'; 200];
        assert_eq!(scan_bytes(&bytes), Bytes::Ascii);
        for at in [0, 63, 64, 130, 199] {
            bytes[at] = b'\n';
            assert_eq!(scan_bytes(&bytes), Bytes::Control, "{at}");
            bytes[at] = 0xc3;
            assert_eq!(scan_bytes(&bytes), Bytes::NonAscii, "{at}");
            bytes[at + 1 - at / 199] = 0x1f;
            assert_eq!(scan_bytes(&bytes), Bytes::Control, "{at}");
            bytes[at] = b'a';
            bytes[at + 1 - at / 199] = b'a';
        }
    }
}
