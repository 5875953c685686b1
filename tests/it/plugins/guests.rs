//! The guest plugins of `plugins/` (SDK examples and hostile plugins),
//! built for wasm32-wasip2 by one cargo invocation per process.
//!
//! Cargo is always run (it is a no-op when the components are up to date,
//! so they never go stale against their sources); cargo's own lock on
//! `plugins/target` serializes test binaries and benches building at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The guest workspace.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

/// Path of the built component of crate `name` (underscored), building the
/// guest workspace first if this process has not yet.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let out_dir = BUILT
        .get_or_init(build)
        .as_ref()
        .unwrap_or_else(|err| panic!("{err}"));
    out_dir.join(format!("{name}.wasm"))
}

fn build() -> Result<PathBuf, String> {
    let workspace = workspace();
    let target_dir = workspace.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .output()
        .map_err(|err| format!("cannot run cargo to build the guest plugins: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint =
            if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
                "\nhint: rustup target add wasm32-wasip2"
            } else {
                ""
            };
        return Err(format!(
            "building the guest plugins failed:\n{stderr}{hint}"
        ));
    }
    Ok(target_dir.join("wasm32-wasip2").join("release"))
}
