//! Integration tests of `plugd-manifest`: the golden files in `tests/ui`, `Manifest::load`, the
//! action contract and `docs/manifest.md`.

mod contract;
mod docs;
mod load;
mod ui;
