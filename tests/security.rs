//! Webhook authentication and integrity, and secrets kept out of logs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(90);

/// Runs the README's verification script on a request.
fn verify(secret: &str, request: &Request, body: &[u8]) -> bool {
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/verify_signature.py"
        ))
        .args([
            secret,
            &request.headers["x-patterns-connector-timestamp"],
            &request.headers["x-patterns-connector-signature"],
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body)
            .expect("write");
    }
    child.wait().expect("wait").success()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_carry_custom_headers_a_bearer_token_a_verifiable_signature_and_gzip() {
    let (topic, group) = (unique("auth"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("secrets"));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "bearer-TOKEN-789\n").expect("write");
    let secret = "whsec-SIGNING-456";
    produce(&topic, run_id(), 0..120).await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            (
                "WEBHOOK_HEADERS",
                "X-Api-Key: apikey-SECRET-123; X-Team: data",
            ),
            (
                "WEBHOOK_BEARER_TOKEN_FILE",
                token_file.to_str().expect("utf8"),
            ),
            ("WEBHOOK_SIGNING_SECRET", secret),
            ("WEBHOOK_GZIP", "true"),
            ("KAFKA_SASL_PASSWORD", "kafka-PASSWORD-000"),
            ("KAFKA_PROPERTIES", "sasl.username=someone"),
            ("BATCH_MAX_EVENTS", "50"),
        ],
    );
    eventually(WAIT, "all events delivered", || {
        receiver.delivered_uuids().len() == 120
    })
    .await;

    for request in receiver.requests() {
        let h = &request.headers;
        assert_eq!(h["x-api-key"], "apikey-SECRET-123");
        assert_eq!(h["x-team"], "data");
        assert_eq!(h["authorization"], "Bearer bearer-TOKEN-789");
        assert_eq!(h["content-encoding"], "gzip");
        assert!(request.bytes < request.body.len(), "the body is compressed");
        assert!(
            verify(secret, &request, &request.body),
            "signature does not verify"
        );
        let mut tampered = request.body.clone();
        tampered[1] = b' ';
        assert!(
            !verify(secret, &request, &tampered),
            "a tampered body verifies"
        );
        assert!(
            !verify("wrong-secret", &request, &request.body),
            "a wrong secret verifies"
        );
    }
    let logs = connector.logs();
    for leaked in [
        "SECRET-TOKEN",
        "apikey-SECRET-123",
        "bearer-TOKEN-789",
        "SIGNING-456",
        "kafka-PASSWORD-000",
    ] {
        assert!(!logs.contains(leaked), "{leaked} appears in the log");
    }
    let metrics = connector.metrics().await;
    for leaked in [
        "SECRET-TOKEN",
        "apikey",
        "bearer-TOKEN",
        "SIGNING",
        "PASSWORD",
    ] {
        assert!(!metrics.contains(leaked), "{leaked} appears in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_the_logs_of_a_failing_run_and_of_help() {
    let (topic, group) = (unique("secrets"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    // Failures make the connector log the URL, errors and retries.
    receiver.script(vec![
        Reply::status(500),
        Reply::status(401),
        Reply::status(503).retry_after("1"),
    ]);
    receiver.drop_connections(1);
    produce(&topic, run_id(), 0..10).await;
    let mut connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("WEBHOOK_BEARER_TOKEN", "bearer-TOKEN-789"),
            ("LOG_LEVEL", "trace"),
            ("LOG_FORMAT", "json"),
        ],
    );
    eventually(WAIT, "all events delivered", || {
        receiver.delivered_uuids().len() == 10
    })
    .await;
    connector.signal("TERM");
    assert!(connector.wait(WAIT).await.success());
    let logs = connector.logs();
    assert!(logs.contains("<redacted>"), "the URL is logged, redacted");
    for leaked in ["SECRET-TOKEN", "bearer-TOKEN-789"] {
        assert!(
            !logs.contains(leaked),
            "{leaked} appears in the trace-level log"
        );
    }
    let help = Command::new(env!("CARGO_BIN_EXE_patterns-connector"))
        .arg("--help")
        .env("PATTERNS_WEBHOOK_URL", receiver.url())
        .env("WEBHOOK_BEARER_TOKEN", "bearer-TOKEN-789")
        .env("WEBHOOK_SIGNING_SECRET", "whsec-SIGNING-456")
        .env("KAFKA_SASL_PASSWORD", "kafka-PASSWORD-000")
        .env("KAFKA_PROPERTIES", "sasl.password=kafka-PASSWORD-000")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("WEBHOOK_SIGNING_SECRET"));
    for leaked in [
        "SECRET-TOKEN",
        "bearer-TOKEN-789",
        "SIGNING-456",
        "PASSWORD-000",
    ] {
        assert!(!help.contains(leaked), "{leaked} appears in --help");
    }
}
