//! The Forge config file (`forge.toml`), shared by `auth`, `ec2`, `promote`, `rollback`,
//! `status` and `audit`. Parsing is strict (unknown keys are errors, so a typo never silently
//! falls back to a default); [`Config::check`] adds the cross-field rules and reports every
//! problem at once, each naming its key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::output::InvalidInput;

/// Default config path, relative to the working directory.
pub const DEFAULT_PATH: &str = "forge.toml";

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Argo CD Applications live.
    pub ledger: Option<LedgerConfig>,
    /// How pipelines get AWS credentials.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Release policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Environments by name (`dev`, `qa`, `prod`, …).
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// `[ledger]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Git URL or local path of the Ledger repository.
    pub repo: String,
    /// Branch Argo CD syncs from.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Manifest path template with `{env}` and `{service}`.
    #[serde(default = "default_ledger_path")]
    pub path: String,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_ledger_path() -> String {
    "apps/{env}/{service}.yaml".to_owned()
}

impl LedgerConfig {
    /// The manifest path for `service` in `env`.
    #[allow(dead_code, reason = "used by the commands landing with issues 4-6")]
    pub fn manifest_path(&self, env: &str, service: &str) -> String {
        self.path
            .replace("{env}", env)
            .replace("{service}", service)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// ARN of the hub role assumed with the pipeline's OIDC token.
    pub hub_role: Option<String>,
    /// `auto | azure-devops | github | file:PATH | env:VAR | none`.
    pub token: Option<String>,
    /// AWS region for STS, ECR and SSM.
    pub region: Option<String>,
    /// OIDC audience (GitHub; default `sts.amazonaws.com`).
    pub audience: Option<String>,
    /// Azure DevOps service connection id used to request the OIDC token.
    pub service_connection: Option<String>,
    /// External id for the environment role, when its trust policy asks for one.
    pub external_id: Option<String>,
    /// Session length in seconds for the environment role (chained: at most 3600).
    pub session_duration: Option<u64>,
    /// Refuse-by-default override: allow static AWS keys when running in CI.
    #[serde(default)]
    pub allow_static_credentials: bool,
    /// Send audit session tags (`forge:env`, `forge:build`, `forge:ci`) when assuming the
    /// environment role; its trust policy must then allow `sts:TagSession`. Default off.
    #[serde(default)]
    pub session_tags: bool,
    /// The environment role of every environment without its own `role`: an ARN template with
    /// `{env}` and `{account}` (the environment's `account`), e.g.
    /// `arn:aws:iam::{account}:role/ConveyorDeployRole-{env}`.
    pub env_role: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Regex every promoted tag must match in full (e.g. `^[0-9]+$` for build ids).
    pub tag_pattern: Option<String>,
    /// Where people ask for help (named in errors such as a missing repository).
    #[serde(default = "default_support")]
    pub support: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            tag_pattern: None,
            support: default_support(),
        }
    }
}

fn default_support() -> String {
    "#platform-support".to_owned()
}

/// `[environments.<env>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// Registry host (`…dkr.ecr….amazonaws.com`, `host:port`) or `oci:DIR`.
    pub registry: Option<String>,
    /// ARN of `ConveyorDeployRole-<env>` (`{env}` and `{account}` are filled in); defaults to
    /// `[auth] env_role`.
    pub role: Option<String>,
    /// The environment's 12-digit AWS account id, for `{account}` in role templates.
    pub account: Option<String>,
    /// The environment promotions into this one come from.
    pub from: Option<String>,
    /// Who must approve a promotion.
    #[serde(default)]
    pub approval: Approval,
    /// Argo CD sync mode (documentation; `forge ledger lint` checks Prod is manual).
    #[serde(default)]
    pub sync: SyncMode,
    /// Region override for this environment.
    pub region: Option<String>,
}

/// `approval = "none" | "optional" | "required"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// No approver needed.
    #[default]
    None,
    /// An approver is recorded when given.
    Optional,
    /// An approver who is not the requester is required.
    Required,
}

/// `sync = "auto" | "manual"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Argo CD syncs automatically.
    #[default]
    Auto,
    /// Someone presses sync.
    Manual,
}

