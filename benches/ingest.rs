//! Ingestion throughput and memory, measured against baselines in one run.
//!
//! 1. Throughput: a generated OTLP/JSON corpus (default 200 MB) is parsed by
//!    `serde_json` into `serde_json::Value`, line by line (the raw-parse
//!    baseline), then imported by Whetstone into a fresh store (parse,
//!    normalize, assemble, commit exactly once). Reported as MB/s and as the
//!    ratio Whetstone / baseline. Target: >= 0.5.
//! 2. Memory: the real `whetstone traces import` imports a 1 GB corpus in a
//!    child process; its peak RSS comes from `getrusage(RUSAGE_CHILDREN)`.
//!    Target: <= 200 MB.
//!
//! Both sides run in this process with the binary's allocator (mimalloc).
//!
//! Run: `cargo bench --bench ingest` (sizes: WHETSTONE_BENCH_MB,
//! WHETSTONE_BENCH_RSS_MB; WHETSTONE_BENCH_ROUNDS alternations of the two
//! sides, best of each compared; WHETSTONE_BENCH_CORPUS_OUT=FILE only writes
//! the corpus, for profiling). Record the output in docs/BENCHMARKS.md.

#[path = "corpus.rs"]
mod corpus;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use whetstone::ingest::{IngestOptions, ingest_paths};
use whetstone::store::Store;

/// The allocator the `whetstone` binary uses, for both sides of the ratio.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_mb(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_corpus(path: &Path, mb: u64) -> u64 {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let traces = corpus::write_otlp_corpus(&mut out, mb * 1_000_000, 42).unwrap();
    out.flush().unwrap();
    // On disk before timing starts, so its writeback slows neither side.
    out.get_ref().sync_all().unwrap();
    traces
}

fn baseline_mb_per_s(path: &Path, bytes: f64) -> f64 {
    let start = Instant::now();
    let mut n_values = 0u64;
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).unwrap());
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        n_values += u64::from(value.is_object());
        std::hint::black_box(value);
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(n_values > 0);
    bytes / 1e6 / secs
}

fn whetstone_mb_per_s(path: &Path, bytes: f64, traces: u64) -> f64 {
    let data = tempfile::tempdir().unwrap();
    let mut store = Store::open(data.path()).unwrap();
    let start = Instant::now();
    let report = ingest_paths(
        &mut store,
        &[path.to_path_buf()],
        &IngestOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(report.episodes_new, traces, "every trace became an episode");
    assert_eq!(report.rejects_total(), 0);
    bytes / 1e6 / secs
}

/// Peak RSS in MB of a child `whetstone traces import` of `path`.
fn import_peak_rss_mb(path: &Path, traces: u64) -> (f64, f64) {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", data.path().join("store")),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["traces", "import", "--config"])
        .arg(&config)
        .arg(path)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("imported {traces} new episodes")),
        "{stdout}"
    );
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    (usage.ru_maxrss as f64 / 1024.0, secs)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest bench: run with `cargo bench --bench ingest`");
        return;
    }
    // For profiling: write the corpus to a file and stop.
    if let Ok(path) = std::env::var("WHETSTONE_BENCH_CORPUS_OUT") {
        write_corpus(Path::new(&path), env_mb("WHETSTONE_BENCH_MB", 200));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let throughput_mb = env_mb("WHETSTONE_BENCH_MB", 200);
    let rss_mb = env_mb("WHETSTONE_BENCH_RSS_MB", 1000);

    let corpus = dir.path().join("otlp.jsonl");
    let traces = write_corpus(&corpus, throughput_mb);
    let bytes = std::fs::metadata(&corpus).unwrap().len() as f64;
    // Warm the page cache so both sides read from memory.
    baseline_mb_per_s(&corpus, bytes);
    // Alternate the two sides a few times; the best of each is compared, so
    // a noisy neighbour slowing one round does not decide the ratio.
    let rounds = env_mb("WHETSTONE_BENCH_ROUNDS", 5).max(1);
    let (mut baseline, mut whetstone) = (0f64, 0f64);
    let mut round_ratios = Vec::new();
    for _ in 0..rounds {
        let b = baseline_mb_per_s(&corpus, bytes);
        let w = whetstone_mb_per_s(&corpus, bytes, traces);
        round_ratios.push(format!("{:.2}", w / b));
        baseline = baseline.max(b);
        whetstone = whetstone.max(w);
    }
    println!(
        "corpus: {:.0} MB OTLP/JSON, {traces} traces ({} lines); best of {rounds} rounds",
        bytes / 1e6,
        traces * 2
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| serde_json -> Value (baseline) | {baseline:.1} MB/s |");
    println!("| whetstone import (parse, assemble, SQLite commit) | {whetstone:.1} MB/s |");
    println!(
        "| ratio (target >= 0.5) | {:.2} (per round: {}) |",
        whetstone / baseline,
        round_ratios.join(", ")
    );
    std::fs::remove_file(&corpus).unwrap();

    let big = dir.path().join("otlp-big.jsonl");
    let big_traces = write_corpus(&big, rss_mb);
    let big_bytes = std::fs::metadata(&big).unwrap().len() as f64;
    let (peak_mb, secs) = import_peak_rss_mb(&big, big_traces);
    println!(
        "| peak RSS, `whetstone traces import` of {:.0} MB (target <= 200 MB) | {peak_mb:.0} MB ({:.1} MB/s) |",
        big_bytes / 1e6,
        big_bytes / 1e6 / secs
    );
}
