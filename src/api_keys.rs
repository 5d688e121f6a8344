//! The API-key service: creates, lists and revokes keys, and verifies a presented key
//! without a database query per request.
//!
//! Every replica keeps the active keys (by hash) in memory and reloads them every
//! `RELOAD_INTERVAL`, so a key revoked anywhere stops working everywhere within that
//! interval. A key not yet in memory (just created on another replica) is looked up once;
//! an unknown one is remembered as such for the same interval. Lookups are bounded to
//! `LOOKUPS_PER_SECOND` across all callers, so guessing many distinct keys costs at most
//! that many queries a second; beyond it a key not in memory is refused unread, and a
//! key just created elsewhere works at the next reload. While the database is down, the
//! keys already loaded keep working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::domain::{ApiKey, ApiKeyHash, ApiKeyId, ApiKeyName, ApiKeyToken, PresentedKey, Scope};
use crate::store::{Store, StoreError};

/// Bounds how long a revoked key keeps working on another replica (the contract says 5 s).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How many unknown keys are remembered before the memory starts over.
const UNKNOWN_KEYS_REMEMBERED: usize = 10_000;
/// Database lookups of keys not in memory, per second, across all callers (a token
/// bucket holding at most one second's worth).
pub const LOOKUPS_PER_SECOND: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The presented key is not an active key.
    #[error("unknown API key")]
    UnknownKey,
    /// No key has this id.
    #[error("API key not found")]
    NotFound,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ApiKeyError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

#[derive(Clone)]
pub struct ApiKeys {
    store: Store,
    /// Shared, not cloned, with each request that presents them: a key has strings.
    active: Arc<RwLock<HashMap<ApiKeyHash, Arc<ApiKey>>>>,
    /// Keys the database did not know, and when it said so.
    unknown: Arc<Mutex<HashMap<ApiKeyHash, Instant>>>,
    lookups: Arc<Mutex<LookupBudget>>,
    /// Keys created by this replica, and when by its own clock: kept through a reload
    /// whose query may predate them.
    created_here: Arc<Mutex<HashMap<ApiKeyHash, (ApiKey, Instant)>>>,
}

/// A token bucket: `LOOKUPS_PER_SECOND` a second, at most that many at once.
struct LookupBudget {
    tokens: f64,
    refilled_at: Instant,
}

