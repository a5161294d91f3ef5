#!/usr/bin/env python3
"""List the call sites that can still reach the panic handler in an ELF.

    panic-sites.py ELF

Disassembles ELF (llvm-objdump), finds every function that can reach
core::panicking::panic_fmt (the panic handler is inlined into it), and
prints each call from code outside `core::` into a panicking `core::`
function, with the inlined source frames of the call (llvm-symbolizer), the
innermost frame outside the Rust standard library first. Used by
scripts/panic-audit.sh when the audit image does not link.
"""
import re
import subprocess
import sys
from collections import defaultdict

elf = sys.argv[1]
dis = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", "-C", elf],
                     check=True, capture_output=True, text=True).stdout

func_re = re.compile(r"^([0-9a-f]+) <(.*)>:$")
call_re = re.compile(r"^\s*([0-9a-f]+):\s+(bl|blx|b|b\.w|b\.n|bx)\b[^<]*<([^>+]*)(\+0x[0-9a-f]+)?>")
calls = defaultdict(list)  # callee -> [(caller, addr)]
cur = None
for line in dis.splitlines():
    m = func_re.match(line)
    if m:
        cur = m.group(2)
        continue
    m = call_re.match(line)
    if m and cur is not None:
        callee = m.group(3)
        if callee != cur:
            calls[callee].append((cur, int(m.group(1), 16)))

roots = {f for f in calls if f.startswith("core::panicking::panic_fmt")
         or "rust_begin_unwind" in f or f.startswith("core::panicking::panic_nounwind")}
reach = set(roots)
todo = list(roots)
while todo:
    f = todo.pop()
    for caller, _ in calls.get(f, []):
        if caller not in reach:
            reach.add(caller)
            todo.append(caller)


def is_std(name):
    return name.startswith(("core::", "<core::", "compiler_builtins", "_$LT$core.."))


sites = []
for callee in sorted(reach):
    if not is_std(callee):
        continue
    for caller, addr in calls.get(callee, []):
        if not is_std(caller):
            sites.append((addr, caller, callee))

if not sites:
    print("no panic call sites outside core")
    sys.exit(0)

addrs = "\n".join(hex(a) for a, _, _ in sites) + "\n"
sym = subprocess.run(["llvm-symbolizer", "--inlining", "--functions=short", "-C",
                      "--obj", elf], input=addrs, check=True, capture_output=True,
                     text=True).stdout.split("\n\n")
seen = set()
for (addr, caller, callee), block in zip(sites, sym):
    lines = [l for l in block.strip().splitlines()]
    frames = [(lines[i], lines[i + 1]) for i in range(0, len(lines) - 1, 2)]
    # innermost frame outside the standard library's sources
    own = [f for f in frames if "/rustc/" not in f[1] and "/library/" not in f[1]]
    where = own[0] if own else frames[0] if frames else ("?", "?")
    loc = re.sub(r"^.*?/(core|cases|hw-targets|registry/src/[^/]+)/", r"\1/", where[1])
    key = (loc, callee)
    if key in seen:
        continue
    seen.add(key)
    print(f"{loc}  {where[0]}  -> {callee}")
print(f"{len(seen)} distinct panic sites", file=sys.stderr)
