//! Host + process runtime end to end with real Python plugins: load order, dependency failures,
//! and plugins that crash, hang, garble the protocol, flood their output or never say hello.

mod support;

mod conformance;
mod faults;
mod hostile;
mod lifecycle;
mod trust;
