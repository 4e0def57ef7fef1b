//! The host end to end with real plugins: load order and dependency failures (`lifecycle`),
//! plugins that crash, hang, garble the protocol or flood their output (`faults`), signed
//! packages (`trust`), sandbox escapes (`hostile`), and one conformance suite run against both
//! the process and the wasm runtime (`conformance`).

mod fake;
mod support;

mod conformance;
mod core;
mod faults;
mod hostile;
mod lifecycle;
mod pyenv;
mod registry;
mod trust;
mod watch;
mod work;
