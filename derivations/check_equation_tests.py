#!/usr/bin/env python3
"""Every numbered equation of derivations/*.md names a test that exists.

A numbered equation is a display-math block with \\tag{N.M}. Between it and the next numbered equation (or the
end of the page) there must be a line starting with **Checked by:** that names one or more tests as
`tests/<file>.cpp: Suite.Name`. Each named file must exist, and must define that test with TEST, TEST_F, TEST_P,
TYPED_TEST or RC_GTEST_PROP (RC_GTEST_FIXTURE_PROP). Exit status 0 when all hold, 1 otherwise (each problem is
printed with its page and line). Python 3 standard library only.

    python3 derivations/check_equation_tests.py --root .
    python3 derivations/check_equation_tests.py --root . --self-test   # the checker rejects bad pages
"""
import argparse
import pathlib
import re
import sys
import tempfile

TAG = re.compile(r"\\tag\{([^}]*)\}")
CHECKED_BY = re.compile(r"^\*\*Checked by:\*\*(.*)$")
REFERENCE = re.compile(r"`(tests/[\w./-]+\.(?:cpp|cu|cc)):\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)`")
INLINE_CODE = re.compile(r"`[^`]*`")  # \tag inside `code` is prose, not an equation
MACROS = r"(?:TEST|TEST_F|TEST_P|TYPED_TEST|TYPED_TEST_P|RC_GTEST_PROP|RC_GTEST_FIXTURE_PROP)"


COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)  # a commented-out test is not a test


def defines_test(source: str, suite: str, name: str) -> bool:
    pattern = re.compile(r"\b" + MACROS + r"\s*\(\s*" + re.escape(suite) + r"\s*,\s*" + re.escape(name) + r"\s*[,)]")
    return pattern.search(COMMENTS.sub("", source)) is not None


def check(root: pathlib.Path, pages):
    """Returns (problems, equations, references)."""
    problems, equations, references = [], 0, 0
    seen_tags = {}
    sources = {}
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        rel = page.relative_to(root)
        # Equation spans: from a \tag line to the line before the next \tag (or the end).
        tag_lines = [(i, m.group(1)) for i, line in enumerate(lines)
                     for m in TAG.finditer(INLINE_CODE.sub("", line))]
        for n, (start, tag) in enumerate(tag_lines):
            equations += 1
            if tag in seen_tags:
                problems.append(f"{rel}:{start + 1}: equation ({tag}) is numbered twice (also {seen_tags[tag]})")
            seen_tags[tag] = f"{rel}:{start + 1}"
            end = tag_lines[n + 1][0] if n + 1 < len(tag_lines) else len(lines)
            refs = []
            for i in range(start, end):
                m = CHECKED_BY.match(lines[i].strip())
                if not m:
                    continue
                # A "Checked by" entry may continue on the following lines until a blank line.
                text, j = m.group(1), i + 1
                while j < end and lines[j].strip():
                    text += " " + lines[j]
                    j += 1
                refs += [(i + 1, r) for r in REFERENCE.findall(text)]
            if not refs:
                problems.append(f"{rel}:{start + 1}: equation ({tag}) names no test (add a **Checked by:** line)")
            for line_no, (file, suite, name) in refs:
                references += 1
                path = root / file
                if not path.is_file():
                    problems.append(f"{rel}:{line_no}: equation ({tag}) names {file}, which does not exist")
                    continue
                if file not in sources:
                    sources[file] = path.read_text(encoding="utf-8", errors="replace")
                if not defines_test(sources[file], suite, name):
                    problems.append(f"{rel}:{line_no}: equation ({tag}) names {suite}.{name}, "
                                    f"which {file} does not define")
    return problems, equations, references


def self_test() -> bool:
    """The checker accepts a good page and rejects each kind of bad one."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "tests").mkdir()
        (root / "derivations").mkdir()
        (root / "tests/test_a.cpp").write_text("TEST(Suite, Real) {}\nRC_GTEST_PROP(Prop, Holds, ()) {}\n"
                                               "// TEST(Suite, Commented) {}\n/* TEST(Suite, Blocked) {} */\n")
        good = "$$\nx\n\\tag{1.1}\n$$\n\n**Checked by:** `tests/test_a.cpp: Suite.Real`,\n`tests/test_a.cpp: Prop.Holds`\n"
        cases = {
            "good": (good, 0),
            "missing test": (good.replace("Suite.Real", "Suite.Imagined"), 1),
            "missing file": (good.replace("tests/test_a.cpp: Prop", "tests/test_b.cpp: Prop"), 1),
            "no reference": ("$$\nx\n\\tag{1.1}\n$$\n\nNot checked.\n", 1),
            "duplicate tag": (good + "\n$$\ny\n\\tag{1.1}\n$$\n**Checked by:** `tests/test_a.cpp: Suite.Real`\n", 1),
            "prefix of a name": (good.replace("Suite.Real", "Suite.Rea"), 1),
            "commented-out test": (good.replace("Suite.Real", "Suite.Commented"), 1),
            "test in a block comment": (good.replace("Suite.Real", "Suite.Blocked"), 1),
        }
        ok = True
        for label, (text, expected) in cases.items():
            page = root / "derivations/page.md"
            page.write_text(text)
            problems, _, _ = check(root, [page])
            got = len(problems)
            if got != expected:
                print(f"self-test '{label}': expected {expected} problem(s), found {got}: {problems}")
                ok = False
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".", help="the project's source directory")
    parser.add_argument("--self-test", action="store_true", help="check that the checker rejects bad pages")
    args = parser.parse_args()
    if args.self_test:
        if self_test():
            print("check_equation_tests: self-test passed (a good page passes; missing tests, files, references "
                  "and duplicate numbers are rejected)")
            return 0
        return 1
    root = pathlib.Path(args.root).resolve()
    pages = sorted((root / "derivations").glob("*.md"))
    problems, equations, references = check(root, pages)
    for p in problems:
        print(p)
    if equations == 0:
        print("check_equation_tests: no numbered equations found under derivations/")
        return 1
    print(f"check_equation_tests: {equations} numbered equations in {len(pages)} pages, {references} test references, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
