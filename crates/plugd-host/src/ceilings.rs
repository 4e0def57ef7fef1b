//! Ceilings: the most a plugin of each trust level may have, whatever its manifest asks. A
//! manifest that asks for more is clamped (with a warning in its log and status), or refused in
//! strict mode. The operator sets them in `plugd.toml` (`[ceilings.untrusted]`,
//! `[ceilings.trusted]`); every limit has one, including ones added later.

use std::time::Duration;

use plugd_manifest::{Limits, Manifest};

use crate::TrustLevel;

/// The ceiling of every limit for one trust level. `None` leaves that limit unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ceiling {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPU time one call may use.
    pub cpu: Option<Duration>,
    /// Wall-clock time one call may take.
    pub call_timeout: Option<Duration>,
    /// Calls in flight at once.
    pub concurrency: Option<u32>,
    /// Bytes in the plugin's data dir.
    pub disk: Option<u64>,
    /// Bytes in the plugin's kv store.
    pub storage: Option<u64>,
    /// Background tasks running at once.
    pub tasks: Option<u32>,
    /// Wall-clock time one task run may take.
    pub task_timeout: Option<Duration>,
}

/// Ceilings per trust level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// For unsigned packages: modest.
    pub untrusted: Ceiling,
    /// For packages signed by a trusted key.
    pub trusted: Ceiling,
}

impl Default for Ceilings {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        Ceilings {
            untrusted: Ceiling {
                memory: Some(512 * MIB),
                cpu: Some(Duration::from_secs(60)),
                call_timeout: Some(Duration::from_secs(300)),
                concurrency: Some(256),
                disk: Some(1024 * MIB),
                storage: Some(256 * MIB),
                tasks: Some(16),
                task_timeout: Some(Duration::from_secs(3600)),
            },
            trusted: Ceiling {
                memory: Some(8192 * MIB),
                cpu: None,
                call_timeout: None,
                concurrency: None,
                disk: Some(100 * 1024 * MIB),
                storage: Some(10 * 1024 * MIB),
                tasks: None,
                task_timeout: None,
            },
        }
    }
}

impl Ceilings {
    /// The ceiling for a trust level.
    pub fn for_trust(&self, trust: &TrustLevel) -> &Ceiling {
        match trust {
            TrustLevel::Trusted { .. } => &self.trusted,
            TrustLevel::Untrusted => &self.untrusted,
        }
    }
}

/// Clamps `manifest.limits` to `ceiling`; returns one sentence per clamped limit.
pub(crate) fn clamp(manifest: &mut Manifest, trust: &TrustLevel, ceiling: &Ceiling) -> Vec<String> {
    let name = manifest.name.clone();
    let level = match trust {
        TrustLevel::Trusted { .. } => "trusted",
        TrustLevel::Untrusted => "untrusted",
    };
    let limits: &mut Limits = &mut manifest.limits;
    let mut clamped = Vec::new();
    let mut note = |key: &str, asked: String, max: String| {
        clamped.push(format!(
            "Plugin `{name}` asks for `limits.{key} = {asked}`, more than the {level} ceiling of {max}; it gets {max}; hint: sign the package or raise `[ceilings.{level}] {key}` in `plugd.toml`"
        ));
    };
    if let Some(max) = ceiling.memory
        && limits.memory > max
    {
        note("memory", bytes(limits.memory), bytes(max));
        limits.memory = max;
    }
    if let Some(max) = ceiling.cpu
        && limits.cpu > max
    {
        note("cpu", format!("{:?}", limits.cpu), format!("{max:?}"));
        limits.cpu = max;
    }
    if let Some(max) = ceiling.call_timeout
        && limits.call_timeout > max
    {
        note(
            "call_timeout",
            format!("{:?}", limits.call_timeout),
            format!("{max:?}"),
        );
        limits.call_timeout = max;
    }
    if let Some(max) = ceiling.concurrency
        && limits.concurrency > max
    {
        note(
            "concurrency",
            limits.concurrency.to_string(),
            max.to_string(),
        );
        limits.concurrency = max;
    }
    if let Some(max) = ceiling.disk
        && limits.disk > max
    {
        note("disk", bytes(limits.disk), bytes(max));
        limits.disk = max;
    }
    if let Some(max) = ceiling.storage
        && limits.storage > max
    {
        note("storage", bytes(limits.storage), bytes(max));
        limits.storage = max;
    }
    if let Some(max) = ceiling.tasks
        && limits.tasks > max
    {
        note("tasks", limits.tasks.to_string(), max.to_string());
        limits.tasks = max;
    }
    if let Some(max) = ceiling.task_timeout
        && limits.task_timeout > max
    {
        note(
            "task_timeout",
            format!("{:?}", limits.task_timeout),
            format!("{max:?}"),
        );
        limits.task_timeout = max;
    }
    clamped
}

/// `"64MiB"`-style text for a byte count (exact when it is a whole number of MiB or GiB).
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if n.is_multiple_of(GIB) {
        format!("\"{}GiB\"", n / GIB)
    } else if n.is_multiple_of(MIB) {
        format!("\"{}MiB\"", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(limits: &str) -> Manifest {
        Manifest::from_toml_str(&format!(
            "[plugin]\nname = \"big\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n[limits]\n{limits}\n"
        ))
        .unwrap()
    }

    #[test]
    fn an_untrusted_plugin_asking_for_64_gib_gets_the_ceiling() {
        let mut m = manifest("memory = \"64GiB\"\nconcurrency = 4");
        let notes = clamp(
            &mut m,
            &TrustLevel::Untrusted,
            &Ceilings::default().untrusted,
        );
        assert_eq!(m.limits.memory, 512 << 20);
        assert_eq!(m.limits.concurrency, 4, "within the ceiling: untouched");
        assert_eq!(
            notes,
            [
                "Plugin `big` asks for `limits.memory = \"64GiB\"`, more than the untrusted ceiling of \"512MiB\"; it gets \"512MiB\"; hint: sign the package or raise `[ceilings.untrusted] memory` in `plugd.toml`"
            ]
        );
    }

    #[test]
    fn a_trusted_plugin_gets_more_and_none_means_unbounded() {
        let mut m = manifest("memory = \"64GiB\"\ncall_timeout = \"1h\"");
        let trusted = TrustLevel::Trusted { key_id: "k".into() };
        let notes = clamp(&mut m, &trusted, &Ceilings::default().trusted);
        assert_eq!(m.limits.memory, 8 << 30);
        assert_eq!(m.limits.call_timeout, Duration::from_secs(3600));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn task_limits_have_ceilings_too() {
        let mut m = manifest("tasks = 64\ntask_timeout = \"24h\"");
        let notes = clamp(
            &mut m,
            &TrustLevel::Untrusted,
            &Ceilings::default().untrusted,
        );
        assert_eq!(m.limits.tasks, 16);
        assert_eq!(m.limits.task_timeout, Duration::from_secs(3600));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("limits.tasks"), "{notes:?}");
    }
}
