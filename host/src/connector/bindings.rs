//! Host-side bindings generated from every version of the WIT contract the host loads (`wit/v0.1.0`,
//! `wit/v0.2.0`), and the one place where the versions meet. The rest of the host works with the latest
//! version's types (re-exported here); a component built for an older version gets the same host functions
//! (its imports are served by converting to and from the latest ones) and is called through the wrappers
//! below ([`ConnectorPre`], [`batch::BatchConnectorPre`], [`inbound::InboundConnectorPre`]), which convert its
//! inputs and outputs. A new version adds a module here, a variant to [`WitVersion`] and to each wrapper, and
//! its conversions to `older`.
//!
//! Only `http.fetch` blocks on I/O, so only it is async on the host; every export is called asynchronously so
//! that timeouts and epochs can interrupt it.

use super::sandbox::StoreState;
use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

/// `flowhost:connector@0.2.0`, the latest version: what the host works with.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "connector",
        imports: {
            "flowhost:connector/http.fetch": async,
            default: trappable,
        },
        exports: { default: async },
    });

    pub use self::flowhost::connector::{cache, http, log, pacing, types};

    /// The `batch-connector` world: `connector` plus `invoke-batch`. Its imports and types are the ones above,
    /// so one linker serves both worlds.
    pub mod batch {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "batch-connector",
            imports: { default: trappable },
            exports: { default: async },
            with: {
                "flowhost:connector/types": super::types,
                "flowhost:connector/http": super::http,
                "flowhost:connector/log": super::log,
                "flowhost:connector/cache": super::cache,
                "flowhost:connector/pacing": super::pacing,
            },
        });
    }

    /// The `inbound-connector` world: a connector's inbound side (`describe-inbound`, `receive`).
    pub mod inbound {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "inbound-connector",
            imports: { default: trappable },
            exports: { default: async },
            with: {
                "flowhost:connector/types": super::types,
                "flowhost:connector/http": super::http,
                "flowhost:connector/log": super::log,
                "flowhost:connector/cache": super::cache,
                "flowhost:connector/pacing": super::pacing,
            },
        });

        pub use self::exports::flowhost::connector::inbound as wit;
    }
}

/// `flowhost:connector@0.1.0`: loaded, and converted to and from 0.2.0 below.
pub mod v0_1 {
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
}

pub use v0_2::{cache, http, log, pacing, types};

/// A version of the `flowhost:connector` WIT package the host loads components of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    V0_1,
    V0_2,
}

impl WitVersion {
    /// Every version the host loads, newest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_2, WitVersion::V0_1];

    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
        }
    }

    pub fn parse(version: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == version)
    }

    /// The interface a connector's inbound side exports.
    pub fn inbound_interface(self) -> String {
        format!("flowhost:connector/inbound@{}", self.as_str())
    }
}

/// Adds the host functions of every version to `linker`.
pub fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    v0_2::Connector::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |state| state)?;
    v0_1::Connector::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |state| state)
}

/// The versions to try for a component: the one its imports and exports name, else (a component that names
/// none, e.g. one that imports nothing of the host) every version, newest first, whichever its exports fit.
fn candidates(version: Option<WitVersion>) -> Vec<WitVersion> {
    version.map_or_else(|| WitVersion::ALL.to_vec(), |v| vec![v])
}

/// The pre-instantiated `connector` world of a component, of its version.
#[derive(Clone)]
pub enum ConnectorPre {
    V0_1(v0_1::ConnectorPre<StoreState>),
    V0_2(v0_2::ConnectorPre<StoreState>),
}

/// An instance of the `connector` world, called with (and answering in) the latest version's types.
pub enum Connector {
    V0_1(v0_1::Connector),
    V0_2(v0_2::Connector),
}

impl ConnectorPre {
    /// The bindings of the component's version (see [`candidates`]); the error is the first candidate's.
    pub fn new(pre: InstancePre<StoreState>, version: Option<WitVersion>) -> wasmtime::Result<Self> {
        let mut first_error = None;
        for version in candidates(version) {
            let bound = match version {
                WitVersion::V0_1 => v0_1::ConnectorPre::new(pre.clone()).map(Self::V0_1),
                WitVersion::V0_2 => v0_2::ConnectorPre::new(pre.clone()).map(Self::V0_2),
            };
            match bound {
                Ok(bound) => return Ok(bound),
                Err(error) => {
                    first_error.get_or_insert(error.context(format!("flowhost:connector@{}", version.as_str())));
                }
            }
        }
        Err(first_error.expect("at least one version is tried"))
    }

