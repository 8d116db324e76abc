//! A linked session fed wire bytes, as a companion's host feeds it: decode
//! (which verifies the signature), then accept. The core's consumers take
//! verified values; these tests often start from bytes (tampered, foreign,
//! truncated), so the decoding's refusal is part of what they check.
#![allow(dead_code)]

use devicelink::session::SessionError;
use devicelink::{
    DeviceListChange, LinkedSession, PrimaryHeartbeat, SessionStatus, SignedDeviceList, Timestamp,
};

pub trait FromWire {
    /// `SignedDeviceList::from_bytes`, then `accept_device_list`.
    fn device_list_bytes(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<DeviceListChange, SessionError>;
    /// `PrimaryHeartbeat::from_bytes`, then `accept_heartbeat`.
    fn heartbeat_bytes(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<SessionStatus, SessionError>;
}

impl FromWire for LinkedSession {
    fn device_list_bytes(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<DeviceListChange, SessionError> {
        let list = SignedDeviceList::from_bytes(bytes)?;
        self.accept_device_list(&list, now)
    }

    fn heartbeat_bytes(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<SessionStatus, SessionError> {
        let heartbeat = PrimaryHeartbeat::from_bytes(bytes)?;
        self.accept_heartbeat(&heartbeat, now)
    }
}
