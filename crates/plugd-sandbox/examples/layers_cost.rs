//! Measures the cost of the sandbox layers on `python3 -c pass`.
fn main() {}
