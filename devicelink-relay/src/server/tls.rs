//! TLS in the binary (`--tls-cert`, `--tls-key`): rustls on `ring` (the
//! core's crypto), HTTP/1.1 only, the certificate chain and key read from
//! PEM files and read again on [`Tls::reload`] (the binary calls it on
//! SIGHUP), so a renewed certificate takes effect without a restart: new
//! handshakes get the new one, connections already open keep theirs. A
//! reload that fails (a missing file, a key that does not match) keeps the
//! certificate in use and says why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind wanted.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the key or the configuration.
    #[error("TLS: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, why: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The certificate in use, swapped by a reload.
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver(…)")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The relay's TLS: a rustls server configuration whose certificate can be
/// reloaded from its files. Clones share the certificate.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Rustls(format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}

impl Tls {
    /// Reads the PEM certificate chain at `cert` and the PEM private key at
    /// `key` (PKCS#8, PKCS#1 or SEC1) and makes the server configuration.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or what rustls refused.
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        // `ring`, the core's crypto; its provider lacks the post-quantum
        // key exchange (rustls deprecates it for that), which a pairing
        // relay can do without: the pairing itself is end-to-end.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load(&cert, &key, &provider)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert,
            key,
            provider,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again; new handshakes use what they hold now. On an
    /// error the certificate in use stays.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or what rustls refused.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load(&self.cert, &self.key, &self.provider)?;
        *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
