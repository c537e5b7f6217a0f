//! Which model serves an entity: the champion, or the challenger for the canary share of
//! entities, sticky per entity by the same hash the Python service uses
//! (`models.canary_bucket`), so an entity stays on its side whichever path serves it. In shadow
//! mode the champion serves every entity and the challenger is scored beside it.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Score the challenger on every call, log it, never return it.
    pub shadow: bool,
    /// Share of entities the challenger serves, in [0, 1].
    pub canary_share: f64,
}

/// A stable number in [0, 1) per (model, entity): BLAKE2b with an 8-byte digest of
/// `{model}\0{entity}`, big-endian, over 2^64. An entity is in the canary while its number is
/// below the share, so raising the share only ever adds entities.
pub fn canary_bucket(model_name: &str, entity_id: &str) -> f64 {
    let mut hash = Blake2bVar::new(8).expect("8 bytes is a BLAKE2b digest size");
    hash.update(model_name.as_bytes());
    hash.update(&[0]);
    hash.update(entity_id.as_bytes());
    let mut digest = [0u8; 8];
    hash.finalize_variable(&mut digest)
        .expect("the buffer is the digest's size");
    u64::from_be_bytes(digest) as f64 / 2f64.powi(64)
}

impl Routing {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.canary_share) {
            return Err(format!(
                "canary_share {} is not within [0, 1]",
                self.canary_share
            ));
        }
        if self.shadow && self.canary_share > 0.0 {
            return Err("choose shadow or canary, not both".into());
        }
        Ok(())
    }

    /// For each entity, whether the challenger serves it; `None` when the champion serves them
    /// all (no challenger loaded, shadow mode, no canary, or no entity of the call in it).
    pub fn canary(&self, model_name: &str, ids: &[&str], challenger: bool) -> Option<Vec<bool>> {
        if !challenger || self.shadow || self.canary_share <= 0.0 {
            return None;
        }
        let flags: Vec<bool> = ids
            .iter()
            .map(|id| canary_bucket(model_name, id) < self.canary_share)
            .collect();
        flags.iter().any(|&f| f).then_some(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_python_services() {
        // `driftline.services.inference.models.canary_bucket("fraud", ...)`.
        assert_eq!(canary_bucket("fraud", "card-1"), 0.9130650648604);
        assert_eq!(canary_bucket("fraud", "card-2"), 0.09573889232622039);
        assert_eq!(canary_bucket("fraud", "x"), 0.20583600483822778);
    }

    #[test]
    fn the_canary_takes_entities_below_the_share_and_only_with_a_challenger() {
        let canary = Routing {
            shadow: false,
            canary_share: 0.5,
        };
        let ids = ["card-1", "card-2", "x"];
        assert_eq!(
            canary.canary("fraud", &ids, true),
            Some(vec![false, true, true])
        );
        assert_eq!(canary.canary("fraud", &ids, false), None);
        assert_eq!(canary.canary("fraud", &["card-1"], true), None);
        let shadow = Routing {
            shadow: true,
            canary_share: 0.0,
        };
        assert_eq!(shadow.canary("fraud", &ids, true), None);
    }

    #[test]
    fn shares_outside_the_unit_interval_and_shadow_with_canary_are_refused() {
        assert!(Routing {
            shadow: false,
            canary_share: 1.5
        }
        .check()
        .is_err());
        assert!(Routing {
            shadow: true,
            canary_share: 0.1
        }
        .check()
        .is_err());
        assert!(Routing {
            shadow: true,
            canary_share: 0.0
        }
        .check()
        .is_ok());
    }
}
