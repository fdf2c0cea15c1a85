//! Which ELF executables narun runs: the header check shared by `narunctl deploy` (which
//! platform a binary is for, before uploading it) and narund (does the cached binary run
//! on this node, before `execve`).
//!
//! [`inspect`] reads only the ELF file header (the first 52 bytes of a 32-bit file, 64
//! of a 64-bit one) and accepts what the kernel's ELF loader would start loading:
//!
//! | offset | field | accepted |
//! |---|---|---|
//! | 0..4 | magic `\x7fELF` | exactly |
//! | 4 | `EI_CLASS` | 1 (32-bit) or 2 (64-bit) |
//! | 5 | `EI_DATA` | 1 (little-endian) or 2 (big-endian); all other fields are read in it |
//! | 7 | `EI_OSABI` | 0 (System V) or 3 (Linux); FreeBSD, NetBSD, … are refused |
//! | 16 | `e_type` | `ET_EXEC` (2) or `ET_DYN` (3, PIE); `ET_REL` objects and `ET_CORE` dumps are refused |
//! | 18 | `e_machine` | reported (62 = x86_64, 183 = aarch64, 40 = arm, 243 = riscv, 3 = i386) |
//! | 42 / 54 | `e_phentsize` | the size of a program header of the class (32 / 56), as the kernel requires |
//! | 44 / 56 | `e_phnum` | 1 ..= 65536 / `e_phentsize`, as the kernel requires |
//!
//! Anything else is an [`ElfError`] naming what was found ("ELF relocatable object
//! (ET_REL), not an executable", "big-endian ELF", …). The function is pure and total:
//! any byte string gives `Ok` or `Err`, never a panic (the fuzz target calls exactly
//! `narun_wire::elf::inspect(data)`).
//!
//! [`ElfInfo::platform`] names the platform in Go's GOOS/GOARCH words (they are part of
//! the object name narund looks for); [`ElfInfo::check_runs_here`] compares machine, class
//! and endianness with the node's own ([`ElfInfo::HOST`]).
//!
//! ```
//! use narun_wire::elf::{inspect, ElfError};
//! let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
//! let info = inspect(&exe).unwrap();
//! info.check_runs_here().unwrap();
//! assert_eq!(info.platform().unwrap().arch, narun_wire::names::go_arch());
//! assert_eq!(inspect(b"#!/bin/sh\n"), Err(ElfError::NotElf));
//! ```

use std::fmt;

/// `EI_CLASS`: the word size of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `ELFCLASS32`.
    Elf32,
    /// `ELFCLASS64`.
    Elf64,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Elf32 => "32-bit",
            Class::Elf64 => "64-bit",
        })
    }
}

/// `EI_DATA`: the byte order of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// `ELFDATA2LSB`.
    Little,
    /// `ELFDATA2MSB`.
    Big,
}

impl fmt::Display for Endian {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endian::Little => "little-endian",
            Endian::Big => "big-endian",
        })
    }
}

/// `e_type` of an executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `ET_EXEC`: a position-dependent executable.
    Exec,
    /// `ET_DYN`: a position-independent executable (or a shared object, which the kernel
    /// loads the same way).
    Dyn,
}

/// `e_machine` values narun knows by name.
pub mod machine {
    /// `EM_386`.
    pub const I386: u16 = 3;
    /// `EM_ARM`.
    pub const ARM: u16 = 40;
    /// `EM_X86_64`.
    pub const X86_64: u16 = 62;
    /// `EM_AARCH64`.
    pub const AARCH64: u16 = 183;
    /// `EM_RISCV`.
    pub const RISCV: u16 = 243;
}

/// The name of an `e_machine` value (`None` for machines narun does not know).
pub fn machine_name(m: u16) -> Option<&'static str> {
    Some(match m {
        machine::I386 => "i386",
        machine::ARM => "arm",
        machine::X86_64 => "x86_64",
        machine::AARCH64 => "aarch64",
        machine::RISCV => "riscv",
        _ => return None,
    })
}

