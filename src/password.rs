//! Where the password comes from: --password-file, --password-command,
//! COFFER_PASSWORD, or a prompt on a terminal. There is no default password.

use std::io::IsTerminal;

use anyhow::{bail, Context};

use crate::cli::Global;

fn first_line(bytes: &[u8]) -> Vec<u8> {
    coffer_engine::keys::password_line(bytes).to_vec()
}

/// The password for an existing repository; `confirm` asks twice at a prompt.
pub fn get(global: &Global, confirm: bool) -> anyhow::Result<Vec<u8>> {
    get_for(global, confirm, "COFFER_PASSWORD", "")
}

/// The password of the source repository of `copy` and `init --from-repo`:
/// `global` holds its --from-password-file and --from-password-command.
pub fn get_source(global: &Global) -> anyhow::Result<Vec<u8>> {
    get_for(global, false, "COFFER_FROM_PASSWORD", "source ")
}

/// The password from `global`'s file or command, the environment variable
/// `env`, or a prompt; `which` ("source " or "") goes into the messages.
fn get_for(global: &Global, confirm: bool, env: &str, which: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &global.password_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the password file {}", path.display()))?;
        return non_empty(
            first_line(&bytes),
            &format!("the password file {}", path.display()),
        );
    }
    if let Some(cmd) = &global.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run the password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("the password command {cmd:?} failed ({})", out.status);
        }
        return non_empty(first_line(&out.stdout), "the password command's output");
    }
    if let Some(pw) = std::env::var_os(env) {
        use std::os::unix::ffi::OsStrExt;
        return non_empty(pw.as_bytes().to_vec(), env);
    }
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password(format!("enter password for {which}repository: "))?;
        if confirm {
            let again = rpassword::prompt_password("enter password again: ")?;
            if again != pw {
                bail!("the passwords do not match");
            }
        }
        return non_empty(pw.into_bytes(), "the password");
    }
    if which.is_empty() {
        bail!(
            "no password given: set COFFER_PASSWORD, or use --password-file or --password-command"
        )
    }
    bail!(
        "no password given for the source repository: set {env}, or use --from-password-file \
         or --from-password-command"
    )
}

/// A new password: from `file`, or asked twice at a prompt.
pub fn new_password(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the new password file {}", path.display()))?;
        return non_empty(
            first_line(&bytes),
            &format!("the new password file {}", path.display()),
        );
    }
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password("enter new password: ")?;
        let again = rpassword::prompt_password("enter new password again: ")?;
        if again != pw {
            bail!("the passwords do not match");
        }
        return non_empty(pw.into_bytes(), "the new password");
    }
    bail!("no new password given: use --new-password-file, or run on a terminal")
}

fn non_empty(pw: Vec<u8>, from: &str) -> anyhow::Result<Vec<u8>> {
    if pw.is_empty() {
        bail!("{from} is empty; an empty password is not allowed");
    }
    Ok(pw)
}
