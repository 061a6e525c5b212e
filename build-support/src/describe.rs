//! Commands as shell-like lines, for error messages.

use std::process::Command;

/// `cmd` as a shell-like line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            let value = value.to_string_lossy().replace('\x1f', " ");
            line.push_str(&format!("{}={value:?} ", name.to_string_lossy()));
        }
    }
    line.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!(" (in {})", dir.display()));
    }
    line
}
