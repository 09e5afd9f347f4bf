//! Test support for the stage kinds: a loopback HTTP server.
#![allow(dead_code)] // each test binary uses its own subset

pub mod http;
