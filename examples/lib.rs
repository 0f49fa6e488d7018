//! Examples live in ./examples.
