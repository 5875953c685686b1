//! The daemon's OTLP receivers, driven by the real OpenTelemetry Python
//! exporters (HTTP/protobuf with and without gzip, gRPC) and by hand-made
//! requests for what exporters never send: JSON bodies, malformed and
//! oversized bodies, floods. Received spans must become the same episodes
//! as the same spans read from a file, survive kill -9 once acknowledged,
//! and never be stored twice.
//!
//! The Python exporters live in a venv `.ci/run` creates from
//! `tests/fixtures/otlp/requirements.txt`; `WHETSTONE_OTLP_PYTHON` names its
//! interpreter. Without it the exporter tests say so and pass, except in CI
//! (`CI=true`), where they fail.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::{Value, json};
use whetstone::store::{EpisodeFilter, Store};
use whetstone::trace::{Episode, Source};

use crate::support::free_port;

const EXPORT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/otlp/export.py");

/// The venv's Python, or `None` (outside CI) when it is not installed.
fn python() -> Option<PathBuf> {
    match std::env::var_os("WHETSTONE_OTLP_PYTHON") {
        Some(python) => Some(PathBuf::from(python)),
        None if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("WHETSTONE_OTLP_PYTHON is not set: .ci/run installs the exporters' venv")
        }
        None => {
            eprintln!(
                "skipping: set WHETSTONE_OTLP_PYTHON to a Python with tests/fixtures/otlp/requirements.txt (.ci/run does)"
            );
            None
        }
    }
}

struct Daemon {
    dir: tempfile::TempDir,
    http: u16,
    grpc: u16,
    child: Option<Child>,
}

impl Daemon {
    /// A data folder and config; `otlp` and `daemon` are extra lines for
    /// those sections.
    fn new(otlp: &str, daemon: &str) -> Daemon {
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
poll_interval_secs = 1
debounce_millis = 100
apo_min_new_episodes = 0
apo_interval_secs = 0
rl_min_new_decisions = 0
{daemon}
[api]
listen = "127.0.0.1:{api}"
[otlp]
http_listen = "127.0.0.1:{http}"
grpc_listen = "127.0.0.1:{grpc}"
{otlp}
"#
            ),
        )
        .unwrap();
        Daemon {
            dir,
            http,
            grpc,
            child: None,
        }
    }

    fn start(&mut self) {
        self.start_with_token(None);
    }

    /// Starts the daemon with `WHETSTONE_API_TOKEN` set to `token`.
    fn start_with_token(&mut self, token: Option<&str>) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_whetstone"));
        command
            .arg("daemon")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("WHETSTONE_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = token {
            command.env("WHETSTONE_API_TOKEN", token);
        }
        self.child = Some(command.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no OTLP listener: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.http)
    }

    /// Episodes stored so far, by trace id.
    fn episodes(&self) -> BTreeMap<String, Episode> {
        let Ok(store) = Store::open_read_only(&self.data()) else {
            return BTreeMap::new();
        };
        episodes_of(&store)
    }

    /// Waits until `n` episodes are stored.
    fn wait_episodes(&self, n: usize, secs: u64) -> BTreeMap<String, Episode> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let episodes = self.episodes();
            if episodes.len() >= n {
                return episodes;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} episodes after {secs}s; log:\n{}",
                episodes.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the exporter script against this daemon.
    fn export(&self, python: &Path, protocol: &str, args: &[&str]) -> Value {
        let endpoint = match protocol {
            "grpc" => format!("http://127.0.0.1:{}", self.grpc),
            _ => self.url(),
        };
        let output = Command::new(python)
            .arg(EXPORT_SCRIPT)
            .args(["--protocol", protocol, "--endpoint", &endpoint])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "exporter failed: {}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn episodes_of(store: &Store) -> BTreeMap<String, Episode> {
    store
        .load_episodes(&EpisodeFilter::default())
        .unwrap()
        .into_iter()
        .map(|stored| {
            let mut episode = stored.episode;
            // Where it was read from is the one thing allowed to differ.
            episode.source = Source::default();
            (episode.trace_id.clone(), episode)
        })
        .collect()
}

