//! Pins: versions in use by publications in flight or live, which `gc`
//! never removes.

use std::collections::HashMap;
use std::sync::Arc;

use super::{lock_pins, GoldenStore, Pins, Version};
use crate::error::Result;

/// A version kept from `gc` for as long as this handle lives.
#[derive(Debug)]
pub struct Pin {
    pins: Pins,
    key: (String, String),
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = lock_pins(&self.pins);
        if let Some(n) = pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.key);
            }
        }
    }
}

impl GoldenStore {
    fn pin_locked(
        &self,
        pins: &mut HashMap<(String, String), usize>,
        name: &str,
        version: &str,
    ) -> Pin {
        let key = (name.to_string(), version.to_string());
        *pins.entry(key.clone()).or_insert(0) += 1;
        Pin {
            pins: Arc::clone(&self.pins),
            key,
        }
    }

    /// Keep `version` of `name` from `gc` while the handle lives (whether or not it exists).
    #[cfg_attr(not(test), allow(dead_code))] // for the node: `Caches::pin`
    pub fn pin(&self, name: &str, version: &str) -> Pin {
        self.pin_locked(&mut lock_pins(&self.pins), name, version)
    }

    /// The current version, pinned: `gc` cannot remove it between this call and the
    /// pin's drop. None when nothing usable is built.
    pub fn current_pinned(&self, name: &str) -> Result<Option<(Version, Pin)>> {
        for _ in 0..3 {
            let Some(v) = self.current(name)? else {
                return Ok(None);
            };
            let mut pins = lock_pins(&self.pins);
            // gc checks pins and renames under this same lock: if the version is
            // still here now, gc will see the pin before it touches it.
            if self.path(name, &v).is_dir() {
                let pin = self.pin_locked(&mut pins, name, v.as_str());
                return Ok(Some((v, pin)));
            }
        }
        Ok(None)
    }
}
