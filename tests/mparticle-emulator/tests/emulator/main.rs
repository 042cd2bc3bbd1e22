//! Integration tests of the mParticle emulator. Every request goes to 127.0.0.1.

mod cases;
mod common;
mod events;
mod faults;
mod lifecycle;
mod oauth;
mod platform;
mod schema;
mod throttle;
mod validation;
