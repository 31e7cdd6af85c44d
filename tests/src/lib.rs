//! Shared helpers for the end-to-end tests: spawning the gateway and SDK peers.
