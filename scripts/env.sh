# Sourced by scripts/*: where setup installs things. Absolute paths, shared by every clone
# (.cargo/config.toml names the same ones).
IMGFLEET_PREFIX=/opt/imgfleet
IMGFLEET_VENV=$IMGFLEET_PREFIX/venv
IMGFLEET_BIN=$IMGFLEET_PREFIX/bin
TORCH_VERSION=2.11.0
export PATH="$IMGFLEET_BIN:${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
step() { printf '==> %s\n' "$*"; }
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
