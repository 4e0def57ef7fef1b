//! The host's side of plugins' own HTTP servers (`[http]`): where each generation's Unix socket
//! lives, which running plugin answers a path or an exposed port, and a lease that keeps a
//! replaced generation draining while a proxied request or WebSocket is still on it. The
//! proxying itself (HTTP plumbing) is the server's (`plugd-server`'s `proxy`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plugd_manifest::PluginName;

use crate::registry::{Generation, Slot};
use crate::{Host, HostError};

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where to reach the HTTP side of a running plugin, held for the length of one proxied
/// request or connection: while it lives, the generation it points to counts it in flight, so a
/// reload drains it like a call (up to the call deadline plus the stop grace).
pub struct HttpEndpoint {
    /// The plugin.
    pub plugin: PluginName,
    /// The Unix socket its HTTP side listens on.
    pub socket: PathBuf,
    /// Its `[http] health` path, if any.
    pub health: Option<String>,
    /// The version serving it (for `X-Plugd-Version`).
    pub version: String,
    /// The host's end of its hand-off channel, when the running plugin takes WebSockets handed
    /// over there (its `hello` said `http_handoff`) rather than relayed.
    pub handoff: Option<Arc<std::os::fd::OwnedFd>>,
    /// The secret to send in `X-Plugd-Secret` with every request to its socket.
    pub secret: Option<Arc<str>>,
    /// Its socket, pinned at its bind: what the proxy connects through (not the path).
    pub pinned: Option<Arc<plugd_runtime::PinnedSocket>>,
    generation: Arc<Generation>,
}

