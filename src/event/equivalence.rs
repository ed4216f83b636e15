//! The fast path against the general decoder (the decoder as it was before
//! the fast path, kept unchanged as `decode::decode_into_general`): on every
//! fixture, sample and edge case, and on thousands of deterministic
//! mutations of them, both give the same result (the same `EventMeta`, or the
//! same error) and the same output bytes, in every input format.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::InputFormat;
use crate::event::decode::{decode_into, decode_into_general, DecodeError};
use crate::event::{fast, sample, timestamp};

const CAPTURE: &str = include_str!("../../tests/fixtures/posthog-capture-kafka-messages.jsonl");
const CAPTURE_RS: &str =
    include_str!("../../tests/fixtures/posthog-capture-rs-2024-messages.jsonl");

fn wall_clock() -> DateTime<Utc> {
    timestamp::parse_iso("2030-01-01T00:00:00Z").expect("valid")
}

/// Tallies of what the cases exercised.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    fast: usize,
    accepted: usize,
    refused: std::collections::BTreeMap<&'static str, usize>,
}

/// Decodes `payload` both ways in every format and asserts they agree.
fn agree(payload: &[u8], tally: &mut Tally) {
    tally.cases += 1;
    for format in [
        InputFormat::Auto,
        InputFormat::Captured,
        InputFormat::Clickhouse,
    ] {
        // A non-empty buffer: both must append, and the fast path must leave
        // it as it was when it gives up.
        let mut new = b"[prior event],".to_vec();
        let mut reference = new.clone();
        let got = decode_into(Some(payload), format, wall_clock(), &mut new);
        let expected = decode_into_general(Some(payload), format, wall_clock(), &mut reference);
        assert_eq!(
            got,
            expected,
            "{format:?}: {}",
            String::from_utf8_lossy(payload)
        );
        if expected.is_ok() {
            assert_eq!(
                String::from_utf8_lossy(&new),
                String::from_utf8_lossy(&reference),
                "{format:?}: {}",
                String::from_utf8_lossy(payload)
            );
        }
        if format == InputFormat::Auto {
            match &expected {
                Ok(_) => tally.accepted += 1,
                Err(e) => *tally.refused.entry(e.reason()).or_default() += 1,
            }
            let mut out = Vec::new();
            if fast::decode_captured(payload, wall_clock(), &mut out).is_ok() {
                tally.fast += 1;
            }
        }
    }
}

fn fixture_messages(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let mut row: Value = serde_json::from_str(line).expect("fixture lines are JSON");
            row["message"].take()
        })
        .collect()
}

/// The fixtures' messages, sample messages, and the unit tests' edge cases.
fn corpus() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = fixture_messages(CAPTURE)
        .iter()
        .chain(&fixture_messages(CAPTURE_RS))
        .map(|m| serde_json::to_vec(m).expect("json"))
        .collect();
    all.extend((0..300).map(|n| sample::captured(3, n, "2024-01-01T00:00:00Z").value));
    let edge = [
        r#"{"uuid":"u1","distinct_id":"d1","ip":null,"now":"2024-01-01T00:00:00Z","sent_at":"","token":"phc_x","data":"{\"event\":\"$identify\",\"properties\":{\"$set\":{\"a\":1,\"b\":1}},\"$set\":{\"b\":2},\"$set_once\":{\"c\":3}}"}"#,
        r#"{"uuid":"u1","distinct_id":"outer","ip":"1.2.3.4","now":"2024-01-01T00:00:10Z","sent_at":"2024-01-01T00:00:05Z","token":"phc_x","team_id":7,"event":"signed up","timestamp":"2024-01-01T00:00:09.500Z","is_cookieless_mode":false,"data":"{\"event\":\"signed up\",\"distinct_id\":\"inner\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"properties\":{\"$ip\":\"9.9.9.9\",\"plan\":\"pro\"}}"}"#,
        r#"{"uuid":"u1","distinct_id":42,"now":"2024-01-01T00:00:00Z","data":"{\"event\":\"e\",\"properties\":{}}"}"#,
        r#"{"uuid":"0190f1b2-0000-7000-8000-000000000001","event":"$pageview","team_id":2,"distinct_id":"d1","properties":"{\"$current_url\":\"https://example.com/\",\"$ip\":\"10.0.0.1\"}","timestamp":"2024-05-01 12:34:56.789000","elements_chain":"a:href=\"/\"nth-child=\"1\"","person_id":"p-1","person_properties":"{\"email\":\"a@example.com\"}","person_created_at":"2024-01-01 00:00:00"}"#,
        "\u{ff}\u{fe}",
        "not json",
        "[1,2]",
        r#"{"foo":1}"#,
        r#"{"data":"{oops","uuid":"u"}"#,
        r#"{"data":"{}","uuid":"u","distinct_id":"d"}"#,
        r#"{"data":"{\"event\":5}","uuid":"u","distinct_id":"d"}"#,
        r#"{"uuid":"u","event":"e","distinct_id":"d","properties":"{}","timestamp":"2024-01-01 00:00:00"}"#,
        r#" {"uuid":"u","distinct_id":"d","data":" {\"event\":\"e\", \"properties\" : {\"a\" : [1, 2] , \"b\":{ }} } " } "#,
        r#"{"uuid":"u\u00e9\"","distinct_id":"d\/","ip":"\u0031.2.3.4","sent_at":"2024-01-01T00:00:0\u0031Z","data":"{\"event\":\"\\u00e9\\\"\",\"properties\":{\"$sent_at\":1,\"$ip\":null}}"}"#,
    ];
    all.extend(edge.iter().map(|e| e.as_bytes().to_vec()));
    all.push(b"{\xff\"data\":1}".to_vec());
    all
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes worth inserting or substituting anywhere.
const BYTES: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\n",
    b"\t",
    b"\0",
    b"0",
    b"-",
    b"e",
    b"E",
    b".",
    b"+",
    b"n",
    b"\xff",
    b"\xc3\xa9",
    b"\\u00e9",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\n",
    b"\\\"",
    b"\\\\",
    b"\\/",
    b"\\u0000",
    b"\\x",
    b"\x7f",
];

