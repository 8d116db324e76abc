//! Human-readable text that crosses a trust boundary and is shown to a
//! person: a companion's [`DeviceLabel`] ("Firefox on Linux"), and the
//! [`ObservedContext`] a relay reports about a linking device. Both refuse
//! characters that could spoof the primary's prompt.

use serde::{Deserialize, Serialize};

/// Longest device label, in bytes of UTF-8.
pub const MAX_LABEL_LEN: usize = 64;

/// Why a device label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceLabelError {
    /// Empty label.
    #[error("device label is empty")]
    Empty,
    /// Over [`MAX_LABEL_LEN`] bytes.
    #[error("device label is {len} bytes, more than {MAX_LABEL_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Contains control, bidirectional-override, zero-width or line/paragraph
    /// separator characters (which could spoof the primary's prompt).
    #[error("device label contains control or invisible formatting characters")]
    ControlCharacter,
    /// Not UTF-8.
    #[error("device label is not UTF-8")]
    NotUtf8,
}

/// Format characters that change how the rest of a line is shown or hide
/// text: bidirectional controls, zero-width characters, line and paragraph
/// separators, the byte-order mark, soft hyphen, Mongolian vowel separator.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// A short, human-readable name of a companion ("Firefox on Linux"), shown on
/// the primary before it grants anything. 1–64 bytes of UTF-8 with at least
/// one visible character; no control characters, bidirectional controls,
/// zero-width characters or line/paragraph separators (which could spoof the
/// primary's prompt). Chosen by the companion, so never proof of anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceLabel(pub(crate) String);

impl DeviceLabel {
    /// Validates a label.
    pub fn new(label: impl Into<String>) -> Result<Self, DeviceLabelError> {
        let label = label.into();
        if label.is_empty() {
            return Err(DeviceLabelError::Empty);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(DeviceLabelError::TooLong { len: label.len() });
        }
        if label
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            return Err(DeviceLabelError::ControlCharacter);
        }
        if !label.chars().any(|c| !c.is_whitespace()) {
            return Err(DeviceLabelError::Empty);
        }
        Ok(DeviceLabel(label))
    }

    pub(crate) fn from_wire(bytes: &[u8]) -> Result<Self, DeviceLabelError> {
        let s = std::str::from_utf8(bytes).map_err(|_| DeviceLabelError::NotUtf8)?;
        DeviceLabel::new(s)
    }

    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceLabel {
    type Error = DeviceLabelError;
    fn try_from(s: String) -> Result<Self, DeviceLabelError> {
        DeviceLabel::new(s)
    }
}

impl From<DeviceLabel> for String {
    fn from(l: DeviceLabel) -> String {
        l.0
    }
}

impl std::fmt::Display for DeviceLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the host (usually from its relay) observed about the device asking to
/// link, shown beside the label on the primary's prompt: a coarse network
/// ("Wi-Fi at home", an AS name) and a coarse region ("near Berlin, DE").
/// Unauthenticated by the protocol: the relay saw it, the companion did not
/// sign it. Its value is that an attacker's device far away shows up as far
/// away. Each part is validated like a [`DeviceLabel`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ObservedContext {
    /// The network the request came from, as the relay saw it.
    pub network: Option<DeviceLabel>,
    /// The coarse region of that network.
    pub region: Option<DeviceLabel>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_validated() {
        assert_eq!(DeviceLabel::new(""), Err(DeviceLabelError::Empty));
        assert_eq!(
            DeviceLabel::new("a".repeat(65)),
            Err(DeviceLabelError::TooLong { len: 65 })
        );
        assert_eq!(
            DeviceLabel::new("Chrome\u{1b}[2J"),
            Err(DeviceLabelError::ControlCharacter)
        );
        assert_eq!(
            DeviceLabel::from_wire(&[0xff]),
            Err(DeviceLabelError::NotUtf8)
        );
        for spoof in [
            "Chrome on \u{202E}xoferiF",
            "Laptop\u{2028}Approved",
            "\u{200B}",
            "a\u{2066}b",
        ] {
            assert_eq!(
                DeviceLabel::new(spoof),
                Err(DeviceLabelError::ControlCharacter),
                "{spoof:?}"
            );
        }
        assert_eq!(DeviceLabel::new("   "), Err(DeviceLabelError::Empty));
        assert_eq!(
            DeviceLabel::new("Firefox on Linux").unwrap().as_str(),
            "Firefox on Linux"
        );
        assert!(DeviceLabel::new("é".repeat(32)).is_ok());
    }
}
