//! Issue 18: narund has every file descriptor its hard limit allows, and apps do not inherit
//! that: narund raises its own soft `RLIMIT_NOFILE` to the hard limit at start, every app
//! starts with soft 1024 and the hard limit of its spec (`nofileMax`) or the node
//! (`[apps] nofile_max`), and a spec asking for more than the node grants never runs.
//! The real `narund` binary, a real nats-server, the limits read from `/proc/<pid>/limits`.

use futures_util::StreamExt;
use narun_test_support::apps::SILENT_SLEEPER;
use narun_test_support::{Narund, NatsServer, T, buckets, heartbeat};
use narun_wire::events::StatusEvent;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;

/// `(soft, hard)` of "Max open files" in `/proc/<pid>/limits` (`u64::MAX`: unlimited).
fn nofile_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("Max open files in /proc/<pid>/limits");
    let mut v = line
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
    (v.next().unwrap(), v.next().unwrap())
}

/// Lower this test process's soft `RLIMIT_NOFILE` to 1024 (systemd's default for a
/// service), so the narund it starts inherits that and must raise it itself.
fn lower_own_soft_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max.min(1024);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_start_with_soft_1024_and_their_hard_limit_while_narund_has_its_hard_limit() {
    const NODE: &str = "nofile";
    lower_own_soft_limit();
    let (soft, hard) = nofile_of(std::process::id());
    assert_eq!(soft, hard.min(1024), "the test process's own limit");
    // The node grants 4096 (or narund's hard limit, if lower).
    let node_max = 4096u64.min(hard);

    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut events = client.subscribe(format!("status.*.{NODE}")).await.unwrap();
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let narund = Narund::start(&server, NODE, "nofile_max = 4096\n");

    // (app, its nofileMax, the (soft, hard) it must see)
    let apps: [(&str, Option<u64>, (u64, u64)); 3] = [
        ("plain", None, (1024.min(node_max), node_max)),
        ("asks", Some(2048), (1024, 2048)),
        ("small", Some(512), (512, 512)),
    ];
    let spec = |app: &str, nofile: Option<u64>| {
        let mut s = json!({"name": app, "tag": "v1", "nodes": [{"name": NODE, "replicas": 1}]});
        if let Some(n) = nofile {
            s["nofileMax"] = json!(n);
        }
        s
    };
    for (app, nofile, _) in apps {
        b.upload(app, "v1", SILENT_SLEEPER).await;
        b.put_spec(app, &spec(app, nofile)).await;
    }
    b.upload("greedy", "v1", SILENT_SLEEPER).await;
    b.put_spec("greedy", &spec("greedy", Some(8192))).await;

    // The greedy spec is refused with the reason and the setting named, and never runs.
    let refused = tokio::time::timeout(T, async {
        while let Some(m) = events.next().await {
            let e: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            if e.app_name == "greedy" {
                assert!(e.pid.is_none(), "greedy never runs: {e:?}");
                if e.status == InstanceStatus::Failed {
                    return e;
                }
            }
        }
        panic!("status subscription ended");
    })
    .await
    .expect("greedy refused within T");
    assert_eq!(refused.reason, Some(Reason::Rlimit), "{refused:?}");
    let want = if node_max == 4096 {
        "more than apps.nofile_max = 4096 (narund.toml) allows"
    } else {
        "more than narund's own hard limit"
    };
    assert!(
        refused.error.contains("nofileMax = 8192") && refused.error.contains(want),
        "{}",
        refused.error
    );

    let state = heartbeat(&mut states, "plain, asks and small running", |s| {
        ["plain-0", "asks-0", "small-0"].iter().all(|id| {
            s.instances
                .iter()
                .any(|i| i.instance_id == *id && i.status == InstanceStatus::Running)
        })
    })
    .await;
    for (app, _, want) in apps {
        let id = format!("{app}-0");
        let pid = state
            .instances
            .iter()
            .find(|i| i.instance_id == id)
            .and_then(|i| i.pid)
            .unwrap_or_else(|| panic!("pid of {id}"));
        assert_eq!(
            nofile_of(pid as u32),
            want,
            "{app} (narund's hard limit {hard})"
        );
    }
    assert!(
        !state
            .instances
            .iter()
            .any(|i| i.instance_id == "greedy-0" && i.pid.is_some()),
        "{state:?}"
    );

    // narund itself runs at its hard limit (it started with soft 1024).
    assert_eq!(nofile_of(narund.pid() as u32), (hard, hard));
}
