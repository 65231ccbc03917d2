//! The criterion settings every bench target shares: short runs, so that `cargo xtask bench`
//! finishes in minutes on a 2-core machine.

use criterion::Criterion;
use tessera_benches::{MEASUREMENT, SAMPLES, WARM_UP};

pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .measurement_time(MEASUREMENT)
        .warm_up_time(WARM_UP)
}
