#!/bin/sh
# Install the LLMTune Companion for this user and start it at login (Linux and macOS).
#
#   sh install.sh [--no-tray] [--method uv|pipx|venv] [SOURCE]
#   sh install.sh --uninstall [--purge [--yes]]
#
# SOURCE is what pip installs: the package name (the default), a local checkout or a wheel.
# The package goes into an environment of its own: `uv tool` or `pipx` when one is installed,
# otherwise a virtual environment under the user data directory, linked into ~/.local/bin.
set -eu

PACKAGE=llmtune-companion
COMMAND=llmtune-companion

say() { printf '%s\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

usage() {
  say "usage: sh install.sh [--no-tray] [--method uv|pipx|venv] [SOURCE]"
  say "       sh install.sh --uninstall [--purge [--yes]]"
}

data_home() {
  if [ "$(uname -s)" = Darwin ]; then
    printf '%s\n' "$HOME/Library/Application Support"
  else
    printf '%s\n' "${XDG_DATA_HOME:-$HOME/.local/share}"
  fi
}

VENV="$(data_home)/llmtune-companion-venv"
BIN_DIR="$HOME/.local/bin"

uninstall=no
purge=no
yes=no
tray=yes
method=
source_spec=$PACKAGE
while [ $# -gt 0 ]; do
  case $1 in
    --uninstall) uninstall=yes ;;
    --purge) purge=yes ;;
    --yes) yes=yes ;;
    --no-tray) tray=no ;;
    --method)
      [ $# -ge 2 ] || fail "--method needs uv, pipx or venv"
      method=$2
      shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; fail "unknown option $1" ;;
    *) source_spec=$1 ;;
  esac
  shift
done

case $method in
  "") if command -v uv >/dev/null 2>&1; then method=uv
      elif command -v pipx >/dev/null 2>&1; then method=pipx
      else method=venv; fi ;;
  uv | pipx | venv) ;;
  *) fail "--method must be uv, pipx or venv, not '$method'" ;;
esac

# A local directory or wheel is installed by absolute path (the tools run elsewhere).
case $source_spec in
  /*) ;;
  *) if [ -e "$source_spec" ]; then source_spec="$(cd "$(dirname "$source_spec")" && pwd)/$(basename "$source_spec")"; fi ;;
esac

installed_command() {
  for candidate in "$VENV/bin/$COMMAND" "$BIN_DIR/$COMMAND"; do
    if [ -x "$candidate" ]; then printf '%s\n' "$candidate"; return 0; fi
  done
  if command -v uv >/dev/null 2>&1 && [ -x "$(uv tool dir --bin 2>/dev/null)/$COMMAND" ]; then
    printf '%s\n' "$(uv tool dir --bin)/$COMMAND"; return 0
  fi
  command -v "$COMMAND" 2>/dev/null
}

if [ "$uninstall" = yes ]; then
  companion=$(installed_command) || fail "$COMMAND is not installed"
  if [ "$purge" = yes ] && [ "$yes" = yes ]; then
    "$companion" service uninstall --purge --yes
  elif [ "$purge" = yes ]; then
    "$companion" service uninstall --purge
  else
    "$companion" service uninstall
  fi
  if [ -d "$VENV" ]; then
    # Only our own link: a command of the same name from elsewhere stays.
    if [ -L "$BIN_DIR/$COMMAND" ] && [ "$(readlink "$BIN_DIR/$COMMAND")" = "$VENV/bin/$COMMAND" ]; then
      rm -f "$BIN_DIR/$COMMAND"
    fi
    rm -rf "$VENV"
  elif command -v uv >/dev/null 2>&1 && uv tool list 2>/dev/null | grep -q "^$PACKAGE "; then
    uv tool uninstall "$PACKAGE"
  elif command -v pipx >/dev/null 2>&1 && pipx list --short 2>/dev/null | grep -q "^$PACKAGE "; then
    pipx uninstall "$PACKAGE"
  fi
  say "LLMTune Companion removed."
  exit 0
fi

say "Installing $source_spec with $method ..."
case $method in
  uv)
    uv tool install --force "$source_spec"
    companion="$(uv tool dir --bin)/$COMMAND" ;;
  pipx)
    pipx install --force "$source_spec"
    companion="${PIPX_BIN_DIR:-$BIN_DIR}/$COMMAND" ;;
  venv)
    python=$(command -v python3 || true)
    [ -n "$python" ] || fail "python3 (3.11 or newer) is needed"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "python3 is older than 3.11"
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade "$source_spec"
    companion="$VENV/bin/$COMMAND"
    mkdir -p "$BIN_DIR"
    if [ ! -e "$BIN_DIR/$COMMAND" ] || [ -L "$BIN_DIR/$COMMAND" ]; then
      ln -sf "$companion" "$BIN_DIR/$COMMAND"
    fi ;;
esac
[ -x "$companion" ] || fail "the install did not produce $companion"

if [ "$tray" = yes ]; then
  output=$("$companion" service install) || { printf '%s\n' "$output"; fail "service install failed"; }
else
  output=$("$companion" service install --no-tray) || { printf '%s\n' "$output"; fail "service install failed"; }
fi
printf '%s\n' "$output"
url=$(printf '%s\n' "$output" | sed -n 's/^the companion runs at \([^ ]*\) .*/\1/p')

say ""
say "LLMTune Companion is installed and running."
say "  base URL:  ${url:-http://127.0.0.1:8742/v1}"
say "  API key:   run \`$COMMAND token\` (a local token for your IDE, not your LLMTune key)"
say "  next step: $COMMAND connect continue"
case ":${PATH}:" in
  *":$BIN_DIR:"*) ;;
  *) if [ "$method" = venv ]; then say "  note: add $BIN_DIR to your PATH to run $COMMAND by name"; fi ;;
esac
say "Remove it with: sh install.sh --uninstall"
