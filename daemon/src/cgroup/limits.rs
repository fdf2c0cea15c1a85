//! What the kernel files say and take: the [`Controllers`] usable for limits, the [`Limits`] of
//! an instance and their writes, and the parsers of `memory.events` and `cgroup.events`.

/// The cgroup controllers narund can use for limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `memory.high`, `memory.max`, `memory.events`.
    pub memory: bool,
    /// `cpu.max`, `cpu.weight`.
    pub cpu: bool,
    /// `pids.max`.
    pub pids: bool,
}

impl Controllers {
    /// Parse a space-separated controller list (`cgroup.controllers` / `cgroup.subtree_control`).
    pub fn parse(list: &str) -> Controllers {
        let mut c = Controllers::default();
        for name in list.split_whitespace() {
            match name {
                "memory" => c.memory = true,
                "cpu" => c.cpu = true,
                "pids" => c.pids = true,
                _ => {}
            }
        }
        c
    }
}

/// Resource limits for one instance, in kernel units. `None` = not set (kernel default `max`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// `memory.high` in bytes: above it the kernel throttles and reclaims (soft limit).
    pub memory_high: Option<u64>,
    /// `memory.max` in bytes: hard limit, the OOM killer acts above it.
    pub memory_max: Option<u64>,
    /// `cpu.max` as a number of cores (`0.5` = half a core), written as `"<cores*100000> 100000"`.
    pub cpu_cores: Option<f64>,
    /// `cpu.weight` (1..=10000, default 100).
    pub cpu_weight: Option<u32>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

const MIB: u64 = 1024 * 1024;

impl Limits {
    /// Map the spec fields (Go `memoryMB`, `memoryMaxMB`, `cpuCores`; 0 = unset):
    ///
    /// * `memoryMB` → `memory.high` (Go wrote `memory.low`, a protection, which does not limit anything).
    /// * `memoryMaxMB` → `memory.max`; if it is 0 and `memoryMB` is set, `memory.max` = `memoryMB` (as Go).
    /// * `cpuCores` → `cpu.max`.
    pub fn from_spec(memory_mb: u64, memory_max_mb: u64, cpu_cores: f64) -> Limits {
        let high = (memory_mb > 0).then(|| memory_mb * MIB);
        let max = if memory_max_mb > 0 {
            Some(memory_max_mb * MIB)
        } else {
            high
        };
        Limits {
            memory_high: high,
            memory_max: max,
            cpu_cores: (cpu_cores > 0.0).then_some(cpu_cores),
            cpu_weight: None,
            pids_max: None,
        }
    }

    /// The `(file, controller, value)` writes these limits need.
    pub(super) fn writes(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut w = Vec::new();
        if let Some(v) = self.memory_high {
            w.push(("memory.high", "memory", v.to_string()));
        }
        if let Some(v) = self.memory_max {
            w.push(("memory.max", "memory", v.to_string()));
        }
        if let Some(c) = self.cpu_cores {
            // The kernel rejects quotas below 1 ms.
            let quota = ((c * 100_000.0) as u64).max(1000);
            w.push(("cpu.max", "cpu", format!("{quota} 100000")));
        }
        if let Some(v) = self.cpu_weight {
            w.push(("cpu.weight", "cpu", v.clamp(1, 10_000).to_string()));
        }
        if let Some(v) = self.pids_max {
            w.push(("pids.max", "pids", v.to_string()));
        }
        w
    }
}

/// Counters from `memory.events` (all zero when the memory controller is not enabled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage went below `memory.low` protection under pressure.
    pub low: u64,
    /// Times `memory.high` throttled the group.
    pub high: u64,
    /// Times usage hit `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

impl MemoryEvents {
    /// Parse `memory.events` text (`key value` lines; unknown keys ignored).
    pub fn parse(text: &str) -> MemoryEvents {
        let mut ev = MemoryEvents::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "low" => ev.low = v,
                "high" => ev.high = v,
                "max" => ev.max = v,
                "oom" => ev.oom = v,
                "oom_kill" => ev.oom_kill = v,
                _ => {}
            }
        }
        ev
    }
}

/// Parse `cgroup.events` text: `(populated, frozen)`.
pub fn parse_cgroup_events(text: &str) -> (bool, bool) {
    let mut populated = false;
    let mut frozen = false;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => populated = v.trim() == "1",
            Some(("frozen", v)) => frozen = v.trim() == "1",
            _ => {}
        }
    }
    (populated, frozen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_files() {
        assert_eq!(
            parse_cgroup_events("populated 1\nfrozen 0\n"),
            (true, false)
        );
        assert_eq!(
            parse_cgroup_events("populated 0\nfrozen 1\n"),
            (false, true)
        );
        let ev = MemoryEvents::parse("low 0\nhigh 3\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(
            ev,
            MemoryEvents {
                low: 0,
                high: 3,
                max: 2,
                oom: 1,
                oom_kill: 1
            }
        );
        let c = Controllers::parse("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert!(c.memory && c.cpu && c.pids);
        assert_eq!(Controllers::parse("hugetlb\n"), Controllers::default());
    }

    #[test]
    fn limits() {
        let l = Limits::from_spec(64, 0, 0.5);
        assert_eq!(l.memory_high, Some(64 * MIB));
        assert_eq!(l.memory_max, Some(64 * MIB));
        let w = l.writes();
        assert!(w.contains(&("cpu.max", "cpu", "50000 100000".to_string())));
        let l = Limits::from_spec(64, 128, 0.0);
        assert_eq!(l.memory_max, Some(128 * MIB));
        assert_eq!(l.cpu_cores, None);
        assert_eq!(Limits::from_spec(0, 0, 0.0).writes(), vec![]);
        let tiny = Limits {
            cpu_cores: Some(0.001),
            ..Limits::default()
        };
        assert_eq!(tiny.writes()[0].2, "1000 100000");
    }
}