/// `[services.<name>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// How the service is deployed.
    #[serde(default)]
    pub kind: ServiceKind,
    /// Registry repository (default: the service name).
    pub repository: Option<String>,
    /// Image name for the Ledger patcher when a manifest holds several images.
    pub image: Option<String>,
    /// Explicit key path of the tag in the manifest (overrides auto-detection).
    pub key: Option<String>,
    /// EC2: instance selection, `tag:KEY=VALUE` or instance ids.
    pub target: Option<String>,
    /// EC2: directory on the instance holding `docker-compose.yml` and `.env`.
    pub service_dir: Option<String>,
    /// EC2: SSM Parameter Store path refreshed into `.env`.
    pub parameters_path: Option<String>,
    /// EC2: compose file to send (relative to the config file).
    pub compose: Option<String>,
}

/// `kind = "argocd" | "ec2"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// An Argo CD Application in the Ledger.
    #[default]
    Argocd,
    /// docker-compose on EC2 through SSM Run Command.
    Ec2,
}

/// A config file read from disk, with the path it came from (for messages and relative paths).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub config: Config,
}

impl Loaded {
    /// Resolves `relative` against the config file's directory.
    #[allow(dead_code, reason = "used by the commands landing with issues 4-6")]
    pub fn resolve(&self, relative: &str) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(relative)
    }
}

impl Config {
    /// The role of environment `name`: its own `role`, else `[auth] env_role`, with `{env}`
    /// and `{account}` filled in. `Ok(None)` when neither is set; `Err` names the key to fix.
    pub fn environment_role(&self, name: &str) -> Result<Option<forge_auth::RoleArn>, String> {
        let Some(env) = self.environments.get(name) else {
            return Ok(None);
        };
        let (key, template) = match (&env.role, &self.auth.env_role) {
            (Some(role), _) => (format!("environments.{name}.role"), role),
            (None, Some(template)) => ("auth.env_role".to_owned(), template),
            (None, None) => return Ok(None),
        };
        expand_role(template, name, env.account.as_deref())
            .map(Some)
            .map_err(|e| format!("{key}: {e}"))
    }

