//! The plugd HTTP API: plugin calls, the admin resources, health and readiness. The only crate
//! that knows HTTP; its DTOs live in `dto`, its error bodies in `error`.
#![warn(missing_docs)]

mod dto;
mod error;
mod events;
mod proxy;
mod routes;
mod stream;
mod tasks;

pub use error::{ApiError, ViolationDto};
pub use proxy::{HttpHealth, Proxy, ProxyConfig};
pub use routes::{Readiness, ServerConfig, exposed_router, router};
pub use stream::Shutdown;
