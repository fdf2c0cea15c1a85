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
//! # The spec inside the binary (`.narun`)
//!
//! An app may carry its default spec in a section `.narun` of its ELF file, written by the
//! app library's `narun::embed_spec!` ([`spec_record`] builds the bytes at compile time).
//! [`read_section`] finds a section by name through the section header table
//! (`e_shoff`, `e_shentsize`, `e_shnum`, `e_shstrndx` of either class and byte order,
//! with the `SHN_XINDEX` escapes for files of 65280 sections or more), reading only the
//! header, the table, the section name table and the section itself, each bounded:
//!
//! | what | bound |
//! |---|---|
//! | section header table | [`MAX_SECTION_TABLE`] bytes (4 MiB: 65536 64-bit entries) |
//! | section name table (`.shstrtab`) | [`MAX_NAME_TABLE`] bytes (1 MiB) |
//! | the section asked for | the caller's `max` ([`MAX_SPEC_SECTION`], 64 KiB, for `.narun`) |
//!
//! [`embedded_spec`] reads `.narun` and decodes its one record: the 8 bytes
//! [`SPEC_MAGIC`] (`NARUNSP1`), the length of the spec as a little-endian `u32`, then the
//! spec, TOML in UTF-8. Zero bytes around the record (alignment padding a linker adds) are
//! skipped. Every malformed file is an [`SectionError`] naming what is wrong (offsets
//! past the end of the file, a table larger than its bound, two records because two
//! crates of the binary embed a spec, …), never a panic and never an allocation the file
//! chose.
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
use std::io::{Read, Seek, SeekFrom};

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

/// The section an app's embedded spec lives in.
pub const SPEC_SECTION: &str = ".narun";
/// The first 8 bytes of an embedded spec record (format version 1).
pub const SPEC_MAGIC: [u8; 8] = *b"NARUNSP1";
/// Bytes before the spec in a record: [`SPEC_MAGIC`] and the `u32` length.
pub const SPEC_RECORD_HEADER: usize = 12;
/// The largest `.narun` section read (a spec is a few hundred bytes).
pub const MAX_SPEC_SECTION: u64 = 64 * 1024;
/// The largest section header table read.
pub const MAX_SECTION_TABLE: u64 = 4 * 1024 * 1024;
/// The largest section name table read.
pub const MAX_NAME_TABLE: u64 = 1024 * 1024;

/// The record `narun::embed_spec!` puts into `.narun`: [`SPEC_MAGIC`], the length of
/// `spec` (`u32`, little-endian), `spec`. `N` must be `spec.len() +`
/// [`SPEC_RECORD_HEADER`] (a compile error otherwise, as the macro evaluates it in a
/// `static`).
pub const fn spec_record<const N: usize>(spec: &[u8]) -> [u8; N] {
    assert!(
        N == spec.len() + SPEC_RECORD_HEADER,
        "N must be the spec's length + 12"
    );
    assert!(
        spec.len() as u64 <= MAX_SPEC_SECTION - SPEC_RECORD_HEADER as u64,
        "an embedded spec may have at most 65524 bytes"
    );
    let mut out = [0u8; N];
    let mut i = 0;
    while i < 8 {
        out[i] = SPEC_MAGIC[i];
        i += 1;
    }
    let len = (spec.len() as u32).to_le_bytes();
    let mut i = 0;
    while i < 4 {
        out[8 + i] = len[i];
        i += 1;
    }
    let mut i = 0;
    while i < spec.len() {
        out[SPEC_RECORD_HEADER + i] = spec[i];
        i += 1;
    }
    out
}

/// Why a section (or the embedded spec) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// Not an ELF executable narun runs (the header check of [`inspect`]).
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Reading the file failed.
    #[error("reading the ELF file: {0}")]
    Io(#[from] std::io::Error),
    /// The section header table or a section is malformed.
    #[error("malformed ELF section table: {0}")]
    Malformed(String),
    /// The section is larger than the caller's bound.
    #[error("ELF section {name} has {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// Section name.
        name: String,
        /// Its `sh_size`.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The `.narun` section does not hold exactly one valid spec record.
    #[error("the embedded spec (section .narun) is invalid: {0}")]
    BadSpec(String),
}

