//! The commands, one module per top-level verb, each exposing `run`. `main` parses the
//! command line and calls the one asked for; a command connects through
//! [`crate::session`], prints through [`crate::output`], and imports no other command.

pub mod admin;
pub mod apps;
pub mod completions;
pub mod config;
pub mod deploy;
pub mod diff;
pub mod events;
pub mod files;
pub mod gateway;
pub mod images;
pub mod inspect;
pub mod jobs;
pub mod keys;
pub mod logs;
pub mod man;
pub mod nodes;
pub mod request;
pub mod runs;
pub mod secret;
pub mod svc;
