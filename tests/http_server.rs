//! The `/metrics` server, probed over real loopback sockets.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, ThreadPoolExecutor};

fn request(server: &MetricsServer, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(raw).unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

fn status(reply: &str) -> &str {
    reply.split(' ').nth(1).unwrap_or("")
}

fn served() -> (MetricsServer, ThreadPoolExecutor) {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("http")
        .registry(registry.clone())
        .build()
        .unwrap();
    pool.submit(|| ()).unwrap().join().unwrap();
    (MetricsServer::start("127.0.0.1:0", registry).unwrap(), pool)
}

#[test]
fn get_and_head_metrics_404_405_and_400() {
    let (server, _pool) = served();
    let get = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&get), "200", "{get}");
    assert!(
        get.contains("content-type: text/plain; version=0.0.4"),
        "{get}"
    );
    assert!(get.contains(
        r#"executor_submitted_tasks_total{executor="http",executor_type="thread_pool"} 1"#
    ));
    let with_query = request(&server, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status(&with_query), "200");
    let head = request(
        &server,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), "200", "{head}");
    assert!(!head.contains("executor_submitted"), "HEAD has no body");
    let missing = request(&server, b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(status(&missing), "404");
    let post = request(
        &server,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&post), "405", "{post}");
    assert!(post.contains("allow: GET, HEAD"), "{post}");
    let garbage = request(&server, b"\x01\x02 not http at all\r\n\r\n");
    assert_eq!(status(&garbage), "400", "{garbage:?}");
    // Still serving after all that.
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

#[test]
fn stalled_clients_do_not_stop_scrapes_and_resources_are_bounded() {
    let (server, _pool) = served();
    // 100 clients that connect and never send anything.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    // One that sends half a request and stops.
    let mut half = TcpStream::connect(server.local_addr()).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let reply = request(&server, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(
        status(&reply),
        "200",
        "a scrape is served beside stalled clients"
    );
    // The half request is dropped by the server within the header timeout.
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = half.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the stalled request was cut off"
    );
    drop(stalled);
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

#[test]
fn binds_only_the_address_given_and_frees_it_on_drop() {
    let (server, _pool) = served();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed after drop"
    );
    assert!(MetricsServer::start("127.0.0.1:0", Registry::new()).is_ok());
    let taken = MetricsServer::start("127.0.0.1:0", Registry::new()).unwrap();
    let err = MetricsServer::start(taken.local_addr(), Registry::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// Load from a second process (wrk, bounded to 3 s and 50 connections).
#[test]
fn keeps_answering_under_load_from_wrk() {
    let Some(wrk) = support::require_tool("wrk") else {
        return;
    };
    let (server, pool) = served();
    let url = format!("http://{}/metrics", server.local_addr());
    // The pool keeps working while it is scraped.
    let worker = std::thread::spawn(move || {
        let mut n = 0u64;
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            pool.submit(|| ()).unwrap().join().unwrap();
            n += 1;
        }
        n
    });
    let out = support::run_with_timeout(
        std::process::Command::new(wrk).args(["-t1", "-c50", "-d3s", "--latency", &url]),
        Duration::from_secs(30),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    assert!(requests > 100, "{text}");
    assert!(!text.contains("Non-2xx"), "every answer was 200:\n{text}");
    let tasks = worker.join().unwrap();
    assert!(tasks > 0);
    eprintln!("wrk: {requests} scrapes in 3 s while the pool ran {tasks} tasks");
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

/// With the `protobuf` feature, a scraper that ranks the protobuf format
/// first (Prometheus with native histograms sends this `Accept`) gets the
/// length-delimited `MetricFamily` stream, and it holds exactly what the
/// registry gathers; the text format stays the answer to everything else.
#[cfg(feature = "protobuf")]
/// A collector whose family the text format has no type for.
#[derive(Clone)]
struct Untyped(executor_exporter::prometheus::core::Desc);

impl executor_exporter::prometheus::core::Collector for Untyped {
    fn desc(&self) -> Vec<&executor_exporter::prometheus::core::Desc> {
        vec![&self.0]
    }

    fn collect(&self) -> Vec<executor_exporter::prometheus::proto::MetricFamily> {
        use executor_exporter::prometheus::proto::{Metric, MetricFamily, MetricType};
        let mut family = MetricFamily::default();
        family.set_name("legacy_untyped".to_owned());
        family.set_help("An untyped metric.".to_owned());
        family.set_field_type(MetricType::UNTYPED);
        family.set_metric(vec![Metric::default()]);
        vec![family]
    }
}

#[test]
fn a_family_the_text_format_cannot_encode_is_a_500_not_a_dropped_connection() {
    let registry = Registry::new();
    let server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();
    let desc = executor_exporter::prometheus::core::Desc::new(
        "legacy_untyped".to_owned(),
        "An untyped metric.".to_owned(),
        vec![],
        Default::default(),
    )
    .unwrap();
    registry.register(Box::new(Untyped(desc.clone()))).unwrap();
    let get = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&get), "500", "{get}");
    assert!(
        get.contains("legacy_untyped") && get.contains("UNTYPED"),
        "{get}"
    );
    if cfg!(feature = "protobuf") {
        assert!(get.contains("vary: Accept"), "{get}");
    }
    registry.unregister(Box::new(Untyped(desc))).unwrap();
    let get = request(&server, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status(&get), "200", "{get}");
}

#[test]
fn serves_protobuf_to_a_scraper_that_prefers_it() {
    use executor_exporter::prometheus::proto::MetricFamily;
    use protobuf::CodedInputStream;

    const NATIVE_HISTOGRAMS_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("proto")
        .registry(registry.clone())
        .build()
        .unwrap();
    for k in 0..3 {
        pool.submit(move || k).unwrap().join().unwrap();
    }
    let server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();

    let raw = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {NATIVE_HISTOGRAMS_ACCEPT}\r\nConnection: close\r\n\r\n"
    );
    let mut conn = TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(raw.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&reply[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily; encoding=delimited"),
        "{head}"
    );
    assert!(head.contains("vary: accept"), "{head}");

    let mut body = CodedInputStream::from_bytes(&reply[split + 4..]);
    let mut served = Vec::new();
    while !body.eof().unwrap() {
        served.push(body.read_message::<MetricFamily>().unwrap());
    }
    assert_eq!(served, registry.gather());
    let submitted = served
        .iter()
        .find(|f| f.name() == "executor_submitted_tasks_total")
        .expect("the submitted family");
    assert_eq!(submitted.get_metric()[0].get_counter().value(), 3.0);

    // Prometheus's default `Accept` still gets text.
    let text = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(text.contains(
        r#"executor_submitted_tasks_total{executor="proto",executor_type="thread_pool"} 3"#
    ));
}
