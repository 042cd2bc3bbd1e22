//! Host-side bindings generated from `wit/v0.1.0`. Only `http.fetch` blocks on I/O, so only it is async
//! on the host; every export is called asynchronously so that timeouts and epochs can interrupt it.

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "connector",
    imports: {
        "flowhost:connector/http.fetch": async,
        default: trappable,
    },
    exports: { default: async },
});

pub use self::flowhost::connector::{cache, http, log, types};

/// The `batch-connector` world: `connector` plus `invoke-batch`. Its imports and types are the ones above, so
/// one linker serves both worlds; a component gets these bindings only when it exports `invoke-batch`.
pub mod batch {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "batch-connector",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "flowhost:connector/types": super::types,
            "flowhost:connector/http": super::http,
            "flowhost:connector/log": super::log,
            "flowhost:connector/cache": super::cache,
        },
    });
}

/// The `inbound-connector` world: a connector's inbound side (`describe-inbound`, `receive`). A component gets
/// these bindings only when it exports the `inbound` interface; its imports and types are the ones above.
pub mod inbound {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "inbound-connector",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "flowhost:connector/types": super::types,
            "flowhost:connector/http": super::http,
            "flowhost:connector/log": super::log,
            "flowhost:connector/cache": super::cache,
        },
    });

    pub use self::exports::flowhost::connector::inbound as wit;
}
