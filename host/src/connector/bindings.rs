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
