//! One app instance: its runs, one after the other.

pub mod notify;
