#![no_main]
// Body and invariants: narun_fuzz_targets::elf (fuzz-targets/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| narun_fuzz_targets::elf(data));
