#!/usr/bin/env bash
# update-ledger.sh: Azure DevOps Classic Release wrapper over `forge ledger set-tag`. It only
# maps arguments: optimistic locking (--expect-tag), push retries, the monotonic build-id guard
# and the `latest` refusal all happen in `forge`, and forge's exit code is this script's exit
# code (0 ok, 1 failure, 2 invalid input or superseded).
# Set FORGE_BIN to use a forge binary that is not on PATH.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: update-ledger.sh --repo URL|PATH --file PATH --tag TAG [--expect-tag OLD]
                        [--image NAME] [--key PATH] [--app NAME] [--branch BRANCH]
                        [--service NAME --env ENV] [--trailer KEY=VALUE]...
                        [--max-attempts N] [--dry-run] [--output text|json]

Sets the image tag in one Ledger manifest and pushes one commit (`forge ledger set-tag`).
Example (Classic Release stage "Dev"):
  scripts/update-ledger.sh --repo "$(LedgerRepo)" --file apps/dev/payments.yaml \
    --tag "$(Build.BuildId)" --service payments --env dev \
    --trailer "Forge-Build-Id=$(Build.BuildId)"
USAGE
}

fail_usage() {
  printf 'update-ledger.sh: %s\n\n' "$1" >&2
  usage >&2
  exit 2
}

need_value() {
  if [[ "$2" -lt 2 ]]; then
    fail_usage "$1 needs a value"
  fi
}

repo=""
file=""
tag=""
service=""
env_name=""
args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --repo) need_value "$1" "$#"; repo="$2"; shift 2 ;;
    --file) need_value "$1" "$#"; file="$2"; shift 2 ;;
    --tag) need_value "$1" "$#"; tag="$2"; shift 2 ;;
    --service) need_value "$1" "$#"; service="$2"; shift 2 ;;
    --env) need_value "$1" "$#"; env_name="$2"; shift 2 ;;
    --expect-tag | --image | --key | --app | --branch | --trailer | --max-attempts | --output)
      need_value "$1" "$#"; args+=("$1" "$2"); shift 2 ;;
    --dry-run) args+=("$1"); shift ;;
    *) fail_usage "unknown argument '$1'" ;;
  esac
done

[[ -n "$repo" ]] || fail_usage "--repo is required (the Ledger's Git URL or local path)"
[[ -n "$file" ]] || fail_usage "--file is required (the manifest path inside the Ledger)"
[[ -n "$tag" ]] || fail_usage "--tag is required (the build id to deploy)"
if [[ -n "$service" || -n "$env_name" ]]; then
  [[ -n "$service" && -n "$env_name" ]] || fail_usage "--service and --env go together"
  args+=(--service "$service" --env "$env_name")
fi

exec "${FORGE_BIN:-forge}" ledger set-tag --repo "$repo" --file "$file" --tag "$tag" "${args[@]}"
