//! Embeds the eBPF object built by `cargo xtask build-ebpf` (the one place that knows how to
//! build it). `cargo xtask build` passes its path in SOCKLEAK_EBPF_OBJECT.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=SOCKLEAK_EBPF_OBJECT");
    let object = env::var_os("SOCKLEAK_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/sockleak")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("sockleak.bpf.o");
    if let Err(err) = fs::copy(&object, &out) {
        panic!(
            "the eBPF object {} is missing ({err}): build with `cargo xtask build` \
             (or run `cargo xtask build-ebpf` first)",
            object.display()
        );
    }
}
