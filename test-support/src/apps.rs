//! The sample apps the tests deploy: small scripts uploaded as an app's binary (narund
//! executes whatever the object holds; a `#!` line makes a script executable like any
//! binary). Upload them with [`crate::upload_app`] or [`crate::upload_script`]. And fake
//! ELF binaries for `narunctl deploy`, which looks at the ELF header of what it uploads.

use std::path::{Path, PathBuf};

/// A long-running app: prints a line with its identity, then sleeps (`exec`: the stop
/// signal reaches `sleep` directly, and the environment stays intact for `/proc/<pid>/environ`).
pub const SLEEPER: &str = "#!/bin/sh\necho \"hello from $NARUN_INSTANCE_ID\"\nexec sleep 1000\n";

/// A long-running app that prints nothing.
pub const SILENT_SLEEPER: &str = "#!/bin/sh\nexec sleep 1000\n";

/// Prints a counter every 100 ms (`tick 1`, `tick 2`, …), forever.
pub const TICKER: &str =
    "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done\n";

/// Like [`SLEEPER`], printing `line` first (shell syntax: `$NARUN_INSTANCE_ID` and the
/// like are expanded; `line` must not contain a double quote).
pub fn sleeper_saying(line: &str) -> String {
    format!("#!/bin/sh\necho \"{line}\"\nexec sleep 1000\n")
}

/// The sd_notify client every [`py_notify`] app starts with: `notify(msg)` sends one
/// datagram to `$NOTIFY_SOCKET` (and fails loudly when it cannot).
pub const PY_NOTIFY_PRELUDE: &str = r#"#!/usr/bin/python3
import os, signal, socket, sys, time
def notify(msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), os.environ["NOTIFY_SOCKET"])
    s.close()
"#;

/// A python3 app that speaks sd_notify: [`PY_NOTIFY_PRELUDE`] followed by `body`.
pub fn py_notify(body: &str) -> String {
    format!("{PY_NOTIFY_PRELUDE}{body}")
}

/// The ELF `e_machine` of this machine's architecture (what `narunctl deploy` maps to this
/// machine's GOARCH).
pub fn elf_machine() -> u16 {
    match std::env::consts::ARCH {
        "aarch64" => 183,
        "arm" => 40,
        "riscv64" => 243,
        _ => 62,
    }
}

/// A 64-byte ELF header: little-endian, `ET_EXEC`, with OS ABI `osabi` and machine
/// `machine` (see [`elf_machine`]), 32-bit for the 32-bit machines arm (40) and i386 (3),
/// else 64-bit, and one program header (which is not there: nothing can run it).
pub fn elf_header(osabi: u8, machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[5] = 1;
    h[6] = 1;
    h[7] = osabi;
    h[16] = 2; // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20] = 1; // e_version
    if matches!(machine, 3 | 40) {
        h[4] = 1; // ELFCLASS32
        h[40] = 52; // e_ehsize
        h[42] = 32; // e_phentsize
        h[44] = 1; // e_phnum
    } else {
        h[4] = 2; // ELFCLASS64
        h[52] = 64; // e_ehsize
        h[54] = 56; // e_phentsize
        h[56] = 1; // e_phnum
    }
    h
}

/// The same header as [`elf_header`] in big-endian byte order (machine `machine`).
pub fn elf_header_big_endian(machine: u16) -> Vec<u8> {
    let mut h = elf_header(0, 0);
    h[5] = 2;
    for (at, v) in [(16, 2u16), (18, machine), (52, 64), (54, 56), (56, 1)] {
        h[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    h[20..24].copy_from_slice(&1u32.to_be_bytes());
    h
}

/// The bytes of an attack on the ENOEXEC fallback of `execvp`: the first 20 bytes of an
/// x86_64 ELF executable's header, then `/dev/null` and a line of shell. The kernel
/// refuses it (ENOEXEC); glibc's `execvp` then runs it with `/bin/sh`, which reads the
/// header as a command whose output goes (`>`, e_machine 62) to `/dev/null`, and runs
/// `shell`.
pub fn elf_then_shell(shell: &str) -> Vec<u8> {
    let mut b = elf_header(0, 62)[..20].to_vec();
    b.extend_from_slice(b"/dev/null\n");
    b.extend_from_slice(shell.as_bytes());
    b.extend_from_slice(b"\n");
    b
}

/// Like [`elf_then_shell`], with a complete x86_64 header that passes every header check
/// and a program header the kernel still refuses with ENOEXEC (a `PT_INTERP` of one byte):
/// only an `execve` without a shell fallback keeps `shell` from running.
pub fn elf_enoexec_then_shell(shell: &str) -> Vec<u8> {
    let mut h = elf_header(0, 62);
    h[24..32].copy_from_slice(b"/dev/nul"); // e_entry: the shell's redirection target
    h[32] = 64; // e_phoff
    let mut ph = vec![0u8; 56];
    ph[0] = 3; // PT_INTERP
    ph[4] = 4; // PF_R
    for at in [32, 40, 48] {
        ph[at] = 1; // p_filesz, p_memsz, p_align: an interpreter path of 1 byte
    }
    h.extend_from_slice(&ph);
    h.push(b'\n');
    h.extend_from_slice(shell.as_bytes());
    h.push(b'\n');
    h
}

/// Write `dir/name`: an [`elf_header`] with OS ABI `osabi` and machine `machine`, then
/// `payload` bytes. `narunctl deploy` takes it for a binary of that platform; nothing can
/// run it.
pub fn fake_elf(dir: &Path, name: &str, osabi: u8, machine: u16, payload: usize) -> PathBuf {
    let mut h = elf_header(osabi, machine);
    h.extend(std::iter::repeat_n(0xAB, payload));
    let p = dir.join(name);
    std::fs::write(&p, h).unwrap();
    p
}
