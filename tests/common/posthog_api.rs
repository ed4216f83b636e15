//! PostHog's query API for the backfill tests: tests/posthog/query_api.py,
//! whose HTTP layer and HogQL printing are stand-ins, whose parser is
//! PostHog's own (PyPI hogql-parser) and whose engine is the ClickHouse
//! stand-in (chdb) it is given. Run with CHDB_PYTHON, on a loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::clickhouse::ClickHouse;
use super::unique;

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/posthog/query_api.py");

/// The key with the `query:read` scope, and one without it.
pub const KEY: &str = "phx_standin_key_Zq81";
pub const UNSCOPED_KEY: &str = "phx_standin_noscope_4f2";

pub struct QueryApi {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl QueryApi {
    /// Serves `project`'s events from `clickhouse`; `budget`: at most that
    /// many requests per window of that many seconds, then 429.
    pub fn start(clickhouse: &ClickHouse, project: i64, budget: Option<(u32, f64)>) -> QueryApi {
        Self::start_with(clickhouse, project, budget, &[])
    }

    /// As `start`, with more of the stand-in's arguments (`--timeout-above-rows N`).
    pub fn start_with(
        clickhouse: &ClickHouse,
        project: i64,
        budget: Option<(u32, f64)>,
        more: &[&str],
    ) -> QueryApi {
        let python = std::env::var("CHDB_PYTHON")
            .expect("CHDB_PYTHON is not set: run the suite with scripts/test");
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("query-api") + ".log");
        let (requests, window) = budget.unwrap_or((0, 60.0));
        let mut child = Command::new(&python)
            .arg(STANDIN)
            .args(["--clickhouse", &clickhouse.url()])
            .args(["--clickhouse-user", clickhouse.user()])
            .args(["--clickhouse-password", clickhouse.password()])
            .args(["--project", &project.to_string()])
            .args(["--key", KEY, "--unscoped-key", UNSCOPED_KEY])
            .args([
                "--budget",
                &requests.to_string(),
                "--window",
                &window.to_string(),
            ])
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {STANDIN}: {e}"));
        let port = super::listening_port(&mut child, Duration::from_secs(60)).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!(
                "the query API stand-in did not start ({e}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        QueryApi { child, port, log }
    }

    /// The instance's base URL, as POSTHOG_API_URL takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// {"requests", "throttled", "refused", "queries": [HogQL, ...]}
    pub async fn stats(&self) -> Value {
        let body = reqwest::get(format!("{}/stats", self.url()))
            .await
            .expect("GET /stats")
            .bytes()
            .await
            .expect("the stats");
        serde_json::from_slice(&body).expect("stats JSON")
    }
}

impl Drop for QueryApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
