//! The sandbox: one wasmtime engine for every plugin, and one fresh store
//! per call.
//!
//! A plugin is compiled once (and cached on disk by content hash and engine
//! build) and linked once into an `InstancePre`; every call then
//! instantiates it from the pooling allocator into a new `Store` that
//! carries the call's limits: a `ResourceLimiter` for memory, fuel for
//! instructions, an epoch deadline for wall time (a ticker thread advances
//! the engine's epoch), a cap on the returned data and on what the plugin
//! prints. WASI is preview 2 with nothing granted: no preopened directory,
//! no environment, no arguments, no sockets or name lookup. Whatever goes
//! wrong inside a call — a trap, a panic, a limit — becomes that call's
//! [`PluginError`]; the store is dropped and the next call starts clean.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::{Limit, Limits, MAX_MEMORY_BYTES, MemoryLimitExceeded, MemoryLimiter};
use super::wit::{self, Linkers, Prepared, Request, Response, WitVersion, World};
use super::{ErrorKind, MutationContext, NamedScore, PluginError};

/// How often the epoch advances: the granularity of `timeout_ms`.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per pooled memory and table, how much stays mapped between calls: reset
/// by writing zeros (only the pages a call dirtied, where the kernel can
/// tell, Linux ≥ 6.7) instead of being unmapped and faulted in again.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// How much of a failed call's stderr its error quotes.
const STDERR_TAIL_BYTES: usize = 400;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Where compiled plugins are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Calls running at once; further calls wait. Each running call holds
    /// one instance slot of the pooling allocator, so this bounds memory to
    /// about `max_concurrent_calls × limits.memory_bytes`; between calls a
    /// slot keeps at most the pages its calls dirtied, up to 2 MiB per
    /// memory.
    pub max_concurrent_calls: u32,
}

/// The plugin runtime shared by every plugin and every caller.
pub struct PluginHost {
    engine: Engine,
    linkers: Linkers,
    cache_dir: Option<PathBuf>,
    gate: Gate,
}

/// A plugin compiled, checked and linked, ready to call.
pub struct Plugin {
    /// The file stem of its `.wasm`, which names it in config and errors.
    pub name: String,
    /// What it provides.
    pub world: World,
    /// The interface version it was built against.
    pub version: WitVersion,
    /// The name the plugin gives itself.
    pub display_name: String,
    /// The plugin's description of itself.
    pub description: String,
    /// The limits of each call.
    pub limits: Limits,
    /// Weight of its scores or of its operator (from `NAME.toml`).
    pub weight: f64,
    /// Its `[settings]` as JSON, returned by the `host.settings` import.
    settings: Arc<str>,
    prepared: Prepared,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("world", &self.world)
            .field("version", &self.version)
            .field("limits", &self.limits)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// What [`PluginHost::load`] needs besides the bytes.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub limits: Limits,
    pub weight: f64,
    /// The plugin's settings as a JSON object.
    pub settings_json: String,
}

