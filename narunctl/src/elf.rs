//! Just enough ELF parsing to tell which platform a binary was built for.
//!
//! The first 20 bytes of an ELF file say everything `narunctl deploy` needs:
//!
//! | offset | field | use |
//! |---|---|---|
//! | 0..4 | magic `\x7fELF` | is it ELF at all |
//! | 4 | `EI_CLASS` (1 = 32-bit, 2 = 64-bit) | sanity check against the machine |
//! | 5 | `EI_DATA` (1 = little, 2 = big endian) | how to read `e_machine` |
//! | 7 | `EI_OSABI` (0 = System V, 3 = Linux, 9 = FreeBSD, …) | GOOS |
//! | 18..20 | `e_machine` (62 = x86_64, 183 = aarch64, 40 = arm, 243 = riscv) | GOARCH |
//!
//! Names are Go's GOOS/GOARCH (`linux`, `amd64`, `arm64`, `arm`, `riscv64`,
//! `386`) because they are part of the object name narund looks for.

use std::fmt;

/// What a binary runs on, in Go's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// Why a file is not a binary narund can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error(
        "not an ELF executable (narund runs Linux ELF binaries only; Mach-O, PE and scripts are refused)"
    )]
    NotElf,
    #[error("ELF header is truncated")]
    Truncated,
    #[error("built for {0}, not Linux: narund runs Linux binaries only")]
    NotLinux(&'static str),
    #[error("unsupported ELF machine {0} (supported: x86_64, aarch64, arm, riscv64, i386)")]
    UnknownMachine(u16),
}

/// Detect the platform from the start of a file (at least 20 bytes).
pub fn detect(header: &[u8]) -> Result<Platform, ElfError> {
    if header.len() < 4 || &header[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if header.len() < 20 {
        return Err(ElfError::Truncated);
    }
    let os = match header[7] {
        // ELFOSABI_NONE (System V) is what almost every Linux toolchain writes.
        0 | 3 => "linux",
        2 => return Err(ElfError::NotLinux("netbsd")),
        6 => return Err(ElfError::NotLinux("solaris")),
        9 => return Err(ElfError::NotLinux("freebsd")),
        12 => return Err(ElfError::NotLinux("openbsd")),
        _ => return Err(ElfError::NotLinux("an unknown OS ABI")),
    };
    let raw = [header[18], header[19]];
    let machine = if header[5] == 2 {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    };
    let arch = match machine {
        62 => "amd64",
        183 => "arm64",
        40 => "arm",
        243 => "riscv64",
        3 => "386",
        m => return Err(ElfError::UnknownMachine(m)),
    };
    Ok(Platform { os, arch })
}

#[cfg(test)]
mod tests {
    use super::*;

    use narun_test_support::apps::elf_header as header;

    #[test]
    fn machines_map_to_go_arch() {
        assert_eq!(detect(&header(0, 62)).unwrap().arch, "amd64");
        assert_eq!(detect(&header(3, 183)).unwrap().arch, "arm64");
        assert_eq!(detect(&header(0, 40)).unwrap().arch, "arm");
        assert_eq!(detect(&header(0, 243)).unwrap().arch, "riscv64");
        assert_eq!(detect(&header(0, 243)).unwrap().os, "linux");
    }

    #[test]
    fn refuses_what_narund_cannot_run() {
        assert_eq!(detect(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(detect(b"\x7fELF"), Err(ElfError::Truncated));
        assert_eq!(detect(&header(9, 62)), Err(ElfError::NotLinux("freebsd")));
        assert_eq!(detect(&header(0, 8)), Err(ElfError::UnknownMachine(8)));
    }

    #[test]
    fn this_test_binary_is_detected() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let p = detect(&exe).unwrap();
        assert_eq!(p.arch, narun_wire::names::go_arch());
    }
}
