//! What a plugin is actually granted: its manifest's requests, narrowed by its trust level.
//! Trust never removes confinement; it only widens what may be granted.

use plugd_manifest::{Manifest, Service};

use crate::TrustLevel;

/// Services an untrusted (unsigned) plugin may use: all scoped to the plugin itself (its kv, its
/// events, its tasks, calls to its declared dependencies). Application services, outgoing HTTP
/// and host environment variables stay trusted-only.
pub(crate) const UNTRUSTED_SERVICES: &[Service] = &[
    Service::Kv,
    Service::Events,
    Service::Tasks,
    Service::Plugins,
];

/// Returns the manifest the runtime gets (permissions narrowed for untrusted packages) and, per
/// denied request, its kind (the `kind` label of `plugd_sandbox_denials_total`) and a sentence.
pub(crate) fn effective(
    manifest: &Manifest,
    trust: &TrustLevel,
) -> (Manifest, Vec<(&'static str, String)>) {
    let mut granted = manifest.clone();
    let mut denials = Vec::new();
    if *trust == TrustLevel::Untrusted {
        let name = &manifest.name;
        let perms = &mut granted.permissions;
        for target in perms.net_connect.drain(..) {
            denials.push((
                "net_connect",
                format!(
                    "Denied `net.connect` to `{target}` for untrusted plugin `{name}`; hint: sign the package and add the key with `plugd trust add`"
                ),
            ));
        }
        for var in perms.env.drain(..) {
            denials.push((
                "env",
                format!(
                    "Denied environment variable `{var}` for untrusted plugin `{name}`; hint: sign the package"
                ),
            ));
        }
        for app in perms.app_services.drain(..) {
            denials.push((
                "app_service",
                format!(
                    "Denied application service `app:{app}` for untrusted plugin `{name}`; hint: sign the package"
                ),
            ));
        }
        // The host's own events (`plugd.*`: reload failures with other plugins' error output
        // and host paths) are for the operator and trusted plugins.
        granted.events.subscribe.retain(|pattern| {
            let host_topic = pattern == "plugd.*" || pattern.starts_with("plugd.");
            if host_topic {
                denials.push((
                    "host_events",
                    format!(
                        "Denied the subscription to `{pattern}` for untrusted plugin `{name}`: host events are for trusted plugins; hint: sign the package"
                    ),
                ));
            }
            !host_topic
        });
        // An untrusted plugin's HTTP side lives under `/plugins/NAME` only: a mount or a port
        // would let it squat a path or port a trusted plugin (or the operator) means to use.
        if let Some(http) = granted.http.as_mut() {
            if let Some(port) = http.expose.take() {
                denials.push((
                    "http_expose",
                    format!(
                        "Denied `[http] expose = {port}` for untrusted plugin `{name}`: it stays reachable under `/plugins/{name}` only; hint: sign the package"
                    ),
                ));
            }
            if let Some(mount) = http.mount.take() {
                denials.push((
                    "http_mount",
                    format!(
                        "Denied `[http] mount = \"{mount}\"` for untrusted plugin `{name}`: it stays reachable under `/plugins/{name}` only; hint: sign the package"
                    ),
                ));
            }
        }
        let perms = &mut granted.permissions;
        perms.services.retain(|s| {
            let ok = UNTRUSTED_SERVICES.contains(s);
            if !ok {
                denials.push((
                    "service",
                    format!(
                        "Denied service `{s}` for untrusted plugin `{name}`; hint: sign the package"
                    ),
                ));
            }
            ok
        });
    }
    (granted, denials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_plugins_lose_network_env_and_privileged_services() {
        let manifest = Manifest::from_toml_str(
            r#"
[plugin]
name = "net"
version = "1.0.0"
runtime = "process"
entry = ["python3", "main.py"]
[permissions]
net.connect = ["api.example.org:443"]
env = ["TOKEN"]
services = ["kv", "events", "tasks", "plugins", "http", "app:db"]
[http]
mount = "/net"
expose = 10000
[events]
subscribe = ["image.*", "plugd.*", "plugd.plugin.reload_failed"]
"#,
        )
        .unwrap();
        let (trusted, denials) = effective(&manifest, &TrustLevel::Trusted { key_id: "k".into() });
        assert_eq!(trusted, manifest);
        assert!(denials.is_empty());

        let (untrusted, denials) = effective(&manifest, &TrustLevel::Untrusted);
        assert!(untrusted.permissions.net_connect.is_empty());
        assert!(untrusted.permissions.env.is_empty());
        let http = untrusted.http.as_ref().unwrap();
        assert_eq!(http.expose, None, "an untrusted plugin is never exposed");
        assert_eq!(http.mount, None, "an untrusted plugin never mounts");
        assert_eq!(untrusted.events.subscribe, ["image.*"]);
        assert_eq!(
            untrusted.permissions.services,
            [
                Service::Kv,
                Service::Events,
                Service::Tasks,
                Service::Plugins
            ]
        );
        assert!(untrusted.permissions.app_services.is_empty());
        let kinds: Vec<&str> = denials.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds,
            [
                "net_connect",
                "env",
                "app_service",
                "host_events",
                "host_events",
                "http_expose",
                "http_mount",
                "service"
            ]
        );
        let messages: Vec<&str> = denials.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Denied `net.connect` to `api.example.org:443` for untrusted plugin `net`; hint: sign the package and add the key with `plugd trust add`",
                "Denied environment variable `TOKEN` for untrusted plugin `net`; hint: sign the package",
                "Denied application service `app:db` for untrusted plugin `net`; hint: sign the package",
                "Denied the subscription to `plugd.*` for untrusted plugin `net`: host events are for trusted plugins; hint: sign the package",
                "Denied the subscription to `plugd.plugin.reload_failed` for untrusted plugin `net`: host events are for trusted plugins; hint: sign the package",
                "Denied `[http] expose = 10000` for untrusted plugin `net`: it stays reachable under `/plugins/net` only; hint: sign the package",
                "Denied `[http] mount = \"/net\"` for untrusted plugin `net`: it stays reachable under `/plugins/net` only; hint: sign the package",
                "Denied service `http` for untrusted plugin `net`; hint: sign the package",
            ]
        );
    }
}
