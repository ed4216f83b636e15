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

#[test]
fn a_refused_secret_value_is_named_and_never_echoed() {
    // Clap's own message would quote the refused value; each of these holds
    // a token or a secret.
    for (option, value, problem) in [
        (
            "PATTERNS_WEBHOOK_URL",
            "ftp://hooks.example/hook/TOKEN-REFUSED-1?key=TOKEN-REFUSED-2",
            "expected an absolute http:// or https:// URL with a host",
        ),
        (
            "PATTERNS_WEBHOOK_URL",
            "https://user:TOKEN-REFUSED-1@hooks.example/TOKEN-REFUSED-2",
            "credentials in the URL (user:password@) are not supported",
        ),
        (
            "WEBHOOK_HEADERS",
            "X-Api-Key TOKEN-REFUSED-1",
            "expected `Name: value` entries separated by `;` or new lines",
        ),
        (
            "KAFKA_PROPERTIES",
            "sasl.password TOKEN-REFUSED-1",
            "expected comma-separated key=value pairs, got an entry without '=' (\"<redacted>\")",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
        cmd.env_clear()
            .env(
                "PATTERNS_WEBHOOK_URL",
                "https://hooks.example/TOKEN-REFUSED-3",
            )
            .env(option, value);
        let out = cmd.output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!("patterns-connector: invalid value for {option}: {problem}\n")
        );
        assert!(!stderr.contains("TOKEN-REFUSED"), "{stderr}");
    }
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=patterns-connector test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_and_a_custom_ca_bundle_is_trusted() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    make_certificates(&dir);
    let port = free_port().port();
    let received = dir.join("received.jsonl");
    let mut server = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tls/https_receiver.py"
        ))
        .arg(port.to_string())
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .arg(&received)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 https receiver");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready");
    }
    let url = format!("https://127.0.0.1:{port}/api/app/webhooks/SECRET-TOKEN-tls");
    let (topic, group) = (unique("tls"), unique("g"));
    create_topic(&topic, 1).await;
    produce(&topic, run_id(), 0..20).await;

    // Without the CA, the certificate is not trusted: nothing is delivered or committed.
    let mut untrusting = Connector::start(&topic, &group, &url, &[("SHUTDOWN_TIMEOUT_MS", "500")]);
    eventually(WAIT, "failed TLS attempts", || {
        metric_values(
            &untrusting.metrics_blocking(),
            "patterns_connector_webhook_retries_total",
        )
        .first()
        .is_some_and(|(_, v)| *v >= 3.0)
    })
    .await;
    assert!(
        !received.exists(),
        "delivered over an untrusted certificate"
    );
    assert_eq!(committed(&group, &topic, 1), vec![None]);
    // A clean exit leaves the group at once (a kill would hold the partition
    // until the session times out).
    untrusting.signal("TERM");
    assert!(untrusting.wait(WAIT).await.success());

    let ca = dir.join("ca.pem");
    let trusting = Connector::start(
        &topic,
        &group,
        &url,
        &[("WEBHOOK_CA_BUNDLE", ca.to_str().expect("utf8"))],
    );
    eventually(WAIT, "every offset committed over TLS", || {
        committed(&group, &topic, 1) == vec![Some(20)]
    })
    .await;
    let bodies = std::fs::read_to_string(&received).expect("received");
    let events: usize = bodies
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .expect("json")
                .as_array()
                .expect("array")
                .len()
        })
        .sum();
    assert!(events >= 20);
    assert_no_secret(&trusting);
    let _ = server.kill();
    let _ = server.wait();
}

/// Every request carries an `Idempotency-Key` naming its batch: the same on
/// every retry of that batch, another for each half of a bisected batch, so
/// a receiver whose 2xx was lost on the way back can drop the retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_keeps_its_idempotency_key_across_retries_and_bisection_halves_get_their_own() {
    let (topic, group) = (unique("batchid"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    // The first batch fails twice, then goes through.
    receiver.script(vec![Reply::status(503), Reply::status(500)]);
    let run = run_id();
    let producer = producer();
    let sample = |n| patterns_connector::event::sample::captured(run, n, &now_timestamp());
    for n in 0..8 {
        send_sample(&producer, &topic, sample(n)).await;
    }
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("BATCH_MAX_EVENTS", "8"),
            ("BATCH_LINGER_MS", "500"),
            ("ORDERING", "partition"),
        ],
    );
    eventually(WAIT, "the first batch delivered", || {
        receiver.delivered_uuids().len() == 8
    })
    .await;
    // The second batch holds an event the receiver refuses: it is bisected.
    receiver.reject_marked();
    for n in 8..16 {
        let mut s = sample(n);
        if n == 13 {
            s.value = marked(&s);
        }
        send_sample(&producer, &topic, s).await;
    }
    eventually(
        WAIT,
        "the unmarked events of the second batch delivered",
        || receiver.delivered_uuids().len() == 15,
    )
    .await;
    drop(connector);
    let key = |r: &Request| {
        r.headers
            .get("idempotency-key")
            .cloned()
            .unwrap_or_else(|| panic!("a request without Idempotency-Key: {:?}", r.headers))
    };
    let requests = receiver.requests();
    let first_uuid = |r: &Request| r.events[0]["uuid"].as_str().unwrap_or("").to_owned();
    let first = sample(0).uuid;
    let retried: Vec<&Request> = requests.iter().filter(|r| first_uuid(r) == first).collect();
    assert_eq!(
        retried.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 500, 200]
    );
    assert!(
        retried.iter().all(|r| key(r) == key(retried[0])),
        "a retry changed the key"
    );
    // Each range of the bisection has its own key, used for nothing else.
    let mut ranges = std::collections::HashMap::new();
    for r in requests.iter().filter(|r| first_uuid(r) != first) {
        let range = (first_uuid(r), r.events.len());
        assert_ne!(key(r), key(retried[0]));
        if let Some(other) = ranges.insert(key(r), range.clone()) {
            assert_eq!(other, range, "one key for two different ranges");
        }
    }
    assert!(
        ranges.len() >= 3,
        "the second batch, its halves and more: {ranges:?}"
    );
}
