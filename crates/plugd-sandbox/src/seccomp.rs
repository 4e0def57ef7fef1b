//! The seccomp filter: one classic BPF program, assembled here and installed last in the child.
//!
//! It is written by hand rather than generated rule by rule (as `seccompiler` did): the kernel
//! checks, converts and emulates a filter for every system call number when it is installed,
//! so its length is paid on every spawn (a 392-instruction program took 0.3–0.5 ms to install;
//! this one, about 100 instructions searched as a binary tree, a small part of that), and every
//! system call whose answer depends on its arguments runs it.

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
const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

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

/// `chmod`-like calls and the argument that holds the mode; `mknod` makes a regular file with
/// the mode as given, setuid bit included.
const CHMODS: &[(libc::c_long, u32)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, 1),
    (libc::SYS_mknodat, 2),
];
/// File-creating calls, the argument that holds the flags (`None`: always creates) and the one
/// that holds the mode.
const CREATES: &[(libc::c_long, Option<u32>, u32)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, Some(1), 2),
    (libc::SYS_openat, Some(2), 3),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, None, 1),
];
/// The mode bits a plugin may not set: a setuid/setgid file made by the plugin would run as its
/// uid for anyone (the data dir is also mounted `nosuid,noexec`).
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;
/// Open flags with which the mode argument is used: `O_CREAT`, and `O_TMPFILE` (without the
/// `O_DIRECTORY` it includes).
const CREATING: u32 = libc::O_CREAT as u32 | (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;
/// `ioctl` requests that fake input into the host's terminal.
const TTY_INJECTION: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];
/// Socket `ioctl` requests on network devices, routes and ARP entries (`SIOCGIFNAME` 0x8910 up
/// to the device- and protocol-private ones, below 0x8a00): they act on the namespace of the
/// socket they are called on, and a plugin without network may hold a socket of the host's
/// (a WebSocket handed over to it), so for it they are refused (EPERM). Reading its own empty
/// namespace's loopback through them is all it loses.
const NETDEV_IOCTLS: std::ops::Range<u32> = 0x8910..0x8a00;
/// Sending calls and the argument that holds their flags. `MSG_FASTOPEN` makes a send on an
/// unconnected TCP socket connect it first: a plugin without network may hold a socket of the
/// host's (a handed-over WebSocket, which it can disconnect with `AF_UNSPEC`), and a kernel
/// whose Landlock predates TCP rules (ABI < 4) or does not govern this implicit connect would
/// let it reach any address from the host's namespace. For it they are refused (EACCES, as a
/// refused `connect`); no local socket uses the flag.
const SENDS: &[(libc::c_long, u32)] = &[
    (libc::SYS_sendto, 3),
    (libc::SYS_sendmsg, 2),
    (libc::SYS_sendmmsg, 3),
];
const FASTOPEN: u32 = libc::MSG_FASTOPEN as u32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;
/// x32 system calls use the x86_64 audit arch with numbers offset by 2^30: a filter keyed by
/// number would not see them, so they get `ENOSYS`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of argument `i` (every check here looks at an `int` or a mode).
const fn arg_low(i: u32) -> u32 {
    if cfg!(target_endian = "little") {
        16 + 8 * i
    } else {
        16 + 8 * i + 4
    }
}

/// The programs to install, in order (one), and a description for the layer status.
pub(crate) fn programs(
    network_granted: bool,
) -> Result<(Vec<Vec<libc::sock_filter>>, String), SandboxError> {
    let program = program(network_granted).map_err(SandboxError::Seccomp)?;
    let detail = format!(
        "deny-list of {} system calls and namespace `clone` flags (EPERM), setuid/setgid mode bits (EPERM), sockets other than {} (EACCES), `clone3`, `openat2` and x32 calls (ENOSYS){}",
        DENIED.len(),
        if network_granted {
            "Unix, IP and netlink"
        } else {
            "Unix"
        },
        if network_granted {
            ""
        } else {
            ", network device ioctls (EPERM), TCP Fast Open sends (EACCES)"
        }
    );
    Ok((vec![program], detail))
}

/// A jump target: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    L(usize),
}