/// The data of one call's store.
pub(super) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) settings: Arc<str>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginHost {
    /// Creates the engine (pooling allocator sized for
    /// `max_concurrent_calls`) and starts its epoch ticker thread, which
    /// ends when the engine is dropped.
    pub fn new(options: &HostOptions) -> anyhow::Result<Arc<PluginHost>> {
        let slots = options.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasm32-wasip2 component holds a handful of core instances
        // (the program, the WASI adapter, shims) with one or two memories.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 16)
            .total_memories(slots * 4)
            .total_tables(slots * 16)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(MAX_MEMORY_BYTES as usize)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let linkers = Linkers::new(&engine)?;

        let ticking = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    let Some(engine) = ticking.upgrade() else {
                        break;
                    };
                    engine.increment_epoch();
                }
            })?;
        Ok(Arc::new(PluginHost {
            engine,
            linkers,
            cache_dir: options.cache_dir.clone(),
            gate: Gate::new(slots as usize),
        }))
    }

    /// Compiles (or reads from the cache), identifies, links and describes
    /// the component `bytes`; `name` names it in errors.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        options: LoadOptions,
    ) -> Result<Plugin, PluginError> {
        let component = self.compile(name, bytes)?;
        let (world, version) = wit::identify(&self.engine, &component)
            .map_err(|err| PluginError::new(name, None, ErrorKind::Load(err.to_string())))?;
        let prepared = self
            .linkers
            .prepare(&component, world, version)
            .map_err(|err| {
                let reason =
                    format!("cannot be linked (it imports something not granted): {err:#}");
                PluginError::new(name, Some(version), ErrorKind::Load(reason))
            })?;
        let mut plugin = Plugin {
            name: name.to_owned(),
            world,
            version,
            display_name: String::new(),
            description: String::new(),
            limits: options.limits,
            weight: options.weight,
            settings: options.settings_json.into(),
            prepared,
        };
        let Response::Described { name, description } = self.call(&plugin, Request::Describe)?
        else {
            unreachable!("a describe request gets a description");
        };
        plugin.display_name = name;
        plugin.description = description;
        Ok(plugin)
    }

    /// Scores `episode_json` (an episode as `docs/TRACE_FORMAT.md` shows it)
    /// with a reward plugin. A NaN or infinite score fails the call.
    pub fn score(
        &self,
        plugin: &Plugin,
        episode_json: &str,
    ) -> Result<Vec<NamedScore>, PluginError> {
        let Response::Scored(scores) = self.call(plugin, Request::Score(episode_json))? else {
            unreachable!("a score request gets scores");
        };
        let scores = scores.map_err(|message| plugin.error(ErrorKind::Returned(message)))?;
        let size: usize = scores.iter().map(|score| score.name.len() + 8).sum();
        check_output(plugin, size)?;
        if let Some(score) = scores.iter().find(|score| !score.value.is_finite()) {
            let message = format!("score `{}` is {}", score.name, score.value);
            return Err(plugin.error(ErrorKind::Unusable(message)));
        }
        Ok(scores)
    }

    /// Mutates `prompt` with a mutator plugin.
    pub fn mutate(
        &self,
        plugin: &Plugin,
        prompt: &str,
        seed: u64,
        context: &MutationContext,
    ) -> Result<String, PluginError> {
        let request = Request::Mutate {
            prompt,
            seed,
            context,
        };
        let Response::Mutated(mutated) = self.call(plugin, request)? else {
            unreachable!("a mutate request gets a prompt");
        };
        let mutated = mutated.map_err(|message| plugin.error(ErrorKind::Returned(message)))?;
        check_output(plugin, mutated.len())?;
        Ok(mutated)
    }

    /// The most calls that ever ran at once.
    pub fn peak_concurrent_calls(&self) -> usize {
        self.gate.peak()
    }

    /// One call in a fresh store under the plugin's limits.
    fn call(&self, plugin: &Plugin, request: Request<'_>) -> Result<Response, PluginError> {
        if plugin.world == World::Reward && matches!(request, Request::Mutate { .. })
            || plugin.world == World::Mutator && matches!(request, Request::Score(_))
        {
            let message = format!("is a {} plugin", plugin.world.as_str());
            return Err(plugin.error(ErrorKind::Load(message)));
        }
        let _slot = self.gate.enter();
        let limits = &plugin.limits;
        let log_cap = usize::try_from(limits.log_bytes).unwrap_or(usize::MAX);
        let stdout = MemoryOutputPipe::new(log_cap);
        let stderr = MemoryOutputPipe::new(log_cap);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            settings: plugin.settings.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|err| plugin.error(ErrorKind::Load(format!("{err:#}"))))?;
        let tick_ms = EPOCH_TICK.as_millis() as u64;
        store.set_epoch_deadline(limits.timeout_ms.div_ceil(tick_ms) + 1);
        let started = Instant::now();
        let result = plugin.prepared.call(&mut store, request);
        log_output(plugin, "stdout", &stdout.contents());
        log_output(plugin, "stderr", &stderr.contents());
        let err = match result {
            Ok(response) => return Ok(response),
            Err(err) => err,
        };
        let log_full = |pipe: &MemoryOutputPipe| pipe.contents().len() >= log_cap;
        let kind = if store.data().limiter.exceeded || err.is::<MemoryLimitExceeded>() {
            limit_error(Limit::Memory, limits)
        } else if log_full(&stdout) || log_full(&stderr) {
            limit_error(Limit::Log, limits)
        } else {
            match err.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => limit_error(Limit::Fuel, limits),
                Some(Trap::Interrupt) => limit_error(Limit::Time, limits),
                Some(trap) => trapped(trap.to_string(), &stderr.contents()),
                None => trapped(format!("{err:#}"), &stderr.contents()),
            }
        };
        tracing::warn!(
            plugin = %plugin.name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin call failed: {kind}"
        );
        Err(plugin.error(kind))
    }

    /// The compiled component, from the cache when this engine build has
    /// compiled the same bytes before. The cache is an optimization: any
    /// failure to use it is logged and compilation goes ahead.
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        let invalid = |err: wasmtime::Error| {
            let reason = format!("is not a valid WebAssembly component: {err:#}");
            PluginError::new(name, None, ErrorKind::Load(reason))
        };
        let Some(cache_dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let mut engine_hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hasher);
        let key = format!(
            "{}-{:016x}.cwasm",
            hex::encode(Sha256::digest(bytes)),
            engine_hasher.finish()
        );
        let cached = cache_dir.join(key);
        if cached.exists() {
            // SAFETY: files in the cache are written only by `serialize`
            // below, for this engine build (the key has its compatibility
            // hash); wasmtime checks the header and refuses a mismatch.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(plugin = name, file = %cached.display(), "ignoring unusable compile cache entry: {err:#}");
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        if let Err(err) = write_cache(&cached, &component) {
            tracing::warn!(plugin = name, file = %cached.display(), "cannot write compile cache: {err:#}");
        }
        Ok(component)
    }
}