/// The episodes `traces import --finalize` makes of `files`.
fn imported(files: &[PathBuf]) -> BTreeMap<String, Episode> {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["traces", "import", "--finalize"])
        .args(files)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    episodes_of(&Store::open(&dir.path().join(".whetstone")).unwrap())
}

#[test]
fn python_exporters_over_http_gzip_and_grpc_give_the_episodes_a_file_gives() {
    let Some(python) = python() else { return };
    let mut daemon = Daemon::new("", "");
    daemon.start();
    let runs = 12;
    let files: Vec<PathBuf> = ["http", "gzip", "grpc", "grpc-gzip"]
        .iter()
        .map(|name| daemon.dir.path().join(format!("{name}.jsonl")))
        .collect();
    let runs_arg = runs.to_string();
    for (idx, (protocol, compression)) in [
        ("http", "none"),
        ("http", "gzip"),
        ("grpc", "none"),
        ("grpc", "gzip"),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("{protocol}-{compression}");
        let file = files[idx].to_str().unwrap();
        // Five spans per request: every trace's four spans are split
        // across two requests, some with the root first.
        let result = daemon.export(
            &python,
            protocol,
            &[
                "--compression",
                compression,
                "--runs",
                &runs_arg,
                "--prefix",
                &prefix,
                "--per-request",
                "5",
                "--file",
                file,
            ],
        );
        assert_eq!(result["failed"], 0, "{result}");
    }
    let received = daemon.wait_episodes(4 * runs, 60);
    let from_files = imported(&files);
    assert_eq!(from_files.len(), 4 * runs);
    assert_eq!(received.len(), from_files.len());
    for (trace_id, episode) in &from_files {
        assert_eq!(received.get(trace_id), Some(episode), "trace {trace_id}");
    }
    let sample = from_files.values().next().unwrap();
    assert_eq!(sample.steps.len(), 3, "{sample:?}");
    assert_eq!(sample.prompt.name.as_deref(), Some("Helper"));

    // A client retrying requests whose answers it lost stores nothing twice.
    let again = daemon.export(
        &python,
        "http",
        &["--runs", "3", "--prefix", "again", "--repeat", "2"],
    );
    assert_eq!(again["requests"], 6);
    let after = daemon.wait_episodes(4 * runs + 3, 30);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(daemon.episodes().len(), after.len());
    assert_eq!(after.len(), 4 * runs + 3);
}

