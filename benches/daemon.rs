//! The daemon as its users run it: the release binary on a temporary folder,
//! driven through its trace folder and measured through its HTTP API and
//! `/proc`.
//!
//! 1. Idle: CPU time and peak RSS over `WHETSTONE_BENCH_IDLE_SECS` (60)
//!    seconds with nothing arriving, after catching up on a small store.
//! 2. Append-to-ingested latency: one episode appended at a time
//!    (`WHETSTONE_BENCH_APPENDS`, 200), each waited for in `/v1/status`;
//!    p50 and p99 with the default `debounce_millis` and with 0.
//! 3. Sustained ingest rate of an OTLP/JSON corpus (`WHETSTONE_BENCH_MB`, 50)
//!    appended while an APO round runs against the local test server, as a
//!    ratio to the same corpus ingested with no round running, in one run.
//! 4. Prompt resolution: `GET /v1/prompts/{name}/resolve?key=K` with an A/B
//!    test running, from 8 concurrent keep-alive clients
//!    (`WHETSTONE_BENCH_RESOLVES` requests in all, 20000): requests per
//!    second and p50/p99 latency on loopback.
//!
//! Run with `cargo bench --bench daemon`; results go to stdout.

#[path = "../tests/it/support/mod.rs"]
mod support;

#[path = "corpus.rs"]
mod corpus;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestServer, append, free_port};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release binary, built by `cargo bench` for the bench's own target.
fn binary() -> PathBuf {
    let dir = std::env::current_exe().unwrap();
    let target = dir.parent().unwrap().parent().unwrap();
    let bin = target.join("whetstone");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --release` first",
        bin.display()
    );
    bin
}

struct Daemon {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, base_url: &str, debounce_millis: u64, apo_min: u64) -> Daemon {
        let port = free_port();
        fs::create_dir_all(dir.join("traces")).unwrap();
        fs::write(
            dir.join("config.toml"),
            format!(
                r#"data_dir = "data"
[traces]
dir = "traces"
[llm]
base_url = "{base_url}"
api_key_env = "WHETSTONE_TEST_KEY_UNSET"
task_model = "task-model"
rewriter_model = "rewriter-model"
judge_model = "judge-model"
max_concurrency = 4
[apo]
generations = 200
patience = 0
scorer = {{ type = "f1" }}
[apo.budget]
max_llm_calls = 100000
[daemon]
debounce_millis = {debounce_millis}
apo_min_new_episodes = {apo_min}
rl_min_new_decisions = 0
[api]
listen = "127.0.0.1:{port}"
[otlp]
http_listen = ""
grpc_listen = ""
"#
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("daemon")
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.status().is_none() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn status(&self) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/v1/status", self.port);
        let body = ureq_get(&url)?;
        serde_json::from_str(&body).ok()
    }

    fn wait(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = self.status().filter(|s| done(s)) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn episodes(&self) -> u64 {
        self.status()
            .map_or(0, |s| s["ingest"]["episodes_new"].as_u64().unwrap_or(0))
    }

    /// (utime + stime in seconds, RSS in KiB) of the process.
    fn cpu_and_rss(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (ticks / 100.0, rss)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // After stop() this finds the process gone; on a panic it ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET on loopback with std only (no client runtime to measure).
fn ureq_get(url: &str) -> Option<String> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Bodies of this size come in one chunk when chunked.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let (_, rest) = body.split_once("\r\n")?;
        return Some(rest.rsplit_once("\r\n0\r\n")?.0.to_string());
    }
    Some(body.to_string())
}

fn controller_line(idx: usize) -> String {
    let episode = support::episode(
        &format!("bench-{idx:06}"),
        &format!("What is the weather in Oslo? (#{idx})"),
        &format!("it is {idx} degrees in Oslo"),
        true,
    );
    support::jsonl_line(&episode)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latency(root: &Path, base_url: &str, debounce_millis: u64, appends: usize) -> (f64, f64) {
    let daemon = Daemon::start(
        &root.join(format!("latency-{debounce_millis}")),
        base_url,
        debounce_millis,
        0,
    );
    let file = daemon.dir.join("traces/agent.jsonl");
    let mut millis = Vec::with_capacity(appends);
    for idx in 0..appends {
        let before = daemon.episodes();
        let started = Instant::now();
        append(&file, &controller_line(idx));
        daemon.wait(|s| s["ingest"]["episodes_new"].as_u64() > Some(before));
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    daemon.stop();
    millis.sort_by(f64::total_cmp);
    (percentile(&millis, 0.5), percentile(&millis, 0.99))
}

/// MB/s of ingesting `corpus`, with an APO round running when `round`.
fn ingest_rate(root: &Path, base_url: &str, corpus: &Path, round: bool) -> f64 {
    let name = if round { "with-round" } else { "idle" };
    let daemon = Daemon::start(&root.join(name), base_url, 500, if round { 8 } else { 0 });
    if round {
        let file = daemon.dir.join("traces/controller.jsonl");
        for idx in 0..40 {
            append(&file, &controller_line(idx));
        }
        daemon.wait(|s| s["running"]["apo"]["id"].is_i64());
    }
    let bytes_before = daemon.status().unwrap()["ingest"]["bytes"]
        .as_u64()
        .unwrap();
    let size = fs::metadata(corpus).unwrap().len();
    let started = Instant::now();
    fs::copy(corpus, daemon.dir.join("traces/otlp.jsonl")).unwrap();
    let status = daemon.wait(|s| s["ingest"]["bytes"].as_u64() >= Some(bytes_before + size));
    let secs = started.elapsed().as_secs_f64();
    if round {
        assert!(
            status["running"]["apo"]["id"].is_i64(),
            "the round ended before the import did: make it longer"
        );
    }
    daemon.stop();
    size as f64 / 1e6 / secs
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    server.set_latency(Duration::from_millis(50));
    let base_url = server.base_url();
    let root = std::env::temp_dir().join(format!("whetstone-daemon-bench-{}", std::process::id()));
    fs::create_dir_all(&root).unwrap();

    // 1. Idle.
    let idle_secs = env_u64("WHETSTONE_BENCH_IDLE_SECS", 60);
    let daemon = Daemon::start(&root.join("idle"), &base_url, 500, 0);
    let file = daemon.dir.join("traces/agent.jsonl");
    for idx in 0..1000 {
        append(&file, &controller_line(idx));
    }
    daemon.wait(|s| s["ingest"]["episodes_new"] == 1000);
    let (cpu_before, _) = daemon.cpu_and_rss();
    let mut peak_rss = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(idle_secs) {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(daemon.cpu_and_rss().1);
    }
    let (cpu_after, _) = daemon.cpu_and_rss();
    let cpu_share = (cpu_after - cpu_before) / started.elapsed().as_secs_f64();
    daemon.stop();
    println!(
        "idle over {idle_secs}s (1000 episodes stored, poll every 10s): CPU {:.3} % of a core, peak RSS {:.1} MiB",
        cpu_share * 100.0,
        peak_rss as f64 / 1024.0
    );

    // 2. Latency.
    let appends = env_u64("WHETSTONE_BENCH_APPENDS", 200) as usize;
    for debounce in [500, 0] {
        let (p50, p99) = latency(&root, &base_url, debounce, appends);
        println!(
            "append-to-ingested over {appends} appends, debounce_millis = {debounce}: p50 {p50:.1} ms, p99 {p99:.1} ms"
        );
    }

    // 3. Sustained ingest, without and with a round running.
    let megabytes = env_u64("WHETSTONE_BENCH_MB", 50);
    let corpus = root.join("corpus.jsonl");
    {
        let mut out = BufWriter::new(fs::File::create(&corpus).unwrap());
        corpus::write_otlp_corpus(&mut out, megabytes * 1_000_000, 7).unwrap();
        out.flush().unwrap();
        out.get_ref().sync_all().unwrap();
    }
    let alone = ingest_rate(&root, &base_url, &corpus, false);
    let during = ingest_rate(&root, &base_url, &corpus, true);
    println!(
        "ingest of {megabytes} MB OTLP/JSON: {alone:.1} MB/s alone, {during:.1} MB/s while an APO round runs (ratio {:.2})",
        during / alone
    );

    // 4. Resolve.
    let total = env_u64("WHETSTONE_BENCH_RESOLVES", 20_000) as usize;
    let daemon = Daemon::start(&root.join("resolve"), &base_url, 500, 0);
    let mut registry = whetstone::registry::PromptRegistry::open(
        &daemon.dir.join("data"),
        Default::default(),
        "bench",
    )
    .unwrap();
    for text in [
        "You are the Controller.",
        "You are the Controller. Cite the tool result.",
    ] {
        registry
            .register_prompt(None, "Controller", text, Default::default())
            .unwrap();
    }
    registry.start_ab_test("Controller", "1", "2", 0.1).unwrap();
    let (rate, p50, p99) = runtime.block_on(resolve_load(daemon.port, total, 8));
    daemon.stop();
    println!(
        "resolve with an A/B test running, 8 clients, {total} requests: {rate:.0} requests/s, p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    let _ = fs::remove_dir_all(&root);
}

/// Sends `total` resolve requests from `clients` concurrent keep-alive
/// clients; returns (requests per second, p50 ms, p99 ms).
async fn resolve_load(port: u16, total: usize, clients: usize) -> (f64, f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut millis = Vec::with_capacity(total / clients);
                for i in 0..total / clients {
                    let url = format!(
                        "http://127.0.0.1:{port}/v1/prompts/Controller/resolve?key=user-{client}-{i}"
                    );
                    let sent = Instant::now();
                    let response = http.get(&url).send().await.unwrap();
                    assert!(response.status().is_success());
                    response.bytes().await.unwrap();
                    millis.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                millis
            })
        })
        .collect();
    let mut millis = Vec::with_capacity(total);
    for task in tasks {
        millis.extend(task.await.unwrap());
    }
    let rate = millis.len() as f64 / started.elapsed().as_secs_f64();
    millis.sort_by(f64::total_cmp);
    (rate, percentile(&millis, 0.5), percentile(&millis, 0.99))
}
