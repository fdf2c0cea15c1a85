//! `narunctl deploy`: validate the spec locally, check and hash the binaries, plan the
//! deploy ([`crate::plan`]: a tag's binary is immutable, the spec pins the digests it
//! runs, some online node must run it), upload what is new (a progress bar on a
//! terminal, [`crate::progress`]), write the spec with compare-and-set, and with `--wait`
//! follow the rollout ([`crate::rollout`]). `--dry-run` prints the plan and stops.

use crate::cli::{ConnArgs, DeployArgs};
use crate::plan::{self, LocalBinary, ObjectAction, Plan, SpecSource};
use crate::session::{Session, bounded};
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{kv, object_store};
use narun_spec::AppSpec;
use narun_wire::jetstream::{APP_BINARIES, APP_CONFIGS};
use std::collections::HashMap;

/// What a spec taken from a binary asks for that matters for trust: the app it writes
/// (an existing app of that name is replaced), its user, the secrets it reads and the
/// services it may call.
fn embedded_summary(spec: &AppSpec) -> String {
    let mut out = format!("app {:?}", spec.name);
    if !spec.user.is_empty() {
        out.push_str(&format!(", user {:?}", spec.user));
    }
    let secrets: Vec<&str> = spec
        .env
        .iter()
        .filter(|e| !e.value_from_secret.is_empty())
        .map(|e| e.value_from_secret.as_str())
        .collect();
    if !secrets.is_empty() {
        out.push_str(&format!(", secrets {}", secrets.join(", ")));
    }
    let mut callees: Vec<&str> = spec
        .calls
        .iter()
        .chain(&spec.after)
        .map(String::as_str)
        .collect();
    callees.sort_unstable();
    callees.dedup();
    if !callees.is_empty() {
        out.push_str(&format!(", calls {}", callees.join(", ")));
    }
    out.push_str(" (--name, --dry-run or -f SPEC to check or change it)");
    out
}