impl LookupBudget {
    fn new() -> Self {
        Self {
            tokens: f64::from(LOOKUPS_PER_SECOND),
            refilled_at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let rate = f64::from(LOOKUPS_PER_SECOND);
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What became of `REGISTRY_BOOTSTRAP_ADMIN_KEY` at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapKey {
    Active(ApiKeyId),
    /// Revoked through the API or the CLI; not revived.
    Revoked(ApiKeyId),
}

/// A new key: the stored description plus the plaintext, shown once.
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub token: ApiKeyToken,
}

impl ApiKeys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            active: Arc::default(),
            unknown: Arc::default(),
            lookups: Arc::new(Mutex::new(LookupBudget::new())),
            created_here: Arc::default(),
        }
    }

    /// Who presented `token`. Hashes are compared in constant time (see `ApiKeyHash`).
    pub async fn verify(&self, token: &PresentedKey<'_>) -> Result<Arc<ApiKey>, ApiKeyError> {
        let hash = token.hash();
        if let Some(key) = self.read().get(&hash) {
            return Ok(key.clone());
        }
        let recently_unknown = self
            .unknown()
            .get(&hash)
            .is_some_and(|at| at.elapsed() < RELOAD_INTERVAL);
        if recently_unknown {
            return Err(ApiKeyError::UnknownKey);
        }
        let within_budget = self
            .lookups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if !within_budget {
            metrics::counter!("registry_api_key_lookups_total", "result" => "throttled")
                .increment(1);
            return Err(ApiKeyError::UnknownKey);
        }
        let found = self.store.find_active_api_key(hash).await?;
        let result = if found.is_some() { "found" } else { "unknown" };
        metrics::counter!("registry_api_key_lookups_total", "result" => result).increment(1);
        let Some(key) = found else {
            let mut unknown = self.unknown();
            if unknown.len() >= UNKNOWN_KEYS_REMEMBERED {
                unknown.clear();
            }
            unknown.insert(hash, Instant::now());
            return Err(ApiKeyError::UnknownKey);
        };
        let key = Arc::new(key);
        self.write().insert(hash, key.clone());
        Ok(key)
    }

    /// Replaces the in-memory keys with the database's; called every `RELOAD_INTERVAL`.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let loaded: HashMap<_, _> = self.store.active_api_keys().await?.into_iter().collect();
        let mut created_here = self.created_here();
        created_here.retain(|_, (_, at)| at.elapsed() < RELOAD_INTERVAL);
        *self.write() = merged(loaded, &created_here);
        Ok(())
    }

    /// Reloads forever; a failed reload keeps the keys already known.
    pub async fn reload_periodically(self) {
        let mut interval = tokio::time::interval(RELOAD_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(err) = self.reload().await {
                tracing::debug!(error = %err, "could not reload API keys; keeping the known ones");
            }
        }
    }

    pub async fn create(
        &self,
        name: ApiKeyName,
        scopes: Vec<Scope>,
    ) -> Result<CreatedApiKey, StoreError> {
        let token = ApiKeyToken::generate();
        let key = describe(&token, name, scopes);
        self.store.insert_api_key(&key, token.hash()).await?;
        self.created_here()
            .insert(token.hash(), (key.clone(), Instant::now()));
        self.write().insert(token.hash(), Arc::new(key.clone()));
        Ok(CreatedApiKey { key, token })
    }

    /// Stores the operator's `REGISTRY_BOOTSTRAP_ADMIN_KEY` as an admin key, the first
    /// time it is seen. Once revoked it stays revoked, whatever later starts say.
    pub async fn provision_bootstrap_admin(
        &self,
        token: &ApiKeyToken,
    ) -> Result<BootstrapKey, StoreError> {
        let name = ApiKeyName::parse("bootstrap admin").expect("a valid constant name");
        let key = describe(token, name, vec![Scope::Admin]);
        let (id, revoked) = self.store.insert_api_key_once(&key, token.hash()).await?;
        Ok(if revoked {
            BootstrapKey::Revoked(id)
        } else {
            BootstrapKey::Active(id)
        })
    }

    pub async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        let keys = self.store.active_api_keys().await?;
        Ok(keys.into_iter().map(|(_, key)| key).collect())
    }

    /// Revokes in the database, and at once in this replica's memory.
    pub async fn revoke(&self, id: ApiKeyId) -> Result<(), ApiKeyError> {
        self.store.revoke_api_key(id).await?;
        self.created_here().retain(|_, (key, _)| key.id != id);
        self.write().retain(|_, key| key.id != id);
        Ok(())
    }

    fn created_here(&self) -> std::sync::MutexGuard<'_, HashMap<ApiKeyHash, (ApiKey, Instant)>> {
        self.created_here
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, HashMap<ApiKeyHash, Instant>> {
        self.unknown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ApiKeyHash, Arc<ApiKey>>> {
        self.active
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ApiKeyHash, Arc<ApiKey>>> {
        self.active
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The database's keys, plus the keys this replica created within the last reload
/// interval (by its own clock), which the reload's query may have missed: else such a
/// key would need a database lookup until the next reload, and fail while the database
/// is down. A key revoked on another replica in that window works one interval longer:
/// at most twice the interval in all.
fn merged(
    loaded: HashMap<ApiKeyHash, ApiKey>,
    created_here: &HashMap<ApiKeyHash, (ApiKey, Instant)>,
) -> HashMap<ApiKeyHash, Arc<ApiKey>> {
    let mut keys: HashMap<_, _> = loaded
        .into_iter()
        .map(|(hash, key)| (hash, Arc::new(key)))
        .collect();
    for (hash, (key, _)) in created_here {
        keys.entry(*hash).or_insert_with(|| Arc::new(key.clone()));
    }
    keys
}

fn describe(token: &ApiKeyToken, name: ApiKeyName, scopes: Vec<Scope>) -> ApiKey {
    ApiKey {
        id: ApiKeyId::generate(),
        name,
        scopes,
        prefix: token.display_prefix(),
        created_at: crate::domain::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (ApiKeyHash, ApiKey) {
        let token = ApiKeyToken::generate();
        let key = describe(
            &token,
            ApiKeyName::parse("test").unwrap(),
            vec![Scope::TokensRead],
        );
        (token.hash(), key)
    }

    /// A reload whose query ran while a key was created here used to drop that key from
    /// memory: with the database then down, the key was refused (503) until it was back.
    #[test]
    fn a_reload_keeps_keys_created_while_it_ran() {
        let (in_db, in_db_key) = key();
        let (just_made, just_made_key) = key();
        let (gone, _) = key();
        let loaded = HashMap::from([(in_db, in_db_key)]);
        let created_here = HashMap::from([(just_made, (just_made_key, Instant::now()))]);
        let merged = merged(loaded, &created_here);
        assert!(merged.contains_key(&in_db));
        assert!(
            merged.contains_key(&just_made),
            "too new for the reload's query"
        );
        assert!(!merged.contains_key(&gone), "neither loaded nor made here");
        assert_eq!(merged.len(), 2);
    }
}
