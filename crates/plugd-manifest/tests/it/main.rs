//! Integration tests of `plugd-manifest`: the golden files in `tests/ui` and `Manifest::load`.

mod contract;
mod load;
mod ui;