/// Run `deploy`.
pub async fn run(conn: &ConnArgs, args: DeployArgs) -> Result<()> {
    // 1. Build and validate the spec before touching the network: `-f SPEC`, else the
    //    spec embedded in the binaries with the flags over it, else the flags.
    let embedded = plan::embedded_spec(&args.binaries)?;
    let (spec, default_node) = plan::build_spec(&SpecSource {
        file: args.file.as_deref(),
        name: args.name.as_deref(),
        tag: args.tag.as_deref(),
        node: &args.node,
        label: &args.label,
        replicas: args.replicas.unwrap_or(1),
        embedded: embedded.as_ref(),
        replicas_given: args.replicas.is_some(),
    })?;
    if let (None, Some(e)) = (&args.file, &embedded) {
        // The binary chose these: say what it asks for before anything is written.
        eprintln!(
            "using the spec embedded in {}: {}",
            e.path.display(),
            embedded_summary(&spec)
        );
    }
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

    // 2. Check and hash every binary before uploading any; with --sign, sign them.
    let binaries = plan::check_binaries(&args.binaries)?;
    let mut signatures: Vec<Option<narun_wire::signing::SignatureMetadata>> =
        vec![None; binaries.len()];
    if let Some(key_file) = &args.sign {
        let signer = load_signer(key_file)?;
        for (b, sig) in binaries.iter().zip(&mut signatures) {
            let claim = narun_wire::signing::BinaryClaim {
                app: &spec.name,
                tag: &spec.tag,
                os: b.platform.os,
                arch: b.platform.arch,
                sha256: b.sha256,
            };
            *sig = Some(
                signer
                    .sign(&claim)
                    .with_context(|| format!("signing {}", b.path.display()))?,
            );
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

    // 3. Read what the deploy replaces (the stored spec and its revision for the
    //    compare-and-set, the heartbeats, the objects of this tag) and check the plan
    //    before any upload. A conflict that happens during the upload is caught by the
    //    CAS write in 5.
    let session = Session::connect(conn, "deploy").await?;
    let mut plan = Plan::gather(&session, spec, default_node, &binaries).await?;
    if !args.allow_offline && !args.dry_run {
        plan.await_selected(&session, session.timeout).await?;
    }
    let key = plan.spec.name.clone();
    let current = plan.current.as_ref().map_or(0, |(rev, _)| *rev);
    let expected = args.expect_revision.unwrap_or(current);
    if !args.force && expected != current {
        bail!(
            "conflict: the stored spec of {key} is at revision {current}, not {expected} \
             (someone else changed it); nothing was uploaded. Check `narunctl apps info {key}` \
             and retry, or use --force to overwrite"
        );
    }
    if args.no_binary && plan.objects.is_empty() {
        bail!(
            "--no-binary: no object {} exists in app-binaries; upload a binary first",
            plan.spec.binary_object_name("linux", "<arch>")
        );
    }
    let refusals = plan.refusals(&binaries, args.force, args.allow_offline);
    if args.dry_run && args.json {
        crate::output::print_json(&plan.to_json(&binaries, &refusals))?;
        if !refusals.is_empty() {
            bail!("the deploy would be refused: {}", refusals.join("; "));
        }
        return Ok(());
    }
    if args.dry_run {
        plan.print(&binaries);
        if !refusals.is_empty() {
            bail!("the deploy would be refused: {}", refusals.join("; "));
        }
        println!();
        println!("dry run: nothing was uploaded or written");
        return Ok(());
    }
    if !refusals.is_empty() {
        bail!("{}; nothing was uploaded", refusals.join("; "));
    }
    if let Some(id) = &plan.default_node {
        eprintln!("no --node or --label: deploying to this host's node {id}");
    }

    // 4. Upload what is new or replaced; a binary already stored under this tag is not
    //    sent again (unless it must now carry a signature).
    let spec = &plan.spec;
    let store = if binaries.is_empty() {
        None
    } else {
        Some(session.ensure_object_store(&APP_BINARIES).await?)
    };
    // One line per object, or (--json) one entry of the result.
    let mut results: Vec<serde_json::Value> = Vec::new();
    let mut report = |line: String, object: &str, action: &str, digest: &str| {
        if args.json {
            results.push(serde_json::json!({"object": object, "action": action, "digest": digest}));
        } else {
            println!("{line}");
        }
    };
    for o in &plan.objects {
        let Some(i) = o.local else {
            let digest = o.stored.as_ref().map_or("no digest", |(d, _)| d.as_str());
            report(
                format!("using existing {} ({digest})", o.object),
                &o.object,
                "kept",
                digest,
            );
            continue;
        };
        let b = &binaries[i];
        let signature = &signatures[i];
        let signed_as_stored = match (signature, &o.stored) {
            (None, _) => true,
            (Some(entries), Some((_, meta))) => entries
                .iter()
                .all(|(k, v)| meta.get(*k).map(String::as_str) == Some(v.as_str())),
            (Some(_), None) => false,
        };
        if o.action == ObjectAction::Unchanged && signed_as_stored {
            report(
                format!(
                    "unchanged {} -> {} ({}, already uploaded)",
                    b.path.display(),
                    o.object,
                    b.digest()
                ),
                &o.object,
                "unchanged",
                &b.digest(),
            );
            continue;
        }
        let store = store.as_ref().expect("opened when binaries are given");
        let info = upload(store, spec, b, signature.as_ref(), &o.object, &args).await?;
        report(
            format!(
                "uploaded {} -> {} ({} bytes, {})",
                b.path.display(),
                o.object,
                info.size,
                b.digest()
            ),
            &o.object,
            "uploaded",
            &b.digest(),
        );
    }

    // 5. Write the spec with compare-and-set against the revision read in 3.
    //    With --wait, subscribe to the app's status and logs first: core NATS keeps
    //    no history, and narund reacts to the write within milliseconds.
    //    A job (`runMode = "job"`) has no instances to become ready: nothing to follow.
    let follower = match args.wait {
        Some(_) if spec.is_job() => {
            eprintln!(
                "note: {} is a job: no instance to wait for; its runs: `narunctl runs ls --app {}`",
                spec.name, spec.name
            );
            None
        }
        Some(_) => Some(crate::rollout::Follower::subscribe(&session, &spec.name).await?),
        None => None,
    };
    let value: bytes::Bytes = spec.to_kv_json().into();
    let written = value.clone();
    let unchanged = plan
        .current
        .as_ref()
        .is_some_and(|(rev, v)| *v == value && *rev == expected);
    let revision = if unchanged {
        current
    } else {
        let kv = session.ensure_kv(&APP_CONFIGS).await?;
        write_spec(&session, &kv, &key, value, expected, args.force).await?
    };
    if args.json {
        return crate::output::print_json(&serde_json::json!({
            "app": spec.name,
            "tag": spec.tag,
            "revision": revision,
            "config_hash": spec.config_hash(),
            "spec_unchanged": unchanged,
            "binaries": results,
        }));
    }
    println!(
        "{} {}:{} (app-configs revision {revision}, config hash {})",
        if unchanged {
            "unchanged: already deployed"
        } else {
            "deployed"
        },
        spec.name,
        spec.tag,
        spec.config_hash()
    );
    if let (Some(follower), Some(timeout)) = (follower, args.wait) {
        // What narund hashes is the spec as it parses it back from the KV value.
        let stored = AppSpec::from_kv_bytes(&written)
            .map_err(|e| anyhow!("the spec just written cannot be parsed back: {e}"))?;
        follower.wait("deploy", stored, timeout).await?;
    }
    Ok(())
}

/// Stream one binary into the object store as `object` (with a progress bar on a
/// terminal), then check that the store hashed what was hashed here.
async fn upload(
    store: &object_store::ObjectStore,
    spec: &AppSpec,
    b: &LocalBinary,
    signature: Option<&narun_wire::signing::SignatureMetadata>,
    object: &str,
    args: &DeployArgs,
) -> Result<object_store::ObjectInfo> {
    let (os, arch) = (b.platform.os, b.platform.arch);
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
    if let Some(entries) = signature {
        metadata.extend(entries.iter().map(|(k, v)| (k.to_string(), v.clone())));
    }
    let meta = object_store::ObjectMetadata {
        name: object.to_string(),
        description: Some(format!(
            "Binary for {} ({os}/{arch}) tag {}",
            spec.name, spec.tag
        )),
        metadata,
        ..Default::default()
    };
    let file = tokio::fs::File::open(&b.path)
        .await
        .with_context(|| format!("cannot open {}", b.path.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let what = format!("uploading {} as {object}", b.path.display());
    let info = if crate::progress::wanted() && !args.json {
        let mut reader = crate::progress::Progress::new(file, object.to_string(), size);
        let info = bounded(args.upload_timeout, &what, store.put(meta, &mut reader)).await;
        reader.finish();
        info?
    } else {
        let mut file = file;
        bounded(args.upload_timeout, &what, store.put(meta, &mut file)).await?
    };
    // The store hashed what it received: it must be what was hashed (and signed) here.
    let stored = info.digest.as_deref().unwrap_or_default();
    if plan::digest_bytes(stored) != Some(b.sha256) {
        bail!(
            "{} changed while it was uploaded: the object {object} has digest {stored}, \
             the file had {} when it was checked{}; deploy again (the spec was not written)",
            b.path.display(),
            b.digest(),
            if signature.is_some() {
                " (and signed)"
            } else {
                ""
            }
        );
    }
    Ok(info)
}

/// Write the spec: a plain put with `force`, else compare-and-set against `expected`
/// (0: the key must not exist). Returns the new revision.
async fn write_spec(
    session: &Session,
    kv: &kv::Store,
    key: &str,
    value: bytes::Bytes,
    expected: u64,
    force: bool,
) -> Result<u64> {
    if force {
        return session
            .bounded("writing the spec", kv.put(key, value))
            .await;
    }
    let result = match expected {
        rev if rev > 0 => tokio::time::timeout(session.timeout, kv.update(key, value, rev))
            .await
            .map(|r| {
                r.map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                })
            }),
        _ => tokio::time::timeout(session.timeout, kv.create(key, value))
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
        Ok(Ok(rev)) => Ok(rev),
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