/// A classic BPF assembler with forward labels.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, To, To, u32)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn load(&mut self, offset: u32) {
        self.code.push((BPF_LD_W_ABS, To::Next, To::Next, offset));
    }

    fn jump(&mut self, op: u16, k: u32, jt: To, jf: To) {
        self.code.push((op, jt, jf, k));
    }

    fn goto(&mut self, label: usize) {
        self.code.push((BPF_JA, To::L(label), To::Next, 0));
    }

    fn ret(&mut self, action: u32) {
        self.code.push((BPF_RET_K, To::Next, To::Next, action));
    }

    /// Resolves the labels. Conditional jumps reach at most 255 instructions ahead.
    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        let offset = |at: usize, to: To| -> Result<u32, String> {
            match to {
                To::Next => Ok(0),
                To::L(l) => {
                    let target = self.labels[l].ok_or("an unbound label")?;
                    target
                        .checked_sub(at + 1)
                        .map(|o| o as u32)
                        .ok_or_else(|| "a backward jump".to_owned())
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, &(code, jt, jf, k))| {
                if code == BPF_JA {
                    return Ok(libc::sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: offset(at, jt)?,
                    });
                }
                let short = |o: u32| u8::try_from(o).map_err(|_| format!("a jump of {o}"));
                Ok(libc::sock_filter {
                    code,
                    jt: short(offset(at, jt)?)?,
                    jf: short(offset(at, jf)?)?,
                    k,
                })
            })
            .collect()
    }

    /// Jumps to the label of `nr` in `keys` (sorted), or to `miss`: a binary search down to
    /// runs of four, then a chain of comparisons.
    fn search(&mut self, keys: &[(u32, usize)], miss: usize) {
        if keys.len() <= 4 {
            for (i, &(nr, label)) in keys.iter().enumerate() {
                let jf = if i + 1 == keys.len() {
                    To::L(miss)
                } else {
                    To::Next
                };
                self.jump(BPF_JEQ_K, nr, To::L(label), jf);
            }
            if keys.is_empty() {
                self.goto(miss);
            }
            return;
        }
        let mid = keys.len() / 2;
        let upper = self.label();
        self.jump(BPF_JGE_K, keys[mid].0, To::L(upper), To::Next);
        self.search(&keys[..mid], miss);
        self.bind(upper);
        self.search(&keys[mid..], miss);
    }
}

