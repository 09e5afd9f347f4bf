#!/usr/bin/env bash
# Builds and installs spo-pipe into ~/.local/bin, makes sure the next shell finds it, then runs
# the embedded default pipeline in this directory (it ends by printing Table 2 and the report's
# path). Arguments go to `spo-pipe run`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo install --locked --path . --root "$HOME/.local" --force
bin="$HOME/.local/bin"
case ":$PATH:" in
*":$bin:"*) ;;
*)
    # As rustup does: one line in the shell's start-up files, once.
    line='export PATH="$HOME/.local/bin:$PATH"  # added by spo-pipe scripts/install.sh'
    for rc in "$HOME/.bashrc" "$HOME/.zshrc" "$HOME/.profile"; do
        if { [ -f "$rc" ] || [ "$rc" = "$HOME/.bashrc" ]; } && ! grep -qsF "$line" "$rc"; then
            printf '\n%s\n' "$line" >> "$rc"
            echo "added ~/.local/bin to PATH in $rc" >&2
        fi
    done
    echo "new shells find spo-pipe; in this one, run:  export PATH=\"\$HOME/.local/bin:\$PATH\"" >&2
    export PATH="$bin:$PATH"
    ;;
esac
echo "installed $(command -v spo-pipe)" >&2
spo-pipe run "$@"
