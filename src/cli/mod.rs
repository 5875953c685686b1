//! Command-line commands: each parses its flags, calls the library and
//! prints the result.

pub mod traces;
