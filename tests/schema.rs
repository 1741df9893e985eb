//! The published JSON Schema is exactly what the binary validates with.

mod common;

use common::*;

#[test]
fn published_schema_is_current() {
    let o = run({
        let mut c = haimg();
        c.arg("schema");
        c
    });
    assert!(o.status.success());
    let published =
        std::fs::read_to_string(repo().join("schema/cluster.schema.json")).unwrap_or_default();
    if std::env::var_os("HAIMG_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(repo().join("schema")).unwrap();
        std::fs::write(repo().join("schema/cluster.schema.json"), stdout(&o)).unwrap();
        return;
    }
    assert!(published == stdout(&o), "schema/cluster.schema.json is stale: run `haimg schema > schema/cluster.schema.json` (or HAIMG_UPDATE_GOLDEN=1 cargo test)");
}
