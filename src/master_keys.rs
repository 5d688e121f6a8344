//! The master keys' lifecycle: the start-up check, `keys status` and `keys rewrap`.
//!
//! Rotating a key, with replicas serving throughout (README, "Rotate the master key"):
//! add the new key after the current one everywhere (every replica can then open what
//! it seals), move it first (new secrets are sealed with it), run `keys rewrap` (every
//! stored ciphertext is sealed again with it), then remove the old key. The start-up
//! check refuses a configuration that lacks a key still sealing something here. A key's
//! check is never deleted, even once the key is removed: a key id, once used here,
//! always means the same bytes, and `keys status` always lists it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::crypto::{CryptoError, Field, Keyring, Sealed};
use crate::domain::ConnectionId;
use crate::store::{
    KeyCheck, SealedConnection, SealedGrantless, Store, StoreError, grantless_owner,
};

/// The text each master key seals once, into `key_checks`.
const KEY_CHECK_TEXT: &str = "connection-registry master key check";

/// Passes over the connections before a rewrap gives up on rows that keep changing.
const REWRAP_PASSES: usize = 5;

/// Each master key seals a known text once; at start-up each configured key must open its
/// own, and every key that still seals something here must be configured.
///
/// A check this replica adds is read back and verified: another replica starting at the
/// same moment with other bytes under the same key id may have stored its check first,
/// and then one of the two must not start.
pub async fn verify_at_startup(store: &Store, keyring: &Keyring) -> anyhow::Result<()> {
    let checks = store.key_checks().await.context("cannot read key checks")?;
    for check in &checks {
        if keyring.key_ids().any(|id| id == check.key_id) {
            continue;
        }
        let in_use = store
            .count_sealed_with(&check.key_id)
            .await
            .context("cannot count what each master key encrypts")?;
        if in_use > 0 {
            anyhow::bail!(
                "REGISTRY_MASTER_KEYS: {in_use} stored secrets are encrypted with key `{}`, \
                 which is not configured; add it back after the current key, and remove it \
                 only once `connection-registry keys rewrap` has re-encrypted them",
                check.key_id
            );
        }
        // Its check stays: should the key id come back, it must be the same key.
    }
    verify_key_checks(
        &checks,
        keyring,
        "is not the key that encrypted this database",
    )?;
    let mut added = false;
    for key_id in keyring.key_ids() {
        if !checks.iter().any(|check| check.key_id == key_id) {
            let sealed = keyring
                .seal_with_key(
                    key_id,
                    &check_owner(key_id),
                    Field::KeyCheck,
                    KEY_CHECK_TEXT,
                )
                .expect("the key id comes from the keyring");
            let check = KeyCheck {
                key_id: key_id.to_owned(),
                sealed,
            };
            store
                .insert_key_check(&check)
                .await
                .context("cannot store key check")?;
            added = true;
        }
    }
    if added {
        let checks = store.key_checks().await.context("cannot read key checks")?;
        verify_key_checks(
            &checks,
            keyring,
            "differs from the key another replica, starting at the same time, stored under \
             this id; every replica must be given the same keys",
        )?;
    }
    Ok(())
}

fn check_owner(key_id: &str) -> String {
    format!("key-check:{key_id}")
}

/// Every stored check of a configured key opens its text; `mismatch` says what it means
/// when one does not.
fn verify_key_checks(checks: &[KeyCheck], keyring: &Keyring, mismatch: &str) -> anyhow::Result<()> {
    for check in checks {
        if !keyring.key_ids().any(|id| id == check.key_id) {
            continue;
        }
        let opened = keyring
            .open(&check_owner(&check.key_id), Field::KeyCheck, &check.sealed)
            .ok();
        if opened.as_ref().map(|text| text.expose_secret()) != Some(KEY_CHECK_TEXT) {
            anyhow::bail!("REGISTRY_MASTER_KEYS: key `{}` {mismatch}", check.key_id);
        }
    }
    Ok(())
}