/// One OTLP/JSON request of `n` spans of one trace, hand-written in the
/// spec's encoding with what clients may do: int64 as numbers or strings,
/// unknown fields.
fn json_request(trace: &str) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]},
            "someFutureField": {"x": 1},
            "scopeSpans": [{
                "scope": {"name": "hand"},
                "spans": [
                    {
                        "traceId": trace, "spanId": "00000000000000a1", "parentSpanId": "",
                        "name": "invoke_agent Helper", "kind": 1,
                        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000003000000000_u64,
                        "attributes": [
                            {"key": "gen_ai.operation.name", "value": {"stringValue": "invoke_agent"}},
                            {"key": "whetstone.prompt.name", "value": {"stringValue": "Helper"}},
                            {"key": "whetstone.reward.success", "value": {"doubleValue": 1.0}}
                        ],
                        "status": {"code": 1},
                        "flags": 257
                    },
                    {
                        "traceId": trace, "spanId": "00000000000000a2", "parentSpanId": "00000000000000a1",
                        "name": "execute_tool calculator", "kind": 1,
                        "startTimeUnixNano": 1700000001000000000_u64, "endTimeUnixNano": "1700000002000000000",
                        "attributes": [
                            {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                            {"key": "gen_ai.tool.name", "value": {"stringValue": "calculator"}},
                            {"key": "attempt", "value": {"intValue": "2"}},
                            {"key": "size", "value": {"intValue": 3}}
                        ],
                        "droppedAttributesCount": 0
                    }
                ]
            }]
        }]
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `google.rpc.Status` with its details, as gRPC errors carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatusWithDetails {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(message, repeated, tag = "3")]
    details: Vec<AnyDetail>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyDetail {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// `google.rpc.Status` as OTLP/HTTP error bodies carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_takes_json_refuses_bad_and_oversized_bodies_and_says_which_spans_it_rejected() {
    let mut daemon = Daemon::new("max_request_bytes = 65536", "");
    daemon.start();
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, content_type: &'static str, encoding: Option<&'static str>| {
        let mut request = client
            .post(daemon.url())
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        request.send()
    };

    // JSON, plain and gzip: 200 in JSON, no partial success.
    let trace_a = "5b8efff798038103d269b633813fc60c";
    let trace_b = "5b8efff798038103d269b633813fc60d";
    let body_a = json_request(trace_a).to_string();
    let response = post(body_a.clone().into_bytes(), "application/json", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer.get("partialSuccess").is_none_or(Value::is_null),
        "{answer}"
    );
    let body_b = json_request(trace_b).to_string();
    let response = post(
        gzip(body_b.as_bytes()),
        "application/json; charset=utf-8",
        Some("gzip"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let received = daemon.wait_episodes(2, 30);
    let file = daemon.dir.path().join("same.jsonl");
    fs::write(&file, format!("{body_a}\n{body_b}\n")).unwrap();
    assert_eq!(received, imported(&[file]));
    let tool = &received[trace_a].steps[0];
    assert_eq!(tool.name, "calculator");

    // A span with a bad id: the others are kept, the client is told.
    let mut partial = json_request("5b8efff798038103d269b633813fc60e");
    partial["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = json!("abcd");
    let response = post(partial.to_string().into_bytes(), "application/json", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("spanId is 2 bytes"), "{message}");

    // Undecodable: 400 with a google.rpc.Status in the request's type.
    let response = post(b"\x0a\xff\xff".to_vec(), "application/x-protobuf", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);
    let response = post(b"{\"resourceSpans\": [".to_vec(), "application/json", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["code"], 3, "{status}");
    let response = post(b"<xml/>".to_vec(), "text/xml", None).await.unwrap();
    assert_eq!(response.status(), 415);

    // Over otlp.max_request_bytes as sent, and once decompressed.
    let response = post(vec![b' '; 70_000], "application/json", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let bomb = gzip(&vec![b' '; 10_000_000]);
    assert!(bomb.len() < 65536);
    let response = post(bomb, "application/json", Some("gzip")).await.unwrap();
    assert_eq!(response.status(), 413);
    let status: Value = response.json().await.unwrap();
    assert!(
        status["message"].as_str().unwrap().contains("decompresses"),
        "{status}"
    );

    // Nothing undecodable reached the store; the bad span is a reject there
    // too, with the reason a file would give.
    let episodes = daemon.wait_episodes(3, 30);
    assert_eq!(episodes.len(), 3);
    let store = Store::open_read_only(&daemon.data()).unwrap();
    let rejects = store.rejects(10).unwrap();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0].reason, "invalid_field");
    assert!(rejects[0].detail.contains("spanId"), "{rejects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_acknowledged_survive_kill_9() {
    // No ingestion pass after the first: what is acknowledged is only in
    // the spool when the daemon dies.
    let mut daemon = Daemon::new("", "");
    let config = daemon.dir.path().join("config.toml");
    let normal = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        normal
            .replace("poll_interval_secs = 1", "poll_interval_secs = 3600")
            .replace("debounce_millis = 100", "debounce_millis = 60000"),
    )
    .unwrap();
    daemon.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let mut traces = Vec::new();
    for idx in 0..20 {
        let trace = format!("{:032x}", 0xabc000 + idx);
        let response = client
            .post(daemon.url())
            .header("content-type", "application/json")
            .body(json_request(&trace).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        traces.push(trace);
    }
    daemon.kill_9();
    assert_eq!(daemon.episodes().len(), 0, "ingested before the kill");
    fs::write(&config, normal).unwrap();
    daemon.start();
    let episodes = daemon.wait_episodes(20, 30);
    assert_eq!(episodes.keys().cloned().collect::<Vec<_>>(), traces);

    // SIGTERM: the receiver stops accepting, drains, and the daemon exits.
    let mut child = daemon.child.take().unwrap();
    // SAFETY: kill(2) on the pid of a child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        daemon.log().contains("OTLP receiver stopped"),
        "{}",
        daemon.log()
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", daemon.http)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_get_429_or_503_with_retry_after_then_succeed() {
    // One request at a time, a small spool and slow ingestion.
    let mut daemon = Daemon::new(
        "max_concurrent_requests = 1\nmax_spool_bytes = 1_048_576",
        "",
    );
    let config = daemon.dir.path().join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replace("poll_interval_secs = 1", "poll_interval_secs = 3600")
            .replace("debounce_millis = 100", "debounce_millis = 4000"),
    )
    .unwrap();
    daemon.start();
    let client = reqwest::Client::new();

    // A request still sending its body holds the only permit.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json_request("00000000000000000000000000000f01").to_string();
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", daemon.http))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = client
        .post(daemon.url())
        .header("content-type", "application/json")
        .body(json_request("00000000000000000000000000000f02").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 429);
    assert_eq!(busy.headers()["retry-after"], "1");
    // gRPC shares the permits: RESOURCE_EXHAUSTED, with the RetryInfo that
    // OTLP clients need to retry it.
    let mut grpc = TraceServiceClient::connect(format!("http://127.0.0.1:{}", daemon.grpc))
        .await
        .unwrap();
    let refused = grpc
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let details = RpcStatusWithDetails::decode(refused.details()).unwrap();
    assert_eq!(details.code, 8);
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Fill the spool past max_spool_bytes faster than ingestion reads it.
    let big_attribute = "x".repeat(60_000);
    let mut refused = None;
    for idx in 0..100 {
        let mut request = json_request(&format!("{:032x}", 0x1000 + idx));
        request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "big", "value": {"stringValue": big_attribute}}));
        let response = client
            .post(daemon.url())
            .header("content-type", "application/json")
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            refused = Some((idx, response));
            break;
        }
    }
    let (accepted, response) = refused.expect("the spool never filled");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let status: Value = response.json().await.unwrap();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("max_spool_bytes"),
        "{status}"
    );
    // Retrying as a client does, it gets in once ingestion caught up.
    let mut request = json_request(&format!("{:032x}", 0x1000 + accepted));
    request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "big", "value": {"stringValue": big_attribute}}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .post(daemon.url())
            .header("content-type", "application/json")
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(Instant::now() < deadline, "still refused: {}", daemon.log());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let episodes = daemon.wait_episodes(accepted as usize + 2, 30);
    assert_eq!(episodes.len(), accepted as usize + 2);
    // Read spool files were removed.
    let spool_bytes: u64 = fs::read_dir(daemon.data().join("otlp-spool"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        spool_bytes < 1_048_576,
        "{spool_bytes} bytes left in the spool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_configured_requests_must_carry_it() {
    let mut daemon = Daemon::new("", "");
    daemon.start_with_token(Some("s3cret"));
    let client = reqwest::Client::new();
    let body = json_request("5b8efff798038103d269b633813fc6aa").to_string();
    let send = |authorization: Option<&'static str>| {
        let mut request = client
            .post(daemon.url())
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(send(Some("Bearer wrong")).await.unwrap().status(), 401);
    let mut grpc = TraceServiceClient::connect(format!("http://127.0.0.1:{}", daemon.grpc))
        .await
        .unwrap();
    let refused = grpc
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(send(Some("Bearer s3cret")).await.unwrap().status(), 200);
    assert_eq!(daemon.wait_episodes(1, 30).len(), 1);
}
