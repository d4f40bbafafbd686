//! Keys for encryption at rest.
//!
//! Hierarchy: a master key kept outside the database (environment or key file)
//! wraps two system keys stored in the `keyring` table: the key-encryption key
//! (KEK), which wraps one data key per customer (`data_keys`), and the index
//! key, which turns identifiers into keyed-hash lookup tokens. Rotating the
//! master key re-wraps the two system keys only, so it is instant and running
//! servers (which hold the unwrapped KEK) never stop. Destroying a customer's
//! data key makes every value sealed with it unreadable, wherever a copy lies
//! (crypto-shredding).
//!
//! Sealed values are self-describing: `version (1) | owner customer id (16) |
//! nonce (12) | AES-256-GCM ciphertext and tag`, the header authenticated as
//! associated data, so a value cannot be moved to another customer unnoticed.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, KeyInit as HmacKeyInit, Mac};
use rand::RngCore;
use relais_domain::{CustomerId, Identifier};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Version byte of sealed values.
const SEALED_V1: u8 = 1;
/// Length of a sealed value's header: version, owner, nonce.
const HEADER: usize = 1 + 16 + 12;
/// Data keys kept unwrapped in memory (about 50 bytes each).
const CACHE_CAPACITY: usize = 200_000;

/// Why keys are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No master key configured where one is required.
    #[error("no master key: set RELAIS_MASTER_KEY (base64 of 32 bytes) or RELAIS_MASTER_KEY_FILE; `relais keys new-master` prints a new one")]
    Missing,
    /// The configured key is malformed.
    #[error("the master key in {0} is not base64 of 32 bytes; `relais keys new-master` prints a valid one")]
    Malformed(String),
    /// The key file cannot be read or written.
    #[error("cannot use the master key file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The master key is not the one the database was sealed with.
    #[error("the master key (fingerprint {given}) is not the one this database was sealed with (fingerprint {stored}); set RELAIS_MASTER_KEY or RELAIS_MASTER_KEY_FILE to the key in use when the data was written (after `relais keys rotate-master`, the new one). relais will not start, so nothing is written with the wrong key")]
    WrongMaster {
        /// Fingerprint of the configured key.
        given: String,
        /// Fingerprint stored in the database.
        stored: String,
    },
    /// A wrapped key or sealed value does not decrypt.
    #[error("a {0} does not decrypt: it was altered, or its key was destroyed")]
    Undecryptable(&'static str),
    /// A customer has no data key (erased).
    #[error("the data key of {0} is gone (the person was erased)")]
    Shredded(CustomerId),
}

/// 32 secret bytes, wiped from memory when dropped.
type Secret32 = Zeroizing<[u8; 32]>;

fn random_secret() -> Secret32 {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(bytes.as_mut());
    bytes
}

/// The master key: never stored in the database, never printed.
#[derive(Clone)]
pub struct MasterKey(Secret32);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(fingerprint {})", self.fingerprint())
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> MasterKey {
        MasterKey(random_secret())
    }

    /// Parse the base64 form (`where` names the source in errors).
    pub fn parse(text: &str, source: &str) -> Result<MasterKey, KeyError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Malformed(source.to_string()))?,
        );
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| KeyError::Malformed(source.to_string()))?;
        Ok(MasterKey(Zeroizing::new(bytes)))
    }

    /// The base64 form, for `relais keys new-master` only.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.as_ref())
    }

    /// A short public digest that tells keys apart without revealing them.
    pub fn fingerprint(&self) -> String {
        hex::encode(&keyed_hash(self.0.as_ref(), b"relais master key fingerprint")[..8])
    }

    /// The key from `RELAIS_MASTER_KEY` or the file named by
    /// `RELAIS_MASTER_KEY_FILE`; else, when `default_file` is given (the SQLite
    /// data folder's `master.key`), that file, created on first use.
    pub fn from_env(default_file: Option<&Path>) -> Result<MasterKey, KeyError> {
        if let Ok(text) = std::env::var("RELAIS_MASTER_KEY") {
            return MasterKey::parse(&text, "RELAIS_MASTER_KEY");
        }
        if let Ok(path) = std::env::var("RELAIS_MASTER_KEY_FILE") {
            return MasterKey::from_file(Path::new(&path), false);
        }
        match default_file {
            Some(path) => MasterKey::from_file(path, true),
            None => Err(KeyError::Missing),
        }
    }

    /// Read a key file; with `create`, write a new key there when it is absent
    /// (readable by the owner only).
    pub fn from_file(path: &Path, create: bool) -> Result<MasterKey, KeyError> {
        let file_error = |reason: String| KeyError::File { path: path.display().to_string(), reason };
        match std::fs::read_to_string(path) {
            Ok(text) => MasterKey::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = MasterKey::generate();
                // Written aside, then linked into place: processes starting together
                // on a new folder agree on the one key that was linked first.
                let aside = path.with_extension(format!("key.{}", ulid::Ulid::new()));
                write_private(&aside, &key.encode()).map_err(|e| file_error(e.to_string()))?;
                let linked = std::fs::hard_link(&aside, path);
                let _ = std::fs::remove_file(&aside);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return MasterKey::from_file(path, false);
                    }
                    Err(e) => return Err(file_error(e.to_string())),
                }
                tracing::warn!(
                    file = %path.display(),
                    "created a new master key; keep a copy outside the data folder, and move it out for production (RELAIS_MASTER_KEY_FILE)"
                );
                Ok(key)
            }
            Err(e) => Err(file_error(e.to_string())),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key")
    }
}

