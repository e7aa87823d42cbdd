//! The Prometheus exposition and its HTTP server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use pollux_control::metrics::{
    render, render_openmetrics, MetricsServer, MetricsSource, CONTENT_TYPE, MAX_CONCURRENT_SCRAPES,
    OPENMETRICS_CONTENT_TYPE,
};
use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;

/// Two workers with hand-set counters; ports 0 (`eth0`) and 1 (`we"ird\name`), and a
/// vhost-user port `vm7`.
fn source() -> MetricsSource {
    let a = Arc::new(WorkerCounters::new(4));
    let b = Arc::new(WorkerCounters::new(4));
    a.ports[0].rx_packets.add(10);
    b.ports[0].rx_packets.add(20);
    a.ports[0].rx_bytes.add(1000);
    b.ports[0].rx_bytes.add(2000);
    a.ports[0].tx_packets.add(3);
    b.ports[0].tx_packets.add(4);
    a.ports[0].tx_bytes.add(300);
    b.ports[0].tx_bytes.add(400);
    b.ports[0].tx_dropped.add(7);
    a.ports[1].rx_packets.add(5);
    a.drops[DropReason::Runt as usize].add(2);
    b.drops[DropReason::Runt as usize].add(3);
    a.stage_packets[Stage::L2 as usize].add(11);
    b.stage_packets[Stage::L2 as usize].add(12);
    a.loops.add(100);
    b.loops.add(200);
    a.busy_loops.add(40);
    a.busy_ns.add(1_500_000_000);
    b.idle_ns.add(250_000_000);
    a.macs.set(5);
    b.macs.set(6);
    a.macs_learned.add(8);
    b.macs_learned.add(1);
    b.mac_moves.add(2);
    a.mac_table_full.add(1);
    b.macs_aged.add(4);
    let src = MetricsSource::new(
        vec![(0, a), (1, b)],
        vec![
            (PortId(0), "eth0".to_string()),
            (PortId(1), "we\"ird\\name".to_string()),
        ],
    )
    .with_sg_rules_fn(|| {
        vec![
            ("web".to_string(), "web/0".to_string(), 3),
            ("web".to_string(), "r-ssh".to_string(), 0),
        ]
    });
    let vm7 = pollux_drivers::vhost_user::Mailbox::new();
    vm7.update_status(|s| {
        s.connected = true;
        s.disconnects = 2;
    });
    vm7.count_broken();
    src.set_vhost_user(vec![("vm7".to_string(), vm7)]);
    src.set_generation(42);
    src.record_apply(true, Duration::from_micros(300));
    src.record_apply(false, Duration::from_millis(20));
    src
}

fn assert_lines(text: &str, expected: &[&str]) {
    let lines: Vec<&str> = text.lines().collect();
    for e in expected {
        assert!(lines.contains(e), "missing line {e:?} in:\n{text}");
    }
}

#[test]
fn sums_over_workers() {
    let text = render(&source());
    assert_lines(
        &text,
        &[
            r#"pollux_port_rx_packets_total{port="eth0"} 30"#,
            r#"pollux_port_rx_bytes_total{port="eth0"} 3000"#,
            r#"pollux_port_tx_packets_total{port="eth0"} 7"#,
            r#"pollux_port_tx_bytes_total{port="eth0"} 700"#,
            r#"pollux_port_tx_dropped_total{port="eth0"} 7"#,
            r#"pollux_drops_total{reason="runt"} 5"#,
            r#"pollux_stage_packets_total{stage="l2"} 23"#,
            r#"pollux_stage_packets_total{stage="classify"} 0"#,
            r#"pollux_worker_loops_total{worker="0"} 100"#,
            r#"pollux_worker_loops_total{worker="1"} 200"#,
            r#"pollux_worker_busy_loops_total{worker="0"} 40"#,
            r#"pollux_worker_busy_loops_total{worker="1"} 0"#,
            r#"pollux_worker_busy_seconds_total{worker="0"} 1.5"#,
            r#"pollux_worker_idle_seconds_total{worker="1"} 0.25"#,
            "pollux_generation 42",
            "pollux_config_apply_total 2",
            "pollux_config_apply_failures_total 1",
            "pollux_config_apply_seconds_count 2",
            r#"pollux_config_apply_seconds_bucket{le="0.0005"} 1"#,
            r#"pollux_config_apply_seconds_bucket{le="10.0"} 2"#,
            r#"pollux_config_apply_seconds_bucket{le="+Inf"} 2"#,
            "pollux_fdb_entries 11",
            "pollux_mac_learned_total 9",
            "pollux_mac_moves_total 2",
            "pollux_mac_table_full_total 1",
            "pollux_mac_aged_total 4",
            "# HELP pollux_drops_total Frames dropped, by reason.",
            "# TYPE pollux_drops_total counter",
            "# TYPE pollux_generation gauge",
            "# TYPE pollux_config_apply_seconds histogram",
        ],
    );
    assert!(
        !text.contains("# EOF"),
        "0.0.4 text has no EOF marker:\n{text}"
    );
}

#[test]
fn vhost_user_ports_have_their_state() {
    assert_lines(
        &render(&source()),
        &[
            "pollux_vhost_user_connected{port=\"vm7\"} 1",
            "pollux_vhost_user_disconnects_total{port=\"vm7\"} 2",
            "pollux_vhost_user_broken_queues_total{port=\"vm7\"} 1",
        ],
    );
}

