//! The configuration's unit tests: parsing, validation, redaction.

use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;

use super::*;

/// How `main` reports a parse error: a refused value as `invalid value for
/// <ENV>: <problem>`, anything else in clap's words.
fn rendered(e: clap::Error) -> String {
    option_error(&e).map_or_else(|| e.to_string(), |e| e.to_string())
}

fn cli(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec![
        "patterns-connector",
        "--patterns-webhook-url",
        "https://hooks.example/abc/secret-token?key=s3cret",
    ];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(rendered)?;
    Config::from_cli(cli).map_err(|e| e.to_string())
}

#[test]
fn defaults_match_the_documented_values() {
    let config = cli(&[]).expect("defaults are valid");
    assert_eq!(
        config.topics.subscription(),
        DEFAULT_TOPICS.split(',').map(str::trim).collect::<Vec<_>>()
    );
    assert_eq!(config.kafka_consumer_group, "patterns-connector");
    assert_eq!(config.batch.max_events, 500);
    assert_eq!(config.batch.max_bytes, 1 << 20);
    assert_eq!(config.batch.linger, Duration::from_millis(1000));
    assert!(config.allowed_event_types.is_empty());
    assert_eq!(config.project_token, None);
}

#[test]
fn ordering_defaults_to_key_with_eight_key_lanes_and_key_lanes_are_bounded() {
    let config = cli(&[]).expect("defaults are valid");
    assert_eq!(config.ordering, DeliveryOrder::Key);
    assert_eq!(config.key_lanes, 8);
    let config =
        cli(&["--ordering", "partition", "--key-lanes", "64"]).expect("64 lanes are valid");
    assert_eq!(config.ordering, DeliveryOrder::Partition);
    assert_eq!(config.key_lanes, 64);
    for bad in ["0", "65", "many"] {
        let err = cli(&["--key-lanes", bad]).unwrap_err();
        assert!(err.contains("KEY_LANES"), "{err}");
        assert!(err.contains("between 1 and 64"), "{err}");
    }
    assert!(cli(&["--ordering", "none"]).is_err());
}

#[test]
fn allow_list_trims_spaces_and_drops_empty_entries_like_the_old_app() {
    assert_eq!(
        parse_allow_list(" $pageview, $autocapture ,,signed up"),
        vec!["$pageview", "$autocapture", "signed up"]
    );
    assert!(parse_allow_list("  ").is_empty());
}

#[test]
fn a_bad_number_names_the_option_and_the_expected_range() {
    let err = cli(&["--batch-max-events", "lots"]).unwrap_err();
    assert!(err.contains("BATCH_MAX_EVENTS"), "{err}");
    assert!(err.contains("between 1 and"), "{err}");
    let err = cli(&["--batch-max-bytes", "10"]).unwrap_err();
    assert!(err.contains("BATCH_MAX_BYTES"), "{err}");
}

#[test]
fn a_non_http_webhook_url_is_rejected_without_echoing_it() {
    let err = rendered(
        Cli::try_parse_from([
            "patterns-connector",
            "--patterns-webhook-url",
            "ftp://host/secret-path",
        ])
        .unwrap_err(),
    );
    assert!(err.contains("PATTERNS_WEBHOOK_URL"), "{err}");
    assert!(!err.contains("secret-path"), "{err}");
}

#[test]
fn backoff_max_below_min_is_rejected() {
    let err = cli(&[
        "--retry-backoff-min-ms",
        "500",
        "--retry-backoff-max-ms",
        "100",
    ])
    .unwrap_err();
    assert!(err.contains("RETRY_BACKOFF_MAX_MS"), "{err}");
}

#[test]
fn kafka_properties_parse_and_managed_keys_are_refused() {
    let props =
        parse_kafka_properties("security.protocol=SASL_SSL, sasl.password=hunter2").expect("valid");
    assert_eq!(props["security.protocol"], "SASL_SSL");
    assert_eq!(props["sasl.password"], "hunter2");
    let err = parse_kafka_properties("enable.auto.offset.store=true").unwrap_err();
    assert_eq!(err.option, "KAFKA_PROPERTIES");
    let err = parse_kafka_properties("sasl.password")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("sasl.password"), "{err}");
}

