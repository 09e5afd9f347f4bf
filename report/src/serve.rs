//! `report --serve`: the report on localhost, rebuilt from the store when a page is asked for
//! (at most once a second), so a user watching a run sees cells turn from queued to running to
//! cached; while a run is live its pages reload themselves.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::html::esc;
use crate::site::Site;

/// Serves the site `build` makes on 127.0.0.1:`port` (0: any free port) until the process
/// ends; `ready` is told the address once it listens.
pub fn serve(
    port: u16,
    mut build: impl FnMut() -> Result<Site>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|source| Error::PortInUse { port, source })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("127.0.0.1", e))?;
    let mut site = build()?;
    let mut built = Instant::now();
    ready(addr);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = answer(stream, &mut site, &mut built, &mut build) {
            tracing::debug!("report server: {e}");
        }
    }
    Ok(())
}

fn answer(
    mut stream: TcpStream,
    site: &mut Site,
    built: &mut Instant,
    build: &mut impl FnMut() -> Result<Site>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            method,
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let path = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    if path.ends_with(".html") && built.elapsed() >= Duration::from_secs(1) {
        match build() {
            Ok(s) => *site = s,
            Err(e) => {
                let body = format!(
                    "<!doctype html><title>report error</title><p>The report could not be rebuilt: {}</p>",
                    esc(&e.to_string())
                );
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/html; charset=utf-8",
                    body.as_bytes(),
                    method,
                );
            }
        }
        *built = Instant::now();
    }
    match site.get(path) {
        Some(bytes) => {
            let bytes = bytes.to_vec();
            respond(&mut stream, "200 OK", content_type(path), &bytes, method)
        }
        None => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            format!("no page {path} in the report\n").as_bytes(),
            method,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    method: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css",
        "png" => "image/png",
        "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pages_are_served_and_rebuilt_while_unknown_paths_are_404() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut n = 0;
            serve(
                0,
                move || {
                    n += 1;
                    let mut s = Site::default();
                    s.put("index.html", format!("build {n}"));
                    Ok(s)
                },
                move |a| tx.send(a).unwrap(),
            )
        });
        let addr = rx.recv().unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let first = get("/");
        assert!(
            first.starts_with("HTTP/1.1 200") && first.ends_with("build 1"),
            "{first}"
        );
        assert!(get("/nope.png").starts_with("HTTP/1.1 404"));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            get("/index.html?x=1").ends_with("build 2"),
            "rebuilt after a second"
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = serve(port, || Ok(Site::default()), |_| {}).unwrap_err();
        assert!(e.to_string().contains(&format!("port {port}")), "{e}");
    }
}
