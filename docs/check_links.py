#!/usr/bin/env python3
"""Relative links of the project's Markdown pages resolve.

Checks README.md, docs/*.md and derivations/*.md: every link or image [text](target) whose target is a relative
path must name an existing file or directory, and a #fragment pointing into a Markdown page must match one of its
headings (GitHub's rule: lower case, punctuation other than '-' and '_' dropped, spaces to '-'). External links
(http:, https:, mailto:) are not fetched. Exit status 0 when every link resolves, 1 otherwise.

    python3 docs/check_links.py --root .
    python3 docs/check_links.py --root . --self-test
"""
import argparse
import pathlib
import re
import sys
import tempfile

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(path: pathlib.Path, keep_code=False):
    """(line number, text) of the lines outside fenced code blocks, with inline code removed unless keep_code."""
    inside = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield n, line if keep_code else re.sub(r"`[^`]*`", "", line)


def anchors(path: pathlib.Path):
    found, counts = set(), {}
    for _, line in prose_lines(path, keep_code=True):
        m = HEADING.match(line)
        if m:
            s = slug(m.group(1))
            k = counts.get(s, 0)
            found.add(s if k == 0 else f"{s}-{k}")
            counts[s] = k + 1
    return found


def check(root: pathlib.Path, pages):
    problems, links = [], 0
    for page in pages:
        for n, line in prose_lines(page):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                links += 1
                file_part, _, fragment = target.partition("#")
                dest = page if not file_part else (page.parent / file_part).resolve()
                rel = page.relative_to(root)
                if not dest.exists():
                    problems.append(f"{rel}:{n}: link to {target}: {file_part} does not exist")
                    continue
                if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    problems.append(f"{rel}:{n}: link to {target}: no heading '#{fragment}' in {dest.name}")
    return problems, links


def self_test() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "docs").mkdir()
        (root / "docs/b.md").write_text("# Title\n## Contracts and tolerances\n## The protocol (version 1)\n"
                                        "## The backward — `gdr2/backward.hpp`\n")
        cases = {
            "good": ("[x](b.md) [y](b.md#contracts-and-tolerances) [z](b.md#the-protocol-version-1) [w](https://e.org) [v](b.md#the-backward--gdr2backwardhpp)", 0),
            "missing file": ("[x](c.md)", 1),
            "missing heading": ("[x](b.md#no-such-heading)", 1),
            "inside code is ignored": ("```\n[x](c.md)\n```\n`[y](d.md)`", 0),
        }
        ok = True
        for label, (text, expected) in cases.items():
            page = root / "docs/a.md"
            page.write_text(text + "\n")
            problems, _ = check(root, [page])
            if len(problems) != expected:
                print(f"self-test '{label}': expected {expected} problem(s), found {problems}")
                ok = False
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        ok = self_test()
        print("check_links: self-test " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1
    root = pathlib.Path(args.root).resolve()
    pages = [root / "README.md"] + sorted((root / "docs").glob("*.md")) + sorted((root / "derivations").glob("*.md"))
    pages = [p for p in pages if p.exists()]
    problems, links = check(root, pages)
    for p in problems:
        print(p)
    print(f"check_links: {links} relative links in {len(pages)} pages, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
