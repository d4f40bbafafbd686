//! Throwaway databases for tests and benchmarks: a temporary SQLite folder, or a
//! fresh schema in a PostgreSQL database; removed when dropped.

use super::{IngestSettings, Location, Store, StoreError};
use crate::privacy::MasterKey;

/// A throwaway place for data, removed on drop.
pub struct Scratch {
    /// Where to open the store.
    pub location: Location,
    /// The master key of its data.
    pub master: MasterKey,
    /// Where the audit heads go (outside the database).
    pub audit_dir: std::path::PathBuf,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            // On a plain thread: the blocking PostgreSQL client cannot run inside
            // an async runtime, where tests drop their scratch databases.
            let _ = std::thread::spawn(cleanup).join();
        }
    }
}

impl Scratch {
    /// A temporary SQLite folder, or a new schema on the PostgreSQL server at `database_url`.
    pub fn new(database_url: Option<&str>, label: &str) -> Result<Scratch, StoreError> {
        let unique = format!("relais_{label}_{}", ulid::Ulid::new().to_string().to_lowercase());
        match database_url {
            None => {
                let folder = std::env::temp_dir().join(unique);
                let remove = folder.clone();
                Ok(Scratch {
                    audit_dir: folder.join("audit"),
                    location: Location::Folder(folder),
                    master: MasterKey::generate(),
                    cleanup: Some(Box::new(move || {
                        let _ = std::fs::remove_dir_all(remove);
                    })),
                })
            }
            Some(url) => {
                let mut admin = postgres::Client::connect(url, postgres::NoTls)
                    .map_err(|e| StoreError::Config(format!("cannot connect to PostgreSQL: {e}")))?;
                admin.batch_execute(&format!("CREATE SCHEMA {unique}"))?;
                let separator = if url.contains('?') { '&' } else { '?' };
                let scoped = format!("{url}{separator}options=-csearch_path%3D{unique}");
                let drop_url = url.to_string();
                let audit_dir = std::env::temp_dir().join(format!("{unique}_audit"));
                let remove_audit = audit_dir.clone();
                Ok(Scratch {
                    audit_dir,
                    location: Location::Postgres(scoped),
                    master: MasterKey::generate(),
                    cleanup: Some(Box::new(move || {
                        if let Ok(mut admin) = postgres::Client::connect(&drop_url, postgres::NoTls) {
                            let _ = admin.batch_execute(&format!("DROP SCHEMA {unique} CASCADE"));
                        }
                        let _ = std::fs::remove_dir_all(remove_audit);
                    })),
                })
            }
        }
    }

    /// Open the store here with this scratch's master key and the default data classes.
    pub fn open(&self, settings: IngestSettings) -> Result<Store, StoreError> {
        Store::open_with(
            &self.location,
            settings,
            &self.master,
            relais_domain::privacy::Classification::default(),
            self.audit_dir.clone(),
        )
    }

    /// Refresh the planner's statistics after a bulk load, as a database that
    /// has been running a while has them (autovacuum's `ANALYZE`) and as
    /// `pgbench -i` does for its own tables; SQLite plans without them.
    pub fn analyze(&self) -> Result<(), StoreError> {
        if let Location::Postgres(url) = &self.location {
            let url = url.clone();
            // The blocking client runs a runtime of its own: on a plain thread.
            std::thread::spawn(move || -> Result<(), StoreError> {
                let mut client = postgres::Client::connect(&url, postgres::NoTls)
                    .map_err(|e| StoreError::Config(format!("cannot connect to PostgreSQL: {e}")))?;
                client.batch_execute("ANALYZE")?;
                Ok(())
            })
            .join()
            .map_err(|_| StoreError::Database("ANALYZE panicked".into()))??;
        }
        Ok(())
    }

    /// The environment a `relais` process needs to open this scratch's data.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("RELAIS_MASTER_KEY", self.master.encode()), ("RELAIS_AUDIT_DIR", self.audit_dir.display().to_string())]
    }

    /// Like `new`, using `RELAIS_TEST_DATABASE_URL` when it is set (tests run on
    /// PostgreSQL then, and on SQLite otherwise).
    pub fn for_tests(label: &str) -> Result<Scratch, StoreError> {
        Scratch::new(test_database_url().as_deref(), label)
    }
}

/// The PostgreSQL server tests run against (`RELAIS_TEST_DATABASE_URL`), if any.
pub fn test_database_url() -> Option<String> {
    std::env::var("RELAIS_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
}
