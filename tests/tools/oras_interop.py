"""ORAS (the ORAS project's Python client, oras-py) on a Wasm artifact, for
weir's registry tests: what ORAS pushes weir must pull, and what weir pushes
ORAS must read in the CNCF Wasm layout.

  oras_interop.py push REGISTRY/REPO:TAG FILE   push FILE as one application/wasm
                                                layer with a Wasm config
  oras_interop.py pull REGISTRY/REPO:TAG DIR    pull into DIR; print the manifest
                                                as JSON on stdout

Plain HTTP (the tests' registry listens on loopback).
"""

import json
import os
import sys
import tempfile

import oras.provider


def main() -> int:
    command, target, path = sys.argv[1:4]
    registry = oras.provider.Registry(hostname=target.split("/")[0], insecure=True)
    if command == "push":
        config = os.path.join(tempfile.mkdtemp(), "config.json")
        with open(config, "w") as f:
            json.dump({"architecture": "wasm", "os": "wasip2"}, f)
        # Relative paths only (ORAS refuses others by default): push from
        # the file's directory.
        os.chdir(os.path.dirname(os.path.abspath(path)))
        registry.push(
            target,
            files=[os.path.basename(path) + ":application/wasm"],
            manifest_config=config + ":application/vnd.wasm.config.v0+json",
            disable_path_validation=True,
            quiet=True,
        )
        return 0
    if command == "pull":
        manifest = registry.get_manifest(target)
        registry.pull(target, outdir=path)
        json.dump(manifest, sys.stdout)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
