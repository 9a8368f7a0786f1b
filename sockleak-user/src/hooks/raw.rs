//! Programs aya cannot load: parsed and relocated by aya's own object crate against the maps aya
//! made, then loaded and linked with the `bpf` system call.
//!
//! aya 0.16 knows no UNIX sock_addr attach type (`cgroup/connect_unix`, Linux 6.7+): its object
//! parser refuses the section and its loader cannot set the expected attach type the kernel
//! checks at attach. The programs sit in a section aya does parse (`cgroup/connect4`) and are
//! never loaded as that.
use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type};

/// A program linked to the cgroup: detached when this is dropped (a bpf link, unlike an
/// attachment by `BPF_PROG_ATTACH`, does not outlive sockleak).
#[derive(Debug)]
pub struct CgroupLink {
    _program: OwnedFd,
    _link: OwnedFd,
}

/// Loads program `name` of `object` (the bytes aya loaded `ebpf` from) as a cgroup sock_addr
/// program for UNIX `connect()`, and links it to `cgroup`.
pub fn link_unix_connect(
    ebpf: &Ebpf,
    object: &[u8],
    name: &str,
    cgroup: &File,
) -> Result<CgroupLink> {
    let (instructions, license) = relocated(ebpf, object, name)?;
    let attach_type = bpf_attach_type::BPF_CGROUP_UNIX_CONNECT as u32;
    let program = load(
        name,
        (&instructions, &license),
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32,
        attach_type,
    )?;
    let link = link_create(&program, cgroup, attach_type).context("linking to the cgroup")?;
    Ok(CgroupLink {
        _program: program,
        _link: link,
    })
}

/// Program `name`'s instructions, with its maps' fds (aya's, so that it shares every map and
/// the globals aya wrote) and its calls linked in, as aya would load them; and the object's
/// license.
fn relocated(ebpf: &Ebpf, object: &[u8], name: &str) -> Result<(Vec<bpf_insn>, CString)> {
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    // Relocating takes the object mutably and its maps by reference: the maps are copied out.
    // A map already taken out of `ebpf` is one this program does not use, or relocating it
    // fails and says so.
    let maps: Vec<_> = obj
        .maps
        .iter()
        .filter_map(|(map_name, map)| {
            let loaded = ebpf.map(map_name)?;
            Some((map_name.clone(), map_fd(loaded), map.clone()))
        })
        .collect();
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, map)| (n.as_str(), *fd, map)),
        &text_sections,
    )
    .context("relocating maps")?;
    obj.relocate_calls(&text_sections)
        .context("relocating calls")?;
    let program = obj
        .programs
        .get(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let instructions = obj.functions[&program.function_key()].instructions.clone();
    Ok((instructions, obj.license))
}

/// The fd of the kernel map behind `map`.
fn map_fd(map: &Map) -> std::os::fd::RawFd {
    use Map::*;
    let (Array(data)
    | ArrayOfMaps(data)
    | BloomFilter(data)
    | CgroupArray(data)
    | CgroupStorage(data)
    | CgrpStorage(data)
    | CpuMap(data)
    | DevMap(data)
    | DevMapHash(data)
    | HashMap(data)
    | HashOfMaps(data)
    | InodeStorage(data)
    | LpmTrie(data)
    | LruHashMap(data)
    | PerCpuArray(data)
    | PerCpuCgroupStorage(data)
    | PerCpuHashMap(data)
    | PerCpuLruHashMap(data)
    | PerfEventArray(data)
    | ProgramArray(data)
    | Queue(data)
    | ReusePortSockArray(data)
    | RingBuf(data)
    | SockHash(data)
    | SockMap(data)
    | SkStorage(data)
    | Stack(data)
    | StackTraceMap(data)
    | Unsupported(data)
    | XskMap(data)) = map;
    data.fd().as_fd().as_raw_fd()
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to the expected attach type (the kernel
/// takes a shorter attribute as the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it, for a cgroup.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// The verifier's log, when a load fails: enough for the programs here.
const LOG_BYTES: usize = 1 << 20;

fn load(
    name: &str,
    (instructions, license): (&[bpf_insn], &CString),
    prog_type: u32,
    expected_attach_type: u32,
) -> Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    // The kernel keeps 15 bytes of a program's name.
    let kept = &name.as_bytes()[..name.len().min(15)];
    prog_name[..kept.len()].copy_from_slice(kept);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: u32::try_from(instructions.len()).context("program too long")?,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            // Again with the verifier's log, which says why.
            let mut log = vec![0u8; LOG_BYTES];
            attr.log_level = 1;
            attr.log_size = LOG_BYTES as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]);
            bail!("loading {name}: {err}\nverifier log:\n{}", log.trim_end())
        }
    }
}

fn link_create(program: &OwnedFd, cgroup: &File, attach_type: u32) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// The `bpf` system call with `attr`, for commands that return a new fd.
fn bpf<A>(cmd: bpf_cmd, attr: &mut A) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live `union bpf_attr` prefix of its own size, and every pointer in
    // it outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            (attr as *mut A).cast::<libc::c_void>(),
            size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}
