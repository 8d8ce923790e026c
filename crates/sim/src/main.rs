//! `shoal-sim`: run seeds of the deterministic simulation. A failing seed is printed with the
//! command that replays it.

use clap::Parser;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a Shoal cluster under faults")]
struct Args {
    /// Run this one seed (and print its faults).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of seeds to run, from --first.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Simulated seconds of workload per seed.
    #[arg(long, default_value_t = 20)]
    workload_secs: u64,
    #[arg(long, default_value_t = 2)]
    clients: u64,
    /// Run without faults.
    #[arg(long)]
    no_faults: bool,
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let started = Instant::now();
    let (mut failed, mut acked, mut reads) = (Vec::new(), 0, 0);
    for seed in &seeds {
        let o = shoal_sim::Options {
            seed: *seed,
            clients: args.clients,
            workload_secs: args.workload_secs,
            faults: !args.no_faults,
        };
        let t = Instant::now();
        match shoal_sim::run(&o) {
            Ok(out) => {
                acked += out.acked;
                reads += out.reads_checked;
                println!(
                    "seed {seed}: ok in {:.1} s ({:.0} simulated s, {} faults, link breaks {}/message, {} terms, {} writes acknowledged, {} reads checked, {} retried while unavailable, digest {:08x})",
                    t.elapsed().as_secs_f64(),
                    out.sim_secs,
                    out.faults.len(),
                    out.link_fail_rate,
                    out.terms,
                    out.acked,
                    out.reads_checked,
                    out.unavailable,
                    out.digest
                );
                if args.seed.is_some() {
                    for f in &out.faults {
                        println!("  {f}");
                    }
                }
            }
            Err(e) => {
                println!("seed {seed}: FAILED: {e}");
                println!("  replay: cargo run --release -p shoal-sim -- --seed {seed} --workload-secs {} --clients {}", args.workload_secs, args.clients);
                failed.push(*seed);
            }
        }
    }
    println!(
        "{} seeds in {:.0} s: {} failed; {acked} writes acknowledged and {reads} reads checked in all",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed seeds: {failed:?}");
        std::process::exit(1);
    }
}