/// The filter. Unknown architectures are killed; x32 calls, `clone3` and `openat2` get
/// `ENOSYS` (so libc falls back to `clone` and `openat`, whose arguments the filter can see);
/// the deny-list gets `EPERM`; calls whose arguments matter go to a block of their own.
fn program(network_granted: bool) -> Result<Vec<libc::sock_filter>, String> {
    let mut a = Asm::default();
    let (allow, eperm, eacces, enosys, kill) =
        (a.label(), a.label(), a.label(), a.label(), a.label());
    a.load(ARCH);
    a.jump(BPF_JEQ_K, AUDIT_ARCH, To::Next, To::L(kill));
    a.load(NR);
    if cfg!(target_arch = "x86_64") {
        a.jump(BPF_JGE_K, X32_SYSCALL_BIT, To::L(enosys), To::Next);
    }

    // Each block: its label and what it checks.
    enum Check {
        Clone,
        Mode(u32),
        Create { flags: u32, mode: u32 },
        Ioctl,
        Socket,
        Send(u32),
    }
    let mut keys: Vec<(u32, usize)> = Vec::new();
    let mut blocks: Vec<(usize, Check)> = Vec::new();
    let mut add = |a: &mut Asm, nr: libc::c_long, check: Option<Check>| {
        let label = match check {
            None => eperm,
            Some(check) => {
                let label = a.label();
                blocks.push((label, check));
                label
            }
        };
        keys.push((nr as u32, label));
    };
    for &nr in DENIED {
        add(&mut a, nr, None);
    }
    add(&mut a, libc::SYS_clone, Some(Check::Clone));
    for &(nr, mode) in CHMODS {
        add(&mut a, nr, Some(Check::Mode(mode)));
    }
    for &(nr, flags, mode) in CREATES {
        let check = match flags {
            Some(flags) => Check::Create { flags, mode },
            None => Check::Mode(mode),
        };
        add(&mut a, nr, Some(check));
    }
    add(&mut a, libc::SYS_ioctl, Some(Check::Ioctl));
    add(&mut a, libc::SYS_socket, Some(Check::Socket));
    add(&mut a, libc::SYS_socketpair, Some(Check::Socket));
    if !network_granted {
        for &(nr, flags) in SENDS {
            add(&mut a, nr, Some(Check::Send(flags)));
        }
    }
    keys.push((libc::SYS_clone3 as u32, enosys));
    keys.push((libc::SYS_openat2 as u32, enosys));
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("system call {} listed twice", w[0].0));
    }
    a.search(&keys, allow);

    let families: &[libc::c_int] = if network_granted {
        &NET_FAMILIES
    } else {
        &LOCAL_FAMILIES
    };
    for (label, check) in blocks {
        a.bind(label);
        match check {
            Check::Clone => {
                a.load(arg_low(0));
                a.jump(
                    BPF_JSET_K,
                    NAMESPACE_FLAGS as u32,
                    To::L(eperm),
                    To::L(allow),
                );
            }
            Check::Mode(mode) => {
                a.load(arg_low(mode));
                a.jump(BPF_JSET_K, SETID, To::L(eperm), To::L(allow));
            }
            Check::Create { flags, mode } => {
                a.load(arg_low(flags));
                a.jump(BPF_JSET_K, CREATING, To::Next, To::L(allow));
                a.load(arg_low(mode));
                a.jump(BPF_JSET_K, SETID, To::L(eperm), To::L(allow));
            }
            Check::Ioctl => {
                a.load(arg_low(1));
                for request in TTY_INJECTION {
                    a.jump(BPF_JEQ_K, request, To::L(eperm), To::Next);
                }
                if !network_granted {
                    a.jump(BPF_JGE_K, NETDEV_IOCTLS.start, To::Next, To::L(allow));
                    a.jump(BPF_JGE_K, NETDEV_IOCTLS.end, To::L(allow), To::L(eperm));
                }
                a.goto(allow);
            }
            Check::Socket => {
                a.load(arg_low(0));
                for &family in families {
                    a.jump(BPF_JEQ_K, family as u32, To::L(allow), To::Next);
                }
                a.goto(eacces);
            }
            Check::Send(flags) => {
                a.load(arg_low(flags));
                a.jump(BPF_JSET_K, FASTOPEN, To::L(eacces), To::L(allow));
            }
        }
    }
    for (label, action) in [
        (allow, RET_ALLOW),
        (eperm, RET_ERRNO | libc::EPERM as u32),
        (eacces, RET_ERRNO | libc::EACCES as u32),
        (enosys, RET_ERRNO | libc::ENOSYS as u32),
        (kill, RET_KILL_PROCESS),
    ] {
        a.bind(label);
        a.ret(action);
    }
    a.finish()
}

#[cfg(test)]
// `ioctl` requests are `c_ulong` on glibc and `c_int` on musl.
#[allow(clippy::unnecessary_cast)]
mod tests {
    use super::*;

    /// `struct seccomp_data` for a call.
    struct Call {
        arch: u32,
        nr: u32,
        args: [u64; 6],
    }

    impl Call {
        fn new(nr: libc::c_long, args: &[u64]) -> Call {
            let mut all = [0u64; 6];
            all[..args.len()].copy_from_slice(args);
            Call {
                arch: AUDIT_ARCH,
                nr: nr as u32,
                args: all,
            }
        }

        fn word(&self, offset: u32) -> u32 {
            match offset {
                NR => self.nr,
                ARCH => self.arch,
                _ => {
                    // An argument's half, as the kernel's `struct seccomp_data` lays it out.
                    let i = (offset as usize - 16) / 8;
                    let bytes = self.args[i].to_ne_bytes();
                    let at = (offset as usize - 16) % 8;
                    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
                }
            }
        }
    }

    /// Runs a classic BPF program the way the kernel would, with the opcodes used here.
    fn run(program: &[libc::sock_filter], call: &Call) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        for _ in 0..program.len() {
            let i = program[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => acc = call.word(i.k),
                BPF_JA => pc += i.k as usize,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let taken = match i.code {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                other => panic!("opcode {other:#x}"),
            }
        }
        panic!("ran off the program")
    }

