//! The Landlock ruleset: read-only package and interpreter, read-write data dir, TCP ports, scopes.

use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope, make_bitflags,
};

use crate::{SandboxError, SandboxPolicy};

/// The Landlock ABI whose rights are requested. Newer kernels keep their extra rights
/// unhandled (allowed) until this is raised and tested; older kernels get what they support
/// (best effort), and the layer's detail says which ABI was in force.
const TARGET: ABI = ABI::V6;

/// Device files every child may use: `(path, writable)`.
const DEVICES: [(&str, bool); 5] = [
    ("/dev/null", true),
    ("/dev/full", true),
    ("/dev/zero", false),
    ("/dev/urandom", false),
    ("/dev/random", false),
];

fn err(what: &Path) -> impl Fn(landlock::RulesetError) -> SandboxError + '_ {
    move |e| SandboxError::Landlock(format!("`{}`: {e}", what.display()))
}

/// Builds the ruleset in the parent; the child only adds its own tmpfs mounts (with the
/// returned rights: everything but execute, at the ABI in force) and calls
/// `landlock_restrict_self` on the fd.
pub(crate) fn ruleset(
    policy: &SandboxPolicy,
    kernel_abi: i32,
) -> Result<(Option<OwnedFd>, u64, String), SandboxError> {
    let read = AccessFs::from_read(TARGET);
    let all = AccessFs::from_all(TARGET);
    // The data dir is writable but not executable: a plugin cannot run what it downloaded.
    let data = all & !BitFlags::from(AccessFs::Execute);
    let generic = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());

    let mut ruleset: RulesetCreated = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(generic)?
        .handle_access(make_bitflags!(AccessNet::{BindTcp | ConnectTcp}))
        .map_err(generic)?
        .scope(Scope::from_all(TARGET))
        .map_err(generic)?
        .create()
        .map_err(generic)?;

    let add = |ruleset: RulesetCreated, path: &Path, access: BitFlags<AccessFs>| {
        let fd = PathFd::new(path)
            .map_err(|e| SandboxError::Landlock(format!("`{}`: {e}", path.display())))?;
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(TARGET)
        };
        ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err(path))
    };

    ruleset = add(ruleset, &policy.package_dir, read)?;
    let mut missing = Vec::new();
    let mut read_only = 0;
    for path in &policy.read_paths {
        if path.exists() {
            ruleset = add(ruleset, path, read)?;
            read_only += 1;
        } else {
            missing.push(format!("`{}`", path.display()));
        }
    }
    ruleset = add(ruleset, &policy.data_dir, data)?;
    for path in &policy.write_paths {
        ruleset = add(ruleset, path, data)?;
    }
    for (device, writable) in DEVICES {
        let path = Path::new(device);
        if path.exists() {
            let access = if writable {
                make_bitflags!(AccessFs::{ReadFile | WriteFile | Truncate})
            } else {
                BitFlags::from(AccessFs::ReadFile)
            };
            ruleset = add(ruleset, path, access)?;
        }
    }

    let mut ports: Vec<u16> = policy.net_connect.iter().map(|(_, port)| *port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in &ports {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(|e| SandboxError::Landlock(format!("port {port}: {e}")))?;
    }

    let in_force = kernel_abi.min(TARGET as i32);
    let writable =
        (AccessFs::from_all(ABI::from(in_force)) & !BitFlags::from(AccessFs::Execute)).bits();
    let mut detail = format!(
        "ABI {in_force}: read-only package dir and {read_only} paths, read-write data dir (no exec)"
    );
    if in_force >= 4 {
        if ports.is_empty() {
            detail.push_str(", no TCP connect or bind");
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            detail.push_str(&format!(
                ", TCP connect to ports {} only, no TCP bind",
                list.join(", ")
            ));
        }
    } else {
        detail.push_str(", TCP ports not restricted (ABI < 4)");
    }
    if in_force >= 6 {
        detail.push_str(", signals and abstract sockets scoped");
    } else {
        detail.push_str(", signals and abstract sockets not scoped (ABI < 6)");
    }
    if !missing.is_empty() {
        detail.push_str(&format!(
            "; missing read paths left out: {}",
            missing.join(", ")
        ));
    }
    let fd: Option<OwnedFd> = ruleset.into();
    let fd = fd
        .map(crate::fds::lift)
        .transpose()
        .map_err(|e| SandboxError::Landlock(format!("cannot move the ruleset descriptor: {e}")))?;
    Ok((fd, writable, detail))
}
