//! How metrics combine over micro-batches: sums add, means weight by their counts, maxima take
//! the maximum; a name recorded with two kinds keeps the newer record instead of panicking.

use learner::Metrics;

#[test]
fn metrics_combine_by_kind() {
    let mut a = Metrics::new();
    a.sum("actor/pg_loss", 0.25);
    a.mean("actor/pg_clipfrac", 0.5, 10.0);
    a.max("rollout/logprob_diff_max", 0.3);
    let mut b = Metrics::new();
    b.sum("actor/pg_loss", 0.5);
    b.mean("actor/pg_clipfrac", 0.2, 30.0);
    b.max("rollout/logprob_diff_max", 0.1);
    b.mean("actor/entropy", 1.0, 0.0); // measured over nothing: left out
    a.merge(&b);
    let v = a.values();
    // 0.25 + 0.5; (0.5·10 + 0.2·30)/40 = 11/40 = 0.275; max(0.3, 0.1).
    assert_eq!(v["actor/pg_loss"], 0.75);
    assert!((v["actor/pg_clipfrac"] - 0.275).abs() < 1e-12);
    assert_eq!(v["rollout/logprob_diff_max"], 0.3);
    assert!(!v.contains_key("actor/entropy"));
    a.set("actor/lr", 1e-6);
    a.mean("actor/lr", 2e-6, 1.0);
    assert_eq!(a.get("actor/lr"), Some(2e-6));
}
