//! The app's default spec inside its own binary: [`embed_spec!`](crate::embed_spec).
//!
//! `narun::embed_spec!("narun.toml")` (a file, relative to the source file that uses the
//! macro, like `include_str!`) or `narun::embed_spec!(toml: "name = \"web\" …")` puts the
//! spec into the section `.narun` of the app's ELF file, in the record format of
//! [`narun_wire::elf`] (`NARUNSP1`, length, TOML). `narunctl deploy ./app` reads it when no
//! `-f SPEC` is given (flags override its fields), `narunctl inspect ./app` prints it.
//!
//! The section is a `#[used]` static with `#[link_section]`: LLVM marks it to be kept
//! (`SHF_GNU_RETAIN`), so neither `--gc-sections` nor LTO removes it, and `strip` keeps
//! it (it is allocated data, not debug information). Use the macro once per binary (two
//! records in one binary are refused by narunctl). `#[link_section]` is an unsafe
//! attribute: the macro allows `unsafe_code` on its static, which works under
//! `#![deny(unsafe_code)]` but not under `#![forbid(unsafe_code)]`.

/// Embed the app's default spec (TOML) into the section `.narun` of its binary.
///
/// ```no_run
/// narun::embed_spec!(toml: r#"
/// name = "web"
/// tag = "v1"
/// [[nodes]]
/// labels = { role = "edge" }
/// replicas = 2
/// "#);
/// # fn main() {}
/// ```
///
/// or `narun::embed_spec!("../narun.toml")`: a file, relative to the source file.
#[macro_export]
macro_rules! embed_spec {
    (toml: $text:expr) => {
        $crate::embed_spec!(@bytes $text.as_bytes());
    };
    (@bytes $bytes:expr) => {
        const _: () = {
            const NARUN_SPEC_TEXT: &[u8] = $bytes;
            #[used]
            #[allow(unsafe_code)]
            #[unsafe(link_section = ".narun")]
            static NARUN_EMBEDDED_SPEC: [u8; NARUN_SPEC_TEXT.len()
                + $crate::__private::SPEC_RECORD_HEADER] =
                $crate::__private::spec_record(NARUN_SPEC_TEXT);
        };
    };
    ($path:expr) => {
        $crate::embed_spec!(@bytes include_bytes!($path));
    };
}

#[doc(hidden)]
pub mod __private {
    pub use narun_wire::elf::{SPEC_RECORD_HEADER, spec_record};
}
