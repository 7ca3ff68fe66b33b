#!/usr/bin/env bash
# expect.sh CODE PATTERN [--absent PATTERN] [--file PATH PATTERN]... -- COMMAND [ARG]...
# Runs COMMAND and fails unless it exits with CODE, its output (stdout and stderr together)
# matches PATTERN (grep -E), does not match the --absent pattern, and every --file exists
# and matches its pattern afterwards. Prints the output when it fails.
set -u
code="$1" pattern="$2"
shift 2
absent=""
files=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --absent) absent="$2"; shift 2 ;;
    --file) files+=("$2" "$3"); shift 3 ;;
    *) echo "expect.sh: unknown argument '$1'"; exit 2 ;;
  esac
done
shift  # the --
for ((i = 0; i < ${#files[@]}; i += 2)); do rm -f "${files[i]}"; done
command="$*"
output="$("$@" 2>&1)"
status=$?
fail() {
  echo "FAILED: $*"
  echo "command: $command"
  echo "--- output ---"
  echo "$output"
  exit 1
}
[ "$status" -eq "$code" ] || fail "exit code $status, expected $code"
echo "$output" | grep -Eq -- "$pattern" || fail "output does not match '$pattern'"
if [ -n "$absent" ] && echo "$output" | grep -Eq -- "$absent"; then
  fail "output matches '$absent'"
fi
for ((i = 0; i < ${#files[@]}; i += 2)); do
  [ -s "${files[i]}" ] || fail "${files[i]} was not written"
  grep -Eq -- "${files[i + 1]}" "${files[i]}" || fail "${files[i]} does not match '${files[i + 1]}'"
done
echo "ok: exit $status, output matches '$pattern'"
