// `sqlx::migrate!` embeds migrations/ at compile time, but on stable Rust cargo does not
// know the macro read those files: without this, a new migration is left out of an
// incremental build (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