/// Write a file only its owner may read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn keyed_hash(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Encrypt `secret` under `cipher`, binding it to `label`.
fn wrap(cipher: &Aes256Gcm, label: &[u8], secret: &[u8; 32]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad: label })
        .expect("AES-GCM encryption of 32 bytes cannot fail");
    out.extend_from_slice(&sealed);
    out
}

fn unwrap(cipher: &Aes256Gcm, label: &[u8], wrapped: &[u8], what: &'static str) -> Result<Secret32, KeyError> {
    if wrapped.len() < 12 {
        return Err(KeyError::Undecryptable(what));
    }
    let (nonce, body) = wrapped.split_at(12);
    let plain = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: label })
            .map_err(|_| KeyError::Undecryptable(what))?,
    );
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| KeyError::Undecryptable(what))?;
    Ok(Zeroizing::new(bytes))
}

/// The system keys: the key-encryption key (wraps data keys), the index key
/// (lookup tokens), the audit key (the audit log's hash chain) and the signing
/// key (links sent to people: double opt-in, unsubscribe).
pub const SYSTEM_KEYS: [&str; 4] = ["kek", "index", "audit", "signing"];

/// The system keys as stored: each wrapped by the master key, with the master's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyring {
    /// Each system key by name, wrapped.
    pub wrapped: Vec<(String, Vec<u8>)>,
    /// Fingerprint of the master key that wraps them.
    pub master_fingerprint: String,
}

impl StoredKeyring {
    /// The wrapped key of a name.
    fn get(&self, name: &str) -> Result<&[u8], KeyError> {
        self.wrapped
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.as_slice())
            .ok_or(KeyError::Undecryptable("keyring (a system key is missing)"))
    }
}

fn label(name: &str) -> Vec<u8> {
    format!("relais {name}").into_bytes()
}

/// A customer's data key.
#[derive(Clone)]
pub struct DataKey(Secret32);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    /// Seal `plain` as a value of `owner`.
    pub fn seal(&self, owner: CustomerId, plain: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key");
        let mut out = Vec::with_capacity(HEADER + plain.len() + 16);
        out.push(SEALED_V1);
        out.extend_from_slice(&owner.to_bytes());
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &out[..1 + 16] })
            .expect("AES-GCM encryption cannot fail for values under 64 GB");
        out.extend_from_slice(&sealed);
        out
    }

    /// Open a value sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < HEADER + 16 || sealed[0] != SEALED_V1 {
            return Err(KeyError::Undecryptable("sealed value"));
        }
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key");
        cipher
            .decrypt(Nonce::from_slice(&sealed[17..HEADER]), Payload { msg: &sealed[HEADER..], aad: &sealed[..17] })
            .map_err(|_| KeyError::Undecryptable("sealed value"))
    }
}