fn malformed(what: impl Into<String>) -> SectionError {
    SectionError::Malformed(what.into())
}

fn u32_at(b: &[u8], at: usize, e: Endian) -> u32 {
    let raw = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    match e {
        Endian::Little => u32::from_le_bytes(raw),
        Endian::Big => u32::from_be_bytes(raw),
    }
}

fn u64_at(b: &[u8], at: usize, e: Endian) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    match e {
        Endian::Little => u64::from_le_bytes(raw),
        Endian::Big => u64::from_be_bytes(raw),
    }
}

/// A word of the class: `u32` in 32-bit files, `u64` in 64-bit ones.
fn word_at(b: &[u8], at: usize, class: Class, e: Endian) -> u64 {
    match class {
        Class::Elf32 => u64::from(u32_at(b, at, e)),
        Class::Elf64 => u64_at(b, at, e),
    }
}

/// One entry of the section header table, the fields used here.
#[derive(Debug, Clone, Copy)]
struct SectionHeader {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

/// `SHT_NOBITS`: a section without bytes in the file (`.bss`).
const SHT_NOBITS: u32 = 8;
/// `SHN_XINDEX`: the real `e_shstrndx` is in section 0's `sh_link`.
const SHN_XINDEX: u16 = 0xffff;

fn section_header(entry: &[u8], class: Class, e: Endian) -> SectionHeader {
    // (sh_offset, sh_size, sh_link) offsets of the class.
    let (off, size, link) = match class {
        Class::Elf32 => (16, 20, 24),
        Class::Elf64 => (24, 32, 40),
    };
    SectionHeader {
        name: u32_at(entry, 0, e),
        kind: u32_at(entry, 4, e),
        offset: word_at(entry, off, class, e),
        size: word_at(entry, size, class, e),
        link: u32_at(entry, link, e),
    }
}

/// Read exactly `len` bytes at `offset`, after checking both against the file's size.
fn read_at<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, SectionError> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| malformed(format!("{what} at offset {offset} + {len} bytes overflows")))?;
    if end > file_len {
        return Err(malformed(format!(
            "{what} at offset {offset} ({len} bytes) ends past the end of the file ({file_len} bytes)"
        )));
    }
    let len = usize::try_from(len).map_err(|_| malformed(format!("{what} is too large")))?;
    let mut buf = vec![0u8; len];
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// The bytes of the section called `name` (`Ok(None)`: no such section, or no section
/// header table at all, as in a file stripped with `sstrip`). Sections larger than `max`
/// are an error; see the module docs for every other bound.
pub fn read_section<R: Read + Seek>(
    r: &mut R,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, SectionError> {
    let file_len = r.seek(SeekFrom::End(0))?;
    let mut header = [0u8; 64];
    r.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < header.len() {
        match r.read(&mut header[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let info = inspect(&header[..n])?;
    let (class, e) = (info.class, info.endian);
    // (e_shoff, e_shentsize) offsets and the size of an entry of the class.
    let (shoff_at, shentsize_at, entry_len) = match class {
        Class::Elf32 => (32, 46, 40u16),
        Class::Elf64 => (40, 58, 64u16),
    };
    let shoff = word_at(&header, shoff_at, class, e);
    let shentsize = u16_at(&header, shentsize_at, e);
    let mut shnum = u64::from(u16_at(&header, shentsize_at + 2, e));
    let shstrndx = u16_at(&header, shentsize_at + 4, e);
    if shoff == 0 {
        return Ok(None);
    }
    if shentsize != entry_len {
        return Err(malformed(format!(
            "e_shentsize is {shentsize}, a {class} ELF file has {entry_len}"
        )));
    }
    let entry_len = u64::from(entry_len);
    // Section 0 carries the real count and name table index of very large files.
    let first = section_header(
        &read_at(r, file_len, shoff, entry_len, "section header 0")?,
        class,
        e,
    );
    if shnum == 0 {
        shnum = first.size;
    }
    if shnum == 0 {
        return Ok(None);
    }
    let table_len = shnum
        .checked_mul(entry_len)
        .filter(|l| *l <= MAX_SECTION_TABLE)
        .ok_or_else(|| {
            malformed(format!(
                "{shnum} section headers are more than the {} accepted",
                MAX_SECTION_TABLE / entry_len
            ))
        })?;
    let table = read_at(r, file_len, shoff, table_len, "the section header table")?;
    let strndx = if shstrndx == SHN_XINDEX {
        u64::from(first.link)
    } else {
        u64::from(shstrndx)
    };
    if strndx == 0 || strndx >= shnum {
        return Err(malformed(format!(
            "e_shstrndx is {strndx}, the file has {shnum} sections"
        )));
    }
    let entry = |i: u64| {
        // i < shnum, so the slice is inside the table read above.
        let at = (i * entry_len) as usize;
        section_header(&table[at..at + entry_len as usize], class, e)
    };
    let strtab = entry(strndx);
    if strtab.kind == SHT_NOBITS {
        return Err(malformed("the section name table has no bytes in the file"));
    }
    if strtab.size > MAX_NAME_TABLE {
        return Err(malformed(format!(
            "the section name table has {} bytes, more than the {MAX_NAME_TABLE} accepted",
            strtab.size
        )));
    }
    let names = read_at(
        r,
        file_len,
        strtab.offset,
        strtab.size,
        "the section name table",
    )?;
    for i in 1..shnum {
        let s = entry(i);
        let Some(rest) = usize::try_from(s.name).ok().and_then(|at| names.get(at..)) else {
            return Err(malformed(format!(
                "section {i}'s name is at offset {} of a {}-byte name table",
                s.name,
                names.len()
            )));
        };
        let Some(end) = rest.iter().position(|b| *b == 0) else {
            return Err(malformed(format!(
                "section {i}'s name is not terminated in the name table"
            )));
        };
        if &rest[..end] != name.as_bytes() {
            continue;
        }
        if s.kind == SHT_NOBITS {
            return Err(malformed(format!(
                "section {name} has no bytes in the file"
            )));
        }
        if s.size > max {
            return Err(SectionError::TooLarge {
                name: name.to_string(),
                size: s.size,
                max,
            });
        }
        return read_at(r, file_len, s.offset, s.size, &format!("section {name}")).map(Some);
    }
    Ok(None)
}

/// The spec embedded in an app's ELF file (`Ok(None)`: no `.narun` section).
pub fn embedded_spec<R: Read + Seek>(r: &mut R) -> Result<Option<String>, SectionError> {
    match read_section(r, SPEC_SECTION, MAX_SPEC_SECTION)? {
        Some(bytes) => decode_spec_section(&bytes).map(Some),
        None => Ok(None),
    }
}

/// The spec in the bytes of a `.narun` section: exactly one record (zero padding around
/// it is skipped), its text UTF-8.
pub fn decode_spec_section(bytes: &[u8]) -> Result<String, SectionError> {
    let bad = |m: String| SectionError::BadSpec(m);
    let mut at = 0;
    let mut found: Option<String> = None;
    let mut count = 0;
    loop {
        while at < bytes.len() && bytes[at] == 0 {
            at += 1;
        }
        if at == bytes.len() {
            break;
        }
        let rest = &bytes[at..];
        if rest.len() < SPEC_RECORD_HEADER {
            return Err(bad(format!(
                "{} stray bytes at offset {at} (a record starts with {SPEC_RECORD_HEADER})",
                rest.len()
            )));
        }
        if rest[..8] != SPEC_MAGIC {
            return Err(bad(format!(
                "no record at offset {at}: the bytes there are not \"NARUNSP1\" (not written by narun::embed_spec!, or by a newer version of it)"
            )));
        }
        let len = u32_at(rest, 8, Endian::Little) as usize;
        let body = &rest[SPEC_RECORD_HEADER..];
        if len > body.len() {
            return Err(bad(format!(
                "the record at offset {at} says {len} bytes, the section has {} after its header",
                body.len()
            )));
        }
        let text = std::str::from_utf8(&body[..len]).map_err(|e| {
            bad(format!(
                "the spec is not UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        count += 1;
        found.get_or_insert_with(|| text.to_string());
        at += SPEC_RECORD_HEADER + len;
    }
    match (count, found) {
        (1, Some(text)) => Ok(text),
        (0, _) => Err(bad("the section holds no record".into())),
        (n, _) => Err(bad(format!(
            "{n} specs are embedded: narun::embed_spec! may be used once per binary (a dependency may use it too)"
        ))),
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

    /// An executable of `class`/`data` whose sections are `sections` (name, type, bytes),
    /// laid out as header, section bytes, `.shstrtab`, section header table.
    fn elf_with_sections(class: u8, data: u8, sections: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut f = header(class, data, 0, 3, if class == 1 { 40 } else { 62 });
        let big = data == 2;
        let put = |f: &mut Vec<u8>, at: usize, v: u64, width: usize| {
            let b = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let b = if big { &b[8 - width..] } else { &b[..width] };
            f[at..at + width].copy_from_slice(b);
        };
        let word = if class == 1 { 4 } else { 8 };
        let mut names = vec![0u8];
        let mut entries = vec![(0u32, 0u32, 0u64, 0u64)];
        for (name, kind, bytes) in sections {
            let name_at = names.len() as u32;
            names.extend_from_slice(name.as_bytes());
            names.push(0);
            entries.push((name_at, *kind, f.len() as u64, bytes.len() as u64));
            f.extend_from_slice(bytes);
        }
        let strtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");
        entries.push((strtab_name, 3, f.len() as u64, names.len() as u64));
        f.extend_from_slice(&names);
        let shoff = f.len() as u64;
        let entry_len = if class == 1 { 40 } else { 64 };
        for (name, kind, offset, size) in &entries {
            let at = f.len();
            f.resize(at + entry_len, 0);
            put(&mut f, at, u64::from(*name), 4);
            put(&mut f, at + 4, u64::from(*kind), 4);
            let (off_at, size_at) = if class == 1 { (16, 20) } else { (24, 32) };
            put(&mut f, at + off_at, *offset, word);
            put(&mut f, at + size_at, *size, word);
        }
        let (shoff_at, shentsize_at) = if class == 1 { (32, 46) } else { (40, 58) };
        put(&mut f, shoff_at, shoff, word);
        put(&mut f, shentsize_at, entry_len as u64, 2);
        put(&mut f, shentsize_at + 2, entries.len() as u64, 2);
        put(&mut f, shentsize_at + 4, (entries.len() - 1) as u64, 2);
        f
    }

    const SPEC: &[u8] = b"name = \"web\"\ntag = \"v3\"\n";

    fn record() -> Vec<u8> {
        spec_record::<{ SPEC.len() + SPEC_RECORD_HEADER }>(SPEC).to_vec()
    }

    fn spec_of(f: &[u8]) -> Result<Option<String>, SectionError> {
        embedded_spec(&mut std::io::Cursor::new(f))
    }

    #[test]
    fn the_embedded_spec_is_found_in_32_and_64_bit_files_of_either_byte_order() {
        let rec = record();
        for (class, data) in [(1, 1), (2, 1), (2, 2), (1, 2)] {
            let f = elf_with_sections(
                class,
                data,
                &[
                    (".text", 1, b"\x90\x90\x90\x90"),
                    (".bss", SHT_NOBITS, b""),
                    (".narun", 1, &rec),
                    (".data", 1, b"xyz"),
                ],
            );
            assert_eq!(
                spec_of(&f).unwrap().as_deref(),
                Some(std::str::from_utf8(SPEC).unwrap()),
                "class {class} data {data}"
            );
            assert_eq!(
                read_section(&mut std::io::Cursor::new(&f), ".data", 10)
                    .unwrap()
                    .as_deref(),
                Some(&b"xyz"[..])
            );
        }
        // No section, and no section table at all.
        let f = elf_with_sections(1, 1, &[(".text", 1, b"\x00")]);
        assert!(spec_of(&f).unwrap().is_none());
        assert!(spec_of(&header(2, 1, 0, 3, 62)).unwrap().is_none());
    }

    #[test]
    fn padding_around_the_record_is_skipped_and_two_records_are_refused() {
        let mut padded = vec![0u8; 5];
        padded.extend(record());
        padded.extend([0u8; 3]);
        assert_eq!(
            decode_spec_section(&padded).unwrap(),
            std::str::from_utf8(SPEC).unwrap()
        );
        let mut two = record();
        two.extend(record());
        let e = decode_spec_section(&two).unwrap_err().to_string();
        assert!(e.contains("2 specs are embedded"), "{e}");
    }

    #[test]
    fn malformed_spec_sections_name_what_is_wrong() {
        let err = |b: &[u8]| decode_spec_section(b).unwrap_err().to_string();
        assert!(err(&[0, 0, 0]).contains("holds no record"));
        assert!(err(b"NARUNSP1\x05").contains("9 stray bytes"));
        assert!(err(b"NARUNSP2\x00\x00\x00\x00").contains("not \"NARUNSP1\""));
        assert!(err(b"NARUNSP1\xff\xff\xff\xffabc").contains("says 4294967295 bytes"));
        assert!(err(b"NARUNSP1\x02\x00\x00\x00\xff\xfe").contains("not UTF-8"));
        let mut r = record();
        r.push(b'x');
        assert!(err(&r).contains("stray bytes"));
    }

    #[test]
    fn malformed_section_tables_are_errors_not_panics() {
        let rec = record();
        let good = elf_with_sections(2, 1, &[(".narun", 1, &rec)]);
        let shoff = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
        let e = |f: &[u8]| spec_of(f).unwrap_err().to_string();
        // The table past the end of the file.
        let mut f = good.clone();
        f[40..48].copy_from_slice(&(good.len() as u64 + 1).to_le_bytes());
        assert!(e(&f).contains("past the end of the file"), "{}", e(&f));
        // An offset that overflows.
        let mut f = good.clone();
        f[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(e(&f).contains("overflows"), "{}", e(&f));
        // A wrong entry size.
        let mut f = good.clone();
        f[58] = 40;
        assert!(e(&f).contains("e_shentsize is 40"), "{}", e(&f));
        // A name table index out of range.
        let mut f = good.clone();
        f[62] = 9;
        assert!(e(&f).contains("e_shstrndx is 9"), "{}", e(&f));
        // The .narun section says it is huge: refused before anything is allocated.
        let mut f = good.clone();
        let narun = shoff + 64;
        f[narun + 32..narun + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let msg = e(&f);
        assert!(
            msg.contains("section .narun has 1099511627776 bytes, more than the 65536 accepted"),
            "{msg}"
        );
        // Its bytes past the end of the file.
        let mut f = good.clone();
        f[narun + 24..narun + 32].copy_from_slice(&(good.len() as u64).to_le_bytes());
        assert!(e(&f).contains("past the end"), "{}", e(&f));
        // A name offset outside the name table.
        let mut f = good.clone();
        f[narun..narun + 4].copy_from_slice(&9999u32.to_le_bytes());
        assert!(e(&f).contains("name is at offset 9999"), "{}", e(&f));
        // shnum 0 with section 0 claiming a huge count (the SHN_XINDEX escape).
        let mut f = good.clone();
        f[60..62].copy_from_slice(&0u16.to_le_bytes());
        f[shoff + 32..shoff + 40].copy_from_slice(&(1u64 << 32).to_le_bytes());
        assert!(e(&f).contains("section headers are more than"), "{}", e(&f));
        // Not an ELF file at all.
        assert!(matches!(
            spec_of(b"#!/bin/sh\n"),
            Err(SectionError::Elf(ElfError::NotElf))
        ));
    }

    #[test]
    fn every_byte_flip_of_a_file_with_sections_is_total() {
        let rec = record();
        for class in [1u8, 2] {
            let f = elf_with_sections(class, 1, &[(".narun", 1, &rec), (".x", 1, b"ab")]);
            for i in 0..f.len() {
                for v in [0u8, 1, 0x7f, 0xff] {
                    let mut m = f.clone();
                    m[i] = v;
                    let _ = spec_of(&m);
                    let _ = spec_of(&m[..i]);
                }
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