/// One key as `keys status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    pub key_id: String,
    pub configured: bool,
    /// Seals new secrets (the first configured key).
    pub primary: bool,
    /// Stored ciphertexts this key made.
    pub ciphertexts: u64,
}

impl KeyStatus {
    /// Configured, not sealing new secrets, and sealing nothing stored: can be removed.
    pub fn removable(&self) -> bool {
        self.configured && !self.primary && self.ciphertexts == 0
    }
}

/// Every configured key and every key that sealed something here, with what it sealed.
pub async fn status(store: &Store, keyring: &Keyring) -> Result<Vec<KeyStatus>, StoreError> {
    let mut key_ids: Vec<String> = keyring.key_ids().map(str::to_owned).collect();
    for check in store.key_checks().await? {
        if !key_ids.contains(&check.key_id) {
            key_ids.push(check.key_id);
        }
    }
    // One snapshot: during a rewrap, each ciphertext is counted under one key.
    let ids: Vec<&str> = key_ids.iter().map(String::as_str).collect();
    let counts = store.count_sealed_by_key(&ids).await?;
    let report = key_ids
        .iter()
        .zip(counts)
        .map(|(key_id, ciphertexts)| KeyStatus {
            configured: keyring.key_ids().any(|id| id == key_id),
            primary: keyring.primary_id() == key_id,
            ciphertexts,
            key_id: key_id.clone(),
        })
        .collect();
    Ok(report)
}

/// How a rewrap goes: ciphertexts sealed again so far, of how many there were to do.
#[derive(Debug, Clone, Copy)]
pub struct RewrapProgress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Default)]
pub struct RewrapReport {
    pub rewrapped: u64,
    /// What could not be opened (and so still needs its old key), and why.
    pub unreadable: Vec<String>,
}

/// How a rewrap paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RewrapSettings {
    pub batch_size: u32,
    /// A pause after each batch, to spare a busy database.
    pub pause: Duration,
    /// The most of its time the rewrap spends working (1–100): after each batch it rests
    /// in proportion to how long the batch took, so it yields to the replicas in step
    /// with how loaded the machine and the database are.
    pub busy_percent: u8,
}

impl RewrapSettings {
    /// How long to rest after a batch that took `worked`.
    fn rest_after(&self, worked: Duration) -> Duration {
        let busy = u32::from(self.busy_percent.clamp(1, 100));
        worked * (100 - busy) / busy + self.pause
    }
}

/// Seals every stored ciphertext that another key made again with the primary key,
/// batch by batch, each batch its own short transaction. Rows that change meanwhile are
/// left to their writer and looked at again in another pass. Stopping at any point (even
/// `kill -9`) leaves every row readable, and running it again carries on where it
/// stopped: what is already sealed with the primary key is not selected. Run twice, the
/// second run does nothing.
pub async fn rewrap(
    store: &Store,
    keyring: &Keyring,
    settings: RewrapSettings,
    mut on_progress: impl FnMut(RewrapProgress),
) -> anyhow::Result<RewrapReport> {
    let primary = keyring.primary_id().to_owned();
    // Two counts while replicas write: the difference is an estimate, for progress only.
    let total = store
        .count_sealed()
        .await?
        .saturating_sub(store.count_sealed_with(&primary).await?);
    let mut report = RewrapReport::default();
    on_progress(RewrapProgress { done: 0, total });
    let mut unreadable: HashSet<ConnectionId> = HashSet::new();
    let mut settled = false;
    for _ in 0..REWRAP_PASSES {
        let mut changed_meanwhile = 0;
        let mut after = None;
        loop {
            let batch_started = std::time::Instant::now();
            let batch = store
                .connections_not_sealed_with(&primary, after, settings.batch_size)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id);
            let mut resealed = Vec::new();
            let mut counts = Vec::new();
            for row in &batch {
                if unreadable.contains(&row.id) {
                    continue;
                }
                match reseal_connection(keyring, row) {
                    Ok((new, count)) => {
                        resealed.push(new);
                        counts.push(count);
                    }
                    Err(err) => {
                        unreadable.insert(row.id);
                        report
                            .unreadable
                            .push(format!("connection {}: {err}", row.id));
                    }
                }
            }
            let written = store.write_rewrapped_connections(&resealed).await?;
            for (count, was_written) in counts.iter().zip(&written) {
                if *was_written {
                    report.rewrapped += count;
                } else {
                    changed_meanwhile += 1;
                }
            }
            on_progress(RewrapProgress {
                done: report.rewrapped,
                total,
            });
            let rest = settings.rest_after(batch_started.elapsed());
            if !rest.is_zero() {
                tokio::time::sleep(rest).await;
            }
        }
        if changed_meanwhile == 0 {
            settled = true;
            break;
        }
        tracing::info!(
            changed_meanwhile,
            "connections changed during the rewrap; another pass"
        );
    }
    if !settled {
        anyhow::bail!(
            "connections kept changing during {REWRAP_PASSES} passes; run `keys rewrap` again"
        );
    }
    for token in store.grantless_not_sealed_with(&primary).await? {
        match reseal_grantless(keyring, &token) {
            // A fetch that stored a new token meanwhile sealed it with the primary key.
            Ok(new) => {
                if store
                    .write_rewrapped_grantless(&new, &token.access_token)
                    .await?
                {
                    report.rewrapped += 1;
                }
            }
            Err(err) => report.unreadable.push(format!(
                "grantless token of {} ({}): {err}",
                token.client_id, token.scope
            )),
        }
        on_progress(RewrapProgress {
            done: report.rewrapped,
            total,
        });
    }
    Ok(report)
}

