//! `include/engram.h` is what cbindgen makes of `src/lib.rs` today: CI fails when it drifts.
//! Regenerate with `ENGRAM_UPDATE_HEADER=1 cargo test -p engram-c --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses src/lib.rs")
        .write(&mut generated);
    let path = dir.join("include/engram.h");
    if std::env::var_os("ENGRAM_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: regenerate it with ENGRAM_UPDATE_HEADER=1 cargo test -p engram-c --test header",
        path.display()
    );
}
