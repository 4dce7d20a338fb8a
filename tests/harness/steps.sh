# Numbered, timed steps for the preparation scripts (tests/setup.sh, tests/cluster/try-it):
#   step "building the agent" cargo build ...
# prints "PREFIX: [N/TOTAL] building the agent ..." before and "... done in S s" after (or, when
# the script ends in it, "... failed after S s"). TRACEJOB_STEPS="PREFIX DONE TOTAL" continues a
# caller's numbering (tests/cluster/try-it runs tests/setup.sh's steps as its first ones).
# shellcheck shell=bash
read -r step_prefix step_n step_total <<<"${TRACEJOB_STEPS:-$(basename "$0" .sh) 0 0}"
step_name=

step() {
  step_name=$1 step_start=$SECONDS
  shift
  step_n=$((step_n + 1))
  echo "$step_prefix: [$step_n/$step_total] $step_name ..." >&2
  "$@"
  echo "$step_prefix: [$step_n/$step_total] $step_name ... done in $((SECONDS - step_start)) s" >&2
  step_name=
}

step_failed() {
  [ -z "$step_name" ] ||
    echo "$step_prefix: [$step_n/$step_total] $step_name ... failed after $((SECONDS - step_start)) s" >&2
}
trap step_failed EXIT
