//! `PushGateway` against a real Pushgateway on 127.0.0.1 (Debian package
//! `prometheus-pushgateway`): on-demand, periodic and final pushes, escaped
//! grouping labels, refused pushes, unreachable gateways and timeouts.
//!
//! Tests needing the gateway print SKIPPED and pass when it is missing,
//! except in CI (env `CI` set), where they fail.
#![cfg(feature = "push")]

mod common;
mod support;

use std::net::TcpListener;
use std::time::Duration;

use common::{parse, watchdog};
use executor_exporter::prometheus::{IntCounter, IntGauge, Registry};
use executor_exporter::{PushGateway, PushGatewayBuilder, ThreadPoolExecutor};
use support::Pushgateway;

const WAIT: Duration = Duration::from_secs(10);

fn pool(registry: &Registry, id: &str) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

fn pusher(gateway: &Pushgateway, job: &str, registry: &Registry) -> PushGatewayBuilder {
    PushGateway::builder(gateway.url(), job)
        .registry(registry.clone())
        .env_proxy(false)
        .timeout(Duration::from_secs(5))
}

#[test]
fn push_on_demand_replaces_the_group_with_escaped_labels() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    let pool = pool(&registry, "batch");
    for i in 0..5u32 {
        pool.submit(move || i).unwrap();
    }
    pool.submit(|| panic!("bad row")).unwrap();
    pool.join();

    let labels = [
        ("path", "/var/data/in"),
        ("shard", ""),
        ("owner", "ana maría \"q\""),
    ];
    let mut builder = pusher(&gateway, "nightly import", &registry).push_on_drop(false);
    for (name, value) in labels {
        builder = builder.grouping_label(name, value);
    }
    let pusher = builder.build().unwrap();
    pusher.push().unwrap();

    let text = gateway.metrics().unwrap();
    let exp = parse(&text);
    // The group's key, on every series pushed; ours add the executor.
    let key = [&[("job", "nightly import")], &labels[..]].concat();
    let group = [&key[..], &[("executor", "batch")]].concat();
    assert_eq!(exp.value("executor_submitted_tasks_total", &group), 6.0);
    assert_eq!(
        exp.value(
            "executor_task_failures_total",
            &[group.as_slice(), &[("reason", "panic")]].concat()
        ),
        1.0
    );
    assert_eq!(
        exp.value("executor_exporter_push_failures_total", &key),
        0.0
    );

    // PUT replaces the whole group: a family no longer in the registry goes.
    let extra = IntGauge::new("batch_rows", "Rows in the batch.").unwrap();
    extra.set(42);
    registry.register(Box::new(extra.clone())).unwrap();
    pusher.push().unwrap();
    assert_eq!(
        parse(&gateway.metrics().unwrap()).value("batch_rows", &key),
        42.0
    );
    registry.unregister(Box::new(extra)).unwrap();
    pusher.push().unwrap();
    let exp = parse(&gateway.metrics().unwrap());
    assert_eq!(exp.try_value("batch_rows", &key), None);
    assert_eq!(exp.value("executor_submitted_tasks_total", &group), 6.0);
}

#[test]
fn periodic_pushes_follow_the_registry_and_drop_pushes_last() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    let rows = IntCounter::new("rows_done_total", "Rows done.").unwrap();
    registry.register(Box::new(rows.clone())).unwrap();
    let pusher = pusher(&gateway, "periodic", &registry)
        .push_every(Duration::from_millis(100))
        .build()
        .unwrap();
    let shows = |n: u64| {
        move |text: &str| {
            parse(text).try_value("rows_done_total", &[("job", "periodic")]) == Some(n as f64)
        }
    };
    rows.inc_by(3);
    gateway.wait_for_metrics(shows(3), WAIT).unwrap();
    rows.inc_by(4);
    gateway.wait_for_metrics(shows(7), WAIT).unwrap();

    // The final push on drop carries what the periodic one has not yet sent;
    // dropping stops the thread, so nothing is pushed afterwards.
    rows.inc_by(100);
    watchdog(20, move || drop(pusher));
    assert!(shows(107)(&gateway.metrics().unwrap()));
    rows.inc();
    std::thread::sleep(Duration::from_millis(300));
    assert!(shows(107)(&gateway.metrics().unwrap()));
}

/// `Duration::MAX` as the push timeout means none; it used to overflow the
/// HTTP client's deadline and panic in every push (and in the drop's).
#[test]
fn the_longest_timeout_means_none() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    let pool = pool(&registry, "patient");
    pool.submit(|| ()).unwrap().join().unwrap();
    let pusher = pusher(&gateway, "patient_job", &registry)
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    pusher.push().unwrap();
    let exp = parse(&gateway.metrics().unwrap());
    assert_eq!(
        exp.value(
            "executor_submitted_tasks_total",
            &[("job", "patient_job"), ("executor", "patient")]
        ),
        1.0
    );
    drop(pusher);
}

