//! Script manager integration tests.

