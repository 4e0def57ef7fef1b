//! Integration tests of `plugd-trust` against real package directories in temp dirs.

mod keys;
mod signing;
mod staging;
mod store;
mod support;
