#!/usr/bin/env python3
"""Checks every relative markdown link ](path) and ](path#anchor) in README.md and docs/."""
import os, re, sys, unicodedata
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
files = [os.path.join(root, 'README.md')]
for d, _, fs in os.walk(os.path.join(root, 'docs')):
    files += [os.path.join(d, f) for f in fs if f.endswith('.md')]

def slugs(path):
    out, seen, fence = set(), {}, False
    for line in open(path, encoding='utf-8'):
        if line.startswith('```'):
            fence = not fence
            continue
        m = None if fence else re.match(r'^(#{1,6})\s+(.*?)\s*#*\s*$', line)
        if not m:
            continue
        text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(2))
        s = ''.join(c for c in text.lower()
                    if c in ' -_' or unicodedata.category(c)[0] in 'LN')
        s = s.replace(' ', '-')
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f'{s}-{n}')
    return out

bad = 0
for f in files:
    fence = False
    for no, line in enumerate(open(f, encoding='utf-8'), 1):
        if line.startswith('```'):
            fence = not fence
            continue
        if fence:
            continue
        for target in re.findall(r'\]\(([^)\s]+)\)', line):
            if re.match(r'[a-z]+:', target):
                continue
            path, _, anchor = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            if not os.path.exists(dest):
                print(f'{f}:{no}: missing file {target}'); bad += 1; continue
            if anchor:
                if not dest.endswith('.md') or anchor not in slugs(dest):
                    print(f'{f}:{no}: missing anchor {target}'); bad += 1
print(f'{len(files)} files, {bad} broken links')
sys.exit(1 if bad else 0)