#[test]
fn a_final_push_on_drop_without_periodic_pushes() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    let pusher = pusher(&gateway, "short_job", &registry).build().unwrap();
    let pool = pool(&registry, "short");
    pool.submit(|| ()).unwrap().join().unwrap();
    pool.shutdown();
    let text = gateway.metrics().unwrap();
    assert_eq!(
        parse(&text).try_value("executor_submitted_tasks_total", &[("job", "short_job")]),
        None,
        "nothing is pushed before the drop"
    );
    drop(pusher);
    let exp = parse(&gateway.metrics().unwrap());
    assert_eq!(
        exp.value(
            "executor_submitted_tasks_total",
            &[("job", "short_job"), ("executor", "short")]
        ),
        1.0
    );
}

#[test]
fn failures_are_returned_counted_and_pushed_later() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    // A port nobody listens on: bind, note it, release it.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = PushGateway::builder(format!("http://127.0.0.1:{dead}"), "lost")
        .registry(registry.clone())
        .env_proxy(false)
        .push_on_drop(false)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = unreachable.push().unwrap_err();
    assert!(err.is_transport(), "{err}");
    assert_eq!(err.status(), None);
    assert!(std::error::Error::source(&err).is_some());
    unreachable.push().unwrap_err();

    let reachable = pusher(&gateway, "recovered", &registry)
        .push_on_drop(false)
        .build()
        .unwrap();
    reachable.push().unwrap();
    let exp = parse(&gateway.metrics().unwrap());
    assert_eq!(
        exp.value(
            "executor_exporter_push_failures_total",
            &[("job", "recovered")]
        ),
        2.0
    );
}

#[test]
fn a_refused_push_gives_the_status_and_the_gateway_message() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    // The same name as a counter in one group and a gauge in another is
    // inconsistent: the gateway refuses the second push.
    let counters = Registry::new();
    let as_counter = IntCounter::new("shared_name", "One name, two types.").unwrap();
    counters.register(Box::new(as_counter)).unwrap();
    pusher(&gateway, "first", &counters)
        .push_on_drop(false)
        .build()
        .unwrap()
        .push()
        .unwrap();

    let gauges = Registry::new();
    let as_gauge = IntGauge::new("shared_name", "One name, two types.").unwrap();
    gauges.register(Box::new(as_gauge)).unwrap();
    let second = pusher(&gateway, "second", &gauges)
        .push_on_drop(false)
        .build()
        .unwrap();
    let err = second.push().unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(!err.is_transport());
    assert!(err.to_string().contains("shared_name"), "{err}");
}

#[test]
fn a_gateway_that_never_answers_times_out() {
    // Accepts connections (the kernel's backlog does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let registry = Registry::new();
    let pusher = PushGateway::builder(format!("http://127.0.0.1:{port}"), "stuck")
        .registry(registry.clone())
        .env_proxy(false)
        .push_on_drop(false)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = watchdog(20, move || pusher.push().unwrap_err());
    assert!(err.is_transport(), "{err}");
    drop(listener);
    let exp = common::scrape(&registry);
    assert_eq!(exp.value("executor_exporter_push_failures_total", &[]), 1.0);
}

/// `.` and `..` as the job or a grouping label's value: sent plainly, the
/// gateway's router resolves them and redirects the push elsewhere; they go
/// in the `@base64` form, and land under their own names.
#[test]
fn dot_segments_as_job_or_label_value_land_as_given() {
    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let registry = Registry::new();
    let pool = pool(&registry, "dots");
    pool.submit(|| ()).unwrap().join().unwrap();
    for (job, dir) in [("..", "."), (".", "..")] {
        pusher(&gateway, job, &registry)
            .grouping_label("dir", dir)
            .push_on_drop(false)
            .build()
            .unwrap()
            .push()
            .unwrap();
        let exp = parse(&gateway.metrics().unwrap());
        let group = [("job", job), ("dir", dir), ("executor", "dots")];
        assert_eq!(exp.value("executor_submitted_tasks_total", &group), 1.0);
    }
}

/// A push answered with a redirect is an error naming where it pointed,
/// and is not repeated there: a client that follows it sends a GET, which a
/// page may answer with 200 while nothing was pushed.
#[test]
fn a_redirected_push_is_an_error_and_not_followed() {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Answers every request (at most 3, each within 10 s) with a redirect
    // to a page, and tells the request lines it saw.
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let Ok((conn, _)) = listener.accept() else {
                break;
            };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line.is_empty() {
                break;
            }
            let request = line.trim().to_owned();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let mut conn = conn;
            let _ = conn.write_all(
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: /status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let stop = request.starts_with("STOP");
            seen.push(request);
            if stop {
                break;
            }
        }
        seen
    });
    let registry = Registry::new();
    let pusher = PushGateway::builder(format!("http://127.0.0.1:{port}"), "moved")
        .registry(registry.clone())
        .env_proxy(false)
        .push_on_drop(false)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = watchdog(20, move || pusher.push().unwrap_err());
    assert_eq!(err.status(), Some(301), "{err}");
    assert!(err.to_string().contains("\"/status\""), "{err}");
    assert!(err.to_string().contains("PushGateway::builder"), "{err}");
    // Ends the server's loop.
    let mut stop = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stop.write_all(b"STOP / HTTP/1.1\r\n\r\n").unwrap();
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("PUT /metrics/job/moved "), "{seen:?}");
    let exp = common::scrape(&registry);
    assert_eq!(exp.value("executor_exporter_push_failures_total", &[]), 1.0);
}
