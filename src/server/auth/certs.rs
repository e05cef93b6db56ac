//! A client certificate's identity: its subject's common names and its DNS and URI
//! subject alternative names, any of which a `[[cert]]` entry of the tokens file may name.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names in a (verified) DER certificate; empty if it cannot be parsed.
pub fn names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut out: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) | GeneralName::URI(d) => out.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_name_and_dns_names_are_read() {
        let ca = crate::tls::dev_certs::DevCa::new("t").unwrap();
        let issued = ca.issue("orders-service", &["orders.internal"]).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes());
        let der: rustls_pki_types::CertificateDer<'_> = der.unwrap();
        let names = super::names(&der);
        assert!(names.contains(&"orders-service".to_owned()), "{names:?}");
        assert!(names.contains(&"orders.internal".to_owned()), "{names:?}");
    }
}
