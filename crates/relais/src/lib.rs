//! relais: one customer database fed by every touchpoint. This crate holds the
//! storage engines, the HTTP API, the demo generator and the command line; the
//! domain rules live in `relais-domain`.

pub mod analytics;
pub mod bench;
pub mod cli;
pub mod clv;
pub mod config;
pub mod demo;
pub mod http;
pub mod import;
pub mod journey;
pub mod loyalty;
pub mod outbox;
pub mod privacy;
pub mod segments;
pub mod store;
pub mod typologies;
pub mod users;
pub mod web;
