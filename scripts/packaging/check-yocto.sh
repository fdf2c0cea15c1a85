#!/usr/bin/env bash
# Checks of the Yocto layer meta-narun that run without a bitbake build directory:
#
#   1. a note when narun-crates.inc (the PINNED commit's Cargo.lock, which check-pins.sh
#      verifies and builds) differs from the checkout's Cargo.lock: fine for the recipe,
#      but kas/qemuarm64.yml's externalsrc build of the checkout then needs a bump-pin.sh;
#   2. oelint-adv over the recipe and layer.conf, for every release the layer claims
#      (wrynose whinlatter scarthgap), with meta-narun/.oelint.cfg;
#   3. oelint-adv over the hand-written recipe alone, WITHOUT the spacing suppressions
#      that exist only for the generated .inc;
#   4. every ${S}/... file the recipe installs exists in this repository, and the cargo
#      packages it builds exist in the workspace;
#   5. kas/qemuarm64.yml validates against the kas configuration schema, and its bitbake
#      branch is the one its OE-core branch needs (BB_MIN_VERSION in OE-core's sanity.conf).
#
# No bitbake and no OE-core checkout are needed (CI has no access to their servers).
# scripts/setup.sh installs oelint-adv and kas (pinned versions); this script installs
# them with pip when run on a machine without them.
# Exit status: 0 = all passed, 1 = at least one check failed.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
LAYER=meta-narun
RECIPE=$LAYER/recipes-narun/narun/narun_0.1.0.bb
RELEASES="wrynose whinlatter scarthgap"

failures=0
ok() { printf '[check-yocto] ok: %s\n' "$*"; }
fail() { printf '[check-yocto] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

PY=${PYTHON:-python3}
pip_install() { # pip_install PACKAGE...: into the python that runs this script
    printf '[check-yocto] installing %s with pip\n' "$*"
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get install -y -qq python3-pip || { apt-get update -qq && apt-get install -y -qq python3-pip; }; } >/dev/null 2>&1
    fi
    "$PY" -m pip install -q --disable-pip-version-check "$@" >/dev/null 2>&1 ||
        "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "$@" >/dev/null
}

# --- 1. crates.inc ------------------------------------------------------------------
if "$PY" scripts/packaging/gen-crates-inc.py --check >/dev/null 2>&1; then
    ok "narun-crates.inc (the pinned commit's crates) also matches the checkout's Cargo.lock"
else
    printf '[check-yocto] note: %s %s %s\n' "the checkout's Cargo.lock differs from narun-crates.inc (the pinned" \
        "commit's crates; check-pins.sh checks those). The recipe builds SRCREV and is unaffected; an" \
        "externalsrc build of this checkout (kas/qemuarm64.yml) needs scripts/packaging/bump-pin.sh first."
fi

# --- 2./3. oelint-adv ---------------------------------------------------------------
if ! "$PY" -c 'import oelint_adv' 2>/dev/null; then
    pip_install oelint-adv || fail "could not install oelint-adv"
fi
OELINT=("$PY" -m oelint_adv)
if "$PY" -c 'import oelint_adv' 2>/dev/null; then
    printf '[check-yocto] %s\n' "$("${OELINT[@]}" --version 2>&1)"
    for rel in $RELEASES; do
        out=$(cd "$LAYER" && OELINT_CONFIG="$REPO/$LAYER/.oelint.cfg" "${OELINT[@]}" --release "$rel" --mode all --quiet \
            recipes-narun/narun/narun_0.1.0.bb conf/layer.conf 2>&1)
        rc=$?
        if [ $rc -eq 0 ] && [ -z "$out" ]; then
            ok "oelint-adv --release $rel: clean"
        else
            fail "oelint-adv --release $rel (exit $rc):"
            printf '    %s\n' "$out" >&2
        fi
    done

    # Strict pass: the recipe without its generated include and without the spacing
    # suppressions (keeps the .inc-only exemption from hiding mistakes in the .bb).
    tmp=$(mktemp -d)
    grep -v '^require ' "$RECIPE" >"$tmp/narun_0.1.0.bb"
    cp "$LAYER/recipes-narun/narun/narun-crate-licenses.inc" "$tmp/"
    printf 'require narun-crate-licenses.inc\n' >>"$tmp/narun_0.1.0.bb"
    printf '[oelint]\nsuppress =\n    oelint.vars.homepageping\n    oelint.var.bbclassextend\n' >"$tmp/strict.cfg"
    out=$(cd "$tmp" && OELINT_CONFIG="$tmp/strict.cfg" "${OELINT[@]}" --release wrynose --mode all --quiet narun_0.1.0.bb 2>&1)
    rc=$?
    rm -rf "$tmp"
    if [ $rc -eq 0 ] && [ -z "$out" ]; then
        ok "oelint-adv strict pass over $RECIPE (spacing rules on): clean"
    else
        fail "oelint-adv strict pass over $RECIPE (exit $rc):"
        printf '    %s\n' "$out" >&2
    fi
