#!/usr/bin/env python3
"""Fails when a dependency needs a newer Rust than minch's `rust-version`.

Only one toolchain can be installed here, so the claim in Cargo.toml is checked against what
the dependencies themselves declare: every package reachable from minch through normal and build
dependencies (what a user's build compiles; dev-dependencies are the tests' business), as
`cargo metadata` resolves them for the committed Cargo.lock.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    root = metadata["resolve"]["root"]
    claimed = packages[root].get("rust_version")
    if not claimed:
        sys.exit("msrv: Cargo.toml has no rust-version")

    seen, stack = {root}, [root]
    while stack:
        for dep in nodes[stack.pop()]["deps"]:
            kinds = {kind["kind"] for kind in dep["dep_kinds"]}
            if kinds & {None, "build"} and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])

    needs = sorted(
        (
            (version(packages[id]["rust_version"]), packages[id]["name"], packages[id]["version"])
            for id in seen
            if id != root and packages[id].get("rust_version")
        ),
        reverse=True,
    )
    too_new = [need for need in needs if need[0] > version(claimed)]
    if too_new:
        for need, name, package_version in too_new:
            print(f"msrv: {name} {package_version} needs Rust {'.'.join(map(str, need))}")
        sys.exit(f"msrv: rust-version {claimed} in Cargo.toml is not true; raise it")
    newest = needs[0] if needs else None
    detail = f" (highest among dependencies: {newest[1]} {newest[2]})" if newest else ""
    print(f"msrv: rust-version {claimed} covers all {len(seen) - 1} dependencies{detail}")


if __name__ == "__main__":
    main()
