#!/usr/bin/env bash
# copy-artifact.sh: Azure DevOps Classic Release wrapper over `forge`. It only maps arguments:
# every check (digest verification, tag policy, approvals, missing repositories) happens in
# `forge`, and forge's exit code is this script's exit code (0 ok, 1 failure, 2 invalid input).
#
# Two forms:
#   copy-artifact.sh --source REF --destination REF [options]    -> forge copy SRC DST
#   copy-artifact.sh --service NAME --to ENV [options]           -> forge promote
# Set FORGE_BIN to use a forge binary that is not on PATH.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: copy-artifact.sh --source REF --destination REF [--jobs N] [--tag-pattern RE]
                        [--docker-config PATH] [--no-referrers] [--output text|json]
       copy-artifact.sh --service NAME --to ENV [--tag TAG] [--requested-by WHO]
                        [--approved-by WHO] [--evidence FILE] [--config FILE]
                        [--dry-run] [--allow-unrecorded-digest] [--output text|json]

The first form copies one image with `forge copy` (digest verified); the second runs
`forge promote` (policy, copy from the `from` environment, Ledger update).
Example (Classic Release stage "QA"):
  scripts/copy-artifact.sh --service payments --to qa --tag "$(Build.BuildId)" \
    --requested-by "$(Release.RequestedForEmail)"
USAGE
}

fail_usage() {
  printf 'copy-artifact.sh: %s\n\n' "$1" >&2
  usage >&2
  exit 2
}

source_ref=""
destination_ref=""
service=""
to_env=""
copy_args=()
promote_args=()
common_args=()

# need_value FLAG ARGC: the flag must be followed by a non-empty value.
need_value() {
  if [[ "$2" -lt 2 ]]; then
    fail_usage "$1 needs a value"
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --source) need_value "$1" "$#"; source_ref="$2"; shift 2 ;;
    --destination) need_value "$1" "$#"; destination_ref="$2"; shift 2 ;;
    --jobs | --tag-pattern | --docker-config)
      need_value "$1" "$#"; copy_args+=("$1" "$2"); shift 2 ;;
    --no-referrers) copy_args+=("$1"); shift ;;
    --service) need_value "$1" "$#"; service="$2"; shift 2 ;;
    --to) need_value "$1" "$#"; to_env="$2"; shift 2 ;;
    --tag | --requested-by | --approved-by | --evidence | --config)
      need_value "$1" "$#"; promote_args+=("$1" "$2"); shift 2 ;;
    --dry-run | --allow-unrecorded-digest) promote_args+=("$1"); shift ;;
    --output) need_value "$1" "$#"; common_args+=("$1" "$2"); shift 2 ;;
    *) fail_usage "unknown argument '$1'" ;;
  esac
done

forge="${FORGE_BIN:-forge}"

if [[ -n "$source_ref" || -n "$destination_ref" ]]; then
  [[ -n "$source_ref" ]] || fail_usage "--destination needs --source"
  [[ -n "$destination_ref" ]] || fail_usage "--source needs --destination"
  [[ -z "$service" && -z "$to_env" ]] ||
    fail_usage "use either --source/--destination (copy) or --service/--to (promote), not both"
  [[ ${#promote_args[@]} -eq 0 ]] ||
    fail_usage "--tag, --requested-by, --approved-by, --evidence, --config, --dry-run and --allow-unrecorded-digest belong to the --service/--to form"
  exec "$forge" copy "$source_ref" "$destination_ref" "${copy_args[@]}" "${common_args[@]}"
fi

if [[ -n "$service" || -n "$to_env" ]]; then
  [[ -n "$service" ]] || fail_usage "--to needs --service"
  [[ -n "$to_env" ]] || fail_usage "--service needs --to"
  [[ ${#copy_args[@]} -eq 0 ]] ||
    fail_usage "--jobs, --tag-pattern, --docker-config and --no-referrers belong to the --source/--destination form"
  exec "$forge" promote --service "$service" --to "$to_env" "${promote_args[@]}" "${common_args[@]}"
fi

fail_usage "give --source and --destination, or --service and --to"
