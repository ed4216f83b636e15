//! Secret option values: the webhook URL (its path and query carry
//! Patterns' token), auth headers, the signing secret and the SASL password.
//! They live in `secrecy`'s boxes, whose `Debug` prints no value and which
//! have no `Display` or `Serialize`: a secret reaches a log line or the
//! start-up summary only through an explicit `expose_secret()`.

use std::ops::Deref;

use secrecy::zeroize::Zeroize;
use secrecy::{CloneableSecret, SecretBox, SecretString};
use url::Url;

/// The webhook URL, whole (token included).
pub type WebhookUrl = SecretBox<SecretUrl>;

/// A URL that `secrecy` may hold: zeroized when dropped.
#[derive(Clone)]
pub struct SecretUrl(Url);

impl SecretUrl {
    pub fn new(url: Url) -> Self {
        SecretUrl(url)
    }
}

impl Deref for SecretUrl {
    type Target = Url;

    fn deref(&self) -> &Url {
        &self.0
    }
}

impl Zeroize for SecretUrl {
    fn zeroize(&mut self) {
        // A Url owns one String, its serialization: swap in a blank URL and
        // wipe that String.
        if let Ok(blank) = Url::parse("http://0/") {
            String::from(std::mem::replace(&mut self.0, blank)).zeroize();
        }
    }
}

impl CloneableSecret for SecretUrl {}

/// The webhook URL with its path and query hidden: Patterns' webhook URLs carry
/// their secret there. Only scheme, host and port remain.
pub fn redact_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = if url.path() != "/" || url.query().is_some() {
        "/<redacted>"
    } else {
        "/"
    };
    format!("{}://{host}{port}{hidden}", url.scheme())
}

/// What a `*_FILE` option read: None when its path was blank (not given).
#[derive(Clone)]
pub struct SecretFile(pub Option<SecretString>);

/// The secret from `file` if given, else `value`; None when empty. A file
/// wins over the inline value, even when it holds nothing.
pub fn choose(value: &SecretString, file: Option<&SecretFile>) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    let secret = match file.and_then(|f| f.0.as_ref()) {
        Some(from_file) => from_file,
        None => value,
    };
    (!secret.expose_secret().is_empty()).then(|| secret.clone())
}
