//! Benchmarks live in ./benches.
