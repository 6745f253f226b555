//! Load generators and benchmarks, run side by side against real etcd in the same run.
//! Not built yet: see issue 6.

fn main() {
    eprintln!("bench: not implemented yet (see issue 6)");
    std::process::exit(2);
}