#[test]
fn openmetrics_variant() {
    let text = render_openmetrics(&source());
    assert_lines(
        &text,
        &[
            "# TYPE pollux_drops counter",
            r#"pollux_drops_total{reason="runt"} 5"#,
            r#"pollux_port_rx_packets_total{port="eth0"} 30"#,
            "pollux_generation 42",
        ],
    );
    assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
}

#[test]
fn every_drop_reason_is_present_even_at_zero() {
    let text = render(&source());
    for r in DropReason::ALL {
        let prefix = format!("pollux_drops_total{{reason=\"{}\"}} ", r.name());
        let n = text.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(n, 1, "reason {} appears {n} times in:\n{text}", r.name());
    }
    let zero = DropReason::ALL
        .iter()
        .find(|&&r| r != DropReason::Runt)
        .unwrap();
    assert_lines(
        &text,
        &[&format!(
            "pollux_drops_total{{reason=\"{}\"}} 0",
            zero.name()
        )],
    );
    for s in Stage::ALL {
        assert!(text.contains(&format!(
            "pollux_stage_packets_total{{stage=\"{}\"}} ",
            s.name()
        )));
    }
}

#[test]
fn port_names_are_escaped() {
    let text = render(&source());
    assert_lines(
        &text,
        &[
            r#"pollux_port_rx_packets_total{port="we\"ird\\name"} 5"#,
            r#"pollux_port_tx_dropped_total{port="we\"ird\\name"} 0"#,
        ],
    );
}

#[test]
fn ports_beyond_a_workers_range_and_renames() {
    let src = source();
    src.set_ports(vec![
        (PortId(0), "uplink".into()),
        (PortId(9), "far".into()),
    ]);
    assert_lines(
        &render(&src),
        &[
            r#"pollux_port_rx_packets_total{port="uplink"} 30"#,
            r#"pollux_port_rx_packets_total{port="far"} 0"#,
        ],
    );
}

#[test]
fn security_group_rule_hits_by_group_and_rule() {
    let text = render(&source());
    assert_lines(
        &text,
        &[
            "pollux_sg_rule_hits_total{group=\"web\",rule=\"web/0\"} 3",
            "pollux_sg_rule_hits_total{group=\"web\",rule=\"r-ssh\"} 0",
        ],
    );
}

#[test]
fn generation_from_a_closure() {
    let src = MetricsSource::new(Vec::new(), Vec::new()).with_generation_fn(|| 7);
    src.set_generation(3);
    let text = render(&src);
    assert_lines(&text, &["pollux_generation 7", "pollux_fdb_entries 0"]);
}

/// Sends `request` raw and returns the whole response.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Slow clients (one that trickles its request a byte at a time, others that send nothing
/// and hold every slot) neither delay a scrape beside them for long nor hold their
/// connection past the 2 s deadline, however they pace their bytes.
#[test]
fn slow_clients_neither_block_scrapes_nor_outstay_the_deadline() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(source())).unwrap();
    let addr = server.local_addr();

    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let started = std::time::Instant::now();
        for b in b"GET /metrics HTTP/1.1\r\nHost: a-very-slow-client.example\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (started.elapsed(), out)
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let resp = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a scrape waited {:?} behind a slow client",
        started.elapsed()
    );
    let (held, out) = trickler.join().unwrap();
    assert!(out.is_empty(), "the trickling client was answered");
    assert!(
        held < Duration::from_secs(4),
        "the trickling client was held {held:?}, past the 2 s deadline"
    );

    // Silent clients beyond the limit are closed at once; those within it at the deadline.
    let silent: Vec<TcpStream> = (0..MAX_CONCURRENT_SCRAPES + 2)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let started = std::time::Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a silent client got bytes");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "silent clients held for {:?}",
        started.elapsed()
    );
    let resp = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
}

#[test]
fn http_server_serves_metrics_and_404s_others() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(source())).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let resp = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = resp.split_once("\r\n\r\n").expect("no header end");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(body.contains("pollux_port_rx_packets_total{port=\"eth0\"} 30\n"));
    assert!(body.contains("pollux_mac_aged_total 4\n"), "{body}");
    assert!(body.ends_with("pollux_inject_dropped_total 0\n"), "{body}");

    let resp = http(addr, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

    let resp = http(
        addr,
        b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains(&format!("Content-Type: {OPENMETRICS_CONTENT_TYPE}\r\n")),
        "{resp}"
    );
    assert!(resp.ends_with("# EOF\n"), "{resp}");

    let resp = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\n"),
        "{resp}"
    );

    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.1\r\n\r\n",
        b"garbage\r\n\r\n",
    ] {
        let resp = http(addr, req);
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
    }
    let resp = http(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");

    // An oversized request head is refused rather than buffered without bound.
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&big);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A client that never finishes its request only holds the server for the timeout.
    let _idle = TcpStream::connect(addr).unwrap();
    let resp = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

    server.shutdown();
    // A process another test thread forks holds a copy of every descriptor, the listener
    // included, until it execs (close-on-exec): on a loaded machine that can take a
    // moment, during which a connection is still queued. It must go away soon after.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still listening 3 s after shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let text = render(&source());
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required for this test but could not be run ({e}); \
             install it (Debian/Ubuntu: `apt-get install prometheus`) and put it on PATH"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\nstdout: {}\nstderr: {}\ninput:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