    /// Reads and parses `path`. A missing file or a parse error is [`InvalidInput`] naming the
    /// file and, for parse errors, the line and key.
    pub fn load(path: &Path) -> anyhow::Result<Loaded> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InvalidInput(format!(
                    "config file {} does not exist: create it (see README.md, 'Configuration') or pass --config PATH",
                    path.display()
                ))
                .into());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read config file {}", path.display()));
            }
        };
        let config = Self::parse(&text).map_err(|e| {
            InvalidInput(format!("config file {} is not valid: {e}", path.display()))
        })?;
        Ok(Loaded {
            path: path.to_owned(),
            config,
        })
    }

    /// Parses TOML text (strict: unknown keys are errors).
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Cross-field rules. Returns every problem, each starting with the key it concerns.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(ledger) = &self.ledger {
            if ledger.repo.trim().is_empty() {
                problems
                    .push("ledger.repo: empty; set the Ledger's Git URL or local path".to_owned());
            }
            if !ledger.path.contains("{service}") {
                problems.push(format!(
                    "ledger.path: `{}` has no {{service}} placeholder, so every service would share one file",
                    ledger.path
                ));
            }
            if !ledger.path.contains("{env}") {
                problems.push(format!(
                    "ledger.path: `{}` has no {{env}} placeholder, so every environment would share one file",
                    ledger.path
                ));
            }
        }
        if let Some(pattern) = &self.policy.tag_pattern
            && let Err(e) = regex::Regex::new(pattern)
        {
            problems.push(format!(
                "policy.tag_pattern: `{pattern}` is not a valid regex: {e}"
            ));
        }
        if let Some(token) = &self.auth.token
            && let Err(e) = check_token_setting(token)
        {
            problems.push(format!("auth.token: {e}"));
        }
        if let Some(role) = &self.auth.hub_role
            && let Err(e) = forge_auth::RoleArn::parse(role)
        {
            problems.push(format!("auth.hub_role: {e}"));
        }
        if let Some(d) = self.auth.session_duration
            && !(900..=3600).contains(&d)
        {
            problems.push(format!(
                    "auth.session_duration: {d} s is outside 900..=3600; a role assumed through role chaining is capped by AWS at 3600 s"
                ));
        }
        for (name, env) in &self.environments {
            if let Some(account) = &env.account
                && !is_account_id(account)
            {
                problems.push(format!(
                    "environments.{name}.account: `{account}` is not a 12-digit AWS account id"
                ));
            } else if let Err(e) = self.environment_role(name) {
                problems.push(e);
            }
            if let Some(from) = &env.from {
                if from == name {
                    problems.push(format!(
                        "environments.{name}.from: an environment cannot promote from itself"
                    ));
                } else if !self.environments.contains_key(from) {
                    problems.push(format!(
                        "environments.{name}.from: unknown environment `{from}`; known: {}",
                        self.environment_names()
                    ));
                }
            }
            if env.registry.as_deref().is_some_and(|r| r.trim().is_empty()) {
                problems.push(format!("environments.{name}.registry: empty"));
            }
        }
        if let Some(cycle) = self.promotion_cycle() {
            problems.push(format!("environments: `from` forms a cycle: {cycle}"));
        }
        for (name, service) in &self.services {
            if service.kind == ServiceKind::Ec2 {
                for (key, value) in [
                    ("target", &service.target),
                    ("service_dir", &service.service_dir),
                ] {
                    if value.is_none() {
                        problems.push(format!(
                            "services.{name}.{key}: required for kind = \"ec2\""
                        ));
                    }
                }
            }
        }
        problems
    }

    /// All environment names, comma-separated, for messages.
    pub fn environment_names(&self) -> String {
        let names: Vec<&str> = self.environments.keys().map(String::as_str).collect();
        if names.is_empty() {
            "(none configured)".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// All service names, comma-separated, for messages.
    pub fn service_names(&self) -> String {
        let names: Vec<&str> = self.services.keys().map(String::as_str).collect();
        if names.is_empty() {
            "(none configured)".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// Looks up `[environments.<env>]`, or an [`InvalidInput`] listing the known ones.
    #[allow(dead_code, reason = "used by the commands landing with issues 4-6")]
    pub fn environment(&self, env: &str) -> anyhow::Result<&EnvironmentConfig> {
        self.environments.get(env).ok_or_else(|| {
            InvalidInput(format!(
                "unknown environment `{env}`: add [environments.{env}] to the config; known: {}",
                self.environment_names()
            ))
            .into()
        })
    }

    /// Looks up `[services.<name>]`, or an [`InvalidInput`] listing the known ones.
    #[allow(dead_code, reason = "used by the commands landing with issues 4-6")]
    pub fn service(&self, name: &str) -> anyhow::Result<&ServiceConfig> {
        self.services.get(name).ok_or_else(|| {
            InvalidInput(format!(
                "unknown service `{name}`: add [services.{name}] to the config; known: {}",
                self.service_names()
            ))
            .into()
        })
    }

    fn promotion_cycle(&self) -> Option<String> {
        for start in self.environments.keys() {
            let mut path = vec![start.as_str()];
            let mut current = start.as_str();
            while let Some(next) = self
                .environments
                .get(current)
                .and_then(|e| e.from.as_deref())
            {
                if next == start {
                    path.push(next);
                    return Some(path.join(" <- "));
                }
                if path.contains(&next) || !self.environments.contains_key(next) {
                    break;
                }
                path.push(next);
                current = next;
            }
        }
        None
    }
}

/// `auto | azure-devops | github | file:PATH | env:VAR | none`.
fn check_token_setting(token: &str) -> Result<(), String> {
    match token {
        "none" => Ok(()),
        // forge-auth's own parser, so `forge config` refuses what `forge auth` would.
        _ => token
            .parse::<forge_auth::token::TokenSetting>()
            .map(drop)
            .map_err(|_| {
                format!(
                    "{} is not a token source; use auto, azure-devops, github, file:PATH, env:VAR or none",
                    forge_auth::token::shown_setting(token)
                )
            }),
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Fills `{env}` and `{account}` into a role template with forge-auth's own expansion and
/// parser (the same rules and messages as the chain); a missing account names the key to set.
pub fn expand_role(
    template: &str,
    env: &str,
    account: Option<&str>,
) -> Result<forge_auth::RoleArn, String> {
    if account.is_none() && template.contains("{account}") {
        return Err(format!(
            "`{template}` uses {{account}} but environments.{env}.account is not set: set it to the environment's 12-digit AWS account id"
        ));
    }
    forge_auth::RoleArn::from_template(template, env, account).map_err(|e| e.to_string())
}

/// Renders problems as the message of a failed `forge config check`.
pub fn describe_problems(path: &Path, problems: &[String]) -> String {
    let mut text = format!(
        "config file {} has {} problem(s):",
        path.display(),
        problems.len()
    );
    for p in problems {
        let _ = write!(text, "\n  - {p}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../forge.example.toml");

    #[test]
    fn the_documented_example_is_valid() {
        let config = Config::parse(EXAMPLE).expect("example parses");
        assert_eq!(config.problems(), Vec::<String>::new());
        assert_eq!(config.environments["prod"].approval, Approval::Required);
        assert_eq!(config.services["dagster"].kind, ServiceKind::Ec2);
    }

    fn check(toml: &str, expected: &[&str]) {
        let config = Config::parse(toml).expect("parses");
        assert_eq!(config.problems(), expected);
    }

    #[test]
    fn cross_field_rules_name_their_key() {
        check(
            "[environments.qa]\nfrom = \"dev\"\n",
            &["environments.qa.from: unknown environment `dev`; known: qa"],
        );
        check(
            "[environments.a]\nfrom = \"b\"\n[environments.b]\nfrom = \"a\"\n",
            &["environments: `from` forms a cycle: a <- b <- a"],
        );
        check(
            "[auth]\ntoken = \"vault\"\n",
            &[
                "auth.token: `vault` is not a token source; use auto, azure-devops, github, file:PATH, env:VAR or none",
            ],
        );
        // What `forge auth` would refuse, `forge config check` refuses, without echoing a
        // credential pasted where the variable name belongs.
        check(
            "[auth]\ntoken = \"env:ghp_A1b2A1b2A1b2A1b2A1b2A1b2A1b2A1b2A1b2\"\n",
            &[
                "auth.token: a value that looks like a token itself (give its source instead, such as env:VAR or file:PATH) is not a token source; use auto, azure-devops, github, file:PATH, env:VAR or none",
            ],
        );
        check(
            "[environments.dev]\nrole = \"arn:aws:iam::12:role/x\"\n",
            &[
                "environments.dev.role: `arn:aws:iam::12:role/x` is not an IAM role ARN (the account is not 12 digits); expected arn:aws:iam::<12-digit account>:role/<name>",
            ],
        );
        check(
            "[services.d]\nkind = \"ec2\"\n",
            &[
                "services.d.target: required for kind = \"ec2\"",
                "services.d.service_dir: required for kind = \"ec2\"",
            ],
        );
        let bad_regex = Config::parse("[policy]\ntag_pattern = \"^[0-9+$\"\n").expect("parses");
        let problems = bad_regex.problems();
        assert!(
            problems[0].starts_with("policy.tag_pattern: `^[0-9+$` is not a valid regex"),
            "{problems:?}"
        );
    }

    #[test]
    fn role_templates_take_the_environment_and_its_account() {
        let template =
            "[auth]\nenv_role = \"arn:aws:iam::{account}:role/ConveyorDeployRole-{env}\"\n";
        let config = Config::parse(&format!(
            "{template}[environments.qa]\naccount = \"222222222222\"\n[environments.prod]\naccount = \"333333333333\"\nrole = \"arn:aws:iam::{{account}}:role/Break-glass-{{env}}\"\n"
        ))
        .expect("parses");
        assert_eq!(config.problems(), Vec::<String>::new());
        assert_eq!(
            config
                .environment_role("qa")
                .unwrap()
                .map(|r| r.to_string()),
            Some("arn:aws:iam::222222222222:role/ConveyorDeployRole-qa".to_owned())
        );
        // An environment's own role wins over the template.
        assert_eq!(
            config
                .environment_role("prod")
                .unwrap()
                .map(|r| r.to_string()),
            Some("arn:aws:iam::333333333333:role/Break-glass-prod".to_owned())
        );
        assert!(config.environment_role("nowhere").unwrap().is_none());

        check(
            &format!("{template}[environments.dev]\n"),
            &[
                "auth.env_role: `arn:aws:iam::{account}:role/ConveyorDeployRole-{env}` uses {account} but environments.dev.account is not set: set it to the environment's 12-digit AWS account id",
            ],
        );
        check(
            &format!("{template}[environments.dev]\naccount = \"1111\"\n"),
            &["environments.dev.account: `1111` is not a 12-digit AWS account id"],
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[ledger]\nrepo = \"x\"\nbrnach = \"main\"\n").expect_err("typo");
        assert!(err.to_string().contains("brnach"), "{err}");
    }
}
