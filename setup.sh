#!/usr/bin/env bash
# Installs what building and testing sockleak needs on a fresh machine, then gets out of the way.
# Idempotent and quick when everything is already there. Everything else (bpf-linker, the eBPF
# object) is installed or built by `cargo xtask`, which needs the toolchains below to run at all.
set -euo pipefail
cd "$(dirname "$0")"

toolchain_of() { sed -n 's/^channel *= *"\(.*\)"/\1/p' "$1"; }
STABLE=$(toolchain_of rust-toolchain.toml)
NIGHTLY=$(toolchain_of sockleak-ebpf/rust-toolchain.toml)

if ! command -v rustup >/dev/null; then
    echo "setup.sh: rustup is required to install the pinned toolchains" >&2
    exit 1
fi
installed=$(rustup toolchain list)
if ! grep -q "^$STABLE-" <<<"$installed"; then
    rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt
fi
# rust-src builds `core` for the eBPF target; clippy and rustfmt lint the eBPF crate.
nightly_has() {
    rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q "^$1"
}
if ! grep -q "^$NIGHTLY-" <<<"$installed" || ! nightly_has rust-src || ! nightly_has clippy \
    || ! nightly_has rustfmt; then
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src,clippy,rustfmt
fi

# Debian packages: bpftool (tests check that nothing stays attached after SIGKILL), gcc, go and
# node (the stack tests build a native and a Go leaker and run a Node.js one), tmux (drives
# `sockleak top` in a test), file (a test checks the release binary is static), prometheus
# (scrapes `--metrics` in a test; only the binary is used, the tests start their own server),
# Debian's python3 and strip (the unwinding tests run the one and strip a leaker with the other),
# libuv1-dev (a test links a program with the distribution's libuv.so).
need=()
command -v bpftool >/dev/null || [[ -x /usr/sbin/bpftool ]] || need+=(bpftool)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v go >/dev/null || need+=(golang-go)
command -v file >/dev/null || need+=(file)
command -v node >/dev/null || need+=(nodejs)
command -v tmux >/dev/null || need+=(tmux)
command -v prometheus >/dev/null || need+=(prometheus)
[[ -x /usr/bin/python3 ]] || need+=(python3)
command -v strip >/dev/null || need+=(binutils)
[[ -e /usr/include/uv.h ]] || need+=(libuv1-dev)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    # No recommends: prometheus would pull in node-exporter and friends.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
