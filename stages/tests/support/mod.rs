//! Test support for the stage kinds: a loopback HTTP server.

pub mod http;
