//! What the test servers' harnesses (NATS, Redis, Qdrant, Prometheus) share: a free loopback
//! port, waiting for a started server to be ready (or to have died, with its log's last lines),
//! and asking a local HTTP endpoint for its status.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now (the system's pick).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until `ready()` holds, polling every `poll`. An error when `child` exits first (with
/// the last lines of `log`) or after `timeout` (the child is killed then); `what` names the
/// server and what it was waited for in the error.
pub fn wait_ready(child: &mut Child, what: &str, log: &Path, timeout: Duration, poll: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what}: exited with {status}: {}", log_tail(log, 5)));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: not ready within {timeout:?}: {}", log_tail(log, 5)));
        }
        std::thread::sleep(poll);
    }
}

/// The last `lines` lines of the file at `path`, newest first, joined with ` | `.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines().rev().take(lines).collect::<Vec<_>>().join(" | ")
}

/// Whether `GET path` on `127.0.0.1:port`, with `headers` (`Name: value` lines), answers 200.
/// Blocking: harnesses call it while starting a server, before any runtime work.
pub fn http_ok(port: u16, path: &str, headers: &[&str]) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.") && &reply[9..12] == b"200"
}

/// Whether something listens on `127.0.0.1:port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}
