//! Who and where this process runs: recorded in snapshots, key files and
//! session beacons. A leaf below `repository`, `keys` and `protocol`.

/// Who and where this process runs, recorded in snapshots and key files.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
}

impl Identity {
    /// The identity of the current process.
    pub fn current() -> Self {
        let uid = nix::unistd::getuid();
        let username = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        Identity {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into()),
            username,
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }
}

/// Who added a key: recorded in the key file, shown by `key list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOwner {
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
}

impl KeyOwner {
    /// This process's host and user.
    pub fn current() -> Self {
        let me = Identity::current();
        KeyOwner {
            hostname: me.hostname,
            username: me.username,
        }
    }
}