impl HttpEndpoint {
    /// Resolves when the generation this lease points to stops (a connection still relayed to
    /// it must end then).
    pub async fn halted(&self) {
        self.generation.halted.cancelled().await;
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        if self.generation.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.generation.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("plugin", &self.plugin)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// A running plugin's HTTP route on the host's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// The plugin.
    pub plugin: PluginName,
    /// Its `[http] mount`, if it has one.
    pub mount: Option<String>,
    /// Its `[http] expose` port, as granted (untrusted plugins have none).
    pub expose: Option<u16>,
    /// Its `[http] health` path.
    pub health: Option<String>,
}

/// `dir`, created if missing, readable by its owner only: the plugins' sockets live there, and
/// no other user may connect to one. (Processes of the host's own uid still can: a plugin
/// without the sandbox's uid and mount layers could; the plugin tells the host's requests from
/// theirs by the secret of its start, ARCHITECTURE.md "WebSocket hand-off".)
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Host {
    /// A fresh socket path for one generation of `name`: `STATE/run/<n>.sock`, `n` unique in
    /// this process, so it is short whatever the plugin's name; a state dir too deep for it is
    /// an error that says so. (A file left there by an earlier run is replaced when bound.)
    pub(crate) fn http_socket_path(&self, name: &PluginName) -> Result<PathBuf, String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let dir = self.inner.config.state_dir.join("run");
        private_dir(&dir)
            .map_err(|e| format!("Cannot create the socket dir `{}`: {e}", dir.display()))?;
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let path = dir.join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "Plugin `{name}` serves HTTP, but its socket path `{}` is {len} bytes, over the {MAX_SOCKET_PATH} a Unix socket address holds; hint: use a shorter `--state-dir`",
                path.display()
            ));
        }
        Ok(path)
    }

    /// The HTTP side of running plugin `name`, leased for one request or connection.
    pub fn http_endpoint(&self, name: &str) -> Result<HttpEndpoint, HostError> {
        let slot = self.inner.existing(name)?;
        let generation = running_with_http(&slot, name)?;
        let Some(socket) = generation.http_socket.clone() else {
            return Err(no_http(name));
        };
        generation.in_flight.fetch_add(1, Ordering::AcqRel);
        let side = generation.instance.http_side();
        Ok(HttpEndpoint {
            plugin: slot.name.clone(),
            health: generation
                .manifest
                .http
                .as_ref()
                .and_then(|h| h.health.clone()),
            version: generation.manifest.version.to_string(),
            handoff: side.handoff,
            secret: side.secret,
            pinned: side.socket,
            socket,
            generation,
        })
    }

    /// The HTTP routes of the running plugins that serve HTTP, by name.
    pub fn http_routes(&self) -> Vec<HttpRoute> {
        let mut routes: Vec<HttpRoute> = self
            .inner
            .slots
            .read()
            .values()
            .filter_map(|slot| {
                let generation = slot.running()?;
                let http = generation.manifest.http.as_ref()?;
                Some(HttpRoute {
                    plugin: slot.name.clone(),
                    mount: http.mount.clone(),
                    expose: http.expose,
                    health: http.health.clone(),
                })
            })
            .collect();
        routes.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        routes
    }

    /// Whether any running plugin serves HTTP (`[http]`).
    pub fn serves_http(&self) -> bool {
        self.inner.slots.read().values().any(|slot| {
            slot.running()
                .is_some_and(|generation| generation.manifest.http.is_some())
        })
    }

    /// The running plugin whose `[http] mount` is a prefix of `path` (segment-wise), with the
    /// mount.
    pub fn http_mounted(&self, path: &str) -> Option<(PluginName, String)> {
        self.inner.slots.read().values().find_map(|slot| {
            let generation = slot.running()?;
            let mount = generation.manifest.http.as_ref()?.mount.as_ref()?;
            let rest = path.strip_prefix(mount.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| (slot.name.clone(), mount.clone()))
        })
    }

    /// Refuses to start `name` with `mount` when another plugin has an overlapping mount (one
    /// is a segment-wise prefix of the other) and runs, or is starting and sorts before `name`
    /// (plugins of one wave start together: the first name wins, whatever the timing).
    pub(crate) fn check_mount(&self, name: &PluginName, mount: &str) -> Result<(), String> {
        let overlaps = |a: &str, b: &str| {
            let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
            long.strip_prefix(short)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        for slot in self.inner.slots.read().values() {
            if slot.name == *name {
                continue;
            }
            let other = {
                let inner = slot.inner.lock();
                let manifest = match (inner.running(), inner.state()) {
                    (Some(generation), _) => Some(generation.manifest.clone()),
                    (None, crate::PluginState::Starting) if slot.name < *name => {
                        inner.manifest.clone()
                    }
                    _ => None,
                };
                manifest.and_then(|m| m.http.as_ref().and_then(|h| h.mount.clone()))
            };
            if let Some(other) = other
                && overlaps(mount, &other)
            {
                return Err(format!(
                    "Plugin `{name}` cannot mount its HTTP side at `{mount}`: plugin `{}` is mounted at `{other}`; hint: change `[http] mount` of one of them",
                    slot.name
                ));
            }
        }
        Ok(())
    }

    /// Refuses to start `name` exposed on `port` when another plugin exposed on the same port
    /// runs, or is starting and sorts before `name` (as [`Host::check_mount`]).
    pub(crate) fn check_expose(&self, name: &PluginName, port: u16) -> Result<(), String> {
        for slot in self.inner.slots.read().values() {
            if slot.name == *name {
                continue;
            }
            let other = {
                let inner = slot.inner.lock();
                match (inner.running(), inner.state()) {
                    (Some(generation), _) => {
                        generation.manifest.http.as_ref().and_then(|h| h.expose)
                    }
                    // A starting plugin's manifest is not narrowed by trust yet: only a trusted
                    // one can be exposed, and this one may not be; the running check catches it.
                    _ => None,
                }
            };
            if other == Some(port) {
                return Err(format!(
                    "Plugin `{name}` cannot be exposed on port {port}: plugin `{}` is; hint: change `[http] expose` of one of them, or move one with `plugd serve --expose NAME=PORT`",
                    slot.name
                ));
            }
        }
        Ok(())
    }

    /// Removes the socket file of a generation that stopped (best effort).
    pub(crate) fn remove_http_socket(generation: &Generation) {
        if let Some(path) = &generation.http_socket {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes what a previous run left in `STATE/run` (sockets of generations long gone;
    /// `.ho` ones are the hand-off sockets of plugd versions before the socket-pair channel).
    pub(crate) fn clear_http_sockets(&self) {
        let dir = self.inner.config.state_dir.join("run");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry
                    .path()
                    .extension()
                    .is_some_and(|e| e == "sock" || e == "ho")
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn running_with_http(slot: &Slot, name: &str) -> Result<Arc<Generation>, HostError> {
    let inner = slot.inner.lock();
    match inner.running() {
        Some(generation) if generation.manifest.http.is_some() => Ok(generation.clone()),
        Some(_) => Err(no_http(name)),
        None => Err(HostError::NotRunning {
            plugin: name.to_owned(),
            state: inner.state(),
            reason: inner.phase().reason().map(str::to_owned),
        }),
    }
}

fn no_http(name: &str) -> HostError {
    HostError::NotFound(format!(
        "Plugin `{name}` serves no HTTP; hint: give it an `[http]` table and serve an app (Python: `plugin.serve_asgi(app)`)"
    ))
}
