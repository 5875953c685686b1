//! The plugin interface versions this host loads, and which one a component
//! implements.
//!
//! Each released `whetstone:plugin` version is frozen in
//! `plugins/wit/since_vX.Y.Z/` and has a bindings module here. A component
//! says what it is by the interface it exports:
//! `whetstone:plugin/scoring@X.Y.Z` is a reward plugin,
//! `whetstone:plugin/mutation@X.Y.Z` a mutator. The enums below have one
//! variant per supported version; callers see only host types, converted by
//! hand at the boundary, so adding a version touches only this folder.

pub mod since_v0_1_0;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::host::CallState;
use super::{Example, MutationContext, NamedScore};

/// The package every plugin interface belongs to.
const PACKAGE: &str = "whetstone:plugin";

/// What a plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `mutate(prompt, seed, context)`: a prompt mutation strategy.
    Mutator,
    /// `score(episode)`: a reward function.
    Reward,
}

impl World {
    /// The world's name in the WIT package.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Mutator => "mutator",
            World::Reward => "reward",
        }
    }
}

/// An interface version this host supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    V0_1_0,
}

impl WitVersion {
    /// Every version this host loads, oldest first.
    pub const SUPPORTED: &[WitVersion] = &[WitVersion::V0_1_0];

    /// The semantic version, as in the WIT package name.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "0.1.0",
        }
    }

    fn parse(version: &str) -> Option<WitVersion> {
        WitVersion::SUPPORTED
            .iter()
            .copied()
            .find(|supported| supported.as_str() == version)
    }
}

/// Why a component is not a plugin this host can load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error(
        "exports {export}, an interface version this Whetstone does not support \
         (supported: {})",
        supported_versions()
    )]
    UnsupportedVersion { export: String },
    #[error(
        "is not a Whetstone plugin: it exports neither {PACKAGE}/scoring (world reward) \
         nor {PACKAGE}/mutation (world mutator); its exports: [{}]",
        exports.join(", ")
    )]
    WrongWorld { exports: Vec<String> },
}

/// The supported versions, comma separated, for messages.
pub fn supported_versions() -> String {
    let versions: Vec<&str> = WitVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    versions.join(", ")
}

/// The world and interface version `component` implements, read from its
/// exports.
pub fn identify(
    engine: &Engine,
    component: &Component,
) -> Result<(World, WitVersion), IdentifyError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    for export in &exports {
        let Some(rest) = export
            .strip_prefix(PACKAGE)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let world = match interface {
            "scoring" => World::Reward,
            "mutation" => World::Mutator,
            _ => continue,
        };
        let Some(version) = WitVersion::parse(version) else {
            return Err(IdentifyError::UnsupportedVersion {
                export: export.clone(),
            });
        };
        return Ok((world, version));
    }
    Err(IdentifyError::WrongWorld { exports })
}

/// One linker per (version, world): WASI plus that version's `host` import.
pub(super) struct Linkers {
    v0_1_0_reward: Linker<CallState>,
    v0_1_0_mutator: Linker<CallState>,
}

