//! A few seeds of the simulation in the ordinary test run (the CI script runs 200 more), each
//! run twice: a seed must pass and replay to the same digest.

#[test]
fn seeds_pass_and_replay_to_the_same_digest() {
    for seed in [3, 11, 42] {
        let o = shoal_sim::Options {
            seed,
            ..Default::default()
        };
        let first = shoal_sim::run(&o).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            first.acked > 50,
            "seed {seed}: only {} writes acknowledged",
            first.acked
        );
        assert!(
            first.reads_checked > 50,
            "seed {seed}: only {} reads checked",
            first.reads_checked
        );
        let again = shoal_sim::run(&o).unwrap_or_else(|e| panic!("seed {seed} on replay: {e}"));
        assert_eq!(
            first.digest, again.digest,
            "seed {seed} did not replay identically"
        );
        assert_eq!(
            (first.acked, first.reads_checked),
            (again.acked, again.reads_checked)
        );
    }
}

#[test]
fn without_faults_there_is_one_term_and_nothing_is_unavailable() {
    let o = shoal_sim::Options {
        seed: 5,
        faults: false,
        ..Default::default()
    };
    let out = shoal_sim::run(&o).expect("a run without faults passes");
    assert_eq!(out.terms, 1, "a leader was replaced without any fault");
    assert!(out.faults.is_empty());
    assert_eq!(
        out.unavailable, 0,
        "reads found data unavailable without any fault"
    );
}