    pub fn version(&self) -> WitVersion {
        match self {
            Self::V0_1(_) => WitVersion::V0_1,
            Self::V0_2(_) => WitVersion::V0_2,
        }
    }

    pub async fn instantiate_async(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Connector> {
        Ok(match self {
            Self::V0_1(pre) => Connector::V0_1(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => Connector::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

impl Connector {
    pub async fn call_describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<types::ConnectorInfo> {
        match self {
            Self::V0_1(c) => c.call_describe(store).await.map(older::connector_info),
            Self::V0_2(c) => c.call_describe(store).await,
        }
    }

    pub async fn call_check(
        &self,
        store: &mut Store<StoreState>,
        connection: &types::Json,
    ) -> wasmtime::Result<Result<(), types::ConnectorError>> {
        match self {
            Self::V0_1(c) => c.call_check(store, connection).await.map(|r| r.map_err(older::connector_error)),
            Self::V0_2(c) => c.call_check(store, connection).await,
        }
    }

    pub async fn call_invoke(
        &self,
        store: &mut Store<StoreState>,
        capability: &str,
        connection: &types::Json,
        input: &types::Json,
        context: &types::InvocationContext,
    ) -> wasmtime::Result<Result<String, types::ConnectorError>> {
        match self {
            Self::V0_1(c) => c
                .call_invoke(store, capability, connection, input, &older::context(context))
                .await
                .map(|r| r.map_err(older::connector_error)),
            Self::V0_2(c) => c.call_invoke(store, capability, connection, input, context).await,
        }
    }
}

/// The `batch-connector` world, of either version.
pub mod batch {
    use super::{StoreState, WitVersion, candidates, older, types, v0_1, v0_2};
    use wasmtime::Store;
    use wasmtime::component::InstancePre;

    #[derive(Clone)]
    pub enum BatchConnectorPre {
        V0_1(v0_1::batch::BatchConnectorPre<StoreState>),
        V0_2(v0_2::batch::BatchConnectorPre<StoreState>),
    }

    pub enum BatchConnector {
        V0_1(v0_1::batch::BatchConnector),
        V0_2(v0_2::batch::BatchConnector),
    }

    impl BatchConnectorPre {
        /// `None` when the component does not export the `batch-connector` world (of its version).
        pub fn new(pre: InstancePre<StoreState>, version: Option<WitVersion>) -> Option<Self> {
            candidates(version).into_iter().find_map(|version| match version {
                WitVersion::V0_1 => v0_1::batch::BatchConnectorPre::new(pre.clone()).ok().map(Self::V0_1),
                WitVersion::V0_2 => v0_2::batch::BatchConnectorPre::new(pre.clone()).ok().map(Self::V0_2),
            })
        }

        pub async fn instantiate_async(&self, store: &mut Store<StoreState>) -> wasmtime::Result<BatchConnector> {
            Ok(match self {
                Self::V0_1(pre) => BatchConnector::V0_1(pre.instantiate_async(store).await?),
                Self::V0_2(pre) => BatchConnector::V0_2(pre.instantiate_async(store).await?),
            })
        }
    }

    impl BatchConnector {
        pub async fn call_batched_capabilities(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Vec<String>> {
            match self {
                Self::V0_1(c) => c.call_batched_capabilities(store).await,
                Self::V0_2(c) => c.call_batched_capabilities(store).await,
            }
        }

        pub async fn call_invoke_batch(
            &self,
            store: &mut Store<StoreState>,
            capability: &str,
            connection: &types::Json,
            items: &[types::BatchItem],
        ) -> wasmtime::Result<Vec<Result<String, types::ConnectorError>>> {
            match self {
                Self::V0_1(c) => {
                    let items: Vec<_> = items
                        .iter()
                        .map(|item| v0_1::types::BatchItem {
                            input: item.input.clone(),
                            context: older::context(&item.context),
                        })
                        .collect();
                    let results = c.call_invoke_batch(store, capability, connection, &items).await?;
                    Ok(results.into_iter().map(|r| r.map_err(older::connector_error)).collect())
                }
                Self::V0_2(c) => c.call_invoke_batch(store, capability, connection, items).await,
            }
        }
    }
}

/// The `inbound-connector` world, of either version.
pub mod inbound {
    use super::{StoreState, WitVersion, older, types, v0_1, v0_2};
    use wasmtime::Store;
    use wasmtime::component::InstancePre;

    /// The latest version's inbound types.
    pub use super::v0_2::inbound::wit;

    #[derive(Clone)]
    pub enum InboundConnectorPre {
        V0_1(v0_1::inbound::InboundConnectorPre<StoreState>),
        V0_2(v0_2::inbound::InboundConnectorPre<StoreState>),
    }

    pub enum InboundConnector {
        V0_1(v0_1::inbound::InboundConnector),
        V0_2(v0_2::inbound::InboundConnector),
    }

    impl InboundConnectorPre {
        /// The bindings of a component that exports the inbound interface of `version`.
        pub fn new(pre: InstancePre<StoreState>, version: WitVersion) -> wasmtime::Result<Self> {
            Ok(match version {
                WitVersion::V0_1 => Self::V0_1(v0_1::inbound::InboundConnectorPre::new(pre)?),
                WitVersion::V0_2 => Self::V0_2(v0_2::inbound::InboundConnectorPre::new(pre)?),
            })
        }

        pub async fn instantiate_async(&self, store: &mut Store<StoreState>) -> wasmtime::Result<InboundConnector> {
            Ok(match self {
                Self::V0_1(pre) => InboundConnector::V0_1(pre.instantiate_async(store).await?),
                Self::V0_2(pre) => InboundConnector::V0_2(pre.instantiate_async(store).await?),
            })
        }
    }

    impl InboundConnector {
        pub async fn call_describe_inbound(&self, store: &mut Store<StoreState>) -> wasmtime::Result<wit::InboundInfo> {
            match self {
                Self::V0_1(c) => {
                    c.flowhost_connector_inbound().call_describe_inbound(store).await.map(|i| wit::InboundInfo {
                        event_types: i.event_types,
                        identities: i.identities,
                        public_requests: i.public_requests,
                        verifies_requests: i.verifies_requests,
                    })
                }
                Self::V0_2(c) => c.flowhost_connector_inbound().call_describe_inbound(store).await,
            }
        }

        pub async fn call_receive(
            &self,
            store: &mut Store<StoreState>,
            connection: &types::Json,
            request: &wit::Request,
        ) -> wasmtime::Result<Result<wit::Received, types::ConnectorError>> {
            match self {
                Self::V0_1(c) => {
                    let request = older::inbound_request(request);
                    let received = c.flowhost_connector_inbound().call_receive(store, connection, &request).await?;
                    Ok(received.map(older::received).map_err(older::connector_error))
                }
                Self::V0_2(c) => c.flowhost_connector_inbound().call_receive(store, connection, request).await,
            }
        }
    }
}

/// What a connector reports about its service's rate limit: kept for the invocation's outcome, the last
/// report counting.
impl pacing::Host for StoreState {
    fn report_usage(&mut self, percentage_used: u8) -> wasmtime::Result<()> {
        self.usage_percent = Some(percentage_used);
        Ok(())
    }
}

/// 0.1.0's imports, served by the latest host functions.
impl v0_1::types::Host for StoreState {}

impl v0_1::http::Host for StoreState {
    async fn fetch(&mut self, request: v0_1::http::Request) -> Result<v0_1::http::Response, v0_1::http::HttpError> {
        use v0_1::http::HttpError as Old;
        let request = http::Request {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        match <StoreState as http::Host>::fetch(self, request).await {
            Ok(r) => Ok(v0_1::http::Response { status: r.status, headers: r.headers, body: r.body }),
            Err(error) => Err(match error {
                http::HttpError::Denied(m) => Old::Denied(m),
                http::HttpError::InvalidRequest(m) => Old::InvalidRequest(m),
                http::HttpError::ConnectFailed(m) => Old::ConnectFailed(m),
                http::HttpError::Timeout(m) => Old::Timeout(m),
                http::HttpError::ResponseTooLarge(m) => Old::ResponseTooLarge(m),
                http::HttpError::Other(m) => Old::Other(m),
            }),
        }
    }
}

impl v0_1::log::Host for StoreState {
    fn log(&mut self, level: v0_1::log::Level, message: String) -> wasmtime::Result<()> {
        use v0_1::log::Level as Old;
        let level = match level {
            Old::Trace => log::Level::Trace,
            Old::Debug => log::Level::Debug,
            Old::Info => log::Level::Info,
            Old::Warn => log::Level::Warn,
            Old::Error => log::Level::Error,
        };
        <StoreState as log::Host>::log(self, level, message)
    }
}

impl v0_1::cache::Host for StoreState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        <StoreState as cache::Host>::get(self, key)
    }

    fn set(&mut self, key: String, value: String, ttl_seconds: u32) -> wasmtime::Result<()> {
        <StoreState as cache::Host>::set(self, key, value, ttl_seconds)
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        <StoreState as cache::Host>::delete(self, key)
    }
}

/// The conversions between 0.1.0's types and the latest ones. 0.1.0's `rate-limit` has no percentage used.
mod older {
    use super::{types, v0_1, v0_2};
    use v0_1::types as old;

    pub fn context(context: &types::InvocationContext) -> old::InvocationContext {
        old::InvocationContext {
            run_id: context.run_id.clone(),
            node_id: context.node_id.clone(),
            idempotency_key: context.idempotency_key.clone(),
            attempt: context.attempt,
        }
    }

    pub fn connector_info(info: old::ConnectorInfo) -> types::ConnectorInfo {
        types::ConnectorInfo {
            id: info.id,
            version: info.version,
            display_name: info.display_name,
            description: info.description,
            connection_properties: info
                .connection_properties
                .into_iter()
                .map(|p| types::ConnectionProperty {
                    name: p.name,
                    title: p.title,
                    description: p.description,
                    secret: p.secret,
                    required: p.required,
                    schema: p.schema,
                })
                .collect(),
            allowed_hosts: info.allowed_hosts,
            capabilities: info
                .capabilities
                .into_iter()
                .map(|c| types::Capability {
                    id: c.id,
                    title: c.title,
                    description: c.description,
                    input_schema: c.input_schema,
                    output_schema: c.output_schema,
                })
                .collect(),
        }
    }

    pub fn connector_error(error: old::ConnectorError) -> types::ConnectorError {
        use types::ConnectorError as E;
        match error {
            old::ConnectorError::InvalidInput(errors) => E::InvalidInput(
                errors.into_iter().map(|e| types::FieldError { pointer: e.pointer, message: e.message }).collect(),
            ),
            old::ConnectorError::InvalidConfig(m) => E::InvalidConfig(m),
            old::ConnectorError::Unauthorized(m) => E::Unauthorized(m),
            old::ConnectorError::NotFound(m) => E::NotFound(m),
            old::ConnectorError::RateLimited(limit) => E::RateLimited(types::RateLimit {
                retry_after_ms: limit.retry_after_ms,
                message: limit.message,
                percentage_used: None,
            }),
            old::ConnectorError::Transient(m) => E::Transient(m),
            old::ConnectorError::Permanent(f) => {
                E::Permanent(types::Failure { status: f.status, message: f.message, body: f.body })
            }
        }
    }

    pub fn inbound_request(request: &v0_2::inbound::wit::Request) -> v0_1::inbound::wit::Request {
        v0_1::inbound::wit::Request {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
            authenticated: request.authenticated,
            received_at_ms: request.received_at_ms,
        }
    }

    pub fn received(received: v0_1::inbound::wit::Received) -> v0_2::inbound::wit::Received {
        use v0_2::inbound::wit;
        wit::Received {
            events: received
                .events
                .into_iter()
                .map(|e| wit::InboundEvent {
                    source: e.source,
                    event_type: e.event_type,
                    event_name: e.event_name,
                    identities: e.identities,
                    attributes: e.attributes,
                    user_attributes: e.user_attributes,
                    environment: e.environment,
                    message_id: e.message_id,
                    timestamp_ms: e.timestamp_ms,
                    extra: e.extra,
                    raw: e.raw,
                })
                .collect(),
            message_id: received.message_id,
            response: wit::Response {
                status: received.response.status,
                headers: received.response.headers,
                body: received.response.body,
            },
        }
    }
}
