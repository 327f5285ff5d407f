//! Closed-form queueing results: the oracle for the engine's tests and the numbers
//! `factorysim check` prints next to a teaching scenario.

/// Erlang C: probability that an arrival waits in an M/M/c queue with offered load
/// `a = lambda / mu` (in Erlangs). Requires a < c.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    // Erlang B by the stable recurrence, then C = B / (1 - rho (1 - B)).
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / c as f64;
    b / (1.0 - rho * (1.0 - b))
}

/// M/M/c mean waiting time in queue, seconds.
pub fn mmc_mean_wait(c: u32, lambda: f64, mu: f64) -> f64 {
    let a = lambda / mu;
    erlang_c(c, a) / (c as f64 * mu - lambda)
}

/// M/M/c waiting-time quantile: P(W > t) = C * exp(-(c mu - lambda) t).
pub fn mmc_wait_quantile(c: u32, lambda: f64, mu: f64, q: f64) -> f64 {
    let pc = erlang_c(c, lambda / mu);
    if 1.0 - q >= pc {
        0.0
    } else {
        (pc / (1.0 - q)).ln() / (c as f64 * mu - lambda)
    }
}

/// M/M/1 mean waiting time in queue: rho / (mu - lambda).
pub fn mm1_mean_wait(lambda: f64, mu: f64) -> f64 {
    mmc_mean_wait(1, lambda, mu)
}

/// M/G/1 mean wait (Pollaczek-Khinchine): lambda E[S^2] / (2 (1 - rho)).
pub fn mg1_mean_wait(lambda: f64, mean_s: f64, second_moment_s: f64) -> f64 {
    let rho = lambda * mean_s;
    lambda * second_moment_s / (2.0 * (1.0 - rho))
}

/// M/D/1 mean wait: rho / (2 mu (1 - rho)).
pub fn md1_mean_wait(lambda: f64, service_s: f64) -> f64 {
    mg1_mean_wait(lambda, service_s, service_s * service_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_known_values() {
        // c = 1 reduces to rho.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        // Textbook value: c = 2, a = 1 -> C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // M/M/1 wait: rho/(mu - lambda).
        assert!((mm1_mean_wait(0.9, 1.0) - 9.0).abs() < 1e-9);
        // M/D/1 is half the M/M/1 wait.
        assert!((md1_mean_wait(0.9, 1.0) - 4.5).abs() < 1e-9);
    }
}
