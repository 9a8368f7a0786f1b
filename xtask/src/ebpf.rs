//! Building the eBPF object: pinned nightly, `-Z build-std=core`, bpf-linker.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

/// bpf-linker release, pinned so a fresh machine links the same way.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Builds the eBPF object and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let nightly = pinned_toolchain(&root.join("sockleak-ebpf/rust-toolchain.toml"))?;
    let stable = pinned_toolchain(&root.join("rust-toolchain.toml"))?;
    let linker_dir = ensure_bpf_linker(&nightly, &stable)?;
    let target_dir = root.join("target/ebpf");
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(nightly_cargo(root, &nightly, &["build", "--release"]).env("PATH", path))?;
    let object = target_dir.join("bpfel-unknown-none/release/sockleak");
    if !object.is_file() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

/// `cargo fmt --check` and clippy (warnings denied) over the eBPF crate, for its target. A
/// check links nothing, so no bpf-linker is needed.
pub fn lint(root: &Path) -> Result<()> {
    let nightly = pinned_toolchain(&root.join("sockleak-ebpf/rust-toolchain.toml"))?;
    run(&mut nightly_cargo(root, &nightly, &["fmt", "--check"]))?;
    run(&mut nightly_cargo(
        root,
        &nightly,
        &["clippy", "--release", "--", "--deny", "warnings"],
    ))
}

/// `cargo ARGS` with the pinned nightly in the eBPF crate (whose `.cargo/config.toml` names
/// the target and `build-std`), writing under `target/ebpf`.
fn nightly_cargo(root: &Path, nightly: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", nightly, "cargo"])
        .args(args)
        .current_dir(root.join("sockleak-ebpf"))
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"));
    // The outer cargo (stable) exports these; they must not leak into the nightly's.
    for var in [
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn pinned_toolchain(toolchain_file: &Path) -> Result<String> {
    let text = fs::read_to_string(toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.split('"').nth(1))
        .map(str::to_owned)
        .next()
        .with_context(|| format!("no channel in {}", toolchain_file.display()))
}

/// Where builds keep what outlives a clean: `$XDG_CACHE_HOME/sockleak`.
pub(crate) fn cache_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("sockleak"))
}

/// bpf-linker is bound to the exact libLLVM it was linked with, so it lives in a directory named
/// after both pins and links against the pinned nightly's own `libLLVM.so`.
fn ensure_bpf_linker(nightly: &str, stable: &str) -> Result<PathBuf> {
    let prefix = cache_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{nightly}"));
    let bin_dir = prefix.join("bin");
    if bin_dir.join("bpf-linker").is_file() {
        return Ok(bin_dir);
    }

    let sysroot = String::from_utf8(
        Command::new("rustup")
            .args(["run", nightly, "rustc", "--print", "sysroot"])
            .output()
            .context("asking the nightly for its sysroot (did ./setup.sh run?)")?
            .stdout,
    )?;
    let llvm_lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&llvm_lib_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", llvm_lib_dir.display()))?;
    let name = libllvm.file_name().unwrap().to_string_lossy().into_owned();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();

    let llvm_prefix = prefix.join("llvm");
    fs::create_dir_all(llvm_prefix.join("lib"))?;
    let link = llvm_prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;

    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against {name} (about a minute, once)"
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["run", stable, "cargo", "install", "--locked", "bpf-linker"])
        .args(["--version", BPF_LINKER_VERSION, "--root"])
        .arg(&prefix)
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &llvm_prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", llvm_lib_dir.display()),
        );
    for var in [
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd)?;
    Ok(bin_dir)
}
