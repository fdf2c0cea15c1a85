//! Per-app NATS identity against a real nats-server: apps never get narund's credentials.
//!
//! The server runs in operator (JWT) mode with a memory resolver preloaded with account
//! JWTs the test mints with nkeys. narund connects as an unrestricted user of the account
//! and mints a user per app instance with the account's signing key. The test then
//! connects with exactly the credentials narund handed to an app (read from the app's
//! `/proc/<pid>/environ` and the creds file it names) and shows what that user can and
//! cannot do.

use async_nats::jetstream;
use futures_util::StreamExt;
use narun_test_support::apps::SLEEPER;
use narun_test_support::environ;
use narun_test_support::{NatsServer, T, kill_and_remove_cgroups, upload_app, wait_for};
use narun_wire::connect::NatsSettings;
use narun_wire::micro::{EndpointConfig, Service, ServiceConfig};
use narun_wire::status::InstanceStatus;
use narund::config::{Config, Settings};
use narund::daemon::Daemon;
use narund::instance::nats_identity::{self, encode_jwt};
use narund::node::Node;
use nkeys::KeyPair;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An operator, a system account and the apps' account with a signing key, as JWTs.
struct Operator {
    account: KeyPair,
    signing: KeyPair,
    /// nats-server configuration (operator mode, memory resolver).
    server_config: String,
}

impl Operator {
    fn new() -> Operator {
        let (op, sys, account, signing) = (
            KeyPair::new_operator(),
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let limits = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
            "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        let mut js_limits = limits.clone();
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            js_limits[k] = json!(-1);
        }
        let op_jwt = encode_jwt(
            json!({"iat": now(), "iss": op.public_key(), "sub": op.public_key(), "name": "test",
                "nats": {"type": "operator", "version": 2, "system_account": sys.public_key()}}),
            &op,
        )
        .unwrap();
        let sys_jwt = encode_jwt(
            json!({"iat": now(), "iss": op.public_key(), "sub": sys.public_key(), "name": "SYS",
                "nats": {"limits": limits, "type": "account", "version": 2}}),
            &op,
        )
        .unwrap();
        let acc_jwt = encode_jwt(
            json!({"iat": now(), "iss": op.public_key(), "sub": account.public_key(), "name": "APPS",
                "nats": {"limits": js_limits, "signing_keys": [signing.public_key()],
                    "type": "account", "version": 2}}),
            &op,
        )
        .unwrap();
        let server_config = format!(
            "operator: \"{op_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {acc}: \"{acc_jwt}\"\n}}\n",
            sys = sys.public_key(),
            acc = account.public_key(),
        );
        Operator {
            account,
            signing,
            server_config,
        }
    }