impl Linkers {
    pub(super) fn new(engine: &Engine) -> wasmtime::Result<Linkers> {
        let wasi_linker = || -> wasmtime::Result<Linker<CallState>> {
            let mut linker = Linker::new(engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
            Ok(linker)
        };
        let mut v0_1_0_reward = wasi_linker()?;
        since_v0_1_0::reward::Reward::add_to_linker::<_, HasSelf<_>>(
            &mut v0_1_0_reward,
            |state| state,
        )?;
        let mut v0_1_0_mutator = wasi_linker()?;
        since_v0_1_0::mutator::Mutator::add_to_linker::<_, HasSelf<_>>(
            &mut v0_1_0_mutator,
            |state| state,
        )?;
        Ok(Linkers {
            v0_1_0_reward,
            v0_1_0_mutator,
        })
    }

    /// Links `component` once, so each call only instantiates.
    pub(super) fn prepare(
        &self,
        component: &Component,
        world: World,
        version: WitVersion,
    ) -> wasmtime::Result<Prepared> {
        Ok(match (world, version) {
            (World::Reward, WitVersion::V0_1_0) => {
                let pre = self.v0_1_0_reward.instantiate_pre(component)?;
                Prepared::V0_1_0Reward(since_v0_1_0::reward::RewardPre::new(pre)?)
            }
            (World::Mutator, WitVersion::V0_1_0) => {
                let pre = self.v0_1_0_mutator.instantiate_pre(component)?;
                Prepared::V0_1_0Mutator(since_v0_1_0::mutator::MutatorPre::new(pre)?)
            }
        })
    }
}

/// A linked component, ready to instantiate in a fresh store.
pub(super) enum Prepared {
    V0_1_0Reward(since_v0_1_0::reward::RewardPre<CallState>),
    V0_1_0Mutator(since_v0_1_0::mutator::MutatorPre<CallState>),
}

/// What a call asks of the plugin.
pub(super) enum Request<'a> {
    Describe,
    Score(&'a str),
    Mutate {
        prompt: &'a str,
        seed: u64,
        context: &'a MutationContext,
    },
}

/// What the plugin answered; `Err` inside is the plugin's own error.
pub(super) enum Response {
    Described { name: String, description: String },
    Scored(Result<Vec<NamedScore>, String>),
    Mutated(Result<String, String>),
}

impl Prepared {
    /// Instantiates in `store` and makes one call. `Err` is a trap or a
    /// host-side failure; a request the world cannot serve is an error too.
    pub(super) fn call(
        &self,
        store: &mut Store<CallState>,
        request: Request<'_>,
    ) -> wasmtime::Result<Response> {
        use since_v0_1_0::mutator;
        match self {
            Prepared::V0_1_0Reward(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                let scoring = instance.whetstone_plugin_scoring();
                match request {
                    Request::Describe => Ok(Response::Described {
                        name: scoring.call_name(&mut *store)?,
                        description: scoring.call_description(&mut *store)?,
                    }),
                    Request::Score(episode) => {
                        let scores = scoring.call_score(&mut *store, episode)?;
                        Ok(Response::Scored(scores.map(|scores| {
                            scores
                                .into_iter()
                                .map(|score| NamedScore {
                                    name: score.name,
                                    value: score.value,
                                })
                                .collect()
                        })))
                    }
                    Request::Mutate { .. } => wasmtime::bail!("a reward plugin cannot mutate"),
                }
            }
            Prepared::V0_1_0Mutator(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                let mutation = instance.whetstone_plugin_mutation();
                match request {
                    Request::Describe => Ok(Response::Described {
                        name: mutation.call_name(&mut *store)?,
                        description: mutation.call_description(&mut *store)?,
                    }),
                    Request::Mutate {
                        prompt,
                        seed,
                        context,
                    } => {
                        use mutator::whetstone::plugin::types;
                        let example = |example: &Example| types::Example {
                            input: example.input.clone(),
                            output: example.output.clone(),
                            score: example.score,
                            feedback: example.feedback.clone(),
                        };
                        let context = types::MutationContext {
                            weakest: context.weakest.iter().map(example).collect(),
                            strongest: context.strongest.iter().map(example).collect(),
                        };
                        let mutated = mutation.call_mutate(&mut *store, prompt, seed, &context)?;
                        Ok(Response::Mutated(mutated))
                    }
                    Request::Score(_) => wasmtime::bail!("a mutator plugin cannot score"),
                }
            }
        }
    }
}

impl since_v0_1_0::reward::whetstone::plugin::host::Host for CallState {
    fn settings(&mut self) -> String {
        self.settings.to_string()
    }
}

impl since_v0_1_0::mutator::whetstone::plugin::host::Host for CallState {
    fn settings(&mut self) -> String {
        self.settings.to_string()
    }
}

// `types` holds only records; its (empty) host traits must still be
// implemented for the world to link.
impl since_v0_1_0::reward::whetstone::plugin::types::Host for CallState {}
impl since_v0_1_0::mutator::whetstone::plugin::types::Host for CallState {}
