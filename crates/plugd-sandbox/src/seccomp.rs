//! The seccomp deny-list, compiled to BPF in the parent and installed last in the child.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// System calls a plugin never needs: debugging other processes, kernel attack surface
/// (bpf, io_uring, userfaultfd, keyrings), and everything that changes mounts, namespaces,
/// modules or the machine. All fail with `EPERM`.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// `clone` flags that create namespaces; `clone` with any of them fails with `EPERM`.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The only socket family a plugin granted no network may create (governed by the mount
/// namespace: host socket paths do not exist in its root).
const LOCAL_FAMILIES: [libc::c_int; 1] = [libc::AF_UNIX];
/// What a plugin granted network may create besides `AF_UNIX`: IP, and netlink (glibc's
/// `getaddrinfo` asks the routing table which address families are configured).
const NET_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// `chmod`-like calls and the argument that holds the mode.
const CHMODS: &[(libc::c_long, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
];
/// File-creating calls, the argument that holds the flags (`None`: always creates) and the one
/// that holds the mode.
const CREATES: &[(libc::c_long, Option<u8>, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, Some(1), 2),
    (libc::SYS_openat, Some(2), 3),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, None, 1),
];

/// The programs to install, in order, and a description for the layer status.
pub(crate) fn programs(
    network_granted: bool,
) -> Result<(Vec<Vec<libc::sock_filter>>, String), SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let mut programs = vec![compile(eperm_rules()?, libc::EPERM, arch)?];
    let families: &[libc::c_int] = if network_granted {
        &NET_FAMILIES
    } else {
        &LOCAL_FAMILIES
    };
    // An allow-list: one rule whose conditions (all must hold) say "none of these families",
    // so a family added to a later kernel (as `AF_VSOCK` once was) is refused too.
    let not_allowed = rule(
        families
            .iter()
            .map(|f| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *f as u64))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    programs.push(compile(
        BTreeMap::from([
            (libc::SYS_socket, vec![not_allowed.clone()]),
            (libc::SYS_socketpair, vec![not_allowed]),
        ]),
        libc::EACCES,
        arch,
    )?);
    programs.push(enosys_program());
    let detail = format!(
        "deny-list of {} system calls and namespace `clone` flags (EPERM), setuid/setgid mode bits (EPERM), sockets other than {} (EACCES), `clone3`, `openat2` and x32 calls (ENOSYS)",
        DENIED.len(),
        if network_granted {
            "Unix, IP and netlink"
        } else {
            "Unix"
        }
    );
    Ok((programs, detail))
}

/// Rules matching a mode argument with the setuid or the setgid bit.
fn setid_rules(mode_arg: u8, flags: Option<u8>) -> Result<Vec<SeccompRule>, SandboxError> {
    [libc::S_ISUID, libc::S_ISGID]
        .into_iter()
        .map(|bit| {
            let bit = u64::from(bit);
            let mut conditions = vec![cond(
                mode_arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(bit),
                bit,
            )?];
            if let Some(flags) = flags {
                // The mode only matters when the call may create the file.
                let create = libc::O_CREAT as u64;
                conditions.push(cond(
                    flags,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(create),
                    create,
                )?);
            }
            rule(conditions)
        })
        .collect()
}

fn eperm_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let flag = *flag as u64;
                rule(vec![cond(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )?])
            })
            .collect::<Result<_, _>>()?,
    );
    // A setuid/setgid file made by the plugin would run as its uid for anyone (the data dir is
    // also mounted `nosuid,noexec`).
    for &(nr, mode) in CHMODS {
        rules.insert(nr, setid_rules(mode, None)?);
    }
    for &(nr, flags, mode) in CREATES {
        rules.insert(nr, setid_rules(mode, flags)?);
    }
    // Faking terminal input into the host's terminal.
    rules.insert(
        libc::SYS_ioctl,
        [libc::TIOCSTI, libc::TIOCLINUX]
            .iter()
            // The request's type is `c_ulong` on glibc and `c_int` on musl.
            .map(|&req| {
                #[allow(clippy::unnecessary_cast)]
                let req = req as u64;
                rule(vec![cond(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    req,
                )?])
            })
            .collect::<Result<_, _>>()?,
    );
    Ok(rules)
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<Vec<libc::sock_filter>, SandboxError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program = BpfProgram::try_from(filter).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    Ok(program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// `clone3` (and `openat2`) get `ENOSYS` so libc falls back to `clone` (`openat`), whose
/// arguments the deny-list can see;
/// on x86_64, x32 system calls (same audit arch, numbers offset by 2^30) would bypass a
/// deny-list keyed by number, so they get `ENOSYS` too. Written by hand because it needs a
/// range check. Other architectures fall through (the main program kills them).
fn enosys_program() -> Vec<libc::sock_filter> {
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let x32 = cfg!(target_arch = "x86_64");
    let mut p = vec![
        insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    if x32 {
        p.push(insn(BPF_JGE_K, 3, 0, X32_SYSCALL_BIT));
    }
    // `openat2` passes its mode in a struct that seccomp cannot read: libc falls back to
    // `openat`, whose mode the deny-list checks.
    p.push(insn(BPF_JEQ_K, 2, 0, libc::SYS_clone3 as u32));
    p.push(insn(BPF_JEQ_K, 1, 0, libc::SYS_openat2 as u32));
    p.push(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    p.push(insn(BPF_RET_K, 0, 0, enosys));
    p
}