/// The row with each ciphertext another key made sealed again, and how many those were.
fn reseal_connection(
    keyring: &Keyring,
    row: &SealedConnection,
) -> Result<(SealedConnection, u64), CryptoError> {
    let owner = row.id.to_string();
    let mut count = 0;
    let mut reseal = |field, sealed: &Sealed| -> Result<Sealed, CryptoError> {
        if sealed.key_id() == Some(keyring.primary_id()) {
            return Ok(sealed.clone());
        }
        let plaintext = keyring.open(&owner, field, sealed)?;
        count += 1;
        Ok(keyring.seal(&owner, field, plaintext.expose_secret()))
    };
    let new = SealedConnection {
        id: row.id,
        version: row.version,
        client_secret: reseal(Field::ClientSecret, &row.client_secret)?,
        refresh_token: reseal(Field::RefreshToken, &row.refresh_token)?,
        access_token: row
            .access_token
            .as_ref()
            .map(|sealed| reseal(Field::AccessToken, sealed))
            .transpose()?,
        previous_client_secret: row
            .previous_client_secret
            .as_ref()
            .map(|sealed| reseal(Field::ClientSecret, sealed))
            .transpose()?,
    };
    Ok((new, count))
}

fn reseal_grantless(
    keyring: &Keyring,
    token: &SealedGrantless,
) -> Result<SealedGrantless, CryptoError> {
    let owner = grantless_owner(&token.client_id, &token.scope, &token.secret_fingerprint);
    let plaintext = keyring.open(&owner, Field::AccessToken, &token.access_token)?;
    Ok(SealedGrantless {
        access_token: keyring.seal(&owner, Field::AccessToken, plaintext.expose_secret()),
        ..token.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(busy_percent: u8, pause_ms: u64) -> RewrapSettings {
        RewrapSettings {
            batch_size: 500,
            pause: Duration::from_millis(pause_ms),
            busy_percent,
        }
    }

    #[test]
    fn a_rewrap_rests_in_proportion_to_the_work_of_its_last_batch() {
        let worked = Duration::from_millis(120);
        assert_eq!(settings(50, 0).rest_after(worked), worked);
        assert_eq!(settings(25, 0).rest_after(worked), worked * 3);
        assert_eq!(settings(100, 0).rest_after(worked), Duration::ZERO);
        // The fixed pause comes on top.
        assert_eq!(
            settings(50, 30).rest_after(worked),
            worked + Duration::from_millis(30)
        );
        assert_eq!(
            settings(100, 30).rest_after(worked),
            Duration::from_millis(30)
        );
    }
}
