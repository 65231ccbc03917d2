//! `cargo xtask bench` and `cargo xtask load`: criterion benchmarks and the load run against a
//! real Envoy, and the report in docs/PERFORMANCE.md.

use std::path::Path;

use anyhow::{bail, Result};

pub fn bench(_root: &Path) -> Result<()> {
    bail!("cargo xtask bench is not written yet")
}

pub fn load(_root: &Path) -> Result<()> {
    bail!("cargo xtask load is not written yet")
}
