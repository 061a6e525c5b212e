//! `meshsteer-cni`: the runtime runs it with the CNI_* environment and the config on stdin.
#![deny(unsafe_code)]

use std::io::Write;

fn main() {
    let outcome = meshsteer_cni::plugin::run(
        |name| std::env::var_os(name),
        std::io::stdin().lock(),
        &mut std::io::stderr(),
    );
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush());
    // The runtime reads the result from stdout; without it, success would be a lie.
    let code = if written.is_err() {
        1
    } else {
        outcome.exit_code
    };
    std::process::exit(code);
}