/// What the header of an ELF executable says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElfInfo {
    /// Word size.
    pub class: Class,
    /// Byte order.
    pub endian: Endian,
    /// `ET_EXEC` or `ET_DYN`.
    pub kind: Kind,
    /// `e_machine` (see [`machine`]).
    pub machine: u16,
    /// `EI_OSABI` (0 System V or 3 Linux).
    pub osabi: u8,
}

/// The target a binary was built for, in Go's names (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// GOOS.
    pub os: &'static str,
    /// GOARCH.
    pub arch: &'static str,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// The machine, class and endianness of an executable, for messages:
/// `x86_64 (ELF machine 62), 64-bit little-endian`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// `e_machine`.
    pub machine: u16,
    /// Word size.
    pub class: Class,
    /// Byte order.
    pub endian: Endian,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match machine_name(self.machine) {
            Some(n) => write!(f, "{n} (ELF machine {})", self.machine)?,
            None => write!(f, "ELF machine {}", self.machine)?,
        }
        write!(f, ", {} {}", self.class, self.endian)
    }
}

/// Why a file is not an executable narun runs (here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No ELF magic.
    #[error(
        "not an ELF executable (narun runs Linux ELF executables only; Mach-O, PE and scripts are refused)"
    )]
    NotElf,
    /// Shorter than the ELF header of its class.
    #[error("ELF header is truncated ({found} bytes, a {class} ELF header has {needed})")]
    Truncated {
        /// Bytes given.
        found: usize,
        /// Bytes the header of the class has.
        needed: usize,
        /// The class (`EI_CLASS`), when it could be read.
        class: &'static str,
    },
    /// `EI_CLASS` is neither 1 nor 2.
    #[error("invalid ELF class {0} (EI_CLASS must be 1 for 32-bit or 2 for 64-bit)")]
    BadClass(u8),
    /// `EI_DATA` is neither 1 nor 2.
    #[error("invalid ELF byte order {0} (EI_DATA must be 1 for little- or 2 for big-endian)")]
    BadData(u8),
    /// `EI_OSABI` of another OS.
    #[error("built for {0}, not Linux: narun runs Linux binaries only")]
    NotLinux(&'static str),
    /// `e_type` is not `ET_EXEC`/`ET_DYN`.
    #[error("{0}, not an executable: link it into a program first")]
    NotExecutable(&'static str),
    /// `e_phentsize`/`e_phnum` the kernel refuses.
    #[error(
        "ELF program headers are invalid ({what}): not a loadable executable (corrupt, or not what the header claims)"
    )]
    BadProgramHeaders {
        /// What is wrong.
        what: String,
    },
    /// Big-endian: no platform narun supports is big-endian.
    #[error(
        "big-endian ELF ({0}): narun runs little-endian Linux executables (amd64, arm64, arm, riscv64, 386)"
    )]
    BigEndian(Target),
    /// A machine (or machine/class pair) without a Go name.
    #[error(
        "unsupported ELF machine: {0} (supported: x86_64 and aarch64 64-bit, arm and i386 32-bit, riscv 64-bit)"
    )]
    UnknownMachine(Target),
    /// Another node's executable.
    #[error("built for {found}, but this node is {expected}")]
    WrongTarget {
        /// This node.
        expected: Target,
        /// The file.
        found: Target,
    },
}

fn u16_at(b: &[u8], at: usize, e: Endian) -> u16 {
    let raw = [b[at], b[at + 1]];
    match e {
        Endian::Little => u16::from_le_bytes(raw),
        Endian::Big => u16::from_be_bytes(raw),
    }
}

