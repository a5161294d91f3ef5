#!/usr/bin/env python3
"""Sum the samples of hw-targets' profile_step (lines `P <tag> <pc>`) by
function: the innermost frame (inlining expanded with llvm-symbolizer) and
the outermost frame of fixnn's core below the case loop.

    profile-m4.py ELF SAMPLES [--depth N]
"""
import collections, subprocess, sys, re

elf, path = sys.argv[1], sys.argv[2]
depth = int(sys.argv[sys.argv.index('--depth') + 1]) if '--depth' in sys.argv else 3
samples = []
for line in open(path):
    p = line.split()
    if len(p) == 3 and p[0] == 'P':
        samples.append((int(p[1]), int(p[2], 16)))
pcs = sorted({pc for _, pc in samples})
out = subprocess.run(['llvm-symbolizer', '--inlining', '--functions=linkage', '--demangle',
                      '--obj', elf], input='\n'.join('0x%x' % pc for pc in pcs),
                     capture_output=True, text=True).stdout
frames = {}
blocks = out.strip('\n').split('\n\n')
for pc, b in zip(pcs, blocks):
    ls = b.split('\n')
    fns = [re.sub(r'::h[0-9a-f]{16}$', '', ls[i]) for i in range(0, len(ls), 2)]
    locs = [ls[i + 1] for i in range(0, len(ls) - 1, 2)]
    frames[pc] = list(zip(fns, locs))

def short(f):
    f = re.sub(r'<[^<>]*>', '', f)
    f = re.sub(r'<[^<>]*>', '', f)
    return f

tagname = {1: 'forward+loss', 2: 'backward', 3: 'update'}
n = len(samples)
bytag = collections.Counter(t for t, _ in samples)
print(f'{n} samples (x 40,960 instructions)')
for t, c in sorted(bytag.items()):
    print(f'  {tagname.get(t, t)}: {c} ({100*c/n:.1f}%)')
for t in sorted(bytag):
    inner = collections.Counter()
    chain = collections.Counter()
    for tt, pc in samples:
        if tt != t:
            continue
        fr = frames[pc]
        inner[short(fr[0][0]) + '  ' + fr[0][1].split('/')[-1]] += 1
        chain[' < '.join(short(f) for f, _ in fr[:depth])] += 1
    print(f'\n== {tagname.get(t, t)}: innermost')
    for k, c in inner.most_common(25):
        print(f'{c:6d} {100*c/n:5.1f}%  {k}')
    print(f'-- {tagname.get(t, t)}: chains of {depth}')
    for k, c in chain.most_common(25):
        print(f'{c:6d} {100*c/n:5.1f}%  {k}')
    outer = collections.Counter()
    for tt, pc in samples:
        if tt != t:
            continue
        fr = [short(f) for f, _ in frames[pc]]
        fr = [f for f in fr if 'closure' not in f and '::fold' not in f and 'accel::' not in f]
        # Frames below the case's training loop, outermost first.
        i = max([k for k, f in enumerate(fr) if f.startswith('fixnn_cases::run::')] + [len(fr)])
        outer[' > '.join(reversed(fr[max(0, i - depth):i]))] += 1
    print(f'-- {tagname.get(t, t)}: outermost {depth} below the case loop')
    for k, c in outer.most_common(30):
        print(f'{c:6d} {100*c/n:5.1f}%  {k}')
