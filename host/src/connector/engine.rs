//! The one wasmtime `Engine` of a runtime: component model, async calls, epoch interruption for CPU
//! loops, and the pooling instance allocator so that a fresh instance per invocation costs microseconds.
//!
//! Two settings keep the per-invocation cost of a fresh instance down (see `BENCHMARKS.md`, "Invocation
//! overhead"); neither lets one invocation see another's memory:
//! - Linear memories and tables are reset after each instance by rewriting only the pages the guest dirtied
//!   (found with Linux's `PAGEMAP_SCAN`, up to [`KEEP_RESIDENT`] bytes) instead of `madvise`-ing them away,
//!   so the next instance in the slot takes no page faults. Where `PAGEMAP_SCAN` is missing (Linux < 6.7,
//!   other systems) wasmtime's default (`madvise`) stays.
//! - Memory bounds are checked by explicit compare-and-trap code instead of guard pages and signal handlers
//!   (no guard region, a reservation of exactly the memory limit). A slot then never has to be `mprotect`-ed
//!   back to its initial size when it is reused, nor again each time the guest grows its memory: those
//!   syscalls (and the TLB shootdowns they cause on every core) cost more than the checks.

use super::sandbox::SandboxLimits;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of an instance's dirtied linear memory (and tables) is reset in place, to be reused without
/// page faults, rather than given back to the kernel. A connector invocation dirties well under this.
pub const KEEP_RESIDENT: usize = 1 << 20;

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
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        // Without PAGEMAP_SCAN, keep-resident would `memset` the first KEEP_RESIDENT bytes on every reset,
        // dirty or not: slower than the default.
        pool.pagemap_scan(Enabled::Yes).linear_memory_keep_resident(KEEP_RESIDENT).table_keep_resident(KEEP_RESIDENT);
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Guests recurse on a 1 MiB wasm stack at most; a stack overflow traps cleanly.
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        // Explicit bounds checks: no guard pages, no signal-based traps, memory reserved up to its limit.
        .signals_based_traps(false)
        .memory_guard_size(0)
        .memory_reservation(limits.memory_bytes as u64)
        .memory_reservation_for_growth(0);
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
