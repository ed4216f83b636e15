//! A ClickHouse for the backfill tests: tests/clickhouse/standin.py, whose
//! HTTP layer is a stand-in and whose SQL engine is real ClickHouse (chdb,
//! from the venv that scripts/lib.sh's `ensure_chdb` makes, named by
//! CHDB_PYTHON), run as a process on a loopback port with its data in a fresh
//! directory, holding database `posthog` with PostHog's `events` table
//! (tests/clickhouse/posthog_events.sql).
//!
//! The client here is a few lines of blocking HTTP/1.1 over a TcpStream, so
//! sync and async tests alike can seed and read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::unique;

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clickhouse/standin.py");
/// PostHog's events table, created in database `posthog`.
pub const EVENTS_DDL: &str = include_str!("../clickhouse/posthog_events.sql");
/// Rows per INSERT in `insert_rows`.
const INSERT_CHUNK: usize = 5_000;

/// An HTTP answer: status, the X-ClickHouse-Exception-Code header, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub exception_code: Option<u32>,
    pub body: String,
}

/// The stand-in's process and data; see the module doc.
pub struct ClickHouse {
    child: Option<Child>,
    port: u16,
    data: PathBuf,
    log: PathBuf,
    user: String,
    password: String,
    delay: Duration,
}

impl ClickHouse {
    /// Starts a stand-in that accepts only `user`/`password`, on a free
    /// loopback port with a fresh data directory, and creates `posthog.events`.
    pub fn start(user: &str, password: &str) -> ClickHouse {
        let name = unique("clickhouse");
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let mut clickhouse = ClickHouse {
            child: None,
            port: 0,
            data: tmp.join(&name),
            log: tmp.join(format!("{name}.log")),
            user: user.to_owned(),
            password: password.to_owned(),
            delay: Duration::ZERO,
        };
        clickhouse.spawn();
        clickhouse.query("CREATE DATABASE IF NOT EXISTS posthog");
        clickhouse.query(EVENTS_DDL);
        clickhouse
    }

    /// http://127.0.0.1:PORT
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The stand-in's stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sql` (POSTed, as the right user) and returns the body; panics
    /// on an answer that is not 2xx.
    pub fn query(&self, sql: &str) -> String {
        let answer = self.send(&self.user, &self.password, "", sql.as_bytes());
        assert!(
            (200..300).contains(&answer.status),
            "ClickHouse answered {} to {sql:?}:\n{}",
            answer.status,
            answer.body
        );
        answer.body
    }

    /// Inserts `rows` into `table` (qualified, e.g. `posthog.events`) as
    /// JSONEachRow, some thousands of rows per INSERT.
    pub fn insert_rows(&self, table: &str, rows: &[Value]) {
        let query = format!("INSERT INTO {table} FORMAT JSONEachRow");
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut body = Vec::new();
            for row in chunk {
                serde_json::to_writer(&mut body, row).expect("a JSON row");
                body.push(b'\n');
            }
            let answer = self.send(&self.user, &self.password, &query, &body);
            assert!(
                (200..300).contains(&answer.status),
                "ClickHouse answered {} to {query:?}:\n{}",
                answer.status,
                answer.body
            );
        }
    }

    /// POSTs `body` with `query` (may be empty) as the URL's `query`
    /// parameter, authenticated as `user`/`password` through the
    /// X-ClickHouse-User/Key headers, and returns the answer whatever it is.
    pub fn send(&self, user: &str, password: &str, query: &str, body: &[u8]) -> Answer {
        let path = if query.is_empty() {
            "/".to_owned()
        } else {
            format!("/?query={}", percent_encode(query))
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             X-ClickHouse-User: {user}\r\nX-ClickHouse-Key: {password}\r\n\
             Content-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        let exchange = || -> std::io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(120)))?;
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        };
        let raw = exchange().unwrap_or_else(|e| {
            panic!(
                "ClickHouse stand-in at {}: {e}\n{}",
                self.url(),
                self.logs()
            )
        });
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        let exception_code = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("X-ClickHouse-Exception-Code")
                .then(|| value.trim().parse().ok())?
        });
        Answer {
            status,
            exception_code,
            body: body.to_owned(),
        }
    }

    /// A fixed wait before each query, from the next `restart` on.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// Kills the process; the data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (if it runs) and starts it again on the same port
    /// with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs standin.py on `self.port` (0: a free one, then remembered) and
    /// waits for its ready line and an answer to /ping.
    fn spawn(&mut self) {
        let python = std::env::var("CHDB_PYTHON").unwrap_or_else(|_| {
            panic!(
                "CHDB_PYTHON is not set: run the suite with scripts/test, which installs chdb \
                 (scripts/lib.sh: ensure_chdb) and sets it"
            )
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the stand-in's log file");
        let mut child = Command::new(&python)
            .arg(STANDIN)
            .arg(&self.data)
            .args(["--port", &self.port.to_string()])
            .args(["--user", &self.user, "--password", &self.password])
            .args(["--delay", &self.delay.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {STANDIN}: {e}"));
        let port = super::listening_port(&mut child, Duration::from_secs(60));
        self.child = Some(child);
        self.port = port.unwrap_or_else(|e| {
            self.stop();
            panic!(
                "the ClickHouse stand-in did not start ({e}):\n{}",
                self.logs()
            )
        });
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to /ping");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("send /ping");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.ends_with("\r\n\r\nOk.\n"),
            "/ping answered {answer:?}"
        );
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// `text` for a URL's query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
