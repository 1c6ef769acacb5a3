//! The data directory's permissions: as RabbitMQ's (its data directory is
//! 0750 and its systemd unit runs it with umask 027), nothing the broker
//! keeps there (message bodies, password hashes, the topology) is readable
//! by other local users.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The mode of a data directory the broker creates.
const DIR_MODE: u32 = 0o750;

/// What others may never do in the data directory: read, write or enter.
const OTHERS: u32 = 0o007;

/// Makes `dir` ready to hold the store: creates it 0750 when it is missing,
/// takes others' access away from an existing one (with a warning), and
/// sets the process umask to 027 so every file the store creates (sled's,
/// segments, indexes) is at most 0640.
///
/// An existing directory keeps its owner and group bits: a group an operator
/// gave access to (a backup or monitoring group) is a choice, while access for
/// every local user never is one a broker should keep silently.
pub(super) fn prepare(dir: &Path) -> io::Result<()> {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(0o027) };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        // The mode above is filtered by the umask a parent process gave us.
        return std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE));
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & OTHERS != 0 {
        let tightened = mode & !OTHERS;
        match std::fs::set_permissions(dir, Permissions::from_mode(tightened)) {
            Ok(()) => tracing::warn!(
                path = %dir.display(),
                "data directory was open to every local user (mode {mode:o}); now {tightened:o}"
            ),
            // Not ours to change (another owner): the store still works.
            Err(e) => tracing::warn!(
                path = %dir.display(),
                error = %e,
                "data directory is open to every local user (mode {mode:o}) and could not be closed"
            ),
        }
    }
    Ok(())
}
