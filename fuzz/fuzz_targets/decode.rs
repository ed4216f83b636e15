//! Fuzzes the decoder with arbitrary message values: it must never panic,
//! whatever it accepts must encode to a JSON object with the fields the
//! webhook relies on, and the decoder (its fast path first) must give exactly
//! what the general decoder alone gives: the same result or error, the same
//! bytes.
//!
//! The decoder's source files are compiled in directly (they depend only on serde,
//! serde_json, thiserror and chrono), so the fuzz build does not need librdkafka, whose
//! C build does not survive the sanitizer flags.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The one item of `config` the decoder uses.
mod config {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InputFormat {
        Auto,
        Captured,
        Clickhouse,
    }
}
#[path = "../../src/event/timestamp.rs"]
mod timestamp;
#[path = "../../src/event/rawjson.rs"]
mod rawjson;
#[path = "../../src/event/decode.rs"]
mod decode;
#[path = "../../src/event/fast.rs"]
mod fast;
#[path = "../../src/event/meta.rs"]
pub mod meta;

/// The crate's `event` folder, as far as the decoder needs it.
pub mod event {
    pub use super::meta::EventMeta;
    pub(crate) use super::{fast, rawjson, timestamp};
}

use config::InputFormat;

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    for format in [InputFormat::Auto, InputFormat::Captured, InputFormat::Clickhouse] {
        let mut general = Vec::new();
        let expected = decode::decode_into_general(Some(data), format, now, &mut general);
        let mut out = Vec::new();
        let got = decode::decode_into(Some(data), format, now, &mut out);
        assert_eq!(got, expected, "{format:?}");
        if expected.is_ok() {
            assert_eq!(out, general, "{format:?}");
        }
        if let Ok(event) = decode::decode(Some(data), format, now) {
            let value: serde_json::Value =
                serde_json::from_slice(&event.json).expect("decoder emits JSON");
            assert!(value["uuid"].is_string() && value["event"].is_string());
            assert!(value["distinct_id"].is_string() && value["timestamp"].is_string());
            assert!(value["properties"].is_object());
        }
    }
});
