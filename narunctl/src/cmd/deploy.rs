//! `narunctl deploy`: validate the spec locally, check and upload the binaries, write the
//! spec with compare-and-set, and with `--wait` follow the rollout ([`crate::rollout`]).

use crate::cli::{ConnArgs, DeployArgs};
use crate::session::{Session, bounded};
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{kv, object_store};
use narun_spec::AppSpec;
use narun_wire::jetstream::{APP_BINARIES, APP_CONFIGS};
use std::collections::HashMap;
use std::path::PathBuf;

struct Binary {
    path: PathBuf,
    platform: narun_wire::elf::Platform,
    /// With `--sign`: the SHA-256 that was signed and the metadata entries of the signature.
    signed: Option<([u8; 32], narun_wire::signing::SignatureMetadata)>,
}

/// Run `deploy`.
pub async fn run(conn: &ConnArgs, args: DeployArgs) -> Result<()> {
    // 1. Build and validate the spec before touching the network.
    let spec = match &args.file {
        Some(path) => AppSpec::from_path(path)?,
        None => {
            let name = args.name.clone().unwrap_or_default();
            let tag = args.tag.clone().unwrap_or_default();
            let mut spec = AppSpec::new(name, tag);
            for n in &args.node {
                spec.nodes
                    .push(narun_spec::NodeSelector::by_name(n.clone(), args.replicas));
            }
            if !args.label.is_empty() {
                spec.nodes.push(narun_spec::NodeSelector::by_labels(
                    args.label.clone(),
                    args.replicas,
                ));
            }
            if spec.nodes.is_empty() {
                spec.nodes
                    .push(narun_spec::NodeSelector::by_name("local", args.replicas));
            }
            spec
        }
    };
    spec.validate()
        .map_err(|e| anyhow!("invalid app spec (nothing was uploaded):\n{e}"))?;
    for w in spec.warnings() {
        eprintln!("warning: {w}");
    }
    if let Err(e) = spec.supported_on_narund() {
        for line in e.to_string().lines() {
            eprintln!("warning: narund will not run this spec: {line}");
        }
    }

    // 2. Check every binary before uploading any.
    let mut binaries: Vec<Binary> = Vec::new();
    for path in &args.binaries {
        let mut header = [0u8; 64];
        let n = read_prefix(path, &mut header)
            .with_context(|| format!("cannot read binary {}", path.display()))?;
        let platform = narun_wire::elf::inspect(&header[..n])
            .and_then(|info| info.platform())
            .map_err(|e| anyhow!("{}: {e} (nothing was uploaded)", path.display()))?;
        if let Some(other) = binaries.iter().find(|b| b.platform == platform) {
            bail!(
                "{} and {} are both {platform}: give one binary per architecture",
                other.path.display(),
                path.display()
            );
        }
        binaries.push(Binary {
            path: path.clone(),
            platform,
            signed: None,
        });
    }
    // With --sign: hash and sign every binary before anything is uploaded.
    if let Some(key_file) = &args.sign {
        let signer = load_signer(key_file)?;
        for b in &mut binaries {
            let sha256 = sha256_of(&b.path)
                .with_context(|| format!("cannot read binary {}", b.path.display()))?;
            let claim = narun_wire::signing::BinaryClaim {
                app: &spec.name,
                tag: &spec.tag,
                os: b.platform.os,
                arch: b.platform.arch,
                sha256,
            };
            let entries = signer
                .sign(&claim)
                .with_context(|| format!("signing {}", b.path.display()))?;
            b.signed = Some((sha256, entries));
        }
        eprintln!("signing with {}", signer.public_key());
    }
    if binaries.is_empty() && !args.no_binary {
        bail!(
            "no binary given: pass one Linux executable per architecture after the flags, \
             or --no-binary to reuse objects already uploaded for {}:{}",
            spec.name,
            spec.tag
        );
    }

    // 3. Read the spec revision we will replace (compare-and-set), then upload.
    //    A conflict seen now fails before any upload; one that happens during
    //    the upload is caught by the CAS write in 4.
    let session = Session::connect(conn, "deploy").await?;
    let kv = session.ensure_kv(&APP_CONFIGS).await?;
    let key = spec.name.clone();
    let current = match session
        .bounded("reading the current spec", kv.entry(&key))
        .await?
    {
        Some(e) if e.operation == kv::Operation::Put => e.revision,
        _ => 0,
    };
    let expected = args.expect_revision.unwrap_or(current);
    if !args.force && expected != current {
        bail!(
            "conflict: the stored spec of {key} is at revision {current}, not {expected} \
             (someone else changed it); nothing was uploaded. Check `narunctl apps info {key}` \
             and retry, or use --force to overwrite"
        );
    }
    let store = session.ensure_object_store(&APP_BINARIES).await?;
    if args.no_binary {
        let mut found = Vec::new();
        for arch in ["amd64", "arm64", "arm", "riscv64", "386"] {
            let object = spec.binary_object_name("linux", arch);
            if let Ok(Ok(info)) = tokio::time::timeout(session.timeout, store.info(&object)).await
                && !info.deleted
            {
                found.push(object);
            }
        }
        if found.is_empty() {
            bail!(
                "--no-binary: no object {} exists in app-binaries; upload a binary first",
                spec.binary_object_name("linux", "<arch>")
            );
        }
        for f in found {
            println!("using existing {f}");
        }
    }
    for b in &binaries {
        let (os, arch) = (b.platform.os, b.platform.arch);
        let object = spec.binary_object_name(os, arch);
        let original = b
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut metadata = HashMap::from([
            ("narun-app-name".to_string(), spec.name.clone()),
            ("narun-goos".to_string(), os.to_string()),
            ("narun-goarch".to_string(), arch.to_string()),
            ("narun-version-tag".to_string(), spec.tag.clone()),
            ("narun-original-file".to_string(), original),
        ]);
        if let Some((_, entries)) = &b.signed {
            metadata.extend(entries.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
        let meta = object_store::ObjectMetadata {
            name: object.clone(),
            description: Some(format!(
                "Binary for {} ({os}/{arch}) tag {}",
                spec.name, spec.tag
            )),
            metadata,
            ..Default::default()
        };
        let mut file = tokio::fs::File::open(&b.path)
            .await
            .with_context(|| format!("cannot open {}", b.path.display()))?;
        let info = bounded(
            args.upload_timeout,
            &format!("uploading {} as {object}", b.path.display()),
            store.put(meta, &mut file),
        )
        .await?;
        if let Some((sha256, _)) = &b.signed {
            // The store hashed what it received: it must be what was signed.
            let signed = narun_wire::signing::hex(sha256);
            let stored = info.digest.as_deref().unwrap_or_default();
            if !digest_is(stored, sha256) {
                bail!(
                    "{} changed while it was uploaded: the object {object} has digest {stored}, \
                     the signed SHA-256 is {signed}; nodes with trusted keys will refuse it, \
                     deploy again (the spec was not written)",
                    b.path.display()
                );
            }
        }
        println!(
            "uploaded {} -> {object} ({} bytes, {})",
            b.path.display(),
            info.size,
            info.digest.as_deref().unwrap_or("no digest")
        );
    }

    // 4. Write the spec with compare-and-set against the revision read in 3.
    //    With --wait, subscribe to the app's status and logs first: core NATS keeps
    //    no history, and narund reacts to the write within milliseconds.
    let follower = match args.wait {
        Some(_) => Some(crate::rollout::Follower::subscribe(&session, &spec.name).await?),
        None => None,
    };
    let value: bytes::Bytes = spec.to_kv_json().into();
    let written = value.clone();
    let revision = if args.force {
        session
            .bounded("writing the spec", kv.put(&key, value))
            .await?
    } else {
        let result = match expected {
            rev if rev > 0 => tokio::time::timeout(session.timeout, kv.update(&key, value, rev))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
                }),
            _ => tokio::time::timeout(session.timeout, kv.create(&key, value))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    })
                }),
        };
        match result {
            Ok(Ok(rev)) => rev,
            Ok(Err((true, _))) => bail!(
                "conflict: the stored spec of {key} is no longer at revision {expected} \
                 (someone else changed it); check `narunctl apps info {key}` and retry, \
                 or use --force to overwrite"
            ),
            Ok(Err((false, e))) => bail!("writing the spec of {key}: {e}"),
            Err(_) => bail!(
                "writing the spec of {key}: no answer within {:?}",
                session.timeout
            ),
        }
    };
    println!(
        "deployed {}:{} (app-configs revision {revision}, config hash {})",
        spec.name,
        spec.tag,
        spec.config_hash()
    );
    if let (Some(follower), Some(timeout)) = (follower, args.wait) {
        // What narund hashes is the spec as it parses it back from the KV value.
        let stored = AppSpec::from_kv_bytes(&written)
            .map_err(|e| anyhow!("the spec just written cannot be parsed back: {e}"))?;
        follower.wait(stored, timeout).await?;
    }
    Ok(())
}

/// The signing key in `path` (`--sign`), with a warning when others may read it.
fn load_signer(path: &std::path::Path) -> Result<narun_wire::signing::Signer> {
    use std::os::unix::fs::PermissionsExt;
    let signer = narun_wire::signing::Signer::from_file(path)?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: the signing key {} is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
    Ok(signer)
}

/// SHA-256 of the file at `path`.
fn sha256_of(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// Whether the object store digest `SHA-256=<base64url>` (padding optional) is `sha256`.
fn digest_is(stored: &str, sha256: &[u8; 32]) -> bool {
    use base64::Engine as _;
    let ours = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256);
    stored.strip_prefix("SHA-256=").map(|b64| {
        b64.trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }) == Some(ours)
}

fn read_prefix(path: &PathBuf, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}
