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
    let docker = forge_registry::DockerConfig::load_default().map_err(|e| {
        crate::output::InvalidInput(format!(
            "{e}; fix or remove the Docker config, or set DOCKER_CONFIG"
        ))
    })?;
    Ok(builder.docker_config(docker).build()?)
}
