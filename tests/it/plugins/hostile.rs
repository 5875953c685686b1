//! Hostile plugins: each call ends with a clear error within its limit, and
//! the same host then serves the next call normally.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;
use whetstone::plugin::{ErrorKind, Limit, Limits, PluginHost};

use super::{episode_json, example_scores, host, load};

/// Calls hostile plugin `crate_name` under `limits`, expects an error that
/// `expected` accepts within `max_elapsed`, then checks the host still
/// scores with the reward example. Returns the error's text.
fn attack(
    host: &PluginHost,
    crate_name: &str,
    limits: Limits,
    settings: serde_json::Value,
    max_elapsed: Duration,
    expected: impl Fn(&ErrorKind) -> bool,
) -> String {
    let plugin = load(host, crate_name, limits, settings).unwrap();
    let started = Instant::now();
    let err = host.score(&plugin, &episode_json()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(expected(&err.kind), "{crate_name}: unexpected error: {err}");
    assert!(
        elapsed <= max_elapsed,
        "{crate_name}: took {elapsed:?}, limit {max_elapsed:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("plugin `{crate_name}` (whetstone:plugin@0.1.0): ")),
        "{message}"
    );

    let good = load(host, "tool_errors_reward", Limits::default(), json!({})).unwrap();
    assert_eq!(example_scores(host, &good).len(), 2, "after {crate_name}");
    message
}

fn limit(kind: &ErrorKind, which: Limit) -> bool {
    matches!(kind, ErrorKind::Limit { limit, .. } if *limit == which)
}

#[test]
fn infinite_loop_is_stopped_at_its_time_limit() {
    let host = host(2);
    let limits = Limits {
        timeout_ms: 150,
        fuel: u64::MAX / 4,
        ..Limits::default()
    };
    let message = attack(
        &host,
        "hostile_infinite_loop",
        limits,
        json!({}),
        Duration::from_millis(600),
        |kind| limit(kind, Limit::Time),
    );
    assert!(
        message.ends_with("exceeded its time limit of 150 ms (limits.timeout_ms)"),
        "{message}"
    );
}

#[test]
fn infinite_loop_is_stopped_when_its_fuel_runs_out() {
    let host = host(2);
    let limits = Limits {
        fuel: 5_000_000,
        timeout_ms: 60_000,
        ..Limits::default()
    };
    let message = attack(
        &host,
        "hostile_infinite_loop",
        limits,
        json!({}),
        Duration::from_secs(5),
        |kind| limit(kind, Limit::Fuel),
    );
    assert!(
        message.ends_with("exceeded its fuel limit of 5000000 units (limits.fuel)"),
        "{message}"
    );
}

#[test]
fn memory_bomb_is_stopped_at_its_memory_limit() {
    let host = host(2);
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let message = attack(
        &host,
        "hostile_memory_bomb",
        limits,
        json!({}),
        Duration::from_secs(2),
        |kind| limit(kind, Limit::Memory),
    );
    assert!(
        message.ends_with("exceeded its memory limit of 33554432 bytes (limits.memory_bytes)"),
        "{message}"
    );
}

#[test]
fn huge_output_is_refused_at_the_output_limit() {
    let host = host(2);
    let message = attack(
        &host,
        "hostile_huge_output",
        Limits::default(),
        json!({}),
        Duration::from_secs(2),
        |kind| limit(kind, Limit::Output),
    );
    assert!(
        message.contains("output limit of 1048576 bytes: returned 8388616 bytes"),
        "{message}"
    );
}

#[test]
fn panic_is_a_trap_quoting_the_panic_message() {
    let host = host(2);
    let message = attack(
        &host,
        "hostile_panic",
        Limits::default(),
        json!({}),
        Duration::from_secs(2),
        |kind| matches!(kind, ErrorKind::Trap { .. }),
    );
    assert!(message.contains("trapped: "), "{message}");
    assert!(
        message.contains("hostile plugin panicked on purpose"),
        "{message}"
    );
}

#[test]
fn stdout_flood_is_stopped_at_the_log_limit() {
    let host = host(2);
    let limits = Limits {
        log_bytes: 4096,
        ..Limits::default()
    };
    let message = attack(
        &host,
        "hostile_stdout_flood",
        limits,
        json!({}),
        Duration::from_secs(2),
        |kind| limit(kind, Limit::Log),
    );
    assert!(
        message.ends_with("exceeded its stdout/stderr limit of 4096 bytes (limits.log_bytes)"),
        "{message}"
    );
}

#[test]
fn file_access_is_denied() {
    let host = host(2);
    // The plugin returns what it read if it could read anything.
    let message = attack(
        &host,
        "hostile_file_open",
        Limits::default(),
        json!({}),
        Duration::from_secs(2),
        |kind| matches!(kind, ErrorKind::Returned(_)),
    );
    assert!(message.contains("open /etc/passwd: "), "{message}");
}

#[test]
fn socket_connections_are_denied() {
    let host = host(2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let message = attack(
        &host,
        "hostile_socket_open",
        Limits::default(),
        json!({"port": port}),
        Duration::from_secs(2),
        |kind| matches!(kind, ErrorKind::Returned(_)),
    );
    assert!(
        message.contains(&format!("connect 127.0.0.1:{port}: ")),
        "{message}"
    );
    assert!(
        listener.accept().is_err(),
        "the plugin reached the listener"
    );
}

#[test]
fn wrong_world_wrong_version_and_invalid_bytes_are_refused_at_load() {
    let host = host(2);
    let err = load(&host, "hostile_wrong_world", Limits::default(), json!({})).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("plugin `hostile_wrong_world`: is not a Whetstone plugin: it exports neither whetstone:plugin/scoring (world reward) nor whetstone:plugin/mutation (world mutator); its exports: [wasi:cli/run@"),
        "{message}"
    );

    let err = load(&host, "hostile_wrong_version", Limits::default(), json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `hostile_wrong_version`: exports whetstone:plugin/scoring@9.0.0, an interface version this Whetstone does not support (supported: 0.1.0)"
    );

    let options = whetstone::plugin::LoadOptions {
        limits: Limits::default(),
        weight: 1.0,
        settings_json: "{}".to_owned(),
    };
    let err = host
        .load("garbage", b"\0asm\x0d\0\x01\0garbage", options.clone())
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("plugin `garbage`: is not a valid WebAssembly component: "),
        "{err}"
    );
    let err = host.load("text", b"hello", options).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Load(_)), "{err}");

    let good = load(&host, "tool_errors_reward", Limits::default(), json!({})).unwrap();
    assert_eq!(example_scores(&host, &good).len(), 2);
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_thousand_concurrent_calls_complete_with_bounded_memory() {
    const N_CALLS: usize = 1000;
    const MAX_CONCURRENT: u32 = 8;
    let host = host(MAX_CONCURRENT);
    let plugin = load(&host, "tool_errors_reward", Limits::default(), json!({})).unwrap();
    let episode = episode_json();
    // Warm up allocator pools so the measurement sees growth, not set-up.
    host.score(&plugin, &episode).unwrap();
    let rss_before = rss_bytes();
    let results: Vec<_> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..N_CALLS)
            .map(|_| scope.spawn(|| host.score(&plugin, &episode)))
            .collect();
        calls.into_iter().map(|call| call.join().unwrap()).collect()
    });
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    assert_eq!(results.len(), N_CALLS);
    for result in &results {
        assert_eq!(result.as_ref().unwrap().len(), 2);
    }
    assert!(host.peak_concurrent_calls() <= MAX_CONCURRENT as usize);
    // 8 instances of a few MiB each, plus thread stacks; unbounded
    // instantiation would be 1000 instances.
    assert!(
        rss_growth < 256 << 20,
        "RSS grew by {} MiB",
        rss_growth >> 20
    );
}

#[test]
fn a_nan_score_is_refused() {
    let host = host(2);
    let message = attack(
        &host,
        "hostile_nan_score",
        Limits::default(),
        json!({}),
        Duration::from_secs(2),
        |kind| matches!(kind, ErrorKind::Unusable(_)),
    );
    assert!(
        message.ends_with("returned an unusable result: score `quality` is NaN"),
        "{message}"
    );
}
