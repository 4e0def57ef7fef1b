//! Integration tests for `plugd-resolve`: golden load plans and the plan queries.

mod input;
mod plan;
mod ui;