impl Plugin {
    pub(super) fn error(&self, kind: ErrorKind) -> PluginError {
        PluginError::new(&self.name, Some(self.version), kind)
    }
}

/// Writes `component` to `path` atomically (temporary file, then rename).
fn write_cache(path: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let serialized = component.serialize()?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, serialized)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn check_output(plugin: &Plugin, size: usize) -> Result<(), PluginError> {
    if size as u64 > plugin.limits.output_bytes {
        let mut kind = limit_error(Limit::Output, &plugin.limits);
        if let ErrorKind::Limit { detail, .. } = &mut kind {
            *detail = format!("{detail}: returned {size} bytes");
        }
        return Err(plugin.error(kind));
    }
    Ok(())
}

fn limit_error(limit: Limit, limits: &Limits) -> ErrorKind {
    ErrorKind::Limit {
        limit,
        detail: limit.describe(limits),
    }
}

fn trapped(message: String, stderr: &[u8]) -> ErrorKind {
    let tail_start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
    let stderr_tail = String::from_utf8_lossy(&stderr[tail_start..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    ErrorKind::Trap {
        message,
        stderr_tail,
    }
}

/// What the plugin printed goes to the log, at most `log_bytes` of it.
fn log_output(plugin: &Plugin, stream: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    tracing::info!(plugin = %plugin.name, stream, "{}", text.trim_end());
}

/// A counting semaphore for blocking callers, remembering its peak.
struct Gate {
    counts: Mutex<(usize, usize)>,
    freed: Condvar,
    max: usize,
}

struct GateSlot<'a>(&'a Gate);

impl Gate {
    fn new(max: usize) -> Gate {
        Gate {
            counts: Mutex::new((0, 0)),
            freed: Condvar::new(),
            max,
        }
    }

    fn enter(&self) -> GateSlot<'_> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while counts.0 >= self.max {
            counts = self
                .freed
                .wait(counts)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
        GateSlot(self)
    }

    fn peak(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .1
    }
}

impl Drop for GateSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .0
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        counts.0 -= 1;
        self.0.freed.notify_one();
    }
}
