//! `narunctl keys generate | public`: ed25519 signing keys (nkey seeds) for
//! `deploy --sign` ([`narun_wire::signing`]). No NATS connection.

use crate::cli::KeysCmd;
use anyhow::{Context, Result};
use narun_wire::signing::Signer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Run `keys`.
pub fn run(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Generate { file } => {
            let key = Signer::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing key is never overwritten)",
                        file.display()
                    )
                })?;
            f.write_all(format!("{}\n", key.seed()).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", file.display()))?;
            println!("{}", key.public_key());
            eprintln!(
                "signing key written to {} (keep it secret); list the public key above in \
                 [deploy] trusted_keys of narund.toml and deploy with `narunctl deploy --sign {}`",
                file.display(),
                file.display()
            );
            Ok(())
        }
        KeysCmd::Public { file } => {
            let key = Signer::from_file(&file)?;
            println!("{}", key.public_key());
            Ok(())
        }
    }
}
