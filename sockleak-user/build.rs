//! Embeds the eBPF object built by `cargo xtask build-ebpf` (the one place that knows how to
//! build it). `cargo xtask build` passes its path in SOCKLEAK_EBPF_OBJECT.
//!
//! Without it (a fresh clone, `cargo check`, `cargo clippy`, an editor) an empty stub is
//! embedded instead, as aya's template does, so everything but running the tracer works
//! before the eBPF toolchain is set up; a binary built so says what is missing when it starts.
//!
//! It also names the commit the binary is built from, for `sockleak --version`: from git,
//! or SOCKLEAK_COMMIT where there is no git checkout (a source tarball).
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rustc-env=SOCKLEAK_COMMIT={}", commit());
    embed_ebpf_object();
}

fn commit() -> String {
    println!("cargo:rerun-if-env-changed=SOCKLEAK_COMMIT");
    if let Some(commit) = env::var_os("SOCKLEAK_COMMIT") {
        return commit.to_string_lossy().into_owned();
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // A new commit moves HEAD or the branch it names: both are watched.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
        println!("cargo:rerun-if-changed={git_dir}/packed-refs");
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

fn embed_ebpf_object() {
    println!("cargo:rerun-if-env-changed=SOCKLEAK_EBPF_OBJECT");
    let given = env::var_os("SOCKLEAK_EBPF_OBJECT").map(PathBuf::from);
    let object = given.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/sockleak")
    });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("sockleak.bpf.o");
    match fs::copy(&object, &out) {
        Ok(_) => {}
        // Asked for by name: its absence is an error, not a reason for a stub.
        Err(err) if given.is_some() => {
            panic!("the eBPF object {} is missing: {err}", object.display())
        }
        Err(_) => {
            println!(
                "cargo:warning=no eBPF object at {}: embedding an empty stub (this sockleak \
                 cannot trace; build it with `cargo xtask build`)",
                object.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}
