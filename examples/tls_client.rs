//! Connect over AMQPS (TLS), optionally with a client certificate and SASL
//! EXTERNAL, then publish a message and get it back.
//!
//! Start the broker with a `[tls]` section (README, "TLS"), then:
//!
//!     AMQPS_CA=ca.pem cargo run --example tls_client
//!     AMQPS_CA=ca.pem AMQPS_CERT=client.pem AMQPS_KEY=client.key \
//!         AMQP_ADDR='amqps://localhost:5671/%2f?auth_mechanism=external' \
//!         cargo run --example tls_client
//!
//! AMQP_ADDR defaults to `amqps://guest:guest@localhost:5671/%2f`; the host
//! name must match the broker's certificate. With a client certificate and
//! `auth_mechanism=external` the user is the certificate's CN, no password.

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("AMQP_ADDR")
        .unwrap_or_else(|_| "amqps://guest:guest@localhost:5671/%2f".into());
    let read = |var: &str| -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
        match std::env::var(var) {
            Ok(path) => Ok(Some(
                std::fs::read(&path).map_err(|e| format!("{var}={path}: {e}"))?,
            )),
            Err(_) => Ok(None),
        }
    };
    let ca = read("AMQPS_CA")?.ok_or("set AMQPS_CA to the CA certificate (PEM)")?;
    let identity = match (read("AMQPS_CERT")?, read("AMQPS_KEY")?) {
        (Some(pem), Some(key)) => Some(OwnedIdentity::PKCS8 { pem, key }),
        _ => None,
    };
    let tls = OwnedTLSConfig {
        identity,
        cert_chain: Some(String::from_utf8(ca)?),
    };
    let conn = Connection::connect_with_config(
        &addr,
        ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await?;
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_publish(
            "".into(),
            queue.name().as_str().into(),
            BasicPublishOptions::default(),
            b"hello over TLS",
            BasicProperties::default(),
        )
        .await?
        .await?;
    let got = channel
        .basic_get(
            queue.name().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?;
    match got {
        Some(message) => println!("got: {}", String::from_utf8_lossy(&message.delivery.data)),
        None => println!("the queue was empty"),
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}
