//! One app instance: its runs, one after the other.

pub mod exit;
pub mod lifecycle;
pub mod notify;
