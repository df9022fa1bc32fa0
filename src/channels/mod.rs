//! Channels: the manifest (`channel_manifest.json`) and the registry (table `channels`) of
//! what is served where, with the settings an admin gave each channel, parsed into typed
//! values once ([`settings`]).

pub mod manifest;
pub mod registry;
pub mod settings;
