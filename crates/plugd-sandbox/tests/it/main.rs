//! Integration tests of the sandbox layers with real children.
