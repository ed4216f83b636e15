//! The cost of the event rules next to decoding, for docs/BENCHMARKS.md:
//! `cargo test --release --lib event::rules_timing -- --ignored --nocapture`.
//! Here rather than in `transform`, which knows nothing of decoding.

/// Per-event cost. Events are the decoder's
/// output for the sample messages (posthog-js, posthog-node, batch
/// exports); the decoder is timed on the same messages for comparison.
#[test]
#[ignore]
fn timing() {
    use std::time::Instant;
    let now = chrono::Utc::now();
    let messages: Vec<Vec<u8>> = (0..88)
        .map(|n| crate::event::sample::captured(1, n, "2024-01-01T00:00:00Z").value)
        .collect();
    let decode = |m: &Vec<u8>, out: &mut Vec<u8>| {
        out.clear();
        crate::event::decode::decode_into(Some(m), crate::config::InputFormat::Auto, now, out)
            .expect("samples decode");
    };
    let events: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            decode(m, &mut out);
            out
        })
        .collect();
    let rules = crate::transform::Rules::parse(
        "$ip,$referrer,$set.email,$initial_referrer,$device_id",
        "",
        "distinct_id,$set.name",
        Some(secrecy::SecretString::from("s3cret")),
        Some(
            r#"{"filters": [[{"property": "$host", "type": "string", "operator": "not_contains", "value": "internal.example"},
                  {"property": "$browser_version", "type": "number", "operator": "gt", "value": 10},
                  {"property": "$lib", "type": "string", "operator": "is_not", "value": "test"}]],
                 "keepUndefinedProperties": "Yes"}"#,
        ),
    )
    .expect("the timing rules parse");
    let mut out = Vec::with_capacity(8192);
    let (mut removed, mut hashed) = (0, 0);
    for e in &events {
        let applied = rules.apply(e, &mut out);
        assert!(applied.dropped.is_none(), "{applied:?}");
        removed += applied.removed;
        hashed += applied.hashed;
    }
    let rounds = 3_000;
    let n = (rounds * events.len()) as u32;
    let started = Instant::now();
    for _ in 0..rounds {
        for m in &messages {
            decode(std::hint::black_box(m), &mut out);
        }
    }
    let decoding = started.elapsed() / n;
    let started = Instant::now();
    for _ in 0..rounds {
        for e in &events {
            std::hint::black_box(rules.apply(std::hint::black_box(e), &mut out));
        }
    }
    let transforming = started.elapsed() / n;
    // The floor of any re-reading: finding where the event's values end.
    let started = Instant::now();
    for _ in 0..rounds {
        for e in &events {
            std::hint::black_box(
                crate::transform::scan::skip_value(std::hint::black_box(e), 0).is_ok(),
            );
        }
    }
    let scanning = started.elapsed() / n;
    let bytes: usize = events.iter().map(Vec::len).sum::<usize>() / events.len();
    println!(
        "{} events of {bytes} bytes on average ({removed} values removed and {hashed} hashed in all); \
         per event: decode {decoding:?}, transform {transforming:?} ({:.0}% of decode; \
         of which scanning the bytes alone {scanning:?})",
        events.len(),
        100.0 * transforming.as_secs_f64() / decoding.as_secs_f64()
    );
}
