//! The deploy files, checked with real tools: a strict schema check of every
//! Kubernetes manifest and both compose files (deploy/validate, Go),
//! promtool on the rules as deployed, hadolint on the Dockerfile, and the
//! environment variables they set are options the binary accepts (the
//! backfill Job's, options of `patterns-connector backfill`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Every `[env: NAME` in `patterns-connector <args> --help`.
fn accepted_env(args: &[&str]) -> Vec<String> {
    let help = run(Command::new(env!("CARGO_BIN_EXE_patterns-connector"))
        .args(args)
        .arg("--help")
        .env_clear());
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
        .collect()
}

#[test]
fn every_manifest_and_compose_file_passes_a_strict_schema_check_and_sets_only_real_options() {
    let out = run(Command::new("go")
        .args(["run", "."])
        .arg(repo(""))
        .current_dir(repo("deploy/validate")));
    assert!(out.contains("OK deploy files are valid"), "{out}");
    // A backfill reads the connector's options and its own.
    let mut accepted = accepted_env(&[]);
    let backfill_own = accepted_env(&["backfill"]);
    assert!(
        accepted.contains(&"PATTERNS_WEBHOOK_URL".to_owned())
            && backfill_own.contains(&"CLICKHOUSE_HOST".to_owned()),
        "{accepted:?} {backfill_own:?}"
    );
    accepted.extend(backfill_own);
    // The Secret and the compose services serve `backfill` runs as well as
    // the stream, so a backfill option is a real option there too.
    let used: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ENV ")).collect();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            accepted.iter().any(|a| a == name),
            "the deploy files set {name}, which patterns-connector does not accept"
        );
    }
    let job: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("BACKFILL_ENV "))
        .collect();
    assert!(job.contains(&"POSTHOG_TEAM_ID"), "{job:?}");
    for name in job {
        assert!(
            accepted.iter().any(|a| a == name),
            "backfill-job.yaml sets {name}, which patterns-connector backfill does not accept"
        );
    }
    cloud_configuration_runs(&out, &accepted);
}

/// deploy/kubernetes-cloud sets only real options, and the binary takes
/// its ConfigMap's values: it starts, and fails only on the (unreachable)
/// API, naming POSTHOG_API_URL.
fn cloud_configuration_runs(validate_out: &str, accepted: &[String]) {
    let names: Vec<&str> = validate_out
        .lines()
        .filter_map(|l| l.strip_prefix("CLOUD_ENV "))
        .collect();
    assert!(names.contains(&"POSTHOG_PERSONAL_API_KEY"), "{names:?}");
    for name in &names {
        assert!(
            accepted.iter().any(|a| a == name),
            "deploy/kubernetes-cloud sets {name}, which patterns-connector backfill does not accept"
        );
    }
    let dir = tmp("cloud");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
    cmd.arg("backfill")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for line in validate_out
        .lines()
        .filter_map(|l| l.strip_prefix("CLOUD_VALUE "))
    {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        cmd.env(name, value);
    }
    // Loopback only: nothing here may reach PostHog Cloud.
    let state = dir.join("follow.json");
    cmd.env("POSTHOG_API_URL", format!("http://{closed}"))
        .env("BACKFILL_STATE_FILE", &state)
        .env("HTTP_ADDR", http.to_string())
        .env("BACKFILL_RETRY_FOR_MS", "500")
        .env("PATTERNS_WEBHOOK_URL", "http://127.0.0.1:9/hook")
        .env("POSTHOG_PERSONAL_API_KEY", "phx_deploy_test_key");
    let out = cmd.output().expect("run patterns-connector backfill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected the unreachable API to end the run (exit 1), not a refused option (2):\n{text}"
    );
    // The last line is the error that ended it (the first lines list the options).
    let last = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("unreachable") && last.contains("check POSTHOG_API_URL"),
        "{text}"
    );
    assert!(!text.contains("invalid value"), "{text}");
    assert!(
        !text.contains("phx_deploy_test_key"),
        "the key was shown: {text}"
    );
}

#[test]
fn the_prometheus_rule_resource_holds_exactly_the_shipped_rules_and_promtool_accepts_them() {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/rules.yml")).expect("rules");
    let resource =
        std::fs::read_to_string(repo("deploy/kubernetes/prometheusrule.yaml")).expect("resource");
    let spec = &resource[resource.find("spec:\n").expect("spec") + "spec:\n".len()..];
    let groups: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let shipped = &rules[rules.find("groups:").expect("groups")..];
    assert_eq!(
        groups.trim_end(),
        shipped.trim_end(),
        "prometheusrule.yaml differs from rules.yml"
    );
    let dir = tmp("rules");
    std::fs::write(dir.join("from-resource.yml"), &groups).expect("write");
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("from-resource.yml")));
}

#[test]
fn the_prometheus_configurations_pass_promtool() {
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(repo("deploy/prometheus/prometheus.yml")));
    // The compose one points at the rules where the container mounts them.
    let dir = tmp("compose-prometheus");
    let config = std::fs::read_to_string(repo("deploy/compose/prometheus.yml"))
        .expect("config")
        .replace(
            "/etc/prometheus/rules.yml",
            repo("deploy/prometheus/rules.yml").to_str().expect("utf8"),
        );
    std::fs::write(dir.join("prometheus.yml"), config).expect("write");
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml")));
}

#[test]
fn the_dockerfile_passes_hadolint() {
    run(Command::new("hadolint")
        .arg("--config")
        .arg(repo(".hadolint.yaml"))
        .arg(repo("Dockerfile")));
}
