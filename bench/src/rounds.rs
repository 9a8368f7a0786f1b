//! Rounds that put every traced run between two untraced ones, and the medians over rounds.
use anyhow::Result;

use crate::peers::TracerKind;

/// A traced run and the untraced runs just before and after it.
pub struct Flanked<T> {
    pub run: T,
    pub before: T,
    pub after: T,
}

impl<T> Flanked<T> {
    /// `with(the run's value, the mean of its two untraced neighbours' values)`.
    pub fn against_untraced(
        &self,
        value: impl Fn(&T) -> f64,
        with: impl Fn(f64, f64) -> f64,
    ) -> f64 {
        with(
            value(&self.run),
            (value(&self.before) + value(&self.after)) / 2.0,
        )
    }
}

/// Every untraced run, and per traced kind (in the order asked) its runs with their neighbours.
pub struct Measured<T> {
    pub untraced: Vec<T>,
    pub traced: Vec<Vec<Flanked<T>>>,
}

/// `rounds` rounds of `none, kinds[0], none, kinds[1], ..., none`. This machine's speed drifts
/// by a fifth within a minute, more than the tracers differ; a run set against the mean of the
/// untraced runs on either side loses a steady drift entirely, where one untraced run per
/// round left the tracers measured later in the round to the drift.
pub fn flanked<T: Clone>(
    rounds: usize,
    kinds: &[TracerKind],
    mut measure: impl FnMut(usize, TracerKind) -> Result<T>,
) -> Result<Measured<T>> {
    let mut untraced = Vec::new();
    let mut traced: Vec<Vec<Flanked<T>>> = kinds.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut before = measure(round, TracerKind::None)?;
        untraced.push(before.clone());
        for (runs, &kind) in traced.iter_mut().zip(kinds) {
            let run = measure(round, kind)?;
            let after = measure(round, TracerKind::None)?;
            untraced.push(after.clone());
            let before = std::mem::replace(&mut before, after.clone());
            runs.push(Flanked { run, before, after });
        }
    }
    Ok(Measured { untraced, traced })
}

/// The range of per-round ratios, as "lowest-highest%".
pub fn ratio_range(ratios: &[f64]) -> String {
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    format!("{:.0}-{:.0}%", lowest * 100.0, highest * 100.0)
}

/// The median of `f` over `items`: one figure of each run or round.
pub fn median_by<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&items.iter().map(f).collect::<Vec<_>>())
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_traced_run_sits_between_two_untraced_ones() {
        let mut order = Vec::new();
        let mut clock = 0.0;
        let measured = flanked(
            2,
            &[TracerKind::Sockleak, TracerKind::Tcplife],
            |_, kind| {
                clock += 1.0;
                order.push(kind);
                Ok(clock)
            },
        )
        .unwrap();
        use TracerKind::*;
        assert_eq!(
            order,
            [
                None, Sockleak, None, Tcplife, None, None, Sockleak, None, Tcplife, None
            ]
        );
        assert_eq!(measured.untraced, [1.0, 3.0, 5.0, 6.0, 8.0, 10.0]);
        let tcplife = &measured.traced[1];
        assert_eq!(
            (tcplife[1].before, tcplife[1].run, tcplife[1].after),
            (8.0, 9.0, 10.0)
        );
        // A steady drift cancels: the run is worth its neighbours' mean.
        assert_eq!(tcplife[1].against_untraced(|v| *v, |r, n| r / n), 1.0);
    }

    #[test]
    fn median_of_an_even_count_is_the_middle_pair_mean() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
