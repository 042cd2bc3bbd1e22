//! The one wasmtime `Engine` of a runtime: component model, async calls, epoch interruption for CPU
//! loops, and the pooling instance allocator so that a fresh instance per invocation costs microseconds.

use super::sandbox::SandboxLimits;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub fn build_engine(limits: &SandboxLimits, max_instances: u32) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasip2 component has one memory and a handful of core instances (its module and adapter shims).
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(8))
        .total_memories(max_instances.saturating_mul(2))
        .total_tables(max_instances.saturating_mul(8))
        .total_stacks(max_instances)
        .max_memory_size(limits.memory_bytes)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(32)
        // Keep a few slots warm (already faulted in) for the next invocation of the same component.
        .max_unused_warm_slots(64);
    // EXPERIMENT knobs (temporary)
    let env = |k: &str| std::env::var(k).ok();
    if let Some(v) = env("FH_KEEP_RESIDENT") {
        let v: usize = v.parse().unwrap();
        pool.linear_memory_keep_resident(v).table_keep_resident(v);
    }
    if env("FH_PAGEMAP").is_some() {
        pool.pagemap_scan(wasmtime::Enabled::Auto);
    }
    if let Some(v) = env("FH_DECOMMIT_BATCH") {
        pool.decommit_batch_size(v.parse().unwrap());
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Guests recurse on a 1 MiB wasm stack at most; a stack overflow traps cleanly.
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20);
    if env("FH_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if env("FH_GUARD0").is_some() {
        config.memory_guard_size(0).memory_reservation(limits.memory_bytes as u64).memory_reservation_for_growth(0);
    }
    if env("FH_TABLE_EAGER").is_some() {
        config.table_lazy_init(false);
    }
    if env("FH_NOSIG").is_some() {
        config.signals_based_traps(false);
    }
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a background thread. The thread holds the engine
/// weakly, so dropping the runtime frees the engine and its instance pool at once; the thread then stops.
pub fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("flowhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot start the epoch thread");
}
