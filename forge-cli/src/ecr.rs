//! The glue that lets forge-registry authenticate to ECR with forge-auth's tokens. The two
//! libraries do not know each other (ARCHITECTURE.md); they meet here, through
//! `forge_registry::CredentialProvider` and `forge_auth::ecr::EcrCredentials`.

use std::collections::HashMap;
use std::sync::Arc;

use forge_registry::{BoxError, Credential, CredentialFuture, CredentialProvider};

/// ECR credentials per registry host, each from its own environment's role chain.
pub struct EcrRegistries {
    by_host: HashMap<String, Arc<forge_auth::ecr::EcrCredentials>>,
}

impl CredentialProvider for EcrRegistries {
    fn credential<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(async move {
            let Some(ecr) = self.by_host.get(registry) else {
                return Ok(None);
            };
            let (username, password) = ecr
                .basic_for(registry)
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            Ok(Some(Credential::basic(username, password.expose())))
        })
    }
}

/// A registry client that asks ECR (per host in `ecr`) first, then the Docker config.
pub fn client_with(
    ecr: HashMap<String, Arc<forge_auth::ecr::EcrCredentials>>,
) -> anyhow::Result<forge_registry::Client> {
    let mut builder = forge_registry::Client::builder();
    if !ecr.is_empty() {
        builder = builder.credential_provider(EcrRegistries { by_host: ecr });
    }
    // Everything else (and an ECR host without a role chain) as `docker login` left it.
    // Bad input (exit 2), with its cause (the JSON error's line and column) in the chain.
    let docker = forge_registry::DockerConfig::load_default()
        .map_err(|e| crate::output::classify(e, true))?;
    Ok(builder.docker_config(docker).build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECR_HOST: &str = "111111111111.dkr.ecr.eu-west-1.amazonaws.com";

    /// The ECR credential provider for [`ECR_HOST`], its SDK pointed at moto.
    async fn moto_ecr(moto: &forge_testkit::Moto) -> EcrRegistries {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        EcrRegistries {
            by_host: HashMap::from([(
                ECR_HOST.to_owned(),
                Arc::new(forge_auth::ecr::EcrCredentials::new(&sdk)),
            )]),
        }
    }

    /// The glue end to end against moto's ECR: an ECR host gets forge-auth's Basic `AWS:…`
    /// credential, any other host none (so the Docker config is asked next).
    #[test]
    fn ecr_hosts_get_basic_credentials_from_ecr_and_others_none() {
        let Some(moto) = forge_testkit::Moto::start() else {
            return;
        };
        // Not alongside the log-capturing test below (see `logging::exclusive`).
        let _turn = crate::logging::exclusive();
        let runtime = crate::runtime().unwrap();
        runtime.block_on(async {
            let provider = moto_ecr(&moto).await;
            match provider.credential(ECR_HOST).await.unwrap() {
                Some(Credential::Basic { username, password }) => {
                    assert_eq!(username, "AWS");
                    assert!(!password.is_empty());
                }
                other => panic!("expected Basic AWS credentials, got {other:?}"),
            }
            assert_eq!(provider.credential("127.0.0.1:5000").await.unwrap(), None);
        });
    }

    /// Against moto's ECR, with the most verbose logging anyone can ask for (`RUST_LOG=trace`
    /// over `-vv`'s default): the AWS SDK logs its requests, and the registry password it
    /// fetched appears nowhere in the logs, neither as is nor base64-encoded as ECR sends it.
    #[test]
    fn the_ecr_token_never_reaches_the_logs() {
        use base64::Engine as _;
        let Some(moto) = forge_testkit::Moto::start() else {
            return;
        };
        let runtime = crate::runtime().unwrap();
        let (password, logs) = crate::logging::logged("debug,forge=trace", Some("trace"), || {
            runtime.block_on(async {
                let provider = moto_ecr(&moto).await;
                match provider.credential(ECR_HOST).await.unwrap() {
                    Some(Credential::Basic { password, .. }) => password,
                    other => panic!("expected Basic AWS credentials, got {other:?}"),
                }
            })
        });
        assert!(
            logs.contains("aws_smithy_runtime"),
            "the SDK logged its requests: {logs}"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        assert!(
            !logs.contains(&password) && !logs.contains(&encoded),
            "the ECR token is in the logs"
        );
    }
}
