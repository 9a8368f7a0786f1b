//! Embeds the eBPF object built by `cargo xtask build-ebpf` (the one place that knows how to
//! build it). `cargo xtask build` passes its path in SOCKLEAK_EBPF_OBJECT.
//!
//! Without it (a fresh clone, `cargo check`, `cargo clippy`, an editor) an empty stub is
//! embedded instead, as aya's template does, so everything but running the tracer works
//! before the eBPF toolchain is set up; a binary built so says what is missing when it starts.
use std::{env, fs, path::PathBuf};

fn main() {
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
