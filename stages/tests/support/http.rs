//! A minimal HTTP/1.1 file server on 127.0.0.1 for download tests: GET with optional
//! `Range: bytes=N-`, and an optional cut after a number of body bytes on the first response.
//! It serves a bounded number of connections and then stops by itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Each request's path and `Range` header, in order.
pub type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A running server.
pub struct Server {
    pub base: String,
    pub requests: RequestLog,
}

/// Serves `files` (path → bytes) for at most `max_connections` connections; when `cut_first` is
/// `Some(n)`, the first response announces the full length but drops the connection after `n` bytes.
pub fn serve(
    files: HashMap<String, Vec<u8>>,
    cut_first: Option<usize>,
    max_connections: usize,
) -> Server {
    serve_gated(files, cut_first, max_connections, None)
}

/// As [`serve`]; with `gate = Some((prefix, token))`, paths under `prefix` answer 401 unless
/// the request carries `Authorization: Bearer <token>`.
pub fn serve_gated(
    files: HashMap<String, Vec<u8>>,
    cut_first: Option<usize>,
    max_connections: usize,
    gate: Option<(String, String)>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    thread::spawn(move || {
        for (i, stream) in listener.incoming().take(max_connections).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let mut range = None;
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = Some(v.trim().to_owned());
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                {
                    auth = Some(v.trim().to_owned());
                }
            }
            log.lock().expect("log").push((path.clone(), range.clone()));
            if let Some((prefix, token)) = &gate
                && path.starts_with(prefix.as_str())
                && auth.as_deref() != Some(format!("Bearer {token}").as_str())
            {
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let Some(body) = files.get(&path) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0)
                .min(body.len());
            let rest = &body[start..];
            let head = if range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len().saturating_sub(1),
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let n = match cut_first {
                Some(c) if i == 0 => c.min(rest.len()),
                _ => rest.len(),
            };
            let _ = stream.write_all(&rest[..n]);
            let _ = stream.flush();
        }
    });
    Server { base, requests }
}
