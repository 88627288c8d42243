//! From a pipeline OIDC token to ConveyorDeployRole-<env>: refreshing AWS role-chain credentials and ECR registry tokens.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
