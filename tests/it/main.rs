//! Integration tests: a real gateway on a random port, driven by real clients.
//! One binary for every integration test (faster to build than one per file).

mod helpers;
mod interop;
mod turns;
