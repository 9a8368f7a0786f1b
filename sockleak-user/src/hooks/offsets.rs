//! Kernel struct field offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE field relocations yet, so the fd walk (see
//! `sockleak-ebpf/src/fdwalk.rs`) gets its offsets from here, through the `CONFIG` global.
use anyhow::{Context, Result};
use sockleak_common::Config;

use super::btf::KernelBtf;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Fills the struct offsets of `config` from BTF at `path`.
pub fn fill_from_btf(config: &mut Config, path: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading BTF from {path}"))?;
    let btf = KernelBtf::parse(bytes).with_context(|| format!("parsing BTF from {path}"))?;
    let off = |s: &str, m: &str| -> Result<u64> {
        btf.member_offset(s, m)
            .with_context(|| format!("offset of {s}.{m} in {path}"))
    };
    config.task_files = off("task_struct", "files")?;
    config.files_fdt = off("files_struct", "fdt")?;
    config.fdtable_fd = off("fdtable", "fd")?;
    config.file_private_data = off("file", "private_data")?;
    config.file_inode = off("file", "f_inode")?;
    config.inode_ino = off("inode", "i_ino")?;
    config.socket_sk = off("socket", "sk")?;
    config.sock_cookie = off("sock", "__sk_common")? + off("sock_common", "skc_cookie")?;
    let common = off("sock", "__sk_common")?;
    config.sock_family = common + off("sock_common", "skc_family")?;
    config.sock_daddr = common + off("sock_common", "skc_daddr")?;
    config.sock_rcv_saddr = common + off("sock_common", "skc_rcv_saddr")?;
    config.sock_dport = common + off("sock_common", "skc_dport")?;
    config.sock_num = common + off("sock_common", "skc_num")?;
    config.sock_v6_daddr = common + off("sock_common", "skc_v6_daddr")?;
    config.sock_v6_rcv_saddr = common + off("sock_common", "skc_v6_rcv_saddr")?;
    config.sock_socket = off("sock", "sk_socket")?;
    config.inet_sport = off("inet_sock", "inet_sport")?;
    config.task_tgid = off("task_struct", "tgid")?;
    config.inode_mode = off("inode", "i_mode")?;
    config.have_offsets = 1;
    // Optional: without it, the UNIX connect program reads the context's first word, where
    // every kernel with the hook keeps the socket.
    if let Ok(sk) = off("bpf_sock_addr_kern", "sk") {
        config.sock_addr_sk = sk;
    }
    // Optional: without them, accepted sockets are announced at `accept()`'s exit.
    if let (Ok(net), Ok(ns), Ok(inum)) = (
        off("sock_common", "skc_net"),
        off("net", "ns"),
        off("ns_common", "inum"),
    ) {
        config.sock_net = common + net;
        config.net_ns_inum = ns + inum;
    }
    // Optional: without it, the exit of every socket() names the inode with an fd walk.
    if let Ok(inode) = btf.member_offset("socket_alloc", "vfs_inode") {
        config.socket_inode = inode;
    }
    // Optional: without them, stacks miss the caller of a frameless syscall wrapper.
    // The kernel's `enum bpf_func_id` lists every helper it has.
    // Optional too: without them, no walk by hand at socket birth.
    if let (Ok(sp), Ok(ip), Ok(bp)) = (
        btf.member_offset("pt_regs", "sp"),
        btf.member_offset("pt_regs", "ip"),
        btf.member_offset("pt_regs", "bp"),
    ) && btf.has_enum_member("bpf_func_id", "BPF_FUNC_task_pt_regs")
    {
        config.pt_regs_sp = sp;
        config.pt_regs_ip = ip;
        config.pt_regs_bp = bp;
        config.have_task_pt_regs = 1;
    }
    // Optional: without them, a process nobody judged is copied even where its program was
    // judged for another (a forked worker).
    if let (Ok(mm), Ok(exe), Ok(sb), Ok(size), Ok(dev)) = (
        off("task_struct", "mm"),
        off("mm_struct", "exe_file"),
        off("inode", "i_sb"),
        off("inode", "i_size"),
        off("super_block", "s_dev"),
    ) {
        config.task_mm = mm;
        config.mm_exe_file = exe;
        config.inode_sb = sb;
        config.inode_size = size;
        config.sb_dev = dev;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_plausible() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("!!! SKIPPED: {VMLINUX_BTF} missing: this kernel has no BTF");
            assert!(std::env::var_os("CI").is_none(), "CI machines have BTF");
            return;
        }
        let mut c = Config::default();
        fill_from_btf(&mut c, VMLINUX_BTF).unwrap();
        // struct sock starts with struct sock_common, whose family is in its first 32 bytes.
        assert!(c.sock_family < 32, "{c:?}");
        assert!(
            c.task_files > 0 && c.file_private_data > 0 && c.sock_cookie > 0,
            "{c:?}"
        );
        assert!(c.sock_net > 0 && c.net_ns_inum > 0, "{c:?}");
        assert!(
            c.task_mm > 0 && c.mm_exe_file > 0 && c.inode_sb > 0,
            "{c:?}"
        );
        // The inode follows the `struct socket` (128 bytes on this one).
        assert!(
            c.socket_inode >= 64 && c.socket_inode.is_multiple_of(8),
            "{c:?}"
        );
        // This kernel (6.18) has bpf_task_pt_regs; x86_64's pt_regs.sp is the 20th word.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            (
                c.have_task_pt_regs,
                c.pt_regs_sp,
                c.pt_regs_ip,
                c.pt_regs_bp
            ),
            (1, 152, 128, 32),
            "{c:?}"
        );
    }
}
