//! Certificates for TLS tests, made fresh by each test with rcgen: a CA, a server certificate for
//! `localhost` / `127.0.0.1`, and a client certificate, written as PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use std::path::{Path, PathBuf};

/// PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (trust anchor for both sides).
    pub ca: PathBuf,
    /// Server certificate chain and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate and key (for mutual TLS).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Generates a CA, a server and a client certificate into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "setgate test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf = |names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    cn: &str|
         -> anyhow::Result<(String, String)> {
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        )?;
        let (client_pem, client_key) = leaf(
            vec!["client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        )?;

        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca, ca.pem())?;
        std::fs::write(&pki.server_cert, server_pem)?;
        std::fs::write(&pki.server_key, server_key)?;
        std::fs::write(&pki.client_cert, client_pem)?;
        std::fs::write(&pki.client_key, client_key)?;
        Ok(pki)
    }

    /// `rabbitmq.conf` lines for a TLS listener on `port` with this PKI's server certificate,
    /// verifying the client certificates this CA signed (required if `require_client_cert`).
    pub fn rabbitmq_listener(&self, port: u16, require_client_cert: bool) -> String {
        format!(
            "listeners.ssl.default = {port}\nssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = {}\n",
            self.ca.display(),
            self.server_cert.display(),
            self.server_key.display(),
            require_client_cert
        )
    }

    /// An `amqps` URI to the TLS listener on `port` of 127.0.0.1 as `user`, naming this CA
    /// and the client certificate in its query as setgate and the RabbitMQ plugins take them.
    pub fn amqps_uri(&self, user: &str, pass: &str, port: u16) -> String {
        format!(
            "amqps://{user}:{pass}@127.0.0.1:{port}/%2f?cacertfile={}&certfile={}&keyfile={}\
             &verify=verify_peer",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}