#[test]
fn kafka_topic_takes_a_list_or_a_pattern_and_refuses_empty_or_bad_names() {
    let config = cli(&[
        "--kafka-topic",
        "events_plugin_ingestion, events_plugin_ingestion_historical",
    ])
    .expect("a list");
    assert_eq!(
        config.topics.subscription(),
        [
            "events_plugin_ingestion",
            "events_plugin_ingestion_historical"
        ]
    );
    let config = cli(&["--kafka-topic", "^events_.*"]).expect("a pattern");
    assert!(config.topics.matches("events_x") && config.topics.listed().is_none());
    let err = cli(&["--kafka-topic", "  "]).unwrap_err();
    assert!(
        err.contains("KAFKA_TOPIC") && err.contains("empty"),
        "{err}"
    );
    let err = cli(&["--kafka-topic", "events plugin"]).unwrap_err();
    assert!(
        err.contains("KAFKA_TOPIC") && err.contains("topic name"),
        "{err}"
    );
    let err = cli(&["--dlq-topic", "^dlq"]).unwrap_err();
    assert!(err.contains("DLQ_TOPIC"), "{err}");
    // PostHog's prefixed topic names are fine, and spaces around are trimmed.
    let config = cli(&["--kafka-topic", " prod_events_plugin_ingestion.v2-x "]).expect("valid");
    assert_eq!(
        config.topics.subscription(),
        ["prod_events_plugin_ingestion.v2-x"]
    );
}

#[test]
fn the_dead_letter_topic_must_differ_from_the_input_topic() {
    let err = cli(&["--kafka-topic", "events", "--dlq-topic", " events"]).unwrap_err();
    assert!(
        err.contains("DLQ_TOPIC") && err.contains("KAFKA_TOPIC (events)"),
        "{err}"
    );
    assert!(cli(&["--kafka-topic", "events", "--dlq-topic", "events_dlq"]).is_ok());
    let err = cli(&["--kafka-topic", "a,events", "--dlq-topic", "events"]).unwrap_err();
    assert!(
        err.contains("DLQ_TOPIC") && err.contains("KAFKA_TOPIC (a,events)"),
        "{err}"
    );
    let err = cli(&["--kafka-topic", "^ev.*", "--dlq-topic", "events_dlq"]).unwrap_err();
    assert!(
        err.contains("DLQ_TOPIC") && err.contains("matched"),
        "{err}"
    );
}

#[test]
fn kafka_properties_owned_by_other_options_or_by_the_guarantee_are_refused_with_what_to_do() {
    for (property, instead) in [
        ("bootstrap.servers=k:9092", "KAFKA_HOSTS"),
        ("metadata.broker.list=k:9092", "KAFKA_HOSTS"),
        ("group.id=other", "KAFKA_CONSUMER_GROUP"),
        ("auto.offset.reset=latest", "START_AT"),
        ("auto.commit.interval.ms=100", "COMMIT_INTERVAL_MS"),
        ("enable.auto.commit=false", "at-least-once guarantee"),
        ("auto.commit.enable=false", "at-least-once guarantee"),
        ("enable.auto.offset.store=true", "at-least-once guarantee"),
        ("partition.assignment.strategy=range", "delivery guarantee"),
        ("group.protocol=consumer", "KAFKA_GROUP_PROTOCOL"),
        ("group.instance.id=replica-1", "KAFKA_GROUP_INSTANCE_ID"),
    ] {
        let err = cli(&[
            "--kafka-properties",
            &format!("security.protocol=SSL, {property}"),
        ])
        .unwrap_err();
        let key = property.split('=').next().expect("key");
        assert!(
            err.contains("KAFKA_PROPERTIES") && err.contains(key) && err.contains(instead),
            "{property}: {err}"
        );
    }
    // Keys that only start like a refused one are the user's.
    assert!(cli(&["--kafka-properties", "group.protocol.type=consumer"]).is_ok());
}