    /// A `.creds` file of a user of the apps' account, signed with the account's own key,
    /// with `permissions` (`{}`: unrestricted).
    fn creds(&self, name: &str, permissions: serde_json::Value) -> String {
        let user = KeyPair::new_user();
        let mut nats = json!({"subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
        for (k, v) in permissions.as_object().unwrap() {
            nats[k] = v.clone();
        }
        let jwt = encode_jwt(
            json!({"iat": now(), "iss": self.account.public_key(), "sub": user.public_key(),
                "name": name, "nats": nats}),
            &self.account,
        )
        .unwrap();
        nats_identity::creds_text(&jwt, &user.seed().unwrap())
    }
}

/// narund (in this process) on `server`, with NATS settings `nats` and the `[apps]`
/// changes of `apps`; returns its node, its shutdown and its config.
struct Narund {
    node: Node,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _reloads: tokio::sync::mpsc::Sender<Result<Config, String>>,
    config: Config,
    cgroup_root: PathBuf,
    _data: tempfile::TempDir,
}

impl Narund {
    async fn start(
        name: &str,
        nats: NatsSettings,
        tweak: impl FnOnce(&mut Config, &Path),
    ) -> Narund {
        let data = tempfile::tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = Config {
            node_id: name.into(),
            data_dir: data.path().to_path_buf(),
            runtime_dir: data.path().join("run"),
            nats,
            ..Default::default()
        };
        config.apps.default_user = "nobody".into();
        // The test apps are `#!` scripts.
        config.apps.allow_scripts = true;
        config.cgroup.root =
            Some(format!("narun-test-natsid-{}-{name}", std::process::id()).into());
        config.memory.exec_readaround = true;
        tweak(&mut config, data.path());
        config.validate().unwrap();
        let daemon = Daemon::new(config.clone()).await.expect("narund builds");
        let node = daemon.node().clone();
        let cgroup_root = daemon
            .cgroup_root()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut ready = daemon.ready();
        let shutdown = CancellationToken::new();
        let (reloads_tx, reloads) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(daemon.run(shutdown.clone(), reloads));
        tokio::time::timeout(T, ready.wait_for(|r| *r))
            .await
            .expect("first reconcile")
            .unwrap();
        Narund {
            node,
            shutdown,
            task,
            _reloads: reloads_tx,
            config,
            cgroup_root,
            _data: data,
        }
    }

    /// The pid of `app`-0 once it runs.
    async fn running_pid(&self, app: &str) -> i32 {
        let node = &self.node;
        wait_for(&format!("{app}-0 running"), T, || {
            let pid = node
                .snapshot(app, 0)
                .filter(|s| s.status == InstanceStatus::Running)
                .and_then(|s| s.pid);
            async move { pid }
        })
        .await
    }

    async fn finish(mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
        self.node.shutdown().await;
    }
}

impl Drop for Narund {
    fn drop(&mut self) {
        kill_and_remove_cgroups(&self.cgroup_root);
    }
}

/// Upload SLEEPER as `app` and put its spec for `node` into `app-configs`.
async fn deploy(js: &jetstream::Context, node: &str, app: &str) {
    let binaries = narun_wire::jetstream::APP_BINARIES
        .ensure(js)
        .await
        .unwrap();
    let configs = narun_wire::jetstream::APP_CONFIGS.ensure(js).await.unwrap();
    upload_app(&binaries, app, "v1", SLEEPER).await;
    let spec = json!({"name": app, "tag": "v1", "nodes": [{"name": node, "replicas": 1}],
        "stopTimeoutSec": 2});
    configs
        .put(app, serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap();
}

/// A client with exactly the NATS settings in `env` (an app's environment), and the
/// server errors it receives.
async fn connect_as(
    env: &BTreeMap<String, String>,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let settings = NatsSettings::from_lookup(|k| env.get(k).cloned());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = settings
        .options("as-app")
        .await
        .unwrap()
        .event_callback(move |ev| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(ev.to_string());
            }
        })
        .connect(settings.url.as_str())
        .await
        .unwrap();
    narun_test_support::wait_connected(&client).await;
    (client, errors)
}

/// Wait for a permissions violation naming `what` (e.g. `Subscription to "beta"`).
async fn violation(errors: &Arc<Mutex<Vec<String>>>, what: &str) {
    wait_for(&format!("a permissions violation for {what}"), T, || {
        let hit = errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains(what));
        async move { hit.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_gets_its_own_nats_user_and_nothing_more() {
    let op = Operator::new();
    let server = NatsServer::start_with_config(&op.server_config);
    let keys = tempfile::tempdir().unwrap();
    // narund's own user: unrestricted in the account.
    let narund_creds = keys.path().join("narund.creds");
    std::fs::write(&narund_creds, op.creds("narund", json!({}))).unwrap();
    let seed_file = keys.path().join("account-signing.nk");
    std::fs::write(&seed_file, op.signing.seed().unwrap()).unwrap();
    // An operator-provisioned user for app `beta` (wins over minting).
    let creds_dir = keys.path().join("apps");
    std::fs::create_dir(&creds_dir).unwrap();
    let beta_creds = op.creds(
        "beta",
        json!({"sub": {"allow": ["beta"]}, "pub": {"allow": []}}),
    );
    std::fs::write(creds_dir.join("beta.creds"), &beta_creds).unwrap();

    let narund_nats = NatsSettings {
        url: server.url(),
        creds: Some(narund_creds.clone()),
        ..Default::default()
    };
    let admin = narund_nats.connect("test-admin").await.unwrap();
    narun_test_support::wait_connected(&admin).await;
    let js = jetstream::new(admin.clone());
    narun_wire::jetstream::APP_CONFIGS
        .ensure(&js)
        .await
        .unwrap();
    let account = op.account.public_key();
    let (seed, dir) = (seed_file.clone(), creds_dir.clone());
    let narund = Narund::start("natsid", narund_nats, move |c, _| {
        c.apps.nats_account_signing_key = Some(seed);
        c.apps.nats_account = Some(account);
        c.apps.nats_creds_dir = Some(dir);
    })
    .await;
    deploy(&js, "natsid", "alpha").await;
    deploy(&js, "natsid", "beta").await;
    let alpha_pid = narund.running_pid("alpha").await;
    let beta_pid = narund.running_pid("beta").await;

    // alpha: a minted user; never narund's credentials.
    let env = environ(alpha_pid);
    let creds = PathBuf::from(&env["NATS_CREDS"]);
    assert_ne!(creds, narund_creds);
    assert_eq!(env["NATS_URL"], server.url());
    assert_eq!(env["NARUN_INBOX_PREFIX"], "_INBOX_alpha");
    for k in [
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_NKEY_SEED_FILE",
        "NATS_TLS_KEY",
    ] {
        assert!(!env.contains_key(k), "{k} in the app's environment");
    }
    let meta = std::fs::metadata(&creds).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o440, "{}", creds.display());
    assert_eq!((meta.uid(), meta.gid()), (0, app_gid(alpha_pid)));
    let parse = |p: &Path| {
        let (jwt, key) =
            narun_wire::connect::parse_creds(&std::fs::read_to_string(p).unwrap()).unwrap();
        (jwt, key.public_key())
    };
    let (app_jwt, app_user) = parse(&creds);
    let (narund_jwt, narund_user) = parse(&narund_creds);
    assert_ne!(app_jwt, narund_jwt);
    assert_ne!(app_user, narund_user);

    let (app, errors) = connect_as(&env).await;
    // Its own service works: endpoint and discovery, answered through allow_responses.
    let service = Service::start(&app, ServiceConfig::new("alpha", "1.0.0"))
        .await
        .unwrap();
    let mut endpoint = service
        .add_endpoint(EndpointConfig::new("handler", "alpha"))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(req) = endpoint.next().await {
            let _ = req.respond("pong".into(), None).await;
        }
    });
    assert!(
        narun_wire::connect::sync_with_server(&app, T).await,
        "synced"
    );
    let reply = tokio::time::timeout(T, admin.request("alpha", "ping".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply.payload[..], b"pong");
    let ping = tokio::time::timeout(T, admin.request("$SRV.PING.alpha", "".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&ping.payload).contains("\"name\":\"alpha\""));
    // A streamed reply (several messages to one reply subject, as gRPC streams do), on a
    // subject of the app's that the service does not answer itself.
    let mut raw = app.subscribe("$SRV.STREAM.alpha.test").await.unwrap();
    assert!(
        narun_wire::connect::sync_with_server(&app, T).await,
        "synced"
    );
    let inbox = admin.new_inbox();
    let mut replies = admin.subscribe(inbox.clone()).await.unwrap();
    admin
        .publish_with_reply("$SRV.STREAM.alpha.test", inbox, "stream".into())
        .await
        .unwrap();
    let req = tokio::time::timeout(T, raw.next()).await.unwrap().unwrap();
    let reply_to = req.reply.unwrap();
    for i in 0..3u8 {
        app.publish(reply_to.clone(), vec![i].into()).await.unwrap();
    }
    for i in 0..3u8 {
        let m = tokio::time::timeout(T, replies.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], [i]);
    }
    drop(raw);
    assert!(
        !errors.lock().unwrap().iter().any(|e| e.contains("error")),
        "{:?}",
        errors.lock().unwrap()
    );

    // It cannot listen to another app, nor read app-configs, nor call JetStream.
    let _spy = app.subscribe("beta").await.unwrap();
    violation(&errors, "Subscription to \"beta\"").await;
    let _kv = app.subscribe("$KV.app-configs.>").await.unwrap();
    violation(&errors, "Subscription to \"$KV.app-configs.>\"").await;
    app.publish("$JS.API.STREAM.INFO.KV_app-configs", "".into())
        .await
        .unwrap();
    violation(&errors, "Publish to \"$JS.API.STREAM.INFO.KV_app-configs\"").await;
    app.publish("beta", "".into()).await.unwrap();
    violation(&errors, "Publish to \"beta\"").await;
    let kv = tokio::time::timeout(
        Duration::from_secs(3),
        jetstream::new(app.clone()).get_key_value("app-configs"),
    )
    .await;
    assert!(!matches!(kv, Ok(Ok(_))), "the app opened app-configs");

    // Renewal: the file is replaced by a fresh user, and a reconnect reads the new file.
    let before = std::fs::read_to_string(&creds).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&creds)
        .unwrap()
        .set_modified(SystemTime::now() - nats_identity::RENEW_AFTER - Duration::from_secs(5))
        .unwrap();
    let settings = Settings::from_config(&narund.config);
    let signer = nats_identity::load_signing_key(&seed_file).unwrap();
    assert!(nats_identity::renew_due(&settings, Some(&signer), SystemTime::now()) >= 1);
    let after = std::fs::read_to_string(&creds).unwrap();
    assert_ne!(before, after, "renewed");
    let meta = std::fs::metadata(&creds).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o440, app_gid(alpha_pid))
    );
    let seen = errors.lock().unwrap().len();
    app.force_reconnect().await.unwrap();
    wait_for("the app's client to reconnect", T, || {
        let back = errors.lock().unwrap()[seen..]
            .iter()
            .any(|e| e == "connected");
        async move { back.then_some(()) }
    })
    .await;
    assert!(
        narun_wire::connect::sync_with_server(&app, T).await,
        "synced"
    );
    // The server now knows the app as the renewed user, no longer as the first one.
    let (_, renewed_user) = parse(&creds);
    assert_ne!(renewed_user, app_user);
    let connz = connz(&server);
    assert!(connz.contains(&renewed_user), "{connz}");
    assert!(!connz.contains(&app_user), "{connz}");
    let reply = tokio::time::timeout(T, admin.request("alpha", "again".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply.payload[..], b"pong");

    // beta: a copy of the operator's file (not minted, no inbox prefix).
    let env = environ(beta_pid);
    let creds = PathBuf::from(&env["NATS_CREDS"]);
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), beta_creds);
    assert!(!env.contains_key("NARUN_INBOX_PREFIX"));
    let (beta, errors) = connect_as(&env).await;
    let _spy = beta.subscribe("alpha").await.unwrap();
    violation(&errors, "Subscription to \"alpha\"").await;

    narund.finish().await;
    assert!(
        !creds.exists(),
        "the creds file is removed when the run ends"
    );
}