    const ALLOW: u32 = RET_ALLOW;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const EACCES: u32 = RET_ERRNO | libc::EACCES as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    /// What each call should get, written independently of the program's layout.
    fn expected(call: &Call, network: bool) -> u32 {
        let nr = call.nr as libc::c_long;
        let low = |i: usize| call.args[i] as u32;
        if call.arch != AUDIT_ARCH {
            return RET_KILL_PROCESS;
        }
        if cfg!(target_arch = "x86_64") && call.nr >= X32_SYSCALL_BIT {
            return ENOSYS;
        }
        if nr == libc::SYS_clone3 || nr == libc::SYS_openat2 {
            return ENOSYS;
        }
        if DENIED.contains(&nr) {
            return EPERM;
        }
        if nr == libc::SYS_clone {
            return if low(0) & NAMESPACE_FLAGS as u32 != 0 {
                EPERM
            } else {
                ALLOW
            };
        }
        if let Some(&(_, mode)) = CHMODS.iter().find(|c| c.0 == nr) {
            return if low(mode as usize) & SETID != 0 {
                EPERM
            } else {
                ALLOW
            };
        }
        if let Some(&(_, flags, mode)) = CREATES.iter().find(|c| c.0 == nr) {
            let creates = flags.is_none_or(|f| low(f as usize) & CREATING != 0);
            return if creates && low(mode as usize) & SETID != 0 {
                EPERM
            } else {
                ALLOW
            };
        }
        if nr == libc::SYS_ioctl {
            let request = low(1);
            return if TTY_INJECTION.contains(&request)
                || (!network && NETDEV_IOCTLS.contains(&request))
            {
                EPERM
            } else {
                ALLOW
            };
        }
        if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
            let family = low(0) as libc::c_int;
            let allowed = if network {
                NET_FAMILIES.contains(&family)
            } else {
                LOCAL_FAMILIES.contains(&family)
            };
            return if allowed { ALLOW } else { EACCES };
        }
        if let Some(&(_, flags)) = SENDS.iter().find(|c| c.0 == nr) {
            return if !network && low(flags as usize) & FASTOPEN != 0 {
                EACCES
            } else {
                ALLOW
            };
        }
        ALLOW
    }

    #[test]
    fn the_program_decides_every_call_as_the_rules_say() {
        let interesting: Vec<u64> = vec![
            0,
            libc::CLONE_NEWUSER as u64,
            libc::CLONE_NEWNET as u64 | libc::SIGCHLD as u64,
            (libc::CLONE_VM | libc::CLONE_THREAD) as u64,
            0o4755,
            0o2755,
            0o0755,
            libc::O_CREAT as u64,
            libc::O_TMPFILE as u64,
            libc::O_RDONLY as u64,
            libc::TIOCSTI as u64,
            libc::TIOCLINUX as u64,
            libc::TCGETS as u64,
            libc::SIOCGIFCONF as u64,
            0x890f,
            0x8910,
            0x89ff,
            0x8a00,
            libc::MSG_FASTOPEN as u64,
            (libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL) as u64,
            libc::MSG_NOSIGNAL as u64,
            libc::AF_UNIX as u64,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
            libc::AF_NETLINK as u64,
            libc::AF_PACKET as u64,
            libc::AF_VSOCK as u64,
            // Only the low 32 bits are an `int`: high bits must not hide a flag.
            (1u64 << 32) | libc::CLONE_NEWUSER as u64,
            u64::MAX,
        ];
        for network in [false, true] {
            let (programs, _) = programs(network).unwrap();
            assert_eq!(programs.len(), 1);
            let program = &programs[0];
            assert!(program.len() < 160, "{} instructions", program.len());
            let mut checked = 0;
            for nr in (0..600).chain([
                X32_SYSCALL_BIT as libc::c_long,
                X32_SYSCALL_BIT as libc::c_long + 101,
                u32::MAX as libc::c_long,
            ]) {
                // Every pair of interesting arguments for the calls whose arguments matter;
                // a few for the others.
                let by_args = [
                    libc::SYS_clone,
                    libc::SYS_ioctl,
                    libc::SYS_socket,
                    libc::SYS_socketpair,
                ]
                .contains(&nr)
                    || SENDS.iter().any(|c| c.0 == nr)
                    || CHMODS.iter().any(|c| c.0 == nr)
                    || CREATES.iter().any(|c| c.0 == nr);
                let values = if by_args {
                    &interesting[..]
                } else {
                    &interesting[..3]
                };
                for &a in values {
                    for &b in values {
                        // The checks read arguments 0–3: vary two at a time in every slot pair.
                        for (i, j) in [(0, 1), (1, 2), (2, 3), (0, 3)] {
                            let mut args = [0u64; 6];
                            args[i] = a;
                            args[j] = b;
                            let call = Call::new(nr, &args);
                            assert_eq!(
                                run(program, &call),
                                expected(&call, network),
                                "nr {nr} args {args:x?} network {network}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
            assert!(checked > 20_000, "{checked}");
            let mut foreign = Call::new(libc::SYS_read, &[]);
            foreign.arch = 0x4000_0003; // i386
            assert_eq!(run(program, &foreign), RET_KILL_PROCESS);
        }
    }

    #[test]
    fn spot_checks_against_the_rules_as_documented() {
        let (programs, _) = programs(false).unwrap();
        let p = &programs[0];
        let call = |nr, args: &[u64]| run(p, &Call::new(nr, args));
        assert_eq!(call(libc::SYS_read, &[0, 0, 0]), ALLOW);
        assert_eq!(call(libc::SYS_ptrace, &[]), EPERM);
        assert_eq!(call(libc::SYS_unshare, &[0]), EPERM);
        assert_eq!(call(libc::SYS_clone3, &[]), ENOSYS);
        assert_eq!(call(libc::SYS_clone, &[libc::SIGCHLD as u64]), ALLOW);
        assert_eq!(call(libc::SYS_clone, &[libc::CLONE_NEWPID as u64]), EPERM);
        assert_eq!(
            call(
                libc::SYS_openat,
                &[0, 0, (libc::O_CREAT | libc::O_WRONLY) as u64, 0o4755]
            ),
            EPERM
        );
        assert_eq!(call(libc::SYS_openat, &[0, 0, 0, 0o4755]), ALLOW);
        assert_eq!(call(libc::SYS_fchmod, &[3, 0o2755]), EPERM);
        assert_eq!(call(libc::SYS_fchmod, &[3, 0o755]), ALLOW);
        let regular = u64::from(libc::S_IFREG);
        assert_eq!(call(libc::SYS_mknodat, &[3, 0, regular | 0o4755, 0]), EPERM);
        assert_eq!(call(libc::SYS_mknodat, &[3, 0, regular | 0o644, 0]), ALLOW);
        assert_eq!(call(libc::SYS_socket, &[libc::AF_INET as u64]), EACCES);
        assert_eq!(call(libc::SYS_socket, &[libc::AF_UNIX as u64]), ALLOW);
        assert_eq!(call(libc::SYS_ioctl, &[0, libc::TIOCSTI as u64]), EPERM);
        // A handed-over host socket must not list the host's interfaces.
        assert_eq!(call(libc::SYS_ioctl, &[5, libc::SIOCGIFCONF as u64]), EPERM);
        assert_eq!(call(libc::SYS_ioctl, &[5, libc::FIONREAD as u64]), ALLOW);
        // Nor connect it again by sending with TCP Fast Open.
        let fastopen = (libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL) as u64;
        assert_eq!(call(libc::SYS_sendto, &[5, 0, 1, fastopen, 0, 16]), EACCES);
        assert_eq!(call(libc::SYS_sendmsg, &[5, 0, fastopen]), EACCES);
        assert_eq!(call(libc::SYS_sendmmsg, &[5, 0, 1, fastopen]), EACCES);
        let plain = libc::MSG_NOSIGNAL as u64;
        assert_eq!(call(libc::SYS_sendto, &[5, 0, 1, plain, 0, 0]), ALLOW);
        assert_eq!(call(libc::SYS_sendmsg, &[5, 0, plain]), ALLOW);
        let networked = super::programs(true).unwrap().0;
        assert_eq!(
            run(
                &networked[0],
                &Call::new(libc::SYS_ioctl, &[5, libc::SIOCGIFCONF as u64])
            ),
            ALLOW
        );
        assert_eq!(
            run(
                &networked[0],
                &Call::new(
                    libc::SYS_sendto,
                    &[5, 0, 1, libc::MSG_FASTOPEN as u64, 0, 16]
                )
            ),
            ALLOW
        );
    }
}
