//! `--metrics`: a real Prometheus server (Debian's package) scrapes sockleak and answers a
//! query about the leak.
use std::{
    fs,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use sockleak_tests::{
    Scenario, Trace, eventually, free_port, http_get, require_program, require_root,
};

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    pub addr: String,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second.
    fn start(target: &str) -> Self {
        let binary = require_program("prometheus");
        let dir = std::env::temp_dir().join(format!("sockleak-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: sockleak\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Self { child, dir, addr }
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Ok((200, body)) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}"))
        else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_open_sockets_of_a_leaking_process() {
    require_root();
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let pid = client.pid();
    let metrics_port = free_port();
    let tracer = Trace::start_also(&[pid], &["--quiet", "--metrics", &metrics_port.to_string()]);
    let target = format!("127.0.0.1:{metrics_port}");
    assert_eq!(
        tracer.started.metrics,
        Some(format!("http://{target}/metrics")),
        "a bare port binds localhost"
    );
    client.run(&format!("connect 127.0.0.1:{port} 6"));
    client.run("udp 127.0.0.1:0 2");

    // Our own scrape first: the exposition must parse (Prometheus would refuse it otherwise).
    let body = eventually("sockleak's /metrics to show the sockets", |last| {
        let (status, body) = http_get(&target, "/metrics").ok()?;
        *last = body.clone();
        (status == 200 && body.contains("sockleak_open_sockets{")).then_some(body)
    });
    assert!(
        body.contains("# TYPE sockleak_events_lost_total counter"),
        "{body}"
    );
    assert_eq!(http_get(&target, "/nope").unwrap().0, 404);

    let prometheus = Prometheus::start(&target);
    let established = format!(
        "sum(sockleak_open_sockets{{pid=\"{pid}\",protocol=\"tcp\",state=\"ESTABLISHED\"}})"
    );
    let value = eventually("Prometheus to answer the query with 6", |last| {
        let result = prometheus.query(&established);
        *last = format!("{result:?}");
        let value = result.first()?["value"][1].as_str()?.to_owned();
        (value == "6").then_some(value)
    });
    assert_eq!(value, "6");
    let udp = prometheus.query(&format!(
        "sum(sockleak_open_sockets{{pid=\"{pid}\",protocol=\"udp\"}})"
    ));
    assert_eq!(udp[0]["value"][1], "2", "{udp:?}");
    let up = prometheus.query("up{job=\"sockleak\"}");
    assert_eq!(up[0]["value"][1], "1", "the scrape itself succeeds: {up:?}");
    // Its value depends on everything else the machine does (releases are not filtered by
    // owner); that it is scraped is what matters here.
    let lost = prometheus.query("sockleak_events_lost_total");
    assert!(
        lost[0]["value"][1]
            .as_str()
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{lost:?}"
    );
}
