//! Starts a private PostgreSQL cluster (see the crate's documentation),
//! creates one database in it, prints its connection string on one line
//! and holds the cluster until standard input closes or this process is
//! killed; then the cluster is stopped and its directory deleted.
//!
//! For running a server against PostgreSQL by hand:
//! `outrider-pgtest` prints `host=/tmp/outrider-pg-… port=5432 user=outrider dbname=test_1`.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider-pgtest: cannot start a runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let cluster = match outrider_pgtest::Cluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider-pgtest: {e}");
            return ExitCode::from(69);
        }
    };
    let db = match runtime.block_on(cluster.database()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("outrider-pgtest: {e}");
            return ExitCode::from(69);
        }
    };
    println!("{}", db.conninfo());
    // Held until end of input; dropping the cluster then removes it.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(cluster);
    ExitCode::SUCCESS
}