fi

# --- 4. recipe <-> repository consistency -------------------------------------------
for f in $(grep -o '\${S}/[A-Za-z0-9_./-]*' "$RECIPE" | sed 's/^\${S}\///' | sort -u); do
    if [ -f "$f" ]; then ok "recipe installs $f (exists)"; else fail "recipe installs \${S}/$f, which does not exist"; fi
done
for pkg in $(grep -o -- '-p [a-z0-9_-]*' "$RECIPE" | awk '{print $2}' | sort -u); do
    if grep -rqs --include=Cargo.toml -E "^name = \"$pkg\"" daemon narunctl; then
        ok "cargo package $pkg exists"
    else
        fail "recipe builds cargo package $pkg, which is not in the workspace"
    fi
done
for feat in $(grep -o 'features narund/[a-z-]*' "$RECIPE" | sed 's|.*narund/||' | sort -u); do
    if grep -q '^\[features\]' daemon/Cargo.toml && grep -q "^$feat = " daemon/Cargo.toml; then
        ok "narund has the cargo feature $feat (PACKAGECONFIG[$feat])"
    else
        fail "PACKAGECONFIG[$feat] needs the cargo feature narund/$feat in daemon/Cargo.toml"
    fi
done

# --- 5. kas file ----------------------------------------------------------------------
if ! "$PY" -c 'import kas, yaml, jsonschema' 2>/dev/null; then
    pip_install kas || fail "could not install kas"
fi
# bitbake branch <-> OE-core branch: OE-core's meta/conf/sanity.conf BB_MIN_VERSION
# (wrynose 2.18.0, whinlatter 2.15.2, scarthgap 2.8.1); extend for a new release.
oe_branch=$(awk '/^  openembedded-core:/ {r=1} r && /^    branch:/ {gsub(/"/, "", $2); print $2; exit}' "$LAYER/kas/qemuarm64.yml")
bb_branch=$(awk '/^  bitbake:/ {r=1} r && /^    branch:/ {gsub(/"/, "", $2); print $2; exit}' "$LAYER/kas/qemuarm64.yml")
case "$oe_branch" in
    wrynose) bb_want=2.18 ;;
    whinlatter) bb_want=2.16 ;;
    scarthgap) bb_want=2.8 ;;
    *) bb_want="" ;;
esac
if [ -z "$bb_want" ]; then
    fail "kas/qemuarm64.yml: OE-core branch '$oe_branch' unknown to $0 (add its bitbake branch)"
elif [ "$bb_branch" = "$bb_want" ]; then
    ok "kas/qemuarm64.yml: bitbake $bb_branch for OE-core $oe_branch"
else
    fail "kas/qemuarm64.yml: OE-core $oe_branch needs bitbake $bb_want, the file has '$bb_branch'"
fi
for repo in bitbake openembedded-core; do
    awk -v r="  $repo:" '$0 == r {f=1; next} f && /^  [a-z]/ {exit} f' "$LAYER/kas/qemuarm64.yml" |
        grep -Eq '^    commit: [0-9a-f]{40}$' && ok "kas/qemuarm64.yml pins $repo to a commit" ||
        fail "kas/qemuarm64.yml: $repo has no 'commit: <40 hex digits>'"
done
if out=$("$PY" - "$LAYER/kas/qemuarm64.yml" 2>&1 <<'PYEOF'
import json, os, sys
import jsonschema, kas, yaml
schema = json.load(open(os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")))
jsonschema.validate(yaml.safe_load(open(sys.argv[1])), schema)
print(f"kas {kas.__version__} schema")
PYEOF
); then
    ok "$LAYER/kas/qemuarm64.yml validates against the $out"
else
    fail "$LAYER/kas/qemuarm64.yml does not validate: $out"
fi

if [ $failures -ne 0 ]; then
    printf '[check-yocto] %d check(s) FAILED\n' "$failures" >&2
    exit 1
fi
printf '[check-yocto] all checks passed\n'
