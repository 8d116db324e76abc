//! The companion's offer display: the QR code on screen, rotating.
//!
//! ```text
//!            poll: lifetime over, rotations left
//!           ┌───────────────┐
//!           ▼               │
//!  new ─► Showing{rotation} ─┘──► TimedOut   (lifetime over, no rotation left)
//!           │  │                  Expired    (same, for a policy with 0 rotations)
//!           │  └── cancel ──────► Cancelled
//!           └───── redeem ──────► Redeemed   (a valid scan of the current token)
//! ```
//!
//! Offer `k` is valid on `[start_k, start_k + lifetime_k)`: the instant
//! `start_k + lifetime_k` itself is expired. The schedule is a pure function of
//! the first `shown_at` and the policy, so a host that wakes late lands on the
//! rotation it would have reached; skipped offers are never generated.
//! A clock that goes backwards changes nothing.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{OfferKeys, PairingOffer, TokenId};
use crate::policy::Policy;
use crate::time::Timestamp;

/// Why a token was not accepted by the display.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token the display showed once but has rotated away from.
    #[error("token was rotated out; scan the code on screen now")]
    RotatedOut,
    /// The current token's lifetime has ended.
    #[error("pairing offer expired")]
    Expired,
    /// The display used up its rotations: the user must reload.
    #[error("pairing offer timed out after its rotations; reload to show a new code")]
    TimedOut,
    /// The display was cancelled.
    #[error("pairing offer was cancelled")]
    Cancelled,
    /// The token was already redeemed once.
    #[error("token already redeemed")]
    AlreadyRedeemed,
    /// A token this display never showed (a message for another session).
    #[error("message is for another pairing session")]
    UnknownToken,
}

/// Where the display is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferState {
    /// An offer is on screen.
    Showing {
        /// 0 for the first offer, then 1, 2, … after each rotation.
        rotation: u32,
        /// The token on screen.
        token_id: TokenId,
        /// The first instant at which this offer is stale.
        expires_at: Timestamp,
    },
    /// A primary scanned the current offer; the handshake goes on.
    Redeemed {
        /// The redeemed token.
        token_id: TokenId,
        /// When.
        at: Timestamp,
    },
    /// A single (non-rotating) offer outlived its lifetime.
    Expired {
        /// When.
        at: Timestamp,
    },
    /// The rotating display used up its rotations; the user must reload.
    TimedOut {
        /// When.
        at: Timestamp,
    },
    /// The host or the user cancelled.
    Cancelled {
        /// When.
        at: Timestamp,
    },
}

impl OfferState {
    /// True for every state but [`OfferState::Showing`].
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OfferState::Showing { .. })
    }
}

/// What [`OfferDisplay::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferEvent {
    /// A new offer replaced the old one; show it.
    Rotated {
        /// The new rotation number.
        rotation: u32,
        /// The retired token.
        old: TokenId,
        /// The new token.
        new: TokenId,
    },
    /// The display ended without a scan ([`OfferState::Expired`] or
    /// [`OfferState::TimedOut`]).
    Ended(OfferState),
}

/// The companion's rotating QR offer, as a state machine driven by `now`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferDisplay {
    first_lifetime_ms: u64,
    rotated_lifetime_ms: u64,
    max_rotations: u32,
    first_shown_at: Timestamp,
    rotation: u32,
    /// Present while showing; taken on redemption.
    current: Option<OfferKeys>,
    current_token: TokenId,
    retired: Vec<TokenId>,
    state: OfferState,
}

impl OfferDisplay {
    /// Shows a fresh offer at `now` with the policy's lifetimes.
    pub fn new<R: RngCore + CryptoRng>(policy: &Policy, rng: &mut R, now: Timestamp) -> Self {
        let keys = OfferKeys::generate(rng);
        let token_id = keys.offer.token_id();
        let first_lifetime_ms = crate::time::duration_millis(policy.first_offer_lifetime());
        OfferDisplay {
            first_lifetime_ms,
            rotated_lifetime_ms: crate::time::duration_millis(policy.rotated_offer_lifetime()),
            max_rotations: policy.max_rotations(),
            first_shown_at: now,
            rotation: 0,
            current: Some(keys),
            current_token: token_id,
            retired: Vec::new(),
            state: OfferState::Showing {
                rotation: 0,
                token_id,
                expires_at: now.saturating_add_millis(first_lifetime_ms),
            },
        }
    }

    /// The current state.
    pub fn state(&self) -> OfferState {
        self.state
    }

    /// The offer on screen, while showing.
    pub fn offer(&self) -> Option<&PairingOffer> {
        match self.state {
            OfferState::Showing { .. } => self.current.as_ref().map(|k| &k.offer),
            _ => None,
        }
    }

