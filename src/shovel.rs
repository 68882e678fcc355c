//! `setgate shovel --from URI --queue Q --to URI [--exchange X] [--routing-key K]`: move what
//! a queue holds now (a dead-letter queue being replayed, say), at-least-once, and say how many.

use setgate_federation::OneShot;
use std::process::ExitCode;

/// Runs the one-shot shovel; exit 0 with the count, 1 with the reason.
pub fn run(job: OneShot) -> ExitCode {
    let errs = job.validate();
    if !errs.is_empty() {
        for e in errs {
            eprintln!("setgate shovel: {e}");
        }
        return ExitCode::FAILURE;
    }
    // The flow runs on the data-path threads (`setgate_shards`); this one only waits for it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(job.run()) {
        Ok(moved) => {
            println!("moved {moved} messages from queue \"{}\"", job.queue);
            ExitCode::SUCCESS
        }
        Err((moved, why)) => {
            eprintln!(
                "setgate shovel: stopped after moving {moved} messages from queue \"{}\": {why}",
                job.queue
            );
            ExitCode::FAILURE
        }
    }
}
