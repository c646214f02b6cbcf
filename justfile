# weir — run `just` to see the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

guests := "-p sma-crossover -p price-alert -p hostile -p wasmcloud-echo -p wasmcloud-kv -p predictor -p explainer -p legacy-batch"

# List the recipes.
default:
    @just --list

# Build the guest components for wasm32-wasip2, with LTO (std and serde inline into the handler:
# about 8% fewer instructions per event). Set here, not in [profile.release], so that release
# builds of the host stay quick.
build-components:
    CARGO_PROFILE_RELEASE_LTO=true cargo build --release --target wasm32-wasip2 {{guests}}

# Build the components and the weir binary.
build: build-components
    cargo build -p weir

# Run the demo: replay sample trades through both components on the embedded bus.
run *ARGS: build
    cargo run -q -p weir -- run examples/demo.toml --feed examples/data/trades.ndjson --rate 400 --stay --tap 'signals.>' --tap 'alerts.triggered' {{ARGS}}

# Python tools the tests use, in target/py: the Prometheus project's OpenMetrics parser,
# ORAS's client (the registry tests' other OCI tool) and OpenTelemetry's OTLP protobufs (the
# trace tests' collector).
pytools:
    test -x target/py/bin/python || python3 -m venv target/py
    target/py/bin/python -c 'import prometheus_client, oras, opentelemetry.proto' 2>/dev/null || target/py/bin/pip install --quiet --disable-pip-version-check 'prometheus_client>=0.20' 'oras>=0.2' 'opentelemetry-proto>=1.20'

# Backtest the demo: replay the sample data on a virtual clock; every effect as NDJSON (stdout or --out FILE).
replay *ARGS: build
    cargo run -q -p weir -- replay examples/demo.toml --from examples/data/trades.ndjson {{ARGS}}

# Run every test (unit, integration with real components).
test: build-components pytools
    cargo test --workspace --exclude sma-crossover --exclude price-alert --exclude hostile --exclude wasmcloud-echo --exclude wasmcloud-kv --exclude predictor --exclude explainer --exclude legacy-batch

# Benchmarks (criterion and load runs), then one table: each figure beside its baseline from the same run.
bench: build-components
    #!/usr/bin/env bash
    set -euo pipefail
    out=target/bench-output.txt
    mkdir -p target && : > "$out"
    cargo bench -p weir 2>&1 | tee -a "$out"
    cargo bench -p weir-tests --bench nats_pipeline 2>&1 | tee -a "$out"
    cargo bench -p weir-tests --bench cache 2>&1 | tee -a "$out"
    cargo build --release -p weir
    WEIR_BIN="$PWD/target/release/weir" cargo bench -p weir-tests --bench cluster 2>&1 | tee -a "$out"
    just bench-peer 2>&1 | tee -a "$out"
    echo
    echo "Summary: each figure against a baseline measured in the same run"
    ( echo "TABLE|benchmark|weir|baseline|ratio|target"; grep '^TABLE|' "$out" ) \
        | awk -F'|' '{ printf "%-56s %-12s %-30s %-8s %s\n", $2, $3, $4, $5, $6 }'

# A peer side by side: the wasmCloud echo component per message under weir and under
# wasmCloud's own runtime library (`wasmcloud-runtime`, its own crate in tests/peer so that
# its wasmtime stays apart), three rounds each in turn; prints the medians and their ratio.
bench-peer: build-components
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build -q --release --manifest-path tests/peer/Cargo.toml
    bin=$(cargo bench -p weir --bench per_event --no-run 2>&1 | grep -o 'target/release/deps/per_event-[0-9a-f]*' | head -1)
    wasm="$PWD/target/wasm32-wasip2/release/wasmcloud_echo.wasm"
    runs=$(mktemp)
    for i in 1 2 3; do
        (cd host && PER_EVENT_SIDE=echo "../$bin" nothing) | grep '^PEER|' >> "$runs"
        tests/peer/target/release/weir-peer-bench "$wasm" | grep '^PEER|' >> "$runs"
    done
    cat "$runs"
    awk -F'|' '{ v[$2] = v[$2] (v[$2] ? " " : "") $3 }
        function med(s,  a, n) { n = split(s, a, " "); asort(a); return a[int((n + 1) / 2)] }
        END { w = med(v["weir"]); p = med(v["wasmcloud-runtime"]);
              printf "TABLE|peer: wasmcloud-echo per message (median of 3 runs)|%d ns|wasmcloud-runtime 0.12 %d ns|%.2fx|≤ 1x\n", w, p, w / p }' "$runs"

# Soak run, not part of `bench` or CI: 20,000 trades/s through three hosts on a 3-node
# cluster for 30 minutes (SOAK_SECS to change it); memory and open files must stay flat.
soak: build-components
    cargo build --release -p weir
    WEIR_BIN="$PWD/target/release/weir" cargo bench -p weir-tests --bench soak

# The book (docs/ → target/book, with mdBook) and the crates' API docs, warnings as errors.
# Links and anchors, the CLI and manifest references are checked by `just test` (host/tests/docs.rs).
docs:
    mdbook build docs
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p weir -p weir-guest

# Format check and clippy with warnings as errors (host and guests).
lint:
    cargo fmt --all --check
    cargo clippy --workspace --exclude sma-crossover --exclude price-alert --exclude hostile --exclude wasmcloud-echo --exclude wasmcloud-kv --exclude predictor --exclude explainer --exclude legacy-batch --all-targets -- -D warnings
    cargo clippy --target wasm32-wasip2 {{guests}} -- -D warnings

# Regenerate the sample market data: trades and OHLCV candles (fixed seeds).
gen-data:
    cargo run -q -p gen-trades -- examples/data/trades.ndjson
    cargo run -q -p gen-trades -- --ohlcv examples/data/ohlcv.ndjson

# Run the demo against a real NATS (NATS_URL, default nats://127.0.0.1:4222): apply streams, then replay.
run-nats *ARGS: build
    cargo run -q -p weir -- streams apply examples/streams
    cargo run -q -p weir -- run examples/nats.toml --feed examples/data/trades.ndjson --tap 'signals.>' --tap 'alerts.triggered' {{ARGS}}

# The seeds' prediction pipeline on the embedded bus: OHLCV candles in, predictions out.
run-pipeline *ARGS: build
    cargo run -q -p weir -- run examples/pipeline.toml --feed examples/data/ohlcv.ndjson --rate 200 --tap 'predictions.>' {{ARGS}}

# The prediction pipeline on NATS (NATS_URL): apply the streams, then feed the candles.
run-pipeline-nats *ARGS: build
    cargo run -q -p weir -- streams apply examples/streams
    cargo run -q -p weir -- run examples/pipeline-nats.toml --feed examples/data/ohlcv.ndjson --tap 'predictions.>' {{ARGS}}