/// The customer whose data key sealed a value, read from its header.
pub fn sealed_owner(sealed: &[u8]) -> Result<CustomerId, KeyError> {
    if sealed.len() < HEADER || sealed[0] != SEALED_V1 {
        return Err(KeyError::Undecryptable("sealed value"));
    }
    let bytes: [u8; 16] = sealed[1..17].try_into().expect("16 bytes");
    Ok(CustomerId::from_bytes(bytes))
}

/// The unwrapped system keys and a cache of customers' data keys.
pub struct Keyring {
    kek: Aes256Gcm,
    index: Secret32,
    audit: Secret32,
    signing: Secret32,
    cache: Mutex<lru::LruCache<CustomerId, DataKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring([redacted])")
    }
}

impl Keyring {
    /// Make new system keys, wrapped by `master`, for a new database.
    pub fn create(master: &MasterKey) -> (Keyring, StoredKeyring) {
        let secrets: Vec<Secret32> = SYSTEM_KEYS.iter().map(|_| random_secret()).collect();
        let stored = Keyring::wrap_all(master, &secrets);
        let [kek, index, audit, signing]: [Secret32; 4] = secrets.try_into().expect("four system keys");
        (Keyring::from_parts(&kek, index, audit, signing), stored)
    }

    fn unwrap_all(master: &MasterKey, stored: &StoredKeyring) -> Result<Vec<Secret32>, KeyError> {
        let cipher = master.cipher();
        SYSTEM_KEYS.iter().map(|name| unwrap(&cipher, &label(name), stored.get(name)?, "system key")).collect()
    }

    /// Unwrap stored system keys with `master`; a different master key is refused.
    pub fn open(master: &MasterKey, stored: &StoredKeyring) -> Result<Keyring, KeyError> {
        if master.fingerprint() != stored.master_fingerprint {
            return Err(KeyError::WrongMaster {
                given: master.fingerprint(),
                stored: stored.master_fingerprint.clone(),
            });
        }
        let [kek, index, audit, signing]: [Secret32; 4] =
            Keyring::unwrap_all(master, stored)?.try_into().map_err(|_| KeyError::Undecryptable("keyring"))?;
        Ok(Keyring::from_parts(&kek, index, audit, signing))
    }

    /// Re-wrap stored system keys from `old` to `new` (master key rotation).
    pub fn rewrap(stored: &StoredKeyring, old: &MasterKey, new: &MasterKey) -> Result<StoredKeyring, KeyError> {
        Keyring::open(old, stored)?;
        Ok(Keyring::wrap_all(new, &Keyring::unwrap_all(old, stored)?))
    }

    /// The system keys (in `SYSTEM_KEYS` order) wrapped by `master`.
    fn wrap_all(master: &MasterKey, secrets: &[Secret32]) -> StoredKeyring {
        let cipher = master.cipher();
        StoredKeyring {
            wrapped: SYSTEM_KEYS
                .iter()
                .zip(secrets)
                .map(|(name, secret)| (name.to_string(), wrap(&cipher, &label(name), secret)))
                .collect(),
            master_fingerprint: master.fingerprint(),
        }
    }

    fn from_parts(kek: &[u8; 32], index: Secret32, audit: Secret32, signing: Secret32) -> Keyring {
        Keyring {
            kek: Aes256Gcm::new_from_slice(kek).expect("32-byte key"),
            index,
            audit,
            signing,
            cache: Mutex::new(lru::LruCache::new(NonZeroUsize::new(CACHE_CAPACITY).expect("non-zero"))),
        }
    }

    /// The signature (HMAC-SHA256) of a link sent to a person.
    pub fn sign(&self, bytes: &[u8]) -> [u8; 32] {
        keyed_hash(self.signing.as_ref(), bytes)
    }

    /// Whether `signature` is `bytes`' signature (compared in constant time).
    pub fn verify_signature(&self, bytes: &[u8], signature: &[u8]) -> bool {
        let mut mac = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(self.signing.as_ref()).expect("any key length");
        mac.update(bytes);
        mac.verify_slice(signature).is_ok()
    }

    /// The keyed hash (HMAC-SHA256) of the audit log's chain.
    pub fn audit_mac(&self, bytes: &[u8]) -> [u8; 32] {
        keyed_hash(self.audit.as_ref(), bytes)
    }