#[test]
fn settings_of_one_group_protocol_are_refused_when_the_other_is_forced() {
    let with = |protocol: &str, properties: &str| {
        cli(&[
            "--kafka-group-protocol",
            protocol,
            "--kafka-properties",
            properties,
        ])
    };
    for key in ["session.timeout.ms", "heartbeat.interval.ms"] {
        let err = with("consumer", &format!("{key}=6000")).unwrap_err();
        assert!(
            err.contains("KAFKA_PROPERTIES") && err.contains(key) && err.contains("classic"),
            "{err}"
        );
        assert!(with("classic", &format!("{key}=6000")).is_ok());
        // auto resolves to classic for them (kafka::group_protocol).
        assert!(with("auto", &format!("{key}=6000")).is_ok());
    }
    let err = with("classic", "group.remote.assignor=range").unwrap_err();
    assert!(err.contains("group.remote.assignor"), "{err}");
    assert!(with("consumer", "group.remote.assignor=range").is_ok());
    let err = cli(&["--kafka-group-protocol", "newest"]).unwrap_err();
    assert!(err.contains("KAFKA_GROUP_PROTOCOL"), "{err}");
}

#[test]
fn a_static_identity_is_its_own_option() {
    assert_eq!(cli(&[]).expect("default").group_instance_id, None);
    let config = cli(&["--kafka-group-instance-id", "connector-0"]).expect("valid");
    assert_eq!(config.group_instance_id.as_deref(), Some("connector-0"));
}

