#!/usr/bin/env python3
"""Re-run every ```console block of README.md and rewrite its output, so the README's numbers come
from the binary, not from memory.

Each block holds `$ lowbit ...` lines; every command runs from the repository root with
target/release on PATH (build first: `cargo build --release`), its stdout replaces whatever
followed it in the block, and stderr (progress lines) is dropped. Outputs of the examples go to
scratch/ (git-ignored), which this script empties first. Exits non-zero, leaving README.md
untouched, if any command fails.

    python3 benches/readme_examples.py            # rewrite README.md
    python3 benches/readme_examples.py --check    # run them, report, do not write
"""
import os, re, shutil, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def main():
    check = "--check" in sys.argv[1:]
    env = dict(os.environ, PATH=os.path.join(ROOT, "target", "release") + os.pathsep + os.environ["PATH"])
    if not os.path.exists(os.path.join(ROOT, "target", "release", "lowbit")):
        sys.exit("build first: cargo build --release")
    shutil.rmtree(os.path.join(ROOT, "scratch"), ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "scratch"))
    text = open(README).read()
    out, pos, n = [], 0, 0
    for m in re.finditer(r"```console\n(.*?)```\n", text, re.S):
        out.append(text[pos:m.start()])
        block = ["```console"]
        for line in m.group(1).splitlines():
            if not line.startswith("$ "):
                continue  # old output: replaced
            cmd = line[2:]
            r = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"README example failed (exit {r.returncode}): {cmd}\n{r.stderr.strip()}")
            block.append(line)
            block.extend(r.stdout.rstrip("\n").splitlines())
            n += 1
            print(f"ok: {cmd[:100]}", file=sys.stderr)
        out.append("\n".join(block) + "\n```\n")
        pos = m.end()
    out.append(text[pos:])
    if not check:
        open(README, "w").write("".join(out))
    print(f"{n} README commands ran{'' if check else '; README.md rewritten'}", file=sys.stderr)


if __name__ == "__main__":
    main()
