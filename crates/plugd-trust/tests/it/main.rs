//! Integration tests of `plugd-trust` against real package directories.
