use keel_recipe::Schedule;

/// Learning rate at optimizer step `step` (0-based) of `total`: linear
/// warmup over `warmup` steps, then constant, linear decay to 0, or cosine
/// decay to 0. A pure function of the step, so a resumed run follows it
/// exactly.
pub fn lr_at(step: usize, total: usize, warmup: usize, base: f64, schedule: Schedule) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, sch| lr_at(s, 110, 10, 1.0, sch);
        assert_eq!(lr(0, Schedule::Cosine), 0.1);
        assert_eq!(lr(9, Schedule::Cosine), 1.0);
        assert_eq!(lr(10, Schedule::Cosine), 1.0);
        assert!((lr(60, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!((lr(60, Schedule::Linear) - 0.5).abs() < 1e-12);
        assert_eq!(lr(100, Schedule::Constant), 1.0);
    }
}
