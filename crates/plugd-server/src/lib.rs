//! The plugd HTTP API: plugin calls, the admin resources, health and readiness. The only crate
//! that knows HTTP; its DTOs live in `dto`, its error bodies in `error`.
#![warn(missing_docs)]

pub mod auth;
mod dto;
mod error;
mod events;
mod handoff;
mod logs;
mod metrics;
mod openapi;
mod proxy;
mod routes;
mod scripts;
mod stream;
mod tasks;
mod ui;

pub use auth::{Auth, AuthConfig, AuthMode};
pub use error::{ApiError, ErrorExtra, ViolationDto};
pub use handoff::{Handoff, HandoffListener};
pub use proxy::{HttpHealth, Proxy, ProxyConfig};
pub use routes::{App, Readiness, ServerConfig, app, exposed_router, router};
pub use stream::Shutdown;