#[test]
fn printed_config_hides_the_webhook_secret_and_passwords() {
    let config = cli(&[
        "--kafka-properties",
        "sasl.password=hunter2,fetch.max.bytes=1000",
    ])
    .expect("valid");
    let printed = format!("{config:?}");
    assert!(!printed.contains("secret-token"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("https://hooks.example/<redacted>"),
        "{printed}"
    );
    assert!(printed.contains("fetch.max.bytes=1000"), "{printed}");
}

#[test]
fn the_token_filter_is_refused_for_clickhouse_input() {
    let err = cli(&[
        "--posthog-project-token",
        "phc_a",
        "--input-format",
        "clickhouse",
    ])
    .unwrap_err();
    assert!(err.contains("POSTHOG_TEAM_ID"), "{err}");
}

#[test]
fn reject_statuses_parse_lists_and_ranges_and_refuse_retryable_ones() {
    let set = StatusSet::parse("X", "400, 413,450-451").expect("valid");
    assert!(set.contains(400) && set.contains(413) && set.contains(450) && set.contains(451));
    assert!(!set.contains(404) && !set.contains(500));
    assert!(StatusSet::parse("X", "4xx")
        .unwrap_err()
        .to_string()
        .contains("X"));
    assert!(StatusSet::parse("X", "400-499")
        .unwrap_err()
        .to_string()
        .contains("always retried"));
    assert!(StatusSet::parse("X", "200").is_err());
    assert_eq!(
        cli(&[]).expect("defaults").reject_statuses,
        StatusSet(vec![(400, 400), (413, 413), (422, 422)])
    );
}

#[test]
fn headers_parse_and_bad_ones_name_the_option() {
    let h = parse_headers("X-Api-Key: abc:def; X-Team: data\nX-Other:1").expect("valid");
    let h: Vec<(String, String)> = h
        .into_iter()
        .map(|(name, value)| (name, value.expose_secret().to_owned()))
        .collect();
    assert_eq!(
        h,
        vec![
            ("X-Api-Key".to_owned(), "abc:def".to_owned()),
            ("X-Team".to_owned(), "data".to_owned()),
            ("X-Other".to_owned(), "1".to_owned()),
        ]
    );
    assert!(parse_headers("no colon")
        .unwrap_err()
        .to_string()
        .contains("WEBHOOK_HEADERS"));
    assert!(parse_headers("Bad Name: x").is_err());
    assert!(parse_headers("Content-Type: text/plain").is_err());
}

#[test]
fn secrets_come_from_files_and_are_never_printed() {
    let dir = std::env::temp_dir().join(format!("pc-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "tok-from-file\n").expect("write");
    let config = cli(&[
        "--webhook-bearer-token-file",
        token.to_str().expect("utf8"),
        "--webhook-signing-secret",
        "sign-me",
        "--webhook-headers",
        "X-Api-Key: key-123",
        "--kafka-sasl-password",
        "pw-456",
    ])
    .expect("valid");
    assert!(config
        .webhook_headers
        .iter()
        .any(|(name, value)| name == "Authorization"
            && value.expose_secret() == "Bearer tok-from-file"));
    assert_eq!(
        config.signing_secret.as_ref().map(|s| s.expose_secret()),
        Some("sign-me")
    );
    assert_eq!(config.kafka_properties["sasl.password"], "pw-456");
    let printed = format!("{config:?}");
    for secret in ["tok-from-file", "sign-me", "key-123", "pw-456"] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    let err = cli(&["--webhook-signing-secret-file", "/nonexistent/secret"]).unwrap_err();
    assert!(err.contains("WEBHOOK_SIGNING_SECRET_FILE"), "{err}");
    let err = cli(&["--webhook-ca-bundle", token.to_str().expect("utf8")]).unwrap_err();
    assert!(err.contains("WEBHOOK_CA_BUNDLE"), "{err}");
    let err = cli(&["--webhook-gzip", "maybe"]).unwrap_err();
    assert!(err.contains("WEBHOOK_GZIP"), "{err}");
}

#[test]
fn start_at_takes_earliest_latest_or_a_time() {
    assert_eq!(cli(&[]).expect("default").start_at, StartAt::Earliest);
    assert_eq!(
        cli(&["--start-at", "latest"]).expect("valid").start_at,
        StartAt::Latest
    );
    let t = cli(&["--start-at", "2024-05-01T12:00:00+02:00"])
        .expect("valid")
        .start_at;
    assert_eq!(
        t,
        StartAt::Time(
            chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
                .expect("valid")
                .into()
        )
    );
    assert!(cli(&["--start-at", "yesterday"])
        .unwrap_err()
        .contains("START_AT"));
    assert!(cli(&["--kafka-properties", "auto.offset.reset=latest"])
        .unwrap_err()
        .contains("START_AT"));
}

#[test]
fn max_poll_interval_must_outlast_a_revocation_drain() {
    // The default 300 s, and anything at least SHUTDOWN_TIMEOUT_MS + 10 s, is fine.
    assert!(cli(&[]).is_ok());
    assert!(cli(&["--kafka-properties", "max.poll.interval.ms=30000"]).is_ok());
    let err = cli(&["--kafka-properties", "max.poll.interval.ms=29999"]).unwrap_err();
    assert!(
        err.contains("KAFKA_PROPERTIES") && err.contains("SHUTDOWN_TIMEOUT_MS"),
        "{err}"
    );
    assert!(cli(&[
        "--kafka-properties",
        "max.poll.interval.ms=15000",
        "--shutdown-timeout-ms",
        "5000"
    ])
    .is_ok());
    assert!(cli(&["--kafka-properties", "max.poll.interval.ms=soon"])
        .unwrap_err()
        .contains("number of milliseconds"));
    // Unset, librdkafka's 300 s applies, and is checked too.
    assert!(cli(&["--shutdown-timeout-ms", "290000"]).is_ok());
    let err = cli(&["--shutdown-timeout-ms", "290001"]).unwrap_err();
    assert!(err.contains("max.poll.interval.ms=300000"), "{err}");
}

#[test]
fn team_id_must_be_a_number() {
    let err = cli(&["--posthog-team-id", "two"]).unwrap_err();
    assert!(err.contains("POSTHOG_TEAM_ID"), "{err}");
    assert_eq!(
        cli(&["--posthog-team-id", "2"]).expect("valid").team_id,
        Some(2)
    );
}

#[test]
fn a_refused_webhook_url_is_named_and_its_token_never_echoed() {
    let e = Cli::try_parse_from([
        "patterns-connector",
        "--patterns-webhook-url",
        "ftp://hooks.example/abc/TOKEN-4242",
    ])
    .unwrap_err();
    // Clap's own rendering quotes the refused value: main must not use it.
    assert!(e.to_string().contains("TOKEN-4242"), "{e}");
    let err = option_error(&e).expect("a refused value");
    assert_eq!(
        err.to_string(),
        "invalid value for PATTERNS_WEBHOOK_URL: expected an absolute http:// or https:// URL with a host"
    );
}

#[test]
fn a_refused_value_is_named_by_its_environment_variable_also_when_given_as_a_flag() {
    let err = cli(&["--batch-linger-ms", "soon"]).unwrap_err();
    assert_eq!(
        err,
        "invalid value for BATCH_LINGER_MS: expected a whole number of milliseconds between 0 and 3600000, got \"soon\""
    );
    // Clap's other errors keep clap's words.
    let e = Cli::try_parse_from(["patterns-connector", "--no-such-flag"]).unwrap_err();
    assert!(option_error(&e).is_none());
}

#[test]
fn no_secret_given_inline_or_as_a_file_appears_in_the_summary_or_any_debug_output() {
    let dir = std::env::temp_dir().join(format!("pc-markers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{name}-MARKER\n")).expect("write");
        path.to_str().expect("utf8").to_owned()
    };
    let inline = [
        "--patterns-webhook-url",
        "https://hooks.example/url-MARKER?key=query-MARKER",
        "--webhook-headers",
        "X-Api-Key: header-MARKER",
        "--kafka-properties",
        "ssl.key.password=property-MARKER,sasl.oauthbearer.client.secret=oauth-MARKER",
    ];
    let with_values = [
        "--webhook-bearer-token",
        "bearer-MARKER",
        "--webhook-signing-secret",
        "signing-MARKER",
        "--kafka-sasl-password",
        "sasl-MARKER",
    ];
    let (bearer, signing, sasl) = (file("bearer"), file("signing"), file("sasl"));
    let with_files = [
        "--webhook-bearer-token-file",
        &bearer,
        "--webhook-signing-secret-file",
        &signing,
        "--kafka-sasl-password-file",
        &sasl,
    ];
    for secrets in [&with_values[..], &with_files[..]] {
        let argv: Vec<&str> = ["patterns-connector"]
            .into_iter()
            .chain(inline)
            .chain(secrets.iter().copied())
            .collect();
        let options = Cli::try_parse_from(&argv).expect("valid");
        let options_debug = format!("{options:?}");
        let config = Config::from_cli(options).expect("valid");
        // The secrets did arrive.
        assert!(config
            .webhook_headers
            .iter()
            .any(|(n, v)| n == "Authorization" && v.expose_secret().contains("bearer")));
        assert!(config.kafka_properties["sasl.password"].starts_with("sasl"));
        assert!(config.signing_secret.is_some());
        let summary = format!("{:?}", config.redacted_summary());
        for printed in [summary, format!("{config:?}"), options_debug] {
            assert!(!printed.contains("MARKER"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}

#[test]
fn the_summary_shows_the_same_options_as_before_in_the_declarations_order() {
    let names: Vec<String> = cli(&[])
        .expect("defaults")
        .redacted_summary()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let expected = "KAFKA_HOSTS KAFKA_TOPIC KAFKA_CONSUMER_GROUP KAFKA_GROUP_PROTOCOL KAFKA_GROUP_INSTANCE_ID \
        KAFKA_PROPERTIES PATTERNS_WEBHOOK_URL \
        ALLOWED_EVENT_TYPES POSTHOG_PROJECT_TOKEN POSTHOG_TEAM_ID INPUT_FORMAT BATCH_MAX_EVENTS \
        BATCH_MAX_BYTES BATCH_LINGER_MS WEBHOOK_TIMEOUT_MS RETRY_BACKOFF_MIN_MS RETRY_BACKOFF_MAX_MS \
        MAX_CONCURRENT_REQUESTS ORDERING KEY_LANES MAX_BUFFERED_BYTES COMMIT_INTERVAL_MS \
        SHUTDOWN_TIMEOUT_MS HTTP_ADDR DLQ_TOPIC STATE_TOPIC DLQ_POLICY START_AT WEBHOOK_HEADERS \
        WEBHOOK_SIGNING_SECRET WEBHOOK_GZIP WEBHOOK_CA_BUNDLE REMOVE_PROPERTIES KEEP_PROPERTIES \
        HASH_PROPERTIES HASH_SALT EVENT_FILTERS EVENT_FILTERS_FILE WEBHOOK_REJECT_STATUSES";
    assert_eq!(names, expected.split_whitespace().collect::<Vec<_>>());
    let config = cli(&["--batch-linger-ms", "7", "--start-at", "latest"]).expect("valid");
    let summary = config.redacted_summary();
    let shown = |name: &str| {
        summary
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(shown("BATCH_LINGER_MS"), "7");
    assert_eq!(shown("START_AT"), "Latest");
    assert_eq!(
        shown("PATTERNS_WEBHOOK_URL"),
        "https://hooks.example/<redacted>"
    );
    assert_eq!(shown("WEBHOOK_REJECT_STATUSES"), "400,413,422");
}