    /// When the host must call [`OfferDisplay::poll`] next (the current offer's
    /// expiry), or `None` once the display has ended.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match self.state {
            OfferState::Showing { expires_at, .. } => Some(expires_at),
            _ => None,
        }
    }

    /// End of offer `k`'s validity (exclusive).
    fn end_of(&self, k: u32) -> Timestamp {
        let ms = self
            .first_lifetime_ms
            .saturating_add(self.rotated_lifetime_ms.saturating_mul(u64::from(k)));
        self.first_shown_at.saturating_add_millis(ms)
    }

    /// Advances the display to `now`: rotates to a fresh offer if the current
    /// one has expired and rotations remain, or ends the display. Returns what
    /// changed, if anything.
    pub fn poll<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: Timestamp,
    ) -> Option<OfferEvent> {
        let OfferState::Showing { expires_at, .. } = self.state else {
            return None;
        };
        if now < expires_at {
            return None;
        }
        // Which rotation slot does `now` fall in? Slot k (k >= 1) is valid on
        // [end_of(k - 1), end_of(k)); computed directly, not by stepping, so a
        // huge rotation count or a far-future `now` costs nothing.
        let first_end = self.end_of(0).as_unix_millis();
        let k = match now.as_unix_millis().checked_sub(first_end) {
            None => 0,
            Some(elapsed) => {
                let slot = elapsed
                    .checked_div(self.rotated_lifetime_ms)
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                u32::try_from(slot)
                    .unwrap_or(u32::MAX)
                    .min(self.max_rotations)
            }
        }
        .max(self.rotation);
        if self.end_of(k) <= now {
            // Every rotation is used up.
            let at = self.end_of(k);
            self.current = None;
            self.retired.push(self.current_token);
            self.state = if self.max_rotations == 0 {
                OfferState::Expired { at }
            } else {
                OfferState::TimedOut { at }
            };
            return Some(OfferEvent::Ended(self.state));
        }
        let keys = OfferKeys::generate(rng);
        let old = self.current_token;
        let new = keys.offer.token_id();
        self.retired.push(old);
        self.current = Some(keys);
        self.current_token = new;
        self.rotation = k;
        self.state = OfferState::Showing {
            rotation: k,
            token_id: new,
            expires_at: self.end_of(k),
        };
        Some(OfferEvent::Rotated {
            rotation: k,
            old,
            new,
        })
    }

    /// Cancels the display. Refused once it has ended.
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), TokenError> {
        self.end_error()?;
        self.current = None;
        self.state = OfferState::Cancelled { at: now };
        Ok(())
    }

    fn end_error(&self) -> Result<(), TokenError> {
        match self.state {
            OfferState::Showing { .. } => Ok(()),
            OfferState::Redeemed { .. } => Err(TokenError::AlreadyRedeemed),
            OfferState::Expired { .. } => Err(TokenError::Expired),
            OfferState::TimedOut { .. } => Err(TokenError::TimedOut),
            OfferState::Cancelled { .. } => Err(TokenError::Cancelled),
        }
    }

    /// The keys of the current offer if `token` may be redeemed at `now`.
    /// Changes nothing.
    pub(crate) fn check(&self, token: &TokenId, now: Timestamp) -> Result<&OfferKeys, TokenError> {
        if *token != self.current_token {
            return Err(if self.retired.contains(token) {
                TokenError::RotatedOut
            } else {
                TokenError::UnknownToken
            });
        }
        self.end_error()?;
        match (&self.current, self.state) {
            (Some(keys), OfferState::Showing { expires_at, .. }) if now < expires_at => Ok(keys),
            (Some(_), _) => Err(if self.rotation < self.max_rotations {
                TokenError::RotatedOut
            } else if self.max_rotations == 0 {
                TokenError::Expired
            } else {
                TokenError::TimedOut
            }),
            (None, _) => Err(TokenError::AlreadyRedeemed),
        }
    }

    /// Saves the display (versioned JSON; holds the offer's secret key).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("offer display", self)
    }

    /// Restores a display saved by [`OfferDisplay::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let d: OfferDisplay = crate::persist::restore("offer display", bytes)?;
        d.check_consistent()?;
        Ok(d)
    }

    pub(crate) fn check_consistent(&self) -> Result<(), crate::persist::PersistError> {
        let ok = self.first_lifetime_ms > 0
            && self.rotated_lifetime_ms > 0
            && match (&self.current, self.state) {
                (
                    Some(k),
                    OfferState::Showing {
                        token_id,
                        rotation,
                        expires_at,
                    },
                ) => {
                    k.offer.token_id() == token_id
                        && token_id == self.current_token
                        && rotation == self.rotation
                        && rotation <= self.max_rotations
                        && expires_at == self.end_of(rotation)
                }
                (None, OfferState::Showing { .. }) => false,
                // A display that ended holds no offer keys.
                (Some(_), _) => false,
                (None, _) => true,
            };
        if ok {
            Ok(())
        } else {
            Err(crate::persist::PersistError::Inconsistent("offer display"))
        }
    }

    /// Marks the current token redeemed and hands over its keys. Call only
    /// after [`OfferDisplay::check`] and full verification of the scan.
    pub(crate) fn redeem(&mut self, now: Timestamp) -> Option<OfferKeys> {
        let keys = self.current.take()?;
        self.state = OfferState::Redeemed {
            token_id: self.current_token,
            at: now,
        };
        Some(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn rotates_on_schedule_then_times_out() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut d = OfferDisplay::new(&Policy::default(), &mut rng, t(1_000));
        let first = d.offer().unwrap().token_id();
        assert_eq!(d.next_deadline(), Some(t(61_000)));
        assert_eq!(d.poll(&mut rng, t(60_999)), None);
        assert!(d.check(&first, t(60_999)).is_ok());
        assert_eq!(
            d.check(&first, t(61_000)).err(),
            Some(TokenError::RotatedOut)
        );
        let Some(OfferEvent::Rotated {
            rotation: 1,
            old,
            new,
        }) = d.poll(&mut rng, t(61_000))
        else {
            panic!("expected a rotation");
        };
        assert_eq!(old, first);
        assert_eq!(
            d.check(&first, t(61_000)).err(),
            Some(TokenError::RotatedOut)
        );
        assert!(d.check(&new, t(61_000)).is_ok());
        assert_eq!(d.next_deadline(), Some(t(81_000)));
        // Sleeping through rotations 2..4 lands on rotation 5.
        assert!(matches!(
            d.poll(&mut rng, t(141_000)),
            Some(OfferEvent::Rotated { rotation: 5, .. })
        ));
        assert_eq!(d.next_deadline(), Some(t(161_000)));
        let last = d.offer().unwrap().token_id();
        assert_eq!(d.check(&last, t(161_000)).err(), Some(TokenError::TimedOut));
        assert_eq!(
            d.poll(&mut rng, t(161_000)),
            Some(OfferEvent::Ended(OfferState::TimedOut { at: t(161_000) }))
        );
        assert!(d.offer().is_none());
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.check(&last, t(1)).err(), Some(TokenError::TimedOut));
        // Going back in time revives nothing.
        assert_eq!(d.poll(&mut rng, t(0)), None);
        assert!(d.state().is_terminal());
    }

    #[test]
    fn single_offer_expires_and_late_wake_times_out() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let policy = Policy::builder().max_rotations(0).build().unwrap();
        let mut d = OfferDisplay::new(&policy, &mut rng, t(0));
        assert_eq!(
            d.poll(&mut rng, t(60_000)),
            Some(OfferEvent::Ended(OfferState::Expired { at: t(60_000) }))
        );
        let mut d = OfferDisplay::new(&Policy::default(), &mut rng, t(0));
        assert_eq!(
            d.poll(&mut rng, t(10_000_000)),
            Some(OfferEvent::Ended(OfferState::TimedOut { at: t(160_000) }))
        );
    }

    #[test]
    fn huge_rotation_counts_and_far_future_polls_are_constant_time() {
        // Regression (found by the persisted_state fuzz target): poll used to
        // step one rotation at a time.
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let policy = Policy::builder().max_rotations(u32::MAX).build().unwrap();
        let mut d = OfferDisplay::new(&policy, &mut rng, t(0));
        assert!(matches!(
            d.poll(&mut rng, t(1_000_000_000)),
            Some(OfferEvent::Rotated {
                rotation: 49_998,
                ..
            })
        ));
        assert_eq!(d.next_deadline(), Some(t(1_000_020_000)));
        let end = d.poll(&mut rng, Timestamp::MAX);
        assert!(matches!(
            end,
            Some(OfferEvent::Ended(OfferState::TimedOut { .. }))
        ));
        let regression = include_bytes!(
            "../../fuzz/regressions/persisted_state/timeout-offer-display-max-rotations.json"
        );
        let mut d = OfferDisplay::restore(regression).unwrap();
        d.poll(&mut rng, Timestamp::MAX);
        assert!(d.state().is_terminal());
    }

    #[test]
    fn cancel_and_redeem_are_terminal() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut d = OfferDisplay::new(&Policy::default(), &mut rng, t(0));
        let tok = d.offer().unwrap().token_id();
        assert!(d.redeem(t(5)).is_some());
        assert_eq!(d.check(&tok, t(6)).err(), Some(TokenError::AlreadyRedeemed));
        assert_eq!(d.cancel(t(7)), Err(TokenError::AlreadyRedeemed));
        let mut d = OfferDisplay::new(&Policy::default(), &mut rng, t(0));
        d.cancel(t(1)).unwrap();
        assert_eq!(d.cancel(t(2)), Err(TokenError::Cancelled));
        assert_eq!(d.poll(&mut rng, t(1_000_000)), None);
        assert_eq!(d.state(), OfferState::Cancelled { at: t(1) });
    }

    #[test]
    fn unknown_token_is_another_session() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let d = OfferDisplay::new(&Policy::default(), &mut rng, t(0));
        assert_eq!(
            d.check(&TokenId([7; 16]), t(1)).err(),
            Some(TokenError::UnknownToken)
        );
    }
}