    /// The lookup token that stands for an identifier in storage: its kind and a
    /// keyed hash of its normalised value (128 bits, base64url), so equal values
    /// meet without the value being stored in clear.
    pub fn token(&self, identifier: &Identifier) -> Identifier {
        let digest = keyed_hash(self.index.as_ref(), identifier.to_string().as_bytes());
        let token = format!("#{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]));
        Identifier::from_stored(identifier.kind(), token)
    }

    /// The lookup token of one word of a person's name (see `name_words`).
    pub fn name_token(&self, word: &str) -> String {
        self.lookup_token("name", word)
    }

    /// The lookup token of a secret found by exact value (a coupon code): a
    /// keyed hash, so the value itself is never stored.
    pub fn lookup_token(&self, domain: &str, value: &str) -> String {
        let digest = keyed_hash(self.index.as_ref(), format!("{domain}:{value}").as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    }

    /// A new data key for a customer, and its wrapped form to store.
    pub fn new_data_key(&self, customer: CustomerId) -> (DataKey, Vec<u8>) {
        let key = random_secret();
        let wrapped = wrap(&self.kek, &customer.to_bytes(), &key);
        let key = DataKey(key);
        self.remember(customer, key.clone());
        (key, wrapped)
    }

    /// Unwrap a customer's stored data key (and keep it in the cache).
    pub fn unwrap_data_key(&self, customer: CustomerId, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let key = DataKey(unwrap(&self.kek, &customer.to_bytes(), wrapped, "data key")?);
        self.remember(customer, key.clone());
        Ok(key)
    }

    /// A data key already unwrapped.
    pub fn cached(&self, customer: CustomerId) -> Option<DataKey> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&customer).cloned()
    }

    fn remember(&self, customer: CustomerId, key: DataKey) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(customer, key);
    }

    /// Drop a customer's key from memory (after erasure).
    pub fn forget(&self, customer: CustomerId) {
        if let Some(mut key) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).pop(&customer) {
            key.0.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name_their_owner() {
        let master = MasterKey::generate();
        let (keyring, _) = Keyring::create(&master);
        let ana = CustomerId::new();
        let (key, _) = keyring.new_data_key(ana);
        let sealed = key.seal(ana, b"ana.martin@example.fr");
        assert!(!sealed.windows(6).any(|w| w == b"martin"));
        assert_eq!(key.open(&sealed).expect("opens"), b"ana.martin@example.fr");
        assert_eq!(sealed_owner(&sealed).expect("header"), ana);
        let (other, _) = keyring.new_data_key(CustomerId::new());
        assert!(other.open(&sealed).is_err());
        let mut moved = sealed.clone();
        moved[1..17].copy_from_slice(&CustomerId::new().to_bytes());
        assert!(key.open(&moved).is_err(), "the owner is authenticated");
    }

    #[test]
    fn the_keyring_opens_with_its_master_only_and_survives_rotation() {
        let master = MasterKey::generate();
        let (keyring, stored) = Keyring::create(&master);
        let ana = CustomerId::new();
        let (key, wrapped) = keyring.new_data_key(ana);
        let sealed = key.seal(ana, b"06 12 34 56 78");
        let email: Identifier = "email:ana@example.fr".parse().expect("valid");

        assert!(matches!(Keyring::open(&MasterKey::generate(), &stored), Err(KeyError::WrongMaster { .. })));
        let new_master = MasterKey::generate();
        let rotated = Keyring::rewrap(&stored, &master, &new_master).expect("rotates");
        assert!(matches!(Keyring::open(&master, &rotated), Err(KeyError::WrongMaster { .. })));
        let reopened = Keyring::open(&new_master, &rotated).expect("opens");
        let key = reopened.unwrap_data_key(ana, &wrapped).expect("same KEK");
        assert_eq!(key.open(&sealed).expect("opens"), b"06 12 34 56 78");
        assert_eq!(reopened.token(&email), keyring.token(&email), "tokens survive rotation");
        assert_ne!(Keyring::create(&master).0.token(&email), keyring.token(&email), "tokens are keyed");
    }

    #[test]
    fn master_keys_parse_only_from_32_bytes_and_never_print() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::parse(&key.encode(), "test").expect("parses").fingerprint(), key.fingerprint());
        assert!(MasterKey::parse("c2hvcnQ=", "test").is_err());
        assert!(!format!("{key:?}").contains(&key.encode()));
    }
}
