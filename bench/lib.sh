# Shared by the bench/*.sh scripts (sourced, not run).

# bench_exe NAME PROFILE: builds worker/benches/NAME.rs in PROFILE (`bench` = the release
# settings, or `dev`) without running it, and prints the executable's path.
bench_exe() {
  cargo bench -p mirrorplay-worker --bench "$1" --no-run --profile "$2" --message-format=json |
    python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        print(m["executable"])' "$1"
}
