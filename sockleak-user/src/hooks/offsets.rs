//! Kernel struct field offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE field relocations yet, so the fd walk (see
//! `sockleak-ebpf/src/fdwalk.rs`) gets its offsets from here, through the `CONFIG` global.
use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use sockleak_common::Config;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Fills the struct offsets of `config` from BTF at `path`.
pub fn fill_from_btf(config: &mut Config, path: &str) -> Result<()> {
    let btf = Btf::from_file(path).with_context(|| format!("reading BTF from {path}"))?;
    let off = |s: &str, m: &str| -> Result<u64> {
        member_offset(&btf, s, m).with_context(|| format!("offset of {s}.{m} in {path}"))
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
    // Optional: without them, stacks miss the caller of a frameless syscall wrapper.
    if let Ok(sp) = member_offset(&btf, "pt_regs", "sp")
        && has_helper(&btf, "BPF_FUNC_task_pt_regs")
    {
        config.pt_regs_sp = sp;
        config.have_task_pt_regs = 1;
    }
    Ok(())
}

/// Whether the kernel knows a BPF helper: its `enum bpf_func_id` lists every one it has.
fn has_helper(btf: &Btf, helper: &str) -> bool {
    let Ok(types) = btf.resolve_types_by_name("bpf_func_id") else {
        return false;
    };
    types.iter().any(|t| match t {
        Type::Enum(e) => e
            .members
            .iter()
            .any(|m| btf.resolve_name(m).is_ok_and(|n| n == helper)),
        _ => false,
    })
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and unions
/// (kernel structs nest many fields in them, and which ones moves between versions).
fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u64> {
    let candidates = btf.resolve_types_by_name(name)?;
    let strukt = candidates
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no struct {name}"))?;
    let bits = find_member_bits(btf, strukt, member, 0)?
        .ok_or_else(|| anyhow!("struct {name} has no member {member}"))?;
    if bits % 8 != 0 {
        bail!("{name}.{member} is a bitfield");
    }
    Ok(u64::from(bits / 8))
}

fn find_member_bits(
    btf: &Btf,
    strukt: &btf_rs::Struct,
    wanted: &str,
    base_bits: u32,
) -> Result<Option<u32>> {
    for m in &strukt.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == wanted {
            return Ok(Some(base_bits + m.bit_offset()));
        }
        if name.is_empty() {
            match btf.resolve_chained_type(m)? {
                Type::Struct(inner) | Type::Union(inner) => {
                    if let Some(bits) =
                        find_member_bits(btf, &inner, wanted, base_bits + m.bit_offset())?
                    {
                        return Ok(Some(bits));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(None)
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
        // This kernel (6.18) has bpf_task_pt_regs; x86_64's pt_regs.sp is the 20th word.
        #[cfg(target_arch = "x86_64")]
        assert_eq!((c.have_task_pt_regs, c.pt_regs_sp), (1, 152), "{c:?}");
    }
}
