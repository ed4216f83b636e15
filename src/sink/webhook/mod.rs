//! Delivery of one batch to the webhook: POST, classify the answer
//! ([`retry`]), wait, try again, until the webhook accepts it or the caller
//! cancels. Retries never give up on their own: a partition whose batch
//! cannot be delivered waits, its lag grows, and the metrics say so.

pub mod retry;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use url::Url;

use crate::config::{redact_url, Config, DlqPolicy, StatusSet};
use crate::ops::metrics::{status_class, Metrics};
use crate::topic_partition::TopicPartition;
use retry::Verdict;

pub const USER_AGENT_VALUE: &str = concat!("patterns-connector/", env!("CARGO_PKG_VERSION"));

/// A shared HTTP client: one connection pool, one global cap on requests in flight.
#[derive(Clone)]
pub struct Webhook {
    http: reqwest::Client,
    url: Url,
    /// Printable form of the URL: its path and query carry the secret.
    url_for_logs: String,
    permits: Arc<Semaphore>,
    backoff_min: Duration,
    backoff_max: Duration,
    /// Statuses that reject events; empty under `DLQ_POLICY=block`, so that
    /// every failure is retried.
    reject: StatusSet,
    /// Content type, user agent, the user's headers and auth: the same on every request.
    headers: HeaderMap,
    signing_secret: Option<Arc<[u8]>>,
    gzip: bool,
    metrics: Arc<Metrics>,
    /// Since when every answer has been a failure to retry (none since the
    /// last success or rejection): shared by every clone.
    failing_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// The header naming a request's batch ([`batch_key`]).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` of the request holding events `start..start +
/// count` of the batch named `batch` (a random number drawn when the batch
/// was sealed): the same for every retry of that request, another for any
/// other range of it (a bisection's halves) and for any other batch. After
/// a crash or a rebalance batches are cut anew, under new keys: `uuid` is
/// the per-event key.
pub fn batch_key(batch: u64, start: usize, count: usize) -> String {
    format!("{batch:016x}-{start}-{count}")
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The webhook refuses these events (a status in `WEBHOOK_REJECT_STATUSES`).
    Rejected {
        status: u16,
        body: String,
    },
}

pub use crate::ops::shutdown::{pause, Cancelled};

/// The outcome of one HTTP attempt.
#[derive(Debug)]
struct Attempt {
    verdict: Verdict,
    /// `2xx`, `4xx`, `timeout`, `connect`, ... for metrics and logs.
    class: &'static str,
    status: Option<u16>,
    /// A short description without the URL.
    detail: String,
}

impl Webhook {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        if config.webhook_gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &config.webhook_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                anyhow::anyhow!("WEBHOOK_HEADERS: {name:?} is not a valid header name")
            })?;
            let mut value = HeaderValue::from_str(value.expose_secret()).map_err(|_| {
                anyhow::anyhow!("WEBHOOK_HEADERS: the value of {name} is not a valid header value")
            })?;
            // Keeps the value out of reqwest's and hyper's debug output.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let url: &Url = config.webhook_url.expose_secret();
        if url.scheme() == "http" && !is_loopback(url) {
            warn!(url = %redact_url(url),
                "PATTERNS_WEBHOOK_URL uses plain http:// to a non-loopback host: events and credentials travel unencrypted");
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.webhook_ca_bundle {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow::anyhow!("WEBHOOK_CA_BUNDLE: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .timeout(config.webhook_timeout)
            .connect_timeout(config.webhook_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            // Never follow redirects: a 301/302 would turn the POST into a GET
            // whose 200 looks like a delivery. A 3xx is retried and logged as
            // a misconfigured URL instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Webhook {
            http,
            url: url.clone(),
            url_for_logs: redact_url(url),
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            backoff_min: config.retry_backoff_min,
            backoff_max: config.retry_backoff_max,
            headers,
            signing_secret: config
                .signing_secret
                .as_ref()
                .map(|s| Arc::from(s.expose_secret().as_bytes())),
            gzip: config.webhook_gzip,
            reject: match config.dlq_policy {
                DlqPolicy::Dlq => config.reject_statuses.clone(),
                DlqPolicy::Block => StatusSet::default(),
            },
            metrics,
            failing_since: Arc::default(),
        })
    }

    /// How long the webhook has answered every request with a failure to
    /// retry (a 5xx, a 429, a timeout, a dropped connection), or `None`
    /// when its last answer was a success or a rejection.
    pub fn failing_for(&self) -> Option<Duration> {
        let since = *self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|since| since.elapsed())
    }

    fn record(&self, failed: bool) {
        let mut since = self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        match (failed, *since) {
            (true, None) => *since = Some(tokio::time::Instant::now()),
            (false, _) => *since = None,
            (true, Some(_)) => {}
        }
    }

    /// Sends `body` (a JSON array) with its batch's `key`, retrying until the
    /// webhook accepts or rejects it (see [`retry::classify_status`]).
    pub async fn send(
        &self,
        body: Bytes,
        key: &str,
        tp: &TopicPartition,
        cancel: &CancellationToken,
    ) -> Result<Sent, Cancelled> {
        let mut attempt: u32 = 0;
        loop {
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Cancelled),
                outcome = self.attempt(body.clone(), key) => outcome,
            };
            self.record(matches!(outcome.verdict, Verdict::Retry { .. }));
            match outcome.verdict {
                Verdict::Delivered => {
                    if attempt > 0 {
                        info!(topic = %tp.topic, partition = tp.partition, attempts = attempt + 1, url = %self.url_for_logs, "webhook accepted the batch after failures");
                    }
                    return Ok(Sent::Delivered);
                }
                Verdict::Rejected => {
                    return Ok(Sent::Rejected {
                        status: outcome.status.unwrap_or_default(),
                        body: outcome.detail,
                    });
                }
                Verdict::Retry {
                    retry_after,
                    suspicious,
                } => {
                    if crate::ops::log_limit::worth_logging(attempt.into()) {
                        if suspicious {
                            error!(topic = %tp.topic, partition = tp.partition, attempt = attempt + 1, status = outcome.status, detail = %outcome.detail,
                                url = %self.url_for_logs,
                                "webhook answered with a status that usually means a wrong URL or credentials; retrying (repeats are logged less often)");
                        } else {
                            warn!(topic = %tp.topic, partition = tp.partition, attempt = attempt + 1, status = outcome.status, class = outcome.class,
                                detail = %outcome.detail, url = %self.url_for_logs,
                                "webhook request failed; retrying (repeats are logged less often)");
                        }
                    }
                    self.wait(attempt, retry_after, cancel).await?;
                }
            }
            self.metrics.webhook_retries.inc();
            attempt = attempt.saturating_add(1);
        }
    }

    async fn wait(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let delay = retry::retry_delay(
            attempt,
            self.backoff_min,
            self.backoff_max,
            retry_after,
            rand::random::<f64>(),
        );
        pause(delay, cancel).await
    }

    async fn attempt(&self, body: Bytes, key: &str) -> Attempt {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.metrics.inflight_requests.inc();
        let started = Instant::now();
        let result = self.request(body, key).send().await;
        let attempt = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read the body so the connection goes back to the pool.
                let text = response.bytes().await.unwrap_or_default();
                Attempt {
                    verdict: retry::classify_status(
                        status,
                        retry_after.as_deref(),
                        SystemTime::now(),
                        &self.reject,
                    ),
                    class: status_class(status),
                    status: Some(status),
                    detail: String::from_utf8_lossy(
                        &text[..text.len().min(crate::sink::dlq::MAX_RESPONSE_BODY)],
                    )
                    .into_owned(),
                }
            }
            Err(e) => {
                let class = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "error"
                };
                Attempt {
                    verdict: Verdict::Retry {
                        retry_after: None,
                        suspicious: false,
                    },
                    class,
                    status: None,
                    // without_url: the URL carries the webhook's secret.
                    detail: error_chain(&e.without_url()),
                }
            }
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.inflight_requests.dec();
        self.metrics
            .http_requests
            .with_label_values(&[attempt.class])
            .inc();
        attempt
    }
}

impl Webhook {
    /// The request for `body`: fixed headers, then the signature (over the
    /// JSON, before gzip), then the body, compressed if asked.
    fn request(&self, body: Bytes, key: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(IDEMPOTENCY_KEY, key);
        if let Some(secret) = &self.signing_secret {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request.header(sign::TIMESTAMP_HEADER, timestamp).header(
                sign::SIGNATURE_HEADER,
                sign::signature(secret, timestamp, &body),
            );
        }
        if self.gzip {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            use std::io::Write as _;
            encoder
                .write_all(&body)
                .expect("writing to a Vec cannot fail");
            let compressed = encoder.finish().expect("writing to a Vec cannot fail");
            return request.body(compressed);
        }
        request.body(body)
    }
}

/// True for `localhost` and loopback addresses, where plain HTTP is fine.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