/// Fields worth inserting into `data` (after a `{` or `,`).
fn data_fields() -> Vec<String> {
    let mut fields: Vec<String> = [
        r#""uuid":"dup","#,
        r#""uuid":"","#,
        r#""uuid":5,"#,
        r#""event":"dup","#,
        r#""event":null,"#,
        r#""distinct_id":7,"#,
        r#""distinct_id":-0.5,"#,
        r#""distinct_id":null,"#,
        r#""distinct_id":true,"#,
        r#""distinct_id":"d\u00e9\"","#,
        r#""properties":null,"#,
        r#""properties":[1],"#,
        r#""properties":"s","#,
        r#""properties":{"a":1,"a":2},"#,
        r#""properties":{"$set":{"x":0,"w":1},"$set_once":7,"token":"phc_p","$ip":"p"},"#,
        r#""$set":{"x":1,"y":{"z":[]}},"#,
        r#""$set":{"x":1,"x":2},"#,
        r#""$set":{"k\u0041":1},"#,
        r#""$set_once":{"q":"\u00e9"},"#,
        r#""$set":5,"#,
        r#""$set_once":{},"#,
        r#""timestamp":"2024-01-01T00:00:00Z","#,
        r#""timestamp":"","#,
        r#""timestamp":"garbage","#,
        r#""timestamp":"2024-01-01T00:00:00+05:00","#,
        r#""timestamp":"+12345-01-01T00:00:00Z","#,
        r#""offset":1500,"#,
        r#""offset":1e400,"#,
        r#""offset":-0.5,"#,
        r#""token":5,"#,
        r#""token":"phc_t","#,
        r#""token":"","#,
        r#""team_id":3,"#,
        r#""team_id":1.0,"#,
        r#""team_id":"4","#,
        r#""team_id":9223372036854775808,"#,
        r#""ip":"1.2.3.4","#,
        r#""ip":"","#,
        r#""ip":null,"#,
        r#""ip":"a\"b","#,
        r#""sent_at":"2024-01-01T00:00:01Z","#,
        r#""sent_at":"","#,
        r#""sent_at":"\u0032024-01-01T00:00:01Z","#,
        r#""now":"2024-01-01T00:00:05Z","#,
        r#""now":"bad","#,
        r#""$ip":"5.6.7.8","#,
        r#""$sent_at":"x","#,
        r#""$ignore_sent_at":true,"#,
        r#""$ignore_sent_at":"yes","#,
        r#""k\u0041":1,"#,
        r#""k\n":1,"#,
        r#""n":1e308,"#,
        r#""n":1e309,"#,
        r#""n":-1E-400,"#,
        r#""n":2.5E+10,"#,
        r#""n":01,"#,
        r#""n":1.,"#,
        r#""n":-,"#,
        r#""s":"\ud800","#,
        r#""s":"\ud83d\ude00","#,
        r#""s":"\udc00","#,
        r#""s":"\ud800\u0041","#,
        r#""s":"a\u0000b","#,
        "\"s\":\"tab\there\",",
        "\"s\":\"nl\nhere\",",
        r#""s":"\/","#,
        r#" "sp" : 1 , "#,
        r#""a":1,,"#,
        r#""a":tru,"#,
        r#""a":[1,],"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fields.push(format!("\"n\":{},", "9".repeat(400)));
    for depth in [62, 63, 64, 65, 100, 125, 126, 127, 128] {
        fields.push(format!(
            "\"deep\":{}1{},",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
        fields.push(format!(
            "\"deep\":{}{},",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        ));
    }
    fields
}

/// Fields worth inserting into the envelope.
fn envelope_fields() -> Vec<String> {
    let mut fields: Vec<String> = [
        r#""timestamp":"2024-01-01T00:00:09.5Z","#,
        r#""timestamp":5,"#,
        r#""timestamp":"","#,
        r#""timestamp":"nope","#,
        r#""properties":{"p":1},"#,
        r#""properties":null,"#,
        r#""data":"{}","#,
        r#""data":5,"#,
        r#""data":null,"#,
        r#""token":"phc_env","#,
        r#""token":null,"#,
        r#""uuid":"env","#,
        r#""uuid":"","#,
        r#""event":"env","#,
        r#""distinct_id":12,"#,
        r#""distinct_id":{},"#,
        r#""team_id":7,"#,
        r#""team_id":-7,"#,
        r#""$set":{"e":1},"#,
        r#""$set_once":{"e":[1]},"#,
        r#""ip":null,"#,
        r#""ip":"4.4.4.4","#,
        r#""sent_at":"2024-01-01T00:00:01Z","#,
        r#""now":"2024-01-01T00:00:02Z","#,
        r#""offset":10,"#,
        r#""x":"\ud800","#,
        r#""x":"\ud83d\ude00","#,
        r#""x":1e999,"#,
        r#""x":-1e-999,"#,
        r#""x\u0041":1,"#,
        r#" "sp" : 1 , "#,
        "\"x\":\"a\tb\",",
        "\r\n\"x\":1,",
        r#""x":[1,],"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for depth in [62, 63, 64, 126, 127, 128] {
        fields.push(format!(
            "\"deep\":{}1{},",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
    }
    fields
}

/// Positions just after a `{` or `,` (where a field may start).
fn field_starts(text: &[u8]) -> Vec<usize> {
    text.iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'{' | b','))
        .map(|(i, _)| i + 1)
        .collect()
}

fn insert(text: &[u8], at: usize, piece: &[u8]) -> Vec<u8> {
    let mut out = text[..at].to_vec();
    out.extend_from_slice(piece);
    out.extend_from_slice(&text[at..]);
    out
}

/// One random byte-level change: delete, insert, replace, truncate, repeat.
fn mutate_bytes(text: &[u8], rng: &mut Rng) -> Vec<u8> {
    let at = rng.below(text.len() + 1);
    match rng.below(5) {
        0 if at < text.len() => [&text[..at], &text[at + 1..]].concat(),
        1 => {
            let piece: &[u8] = rng.pick::<&[u8]>(BYTES);
            insert(text, at, piece)
        }
        2 if at < text.len() => {
            let piece: &[u8] = rng.pick::<&[u8]>(BYTES);
            [&text[..at], piece, &text[at + 1..]].concat()
        }
        3 => text[..at].to_vec(),
        _ => {
            let end = (at + 1 + rng.below(40)).min(text.len());
            insert(text, end, &text[at..end])
        }
    }
}

/// The message with its `data` string replaced (encoded by serde_json).
fn with_data(message: &Value, data: &[u8]) -> Option<Vec<u8>> {
    let data = std::str::from_utf8(data).ok()?;
    let mut message = message.clone();
    message["data"] = Value::String(data.to_owned());
    serde_json::to_vec(&message).ok()
}

#[test]
fn the_fast_path_agrees_with_the_general_decoder_on_every_fixture_and_sample() {
    let mut tally = Tally::default();
    for payload in corpus() {
        agree(&payload, &mut tally);
    }
    eprintln!("corpus: {tally:?}");
    assert_eq!(tally.cases, 88 + 660 + 300 + 15);
    // The fast path answers for every real capture message and sample.
    assert!(tally.fast >= 88 + 660 + 300, "{tally:?}");
}

#[test]
fn the_fast_path_agrees_with_the_general_decoder_on_mutated_messages() {
    let messages: Vec<Value> = fixture_messages(CAPTURE)
        .into_iter()
        .chain(fixture_messages(CAPTURE_RS).into_iter().step_by(10))
        .collect();
    let data_pieces = data_fields();
    let envelope_pieces = envelope_fields();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut tally = Tally::default();
    for message in &messages {
        let payload = serde_json::to_vec(message).expect("json");
        let data = message["data"].as_str().unwrap_or_default().as_bytes();
        // Every field inserted into `data` and into the envelope, at a random place.
        let starts = field_starts(data);
        for piece in &data_pieces {
            let at = *rng.pick(&starts);
            if let Some(mutated) = with_data(message, &insert(data, at, piece.as_bytes())) {
                agree(&mutated, &mut tally);
            }
        }
        let starts = field_starts(&payload);
        for piece in &envelope_pieces {
            let at = *rng.pick(&starts);
            agree(&insert(&payload, at, piece.as_bytes()), &mut tally);
            // And first, before `data` may be reached.
            agree(&insert(&payload, 1, piece.as_bytes()), &mut tally);
        }
        // Random byte-level changes of `data` and of the envelope, one to three at a time.
        for _ in 0..40 {
            let mut mutated = data.to_vec();
            for _ in 0..1 + rng.below(3) {
                mutated = mutate_bytes(&mutated, &mut rng);
            }
            if let Some(mutated) = with_data(message, &mutated) {
                agree(&mutated, &mut tally);
            }
            let mut mutated = payload.clone();
            for _ in 0..1 + rng.below(3) {
                mutated = mutate_bytes(&mutated, &mut rng);
            }
            agree(&mutated, &mut tally);
        }
        // Truncations of the envelope at regular steps.
        for at in (0..payload.len()).step_by(97) {
            agree(&payload[..at], &mut tally);
        }
    }
    eprintln!("mutations: {tally:?}");
    assert!(tally.cases > 20_000, "{tally:?}");
    // Both sides were exercised: accepted by the fast path, and refused.
    assert!(tally.fast > tally.cases / 4, "{tally:?}");
    assert!(tally.refused.len() >= 5, "{tally:?}");
}

#[test]
fn messages_the_fast_path_leaves_to_the_general_decoder_still_decode() {
    // Duplicate keys, escaped keys and an envelope `properties`: answered by
    // the general decoder, with its result.
    for payload in [
        r#"{"uuid":"u","uuid":"v","distinct_id":"d","data":"{\"event\":\"e\"}"}"#,
        r#"{"uuid":"u","distinct_id":"d","data":"{\"event\":\"e\",\"properties\":{\"k\\u0041\":1}}"}"#,
        r#"{"uuid":"u","distinct_id":"d","properties":{"p":1},"data":"{\"event\":\"e\"}"}"#,
    ] {
        let mut out = Vec::new();
        assert_eq!(
            fast::decode_captured(payload.as_bytes(), wall_clock(), &mut out),
            Err(fast::Unsure),
            "{payload}"
        );
        assert!(out.is_empty());
        let mut out = Vec::new();
        decode_into(
            Some(payload.as_bytes()),
            InputFormat::Auto,
            wall_clock(),
            &mut out,
        )
        .expect("the general decoder decodes it");
        let event: Value = serde_json::from_slice(&out).expect("json");
        assert!(event["properties"].is_object());
    }
    assert_eq!(
        decode_into(None, InputFormat::Auto, wall_clock(), &mut Vec::new()),
        Err(DecodeError::Empty)
    );
}

#[test]
fn a_now_at_the_end_of_chronos_range_decodes_both_ways_without_a_panic() {
    // `now + 23 h` overflowed chrono inside the future-time check, on both
    // paths, and the panic stopped the partition's worker.
    let mut tally = Tally::default();
    for payload in [
        r#"{"uuid":"u","distinct_id":"d","now":"+262142-12-31T23:59:59","data":"{\"event\":\"e\"}"}"#,
        r#"{"uuid":"u","distinct_id":"d","data":"{\"event\":\"e\",\"now\":\"+262142-12-31 01:00:00\"}"}"#,
    ] {
        agree(payload.as_bytes(), &mut tally);
    }
    assert_eq!(tally.accepted, 2, "{tally:?}");
}

#[test]
fn objects_with_thousands_of_keys_and_a_repeat_decode_alike_both_ways() {
    // The sizes a message's author could choose to make merging compare
    // every key with every other (seconds per message before): both
    // decoders now sort instead, and still agree.
    let keys = |prefix: &str, n: usize| -> String {
        (0..n).map(|i| format!("\"{prefix}{i}\":{i},")).collect()
    };
    let data = format!(
        "{{{}\"event\":\"e\",\"$set\":{{{}\"s1\":0}},\"properties\":{{{}\"p1\":2,\"$set\":{{{}\"s1\":1}}}}}}",
        keys("d", 3_000),
        keys("s", 3_000),
        keys("p", 3_000),
        keys("s", 2_000),
    );
    let payload = format!(
        r#"{{"uuid":"u","distinct_id":"d","now":"2024-01-01T00:00:00Z","data":{}}}"#,
        serde_json::to_string(&data).expect("a string")
    );
    let mut tally = Tally::default();
    agree(payload.as_bytes(), &mut tally);
    assert_eq!(tally.accepted, 1, "{tally:?}");
}
