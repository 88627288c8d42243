//! `forge auth whoami | env | credential-process`: the role chain for one environment, from the
//! pipeline's OIDC token to `ConveyorDeployRole-<env>`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use aws_credential_types::Credentials;
use forge_auth::ci::{self, Ci};
use forge_auth::identity::{caller_identity, rfc3339};
use serde::Serialize;

use crate::aws::{self, Overrides};
use crate::config::{self, Config};
use crate::output::{self, Format};

/// `forge auth …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Walk the role chain and show who the final role is (sts:GetCallerIdentity).
    Whoami(Args),
    /// Print the final role's credentials as `export AWS_…=` lines; under Azure DevOps set secret
    /// pipeline variables, under GitHub Actions append to $GITHUB_ENV (values masked first).
    Env(Args),
    /// Print the AWS `credential_process` JSON (Version 1) for `~/.aws/config`:
    /// `credential_process = forge auth credential-process --env dev --config /path/forge.toml`.
    CredentialProcess(Args),
}

/// Arguments shared by every `forge auth` command.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Environment (`[environments.<env>]` in the config).
    #[arg(long)]
    env: String,
    /// Config file.
    #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
    config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
    #[command(flatten)]
    overrides: Overrides,
}

/// Runs `forge auth …`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        match command {
            Command::Whoami(args) => whoami(args).await,
            Command::Env(args) => env(args).await,
            Command::CredentialProcess(args) => credential_process(args).await,
        }
    })
}

fn lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

async fn credentials(args: &Args) -> anyhow::Result<(aws::EnvAuth, Credentials)> {
    let loaded = Config::load(&args.config)?;
    let ci = Ci::detect(&lookup);
    let auth = aws::resolve(&loaded, &args.env, &args.overrides, aws::mask_hook(ci)).await?;
    let creds = aws::current_credentials(&auth, &args.env).await?;
    if let Some(line) = ci.mask_line(&forge_auth::Secret::new(creds.access_key_id())) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
    Ok((auth, creds))
}

#[derive(Serialize)]
struct Whoami {
    env: String,
    account: String,
    arn: String,
    user_id: String,
    expiration: Option<String>,
}

async fn whoami(args: Args) -> anyhow::Result<ExitCode> {
    let (auth, creds) = credentials(&args).await?;
    let expiration = creds.expiry().map(rfc3339);
    let sdk = auth
        .sdk
        .to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
        .build();
    let me = caller_identity(&sdk).await.map_err(|e| {
        anyhow::Error::from(e).context(format!(
            "the credentials for `{}` were obtained but GetCallerIdentity failed",
            args.env
        ))
    })?;
    let answer = Whoami {
        env: args.env,
        account: me.account,
        arn: me.arn,
        user_id: me.user_id,
        expiration,
    };
    match args.output {
        Format::Json => output::print_json(&answer)?,
        Format::Text => output::print_stdout(&format!(
            "{}\n  account:    {}\n  user id:    {}\n  expires:    {}\n",
            answer.arn,
            answer.account,
            answer.user_id,
            answer
                .expiration
                .as_deref()
                .unwrap_or("never (static credentials)"),
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn variables(auth: &aws::EnvAuth, creds: &Credentials) -> Vec<(&'static str, String, bool)> {
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", creds.access_key_id().to_owned(), true),
        (
            "AWS_SECRET_ACCESS_KEY",
            creds.secret_access_key().to_owned(),
            true,
        ),
    ];
    if let Some(token) = creds.session_token() {
        vars.push(("AWS_SESSION_TOKEN", token.to_owned(), true));
    }
    if let Some(region) = auth.sdk.region() {
        vars.push(("AWS_REGION", region.to_string(), false));
    }
    vars
}

async fn env(args: Args) -> anyhow::Result<ExitCode> {
    let (auth, creds) = credentials(&args).await?;
    let vars = variables(&auth, &creds);
    let expiration = creds.expiry().map(rfc3339);
    if args.output == Format::Json {
        let mut map = serde_json::Map::new();
        for (name, value, _) in &vars {
            map.insert((*name).to_owned(), value.clone().into());
        }
        map.insert("expiration".to_owned(), expiration.into());
        output::print_json(&map)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    match Ci::detect(&lookup) {
        Ci::AzureDevOps => {
            for (name, value, secret) in &vars {
                text.push_str(&format!(
                    "##vso[task.setvariable variable={name};issecret={secret}]{}\n",
                    ci::escape_azure_value(value)
                ));
            }
            // Azure DevOps keeps secret variables out of later steps' environments unless each
            // step maps them; without this the next `aws …` step silently has no credentials.
            let secret_names: Vec<&str> = vars
                .iter()
                .filter(|(_, _, secret)| *secret)
                .map(|(n, _, _)| *n)
                .collect();
            let mapping: Vec<String> = secret_names
                .iter()
                .map(|n| format!("{n}: $({n})"))
                .collect();
            let _ = writeln!(
                std::io::stderr().lock(),
                "set {} as secret pipeline variables; they expire at {}. Secret variables reach a later step only when it maps them, e.g. `env: {{ {} }}`",
                secret_names.join(", "),
                expiration.as_deref().unwrap_or("?"),
                mapping.join(", ")
            );
        }
        Ci::GitHubActions => {
            let path = lookup("GITHUB_ENV").filter(|p| !p.is_empty()).ok_or_else(|| {
                output::InvalidInput(
                    "GITHUB_ACTIONS is set but GITHUB_ENV is not: run `forge auth env` as a workflow step, or use --output json".to_owned(),
                )
            })?;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| anyhow::anyhow!("cannot append to GITHUB_ENV file {path}: {e}"))?;
            let mut lines = String::new();
            for (name, value, _) in &vars {
                lines.push_str(&format!("{name}={value}\n"));
            }
            file.write_all(lines.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot append to GITHUB_ENV file {path}: {e}"))?;
            let names: Vec<&str> = vars.iter().map(|(n, _, _)| *n).collect();
            let _ = writeln!(
                std::io::stderr().lock(),
                "set {} for later steps (masked); they expire at {}",
                names.join(", "),
                expiration.as_deref().unwrap_or("?")
            );
        }
        _ => {
            for (name, value, _) in &vars {
                text.push_str(&format!("export {name}={}\n", shell_quote(value)));
            }
        }
    }
    output::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=_-.:,@".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialProcess {
    version: u8,
    access_key_id: String,
    secret_access_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
}

async fn credential_process(args: Args) -> anyhow::Result<ExitCode> {
    let (_auth, creds) = credentials(&args).await?;
    // The AWS credential_process contract is this JSON whatever --output says.
    output::print_json(&CredentialProcess {
        version: 1,
        access_key_id: creds.access_key_id().to_owned(),
        secret_access_key: creds.secret_access_key().to_owned(),
        session_token: creds.session_token().map(str::to_owned),
        expiration: creds.expiry().map(rfc3339),
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_values_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("AKIA123/x+y="), "AKIA123/x+y=");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_quote(""), "''");
    }
}
