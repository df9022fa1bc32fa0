//! Channels: the manifest, the registry, and the components bound to channel paths.

pub mod component;
pub mod manifest;
pub mod registry;
pub mod send;
pub mod settings;
