//! Integration tests of `plugd-manifest`: the golden files in `tests/ui`, `Manifest::load`, the
//! foreign formats in `tests/foreign` (one package directory each), the action contract and
//! `docs/manifest.md`.

mod contract;
mod docs;
mod foreign;
mod load;
mod ui;
