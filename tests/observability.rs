//! Observability against the real tools: the alert rules and the dashboard
//! only name metrics the connector exports, promtool accepts the rules and a
//! scrape, and a real Prometheus sees the lag alert fire during a webhook
//! outage and clear after recovery.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use patterns_connector::ops::metrics::ALL;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `patterns_connector_*` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("patterns_connector_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // `patterns_connector:` recording rules have a colon, not an underscore.
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| ALL.contains(b)))
            .unwrap_or(name);
        names.push(base.to_owned());
        i = end;
    }
    names
}

#[test]
fn the_dashboard_is_valid_json_and_every_query_names_an_exported_metric() {
    let text =
        std::fs::read_to_string(repo("deploy/grafana/patterns-connector.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{}: query names no connector metric: {expr}",
                panel["title"]
            );
            for name in names {
                assert!(
                    ALL.contains(&name.as_str()),
                    "{}: {name} is not exported",
                    panel["title"]
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 15);
}

#[test]
fn the_alert_rules_name_only_exported_metrics_and_pass_promtool() {
    let path = repo("deploy/prometheus/rules.yml");
    let text = std::fs::read_to_string(&path).expect("rules");
    for name in metric_names(&text) {
        assert!(
            ALL.contains(&name.as_str()),
            "rules.yml uses {name}, which is not exported"
        );
    }
    for alert in [
        "PatternsConnectorLagHigh",
        "PatternsConnectorLagRising",
        "PatternsConnectorPartitionStalled",
        "PatternsConnectorPartitionNotCommitting",
        "PatternsConnectorPartitionBlocked",
        "PatternsConnectorDeadLetterWritesFailing",
        "PatternsConnectorPartitionsUnassigned",
        "PatternsConnectorWebhookErrors",
        "PatternsConnectorDeadLetters",
        "PatternsConnectorDown",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert} missing");
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool is installed by scripts/test (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// A real Prometheus scraping `target` every second with `rules`.
    fn start(target: std::net::SocketAddr, rules: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("rules.yml"), rules).expect("rules");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: patterns-connector\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("config");
        let addr = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed by scripts/test (Debian's prometheus package)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Names of the alerts currently firing.
    async fn firing(&self) -> Vec<String> {
        let url = format!("http://{}/api/v1/alerts", self.addr);
        let Ok(response) = reqwest::get(url).await else {
            return Vec::new();
        };
        let Ok(body) = response
            .text()
            .await
            .map(|t| serde_json::from_str::<Value>(&t).unwrap_or_default())
        else {
            return Vec::new();
        };
        body["data"]["alerts"]
            .as_array()
            .map(|alerts| {
                alerts
                    .iter()
                    .filter(|a| a["state"] == "firing")
                    .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_sees_the_lag_alert_fire_during_an_outage_and_clear_after() {
    let (topic, group) = (unique("prom"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    produce(&topic, run_id(), 0..200).await;
    let connector = Connector::start(&topic, &group, &receiver.url(), &[]);

    // The shipped rules, with the lag SLO and its duration shortened for a test.
    let shipped = std::fs::read_to_string(repo("deploy/prometheus/rules.yml")).expect("rules");
    let slo = "max by (job, topic, partition) (patterns_connector_partition_lag_seconds) > 300\n        for: 10m";
    assert!(
        shipped.contains(slo),
        "the lag alert changed; update this test"
    );
    let rules = shipped.replace(
        slo,
        "max by (job, topic, partition) (patterns_connector_partition_lag_seconds) > 3\n        for: 2s",
    );
    let prometheus = Prometheus::start(connector.http, &rules);

    let mut scrape = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !prometheus
        .firing()
        .await
        .contains(&"PatternsConnectorLagHigh".to_owned())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lag alert never fired"
        );
        scrape = connector.metrics().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("--- /metrics during the outage ---\n{scrape}");

    // promtool lints a real scrape.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(scrape.as_bytes())
            .expect("write");
    }
    let out = lint.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    receiver.set_default(Reply::ok());
    eventually(Duration::from_secs(90), "all events delivered", || {
        receiver.delivered_uuids().len() == 200
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while prometheus
        .firing()
        .await
        .contains(&"PatternsConnectorLagHigh".to_owned())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lag alert never cleared"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "--- /metrics after recovery ---\n{}",
        connector.metrics().await
    );
}
