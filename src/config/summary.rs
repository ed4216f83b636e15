//! The start-up summary, derived from the options' declaration: `Config`
//! serializes each option to what the summary shows (secret types have no
//! `Serialize`, so each secret field says how it is shown, or is skipped),
//! and clap's declaration gives the order and the environment names.

use std::fmt;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;
use serde_json::Value;

use super::secret::{redact_url, WebhookUrl};
use super::values::Headers;
use super::{Config, KafkaProperties};

/// `(ENV_NAME, shown value)` for each option the summary shows, in the
/// order of the declaration.
pub fn summary(config: &Config) -> Vec<(String, String)> {
    let values = match serde_json::to_value(config) {
        Ok(Value::Object(values)) => values,
        // Strings, numbers and lists only: cannot fail.
        _ => return Vec::new(),
    };
    let declaration = Config::augment_args(clap::Command::new("summary"));
    declaration
        .get_arguments()
        .filter_map(|arg| {
            let value = values.get(arg.get_id().as_str())?;
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some((env, shown(value)))
        })
        .collect()
}

fn shown(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(super) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(super) fn debug<T: fmt::Debug, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

/// Scheme, host and port only.
pub(super) fn url<S: Serializer>(url: &WebhookUrl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url.expose_secret()))
}

/// Names only.
pub(super) fn headers<S: Serializer>(headers: &Headers, s: S) -> Result<S::Ok, S::Error> {
    let names: Vec<String> = headers
        .iter()
        .map(|(name, _)| format!("{name}: <redacted>"))
        .collect();
    s.serialize_str(&names.join("; "))
}

pub(super) fn properties<S: Serializer>(p: &KafkaProperties, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::kafka_properties::redacted(p))
}

/// `<redacted>` when set.
pub(super) fn secret<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_some() { "<redacted>" } else { "" })
}

/// `set` when set.
pub(super) fn set<T, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_some() { "set" } else { "" })
}
