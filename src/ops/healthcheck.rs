//! `patterns-connector healthcheck`: asks the running connector's `/healthz`
//! and exits 0 when it answers 200, 1 otherwise. The image's `HEALTHCHECK`
//! runs it, so the image needs no curl (and its libraries).
//!
//! A raw HTTP/1.0 GET over one TCP connection with a deadline is all it
//! takes; the address is `HTTP_ADDR`, with a wildcard (`0.0.0.0`, `::`)
//! replaced by loopback, since that is where the probe runs: inside the
//! connector's own container.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Below the image's `HEALTHCHECK --timeout=3s`, so the probe reports its own
/// reason instead of being killed.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the answer that is read; `/healthz` answers a few lines.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("HTTP_ADDR {0:?} is not an IP address and port such as 0.0.0.0:9464")]
    BadAddress(String),
    #[error("cannot ask {addr}/healthz: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}/healthz answered no HTTP status line within {timeout:?}")]
    NoStatus { addr: SocketAddr, timeout: Duration },
    #[error("{addr}/healthz answered {status}: {body}")]
    Unhealthy {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// Where to send the probe for a server listening on `listen`: the same
/// port, on loopback when it listens on every address.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The status code of an HTTP answer, once its status line is complete.
pub fn parse_status(answer: &[u8]) -> Option<u16> {
    let line_end = answer.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&answer[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// The body of an HTTP answer (after the blank line), lossily decoded and trimmed.
fn body_of(answer: &[u8]) -> String {
    let start = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |i| i + 4);
    String::from_utf8_lossy(&answer[start..]).trim().to_string()
}

/// GETs `/healthz` at `addr`; Ok with the body when it answers 200.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<String, HealthcheckError> {
    let io = |source| HealthcheckError::Io { addr, source };
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;

    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            // A timeout after the status line still leaves an answer to judge.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
    let status = parse_status(&answer).ok_or(HealthcheckError::NoStatus { addr, timeout })?;
    let body = body_of(&answer);
    if status == 200 {
        Ok(body)
    } else {
        Err(HealthcheckError::Unhealthy { addr, status, body })
    }
}

/// The subcommand: `http_addr` as the user wrote `HTTP_ADDR`. Exit code 1
/// on any failure (never 2: Docker reserves it in health checks).
pub fn run(http_addr: &str) -> ExitCode {
    let result = http_addr
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| HealthcheckError::BadAddress(http_addr.to_string()))
        .and_then(|listen| check(probe_address(listen), TIMEOUT));
    match result {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("patterns-connector healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server that reads the request and writes `answer`
    /// (or nothing, holding the connection, when `answer` is None).
    fn serve_once(answer: Option<&'static [u8]>) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept the probe");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            match answer {
                Some(answer) => {
                    conn.write_all(answer).expect("write the answer");
                }
                None => thread::sleep(Duration::from_millis(800)),
            }
            request
        });
        (addr, handle)
    }

    #[test]
    fn a_wildcard_address_is_probed_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9464".parse().expect("literal");
        let v6: SocketAddr = "[::]:9464".parse().expect("literal");
        assert_eq!(
            probe_address(v4),
            "127.0.0.1:9464".parse().expect("literal")
        );
        assert_eq!(probe_address(v6), "[::1]:9464".parse().expect("literal"));
    }

    #[test]
    fn a_specific_address_is_probed_where_it_listens() {
        let addr: SocketAddr = "127.0.0.5:19464".parse().expect("literal");
        assert_eq!(probe_address(addr), addr);
    }

    #[test]
    fn the_status_is_read_from_a_complete_status_line_only() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn a_200_answer_is_healthy_and_the_request_is_a_get_of_healthz() {
        let (addr, server) = serve_once(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"));
        let body = check(addr, Duration::from_secs(2)).expect("a 200 is healthy");
        assert_eq!(body, "ok");
        let request = server.join().expect("the server thread ends");
        assert!(request.starts_with(b"GET /healthz HTTP/1.0\r\n"));
    }

    #[test]
    fn a_503_answer_is_unhealthy_and_carries_the_reason() {
        let (addr, _server) = serve_once(Some(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\npartition t/3 is stalled",
        ));
        match check(addr, Duration::from_secs(2)) {
            Err(HealthcheckError::Unhealthy { status, body, .. }) => {
                assert_eq!(status, 503);
                assert_eq!(body, "partition t/3 is stalled");
            }
            other => panic!("expected unhealthy, got {other:?}"),
        }
    }

    #[test]
    fn an_answer_that_is_not_http_is_unhealthy() {
        let (addr, _server) = serve_once(Some(b"hello\r\n"));
        assert!(matches!(
            check(addr, Duration::from_secs(2)),
            Err(HealthcheckError::NoStatus { .. })
        ));
    }

    #[test]
    fn a_server_that_never_answers_fails_within_the_timeout() {
        let (addr, _server) = serve_once(None);
        let started = Instant::now();
        let result = check(addr, Duration::from_millis(300));
        assert!(matches!(result, Err(HealthcheckError::NoStatus { .. })));
        assert!(started.elapsed() < Duration::from_millis(700));
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        drop(listener);
        assert!(matches!(
            check(addr, Duration::from_secs(1)),
            Err(HealthcheckError::Io { .. })
        ));
    }

    #[test]
    fn a_bad_http_addr_exits_with_failure() {
        assert_eq!(run("not-an-address"), ExitCode::FAILURE);
    }
}
