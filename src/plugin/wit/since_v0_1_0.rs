//! Bindings of `whetstone:plugin@0.1.0` (`plugins/wit/since_v0.1.0`), frozen
//! with that release. When the interface changes, a new module sits beside
//! this one and this one stays, so plugins built against 0.1.0 keep loading.

/// The `mutator` world.
pub mod mutator {
    wasmtime::component::bindgen!({
        path: "plugins/wit/since_v0.1.0",
        world: "mutator",
    });
}

/// The `reward` world.
pub mod reward {
    wasmtime::component::bindgen!({
        path: "plugins/wit/since_v0.1.0",
        world: "reward",
    });
}
