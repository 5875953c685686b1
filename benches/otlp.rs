//! OTLP receiver throughput, latency and memory against importing the same
//! spans from a file, in one run.
//!
//! The corpus is the ingestion bench's (`corpus.rs`: GenAI agent traces of
//! four spans, OTLP/JSON). Its requests are regrouped into export requests
//! of about 200 spans, as batching exporters send them, and encoded as
//! protobuf before timing starts.
//!
//! 1. File: `whetstone traces import --finalize` of the corpus into a fresh
//!    store (child process): spans/s.
//! 2. HTTP/protobuf, then gRPC: a fresh `whetstone daemon` (child process);
//!    8 concurrent exporters send every request; spans/s is measured from
//!    the first request to the last episode stored (so it includes
//!    ingestion from the spool), also until the last 200 (acknowledged,
//!    durable). p50/p99 request latency and the daemon's peak RSS
//!    (`VmHWM`) are reported.
//!
//! Ratio receiver ÷ file: target >= 0.8.
//!
//! Run: `cargo bench --bench otlp` (corpus size WHETSTONE_BENCH_MB, default
//! 40). Record the output in docs/BENCHMARKS.md.

#[path = "corpus.rs"]
mod corpus;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use whetstone::store::Store;

const EXPORTERS: usize = 8;
const SPANS_PER_REQUEST: usize = 200;

fn binary() -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("whetstone")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The corpus regrouped into export requests of about
/// [`SPANS_PER_REQUEST`] spans, protobuf-encoded; and the span count.
fn requests(corpus: &Path) -> (Vec<Vec<u8>>, u64) {
    let mut requests = Vec::new();
    let mut current = ExportTraceServiceRequest::default();
    let (mut spans_in_current, mut n_spans) = (0, 0u64);
    for line in BufReader::new(File::open(corpus).unwrap()).lines() {
        let request: ExportTraceServiceRequest = serde_json::from_str(&line.unwrap()).unwrap();
        for resource in request.resource_spans {
            let spans: usize = resource.scope_spans.iter().map(|s| s.spans.len()).sum();
            spans_in_current += spans;
            n_spans += spans as u64;
            current.resource_spans.push(resource);
        }
        if spans_in_current >= SPANS_PER_REQUEST {
            requests.push(std::mem::take(&mut current).encode_to_vec());
            spans_in_current = 0;
        }
    }
    if spans_in_current > 0 {
        requests.push(current.encode_to_vec());
    }
    (requests, n_spans)
}

fn import_secs(corpus: &Path) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let status = Command::new(binary())
        .args(["traces", "import", "--finalize"])
        .arg(corpus)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let secs = start.elapsed().as_secs_f64();
    let episodes = Store::open(&dir.path().join(".whetstone"))
        .unwrap()
        .episode_count()
        .unwrap();
    (secs, episodes)
}

struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    http: u16,
    grpc: u16,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (http, grpc, api) = (free_port(), free_port(), free_port());
        fs::create_dir(dir.path().join("traces")).unwrap();
        fs::write(
            dir.path().join("config.toml"),
            format!(
                r#"data_dir = "data"
[traces]
dir = "traces"
quiet_period_secs = 1
[daemon]
debounce_millis = 0
apo_min_new_episodes = 0
apo_interval_secs = 0
rl_min_new_decisions = 0
[api]
listen = "127.0.0.1:{api}"
[otlp]
http_listen = "127.0.0.1:{http}"
grpc_listen = "127.0.0.1:{grpc}"
"#
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("daemon")
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            dir,
            child,
            http,
            grpc,
        }
    }

    fn episodes(&self) -> u64 {
        Store::open_read_only(&self.dir.path().join("data"))
            .and_then(|store| store.episode_count())
            .unwrap_or(0)
    }

    fn peak_rss_mib(&self) -> f64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    acked_secs: f64,
    stored_secs: f64,
    latencies_ms: Vec<f64>,
    peak_rss_mib: f64,
}

/// Sends every request from [`EXPORTERS`] concurrent exporters, then waits
/// for `episodes` episodes.
fn flood(grpc: bool, requests: &Arc<Vec<Vec<u8>>>, episodes: u64) -> Run {
    let daemon = Daemon::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let latencies_ms = runtime.block_on(async {
        let mut tasks = Vec::new();
        for exporter in 0..EXPORTERS {
            let requests = Arc::clone(requests);
            let (http, grpc_port) = (daemon.http, daemon.grpc);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let http_client = reqwest::Client::new();
                let mut grpc_client = if grpc {
                    Some(
                        TraceServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
                            .await
                            .unwrap()
                            .max_encoding_message_size(64 * 1024 * 1024),
                    )
                } else {
                    None
                };
                for body in requests.iter().skip(exporter).step_by(EXPORTERS) {
                    loop {
                        let sent = Instant::now();
                        let ok = match &mut grpc_client {
                            Some(client) => {
                                let request =
                                    ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                                client.export(request).await.is_ok()
                            }
                            None => http_client
                                .post(format!("http://127.0.0.1:{http}/v1/traces"))
                                .header("content-type", "application/x-protobuf")
                                .body(body.clone())
                                .send()
                                .await
                                .is_ok_and(|r| r.status() == 200),
                        };
                        if ok {
                            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let acked_secs = start.elapsed().as_secs_f64();
    while daemon.episodes() < episodes {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored_secs = start.elapsed().as_secs_f64();
    Run {
        acked_secs,
        stored_secs,
        latencies_ms,
        peak_rss_mib: daemon.peak_rss_mib(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mb: u64 = std::env::var("WHETSTONE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    {
        let mut out = BufWriter::new(File::create(&corpus).unwrap());
        corpus::write_otlp_corpus(&mut out, mb * 1_000_000, 42).unwrap();
        out.flush().unwrap();
    }
    let (requests, n_spans) = requests(&corpus);
    let requests = Arc::new(requests);
    println!(
        "corpus: {mb} MB OTLP/JSON, {n_spans} spans, {} protobuf requests of ~{SPANS_PER_REQUEST} spans, {EXPORTERS} exporters",
        requests.len()
    );
    let (file_secs, episodes) = import_secs(&corpus);
    let file_rate = n_spans as f64 / file_secs;
    println!("file import: {file_secs:.2} s, {file_rate:.0} spans/s, {episodes} episodes");
    for (name, grpc) in [("HTTP/protobuf", false), ("gRPC", true)] {
        let mut run = flood(grpc, &requests, episodes);
        run.latencies_ms.sort_by(f64::total_cmp);
        let stored_rate = n_spans as f64 / run.stored_secs;
        println!(
            "{name}: stored {:.0} spans/s ({:.2} s, ratio to file {:.2}); acknowledged {:.0} spans/s ({:.2} s); latency p50 {:.1} ms, p99 {:.1} ms; daemon peak RSS {:.1} MiB",
            stored_rate,
            run.stored_secs,
            stored_rate / file_rate,
            n_spans as f64 / run.acked_secs,
            run.acked_secs,
            percentile(&run.latencies_ms, 0.5),
            percentile(&run.latencies_ms, 0.99),
            run.peak_rss_mib,
        );
    }
}
