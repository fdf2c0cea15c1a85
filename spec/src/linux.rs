//! Linux names the spec refers to: capabilities and signals.
//!
//! Both tables are the generic Linux ones used by x86, x86_64, arm, aarch64 and
//! riscv (mips/alpha/sparc number signals differently; narun does not target them).

/// Every Linux capability name, indexed by its number (`CAP_CHOWN` = 0 …
/// `CAP_CHECKPOINT_RESTORE` = 40, `CAP_LAST_CAP` in Linux 5.9+).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Normalise a capability name: trim, upper-case and add the `CAP_` prefix
/// when it is missing (`net_bind_service` → `CAP_NET_BIND_SERVICE`).
///
/// This does not check that the capability exists; see [`capability_number`].
pub fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The number of a capability, accepting any spelling that
/// [`normalize_capability`] accepts. `None` if Linux has no such capability.
///
/// ```
/// assert_eq!(narun_spec::capability_number("net_bind_service"), Some(10));
/// assert_eq!(narun_spec::capability_number("CAP_NOPE"), None);
/// ```
pub fn capability_number(name: &str) -> Option<u32> {
    let normalized = normalize_capability(name);
    CAPABILITIES
        .iter()
        .position(|c| *c == normalized)
        .map(|n| n as u32)
}

/// Signal names and numbers (generic Linux numbering).
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

/// Aliases accepted on input and mapped to the canonical name.
const SIGNAL_ALIASES: &[(&str, &str)] = &[
    ("SIGIOT", "SIGABRT"),
    ("SIGPOLL", "SIGIO"),
    ("SIGCLD", "SIGCHLD"),
];

/// Signals that pause or resume a process instead of ending it: useless as a
/// stop signal.
pub(crate) const NON_TERMINATING_SIGNALS: &[&str] =
    &["SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT"];

/// Canonical `SIGXXX` name of a signal given as `TERM`, `sigterm`, `SIGTERM`
/// or a number (`15`). `None` if the signal is unknown.
///
/// ```
/// assert_eq!(narun_spec::signal_name("term").as_deref(), Some("SIGTERM"));
/// assert_eq!(narun_spec::signal_name("9").as_deref(), Some("SIGKILL"));
/// assert_eq!(narun_spec::signal_name("SIGNOPE"), None);
/// ```
pub fn signal_name(input: &str) -> Option<String> {
    let trimmed = input.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return SIGNALS
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(name, _)| (*name).to_string());
    }
    let upper = trimmed.to_ascii_uppercase();
    let with_prefix = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let canonical = SIGNAL_ALIASES
        .iter()
        .find(|(alias, _)| *alias == with_prefix)
        .map(|(_, target)| (*target).to_string())
        .unwrap_or(with_prefix);
    SIGNALS
        .iter()
        .any(|(name, _)| *name == canonical)
        .then_some(canonical)
}

/// Number of a signal, accepting every spelling [`signal_name`] accepts.
pub fn signal_number(input: &str) -> Option<i32> {
    let name = signal_name(input)?;
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, num)| *num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_table_matches_kernel_numbers() {
        assert_eq!(CAPABILITIES.len(), 41);
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_BPF"), Some(39));
        assert_eq!(capability_number("checkpoint_restore"), Some(40));
    }

    #[test]
    fn capability_spellings() {
        assert_eq!(normalize_capability(" net_raw "), "CAP_NET_RAW");
        assert_eq!(normalize_capability("Cap_Net_Raw"), "CAP_NET_RAW");
        assert_eq!(capability_number("NET_RAW"), Some(13));
        assert_eq!(capability_number("CAP_NET_BIND"), None);
        assert_eq!(capability_number(""), None);
    }

    #[test]
    fn signal_spellings() {
        for s in ["TERM", "term", "SIGTERM", "SigTerm", "15", " 15 "] {
            assert_eq!(signal_name(s).as_deref(), Some("SIGTERM"), "{s}");
            assert_eq!(signal_number(s), Some(15), "{s}");
        }
        assert_eq!(signal_name("IOT").as_deref(), Some("SIGABRT"));
        assert_eq!(signal_name("SIGPOLL").as_deref(), Some("SIGIO"));
        assert_eq!(signal_name("0"), None);
        assert_eq!(signal_name("32"), None);
        assert_eq!(signal_name("-15"), None);
        assert_eq!(signal_name("SIG"), None);
        assert_eq!(signal_name(""), None);
    }
}
