//! Runs the real quickstart example, with an exporter id that needs escaping,
//! fetches its `/metrics` over HTTP and has `promtool check metrics` judge it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The quickstart binary `cargo test` built next to this test binary.
fn quickstart_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("examples").join("quickstart");
    assert!(
        bin.exists(),
        "{} is missing: run through cargo test",
        bin.display()
    );
    bin
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).expect("connect to the quickstart");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    (head.to_owned(), body.to_owned())
}

#[test]
fn promtool_accepts_the_quickstarts_metrics_with_labels_needing_escapes() {
    let promtool = support::require_tool("promtool");
    let id = "we\"ird\\id\nwith 🦀";
    let mut child = Command::new(quickstart_binary())
        .args([
            "--port",
            "0",
            "--tasks",
            "60",
            "--serve-secs",
            "30",
            "--id",
            id,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the quickstart");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // "serving http://127.0.0.1:PORT/metrics" comes first; then wait until the
    // workload is done ("serving ... for 30 s more").
    let addr;
    let mut line = String::new();
    let mut log = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the quickstart exited early:\n{log}");
        log.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("serving http://") {
            let a = url.split('/').next().unwrap().to_owned();
            if line.contains("more") {
                addr = a;
                break;
            }
        }
    }
    let (head, body) = http_get(&addr, "/metrics");
    let (head404, _) = http_get(&addr, "/nope");
    let _ = child.kill();
    let _ = child.wait();
    assert!(head.contains(" 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(head404.contains(" 404 "), "{head404}");
    assert!(
        body.contains(r#"executor="we\"ird\\id\nwith 🦀""#),
        "the id is escaped in the exposition"
    );
    // 60 tasks, plus one blocker per worker (4) and 3 tasks it cancels.
    assert!(
        log.contains("submitted  67"),
        "the summary reports the workload:\n{log}"
    );
    assert!(log.contains("cancelled  3"), "{log}");

    let Some(promtool) = promtool else { return };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool has remarks (lint):\n{said}"
    );
}
