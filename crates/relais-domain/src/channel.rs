//! The touchpoints a customer uses, as one closed vocabulary.

use serde::{Deserialize, Serialize};

/// A touchpoint through which an event reached the organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The web site.
    Web,
    /// A mobile application.
    App,
    /// A physical store (till, kiosk, staff tablet).
    Store,
    /// The call centre.
    CallCentre,
    /// E-mail campaigns and replies.
    Email,
    /// Paper or digital catalogue.
    Catalogue,
    /// Social networks.
    Social,
    /// Connected devices and meters.
    Device,
    /// Server-side integrations with no customer-facing channel.
    Other,
}

impl Channel {
    /// Every channel, in a stable order.
    pub const ALL: [Channel; 9] = [
        Channel::Web,
        Channel::App,
        Channel::Store,
        Channel::CallCentre,
        Channel::Email,
        Channel::Catalogue,
        Channel::Social,
        Channel::Device,
        Channel::Other,
    ];

    /// The snake_case name used in the API and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::Store => "store",
            Channel::CallCentre => "call_centre",
            Channel::Email => "email",
            Channel::Catalogue => "catalogue",
            Channel::Social => "social",
            Channel::Device => "device",
            Channel::Other => "other",
        }
    }

    /// A bit used to store a set of channels in one integer.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Parse a channel name, accepting the usual synonyms sent by tracking libraries.
    pub fn parse(name: &str) -> Option<Channel> {
        let lowered = name.trim().to_ascii_lowercase();
        Some(match lowered.as_str() {
            "web" | "browser" | "website" => Channel::Web,
            "app" | "mobile" | "ios" | "android" => Channel::App,
            "store" | "pos" | "till" | "shop" => Channel::Store,
            "call_centre" | "call_center" | "callcenter" | "phone" | "contact_centre" => Channel::CallCentre,
            "email" | "e-mail" | "mail" => Channel::Email,
            "catalogue" | "catalog" => Channel::Catalogue,
            "social" | "social_network" => Channel::Social,
            "device" | "iot" => Channel::Device,
            "other" | "server" => Channel::Other,
            _ => return None,
        })
    }

    /// The channels whose bits are set in `bits`.
    pub fn from_bits(bits: u32) -> Vec<Channel> {
        Channel::ALL.into_iter().filter(|c| bits & c.bit() != 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_parses_from_its_own_name() {
        for channel in Channel::ALL {
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
        }
    }

    #[test]
    fn channel_sets_round_trip_through_bits() {
        let bits = Channel::Web.bit() | Channel::Store.bit();
        assert_eq!(Channel::from_bits(bits), vec![Channel::Web, Channel::Store]);
    }
}
