//! The SQLite migrations are embedded by `sqlx::migrate!`: a changed migration rebuilds the library.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