/// The server's `/connz?auth=true` (which user each connection authenticated as).
fn connz(server: &NatsServer) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.monitor_port())).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /connz?auth=true HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The app's gid from `/proc/<pid>/status`.
fn app_gid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narunds_password_never_reaches_an_app() {
    let password = "narund-pass-7f3a9c";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{\n  users: [\n    {{ user: narund, password: \"{password}\" }}\n    {{ user: app, password: \"app-pass\" }}\n  ]\n}}\n"
    ));
    let nats = NatsSettings {
        url: server.url(),
        user: Some("narund".into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let admin = nats.connect("test-admin").await.unwrap();
    narun_test_support::wait_connected(&admin).await;
    let js = jetstream::new(admin.clone());
    narun_wire::jetstream::APP_CONFIGS
        .ensure(&js)
        .await
        .unwrap();
    let narund = Narund::start("nopass", nats, |_, _| {}).await;
    deploy(&js, "nopass", "gamma").await;
    let pid = narund.running_pid("gamma").await;
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains(password),
        "narund's password in the app's environ: {text}"
    );
    let env = environ(pid);
    assert_eq!(env["NATS_URL"], server.url());
    for k in [
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_CREDS",
        "NARUN_INBOX_PREFIX",
    ] {
        assert!(!env.contains_key(k), "{k} in the app's environment");
    }
    narund.finish().await;
}

/// `narun::config` works with the user narund mints for app `web`, and that user can read
/// `web`'s configuration only: not another app's (through narun::config, its change
/// subject, a direct get, a message get), it cannot create any consumer of the bucket (not
/// even of its own key: a push consumer delivers to any subject, nats-server issue #8274),
/// and it cannot write its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reads_its_own_configuration_and_no_other() {
    use narun_wire::app_config;
    let op = Operator::new();
    let server = NatsServer::start_with_config(&op.server_config);
    let keys = tempfile::tempdir().unwrap();
    let admin_creds = keys.path().join("admin.creds");
    std::fs::write(&admin_creds, op.creds("admin", json!({}))).unwrap();
    let admin = NatsSettings {
        url: server.url(),
        creds: Some(admin_creds),
        ..Default::default()
    }
    .connect("test-admin")
    .await
    .unwrap();
    narun_test_support::wait_connected(&admin).await;
    let (kv, _) = app_config::ensure(&jetstream::new(admin.clone()), None)
        .await
        .unwrap();
    kv.put("web", r#"{"v": 1}"#.into()).await.unwrap();
    kv.put("other", r#"{"secret": "s3"}"#.into()).await.unwrap();

    // Exactly what narund hands app `web`: a minted user and its inbox prefix.
    let text = nats_identity::mint(
        "web",
        &[],
        "web-0",
        &op.signing,
        Some(&op.account.public_key()),
        now(),
    )
    .unwrap();
    let app_creds = keys.path().join("web.creds");
    std::fs::write(&app_creds, text).unwrap();
    let env = BTreeMap::from([
        ("NATS_URL".to_string(), server.url()),
        ("NATS_CREDS".to_string(), app_creds.display().to_string()),
        (
            "NARUN_INBOX_PREFIX".to_string(),
            nats_identity::inbox_prefix("web"),
        ),
    ]);
    let (app, errors) = connect_as(&env).await;

    let mut cfg = narun::ConfigOptions::<serde_json::Value>::new()
        .app("web")
        .watch(&app)
        .await
        .expect("an app reads its own configuration");
    assert_eq!(cfg.get()["v"], 1);
    kv.put("web", r#"{"v": 2}"#.into()).await.unwrap();
    tokio::time::timeout(T, cfg.changed())
        .await
        .expect("the change arrives")
        .unwrap();
    assert_eq!(cfg.get()["v"], 2);

    // Another app's key through the library: refused (its direct get is dropped by the
    // server, its change subject may not be subscribed to).
    let e = narun::ConfigOptions::<serde_json::Value>::new()
        .app("other")
        .watch(&app)
        .await
        .err()
        .expect("another app's configuration is not readable");
    assert!(e.to_string().contains("other"), "{e}");
    violation(
        &errors,
        &format!(
            "Subscription to \"{}\"",
            app_config::change_subject("other")
        ),
    )
    .await;
    violation(
        &errors,
        &format!("Publish to \"{}\"", app_config::direct_get_subject("other")),
    )
    .await;
    // Its change subject directly: a violation, and nothing arrives.
    let mut sneaky = app
        .subscribe(app_config::change_subject("other"))
        .await
        .unwrap();
    kv.put("other", r#"{"secret": "s4"}"#.into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sneaky.next()).await;
    assert!(
        !matches!(got, Ok(Some(_))),
        "another app's change arrived: {got:?}"
    );

    // No consumer of the bucket at all: not of its own key with a name in the subject (its
    // deliver subject could be any subject), not unnamed; no direct get of other keys, no
    // message get.
    let delivered_to = "narun.control.node-1.restart";
    let body = json!({"stream_name": app_config::stream(), "config": {
        "name": "x", "deliver_subject": delivered_to, "ack_policy": "none",
        "deliver_policy": "last_per_subject", "filter_subject": app_config::subject("web")}});
    let mut control = admin.subscribe(delivered_to).await.unwrap();
    admin.flush().await.unwrap();
    let own_consumer = format!(
        "$JS.API.CONSUMER.CREATE.{}.x.{}",
        app_config::stream(),
        app_config::subject("web")
    );
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        app.request(
            own_consumer.clone(),
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "{own_consumer} answered: {:?}",
        r.map(|r| r.map(|m| m.payload))
    );
    violation(&errors, &format!("Publish to \"{own_consumer}\"")).await;
    let got = tokio::time::timeout(Duration::from_secs(2), control.next()).await;
    assert!(
        !matches!(got, Ok(Some(_))),
        "a consumer delivered to {delivered_to}: {got:?}"
    );
    for subject in [
        format!("$JS.API.CONSUMER.CREATE.{}", app_config::stream()),
        app_config::direct_get_subject("other"),
        format!("$JS.API.STREAM.MSG.GET.{}", app_config::stream()),
    ] {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            app.request(subject.clone(), "{}".into()),
        )
        .await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "{subject} answered: {:?}",
            r.map(|r| r.map(|m| m.payload))
        );
        violation(&errors, &subject).await;
    }
    // Writing its own configuration: not permitted either.
    app.publish(app_config::subject("web"), r#"{"v": 9}"#.into())
        .await
        .unwrap();
    violation(
        &errors,
        &format!("Publish to \"{}\"", app_config::subject("web")),
    )
    .await;
    assert_eq!(
        kv.entry("web").await.unwrap().unwrap().value,
        r#"{"v": 2}"#.as_bytes()
    );
}

/// Put a spec of SLEEPER as `app` for `node` with `extra` fields.
async fn deploy_with(js: &jetstream::Context, node: &str, app: &str, extra: serde_json::Value) {
    let binaries = narun_wire::jetstream::APP_BINARIES
        .ensure(js)
        .await
        .unwrap();
    let configs = narun_wire::jetstream::APP_CONFIGS.ensure(js).await.unwrap();
    upload_app(&binaries, app, "v1", SLEEPER).await;
    let mut spec = json!({"name": app, "tag": "v1", "nodes": [{"name": node, "replicas": 1}],
        "stopTimeoutSec": 2});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    configs
        .put(app, serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_app_calls_the_services_it_names_and_takes_its_own_locks() {
    use axum::{Json, Router, routing::post};
    let op = Operator::new();
    let server = NatsServer::start_with_config(&op.server_config);
    let keys = tempfile::tempdir().unwrap();
    let narund_creds = keys.path().join("narund.creds");
    std::fs::write(&narund_creds, op.creds("narund", json!({}))).unwrap();
    let seed_file = keys.path().join("account-signing.nk");
    std::fs::write(&seed_file, op.signing.seed().unwrap()).unwrap();
    let narund_nats = NatsSettings {
        url: server.url(),
        creds: Some(narund_creds.clone()),
        ..Default::default()
    };
    let admin = narund_nats.connect("test-admin").await.unwrap();
    narun_test_support::wait_connected(&admin).await;
    let js = jetstream::new(admin.clone());
    narun_wire::jetstream::APP_CONFIGS
        .ensure(&js)
        .await
        .unwrap();
    // Another app's secret and a lock of another app, which front must not reach.
    let secrets = narun_wire::jetstream::SECRETS.ensure(&js).await.unwrap();
    secrets.put("db-password", "sealed".into()).await.unwrap();
    let account = op.account.public_key();
    let seed = seed_file.clone();
    let narund = Narund::start("calls", narund_nats, move |c, _| {
        c.apps.nats_account_signing_key = Some(seed);
        c.apps.nats_account = Some(account);
    })
    .await;
    deploy_with(&js, "calls", "back", json!({})).await;
    deploy_with(&js, "calls", "other", json!({})).await;
    deploy_with(&js, "calls", "front", json!({"calls": ["back"]})).await;
    let back_env = environ(narund.running_pid("back").await);
    let front_env = environ(narund.running_pid("front").await);

    // back serves with the app library, as its minted user.
    let back_settings = NatsSettings::from_lookup(|k| back_env.get(k).cloned());
    let router = Router::new().route(
        "/double",
        post(|Json(n): Json<i64>| async move { Json(n * 2) }),
    );
    let back = narun::Server::start(narun::Options::new("back").nats(back_settings), router)
        .await
        .unwrap();

    // front calls back through narun::Client, as its minted user.
    let (front, errors) = connect_as(&front_env).await;
    let client = narun::Client::new(front.clone())
        .with_timeout(T)
        .wait_for_responder(T);
    let n: i64 = client.call("back", "/double", &21).await.unwrap();
    assert_eq!(n, 42);

    // front takes its own lock; a second front waits for it (a watch) and gets it once
    // the first releases it.
    let ttl = Duration::from_secs(2);
    let held = narun::try_lock_in(&front, "front", "leader", ttl)
        .await
        .unwrap()
        .expect("free");
    let (front2, errors2) = connect_as(&front_env).await;
    let waiter = tokio::spawn(async move { narun::lock_in(&front2, "front", "leader", ttl).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the lock is held");
    held.release().await.unwrap();
    let second = tokio::time::timeout(T, waiter)
        .await
        .expect("the waiter takes it")
        .unwrap()
        .unwrap();
    assert!(second.is_held());
    second.release().await.unwrap();
    for e in [&errors, &errors2] {
        assert!(
            !e.lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Permissions Violation")),
            "{:?}",
            e.lock().unwrap()
        );
    }

    // What front still cannot do: take another app's lock, call a service it did not
    // name, read secrets or another bucket.
    let e = tokio::time::timeout(T, narun::try_lock_in(&front, "other", "leader", ttl))
        .await
        .expect("refused within the bound");
    assert!(e.is_err(), "front took other's lock");
    violation(&errors, "Publish to \"$KV.narun-locks.other.leader\"").await;
    front.publish("other", "".into()).await.unwrap();
    violation(&errors, "Publish to \"other\"").await;
    let e = narun::Client::new(front.clone())
        .with_timeout(Duration::from_secs(2))
        .call::<_, i64>("other", "/x", &1)
        .await;
    assert!(e.is_err(), "front called other");
    front
        .publish(
            "$JS.API.DIRECT.GET.KV_narun-secrets.$KV.narun-secrets.db-password",
            "".into(),
        )
        .await
        .unwrap();
    violation(&errors, "Publish to \"$JS.API.DIRECT.GET.KV_narun-secrets").await;
    front
        .publish("$JS.API.STREAM.INFO.KV_narun-secrets", "".into())
        .await
        .unwrap();
    violation(
        &errors,
        "Publish to \"$JS.API.STREAM.INFO.KV_narun-secrets\"",
    )
    .await;
    let _spy = front.subscribe("$KV.narun-secrets.>").await.unwrap();
    violation(&errors, "Subscription to \"$KV.narun-secrets.>\"").await;
    let kv = tokio::time::timeout(
        Duration::from_secs(3),
        jetstream::new(front.clone()).get_key_value("narun-secrets"),
    )
    .await;
    assert!(!matches!(kv, Ok(Ok(_))), "front opened narun-secrets");
    // Nor can it listen to back's requests.
    let _spy = front.subscribe("back").await.unwrap();
    violation(&errors, "Subscription to \"back\"").await;

    back.shutdown().await;
    narund.finish().await;
}
