//! What the gateway knows about devices: ids, board, firmware, when they were last seen and
//! whether they are activated. Kept in memory here; the conversation store persists the same
//! records (the `devices` table) once it exists.

use std::time::SystemTime;

use dashmap::DashMap;

/// One device as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub client_id: Option<String>,
    pub board: Option<String>,
    pub firmware_version: Option<String>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Set once an operator approved the device's activation code.
    pub activated: bool,
    /// The six-digit code shown while activation is pending.
    pub activation_code: Option<String>,
}

/// What one sighting (an OTA call or a hello) tells about a device.
#[derive(Debug, Clone, Default)]
pub struct Sighting<'a> {
    pub client_id: Option<&'a str>,
    pub board: Option<&'a str>,
    pub firmware_version: Option<&'a str>,
}

/// All devices seen by this process.
#[derive(Default)]
pub struct DeviceRegistry {
    devices: DashMap<String, DeviceRecord>,
}

impl DeviceRegistry {
    /// Records a sighting and returns the updated record.
    pub fn seen(&self, device_id: &str, s: Sighting<'_>) -> DeviceRecord {
        let now = SystemTime::now();
        let mut entry = self.devices.entry(device_id.to_owned()).or_insert_with(|| DeviceRecord {
            device_id: device_id.to_owned(),
            client_id: None,
            board: None,
            firmware_version: None,
            first_seen: now,
            last_seen: now,
            activated: false,
            activation_code: None,
        });
        let rec = entry.value_mut();
        rec.last_seen = now;
        if let Some(c) = s.client_id {
            rec.client_id = Some(c.to_owned());
        }
        if let Some(b) = s.board {
            rec.board = Some(b.to_owned());
        }
        if let Some(f) = s.firmware_version {
            rec.firmware_version = Some(f.to_owned());
        }
        rec.clone()
    }

    pub fn get(&self, device_id: &str) -> Option<DeviceRecord> {
        self.devices.get(device_id).map(|r| r.clone())
    }

    /// Returns the pending activation code, creating one on first use.
    pub fn activation_code(&self, device_id: &str) -> Option<String> {
        let mut rec = self.devices.get_mut(device_id)?;
        if rec.activated {
            return None;
        }
        let code = rec.activation_code.get_or_insert_with(|| {
            let n = uuid::Uuid::new_v4().as_u128() % 1_000_000;
            format!("{n:06}")
        });
        Some(code.clone())
    }

    /// Marks a device activated (operator approval). Returns false for an unknown device.
    pub fn activate(&self, device_id: &str) -> bool {
        match self.devices.get_mut(device_id) {
            Some(mut rec) => {
                rec.activated = true;
                rec.activation_code = None;
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}