/// Inspect the start of a file (at least its ELF header: 52 bytes for 32-bit, 64 for
/// 64-bit; more is ignored). `Ok` only for a Linux/System V ELF executable (`ET_EXEC` or
/// `ET_DYN`) whose program header table the kernel would read; see the module docs.
pub fn inspect(header: &[u8]) -> Result<ElfInfo, ElfError> {
    if header.len() < 4 || &header[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if header.len() < 6 {
        return Err(ElfError::Truncated {
            found: header.len(),
            needed: 52,
            class: "32- or 64-bit",
        });
    }
    let (class, needed, phentsize_at, phentsize) = match header[4] {
        1 => (Class::Elf32, 52, 42, 32u16),
        2 => (Class::Elf64, 64, 54, 56u16),
        c => return Err(ElfError::BadClass(c)),
    };
    let endian = match header[5] {
        1 => Endian::Little,
        2 => Endian::Big,
        d => return Err(ElfError::BadData(d)),
    };
    if header.len() < needed {
        return Err(ElfError::Truncated {
            found: header.len(),
            needed,
            class: if class == Class::Elf32 {
                "32-bit"
            } else {
                "64-bit"
            },
        });
    }
    let osabi = header[7];
    match osabi {
        // ELFOSABI_NONE (System V) is what almost every Linux toolchain writes.
        0 | 3 => {}
        2 => return Err(ElfError::NotLinux("netbsd")),
        6 => return Err(ElfError::NotLinux("solaris")),
        9 => return Err(ElfError::NotLinux("freebsd")),
        12 => return Err(ElfError::NotLinux("openbsd")),
        _ => return Err(ElfError::NotLinux("an unknown OS ABI")),
    }
    let kind = match u16_at(header, 16, endian) {
        2 => Kind::Exec,
        3 => Kind::Dyn,
        0 => return Err(ElfError::NotExecutable("ELF file of no type (ET_NONE)")),
        1 => {
            return Err(ElfError::NotExecutable(
                "ELF relocatable object (ET_REL, a .o file)",
            ));
        }
        4 => return Err(ElfError::NotExecutable("ELF core dump (ET_CORE)")),
        _ => {
            return Err(ElfError::NotExecutable(
                "ELF file of an OS- or processor-specific type",
            ));
        }
    };
    let machine = u16_at(header, 18, endian);
    let entsize = u16_at(header, phentsize_at, endian);
    if entsize != phentsize {
        return Err(ElfError::BadProgramHeaders {
            what: format!("e_phentsize is {entsize}, a {class} ELF file has {phentsize}"),
        });
    }
    let phnum = u16_at(header, phentsize_at + 2, endian);
    let max = 65536 / u32::from(phentsize);
    if phnum == 0 || u32::from(phnum) > max {
        return Err(ElfError::BadProgramHeaders {
            what: format!("e_phnum is {phnum}, must be 1 to {max}"),
        });
    }
    Ok(ElfInfo {
        class,
        endian,
        kind,
        machine,
        osabi,
    })
}

impl ElfInfo {
    /// The machine, class and endianness of the node narun was compiled for (`cfg!`
    /// target_arch, target_pointer_width, target_endian).
    pub const HOST: Target = Target {
        machine: if cfg!(target_arch = "x86_64") {
            machine::X86_64
        } else if cfg!(target_arch = "aarch64") {
            machine::AARCH64
        } else if cfg!(target_arch = "arm") {
            machine::ARM
        } else if cfg!(any(target_arch = "riscv64", target_arch = "riscv32")) {
            machine::RISCV
        } else if cfg!(target_arch = "x86") {
            machine::I386
        } else {
            0
        },
        class: if cfg!(target_pointer_width = "64") {
            Class::Elf64
        } else {
            Class::Elf32
        },
        endian: if cfg!(target_endian = "big") {
            Endian::Big
        } else {
            Endian::Little
        },
    };

    /// Machine, class and endianness of this file.
    pub fn target(&self) -> Target {
        Target {
            machine: self.machine,
            class: self.class,
            endian: self.endian,
        }
    }

    /// `Ok` when this executable is for the node running this code ([`Self::HOST`]).
    pub fn check_runs_here(&self) -> Result<(), ElfError> {
        self.check_runs_on(Self::HOST)
    }

    /// `Ok` when machine, class and endianness are `node`'s.
    pub fn check_runs_on(&self, node: Target) -> Result<(), ElfError> {
        let found = self.target();
        if found == node {
            Ok(())
        } else {
            Err(ElfError::WrongTarget {
                expected: node,
                found,
            })
        }
    }

    /// The platform in Go's names: big-endian files and machine/class pairs narun has no
    /// name for are errors.
    pub fn platform(&self) -> Result<Platform, ElfError> {
        if self.endian == Endian::Big {
            return Err(ElfError::BigEndian(self.target()));
        }
        let arch = match (self.machine, self.class) {
            (machine::X86_64, Class::Elf64) => "amd64",
            (machine::AARCH64, Class::Elf64) => "arm64",
            (machine::ARM, Class::Elf32) => "arm",
            (machine::RISCV, Class::Elf64) => "riscv64",
            (machine::I386, Class::Elf32) => "386",
            _ => return Err(ElfError::UnknownMachine(self.target())),
        };
        Ok(Platform { os: "linux", arch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid header: `class` 1/2, `data` 1/2, `e_type`, `machine`.
    fn header(class: u8, data: u8, osabi: u8, e_type: u16, machine: u16) -> Vec<u8> {
        let (len, phentsize_at, phentsize) = if class == 1 {
            (52, 42, 32u16)
        } else {
            (64, 54, 56u16)
        };
        let mut h = vec![0u8; len];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[6] = 1;
        h[7] = osabi;
        let put = |h: &mut Vec<u8>, at: usize, v: u16| {
            let b = if data == 2 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            h[at..at + 2].copy_from_slice(&b);
        };
        put(&mut h, 16, e_type);
        put(&mut h, 18, machine);
        put(&mut h, phentsize_at, phentsize);
        put(&mut h, phentsize_at + 2, 1);
        h
    }

    fn x86_64(e_type: u16) -> Vec<u8> {
        header(2, 1, 0, e_type, 62)
    }

    #[test]
    fn executables_of_every_supported_platform() {
        for (class, machine, arch) in [
            (2, 62, "amd64"),
            (2, 183, "arm64"),
            (1, 40, "arm"),
            (2, 243, "riscv64"),
            (1, 3, "386"),
        ] {
            for (e_type, kind) in [(2, Kind::Exec), (3, Kind::Dyn)] {
                for osabi in [0, 3] {
                    let info = inspect(&header(class, 1, osabi, e_type, machine)).unwrap();
                    assert_eq!(info.kind, kind);
                    assert_eq!(info.machine, machine);
                    assert_eq!(info.endian, Endian::Little);
                    let p = info.platform().unwrap();
                    assert_eq!((p.os, p.arch), ("linux", arch));
                }
            }
        }
    }

    #[test]
    fn non_executables_are_refused_naming_what_they_are() {
        let e = inspect(&x86_64(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ELF relocatable object (ET_REL, a .o file), not an executable: link it into a program first"
        );
        assert!(
            inspect(&x86_64(4))
                .unwrap_err()
                .to_string()
                .contains("ET_CORE")
        );
        assert!(
            inspect(&x86_64(0))
                .unwrap_err()
                .to_string()
                .contains("ET_NONE")
        );
        assert!(matches!(
            inspect(&x86_64(0xfe00)),
            Err(ElfError::NotExecutable(_))
        ));
    }

    #[test]
    fn big_endian_is_reported_and_refused_as_a_platform() {
        let info = inspect(&header(2, 2, 0, 2, 21)).unwrap(); // ppc64
        assert_eq!(info.endian, Endian::Big);
        assert_eq!(info.machine, 21);
        let e = info.platform().unwrap_err().to_string();
        assert!(
            e.starts_with("big-endian ELF (ELF machine 21, 64-bit big-endian)"),
            "{e}"
        );
        // A big-endian aarch64 is read in its byte order, and still not runnable.
        let info = inspect(&header(2, 2, 0, 2, 183)).unwrap();
        assert_eq!(info.machine, 183);
        assert!(matches!(info.platform(), Err(ElfError::BigEndian(_))));
        assert!(info.check_runs_on(x86_64_target()).is_err());
    }

    fn x86_64_target() -> Target {
        Target {
            machine: 62,
            class: Class::Elf64,
            endian: Endian::Little,
        }
    }

    #[test]
    fn the_node_compares_machine_class_and_endianness() {
        let node = x86_64_target();
        assert_eq!(inspect(&x86_64(3)).unwrap().check_runs_on(node), Ok(()));
        let arm64 = inspect(&header(2, 1, 0, 2, 183)).unwrap();
        let e = arm64.check_runs_on(node).unwrap_err().to_string();
        assert_eq!(
            e,
            "built for aarch64 (ELF machine 183), 64-bit little-endian, but this node is \
             x86_64 (ELF machine 62), 64-bit little-endian"
        );
        // x32 (x86_64 machine, 32-bit class) is another target.
        let x32 = inspect(&header(1, 1, 0, 2, 62)).unwrap();
        assert!(x32.check_runs_on(node).is_err());
        assert!(matches!(x32.platform(), Err(ElfError::UnknownMachine(_))));
        let e = inspect(&header(2, 1, 0, 2, 8))
            .unwrap()
            .platform()
            .unwrap_err();
        assert!(e.to_string().contains("ELF machine 8"), "{e}");
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(inspect(b""), Err(ElfError::NotElf));
        assert_eq!(inspect(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(inspect(b"MZ\x90\x00"), Err(ElfError::NotElf));
        assert!(matches!(
            inspect(b"\x7fELF"),
            Err(ElfError::Truncated { found: 4, .. })
        ));
        let h = x86_64(2);
        for n in 4..h.len() {
            assert!(
                matches!(inspect(&h[..n]), Err(ElfError::Truncated { .. })),
                "{n} bytes"
            );
        }
        let mut bad = h.clone();
        bad[4] = 3;
        assert_eq!(inspect(&bad), Err(ElfError::BadClass(3)));
        let mut bad = h.clone();
        bad[5] = 0;
        assert_eq!(inspect(&bad), Err(ElfError::BadData(0)));
        assert_eq!(
            inspect(&header(2, 1, 9, 2, 62)),
            Err(ElfError::NotLinux("freebsd"))
        );
        // The kernel refuses these program header tables with ENOEXEC; glibc would then
        // run the file through /bin/sh.
        let mut bad = h.clone();
        bad[54] = 0;
        let e = inspect(&bad).unwrap_err().to_string();
        assert!(
            e.contains("e_phentsize is 0, a 64-bit ELF file has 56"),
            "{e}"
        );
        let mut bad = h.clone();
        bad[56] = 0;
        assert!(
            inspect(&bad)
                .unwrap_err()
                .to_string()
                .contains("e_phnum is 0")
        );
        let mut bad = h;
        bad[56..58].copy_from_slice(&1171u16.to_le_bytes());
        assert!(
            inspect(&bad)
                .unwrap_err()
                .to_string()
                .contains("e_phnum is 1171")
        );
        // The header of an x86_64 ELF followed by a shell script.
        let mut trick = x86_64(2)[..20].to_vec();
        trick.extend_from_slice(b"/dev/null\ntouch /tmp/owned\n# padding to 64 bytes .....\n");
        assert!(matches!(
            inspect(&trick),
            Err(ElfError::BadProgramHeaders { .. })
        ));
    }

    #[test]
    fn every_prefix_and_byte_flip_of_a_header_is_total() {
        let h = x86_64(3);
        for i in 0..h.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                let mut m = h.clone();
                m[i] = v;
                let _ = inspect(&m);
                let _ = inspect(&m[..i]);
            }
        }
    }

    #[test]
    fn this_test_binary_runs_here() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = inspect(&exe).unwrap();
        assert_eq!(info.check_runs_here(), Ok(()));
        assert_eq!(info.platform().unwrap().arch, crate::names::go_arch());
    }
}
