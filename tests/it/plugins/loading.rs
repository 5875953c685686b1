//! `PluginSet`: a folder of plugins reloaded atomically, and the compile
//! cache.

use std::path::Path;

use whetstone::plugin::{ErrorKind, HostOptions, Limits, PluginHost, PluginSet};

use super::{episode_json, guests, host};

fn copy(crate_name: &str, dir: &Path, name: &str) {
    std::fs::copy(guests::wasm(crate_name), dir.join(format!("{name}.wasm"))).unwrap();
}

#[test]
fn reload_loads_keeps_on_failure_and_unloads_removed_files() {
    let dir = tempfile::tempdir().unwrap();
    copy("tool_errors_reward", dir.path(), "reward");
    copy("constraint_mutator", dir.path(), "mutator");
    std::fs::write(
        dir.path().join("reward.toml"),
        "weight = 0.5\n[limits]\ntimeout_ms = 300\n[settings]\nmax_answer_chars = 10\n",
    )
    .unwrap();
    let set = PluginSet::new(host(2), dir.path().to_path_buf(), Limits::default());
    let report = set.reload();
    assert_eq!(report.loaded, ["mutator", "reward"]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let reward = set.get("reward").unwrap();
    assert_eq!(reward.weight, 0.5);
    assert_eq!(reward.limits.timeout_ms, 300);
    assert_eq!(
        set.host().score(&reward, &episode_json()).unwrap()[1].value,
        0.5
    );

    // Unchanged files are not reloaded.
    let report = set.reload();
    assert!(report.loaded.is_empty() && report.unloaded.is_empty());

    // A broken new version keeps the old one, and says why.
    std::fs::write(dir.path().join("reward.wasm"), b"not wasm").unwrap();
    let report = set.reload();
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0]
            .to_string()
            .starts_with("plugin `reward`: is not a valid WebAssembly component"),
        "{}",
        report.failed[0]
    );
    assert!(std::sync::Arc::ptr_eq(&set.get("reward").unwrap(), &reward));

    // A bad NAME.toml is reported with its file and key.
    copy("tool_errors_reward", dir.path(), "reward");
    std::fs::write(dir.path().join("reward.toml"), "[limits]\ntimeout_ms = 0\n").unwrap();
    let report = set.reload();
    let failed = report.failed[0].to_string();
    assert!(
        failed.contains("reward.toml: limits.timeout_ms: must be between 1 and 3600000, got 0"),
        "{failed}"
    );
    std::fs::write(dir.path().join("reward.toml"), "wieght = 1\n").unwrap();
    let failed = set.reload().failed[0].to_string();
    assert!(
        failed.contains("reward.toml") && failed.contains("unknown field `wieght`"),
        "{failed}"
    );

    // A removed file unloads; a call holding the old plugin still finishes.
    std::fs::remove_file(dir.path().join("reward.wasm")).unwrap();
    let report = set.reload();
    assert_eq!(report.unloaded, ["reward"]);
    assert!(set.get("reward").is_none());
    assert_eq!(set.host().score(&reward, &episode_json()).unwrap().len(), 2);
    assert_eq!(set.plugins().len(), 1);
}

#[test]
fn compiled_components_are_cached_by_content_and_a_corrupt_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let host = PluginHost::new(&HostOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        max_concurrent_calls: 1,
    })
    .unwrap();
    let bytes = std::fs::read(guests::wasm("tool_errors_reward")).unwrap();
    let options = whetstone::plugin::LoadOptions {
        limits: Limits::default(),
        weight: 1.0,
        settings_json: "{}".to_owned(),
    };
    host.load("reward", &bytes, options.clone()).unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let name = entries[0].file_name().unwrap().to_str().unwrap().to_owned();
    use sha2::Digest;
    assert!(
        name.starts_with(&hex::encode(sha2::Sha256::digest(&bytes))),
        "{name}"
    );

    std::fs::write(&entries[0], b"corrupt").unwrap();
    let plugin = host.load("reward", &bytes, options).unwrap();
    assert_eq!(host.score(&plugin, &episode_json()).unwrap().len(), 2);
    assert!(
        std::fs::read(&entries[0]).unwrap().len() > 1000,
        "entry rewritten"
    );
    assert!(!matches!(
        host.load(
            "reward",
            b"",
            whetstone::plugin::LoadOptions {
                limits: Limits::default(),
                weight: 1.0,
                settings_json: "{}".into()
            }
        )
        .unwrap_err()
        .kind,
        ErrorKind::Trap { .. }
    ));
}
