//! The release build must let the control socket catch a panicking method: with
//! `panic = "abort"` its `catch_unwind` never runs and one bad request would end the
//! daemon, forwarding included. And the manifest carries no placeholder metadata.

use std::path::Path;

fn workspace_manifest() -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("read the workspace Cargo.toml");
    text.parse().expect("the workspace Cargo.toml parses")
}

#[test]
fn release_and_bench_profiles_unwind_on_panic() {
    let manifest = workspace_manifest();
    for profile in ["release", "bench"] {
        let panic = manifest
            .get("profile")
            .and_then(|p| p.get(profile))
            .and_then(|p| p.get("panic"))
            .and_then(|v| v.as_str())
            .unwrap_or("unwind");
        assert_eq!(
            panic, "unwind",
            "[profile.{profile}] panic = \"{panic}\": the RPC server's catch_unwind would never run"
        );
    }
}

#[test]
fn no_placeholder_repository_url() {
    let manifest = workspace_manifest();
    let package = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .expect("[workspace.package]");
    if let Some(url) = package.get("repository").and_then(|v| v.as_str()) {
        assert!(
            !url.contains("example.invalid") && !url.contains("example.com"),
            "placeholder repository URL {url}"
        );
    }
}
